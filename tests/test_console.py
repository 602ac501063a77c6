"""The console at /ui, in-process: who gets in (admin, viewer, tenant, nobody), the session
cookie, CSRF refusals, read-only viewers, the security headers, live data on every page, a
rollback and a label that take effect, and no secret on any page."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.asgi import Response, request, settled
from tests.conftest import AppFactory
from tests.fakes.scripted import ScriptedProvider, Step
from turnout.config import validate
from turnout.console import views
from turnout.console.access import Sessions
from turnout.console.overview import MAX_GROUPS, build
from turnout.console.web import MAX_FORM_BYTES
from turnout.ledger.record import AttemptRecord, LedgerRow
from turnout.releases.files import load_all
from turnout.releases.review import MAX_ANSWER, MAX_NOTE
from turnout.releases.store import ReleaseStore
from turnout.serving.app import App

ADMIN = "adm-console-0123456789abcdef"
VIEWER = "view-console-0123456789abcdef"
TENANT = "sk-acme-console-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-secret-9f8e7d6c5b4a"
UPSTREAM_URL = "http://upstream.internal.example:8443/v1"
SECRETS = (ADMIN, VIEWER, TENANT, UPSTREAM_KEY, "gw-pass-77", "upstream.internal.example")
FORM = {"content-type": "application/x-www-form-urlencoded"}
RELEASE = (
    "target: primary\nmodel_version: w-{name}\nprompt:\n  user: 'Say {{{{ text }}}}'\n  variables: {{text: str}}\n"
)


def config(tmp_path: Path, **server: Any) -> dict[str, Any]:
    return {
        "server": {"admin_key": ADMIN, "viewer_key": VIEWER, **server},
        "targets": {
            "primary": {
                "provider": "openai",
                "base_url": UPSTREAM_URL,
                "model": "m",
                "api_key": UPSTREAM_KEY,
                "headers": {"x-gateway-token": "gw-pass-77"},
            }
        },
        "tenants": {"acme": {"keys": [TENANT], "limits": {"rpm": 100, "usd_per_day": 5.0}}},
        "capture": {"mode": "redacted", "redaction_key": "console-redaction-0123456789"},
        "releases": {"path": str(tmp_path / "releases"), "store_path": str(tmp_path / "releases.db")},
        "tasks": {"t": {"route": ["primary"], "review_rate": 1.0}},
    }


async def registered(tmp_path: Path) -> None:
    """Releases v1 and v2 of task t; v1 was active, v2 (evaluated) replaced it."""
    folder = tmp_path / "releases" / "t"
    folder.mkdir(parents=True)
    for name in ("v1", "v2", "v3"):
        (folder / f"{name}.yaml").write_text(RELEASE.format(name=name))
    files = load_all(validate(config(tmp_path)))
    async with ReleaseStore(tmp_path / "releases.db") as store:
        for release in files["t"].values():
            await store.register(release, "ci")
        await store.promote("t", "v1", "ci", "first")
        await store.mark_evaluated("t", "v2", "ci", "golden set passed")
        await store.promote("t", "v2", "ci", "better")


@pytest.fixture
async def app(make_app: AppFactory, tmp_path: Path) -> App:
    await registered(tmp_path)
    provider = ScriptedProvider("primary", Step(text="an answer for jane.doe@example.com"))
    return await make_app(config(tmp_path), {"primary": provider})


# The message a form leaves for the next page (a cookie), by session: as a browser keeps it.
FLASHES: dict[str, str] = {}


async def get(app: App, path: str, cookie: str | None = None, **headers: str) -> Response:
    if cookie is not None:
        headers["cookie"] = "; ".join(filter(None, (cookie, FLASHES.pop(cookie, None))))
    return await request(app, "GET", path, headers=headers)


async def post(app: App, path: str, form: str, cookie: str | None = None, **headers: str) -> Response:
    head = {**FORM, **headers}
    if cookie is not None:
        head["cookie"] = cookie
    resp = await request(app, "POST", path, raw=form.encode(), headers=head)
    kept = resp.headers.get("set-cookie", "").split(";")[0]
    if cookie is not None and kept.startswith("turnout_console_flash="):
        FLASHES[cookie] = kept
    return resp


async def login(app: App, key: str = ADMIN, name: str = "alice", **headers: str) -> str:
    resp = await post(app, "/ui/login", f"key={key}&name={name}", **headers)
    assert resp.status == 303, resp.body
    return resp.headers["set-cookie"].split(";")[0]


def csrf(page: Response) -> str:
    return csrf_of(page.body.decode())


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


async def answer(app: App, user: str = "u1") -> Response:
    headers = {"authorization": f"Bearer {TENANT}", "x-turnout-user": user}
    resp = await request(app, "POST", "/v1/tasks/t", {"variables": {"text": "hi jane.doe@example.com"}}, headers)
    assert resp.status == 200, resp.body
    return resp


# --- who gets in -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui", "/ui/", "/ui/targets", "/ui/releases", "/ui/review?status=all"])
async def test_a_page_without_a_session_redirects_to_the_login_form(app: App, path: str) -> None:
    resp = await get(app, path)
    assert resp.status == 303
    assert resp.headers["location"].startswith("/ui/login?next=")
    login_page = await get(app, resp.headers["location"])
    assert login_page.status == 200
    assert 'name="key"' in login_page.body.decode()


async def test_the_admin_key_logs_in_once_and_gets_a_strict_cookie(app: App) -> None:
    resp = await post(app, "/ui/login", f"key={ADMIN}&name=alice&next=/ui/releases")
    assert resp.status == 303 and resp.headers["location"] == "/ui/releases"
    attrs = [a.strip() for a in resp.headers["set-cookie"].split(";")]
    assert attrs[0].startswith("turnout_console=") and len(attrs[0]) > 40
    assert ADMIN not in resp.headers["set-cookie"]
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui"} <= set(attrs)
    assert "Secure" not in attrs  # plain HTTP: a Secure cookie would never come back
    page = await get(app, "/ui/releases", attrs[0])
    assert page.status == 200
    assert "alice" in page.body.decode() and "admin" in page.body.decode()


@pytest.mark.parametrize("proxy", [{"x-forwarded-proto": "https"}, {"x-forwarded-proto": "https, http"}])
async def test_the_cookie_is_secure_behind_tls(app: App, proxy: dict[str, str]) -> None:
    resp = await post(app, "/ui/login", f"key={ADMIN}", **proxy)
    assert "Secure" in [a.strip() for a in resp.headers["set-cookie"].split(";")]


async def test_each_login_is_a_new_session(app: App) -> None:
    first, second = await login(app), await login(app)
    assert first != second
    assert (await get(app, "/ui", first)).status == 200
    assert (await get(app, "/ui", second)).status == 200


async def test_a_wrong_key_is_401_and_a_tenant_key_403(app: App) -> None:
    wrong = await post(app, "/ui/login", "key=not-a-key")
    assert wrong.status == 401 and "set-cookie" not in wrong.headers
    assert "not the admin or viewer key" in wrong.body.decode()
    tenant = await post(app, "/ui/login", f"key={TENANT}")
    assert tenant.status == 403 and "set-cookie" not in tenant.headers
    assert "tenant key" in tenant.body.decode()
    assert (await post(app, "/ui/login", "key=")).status == 401


async def test_a_tenant_key_on_a_page_is_403(app: App) -> None:
    resp = await get(app, "/ui/tenants", authorization=f"Bearer {TENANT}")
    assert resp.status == 403
    assert "acme" not in resp.body.decode()


async def test_a_forged_or_stale_cookie_is_no_session(app: App) -> None:
    assert (await get(app, "/ui", "turnout_console=forged-session-id")).status == 303
    cookie = await login(app)
    page = await get(app, "/ui/releases", cookie)
    out = await post(app, "/ui/logout", f"csrf={csrf(page)}", cookie)
    assert out.status == 303 and out.headers["location"] == "/ui/login"
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert (await get(app, "/ui", cookie)).status == 303  # the old cookie is dead


async def test_log_out_in_a_second_tab_or_after_expiry_still_logs_out(app: App) -> None:
    """The second tab's Log out (the session already ended in the first, or expired) answered
    403 "log in first": it goes to the login page, as the first did."""
    cookie = await login(app)
    page = await get(app, "/ui/releases", cookie)
    assert (await post(app, "/ui/logout", f"csrf={csrf(page)}", cookie)).status == 303
    again = await post(app, "/ui/logout", f"csrf={csrf(page)}", cookie)
    assert again.status == 303 and again.headers["location"] == "/ui/login"
    assert "Max-Age=0" in again.headers["set-cookie"]
    assert (await post(app, "/ui/logout", "", "turnout_console=forged")).status == 303
    cross = await post(app, "/ui/logout", "", cookie, origin="https://evil.example")
    assert cross.status == 403 and "set-cookie" not in cross.headers
    assert (await post(app, "/ui/releases/t/rollback", f"csrf={csrf(page)}&why=x", cookie)).status == 403


async def test_failed_logins_are_throttled(app: App) -> None:
    for _ in range(10):
        assert (await post(app, "/ui/login", "key=guess")).status == 401
    resp = await post(app, "/ui/login", f"key={ADMIN}")
    assert resp.status == 429 and "set-cookie" not in resp.headers


async def test_guesses_whose_bodies_arrive_together_are_throttled_too(app: App) -> None:
    """Forty connections send a login's headers, then all their bodies at once: each had passed
    the check of failures before its body came, so all forty guesses were tried."""
    bodies = asyncio.Event()

    async def guess(n: int) -> int:
        form = f"key=guess{n}".encode()
        head = [(b"content-type", FORM["content-type"].encode()), (b"content-length", str(len(form)).encode())]
        scope = {"type": "http", "method": "POST", "path": "/ui/login", "headers": head, "query_string": b""}
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            await bodies.wait()
            return {"type": "http.request", "body": form, "more_body": False}

        async def send(message: Any) -> None:
            sent.append(message)

        await app.http(scope, receive, send)
        status: int = sent[0]["status"]
        return status

    tries = [asyncio.ensure_future(guess(n)) for n in range(40)]
    await asyncio.sleep(0.05)  # every request has its headers in and waits for its body
    bodies.set()
    statuses = await asyncio.gather(*tries)
    assert statuses.count(401) == 10 and statuses.count(429) == 30


async def test_a_viewer_login_does_not_reset_the_count_of_guesses(app: App) -> None:
    """Nine guesses at the admin key, then the viewer key, over and over: unlimited guesses."""
    for _ in range(9):
        assert (await post(app, "/ui/login", "key=guess")).status == 401
    assert (await post(app, "/ui/login", f"key={VIEWER}")).status == 303
    assert (await post(app, "/ui/login", "key=guess")).status == 401  # the tenth
    assert (await post(app, "/ui/login", "key=guess")).status == 429


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example/x",
        "https://evil.example",
        "/ui\\..\\x",
        "/admin/keys",
        "/ui/../admin/keys",  # the browser resolves the dot segments: /admin/keys
        "/ui/%252e%252e/admin/keys",  # ... and so it does with them percent-encoded
        "/ui/./%252E./metrics",
        "/uiadmin",
    ],
)
async def test_login_never_redirects_off_the_console(app: App, target: str) -> None:
    resp = await post(app, "/ui/login", f"key={ADMIN}&next={target}")
    assert resp.status == 303 and resp.headers["location"] == "/ui"


async def test_login_goes_on_to_the_console_page_it_was_asked_for(app: App) -> None:
    for target in ("/ui/review?status=all&task=t", "/ui/releases", "/ui?window=7d", "/ui/"):
        resp = await post(app, "/ui/login", f"key={ADMIN}&next={quote(target)}")
        assert resp.status == 303 and resp.headers["location"] == target


async def test_without_an_admin_or_viewer_key_the_console_is_closed(make_app: AppFactory, tmp_path: Path) -> None:
    raw = config(tmp_path)
    raw["server"] = {}
    app = await make_app(raw, {"primary": ScriptedProvider("primary")})
    assert "console is closed" in (await get(app, "/ui/login")).body.decode()
    assert (await post(app, "/ui/login", "key=anything")).status == 403


async def test_login_posted_from_another_site_is_refused(app: App) -> None:
    resp = await post(app, "/ui/login", f"key={ADMIN}", origin="https://evil.example", host="gw.example")
    assert resp.status == 403 and "set-cookie" not in resp.headers


# --- CSRF -------------------------------------------------------------------------------


async def test_a_post_without_or_with_a_wrong_csrf_token_is_403_and_changes_nothing(app: App) -> None:
    cookie = await login(app)
    other = await login(app, name="mallory")
    other_token = csrf(await get(app, "/ui/releases", other))
    assert app.runtime.release_store is not None
    before = await app.runtime.release_store.serving_row("t")
    for form in ("why=forged", "why=forged&csrf=", "why=forged&csrf=0123abcd", f"why=forged&csrf={other_token}"):
        resp = await post(app, "/ui/releases/t/rollback", form, cookie)
        assert resp.status == 403, form
        assert "CSRF" in resp.body.decode()
    assert await app.runtime.release_store.serving_row("t") == before
    assert (await answer(app)).headers["x-turnout-release"] == "v2"


async def test_a_post_without_a_session_is_403(app: App) -> None:
    resp = await post(app, "/ui/releases/t/rollback", "why=x&csrf=whatever")
    assert resp.status == 403


async def test_a_post_from_another_origin_is_403_even_with_the_token(app: App) -> None:
    cookie = await login(app)
    token = csrf(await get(app, "/ui/releases", cookie))
    resp = await post(
        app, "/ui/releases/t/rollback", f"why=x&csrf={token}", cookie, origin="https://evil.example", host="gw"
    )
    assert resp.status == 403
    same = await post(app, "/ui/releases/t/rollback", f"why=x&csrf={token}", cookie, origin="http://gw", host="gw")
    assert same.status == 303
    proxied = {"origin": "https://console.example", "host": "127.0.0.1:8080", "x-forwarded-host": "console.example"}
    assert (await post(app, "/ui/releases/t/rollback", f"why=x&csrf={token}", cookie, **proxied)).status == 303
    proxied["origin"] = "https://evil.example"
    assert (await post(app, "/ui/releases/t/rollback", f"why=x&csrf={token}", cookie, **proxied)).status == 403


async def test_a_form_must_be_urlencoded(app: App) -> None:
    cookie = await login(app)
    token = csrf(await get(app, "/ui/releases", cookie))
    resp = await request(
        app,
        "POST",
        "/ui/releases/t/rollback",
        {"why": "x", "csrf": token},
        {"cookie": cookie, "content-type": "application/json"},
    )
    assert resp.status == 400


# --- viewers ------------------------------------------------------------------------------


async def test_a_viewer_sees_every_page_but_cannot_post(app: App) -> None:
    cookie = await login(app, VIEWER, "victor")
    for path in ("/ui", "/ui/targets", "/ui/releases", "/ui/review", "/ui/tenants"):
        page = await get(app, path, cookie)
        assert page.status == 200, path
        assert "/ui/releases/t/rollback" not in page.body.decode()
        assert 'name="label"' not in page.body.decode()
    token = csrf(await get(app, "/ui/releases", cookie))  # the logout form's
    resp = await post(app, "/ui/releases/t/rollback", f"why=x&csrf={token}", cookie)
    assert resp.status == 403 and "read-only" in resp.body.decode()
    assert (await answer(app)).headers["x-turnout-release"] == "v2"
    assert (await post(app, "/ui/logout", f"csrf={token}", cookie)).status == 303


# --- headers and hostile input ----------------------------------------------------------------


async def test_every_page_has_a_strict_csp_and_no_inline_script(app: App) -> None:
    cookie = await login(app)
    for path in ("/ui/login", "/ui", "/ui/targets", "/ui/releases", "/ui/review", "/ui/tenants"):
        page = await get(app, path, cookie if path != "/ui/login" else None)
        assert page.status == 200, path
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        html = page.body.decode()
        assert all('src="/ui/static/' in tag for tag in re.findall(r"<script[^>]*>", html))
        assert " style=" not in html and "<style" not in html
        assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
        assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")  # nothing off-site


async def test_static_files_are_served_and_nothing_else(app: App) -> None:
    css = await get(app, "/ui/static/console.css")
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    js = await get(app, "/ui/static/console.js")
    assert js.status == 200 and "javascript" in js.headers["content-type"]
    again = await get(app, "/ui/static/console.css", **{"if-none-match": css.headers["etag"]})
    assert again.status == 304
    for path in ("/ui/static/../app.py", "/ui/static/", "/ui/static/templates/base.html", "/ui/static/%2e%2e"):
        assert (await get(app, path)).status == 404, path


async def test_unknown_pages_and_methods(app: App) -> None:
    cookie = await login(app)
    assert (await get(app, "/ui/nothing", cookie)).status == 404
    assert (await get(app, "/ui/overview", cookie)).status == 404
    refused = await request(app, "DELETE", "/ui/releases", headers={"cookie": cookie})
    assert refused.status == 405 and refused.headers["allow"] == "GET, HEAD"
    token = csrf(await get(app, "/ui/releases", cookie))
    assert (await post(app, "/ui/releases/t/explode", f"why=x&csrf={token}", cookie)).status == 303
    assert "no release action" in (await get(app, "/ui/releases", cookie)).body.decode()
    assert (await post(app, "/ui/somewhere", f"csrf={token}", cookie)).status == 404


async def test_odd_queries_and_bodies_are_not_500s(app: App) -> None:
    cookie = await login(app)
    for path in ("/ui?window=%ff%fe", "/ui?window=1y&task=nope", "/ui/review?status=bogus&task=%00", "/ui?a=1&a=2"):
        assert (await get(app, path, cookie)).status == 200, path
    token = csrf(await get(app, "/ui/review", cookie))
    huge = f"csrf={token}&note=" + "x" * MAX_FORM_BYTES
    assert (await post(app, "/ui/review/1", huge, cookie)).status == 413
    assert (await post(app, "/ui/review/%C2%B2", f"csrf={token}&label=accept", cookie)).status == 303
    assert (await post(app, "/ui/review/99999999999999999999", f"csrf={token}&label=accept", cookie)).status == 303
    page = (await get(app, "/ui/review", cookie)).body.decode()
    assert "no review item" in page


# --- pages with live data ----------------------------------------------------------------------


async def test_every_page_shows_live_data_and_no_secret(app: App) -> None:
    for n in range(3):
        await answer(app, f"user-{n}")
    await settled(app)
    keys = await request(
        app, "POST", "/admin/keys", {"tenant": "acme", "name": "ci"}, {"authorization": f"Bearer {ADMIN}"}
    )
    issued = keys.json()["secret"]
    cookie = await login(app)
    pages = {
        p: (await get(app, p, cookie)).body.decode()
        for p in ("/ui", "/ui/targets", "/ui/releases", "/ui/review", "/ui/tenants")
    }
    overview = pages["/ui"]
    assert 'id="tile-requests">3<' in overview
    assert overview.count('class="chart"') == 3 and 'class="bar"' in overview
    assert "t</td><td>v2</td><td>primary" in overview
    assert "primary" in pages["/ui/targets"] and "breaker closed" in pages["/ui/targets"]
    releases = pages["/ui/releases"]
    assert 'class="serving-active">v2<' in releases and "golden set passed" in releases and "ci" in releases
    review = pages["/ui/review"]
    assert review.count('class="card item"') == 3
    assert "jane.doe@example.com" not in review and "[EMAIL_" in review
    tenants = pages["/ui/tenants"]
    assert "acme" in tenants and "rpm=100" in tenants and "usd_per_day" in tenants and "<meter" in tenants
    assert keys.json()["id"] in tenants and keys.json()["hint"] in tenants
    for path, html in pages.items():
        for secret in (*SECRETS, issued):
            assert secret not in html, (path, secret)


async def test_the_targets_page_counts_a_busy_quarter_hours_errors_whole(app: App) -> None:
    """The page read the window's oldest 20,000 rows: on a busy gateway, the errors of the last
    minutes (the ones an operator opens it for) were never counted."""
    now = time.time()
    ok = AttemptRecord(target="primary", replica="r", error_class=None, latency_ms=5.0)
    failed = AttemptRecord(target="primary", replica="r", error_class="timeout_ttft", latency_ms=5.0)
    rows = [
        LedgerRow(
            f"b{n}", now - 600 + n / 100, "acme", "t", "internal", False, attempts=[failed if n >= 20_000 else ok]
        )
        for n in range(20_500)
    ]
    assert app.runtime.store is not None
    await app.runtime.store.write_batch(rows)
    page = (await get(app, "/ui/targets", await login(app))).body.decode()
    assert "<code>timeout_ttft</code> × 500" in page


async def test_the_overview_window_and_task_choices(app: App) -> None:
    await answer(app)
    await settled(app)
    cookie = await login(app)
    for window in ("15m", "1h", "6h", "24h", "7d"):
        page = (await get(app, f"/ui?window={window}&task=t", cookie)).body.decode()
        assert f'href="/ui?window={window}&amp;task=t" class="on"' in page
        assert 'id="tile-requests">1<' in page


async def test_tabs_that_load_the_overview_at_once_share_one_computation(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A week of rows takes seconds to read and sum: four tabs reloading together waited on four
    computations, one after another (the last 15 s on a 120k-row ledger), not on one."""
    computed: list[tuple[str, str | None]] = []
    overview = views.overview

    async def slow(runtime: Any, window: str, task: str | None) -> Any:
        computed.append((window, task))
        await asyncio.sleep(0.05)
        return await overview(runtime, window, task)

    monkeypatch.setattr(views, "overview", slow)
    cookie = await login(app)
    pages = await asyncio.gather(*(get(app, "/ui?window=7d", cookie) for _ in range(4)))
    assert [p.status for p in pages] == [200] * 4
    assert computed == [("7d", None)]
    await get(app, "/ui?window=1h", cookie)  # another window is another computation
    assert computed == [("7d", None), ("1h", None)]


