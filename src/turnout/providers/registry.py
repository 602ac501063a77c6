"""Provider name → implementation, loaded lazily by import string (so the openai-only
deployment never imports llama.cpp)."""

from __future__ import annotations

import importlib
from typing import Any

from turnout.providers.base import Provider

PROVIDERS: dict[str, str] = {
    "openai": "turnout.providers.openai:OpenAIProvider",
    "local": "turnout.providers.local.provider:LocalProvider",
    "bedrock": "turnout.providers.bedrock.provider:BedrockProvider",
}


def create(name: str, cfg: Any) -> Provider:
    """Build the provider for target ``name`` from its validated config section."""
    module_name, _, attr = PROVIDERS[cfg.provider].partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    provider: Provider = cls(name, cfg)
    return provider
