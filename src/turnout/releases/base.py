"""Releases: immutable bundles of everything that shapes a task's output, and the registry that
says which one serves.

A release file, ``releases/<task>/<release>.yaml``::

    target: qwen-vllm                 # or route: [qwen-vllm, deepseek-br] (each must be on the task's route)
    model_version: sha256:4f1c…       # weights digest or vendor model version
    tokenizer: Qwen/Qwen3-32B
    prompt:
      system: "You extract orders. Answer with JSON only."
      user: "Extract the order from: {{ text }}"
      variables: {text: str}          # types: str, int, float, bool, list, dict
    params: {temperature: 0, max_tokens: 200}
    output_schema: {type: object, required: [order_id], properties: {order_id: {type: string}}}
    retrieval: {...}                  # opaque, versioned with the release
    safety: {...}                     # opaque, versioned with the release

``version`` is a content hash of all of that (not of the name); ``prompt_version`` of the prompt
part alone. Registering a name again with different content is an error: a change is a new
release.

States: registered → evaluated (gates passed) → canary → active → retired. A task has at most
one active and one canary release; rollback returns traffic to the last fully active one. Beside
them, at most one release per task may be in ``shadow``: a sampled share of the active release's
requests is mirrored to it after their answers went out, and its answers are compared, never
served (``turnout.serving.shadow``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson

State = Literal["registered", "evaluated", "shadow", "canary", "active", "retired"]
VARIABLE_TYPES = ("str", "int", "float", "bool", "list", "dict")


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str | None
    user: str
    variables: dict[str, str]  # name → one of VARIABLE_TYPES


@dataclass(frozen=True, slots=True)
class Release:
    task: str
    name: str
    route: tuple[str, ...]  # the targets this release may use, in order (a subset of the task's route)
    model_version: str | None
    tokenizer: str | None
    prompt: Prompt
    params: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    retrieval: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None

    @property
    def version(self) -> str:
        """Content hash of everything that shapes the output (not the name)."""
        return content_hash(
            {
                "task": self.task,
                "route": list(self.route),
                "model_version": self.model_version,
                "tokenizer": self.tokenizer,
                "prompt": _prompt_dict(self.prompt),
                "params": self.params,
                "output_schema": self.output_schema,
                "retrieval": self.retrieval,
                "safety": self.safety,
            }
        )

    @property
    def prompt_version(self) -> str:
        return content_hash(_prompt_dict(self.prompt))


def _prompt_dict(p: Prompt) -> dict[str, Any]:
    return {"system": p.system, "user": p.user, "variables": p.variables}


def content_hash(obj: Any) -> str:
    """sha256 over canonical JSON (sorted keys), shortened: ``sha256:<16 hex>``."""
    raw = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Transition:
    task: str
    release: str
    from_state: State | None
    to_state: State
    at: float
    by: str
    why: str
    percent: float | None = None  # canary (or shadow) share after this transition


@dataclass(frozen=True, slots=True)
class Serving:
    """Which releases serve a task now: ``active`` takes the traffic the canary does not;
    ``shadow`` is sent a copy of ``shadow_percent`` of the active release's requests."""

    active: Release | None
    canary: Release | None = None
    canary_percent: float = 0.0  # 0..100
    shadow: Release | None = None
    shadow_percent: float = 0.0  # 0..100


class ReleaseRegistry(Protocol):
    """Read side used on the request path: must answer from memory (no I/O per request) and see
    changes made by the CLI or another replica within a second or so."""

    def serving(self, task: str) -> Serving | None:
        """None when the task has no releases at all."""
        ...

    def get(self, task: str, name: str) -> Release | None: ...


def sticky_bucket(task: str, key: str) -> float:
    """A number in [0, 100) from the task and a sticky key (end user or request key): the same
    user always lands on the same side of a canary split, and tasks split independently."""
    digest = hashlib.sha256(f"{task}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100


def choose(serving: Serving, task: str, key: str) -> Release | None:
    if serving.canary is not None and sticky_bucket(task, key) < serving.canary_percent:
        return serving.canary
    return serving.active