async def test_a_rollback_from_the_console_takes_effect_at_once(app: App) -> None:
    assert (await answer(app)).headers["x-turnout-release"] == "v2"
    cookie = await login(app, name="alice")
    token = csrf(await get(app, "/ui/releases", cookie))
    resp = await post(app, "/ui/releases/t/rollback", f"csrf={token}&why=error+rate+up", cookie)
    assert resp.status == 303 and resp.headers["location"].startswith("/ui/releases")
    assert (await answer(app)).headers["x-turnout-release"] == "v1"
    shown = await get(app, "/ui/releases", cookie)
    page = shown.body.decode()
    assert "rolled back; v1 is active" in page  # the flash, once: the page clears its cookie
    assert shown.headers["set-cookie"].startswith("turnout_console_flash=; Path=/ui; Max-Age=0")
    assert "alice (console)" in page and "error rate up" in page
    assert "rolled back" not in (await get(app, "/ui/releases", cookie)).body.decode()


async def test_promote_and_canary_from_the_console(app: App) -> None:
    cookie = await login(app)
    token = csrf(await get(app, "/ui/releases", cookie))
    refused = await post(app, "/ui/releases/t/canary", f"csrf={token}&release=v3&percent=10&why=try", cookie)
    assert refused.status == 303
    assert "golden set first" in (await get(app, "/ui/releases", cookie)).body.decode()
    for bad in ("percent=0", "percent=101", "percent=nan", "percent=ten"):
        await post(app, "/ui/releases/t/canary", f"csrf={token}&release=v3&{bad}&why=try", cookie)
        assert "canary share" in (await get(app, "/ui/releases", cookie)).body.decode(), bad
    await post(app, "/ui/releases/t/promote", f"csrf={token}&release=v3&why=", cookie)
    assert "say why" in (await get(app, "/ui/releases", cookie)).body.decode()
    done = await post(app, "/ui/releases/t/promote", f"csrf={token}&release=v3&force=on&why=hotfix", cookie)
    assert done.status == 303
    assert (await answer(app)).headers["x-turnout-release"] == "v3"
    assert app.runtime.release_store is not None
    moves = await app.runtime.release_store.transitions("t", "v3")
    assert (moves[-1].to_state, moves[-1].by, moves[-1].why) == (
        "active",
        "alice (console)",
        "hotfix [forced: promoted from registered without passing its gates]",
    )


