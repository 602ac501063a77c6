"""A cached answer's address: who may read it (``scope``), the task, the version of what serves
it (the serving release's version, or ``none`` without releases, each with a fingerprint of the
route's targets and their models: a new release, route or model never serves an old answer;
``turnout.cache.stage.version_of``) and a digest of the canonical request.

The canonical request is the body the targets receive (OpenAI's chat shape, whichever door it
came in by) — messages, tools, response format, generation parameters, ``stream`` — with its
top-level keys sorted and whole top-level numbers written alike (``temperature: 0.0`` is ``0``),
plus the effective data class. Below the top level the order is the request's own: key order
means something there (a JSON schema's ``properties`` in ``response_format`` or a tool's
``parameters`` is the order a structured answer is written in), and a client sends its message
objects in one order every time, so ``{"role", "content"}`` and ``{"content", "role"}`` are two
keys, which costs nothing but a rare second miss. Left
out: a top-level field whose value is null (``"seed": null`` means the default, as no ``seed``
does), and fields that do not shape the answer (``user``, ``metadata``, ``stream_options``: the door
drops a usage chunk the caller did not ask for). The digest is keyed (BLAKE2b's keyed mode, a
MAC like HMAC, and several times cheaper per request than OpenSSL's one-shot HMAC), so a stored
key never confirms a guessed prompt to whoever reads the backend.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, NamedTuple

import orjson

IGNORED = frozenset({"user", "metadata", "stream_options"})
SHARED = "shared"
TENANT = "t."  # a tenant's scope: "t.<tenant>"
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class Address(NamedTuple):  # a tuple: made on every lookup, in C
    scope: str  # "t.<tenant>", or "shared"
    task: str
    version: str  # "<release version>.<who answers>"; "none.<who answers>" without releases
    digest: str

    def text(self) -> str:
        """One string, each part quoted: a tenant or task name never crosses into another part,
        and no glob character survives (a Redis SCAN pattern over these stays exact)."""
        return _prefix(self.scope, self.task, self.version) + self.digest


@lru_cache(maxsize=4096)  # tenants, tasks and versions: few, and asked on every lookup
def _prefix(scope: str, task: str, version: str) -> str:
    return f"{quote(scope)}:{quote(task)}:{quote(version)}:"


def scope_of(tenant: str, shared: bool) -> str:
    return SHARED if shared else TENANT + tenant


def digest(secret: bytes, data_class: str, body: dict[str, Any]) -> str:
    # A top-level null is OpenAI's "the default", as an absent field is: left out (one key). The
    # top level is put in order here and nothing below it (no OPT_SORT_KEYS): see the docstring.
    # Only a float is handed to ``_number``: a call per field would cost what the sort does.
    canonical = {
        k: _number(v) if type(v) is float else v for k, v in sorted(body.items()) if v is not None and k not in IGNORED
    }
    raw = orjson.dumps([data_class, canonical])
    return hashlib.blake2b(raw, digest_size=20, key=secret).hexdigest()  # 160 bits, 40 hex digits


def _number(value: Any) -> Any:
    """A whole float parameter as the integer it equals: ``temperature: 0.0`` and ``0`` are one
    request (JSON has one number type), not two cache entries."""
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def deterministic(body: dict[str, Any]) -> bool:
    """Temperature 0 or a seed (``"seed": null`` is none); a body without messages (embeddings)
    samples nothing."""
    if "messages" not in body:
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None


@lru_cache(maxsize=4096)  # tenants, tasks and versions: few, and asked on every lookup
def quote(part: str) -> str:
    if all(c in _SAFE for c in part):
        return part
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in part)
