"""``turnout check --probe``: contact every upstream the config names, as ``serve`` would reach
it, and say per target (and replica) whether it answers and accepts its credentials.

Each probe is the provider's own ``health``: a cheap GET of ``/v1/models`` on an
OpenAI-compatible server (never a completion), credential resolution for Bedrock (it has no
free ping: calling a model costs money). The embedded model is not an upstream and is not
loaded here (``serve`` loads it at start-up; ``check`` has already found its file).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from turnout.config import Config
from turnout.providers.base import Health
from turnout.providers.registry import create

TIMEOUT_S = 10.0  # one target's probe


@dataclass(frozen=True, slots=True)
class Verdict:
    target: str
    ok: bool | None  # None: not probed
    lines: tuple[str, ...]


def probe(config: Config, timeout_s: float = TIMEOUT_S) -> list[Verdict]:
    """Every target's verdict, in config order."""
    return asyncio.run(_probe_all(config, timeout_s))


async def _probe_all(config: Config, timeout_s: float) -> list[Verdict]:
    names = list(config.targets)
    return list(await asyncio.gather(*(_probe_one(name, config, timeout_s) for name in names)))


async def _probe_one(name: str, config: Config, timeout_s: float) -> Verdict:
    cfg = config.targets[name]
    if cfg.provider == "local":
        return Verdict(name, None, (f"{name}: not probed (the embedded model; serve loads it at start-up)",))
    provider = create(name, cfg)
    try:
        health = await asyncio.wait_for(provider.health(), timeout_s)
    except TimeoutError:
        health = Health(False, f"no answer within {timeout_s:g} s")
    finally:
        await provider.aclose()
    return Verdict(name, health.ok and all(r.ok for r in health.replicas), _lines(name, cfg.provider, health))


def _lines(name: str, provider: str, health: Health) -> tuple[str, ...]:
    state = "reachable" if health.ok else "UNREACHABLE"
    head = f"{name} ({provider}): {state}" + (f" — {_explain(health.detail)}" if health.detail else "")
    replicas = tuple(
        f"  replica {r.name}: " + ("ok" if r.ok else f"FAILING — {_explain(r.detail)}") for r in health.replicas
    )
    return (head, *replicas) if len(health.replicas) > 1 or not health.ok else (head,)


def _explain(detail: str) -> str:
    """A refused key says so: the server answered, the credentials did not pass."""
    for status in ("HTTP 401", "HTTP 403"):
        if status in detail:
            detail = detail.replace(status, f"{status}: credentials refused")
    return detail
