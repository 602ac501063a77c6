"""The Bedrock model catalog and what turnout derives from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from turnout.cli.main import main
from turnout.config import validate
from turnout.control.catalog import base_model_id, bedrock_catalog, bedrock_model, context_window


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("deepseek.v3-v1:0", "deepseek.v3-v1:0"),
        ("us.meta.llama4-maverick-17b-instruct-v1:0", "meta.llama4-maverick-17b-instruct-v1:0"),
        ("global.deepseek.v3.2", "deepseek.v3.2"),
        ("arn:aws:bedrock:us-east-1::foundation-model/qwen.qwen3-32b-v1:0", "qwen.qwen3-32b-v1:0"),
        ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.zai.glm-4.7", "zai.glm-4.7"),
    ],
)
def test_profiles_and_arns_resolve_to_the_foundation_model(model: str, base: str) -> None:
    assert base_model_id(model) == base
    assert bedrock_model(model) is not None


def test_catalog_covers_the_2026_open_weight_families() -> None:
    names = " ".join(m.name for m in bedrock_catalog().values())
    for family in ("DeepSeek V3", "Qwen3", "GLM 4.7", "Kimi K2.5", "MiniMax M2.1", "gpt-oss", "Llama 3.3", "Llama 4"):
        assert family in names
    for info in bedrock_catalog().values():
        assert info.context_window > 0
        assert (info.input_per_mtok is None) == (info.output_per_mtok is None)


def test_context_window_prefers_config_then_provider_knowledge() -> None:
    cfg = validate(
        {
            "targets": {
                "br": {"provider": "bedrock", "region": "us-east-1", "model": "us.qwen.qwen3-32b-v1:0"},
                "br-set": {"provider": "bedrock", "region": "us-east-1", "model": "x.y", "context_window": 9000},
                "loc": {"provider": "local", "n_ctx": 4096},
                "vllm": {"provider": "openai", "base_url": "http://v:8000/v1", "model": "m"},
            },
            "tasks": {"t": {"route": ["br"]}},
        }
    )
    assert [context_window(cfg.targets[n]) for n in ("br", "br-set", "loc", "vllm")] == [32768, 9000, 4096, None]


def test_check_warns_about_an_unknown_bedrock_model(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "targets:\n"
        "  br: {provider: bedrock, region: us-east-1, model: acme.secret-model-v9}\n"
        "  ok: {provider: bedrock, region: us-west-2, model: openai.gpt-oss-120b-1:0}\n"
        "tasks:\n  t: {route: [br, ok]}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 0
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "targets.br.model: 'acme.secret-model-v9' is not in turnout's Bedrock catalog" in warnings[0]


def test_check_warns_about_unpriced_targets_when_budgets_exist(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "targets:\n"
        "  vllm: {provider: openai, base_url: 'http://v:8000/v1', model: m}\n"
        "  priced: {provider: openai, base_url: 'http://p:8000/v1', model: m,"
        " price: {input_per_mtok: 1, output_per_mtok: 2}}\n"
        "tenants:\n  acme: {keys: [sk-acme-12345678], limits: {usd_per_day: 5}}\n"
        "tasks:\n  t: {route: [vllm, priced]}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 0
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: targets.vllm.price: not set, so this target costs nothing against budgets"]
