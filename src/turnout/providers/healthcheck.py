"""Active health checks of an OpenAI-compatible target's replicas (``health:`` in its config).

Every ``interval_s`` each replica gets one cheap GET of ``path`` on its host and port
(``/health`` on vLLM and llama.cpp's server; ``/v1/models`` where there is none), never a
completion. The verdict goes to the replica's own breaker, the one passive failures feed:

* a failed check (not 2xx, a transport error, ``timeout_s``) opens it at once
  (``Breaker.eject``), so live traffic stops going there before any call has to fail;
* a passed check lets an open breaker past its cool-down close through half-open, the check
  being the probe (``Breaker.recheck``); a closed breaker keeps its counts, so a server whose
  health answers while its completions fail is still opened by the failures.

Owned by the provider, as ``balance.Scraper`` is: started inside the event loop at start-up,
closed (the round in progress awaited) when the runtime closes its providers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from yarl import URL

from turnout._support.periodic import Periodic
from turnout.config import HealthCheckConfig
from turnout.providers.balance import Candidate
from turnout.providers.transport import TRANSPORT_ERRORS, Client, describe


class HealthChecks:
    """One loop per target: each round checks every replica at once."""

    def __init__(self, name: str, replicas: Sequence[Candidate], client: Client, cfg: HealthCheckConfig) -> None:
        self.replicas = replicas
        # The same host and port as the replica's calls; the path replaces the base URL's /v1.
        self.urls = tuple(r.metrics_url.with_path(cfg.path) for r in replicas)
        self._client = client  # its own pool: a pool full of calls must not delay the checks
        self._timeout_s = cfg.timeout_s
        self.failing: dict[str, str] = {}  # replica label → why its last check failed
        self.loop = Periodic(f"turnout-health-{name}", self.check, cfg.interval_s, first="now")

    def start(self) -> None:
        self.loop.start()

    async def aclose(self) -> None:
        await self.loop.aclose()
        await self._client.aclose()

    async def check(self) -> None:
        """One round; each replica's breaker told its verdict."""
        problems = await asyncio.gather(*(self._get(url) for url in self.urls))
        for replica, why in zip(self.replicas, problems, strict=True):
            if why:
                self.failing[replica.label] = why
                replica.breaker.eject(why)
            else:
                self.failing.pop(replica.label, None)
                replica.breaker.recheck()

    async def _get(self, url: URL) -> str:
        """Why the check failed, or "" when it passed. Only the status is read: a body that
        says "ok" or a model list, either way the server is up."""
        try:
            async with asyncio.timeout(self._timeout_s):  # connect, head and body together
                async with self._client.session().get(url, allow_redirects=False) as resp:
                    await resp.content.read(64 * 1024)  # bounded: a models list, an "ok"
                    return "" if 200 <= resp.status < 300 else f"HTTP {resp.status}"
        except TimeoutError:
            return "timeout"
        except TRANSPORT_ERRORS as exc:
            return describe(exc)
