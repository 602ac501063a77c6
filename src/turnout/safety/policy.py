"""A task's ``safety`` config applied to a request: which channels are screened, how (block or
flag) and at what threshold, and what the screening of one request came to.

The config resolves per tenant and task, most specific first, one value at a time (a mode per
channel, a threshold per channel)::

    tenants.<t>.task_safety.<task>  →  tenants.<t>.safety  →  tasks.<task>.safety  →  off / default

``gates(config)`` resolves every pair once; a pair with every channel off has no gate, and the
request path skips screening without reading the request. A request's untrusted texts come from
its door as ``Input`` values (channel, where in the request, text); ``Gate.screen`` scores each
one on a screened channel and returns ``None`` (nothing over a threshold) or a ``Screened``:
``blocked`` when a blocking channel is over its threshold, else ``flagged``.

A blocked request is refused with ``PromptInjection`` (400, ``code: prompt_injection``): the
message names the channels and reason codes and the ``param`` where the first blocking text
was, never the text. A flagged one is served with ``X-Turnout-Safety: flagged``. Either way the
ledger row carries ``Screened.record``, e.g. ``flagged user=0.82:instruction_override``, which
``parse_record`` reads back (the metrics count by it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from turnout.config import Config, SafetyConfig, SafetyJudgeConfig
from turnout.errors import RequestError
from turnout.safety.screen import CHANNELS, SCREENER, THRESHOLDS, Channel, Screener, Verdict

Mode = Literal["block", "flag", "off"]
Action = Literal["blocked", "flagged"]
HEADER = b"x-turnout-safety"


class PromptInjection(RequestError):
    """A text the request carries looks like a prompt injection, on a channel that blocks."""

    code = "prompt_injection"

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(HEADER, b"blocked")]


@dataclass(frozen=True, slots=True)
class Input:
    """One untrusted text of a request: its channel, where it is (an OpenAI-style ``param``:
    ``messages[2].content``, ``documents[0]``) and the text."""

    channel: Channel
    param: str
    text: str


@dataclass(frozen=True, slots=True)
class Screened:
    """What screening found in one request: the verdicts over their thresholds (the worst per
    channel) and whether they block it."""

    action: Action
    verdicts: tuple[Verdict, ...]
    param: str | None  # where the first blocking text was; None when flagged

    @property
    def blocked(self) -> bool:
        return self.action == "blocked"

    @property
    def record(self) -> str:
        """The ledger's text: the action, then ``channel=score:reason,reason`` per channel."""
        parts = [f"{v.channel}={v.score:.2f}:{','.join(v.reasons) or 'none'}" for v in self.verdicts]
        return " ".join([self.action, *parts])

    def refusal(self) -> PromptInjection:
        found = "; ".join(f"{v.channel}: {', '.join(v.reasons)}" for v in self.verdicts if v.reasons)
        return PromptInjection(f"the request was refused: it looks like a prompt injection ({found})", param=self.param)


def parse_record(record: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """``Screened.record`` back into its action and, per channel, its reasons."""
    action, *parts = record.split()
    channels: list[tuple[str, list[str]]] = []
    for part in parts:
        channel, _, rest = part.partition("=")
        _, _, reasons = rest.partition(":")
        channels.append((channel, [r for r in reasons.split(",") if r and r != "none"]))
    return action, channels


@dataclass(frozen=True, slots=True)
class Near:
    """A text that scored within the judge's ``borderline`` below its channel's threshold."""

    item: Input
    verdict: Verdict
    mode: Mode


@dataclass(frozen=True, slots=True)
class Gate:
    """The resolved safety config of one tenant and task: the screened channels only."""

    modes: dict[Channel, tuple[Mode, float]]  # channel → block | flag, threshold
    screener: Screener = SCREENER
    judge: SafetyJudgeConfig | None = None  # the second stage (``serving.judge``), if any

    def screen(self, inputs: Iterable[Input], near: list[Near] | None = None) -> Screened | None:
        """The verdicts over threshold; with a judge, ``near`` gets the borderline texts."""
        modes = self.modes
        borderline = self.judge.borderline if self.judge is not None and near is not None else 0.0
        worst: dict[Channel, Verdict] = {}
        blocking: str | None = None
        for item in inputs:
            found = modes.get(item.channel)
            if found is None:
                continue
            mode, threshold = found
            verdict = self.screener.screen(item.text, item.channel)
            if not verdict.over(threshold):
                if borderline and near is not None and verdict.over(threshold - borderline):
                    near.append(Near(item, verdict, mode))
                continue
            if blocking is None and mode == "block":
                blocking = item.param
            best = worst.get(item.channel)
            if best is None or verdict.score > best.score:
                worst[item.channel] = verdict
        return _screened(worst, blocking)


def confirmed(screened: Screened | None, judged: Iterable[Near]) -> Screened | None:
    """``screened`` with the borderline texts a judge called injections added (reason ``judge``)."""
    worst = {v.channel: v for v in screened.verdicts} if screened is not None else {}
    blocking = screened.param if screened is not None else None
    for near in judged:
        verdict = Verdict(near.verdict.score, (*near.verdict.reasons, "judge"), near.item.channel)
        if blocking is None and near.mode == "block":
            blocking = near.item.param
        best = worst.get(verdict.channel)
        if best is None or verdict.score > best.score:
            worst[verdict.channel] = verdict
    return _screened(worst, blocking)


def _screened(worst: dict[Channel, Verdict], blocking: str | None) -> Screened | None:
    if not worst:
        return None
    verdicts = tuple(worst[c] for c in CHANNELS if c in worst)
    return Screened("blocked" if blocking is not None else "flagged", verdicts, blocking)


def resolve(config: Config, tenant: str | None, task: str) -> Gate | None:
    """The gate of ``tenant`` (a config tenant, or None) on ``task``; None when nothing is screened."""
    task_cfg = config.tasks[task].safety
    tenant_cfg = config.tenants.get(tenant) if tenant is not None else None
    layers: list[SafetyConfig] = []  # most specific first
    if tenant_cfg is not None:
        if task in tenant_cfg.task_safety:
            layers.append(tenant_cfg.task_safety[task])
        if tenant_cfg.safety is not None:
            layers.append(tenant_cfg.safety)
    layers.append(task_cfg)
    modes: dict[Channel, tuple[Mode, float]] = {}
    for channel in CHANNELS:
        mode: Mode = next((m for m in (getattr(c.screen, channel) for c in layers) if m is not None), "off")
        if mode == "off":
            continue
        thresholds = (getattr(c.threshold, channel) for c in layers if c.threshold is not None)
        threshold = next((t for t in thresholds if t is not None), THRESHOLDS[channel])
        modes[channel] = (mode, threshold)
    judge = next((c.judge for c in layers if c.judge is not None), None)
    return Gate(modes, judge=judge) if modes else None


class Gates:
    """Every (tenant, task) pair's gate, resolved once; a caller that is no config tenant (the
    anonymous one) gets the task's own."""

    def __init__(self, config: Config) -> None:
        self._tenants = frozenset(config.tenants)
        self._gates: dict[tuple[str | None, str], Gate] = {}
        for task in config.tasks:
            for tenant in (None, *config.tenants):
                gate = resolve(config, tenant, task)
                if gate is not None:
                    self._gates[(tenant, task)] = gate

    def get(self, tenant: str, task: str) -> Gate | None:
        """None: nothing is screened for this tenant and task."""
        if not self._gates:
            return None
        return self._gates.get((tenant if tenant in self._tenants else None, task))
