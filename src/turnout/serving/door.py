"""What one API (a *door*) adds to the shared request pipeline, and the values the stages pass.

A door reads its own body and writes its own answer; everything between is the pipeline's
(``turnout.serving.pipeline``)::

    door.parse  →  authenticate, task, release, classify, policy, quota, attempt  →  door.respond

Chat completions (``turnout.serving.chat``), the task API (``turnout.serving.tasks``),
embeddings (``turnout.serving.embeddings``), Anthropic's Messages (``turnout.serving.messages``)
and OpenAI's Responses (``turnout.serving.responses``) are doors. A door that answers
without an attempt (a cache) or refuses before one (safety screening) is a stage the pipeline
gains once, for every door.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from turnout._support.printable import printable
from turnout.control.auth import Tenant
from turnout.control.pricing import PriceBook, Priced
from turnout.control.tokens import BYTES, Tokens, generated_by_answer
from turnout.errors import RequestError
from turnout.providers.base import Completion, Usage
from turnout.releases.base import Release
from turnout.routing.attempts import Result
from turnout.routing.constraints import COST, LATENCY
from turnout.safety.policy import Input
from turnout.serving.asgi import Receive, Send

MAX_EPISODE_ID = 256
# A function's name as OpenAI's APIs take it (chat completions, Responses); Anthropic's allows 128.
OPENAI_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
ANTHROPIC_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
# What a request's ``metadata`` may say to turnout itself (the end user, the data class, the
# episode, the caller's limits); none of it reaches a target. Chat completions pass any other
# key on (OpenAI's own metadata); the task API and embeddings, whose metadata is turnout's
# alone, refuse it.
TURNOUT_METADATA = ("data_class", "user", "episode_id", LATENCY, COST)
EMBEDDINGS = "embeddings"  # the endpoint of the one door that serves tasks whose targets embed


class Inbound(Protocol):
    """What every door's parsed request tells the pipeline."""

    @property
    def task(self) -> str: ...

    @property
    def stream(self) -> bool: ...

    @property
    def user(self) -> str | None:
        """The end user from the body; the ``X-Turnout-User`` header wins over it."""
        ...

    @property
    def data_class(self) -> str | None:
        """From the body; the ``X-Turnout-Data-Class`` header wins over it."""
        ...

    @property
    def episode_id(self) -> str | None:
        """Checked by the door (``check_episode_id``); ``X-Turnout-Episode`` wins over it."""
        ...


R = TypeVar("R", bound=Inbound)


class Admission(NamedTuple):
    """Who asks for which task, as which release, with what data: the request let in."""

    tenant: Tenant
    task: str
    release: Release | None
    data_class: str  # the effective class: classification may raise the declared one
    user: str | None  # the keyed pseudonym, never the caller's value
    episode_id: str | None
    declared_class: str | None = None  # as the caller declared it (or the default)


class Answered(NamedTuple):
    """What a door's answer came to, for the ledger, the quota and capture."""

    status: int
    usage: Usage | None
    priced: Priced
    generation_ms: float | None
    ttft_ms: float | None = None
    error_class: str | None = None
    text: str | None = None  # the answer's text, only when the reply asked to collect it
    usage_estimated: bool = False  # the upstream reported no usage: counted from what it generated


class Reply(NamedTuple, Generic[R]):
    """Everything a door needs to write its answer."""

    request_id: str
    request: R
    admission: Admission
    result: Result
    headers: list[tuple[bytes, bytes]]  # turnout's headers; the door adds the cost once known
    collect: bool  # keep the answer's text (capture or review wants it)
    model_version: str  # the release's, else the answering target's
    started_at: float  # unix seconds: the prices in effect then apply
    t0: float  # perf_counter at the request's start
    prices: PriceBook
    tokens: Tokens = BYTES  # how each target's tokens are counted where its upstream does not say

    def price(self, usage: Usage | None, answer_s: float | None = None) -> Priced:
        """Every attempt priced; ``answer_s``: how long a stream held the answering target."""
        return self.prices.price_attempts(self.result.attempts, usage, self.started_at, answer_s=answer_s)

    async def estimate(self, body: dict[str, Any], texts: list[str]) -> Usage:
        """The usage of an answer whose upstream reported none (a client that left before the
        usage chunk, an upstream that never sends one): the prompt bound of ``body`` and the
        completion bound of ``texts``, what the target generated. Such an answer is paid for
        all the same, and its row says ``usage_estimated``."""
        return await self.tokens.usage(body, texts, self.result.target.name)

    async def usage_of(self, answer: Completion, body: Callable[[], dict[str, Any]]) -> tuple[Usage, bool]:
        """A whole answer's usage and whether it was estimated: the upstream's, else counted from
        what it generated (``estimate``) against ``body()``, the prompt the target received
        (built only then: the task API renders its template again). Doors ask ``reported``
        first: most answers carry their usage, and that costs no coroutine."""
        return reported(answer) or (await self.estimate(body(), generated_by_answer(answer.body)[0]), True)


