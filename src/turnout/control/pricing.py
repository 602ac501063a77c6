"""What a request and each of its attempts cost, from the price book: pure functions of the
configuration, the usage and the time, precomputed per target so the request path only does a
bisect and a few multiplications.

Which price applies to a target at time T (a unix timestamp, the request's start):

1. the newest ``prices:`` version effective at or before T (00:00 UTC on its date) that names
   the target: versions need only list what changed;
2. else ``targets.X.price``;
3. else the catalog: the Bedrock open-weight catalog (``data/bedrock_models.yaml``: DeepSeek
   V3.2, Qwen3, GLM 4.7, Kimi K2.5, MiniMax M2.1, gpt-oss, Llama; US on-demand, each with its
   source, a starting point to verify), and free for the embedded ``local`` provider;
4. else unknown: costs are None ("unpriced"), never 0.

Managed prices (USD per 1M tokens): ``prompt × input + completion × output``, where the prompt
tokens the upstream read from its prompt cache (``Usage.cached_tokens``: an OpenAI-compatible
server's ``prompt_tokens_details.cached_tokens``, Bedrock's ``cacheReadInputTokens``) cost
``cached_input_per_mtok`` instead of the input price when the price gives one; without it they
cost the input price, never less than the upstream may bill. The prompt tokens it wrote to its
cache (``Usage.cache_write_tokens``: Bedrock's ``cacheWriteInputTokens``, Anthropic's
``cache_creation_input_tokens``) cost ``cache_write_per_mtok`` when the price gives one (Bedrock
and Anthropic bill writes above the input price), else the input price. A failed attempt without
usage costs 0: the providers bill tokens, and a refused or timed-out call reports none.

Self-hosted prices (a fleet billed by the GPU-hour, ``data/gpu_prices.yaml`` has reference
rates): a request pays its serving-time share of one replica's hourly cost,
``gpu_hour_usd × gpus``. Two allocations:

- ``busy_seconds`` (default): ``seconds × replica_hour / 3600 / max_concurrency``. A request
  holds a replica for its latency; a replica that serves ``max_concurrency`` requests at once
  (default 1, i.e. the whole replica) splits that time between them. Failed attempts pay their
  latency too: the replica was busy.
- ``tokens``: ``(prompt + completion) / (tokens_per_s × 3600) × replica_hour``, with the stated
  prompt+completion tokens per second one replica serves under load. A failed attempt without
  usage costs 0 here (no tokens known): prefer busy seconds where timeouts are common.

What the fleet costs beyond what requests were charged (replicas up and idle, per the UTC
hour-of-day ``schedule``) is ``idle_cost``, reported apart, never spread over requests.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time
from importlib import resources
from typing import Any, Literal, NamedTuple

import yaml

from turnout.config import Config, Price, PriceEntry
from turnout.control.catalog import price as fallback_price
from turnout.ledger.record import AttemptRecord
from turnout.providers.base import Usage

HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class ManagedPrice:
    """USD per 1M tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None
    cache_write_per_mtok: float | None = None

    def tokens_cost(self, prompt: int, completion: int, cached: int = 0, written: int = 0) -> float:
        """``cached`` (read from the prompt cache) and ``written`` (to it) are parts of ``prompt``:
        never more than it, never a credit."""
        cached = min(max(cached, 0), prompt)
        written = min(max(written, 0), prompt - cached)
        fresh = prompt - cached - written
        return (
            fresh * self.input_per_mtok
            + cached * self._cached_rate
            + written * self._write_rate
            + completion * self.output_per_mtok
        ) / 1e6

    def worst_cost(self, prompt: int, completion: int) -> float:
        """The most ``prompt`` and ``completion`` tokens may cost: every prompt token at the
        dearest prompt rate (a cache write may cost more than the input price)."""
        rate = max(self.input_per_mtok, self._cached_rate, self._write_rate)
        return (prompt * rate + completion * self.output_per_mtok) / 1e6

    @property
    def _cached_rate(self) -> float:
        return self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok

    @property
    def _write_rate(self) -> float:
        return self.input_per_mtok if self.cache_write_per_mtok is None else self.cache_write_per_mtok


