"""Upstream health: each target's ``health()`` probe, run on demand and remembered.

* ``GET /admin/targets`` probes afresh on every call (calls that overlap share one probe);
* ``/metrics`` reads the last probe (``turnout_target_up``); a scrape that finds it older than
  ``every_s`` starts one in the background, so scrapes never probe more often than that;
* start-up probes once, without a time limit: the probe also warms a provider up (a local
  model loads on its first health call), and one that raises fails start-up.

``/readyz`` does not read any of it: an upstream that is down is the attempt loop's business
(breakers, fallback), and a replica taken out of service for it would take every replica out
with it. The probe's own words are for the admin only, and even there ``scrub`` keeps out any
URL, address or credential a provider might have let through.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from turnout.providers.base import Health, Provider
from turnout.routing.attempts import Target

EVERY_S = 5.0  # the most often scrapes start a probe
TIMEOUT_S = 10.0  # one probe of one target, after start-up

# Any URL, and anything shaped like host:port, whatever the config says.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_ADDRESS = re.compile(r"\[?[A-Za-z0-9_.:-]*[A-Za-z0-9_\]]:\d{1,5}\b")


@dataclass(frozen=True, slots=True)
class Probe:
    health: Health
    at: float  # time.monotonic() when it finished


class Probes:
    def __init__(
        self, targets: Mapping[str, Target], *, every_s: float = EVERY_S, timeout_s: float = TIMEOUT_S
    ) -> None:
        self.targets = targets
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.last: dict[str, Probe] = {}
        self._running: asyncio.Task[dict[str, Probe]] | None = None
        self._closed = False

    async def probe(self, timeout_s: float | None = None) -> dict[str, Probe]:
        """Probe every target now, or join the probe already running; remember and return.
        ``timeout_s``: per target (default ``self.timeout_s``)."""
        task = self._running
        if task is None or task.done():
            limit = self.timeout_s if timeout_s is None else timeout_s
            task = self._running = asyncio.get_running_loop().create_task(self._probe_all(limit), name="probes")
        # A caller that leaves (a client gone) does not cancel the probe others may be waiting on.
        return await asyncio.shield(task)

    async def start_up(self) -> dict[str, Probe]:
        """The first probe, without a time limit: it warms providers up. A provider whose
        ``health`` raises fails start-up (a bug, or a model that cannot load)."""
        targets = list(self.targets.values())
        results = await asyncio.gather(*(t.provider.health() for t in targets))
        self._remember(targets, results)
        return dict(self.last)

    def refresh(self) -> None:
        """From a scrape (synchronous, on the loop): start a probe in the background when the
        last one is older than ``every_s`` and none is running."""
        if self._closed or (self._running is not None and not self._running.done()):
            return
        oldest = min((p.at for p in self.last.values()), default=-float("inf"))
        if time.monotonic() - oldest < self.every_s:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # rendered outside the server (a test, a one-off dump)
            return
        self._running = loop.create_task(self._probe_all(self.timeout_s), name="probes")

    def up(self, name: str) -> bool | None:
        """The last probe's verdict; None: never probed."""
        probe = self.last.get(name)
        return None if probe is None else probe.health.ok

    async def aclose(self) -> None:
        self._closed = True
        task, self._running = self._running, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait((task,))

    async def _probe_all(self, timeout_s: float) -> dict[str, Probe]:
        targets = list(self.targets.values())
        self._remember(targets, await asyncio.gather(*(_probe(t.provider, timeout_s) for t in targets)))
        return dict(self.last)

    def _remember(self, targets: list[Target], results: list[Health]) -> None:
        now = time.monotonic()
        for target, health in zip(targets, results, strict=True):
            self.last[target.name] = Probe(health, now)


async def _probe(provider: Provider, timeout_s: float) -> Health:
    """A provider's ``health()``, bounded; whatever goes wrong becomes an unhealthy answer."""
    try:
        async with asyncio.timeout(timeout_s):
            return await provider.health()
    except TimeoutError:
        return Health(False, "probe timed out")
    except Exception as exc:  # a provider's bug must not break the admin view or a scrape
        return Health(False, f"probe failed ({type(exc).__name__})")


def secrets_of(target: Any) -> list[str]:
    """What a target's config holds that an admin view must never show: its URLs, their
    host:port and host, credentials, header values. Longest first, for ``scrub``."""
    found: set[str] = set()
    for key, value in _strings(target.model_dump()):
        if "://" in value:
            parts = urlsplit(value)
            found.update(s for s in (value, parts.netloc, parts.password, parts.username) if s)
            host = parts.hostname or ""
            if parts.port is not None:
                found.add(f"{host}:{parts.port}")
            if len(host) >= 4:  # a shorter host would blank out ordinary words
                found.add(host)
        elif key.startswith("headers.") or any(w in key for w in ("key", "secret", "token", "password")):
            found.add(value)
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, URLs or host:port addresses."""
    for secret in secrets:
        text = text.replace(secret, "[hidden]")
    return _ADDRESS.sub("[address]", _URL.sub("[url]", text))


def _strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v, path)