def reported(answer: Completion) -> tuple[Usage, bool] | None:
    """The usage the upstream (or the cached answer) reported, not estimated; None: it reported
    none, and ``Reply.usage_of`` counts it."""
    return None if answer.usage is None else (answer.usage, False)


class Door(Protocol[R]):
    """One API over the pipeline. ``task_param`` names where the caller put the task (blamed
    when it is unknown); ``needs_release``: refuse a task that has no serving release;
    ``release_prompt``: the release's prompt shapes the answer (not only its targets and
    parameters), as its prompt version header and ledger column say. ``ticket_body``: its
    clients read a 202 ticket (an escalation to a person) in place of an answer when they do
    not stream. ``fenced_json``: a JSON answer may come inside a Markdown code fence (the door
    parses it out), for the output checks.
    ``endpoint``: the API's name in the ledger's ``endpoint`` column (``chat.completions``,
    ``tasks``, ``embeddings``, ``messages``, ``responses``); a task whose route embeds is served
    by the ``embeddings`` door only. ``prompt_param``: the field that carries the prompt, blamed
    when it fits no target's context window (400 ``context_length_exceeded``, as OpenAI names
    ``messages``); None where no one field is (the task API's prompt is its release's template).
    ``output_param``: the field that bounds the answer's tokens, blamed when a request can never
    fit a tpm limit (400 ``request_too_large``); None where the caller sets none."""

    endpoint: str
    task_param: str
    prompt_param: str | None
    output_param: str | None
    needs_release: bool
    release_prompt: bool
    fenced_json: bool
    ticket_body: bool

    def parse(self, raw: bytes, task: str | None) -> R:
        """The request from its body; ``task`` when the path names it."""
        ...

    def body(self, request: R, release: Release | None) -> dict[str, Any]:
        """The OpenAI chat body the targets receive."""
        ...

    def untrusted(self, request: R) -> Iterable[Input]:
        """The request's untrusted texts by channel, for injection screening (``turnout.safety``)."""
        ...

    async def respond(self, reply: Reply[R], send: Send, receive: Receive) -> Answered:
        """Write the answer. Raising before the response starts fails the request like any
        stage (an answer that fails its schema)."""
        ...


def check_episode_id(value: Any, param: str) -> str | None:
    """An episode id is the caller's own (a ticket id): a short non-empty string, or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_EPISODE_ID:
        raise RequestError(
            f"'{param}' must be a non-empty string of at most {MAX_EPISODE_ID} characters",
            param=param,
            code="invalid_value",
        )
    return value


def check_tool_names(names: Sequence[str], param: Callable[[int], str], pattern: re.Pattern[str] | None) -> None:
    """The names a request declares its tools by (``param``: where the i-th is): each matching
    ``pattern`` (the API's own rule; None: any name but an empty one) and none twice. A name
    declared twice left the model's calls of it, and a ``tool_choice`` naming it, ambiguous."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if pattern is not None and not pattern.fullmatch(name):
            rule = f"must match '^{pattern.pattern}$' (letters, digits, _ and -)"
            raise RequestError(f"'{param(i)}' {printable(name)!r} {rule}", param=param(i), code="invalid_value")
        if not name:
            raise RequestError(f"'{param(i)}' must not be empty", param=param(i), code="invalid_value")
        if name in first:
            said = f"the tool name {printable(name)!r} is declared twice (first by '{param(first[name])}')"
            raise RequestError(f"'{param(i)}': {said}; tool names must be unique", param=param(i), code="invalid_value")
        first[name] = i
