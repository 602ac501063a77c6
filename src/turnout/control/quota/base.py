"""Limits and budgets: what a request asks of its scopes, and the interface every backend
(in-process, Redis) implements. One contract suite (tests/test_quota_contract.py) runs against
every backend.

Semantics (the docs quote these):

* **Requests and tokens per minute** are token buckets: capacity = the per-minute limit,
  refilled continuously at limit/60 per second. A request takes 1 from the RPM bucket and its
  estimated tokens (prompt estimate + max_tokens) from the TPM bucket; after the call the TPM
  bucket is corrected by (real - estimated), which may leave it below zero.
* **Concurrent requests**: a slot per request, held until settle/release, and at most
  ``max_request_s``. With a shared backend, a replica that closes or crashes loses its slots
  and reservations sooner (``turnout.control.quota.redis``: its heartbeat).
* **Budgets** (USD per UTC day and per UTC month): before a call the worst-case cost is
  *reserved*; a request is refused when spent + reserved + its cost would pass the budget.
  After the call the reservation is replaced by the real cost; a failed or abandoned request
  releases it. A reservation not settled within ``max_request_s`` expires (the in-flight bound
  after a crash).
* A request passes only if every scope it names (tenant, tenant×task) has room in every limit;
  a refused request takes nothing from any scope. Checks are atomic per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from turnout.errors import TurnoutError


@dataclass(frozen=True, slots=True)
class Limits:
    """One scope's limits; None means no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    usd_per_day: float | None = None
    usd_per_month: float | None = None

    def empty(self) -> bool:
        return all(v is None for v in (self.rpm, self.tpm, self.concurrency, self.usd_per_day, self.usd_per_month))


@dataclass(frozen=True, slots=True)
class Scope:
    name: str  # "acme" or "acme/support-reply": what messages and /admin/usage call it
    limits: Limits
    # What the backend keeps its state under (part of its Redis keys); None: ``name``. A tenant
    # named "acme/chat" and tenant "acme"'s task "chat" share a name, never a key (``scope_key``).
    key: str | None = None

    @property
    def ident(self) -> str:
        return self.name if self.key is None else self.key


def scope_key(tenant: str, task: str | None = None) -> str:
    """The state key of a tenant's scope, or of its use of ``task``: each name with ``%`` and
    ``/`` escaped (``%25``, ``%2F``), so that no tenant's key is another's tenant×task key and no
    two tenant×task keys meet. Names without either character are their own key."""
    own = _escape(tenant)
    return own if task is None else f"{own}/{_escape(task)}"


