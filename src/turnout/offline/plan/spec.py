"""The planner's options as typed specs, parsed from the command line's ``key=value,...``.

    --managed   input=3,output=15[,target=NAME][,name=LABEL]   $ per 1M tokens
                or a bare name: a config target with a price, or a Bedrock catalog model id
    --bedrock   MODEL                                           a Bedrock catalog model id
    --self-hosted gpu_hour_usd=7.91,gpus=4,tokens_per_s=3543[,utilization=0.6]
                [,count=output|total][,concurrency=N][,min_replicas=1]
                [,scale_down=none|hourly|night][,night=22-6][,target=NAME][,name=LABEL]

Parsing only checks shapes and ranges; resolving a bare name against the config or the catalog
is the caller's (``resolve_managed``), so this module needs neither.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar, cast

from turnout.control.catalog import bedrock_model

T = TypeVar("T")

ScaleDown = Literal["none", "hourly", "night"]
Count = Literal["output", "total"]
NIGHT: tuple[int, int] = (22, 6)  # UTC


class SpecError(ValueError):
    """A spec the planner cannot use; the message names the key and what it accepts."""


@dataclass(frozen=True, slots=True)
class ManagedSpec:
    name: str
    input_per_mtok: float
    output_per_mtok: float
    target: str | None = None  # whose observed success rate applies


@dataclass(frozen=True, slots=True)
class SelfHostedSpec:
    gpu_hour_usd: float  # per GPU
    gpus: int  # per replica
    tokens_per_s: float  # one replica's sustained throughput, in ``count`` tokens
    utilization: float = 0.6  # the share of tokens_per_s a replica is planned to run at
    count: Count = "output"  # which tokens tokens_per_s counts: output only, or input + output
    concurrency: int | None = None  # requests one replica serves at once; None: not a limit
    min_replicas: int = 1
    scale_down: ScaleDown = "none"
    night: tuple[int, int] = NIGHT  # UTC hours [start, end) of the night for scale_down=night
    target: str | None = None
    name: str = "self-hosted"

    @property
    def capacity(self) -> float:
        """Tokens/s one replica is planned to carry: tokens_per_s × utilization."""
        return self.tokens_per_s * self.utilization

    def night_hours(self) -> frozenset[int]:
        start, stop = self.night
        return frozenset(h % 24 for h in range(start, stop if stop > start else stop + 24))


def parse_pairs(spec: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise SpecError(f"{part.strip()!r}: expected key=value")
        if key in pairs:
            raise SpecError(f"{key}: given twice")
        pairs[key] = value
    return pairs


def _take(pairs: dict[str, str], key: str, convert: Callable[[str], T], check: Callable[[T], bool], want: str) -> T:
    raw = pairs.pop(key)
    try:
        value = convert(raw)
    except ValueError:
        raise SpecError(f"{key}={raw}: expected {want}") from None
    if (isinstance(value, float) and not math.isfinite(value)) or not check(value):  # nan and inf: no figure
        raise SpecError(f"{key}={raw}: expected {want}")
    return value


def _unknown(pairs: Mapping[str, str], allowed: str) -> None:
    if pairs:
        raise SpecError(f"unknown key(s) {', '.join(sorted(pairs))}; expected {allowed}")


def _missing(pairs: Mapping[str, str], required: tuple[str, ...]) -> None:
    lacking = [k for k in required if k not in pairs]
    if lacking:
        raise SpecError(f"missing {', '.join(lacking)}")


def parse_managed(spec: str, resolve: Callable[[str], ManagedSpec | None] | None = None) -> ManagedSpec:
    """``input=…,output=…`` per 1M tokens, or a bare name that ``resolve`` (default: the
    Bedrock catalog) turns into prices."""
    spec = spec.strip()
    if "=" not in spec:
        found = (resolve or catalog_managed)(spec) if spec else None
        if found is None:
            raise SpecError(f"{spec!r}: not a priced config target or Bedrock catalog model; give input=…,output=…")
        return found
    pairs = parse_pairs(spec)
    _missing(pairs, ("input", "output"))
    nonneg = "a price in $ per 1M tokens, 0 or more"
    inp = _take(pairs, "input", float, lambda v: v >= 0, nonneg)
    out = _take(pairs, "output", float, lambda v: v >= 0, nonneg)
    target = pairs.pop("target", None)
    name = pairs.pop("name", target or "managed")
    _unknown(pairs, "input, output, target, name")
    return ManagedSpec(name, inp, out, target)


def catalog_managed(model: str) -> ManagedSpec | None:
    info = bedrock_model(model)
    if info is None or info.input_per_mtok is None or info.output_per_mtok is None:
        return None
    return ManagedSpec(info.id, info.input_per_mtok, info.output_per_mtok)


def parse_bedrock(model: str) -> ManagedSpec:
    found = catalog_managed(model.strip())
    if found is None:
        info = bedrock_model(model.strip())
        why = "has no price in the catalog" if info else "is not in turnout's Bedrock catalog"
        raise SpecError(f"{model!r} {why}; pass --managed input=…,output=… instead")
    return found


def parse_self_hosted(spec: str) -> SelfHostedSpec:
    pairs = parse_pairs(spec)
    _missing(pairs, ("gpu_hour_usd", "gpus", "tokens_per_s"))
    known = ", ".join(SELF_HOSTED_KEYS)
    _unknown({k: v for k, v in pairs.items() if k not in SELF_HOSTED_KEYS}, known)
    positive, whole = "a number above 0", "a whole number above 0"
    return SelfHostedSpec(
        gpu_hour_usd=_take(pairs, "gpu_hour_usd", float, lambda v: v > 0, positive),
        gpus=_take(pairs, "gpus", int, lambda v: v > 0, whole),
        tokens_per_s=_take(pairs, "tokens_per_s", float, lambda v: v > 0, positive),
        utilization=_opt(pairs, "utilization", 0.6, float, lambda v: 0 < v <= 1, "a share in (0, 1]"),
        count=cast(Count, _opt(pairs, "count", "output", str, lambda v: v in ("output", "total"), "output or total")),
        concurrency=_opt(pairs, "concurrency", None, _int_or_none, lambda v: v is None or v > 0, whole),
        min_replicas=_opt(pairs, "min_replicas", 1, int, lambda v: v > 0, whole),
        scale_down=cast(
            ScaleDown,
            _opt(pairs, "scale_down", "none", str, lambda v: v in ("none", "hourly", "night"), "none, hourly or night"),
        ),
        night=_opt(pairs, "night", NIGHT, _hours, lambda v: v[0] != v[1], "two different UTC hours, e.g. 22-6"),
        target=pairs.get("target"),
        name=pairs.get("name", "self-hosted"),
    )


SELF_HOSTED_KEYS = (
    "gpu_hour_usd",
    "gpus",
    "tokens_per_s",
    "utilization",
    "count",
    "concurrency",
    "min_replicas",
    "scale_down",
    "night",
    "target",
    "name",
)


def _opt(
    pairs: dict[str, str], key: str, default: T, convert: Callable[[str], T], check: Callable[[T], bool], want: str
) -> T:
    return _take(pairs, key, convert, check, want) if key in pairs else default


def _int_or_none(raw: str) -> int | None:
    return int(raw)


def _hours(raw: str) -> tuple[int, int]:
    start, sep, stop = raw.partition("-")
    hours = int(start), int(stop)  # ValueError: reported by _take
    if not sep or not all(0 <= h <= 23 for h in hours):
        raise ValueError(raw)
    return hours
