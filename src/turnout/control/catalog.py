"""What turnout knows about models it may be pointed at: the Bedrock open-weight catalog
(``data/bedrock_models.yaml``, a starting point to verify) and each target's context window."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from turnout.config import BedrockTarget, LocalTarget, Price

# Cross-region inference profiles prefix the model id with a geography.
_PROFILE = re.compile(r"^(us|eu|apac|jp|au|ca|us-gov|global)\.")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    name: str
    context_window: int
    tools: bool
    structured_output: bool
    input_per_mtok: float | None  # US on-demand $ per 1M tokens; None: no source found
    output_per_mtok: float | None


@functools.cache
def bedrock_catalog() -> dict[str, ModelInfo]:
    raw: dict[str, Any] = yaml.safe_load(resources.files("turnout.data").joinpath("bedrock_models.yaml").read_text())
    return {mid: ModelInfo(id=mid, **fields) for mid, fields in raw["models"].items()}


def base_model_id(model: str) -> str:
    """The foundation-model id behind an id, a cross-region profile or an ARN
    (``arn:aws:bedrock:…:foundation-model/ID`` or ``…:inference-profile/us.ID``)."""
    if model.startswith("arn:"):
        model = model.rsplit("/", 1)[-1]
    return _PROFILE.sub("", model)


def bedrock_model(model: str) -> ModelInfo | None:
    return bedrock_catalog().get(base_model_id(model))


def context_window(target: Any) -> int | None:
    """The configured window, else what the provider's model is known to take."""
    if target.context_window is not None:
        return int(target.context_window)
    if isinstance(target, LocalTarget):
        return target.n_ctx
    if isinstance(target, BedrockTarget):
        info = bedrock_model(target.model)
        return info.context_window if info else None
    return None


def price(target: Any) -> Price | None:
    """USD per 1M tokens: the configured price, else the catalog's for a Bedrock model. None:
    unknown, and such a target costs nothing against budgets (``turnout check`` warns). The
    price book (``prices:``) comes before this one: ``turnout.control.pricing.PriceBook``."""
    if target.price is not None:
        return target.price  # type: ignore[no-any-return]
    if isinstance(target, BedrockTarget):
        info = bedrock_model(target.model)
        if info and info.input_per_mtok is not None and info.output_per_mtok is not None:
            return Price(input_per_mtok=info.input_per_mtok, output_per_mtok=info.output_per_mtok)
    if isinstance(target, LocalTarget):
        return Price(input_per_mtok=0, output_per_mtok=0)  # runs in the gateway: no marginal price
    return None
