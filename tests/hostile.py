"""One real gateway for hostile-input tests (the schemathesis run and the raw fuzzer): ``turnout
serve`` over a fake OpenAI-compatible upstream, with a tenant key and an admin key, every
SQLite-backed feature on (ledger, issued keys, releases, capture and the review queue), a chat
task whose every answer is sampled for review, and a task with an active release."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serving import Process, release_cli, turnout_serve

TENANT_KEY = "sk-hostile-tenant-0123456789abcdef"
ADMIN_KEY = "sk-hostile-admin-0123456789abcdef"
TENANT = "acme"
CHAT_TASK = "chat"  # every answer becomes a review item (review_rate 1)
TASK = "t"  # an active release: variables {text: str}
EMBED_TASK = "embed"  # an embedding task, on a fake embedding server that honours dimensions
RELEASE = "v1"

# Error codes of a 400 about the request as a whole, not one of its fields: no ``param``.
WHOLE_BODY_CODES = frozenset(
    {"invalid_json", "client_disconnected", "invalid_http"}
)  # invalid_http: the HTTP parser refused the request


@dataclass(frozen=True)
class Gateway:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    port: int
    log: Path

    def headers_for(self, path: str) -> dict[str, str]:
        """The key a well-behaved caller sends on ``path``: the admin key under /admin."""
        key = ADMIN_KEY if path.startswith("/admin") else TENANT_KEY
        return {"authorization": f"Bearer {key}"}


def write_project(root: Path, upstream_url: str, embed_url: str | None = None) -> Path:
    config: dict[str, Any] = {
        "server": {"admin_key": ADMIN_KEY, "max_body_bytes": 262_144},
        "store": {"flush_interval_ms": 20},
        "capture": {"mode": "redacted"},
        "targets": {"up": {"provider": "openai", "base_url": upstream_url + "/v1", "model": "m"}},
        "tenants": {TENANT: {"keys": [TENANT_KEY]}},
        "tasks": {CHAT_TASK: {"route": ["up"], "review_rate": 1.0}, TASK: {"route": ["up"]}},
    }
    if embed_url is not None:
        url = embed_url + "/v1"
        config["targets"]["vec"] = {"provider": "openai", "base_url": url, "model": "v", "embedding_space": "v"}
        config["tasks"][EMBED_TASK] = {"route": ["vec"]}
    (root / "turnout.yaml").write_text(json.dumps(config))
    folder = root / "releases" / TASK
    folder.mkdir(parents=True)
    (folder / f"{RELEASE}.yaml").write_text(
        "target: up\nmodel_version: w-1\nprompt:\n  user: 'Say {{ text }}'\n"
        "  variables: {text: str}\nparams: {max_tokens: 8}\n"
    )
    return root / "turnout.yaml"


@contextmanager
def hostile_gateway(root: Path) -> Iterator[Gateway]:
    upstream = Process("tests.fakes.upstream", ready_path="/v1/models")
    embedder = Process("tests.fakes.embedders", "--matryoshka")
    try:
        config = write_project(root, upstream.url, embedder.url)
        release_cli(root, "register", TASK, "--all", "--by", "ci")
        release_cli(root, "promote", TASK, RELEASE, "--by", "ci", "--why", "hostile-input tests")
        with turnout_serve(root, config) as served:
            yield Gateway(f"http://127.0.0.1:{served.port}", served.port, served.log)
    finally:
        upstream.stop()
        embedder.stop()


def error_shape_problem(status: int, body: Any) -> str | None:
    """Why ``body`` is not OpenAI's error shape for a 4xx/5xx answer, or None when it is."""
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"{status}: not {{'error': {{...}}}}: {body!r:.200}"
    err = body["error"]
    if set(err) != {"message", "type", "param", "code"}:
        return f"{status}: error fields {sorted(err)}, expected code, message, param, type"
    if not isinstance(err["message"], str) or not err["message"] or not isinstance(err["type"], str):
        return f"{status}: message and type must be non-empty strings: {err!r:.200}"
    if not (err["param"] is None or isinstance(err["param"], str)) or not (
        err["code"] is None or isinstance(err["code"], str)
    ):
        return f"{status}: param and code must be strings or null: {err!r:.200}"
    about_a_field = status == 400 and err["type"] == "invalid_request_error" and err["code"] not in WHOLE_BODY_CODES
    if about_a_field and err["param"] is None:  # "" names a field called "" (an unknown one)
        return f"400 without the 'param' at fault: {err!r:.200}"
    return None


def report(request: pytest.FixtureRequest, line: str) -> None:
    """Print past pytest's capture: the figures of a fuzzing run are worth seeing in a quiet run."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")
