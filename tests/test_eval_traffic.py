"""`turnout eval`'s requests go through the real pipeline (``turnout.cli.evaluate._post``), as
its internal identity or as a named tenant; either way their rows are marked ``evaluation`` and
the canary's figures (``release_stats``) leave them out. An HTTP request cannot mark its row."""

from __future__ import annotations

import orjson

from tests.asgi import ledger_rows, request
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.cli.evaluate import EVAL_TENANT, _post
from turnout.errors import UpstreamStatusError
from turnout.releases.base import Prompt, Release

KEY = "sk-acme-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]
CONFIG = {
    "targets": {"primary": {"provider": "openai", "base_url": "http://primary.invalid/v1", "model": "m1"}},
    "tenants": {"acme": {"keys": [KEY]}},
    "tasks": {"chat": {"route": ["primary"]}},
}
RELEASE = Release("chat", "r2", ("primary",), "w-r2", None, Prompt("Be brief.", "{{ text }}", {"text": "str"}))


async def test_eval_rows_are_marked_and_left_out_of_canary_judging_whatever_the_tenant(make_app: AppFactory) -> None:
    """Seen: `turnout eval --tenant acme` wrote rows as acme, and the canary judged the golden
    cases' failures and latency as the release's live traffic."""
    failing = [Step(UpstreamStatusError(500, "down")) for _ in range(6)]
    app = await make_app(CONFIG, {"primary": ScriptedProvider("primary", *failing)})
    acme = app.runtime.auth.tenants["acme"]
    for tenant in (acme, acme, EVAL_TENANT):
        status, _, _ = await _post(app, False, "chat", {"model": "chat", "messages": MESSAGES}, RELEASE, tenant)
        assert status == 502
    rows = await ledger_rows(app)
    assert sorted((r.tenant, r.release, r.evaluation) for r in rows) == [
        ("acme", "r2", True),
        ("acme", "r2", True),
        ("turnout-eval", "r2", True),
    ]
    assert app.runtime.store is not None
    stats = await app.runtime.store.release_stats("chat", "r2", 0.0)
    assert (stats.requests, stats.errors) == (0, 0)


async def test_a_clients_request_is_live_traffic_whatever_it_sends(make_app: AppFactory) -> None:
    app = await make_app(CONFIG, {"primary": ScriptedProvider("primary")})
    headers = {"authorization": f"Bearer {KEY}", "x-turnout-evaluation": "true", "x-turnout-eval": "1"}
    body = {"model": "chat", "messages": MESSAGES, "metadata": {"evaluation": True}, "evaluation": True}
    resp = await request(app, "POST", "/v1/chat/completions", raw=orjson.dumps(body), headers=headers)
    assert resp.status == 200
    [row] = await ledger_rows(app)
    assert row.tenant == "acme" and row.evaluation is None
