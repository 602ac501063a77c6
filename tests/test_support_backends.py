"""One loader for every pluggable backend: by import string, lazily, a missing optional driver
named with the extra that brings it, anything else raised as it is."""

from __future__ import annotations

import sys

import pytest

from turnout._support.backends import Backend, load
from turnout.config import LimitsConfig, StoreConfig, validate
from turnout.control.keys.factory import open_key_store
from turnout.control.quota.factory import open_limiter
from turnout.errors import ConfigError
from turnout.ledger.store import open_store
from turnout.providers.registry import create

TABLE = {
    "json": Backend("json:JSONDecoder"),
    "needs": Backend("turnout_no_such_driver_pkg.mod:X", ("turnout_no_such_driver_pkg",), "extra-x"),
    "broken": Backend("turnout_no_such_module_at_all:X"),
}


def test_loads_the_attribute_an_import_string_names() -> None:
    import json

    assert load(TABLE, "json", "what") is json.JSONDecoder


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"what: unknown backend 'nope'; known: broken, json, needs"):
        load(TABLE, "nope", "what")


def test_a_missing_driver_says_which_extra_to_install() -> None:
    with pytest.raises(
        ConfigError, match=r"what: needs needs turnout_no_such_driver_pkg: pip install 'turnout\[extra-x\]'"
    ):
        load(TABLE, "needs", "what")


def test_any_other_import_failure_is_a_bug_and_propagates() -> None:
    with pytest.raises(ModuleNotFoundError):
        load(TABLE, "broken", "what")


@pytest.mark.parametrize(
    ("blocked", "open_it", "extra"),
    [
        ("asyncpg", lambda: open_store(StoreConfig(kind="postgres", dsn="postgresql://x@127.0.0.1/t")), "postgres"),
        ("redis", lambda: open_limiter(LimitsConfig(backend="redis")), "redis"),
        ("redis", lambda: open_key_store(LimitsConfig(backend="redis")), "redis"),
        (
            "botocore",
            lambda: create(
                "b",
                validate(
                    {
                        "targets": {"b": {"provider": "bedrock", "region": "us-east-1", "model": "m"}},
                        "tasks": {"t": {"route": ["b"]}},
                    }
                ).targets["b"],
            ),
            "bedrock",
        ),
    ],
    ids=["ledger", "limiter", "keys", "provider"],
)
def test_every_factory_goes_through_the_loader(
    monkeypatch: pytest.MonkeyPatch, blocked: str, open_it: object, extra: str
) -> None:
    for name in [m for m in sys.modules if m == blocked or m.startswith(blocked + ".")] + [blocked]:
        monkeypatch.setitem(sys.modules, name, None)  # `import blocked...` raises ImportError
    for name in [m for m in sys.modules if m.startswith("turnout.") and m.split(".")[-1] in ("postgres", "redis")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m.startswith("turnout.providers.bedrock")]:
        monkeypatch.delitem(sys.modules, name)
    assert callable(open_it)
    with pytest.raises(ConfigError, match=rf"pip install 'turnout\[{extra}\]'"):
        open_it()
