"""A config reload across ``turnout serve --workers N``: every worker or none, all on one
reading of the file.

The supervisor reads the file once and validates it in full, merged over the running config
(``reload.plan``: the checks one process's reload makes). A refusal is logged as one line and
no worker hears of it. A plan that passes goes to every serving worker over its pipe, not
through a file (so neither the file's text nor its substituted secrets are written anywhere,
and no worker reads a file being rewritten), in two phases:

    supervisor                              each serving worker (``serving/channel.py``)
    ("prepare", n, plan)            →       builds the new runtime beside the running one
                                    ←       ("prepared", n, problems)     [] : ready to swap
    every one ready: ("commit", n)  →       swaps it in
                                    ←       ("committed", n, answer)
    else:            ("abort", n)   →       closes what it built; the running config stays

A worker that cannot build it (a store it would open is down, its shared state not open yet)
refuses the round for every worker, and so does one that does not answer in ``PREPARE_S``.
A worker that was starting during a round, on the config before it, is restarted on the
fleet's once it serves; one that does not confirm a commit in ``COMMIT_S`` is restarted too.

A round starts on a SIGHUP to the supervisor or to any worker, or ``("reload", id)`` from a
worker (``POST /admin/reload``), which is answered ``("answer", id, ok, payload)`` once the
round is over. What is asked during a round waits for the next one (the file may have changed).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from turnout.config import Config
from turnout.serving import reload

log = logging.getLogger("turnout")

PREPARE_S = 60.0  # a worker may open a key store, a limiter, a release registry: a slow store's timeouts
COMMIT_S = 10.0  # a swap is a few assignments: one that takes longer is stuck
NO_ANSWER = 0  # a request id that wants no answer (a SIGHUP to a worker)

Asker = tuple[int, int]  # (slot, request id)


class Workers(Protocol):
    """What a round needs of the supervisor."""

    def serving(self) -> dict[int, int]:
        """The slots whose worker has started serving, with its pid."""
        ...

    def send(self, slot: int, message: tuple[Any, ...]) -> bool:
        """Send a worker ``message``; False when it is gone."""
        ...

    def restart(self, slot: int) -> None:
        """Stop a worker (gracefully): it is started again on the current config."""
        ...


@dataclass
class Round:
    number: int
    plan: reload.Plan
    askers: list[Asker]
    waiting: dict[int, int]  # slot → pid, yet to answer this phase
    deadline: float
    committing: bool = False
    ready: dict[int, int] = field(default_factory=dict)  # slot → pid: prepared it
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # as the workers saw it (a releases folder made since)
    done: int = 0


class Conductor:
    """The supervisor's reloads: ``config``, what a worker started now gets; one round at a time."""

    def __init__(self, config: Config, loader: reload.Loader, source: str | None) -> None:
        self.config = config
        self.loader = loader
        self.source = source
        self.generation = 0  # rounds committed
        self.runs: dict[int, int] = {}  # slot → the generation its worker runs
        self.round: Round | None = None
        self.queued: list[Asker] | None = None  # asked during a round: the next one

    def started(self, slot: int) -> None:
        """A worker was started on ``config``."""
        self.runs[slot] = self.generation

    def up(self, slot: int, workers: Workers) -> None:
        """A worker serves now: restarted if a round committed while it started."""
        if self.runs.get(slot) != self.generation:
            self._restart(slot, workers, "it started on the config before the last reload")

    def ask(self, asker: Asker | None, workers: Workers) -> None:
        """A reload asked for (``asker``: a worker's request to answer; None: a SIGHUP)."""
        askers = [asker] if asker is not None and asker[1] != NO_ANSWER else []
        if self.round is not None:
            self.queued = (self.queued or []) + askers
            return
        self._begin(askers, workers)

    def heard(self, slot: int, message: tuple[Any, ...], workers: Workers) -> None:
        """A worker's ``prepared`` or ``committed``."""
        now = self.round
        if now is None or message[1] != now.number or slot not in now.waiting:
            return  # a late answer to a round already over
        pid = now.waiting.pop(slot)
        if message[0] == "prepared":
            if message[2]:
                now.problems += [f"worker {slot} (pid {pid}): {p}" for p in message[2]]
            else:
                now.ready[slot] = pid
        elif message[0] == "committed":
            now.done += 1
            now.changed += [k for k in message[2].get("changed", []) if k not in now.changed]
        self._advance(workers)

    def gone(self, slot: int, workers: Workers) -> None:
        """A worker exited: no round waits for it (its replacement starts on ``config``)."""
        self.runs.pop(slot, None)
        now = self.round
        if now is not None:
            now.ready.pop(slot, None)
            if now.waiting.pop(slot, None) is not None:
                self._advance(workers)

    def tick(self, workers: Workers) -> None:
        """A phase past its deadline: a prepare refuses the round; a commit restarts the worker."""
        now = self.round
        if now is None or time.monotonic() < now.deadline or not now.waiting:
            return
        late, now.waiting = now.waiting, {}
        if now.committing:
            for slot in late:
                self._restart(slot, workers, f"it did not confirm the reload in {COMMIT_S:.0f} s")
        else:
            now.problems += [
                f"worker {slot} (pid {pid}) did not answer in {PREPARE_S:.0f} s" for slot, pid in late.items()
            ]
        self._advance(workers)

    def _begin(self, askers: list[Asker], workers: Workers) -> None:
        try:
            plan = reload.plan(self.config, self.loader)
        except reload.ReloadRefused as exc:
            log.error("config reload refused, the running config is kept on every worker: %s", "; ".join(exc.problems))
            self._answer(askers, workers, False, exc.problems)
            self._next(workers)
            return
        except Exception:  # a fault of ours: the supervisor serves on, on the running config
            log.exception("config reload failed, the running config is kept on every worker")
            self._answer(askers, workers, False, ["the reload failed unexpectedly: see the supervisor's log"])
            self._next(workers)
            return
        number = self.generation + 1
        self.round = now = Round(number, plan, askers, {}, time.monotonic() + PREPARE_S, changed=list(plan.changed))
        for slot, pid in workers.serving().items():
            if workers.send(slot, ("prepare", number, plan)):
                now.waiting[slot] = pid
        self._advance(workers)

    def _advance(self, workers: Workers) -> None:
        now = self.round
        if now is None or now.waiting:
            return
        if now.committing:
            self._finish(now, workers)
        elif now.problems:
            self._abort(now, workers)
        else:
            self._commit(now, workers)

    def _commit(self, now: Round, workers: Workers) -> None:
        now.committing = True
        now.deadline = time.monotonic() + COMMIT_S
        self.config, self.generation = now.plan.config, now.number  # workers started from now on
        for slot, pid in now.ready.items():
            self.runs[slot] = now.number
            if workers.send(slot, ("commit", now.number)):
                now.waiting[slot] = pid
        self._advance(workers)

    def _abort(self, now: Round, workers: Workers) -> None:
        for slot in now.ready:
            workers.send(slot, ("abort", now.number))
        log.error("config reload refused, the running config is kept on every worker: %s", "; ".join(now.problems))
        self.round = None
        self._answer(now.askers, workers, False, now.problems)
        self._next(workers)

    def _finish(self, now: Round, workers: Workers) -> None:
        self.round = None
        for slot, runs in list(self.runs.items()):
            if slot in workers.serving() and runs != self.generation:
                self._restart(slot, workers, "it started on the config before this reload")
        log.info(
            "config reloaded from %s on every worker (%d): changed %s; needing a restart: %s",
            self.source,
            now.done,
            ", ".join(now.changed) or "nothing",
            ", ".join(now.plan.restart) or "nothing",
        )
        answer = {"reloaded": True, "changed": now.changed, "restart_needed": now.plan.restart, "workers": now.done}
        self._answer(now.askers, workers, True, answer)
        self._next(workers)

    def _next(self, workers: Workers) -> None:
        queued, self.queued = self.queued, None
        if queued is not None:
            self._begin(queued, workers)

    def _restart(self, slot: int, workers: Workers, why: str) -> None:
        log.warning("worker %d is restarted on the fleet's config: %s", slot, why)
        self.runs.pop(slot, None)
        workers.restart(slot)

    @staticmethod
    def _answer(askers: list[Asker], workers: Workers, ok: bool, payload: Any) -> None:
        for slot, request in askers:
            workers.send(slot, ("answer", request, ok, payload))