async def test_release_text_is_escaped(app: App) -> None:
    cookie = await login(app, name="<b>eve</b>")
    token = csrf(await get(app, "/ui/releases", cookie))
    await post(app, "/ui/releases/t/rollback", f"csrf={token}&why=%3Cscript%3Ealert(1)%3C/script%3E", cookie)
    page = (await get(app, "/ui/releases", cookie)).body.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>eve</b>" not in page and "&lt;b&gt;eve&lt;/b&gt;" in page


async def test_a_label_from_the_console_reaches_the_admin_api(app: App) -> None:
    await answer(app)
    cookie = await login(app, name="bob")
    page = await get(app, "/ui/review", cookie)
    [item] = re.findall(r'action="/ui/review/(\d+)"', page.body.decode())
    resp = await post(
        app, f"/ui/review/{item}", f"csrf={csrf(page)}&label=escalate&note=looks+off&back=/ui/review", cookie
    )
    assert resp.status == 303 and resp.headers["location"] == "/ui/review"
    admin = await request(app, "GET", "/admin/review?status=all", headers={"authorization": f"Bearer {ADMIN}"})
    [found] = admin.json()["data"]
    assert found["status"] == "escalate" and found["note"] == "looks off" and found["labeled_by"] == "bob (console)"
    escalations = (await get(app, "/ui/review?status=escalate", cookie)).body.decode()
    assert f'id="item-{item}"' in escalations
    bad = await post(app, f"/ui/review/{item}", f"csrf={csrf(page)}&label=delete", cookie)
    assert bad.status == 303
    assert "label must be one of" in (await get(app, "/ui/review", cookie)).body.decode()