@dataclass(frozen=True, slots=True)
class SelfHostedPrice:
    """A fleet of identical replicas, each ``gpus`` GPUs at ``gpu_hour_usd``."""

    gpu_hour_usd: float
    gpus: int
    hourly_replicas: tuple[int, ...]  # replicas up in each UTC hour of the day, 0..23
    allocation: Literal["busy_seconds", "tokens"] = "busy_seconds"
    tokens_per_s: float | None = None
    max_concurrency: int = 1

    @property
    def replica_hour_usd(self) -> float:
        return self.gpu_hour_usd * self.gpus

    def busy_cost(self, seconds: float) -> float:
        return seconds * self.replica_hour_usd / HOUR / self.max_concurrency

    def tokens_cost(self, tokens: int) -> float:
        assert self.tokens_per_s is not None  # config validation requires it for this allocation
        return tokens * self.replica_hour_usd / (self.tokens_per_s * HOUR)


TargetPrice = ManagedPrice | SelfHostedPrice


def from_entry(entry: PriceEntry) -> TargetPrice:
    if entry.gpu_hour_usd is None:
        assert entry.input_per_mtok is not None and entry.output_per_mtok is not None  # validated
        return ManagedPrice(
            entry.input_per_mtok, entry.output_per_mtok, entry.cached_input_per_mtok, entry.cache_write_per_mtok
        )
    return SelfHostedPrice(
        entry.gpu_hour_usd,
        entry.gpus,
        entry.hourly_replicas(),
        entry.allocation,
        entry.tokens_per_s,
        entry.max_concurrency,
    )


def from_price(price: Price) -> ManagedPrice:
    return ManagedPrice(
        price.input_per_mtok, price.output_per_mtok, price.cached_input_per_mtok, price.cache_write_per_mtok
    )


