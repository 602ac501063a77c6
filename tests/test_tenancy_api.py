"""Limits, budgets, issued keys and the admin API through the HTTP API, in-process."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.asgi import Response, request
from tests.asgi import ledger_rows as ledger
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.errors import UpstreamStatusError
from turnout.serving.app import App

KEY = "sk-acme-0123456789"
OTHER = "sk-other-0123456789"
ADMIN = "adm-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
# ScriptedProvider answers with 7 prompt and 3 completion tokens.
PRICE = {"input_per_mtok": 1_000.0, "output_per_mtok": 2_000.0}  # $0.007 in + $0.006 out per answer


def config(**tenant: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN},
        "targets": {
            "dear": {"provider": "openai", "base_url": "http://dear.invalid/v1", "model": "m", "price": PRICE},
            "cheap": {
                "provider": "openai",
                "base_url": "http://cheap.invalid/v1",
                "model": "m",
                "price": {"input_per_mtok": 1.0, "output_per_mtok": 1.0},
            },
        },
        "tenants": {
            "acme": {"keys": [KEY], **tenant},
            "other": {"keys": [OTHER]},
        },
        "tasks": {
            "chat": {"route": ["dear", "cheap"]},
            "thrifty": {"route": ["dear", "cheap"], "on_budget_exceeded": "cheaper"},
        },
    }


async def start(make_app: AppFactory, **tenant: Any) -> tuple[App, dict[str, ScriptedProvider]]:
    fakes = {"dear": ScriptedProvider("dear"), "cheap": ScriptedProvider("cheap")}
    return await make_app(config(**tenant), dict(fakes)), fakes


async def chat(app: App, key: str = KEY, **body: Any) -> Response:
    payload = {"model": "chat", "messages": MESSAGES, "max_tokens": 10, **body}
    return await request(app, "POST", "/v1/chat/completions", payload, {"authorization": f"Bearer {key}"})


async def admin(app: App, method: str, path: str, body: Any = None, key: str = ADMIN) -> Response:
    return await request(app, method, path, body, {"authorization": f"Bearer {key}"})


async def test_rpm_limit_refuses_with_429_retry_after_and_the_limit(make_app: AppFactory) -> None:
    app, _ = await start(make_app, limits={"rpm": 3})
    assert [(await chat(app)).status for _ in range(3)] == [200, 200, 200]
    refused = await chat(app)
    assert refused.status == 429
    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
    assert refused.json()["error"]["param"] == "rpm"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-turnout-limit"] == "acme:rpm"
    assert (await chat(app, key=OTHER)).status == 200  # another tenant is not affected
    # The refusal reached no target: it cost $0, not an unknown amount ("unpriced" in reports).
    costs = sorted((r.status, r.cost_usd) for r in await ledger(app))
    assert costs == [(200, pytest.approx(0.013))] * 4 + [(429, 0.0)]


async def test_task_limits_apply_to_that_task_only(make_app: AppFactory) -> None:
    app, _ = await start(make_app, task_limits={"chat": {"rpm": 1}})
    assert (await chat(app)).status == 200
    assert (await chat(app)).headers["x-turnout-limit"] == "acme/chat:rpm"
    assert (await chat(app, model="thrifty")).status == 200


async def test_budget_reserves_the_worst_case_and_records_the_real_cost(make_app: AppFactory) -> None:
    # worst case on "dear": 74 prompt tokens (2 bytes of text, 8 for the message, 64 for the
    # request) and 10 output tokens ≈ $0.094; the real answer costs $0.013
    app, _ = await start(make_app, limits={"usd_per_day": 0.15})
    first = await chat(app)
    assert first.status == 200
    assert float(first.headers["x-turnout-cost-usd"]) == pytest.approx(0.013)
    refused = await chat(app, max_tokens=50)  # its worst case no longer fits what is left
    assert refused.status == 429
    assert refused.json()["error"]["type"] == "budget_exceeded"
    rows = await ledger(app)
    assert sorted(r.cost_usd or 0 for r in rows) == pytest.approx([0, 0.013])


async def test_cheaper_task_routes_to_a_target_that_fits_the_budget(make_app: AppFactory) -> None:
    app, fakes = await start(make_app, limits={"usd_per_day": 0.001})
    resp = await chat(app, model="thrifty")
    assert resp.status == 200
    assert resp.headers["x-turnout-target"] == "cheap"
    assert not fakes["dear"].calls
    assert (await chat(app, model="chat")).status == 429  # "refuse" is the default


async def test_failed_requests_release_their_reservation(make_app: AppFactory) -> None:
    failing = Step(UpstreamStatusError(503, "down"))
    fakes = {"dear": ScriptedProvider("dear", failing), "cheap": ScriptedProvider("cheap", failing)}
    raw = config(limits={"usd_per_day": 0.15, "concurrency": 1})
    for target in raw["targets"].values():
        target["breaker"] = {"failures": 100, "min_calls": 100}
    app = await make_app(raw, dict(fakes))
    for _ in range(5):  # each would hold the only slot and most of the budget if not released
        assert (await chat(app)).status == 503
    usage = await admin(app, "GET", "/admin/usage?tenant=acme")
    [scope] = usage.json()["data"]
    assert scope["scope"] == "acme"
    assert scope["usage"]["concurrency"] == {"limit": 1, "in_use": 0}
    assert scope["usage"]["usd_per_day"]["reserved"] == 0
    assert scope["usage"]["usd_per_day"]["spent"] == 0
    fakes["dear"].steps = [Step()]
    assert (await chat(app)).status == 200
    spent = (await admin(app, "GET", "/admin/usage?tenant=acme")).json()["data"][0]["usage"]["usd_per_day"]
    assert spent["spent"] == pytest.approx(0.013) and spent["reserved"] == 0


async def test_issued_keys_work_and_revocation_holds_at_once(make_app: AppFactory) -> None:
    app, _ = await start(make_app)
    created = await admin(app, "POST", "/admin/keys", {"tenant": "acme", "name": "ci"})
    assert created.status == 201
    secret = created.json()["secret"]
    assert secret.startswith("tk-")
    assert (await chat(app, key=secret)).status == 200
    listed = await admin(app, "GET", "/admin/keys?tenant=acme")
    assert secret not in listed.body.decode()
    assert [k["name"] for k in listed.json()["data"]] == ["ci"]
    unknown = await admin(app, "GET", "/admin/keys?tenant=ghost")  # as /admin/usage and `keys list`
    assert unknown.status == 404 and unknown.json()["error"]["message"] == "no tenant 'ghost'"
    revoked = await admin(app, "DELETE", f"/admin/keys/{created.json()['id']}")
    assert revoked.status == 200
    refused = await chat(app, key=secret)
    assert refused.status == 401 and refused.json()["error"]["code"] == "revoked_api_key"
    expiring = await admin(app, "POST", "/admin/keys", {"tenant": "acme", "expires_in_s": 0.05})
    await asyncio.sleep(0.1)
    expired = await chat(app, key=expiring.json()["secret"])
    assert expired.status == 401 and expired.json()["error"]["code"] == "expired_api_key"
    assert secret not in repr(await ledger(app))


async def test_a_key_reads_the_same_in_the_admin_api_and_the_cli(make_app: AppFactory) -> None:
    """One shape: the same field names, times in ISO 8601 UTC, a status; no secret or digest."""
    from turnout.cli.keys import _as_json

    app, _ = await start(make_app)
    made = (await admin(app, "POST", "/admin/keys", {"tenant": "acme", "name": "ci", "expires_in_s": 3600})).json()
    (listed,) = (await admin(app, "GET", "/admin/keys?tenant=acme")).json()["data"]
    assert set(listed) == {"id", "tenant", "name", "hint", "created_at", "expires_at", "revoked_at", "status"}
    assert {k: made[k] for k in listed} == listed and listed["status"] == "live" and listed["revoked_at"] is None
    for field in ("created_at", "expires_at"):
        assert datetime.fromisoformat(listed[field]).utcoffset() == timedelta(0)
    assert app.runtime.auth.keys is not None
    (record,) = await app.runtime.auth.keys.list("acme")
    assert _as_json(record, time.time()) == listed  # `turnout keys list --format json`
    revoked = (await admin(app, "DELETE", f"/admin/keys/{listed['id']}")).json()
    assert revoked["status"] == "revoked" and datetime.fromisoformat(revoked["revoked_at"])


@pytest.mark.parametrize("ttl", [b"1e308", b"18446744073709551616", b"-1", b"0", b"true", b'"60"'])
async def test_a_key_lifetime_out_of_range_is_refused_and_nothing_is_stored(make_app: AppFactory, ttl: bytes) -> None:
    """Was a 500 after the key was stored (a lifetime past year 9999 could not be written)."""
    app, _ = await start(make_app)
    body = b'{"tenant": "acme", "expires_in_s": ' + ttl + b"}"
    refused = await request(app, "POST", "/admin/keys", headers={"authorization": f"Bearer {ADMIN}"}, raw=body)
    assert refused.status == 400 and refused.json()["error"]["param"] == "expires_in_s"
    assert (await admin(app, "GET", "/admin/keys")).json()["data"] == []


async def test_admin_api_is_for_the_admin_key_only(make_app: AppFactory) -> None:
    app, _ = await start(make_app, limits={"rpm": 100})
    assert (await admin(app, "GET", "/admin/tenants", key=KEY)).status == 403  # a tenant key
    assert (await admin(app, "GET", "/admin/usage?tenant=other", key=KEY)).status == 403
    assert (await admin(app, "GET", "/admin/tenants", key="wrong-key-000")).status == 401
    assert (await request(app, "GET", "/admin/tenants")).status == 401
    tenants = await admin(app, "GET", "/admin/tenants")
    assert tenants.status == 200
    assert KEY not in tenants.body.decode() and OTHER not in tenants.body.decode()
    assert {t["name"] for t in tenants.json()["data"]} == {"acme", "other"}
    assert (await admin(app, "GET", "/admin/usage?tenant=ghost")).status == 404
    assert (await admin(app, "POST", "/admin/keys", {"tenant": "ghost"})).status == 400
    for unhashable in ({"a": 1}, ["acme"]):  # was a plain-text 500
        refused = await admin(app, "POST", "/admin/keys", {"tenant": unhashable})
        assert refused.status == 400 and refused.json()["error"]["param"] == "tenant"
    assert (await admin(app, "DELETE", "/admin/keys/key_nope")).status == 404


async def test_admin_api_is_closed_without_an_admin_key(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TURNOUT_ADMIN_KEY", raising=False)
    raw = config()
    del raw["server"]
    app = await make_app(raw, {"dear": ScriptedProvider("dear"), "cheap": ScriptedProvider("cheap")})
    resp = await admin(app, "GET", "/admin/tenants")
    assert resp.status == 403 and "closed" in resp.json()["error"]["message"]


async def test_unauthenticated_requests_are_counted_in_metrics_not_written_to_the_ledger(
    make_app: AppFactory,
) -> None:
    app, _ = await start(make_app)
    refused = [await chat(app, key=f"sk-wrong-{n:04d}-0123456789") for n in range(20)]
    assert {r.status for r in refused} == {401}
    assert (await chat(app)).status == 200
    rows = await ledger(app)
    assert [r.tenant for r in rows] == ["acme"]  # only the identified caller's request
    text = (await request(app, "GET", "/metrics")).body.decode()
    counted = [
        line for line in text.splitlines() if line.startswith("turnout_requests_total{") and 'status="401"' in line
    ]
    assert len(counted) == 1 and counted[0].endswith(" 20.0")


async def test_a_key_request_with_an_unknown_field_or_a_bad_name_is_refused(make_app: AppFactory) -> None:
    """A typo ("expires_at" for "expires_in_s") made a key that never expires, silently."""
    app, _ = await start(make_app)
    typo = await admin(app, "POST", "/admin/keys", {"tenant": "acme", "name": "ci", "expires_at": "2026-12-06"})
    assert typo.status == 400 and typo.json()["error"]["param"] == "expires_at"
    assert "expires_in_s" in typo.json()["error"]["message"]
    bodies: list[Any] = [[], "acme", 7]
    for body in bodies:
        wrong = await admin(app, "POST", "/admin/keys", body)
        assert wrong.status == 400 and "JSON object" in wrong.json()["error"]["message"], body
    for name in ("ci\nforged row", "nul\x00", "\x1b[2J"):
        bad = await admin(app, "POST", "/admin/keys", {"tenant": "acme", "name": name})
        assert bad.status == 400 and bad.json()["error"]["param"] == "name"
    assert (await admin(app, "PUT", "/admin/keys", {"tenant": "acme"})).status == 405
    assert (await admin(app, "GET", "/admin/keys?tenant=acme")).json()["data"] == []  # nothing was made


async def test_admin_read_routes_take_head_and_their_405_names_it(make_app: AppFactory) -> None:
    """HEAD is GET without the body (RFC 9110): the admin API's GET routes answered it 405, with
    an Allow header that named GET alone, where every other GET route of the gateway takes it."""
    app, _ = await start(make_app)
    for path in ("/admin/tenants", "/admin/keys", "/admin/usage", "/admin/targets"):
        assert (await admin(app, "HEAD", path)).status == 200, path
        refused = await admin(app, "PATCH", path)
        assert refused.status == 405 and "HEAD" in refused.headers["allow"].split(", "), path
    assert (await admin(app, "HEAD", "/admin/tenants", key=KEY)).status == 403  # still the admin's only


async def test_a_wrong_admin_key_is_a_401_without_tenants_too(make_app: AppFactory) -> None:
    """With no tenants configured every key identifies the anonymous caller, so a mistyped
    admin key was a 403 "a tenant key cannot use the admin API", naming keys that do not exist."""
    raw = config()
    del raw["tenants"]
    app = await make_app(raw, {"dear": ScriptedProvider("dear"), "cheap": ScriptedProvider("cheap")})
    wrong = await admin(app, "GET", "/admin/tenants", key="adm-0123456789abcdeX")
    assert wrong.status == 401 and wrong.json()["error"]["message"] == "invalid admin key"
    assert (await admin(app, "GET", "/admin/tenants")).status == 200


async def test_a_blank_tenant_filter_names_no_tenant(make_app: AppFactory) -> None:
    """``?tenant=`` (a script's unset variable) was read as no filter: every tenant's keys came
    back, ready for the next command to revoke. A blank name is a tenant not in the config."""
    app, _ = await start(make_app, limits={"rpm": 100})
    assert (await admin(app, "POST", "/admin/keys", {"tenant": "other", "name": "theirs"})).status == 201
    for path in ("/admin/keys?tenant=", "/admin/usage?tenant=", "/admin/keys?tenant"):
        refused = await admin(app, "GET", path)
        assert refused.status == 404 and refused.json()["error"]["code"] == "not_found", path
    assert [k["name"] for k in (await admin(app, "GET", "/admin/keys")).json()["data"]] == ["theirs"]


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/admin/keys?tenant=acme&tenant=other", "tenant"),
        ("/admin/usage?tenant=other&tenant=acme", "tenant"),
        ("/admin/review?task=chat&task=thrifty", "task"),
        ("/admin/keys?tenat=acme", "tenat"),
        ("/admin/usage?tenants=acme", "tenants"),
        ("/admin/review?stauts=all", "stauts"),
    ],
)
async def test_a_filter_given_twice_or_misspelt_is_refused(make_app: AppFactory, path: str, param: str) -> None:
    """``?tenant=acme&tenant=other`` was read as ``acme`` alone, and ``?tenat=acme`` (a typo) as no
    filter at all: every tenant's keys came back. Each is a 400 naming the parameter."""
    app, _ = await start(make_app, limits={"rpm": 100})
    assert (await admin(app, "POST", "/admin/keys", {"tenant": "other", "name": "theirs"})).status == 201
    refused = await admin(app, "GET", path)
    assert refused.status == 400 and refused.json()["error"]["param"] == param
    assert [k["name"] for k in (await admin(app, "GET", "/admin/keys?tenant=other")).json()["data"]] == ["theirs"]