async def test_a_label_form_goes_back_to_the_pages_filters_not_its_whole_query(app: App) -> None:
    """Each item's form carried the page's raw query string back: 100 items made a 60 kB query a
    6 MB page. It carries the status and task the page shows, nothing else."""
    for n in range(3):
        await answer(app, f"user-{n}")
    cookie = await login(app)
    page = (await get(app, "/ui/review?status=all&task=t&junk=" + "x" * 5000, cookie)).body.decode()
    backs = re.findall(r'name="back" value="([^"]*)"', page)
    assert backs == ["/ui/review?status=all&amp;task=t"] * 3
    assert len(page) < 20_000
    plain = (await get(app, "/ui/review", cookie)).body.decode()
    assert re.findall(r'name="back" value="([^"]*)"', plain) == ["/ui/review?status=pending"] * 3


async def test_a_ticket_answered_from_the_console_passes_the_tasks_checks_and_is_final(
    make_app: AppFactory, tmp_path: Path
) -> None:
    await registered(tmp_path)
    raw = config(tmp_path)
    raw["tasks"]["short"] = {"route": ["primary"], "output": {"max_chars": 8, "escalate": {"to": "human"}}}
    provider = ScriptedProvider("primary", Step(text="a model answer far longer than eight characters"))
    app = await make_app(raw, {"primary": provider})
    body = {"model": "short", "messages": [{"role": "user", "content": "hi"}]}
    ticket = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {TENANT}"})
    assert ticket.status == 202, ticket.body
    cookie = await login(app, name="bob")
    page = await get(app, "/ui/review?status=pending", cookie)
    [item] = re.findall(r'action="/ui/review/(\d+)"', page.body.decode())
    form = f"csrf={csrf(page)}&label=accept&answer=nine+char&back=/ui/review"
    assert (await post(app, f"/ui/review/{item}", form, cookie)).status == 303
    assert "this task allows at most 8" in (await get(app, "/ui/review", cookie)).body.decode()
    poll = {"authorization": f"Bearer {TENANT}"}
    assert (await request(app, "GET", ticket.json()["url"], headers=poll)).json()["status"] == "pending"
    form = f"csrf={csrf(page)}&label=accept&answer=eight+ch&back=/ui/review"
    assert (await post(app, f"/ui/review/{item}", form, cookie)).status == 303
    answered = (await request(app, "GET", ticket.json()["url"], headers=poll)).json()
    assert (answered["status"], answered["answer"]) == ("answered", "eight ch")
    form = f"csrf={csrf(page)}&label=reject&back=/ui/review"
    assert (await post(app, f"/ui/review/{item}", form, cookie)).status == 303
    assert "its outcome is final" in (await get(app, "/ui/review", cookie)).body.decode()
    assert (await request(app, "GET", ticket.json()["url"], headers=poll)).json()["status"] == "answered"