class PriceBook:
    """Every target's prices over time, resolved once from the config."""

    def __init__(self, config: Config) -> None:
        self._starts: dict[str, list[float]] = {}  # per target: effective times, ascending
        self._prices: dict[str, list[TargetPrice]] = {}
        for version in config.prices:  # sorted by date at load
            start = datetime.combine(version.effective, time(), UTC).timestamp()
            for name, entry in version.targets.items():
                self._starts.setdefault(name, []).append(start)
                self._prices.setdefault(name, []).append(from_entry(entry))
        self._base: dict[str, TargetPrice | None] = {}
        self._timeout_s: dict[str, float] = {}
        for name, target in config.targets.items():
            known = fallback_price(target)
            self._base[name] = from_price(known) if known is not None else None
            self._timeout_s[name] = float(target.timeouts.total)

    def price_at(self, target: str, when: float) -> TargetPrice | None:
        """The price in effect at ``when`` (unix seconds); None: unpriced."""
        starts = self._starts.get(target)
        if starts is not None:
            i = bisect.bisect_right(starts, when)
            if i:
                return self._prices[target][i - 1]
        return self._base.get(target)

    def request_cost(self, target: str, usage: Usage | None, busy_s: float | None, when: float) -> float | None:
        """An answer's cost; None when unpriced or when what the price needs is not known (the
        usage, or for busy-seconds allocation the time the replica was held)."""
        price = self.price_at(target, when)
        if isinstance(price, ManagedPrice):
            if usage is None:
                return None
            return price.tokens_cost(
                usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens
            )
        if price is None:
            return None
        if price.allocation == "busy_seconds":
            return None if busy_s is None else price.busy_cost(busy_s)
        return None if usage is None else price.tokens_cost(usage.prompt_tokens + usage.completion_tokens)

    def attempt_cost(self, target: str, usage: Usage | None, latency_ms: float, when: float) -> float | None:
        """One attempt's cost; a failed attempt has no usage: 0 by tokens, its latency by busy
        seconds. None only when the target is unpriced."""
        price = self.price_at(target, when)
        if price is None:
            return None
        if usage is None and not (isinstance(price, SelfHostedPrice) and price.allocation == "busy_seconds"):
            return 0.0
        return self.request_cost(target, usage, latency_ms / 1000, when)

    def worst_case(self, target: str, prompt: int, output: int, when: float) -> float:
        """The most one answer may cost, for budget reservations: the token bound for managed
        and tokens-allocated targets; the total timeout held for busy seconds. Unpriced: 0."""
        price = self.price_at(target, when)
        if isinstance(price, ManagedPrice):
            return price.worst_cost(prompt, output)
        if price is None:
            return 0.0
        if price.allocation == "tokens":
            return price.tokens_cost(prompt + output)
        return price.busy_cost(self._timeout_s.get(target, 0.0))

    def fleet_cost(self, target: str, start: float, end: float) -> float:
        """What a self-hosted fleet costs from ``start`` to ``end`` (unix seconds), with its
        schedule and the price in effect in each hour; 0 for other targets."""
        total = 0.0
        t = start
        while t < end:
            upto = min(end, (math.floor(t / HOUR) + 1) * HOUR)  # versions start on the hour
            price = self.price_at(target, t)
            if isinstance(price, SelfHostedPrice):
                hour = int(t // HOUR) % 24
                total += price.hourly_replicas[hour] * price.replica_hour_usd * (upto - t) / HOUR
            t = upto
        return total

    def idle_cost(
        self, target: str, start: float, end: float, busy_seconds_total: float, *, allocated_usd: float | None = None
    ) -> float:
        """The fleet's cost over the window minus what its requests were charged. Charged:
        ``allocated_usd`` when given (the sum of the requests' costs, right for either
        allocation), else ``busy_seconds_total`` at the price in effect at ``start``. Negative
        means requests were charged more than the fleet cost: ``max_concurrency`` or
        ``tokens_per_s`` is stated too low."""
        fleet = self.fleet_cost(target, start, end)
        if allocated_usd is None:
            price = self.price_at(target, start)
            allocated_usd = price.busy_cost(busy_seconds_total) if isinstance(price, SelfHostedPrice) else 0.0
        return fleet - allocated_usd

    def price_attempts(
        self, attempts: Sequence[AttemptRecord], usage: Usage | None, when: float, *, answer_s: float | None = None
    ) -> Priced:
        """Every attempt with its ``cost_usd``, and the request's total: their sum, or None when
        the answer is unpriced. A failed attempt at an unpriced target keeps ``cost_usd`` None
        (unknown) and adds nothing to the total: it billed no tokens, and a request must not
        drop out of cost reports because a fallback saved it. The answering attempt (the last, when it
        succeeded) carries ``usage`` and, for a stream, ``answer_s``: the seconds from its start
        to the stream's end; without usage a token-priced answer is unknown (None). An attempt
        that carries its ``cost_usd`` already (an answer the output checks rejected, priced by
        its own usage) keeps it. Other failed attempts: see ``attempt_cost``; those never sent
        (breaker open, skipped) cost 0."""
        priced: list[AttemptRecord] = []
        total: float | None = 0.0
        last = len(attempts) - 1
        for i, attempt in enumerate(attempts):
            cost: float | None
            if i == last and attempt.error_class is None:  # its usage missing (a cut stream): unknown
                busy_s = attempt.latency_ms / 1000 if answer_s is None else answer_s
                cost = self.request_cost(attempt.target, usage, busy_s, when)
            elif attempt.cost_usd is not None:  # an answer rejected after it was generated: its own cost
                cost = attempt.cost_usd
            elif attempt.latency_ms == 0.0:
                cost = 0.0
            else:
                cost = self.attempt_cost(attempt.target, None, attempt.latency_ms, when)
            a = attempt
            priced.append(AttemptRecord(a.target, a.replica, a.error_class, a.latency_ms, a.offset_ms, cost))
            if cost is not None:
                total = None if total is None else total + cost
            elif i == last and attempt.error_class is None:  # the answer itself is unpriced
                total = None
        return Priced(priced, total)


class Priced(NamedTuple):
    """A request's attempts, each with its cost, and their total (None: unpriced)."""

    attempts: list[AttemptRecord]
    total: float | None


@functools.cache
def reference_gpu_prices() -> dict[str, dict[str, Any]]:
    """``data/gpu_prices.yaml``: reference $/GPU-hour by instance type, each with its source and
    date, every one marked ``verify_before_use``: a starting point for ``gpu_hour_usd``."""
    raw: dict[str, Any] = yaml.safe_load(resources.files("turnout.data").joinpath("gpu_prices.yaml").read_text())
    return dict(raw["instances"])
