"""The few load gauges a router needs, read from a model server's Prometheus text exposition.

    parse(b'vllm:num_requests_waiting{model_name="m"} 3\\n...')  -> Gauges(waiting=3.0, ...)

Read: queued and running requests and KV-cache use, from vLLM (``vllm:num_requests_waiting``,
``vllm:num_requests_running``, ``vllm:kv_cache_usage_perc``, or the older
``vllm:gpu_cache_usage_perc`` when the new one is absent), SGLang (``sglang:num_queue_reqs``,
``sglang:num_running_reqs``, ``sglang:token_usage``) and llama.cpp's server
(``llamacpp:requests_deferred``, ``llamacpp:requests_processing``; no KV gauge). Counts are
summed over label sets (one per engine under data parallelism); the KV fraction is the fullest
engine's, so one full engine is not averaged away.

The body comes from a server we do not control, so nothing in it may raise or cost much:
lines are matched by prefix before anything else, label sets by one linear pattern, values that
are not finite numbers are dropped, counts are clamped to [0, 1e6] and KV to [0, 1], and only the
first ``MAX_BYTES`` are read (a line cut there is dropped).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_BYTES = 4 * 1024 * 1024  # vLLM's own page is ~100 KiB; more is a server we should not trust
_MAX_LINE = 4096  # a gauge line this long is garbage, not a gauge
_MAX_COUNT = 1e6  # requests; a bigger claim is garbage, and sums of it must stay finite

_WAITING = frozenset((b"vllm:num_requests_waiting", b"sglang:num_queue_reqs", b"llamacpp:requests_deferred"))
_RUNNING = frozenset((b"vllm:num_requests_running", b"sglang:num_running_reqs", b"llamacpp:requests_processing"))
_KV = frozenset((b"vllm:kv_cache_usage_perc", b"sglang:token_usage"))
_KV_OLD = b"vllm:gpu_cache_usage_perc"  # deprecated in vLLM 0.9, removed in late 2025
_WANTED = tuple(sorted(_WAITING | _RUNNING | _KV | {_KV_OLD}))  # for one C-level startswith per line

# name, then an optional label set (quoted values may hold spaces, braces and escapes), then the
# value. Each alternative starts on a different character, so matching never backtracks.
_LINE = re.compile(rb'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?[ \t]+(\S+)')


@dataclass(frozen=True, slots=True)
class Gauges:
    """One scrape's reading. ``kv_cache``: the KV-cache fraction in use, None when the server
    does not say (llama.cpp)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_cache: float | None = None


def parse(data: bytes) -> Gauges | None:
    """The load gauges in ``data``; None when it holds none of them (not a model server's page,
    metrics switched off, or garbage)."""
    if len(data) > MAX_BYTES:
        data = data[: data.rfind(b"\n", 0, MAX_BYTES) + 1]
    waiting = running = 0.0
    kv: float | None = None
    kv_old: float | None = None
    found = False
    for line in data.split(b"\n"):
        if not line.startswith(_WANTED) or len(line) > _MAX_LINE:
            continue  # comments, other metrics, histograms: nearly all the page, skipped in C
        match = _LINE.match(line)
        if match is None:
            continue
        name = match.group(1)
        value = _number(match.group(2))
        if value is None:
            continue
        if name in _WAITING:
            waiting = min(waiting + _count(value), _MAX_COUNT)
        elif name in _RUNNING:
            running = min(running + _count(value), _MAX_COUNT)
        elif name in _KV:
            kv = _fraction(value) if kv is None else max(kv, _fraction(value))
        elif name == _KV_OLD:
            kv_old = _fraction(value) if kv_old is None else max(kv_old, _fraction(value))
        else:
            continue
        found = True
    if not found:
        return None
    return Gauges(waiting, running, kv if kv is not None else kv_old)


def _number(raw: bytes) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(value: float) -> float:
    return min(max(value, 0.0), _MAX_COUNT)


def _fraction(value: float) -> float:
    return min(max(value, 0.0), 1.0)