async def test_the_longest_answer_and_note_the_review_form_allows_can_be_sent(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """The answer box let a reviewer type 20,000 characters (the queue keeps 50,000) but the
    console refused forms over 64 kB: 8,000 characters of Japanese, percent-encoded, were a 413
    page and the answer was lost."""
    await registered(tmp_path)
    raw = config(tmp_path)
    raw["tasks"]["long"] = {"route": ["primary"], "output": {"max_chars": MAX_ANSWER, "escalate": {"to": "human"}}}
    provider = ScriptedProvider("primary", Step(text="x" * (MAX_ANSWER + 1)))
    app = await make_app(raw, {"primary": provider})
    body = {"model": "long", "messages": [{"role": "user", "content": "hi"}]}
    ticket = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {TENANT}"})
    assert ticket.status == 202, ticket.body
    cookie = await login(app)
    page = (await get(app, "/ui/review?status=pending", cookie)).body.decode()
    assert f'name="answer" rows="4" maxlength="{MAX_ANSWER}"' in page
    assert f'name="note" placeholder="note (optional)" maxlength="{MAX_NOTE}"' in page
    [item] = re.findall(r'action="/ui/review/(\d+)"', page)
    answer, note = "日" * MAX_ANSWER, "注" * MAX_NOTE
    form = f"csrf={csrf_of(page)}&label=accept&answer={quote(answer)}&note={quote(note)}&back=/ui/review"
    assert (await post(app, f"/ui/review/{item}", form, cookie)).status == 303
    poll = {"authorization": f"Bearer {TENANT}"}
    answered = (await request(app, "GET", ticket.json()["url"], headers=poll)).json()
    assert (answered["status"], answered["answer"]) == ("answered", answer)


# --- the parts, on their own ------------------------------------------------------------------


def test_sessions_expire_and_end() -> None:
    sessions = Sessions("admin-key", "viewer-key", ttl_s=60)
    now = time.time()
    s = sessions.start("admin", "  ann\x00\n  lee  ", now=now)
    assert s.name == "ann lee" and s.can_change
    assert sessions.get(s.id, now + 59) == s
    assert sessions.get(s.id, now + 61) is None  # expired
    v = sessions.start("viewer", "", now=now)
    assert v.name == "console" and not v.can_change
    sessions.end(v.id)
    assert sessions.get(v.id, now) is None


def test_a_flash_is_signed_bound_to_its_session_and_fits_a_cookie() -> None:
    """With --workers the worker that took a form kept its message: the next page, from the
    other worker, said nothing. The message now travels in a signed cookie."""
    secret = os.urandom(32)
    one, two = Sessions("admin-key", None, secret=secret), Sessions("admin-key", None, secret=secret)
    a, b = one.start("admin", "a", time.time()), one.start("admin", "b", time.time())

    def jar(set_cookie: bytes) -> bytes:
        return b"turnout_console=x; " + set_cookie.split(b";")[0]

    carried = one.flash(a, "error", "no task 'x'", secure=False)
    assert b"HttpOnly" in carried and b"SameSite=Strict" in carried and b"Path=/ui" in carried
    assert two.take_flash(a, jar(carried)) == ("error", "no task 'x'")  # another worker shows it
    assert two.take_flash(b, jar(carried)) is None  # another session's message is not shown
    assert Sessions("admin-key", None).take_flash(a, jar(carried)) is None  # nor one signed by another secret
    assert one.take_flash(a, jar(carried).replace(b"turnout_console_flash=", b"turnout_console_flash=A")) is None
    assert one.take_flash(a, b"turnout_console_flash=!!!.???") is None and one.take_flash(a, None) is None
    long = one.flash(a, "ok", "日" * 5000, secure=True)
    assert len(long) < 4000 and long.endswith(b"; Secure")
    kind, text = one.take_flash(a, jar(long)) or ("", "")
    assert kind == "ok" and text.startswith("日" * 600) and text.endswith("…")


def test_csrf_tokens_are_bound_to_their_session_and_process() -> None:
    sessions = Sessions("admin-key", None)
    a, b = sessions.start("admin", "a", 0.0), sessions.start("admin", "b", 0.0)
    assert sessions.csrf_ok(a, a.csrf) and not sessions.csrf_ok(a, b.csrf)
    assert not sessions.csrf_ok(a, None) and not sessions.csrf_ok(a, "") and not sessions.csrf_ok(a, a.csrf + "0")
    assert not Sessions("admin-key", None).csrf_ok(a, a.csrf)  # another process, another secret


def test_roles_by_key() -> None:
    sessions = Sessions("same-key", "same-key")
    assert sessions.role_of("same-key") == "admin"  # the admin key wins when both are equal
    assert Sessions(None, "v").role_of("v") == "viewer"
    assert Sessions(None, None).role_of("") is None and not Sessions(None, None).open


def test_a_session_holds_on_every_worker_and_a_logout_on_every_worker(tmp_path: Path) -> None:
    """With --workers each process has its own console: one secret and one directory of
    logged-out sessions, handed out by the supervisor, make a login hold on whichever answers."""
    secret, revoked = os.urandom(32), str(tmp_path)
    one, two = (Sessions("admin-key", None, secret=secret, revoked_dir=revoked) for _ in range(2))
    now = time.time()
    s = one.start("admin", "ann", now)
    found = two.get(s.id, now)
    assert found is not None and (found.role, found.name) == ("admin", "ann") and two.csrf_ok(found, s.csrf)
    two.end(s.id)
    assert one.get(s.id, now) is None and two.get(s.id, now) is None
    [kept] = tmp_path.iterdir()
    assert s.id not in kept.name and len(kept.name) == 40  # a digest, not the token
    assert Sessions("admin-key", None).get(one.start("admin", "b", now).id, now) is None  # another secret


@pytest.mark.parametrize("mangle", ["flip", "role", "expiry", "junk"])
def test_a_forged_session_token_is_no_session(mangle: str) -> None:
    sessions = Sessions("admin-key", "viewer-key")
    now = time.time()
    token = sessions.start("viewer", "v", now).id
    body, _, mac = token.rpartition(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if mangle == "flip":
        forged = body + "." + mac[:-2] + ("AA" if mac[-2:] != "AA" else "BB")
    elif mangle == "role":
        forged = base64.urlsafe_b64encode(payload.replace(b"viewer", b"admin")).decode().rstrip("=") + "." + mac
    elif mangle == "expiry":
        forged = base64.urlsafe_b64encode(payload.replace(b"\x1f1", b"\x1f9", 1)).decode().rstrip("=") + "." + mac
    else:
        forged = "!!!.???"
    assert sessions.get(forged, now) is None


def row(n: int, **kw: Any) -> LedgerRow:
    fields: dict[str, Any] = {
        "request_id": f"r{n}",
        "started_at": 1000.0 + n,
        "tenant": "acme",
        "task": "t",
        "data_class": "internal",
        "stream": False,
        "release": "v1",
        "target": "a",
        "status": 200,
        "latency_ms": 100.0 + n,
        "queue_ms": 1.0,
        "generation_ms": 50.0,
        "cost_usd": 0.01,
    }
    fields.update(kw)
    return LedgerRow(**fields)


def test_the_overview_figures() -> None:
    rows = [
        row(0, outcome="success"),
        row(1, outcome="success", ttft_ms=20.0, stream=True),
        row(2, status=502, error_class="http_500", fallback=True, target="b"),
        row(3, status=429, latency_ms=1.0),  # a caller error: in requests, not in latency
        row(4, release="v2", outcome="failure"),
    ]
    found = build(rows, "1h", 990.0, 1010.0, truncated=False)
    whole = found.groups[-1]
    assert (whole["task"], whole["release"], whole["target"]) == ("(all)", "(all)", "(all)")
    assert found.tiles["requests"] == 5 and found.tiles["errors"] == 1 and found.tiles["fallbacks"] == 1
    assert found.tiles["completed"] == 2
    assert found.tiles["cost_per_completed_usd"] == pytest.approx(0.05 / 2)
    assert whole["total_p50_ms"] == pytest.approx(101.5)  # 100, 101, 102, 104: the 429 left out
    assert whole["ttft_p95_ms"] == 20.0 and whole["generation_p50_ms"] == 50.0
    by_key = {(g["task"], g["release"], g["target"]): g for g in found.groups}
    assert by_key[("t", "v1", "a")]["requests"] == 3 and by_key[("t", "v1", "b")]["errors"] == 1
    assert by_key[("t", "v2", "a")]["cost_per_completed_usd"] is None
    assert len(found.charts) == 3 and all(c.startswith("<svg") for c in found.charts)
    # v1·a has a cost per completed task; v1·b and v2·a completed none
    assert found.charts[2].count('class="bar"') == 1 and found.charts[2].count(">n/a<") == 2


def test_one_group_still_has_its_total_and_none_is_empty() -> None:
    found = build([row(0, outcome="success")], "15m", 990.0, 1010.0, truncated=True)
    assert [g["task"] for g in found.groups] == ["t", "(all)"] and found.tiles["requests"] == 1
    assert any("more than" in note for note in found.notes)
    empty = build([], "15m", 990.0, 1010.0, truncated=False)
    assert empty.tiles["requests"] == 0 and empty.tiles["cost_per_completed_usd"] is None
    assert "no data in this window" in empty.charts[2]


def test_chart_labels_are_escaped() -> None:
    found = build([row(0, task="<script>x</script>", outcome="success")], "1h", 990.0, 1010.0, truncated=False)
    assert "<script>" not in "".join(found.charts) and "&lt;script&gt;" in found.charts[2]


def test_made_up_task_names_are_one_group_and_the_table_is_bounded() -> None:
    """20,000 made-up task names (404s from any tenant) made an 18.6 MB page: they are one
    (unknown task) group, and past MAX_GROUPS the smallest groups are summed as (other)."""
    junk = [row(i, task=f"junk{i}", release=None, target=None, status=404) for i in range(20_000)]
    served = [row(0, outcome="success"), row(1, task="gone", outcome="success")]  # a removed task that was served
    found = build(served + junk, "1h", 990.0, 1010.0, truncated=False, known={"t"})
    names = [g["task"] for g in found.groups]
    assert names == ["(unknown task)", "gone", "t", "(all)"]
    assert found.groups[0]["requests"] == 20_000 and found.tiles["requests"] == 20_002
    assert any("20,000 task names" in note for note in found.notes)
    many = [row(i, target=f"x{i % 120}", outcome="success") for i in range(600)]
    bounded = build(many, "1h", 990.0, 1010.0, truncated=False, known={"t"})
    assert len(bounded.groups) == MAX_GROUPS + 1  # the kept groups, (other), and the window's "(all)"
    other = next(g for g in bounded.groups if g["task"] == "(other)")
    assert other["requests"] == 600 - 5 * (MAX_GROUPS - 1) and bounded.tiles["requests"] == 600
    assert sum(len(c) for c in bounded.charts) < 100_000


async def test_paths_and_queries_that_are_not_utf8_or_too_long_are_not_500s(app: App) -> None:
    cookie = await login(app)
    token = csrf(await get(app, "/ui/releases", cookie))
    assert (await get(app, "/ui/\udcff")).status == 303  # no session: to the login form
    assert (await get(app, "/ui/\udcff", cookie)).status == 404
    assert (await post(app, "/ui/releases/\udcff/rollback", f"csrf={token}&why=x", cookie)).status == 303
    assert "no task" in (await get(app, "/ui/releases", cookie)).body.decode()
    assert (await get(app, "/ui?" + "&".join(f"k{n}=v" for n in range(60)), cookie)).status == 400
    many = f"csrf={token}&" + "&".join(f"k{n}=v" for n in range(60))
    assert (await post(app, "/ui/releases/t/rollback", many, cookie)).status == 400
    assert (await request(app, "HEAD", "/ui/targets", headers={"cookie": cookie})).status == 200


async def test_the_releases_page_shows_a_shadow_and_its_sample(make_app: AppFactory, tmp_path: Path) -> None:
    await registered(tmp_path)
    async with ReleaseStore(tmp_path / "releases.db") as store:
        await store.start_shadow("t", "v3", 100, "ci", "compare")
    provider = ScriptedProvider("primary", Step(text="the same answer"))
    app = await make_app(config(tmp_path), {"primary": provider})
    for i in range(4):
        await answer(app, f"u{i}")
    assert app.runtime.shadows is not None
    for _ in range(300):  # mirrored after each answer, written in batches
        if len(await app.runtime.shadows.store.pairs("t")) >= 1:
            break
        await asyncio.sleep(0.02)
    page = (await get(app, "/ui/releases", await login(app))).body.decode()
    assert '<strong class="serving-shadow">v3</strong>' in page and "copy of 100%" in page
    assert "Shadow sample" in page and "agreement 100.0%" in page
    assert "the same answer" not in page  # pairs keep no text


async def test_a_shadow_goes_to_canary_from_the_console_only_once_its_sample_passes(
    make_app: AppFactory, tmp_path: Path
) -> None:
    from tests.test_shadow import pair

    await registered(tmp_path)
    async with ReleaseStore(tmp_path / "releases.db") as store:
        await store.start_shadow("t", "v3", 10, "ci", "compare")
    app = await make_app(config(tmp_path), {"primary": ScriptedProvider("primary")})
    cookie = await login(app)
    token = csrf(page := await get(app, "/ui/releases", cookie))
    assert '<option value="v3">v3 (shadow)</option>' in page.body.decode()
    form = f"csrf={token}&release=v3&percent=5&why=looks+good"
    await post(app, "/ui/releases/t/canary", form, cookie)
    shown = (await get(app, "/ui/releases", cookie)).body.decode()
    assert "is in shadow and its sample does not pass" in shown and "min_pairs: 0 mirrored requests" in shown
    assert app.runtime.shadows is not None
    now = time.time()
    sample = [pair(i, task="t", served_release="v2", shadow_release="v3", at=now - 60 + i) for i in range(60)]
    await app.runtime.shadows.store.write_pairs(sample)
    await post(app, "/ui/releases/t/canary", form, cookie)
    assert "v3 takes 5% of traffic" in (await get(app, "/ui/releases", cookie)).body.decode()
    async with ReleaseStore(tmp_path / "releases.db") as store:
        last = (await store.transitions("t", "v3"))[-1]
    assert (last.from_state, last.to_state) == ("shadow", "canary")
    assert last.why.startswith("looks good [shadow sample passed the gates: 60 pairs")