def _escape(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F") if "%" in name or "/" in name else name


@dataclass(slots=True)
class Ask:
    request_id: str
    scopes: tuple[Scope, ...]
    tokens: int  # estimated: prompt estimate + max_tokens
    cost_usd: float  # worst case for the targets this request may reach
    now: float  # unix seconds (tests pass their own clock)


@dataclass(slots=True)
class Grant:
    """What an admitted request holds until ``settle`` or ``release``."""

    ask: Ask
    done: bool = field(default=False)
    holder: str = ""  # who holds it, for a shared backend (Redis: the replica that acquired it)


class QuotaExceeded(TurnoutError):
    """429 with Retry-After, naming the limit that refused: ``limit`` is e.g. ``rpm``,
    ``tpm``, ``concurrency``, ``usd_per_day``, and ``scope`` the scope's name."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, scope: str, limit: str, retry_after: float, *, remaining_usd: float | None = None) -> None:
        what = "budget" if limit.startswith("usd_") else "limit"
        super().__init__(f"{scope}: {what} {limit} exceeded; retry after {retry_after:.0f}s", param=limit)
        self.scope = scope
        self.limit = limit
        self.retry_after = max(0.0, retry_after)
        self.remaining_usd = remaining_usd
        if limit.startswith("usd_"):
            self.type = self.code = "budget_exceeded"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"retry-after", str(max(1, round(self.retry_after + 0.49))).encode()),
            (b"x-turnout-limit", f"{self.scope}:{self.limit}".encode()),
        ]


# One round trip to the shared backend (Redis), for the limiter and the key store alike: a
# request whose limits or key cannot be checked fails (503) this soon, never hangs on a stalled
# Redis, and the two fail alike.
BACKEND_TIMEOUT_S = 0.5


class BackendUnavailable(TurnoutError):
    """The shared backend (Redis) cannot be reached and the config says fail closed."""

    status = 503
    type = "service_unavailable"
    code = "quota_backend_unavailable"


@dataclass(frozen=True, slots=True)
class LimiterStats:
    """Counters for ``/metrics``, read at scrape time."""

    backend_errors: int = 0  # calls to a shared backend (Redis) that failed


class Limiter(Protocol):
    async def acquire(self, ask: Ask) -> Grant:
        """Admit the request in every scope at once, or raise QuotaExceeded having taken nothing."""
        ...

    async def settle(self, grant: Grant, tokens: int, cost_usd: float) -> None:
        """The call finished: free its slot, replace its reservation by ``cost_usd``, correct the
        TPM bucket by ``tokens`` - the estimate. Idempotent: a second settle/release is a no-op."""
        ...

    async def release(self, grant: Grant) -> None:
        """The call failed or the client left: free its slot, drop its reservation, give back
        its estimated tokens. Idempotent."""
        ...

    async def usage(self, scope: Scope, now: float) -> dict[str, Any]:
        """For /admin/usage: per limit, the limit, what is used/available now, and for budgets
        spent and reserved in the current day and month."""
        ...

    def stats(self) -> LimiterStats:
        """A cheap snapshot (no I/O) of the limiter's own counters."""
        ...

    async def ping(self) -> bool:
        """Whether the backend answers now (``/readyz``); one cheap round trip, bounded by a
        short timeout, never raising. An in-process limiter has nothing to reach."""
        ...

    async def aclose(self) -> None: ...


# Shared by the backends, so that they agree to the micro-dollar and the second.

MICRO_USD = 1_000_000


def to_micro(usd: float) -> int:
    """Budgets are counted in integer micro-dollars: sums never drift, and Redis can HINCRBY them."""
    return round(usd * MICRO_USD)


@dataclass(frozen=True, slots=True)
class Period:
    """One budget window: ``limit`` is ``usd_per_day`` or ``usd_per_month``, ``key`` names the
    window (``2026-11-28``, ``2026-11``) and ``end`` is when the next one starts (unix seconds)."""

    limit: str
    key: str
    end: float


def distinct_scopes(scopes: tuple[Scope, ...]) -> list[Scope]:
    """Each scope once: a scope named twice would be checked twice against the same state."""
    seen: dict[str, Scope] = {}
    for s in scopes:
        seen.setdefault(s.ident, s)
    return list(seen.values())


def budget_periods(now: float) -> tuple[Period, Period]:
    """The UTC day and the UTC month that ``now`` falls in (cached for the day: this runs on
    every request, and formatting dates costs more than the budget check itself)."""
    cached = _last_day.periods
    if cached is not None and _last_day.start <= now < cached[0].end:
        return cached
    t = datetime.fromtimestamp(now, UTC)
    day = datetime(t.year, t.month, t.day, tzinfo=UTC)
    next_month = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)
    periods = (
        Period("usd_per_day", f"{t:%Y-%m-%d}", (day + timedelta(days=1)).timestamp()),
        Period("usd_per_month", f"{t:%Y-%m}", next_month.timestamp()),
    )
    _last_day.start, _last_day.periods = day.timestamp(), periods
    return periods


class _DayCache:
    start: float = 0.0
    periods: tuple[Period, Period] | None = None


_last_day = _DayCache()


def budget_usage(limit_usd: float, period: Period, spent: int, reserved: int, now: float) -> dict[str, Any]:
    """One budget's entry in ``Limiter.usage`` (amounts given in micro-dollars)."""
    remaining = to_micro(limit_usd) - spent - reserved
    return {
        "limit": limit_usd,
        "period": period.key,
        "spent": spent / MICRO_USD,
        "reserved": reserved / MICRO_USD,
        "remaining": max(0, remaining) / MICRO_USD,
        "resets_in": period.end - now,
    }
