"""The console in a real browser: Playwright drives Debian's chromium (its executable path is
given; Playwright downloads no browser) against a real ``turnout serve`` with traffic through
two fake upstreams (one failing now and then, so there are errors and fallbacks to show).

Log in; every page renders with live data; a label posted from the review page appears in
``/admin/review``; a rollback from the releases page takes effect (the next answer's
``X-Turnout-Release`` names the previous release); a forged POST (the CSRF field taken out of
the form, or a form on another site) is refused and changes nothing; a viewer sees pages
without forms. A screenshot of each page goes to ``$TURNOUT_SCREENSHOTS`` when set (the
README's are made so: ``TURNOUT_SCREENSHOTS=docs/screenshots``), else to the test's folder.

Skipped, with the reason, only when no chromium is installed (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from tests.serving import Process, Served, release_cli, turnout_serve

pytestmark = pytest.mark.slow

ADMIN = "adm-browser-0123456789abcdef"
VIEWER = "view-browser-0123456789abcdef"
TENANT = "sk-acme-browser-0123456789abcdef"
SECRETS = (ADMIN, VIEWER, TENANT)
VIEWPORT: ViewportSize = {"width": 1100, "height": 760}
RELEASE = (
    "route: [up, spare]\nmodel_version: w-{name}\nprompt:\n"
    "  system: 'You answer support tickets.'\n  user: 'Answer: {{{{ text }}}}'\n  variables: {{text: str}}\n"
    "params: {{max_tokens: 64}}\n"
)


def chromium() -> str | None:
    for candidate in (os.environ.get("TURNOUT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium()
    if path is None:
        pytest.skip("no chromium found (apt-get install chromium, or set TURNOUT_CHROMIUM)")
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=path)
        yield found
        found.close()


@pytest.fixture
def upstreams() -> Iterator[tuple[Process, Process]]:
    up = Process("tests.fakes.upstream", ready_path="/v1/models")
    spare = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield up, spare
    up.stop()
    spare.stop()


def project(root: Path, up: Process, spare: Process) -> Path:
    price = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    config = {
        "server": {"admin_key": ADMIN, "viewer_key": VIEWER},
        "store": {"flush_interval_ms": 20},
        "capture": {
            "mode": "redacted",
            "redaction_key": "browser-redaction-key-0123456789",
            "rules": [{"tenant": "acme", "task": "summarize", "mode": "full"}],
        },
        "targets": {
            "up": {
                "provider": "openai",
                "base_url": up.url + "/v1",
                "model": "m",
                "price": price,
                "retry": {"attempts": 1},
            },
            "spare": {"provider": "openai", "base_url": spare.url + "/v1", "model": "m", "price": price},
        },
        "tenants": {
            "acme": {
                "keys": [TENANT],
                "limits": {"rpm": 600, "usd_per_day": 2.0},
                "task_limits": {"support": {"rpm": 300}},
            }
        },
        "tasks": {
            "support": {"route": ["up", "spare"], "review_rate": 1.0, "canary": {"interval_s": 3600}},
            "summarize": {"route": ["up", "spare"]},
        },
    }
    (root / "turnout.yaml").write_text(json.dumps(config))
    folder = root / "releases" / "support"
    folder.mkdir(parents=True)
    for name in ("v1", "v2", "v3"):
        (folder / f"{name}.yaml").write_text(RELEASE.format(name=name))
    release_cli(root, "register", "support", "--all", "--by", "ci")
    release_cli(root, "promote", "support", "v1", "--by", "ci", "--why", "first release")
    release_cli(root, "promote", "support", "v2", "--force", "--by", "alice", "--why", "shorter answers")
    return root / "turnout.yaml"


def http(
    served: Served, method: str, path: str, body: Any = None, key: str = TENANT, **headers: str
) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{served.port}{path}",
        data,
        {"authorization": f"Bearer {key}", "content-type": "application/json", **headers},
        method=method,
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback test URL
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, json.loads(exc.read() or b"null")


def traffic(served: Served, up: Process) -> None:
    """Answers from both releases' era, some after a fallback, with feedback and a grant."""
    up.post("/_fault", {"mode": "status", "status": 500, "rate": 0.3})
    for n in range(24):
        status, headers, body = http(
            served,
            "POST",
            "/v1/tasks/support",
            {"variables": {"text": f"ticket {n} from jane.doe@example.com"}},
            **{"x-turnout-user": f"user-{n}"},
        )
        assert status == 200, body
        if n % 3:
            http(served, "POST", "/v1/feedback", {"request_id": headers["x-turnout-request-id"], "outcome": "success"})
    up.post("/_fault", {"mode": "ok"})
    for n in range(6):
        chat = {"model": "summarize", "messages": [{"role": "user", "content": f"summarize item {n}"}]}
        assert http(served, "POST", "/v1/chat/completions", chat)[0] == 200
    status, _, key = http(served, "POST", "/admin/keys", {"tenant": "acme", "name": "ci-runner"}, key=ADMIN)
    assert status == 201, key
    granted = subprocess.run(
        [sys.executable, "-m", "turnout", "capture", "grant", "--tenant", "acme", "--task", "summarize",
         "--minutes", "30", "--reason", "ticket 4812", "--by", "alice", "--config", "turnout.yaml"],
        cwd=served.log.parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert granted.returncode == 0, granted.stdout + granted.stderr


def shots() -> Path | None:
    folder = os.environ.get("TURNOUT_SCREENSHOTS")
    return Path(folder) if folder else None


def snap(page: Page, name: str, tmp_path: Path) -> None:
    folder = shots() or tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


def no_secrets(page: Page) -> None:
    html = page.content()
    for secret in SECRETS:
        assert secret not in html
    assert "jane.doe@example.com" not in html


def test_the_console_in_a_browser(browser: Browser, upstreams: tuple[Process, Process], tmp_path: Path) -> None:
    up, spare = upstreams
    config = project(tmp_path, up, spare)
    with turnout_serve(tmp_path, config) as served:
        base = f"http://127.0.0.1:{served.port}"
        traffic(served, up)
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the confirm() of state-changing forms
        csp_errors: list[str] = []
        page.on("console", lambda msg: csp_errors.append(msg.text) if "Content Security Policy" in msg.text else None)

        # Log in: the page asks for the key, then lands where it was going.
        page.goto(base + "/ui/releases")
        expect(page).to_have_url(re.compile(r"/ui/login\?next="))
        snap(page, "login", tmp_path)
        page.fill("input[name=key]", TENANT)
        page.click("button[type=submit]")
        expect(page.locator(".flash-error")).to_contain_text("tenant key cannot use the console")
        page.fill("input[name=key]", ADMIN)
        page.fill("input[name=name]", "alice")
        page.click("button[type=submit]")
        expect(page).to_have_url(base + "/ui/releases")
        cookie = next(c for c in context.cookies() if c["name"] == "turnout_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

        # Overview: live figures and three charts.
        page.goto(base + "/ui?window=1h")
        expect(page.locator("#tile-requests")).to_have_text("30")
        assert page.locator("svg.chart").count() == 3
        assert page.locator("svg.chart .bar").count() >= 1
        expect(page.locator("#groups")).to_contain_text("support")
        expect(page.locator("#groups")).to_contain_text("spare")  # the fallbacks' target
        expect(page.locator("#phases")).to_contain_text("ms")
        no_secrets(page)
        snap(page, "overview", tmp_path)

        # Targets: both upstreams up, breakers, and the error class of the injected failures.
        page.goto(base + "/ui/targets")
        expect(page.locator("#target-up .badge-up").first).to_be_visible()
        expect(page.locator("#target-spare")).to_contain_text("breaker closed")
        expect(page.locator("#target-up")).to_contain_text("http_500")
        assert up.url.removeprefix("http://") not in page.content()
        snap(page, "targets", tmp_path)

        # Tenants: the tenant, its issued key by id, the grant and its audit trail.
        page.goto(base + "/ui/tenants")
        expect(page.locator("#tenants")).to_contain_text("acme")
        expect(page.locator("#keys")).to_contain_text("ci-runner")
        expect(page.locator("#grants")).to_contain_text("ticket 4812")
        expect(page.locator("#audit")).to_contain_text("granted")
        expect(page.locator("#usage")).to_contain_text("usd_per_day")
        no_secrets(page)
        snap(page, "tenants", tmp_path)

        # Review: redacted samples; a label posted here appears in the admin API.
        page.goto(base + "/ui/review")
        items = page.locator("article.item")
        assert items.count() == 24
        expect(items.first).to_contain_text("[EMAIL_")
        no_secrets(page)
        snap(page, "review", tmp_path)
        first = items.first
        item_id = int((first.get_attribute("id") or "").removeprefix("item-"))
        first.locator("input[name=note]").fill("tone is off")
        first.locator("button[value=escalate]").click()
        expect(page.locator(".flash-ok")).to_contain_text(f"review item {item_id}")
        _, _, listed = http(served, "GET", "/admin/review?status=all", key=ADMIN)
        [labelled] = [i for i in listed["data"] if i["id"] == item_id]
        assert (labelled["status"], labelled["note"], labelled["labeled_by"]) == (
            "escalate",
            "tone is off",
            "alice (console)",
        )
        page.goto(base + "/ui/review?status=escalate")
        expect(page.locator(f"#item-{item_id}")).to_be_visible()

        # Releases: v2 serves; a rollback from the page puts v1 back at once.
        page.goto(base + "/ui/releases")
        expect(page.locator(".serving-active")).to_have_text("v2")
        expect(page.locator(".transitions")).to_contain_text("shorter answers")
        snap(page, "releases", tmp_path)
        assert http(served, "POST", "/v1/tasks/support", {"variables": {"text": "hi"}})[1]["x-turnout-release"] == "v2"
        rollback = page.locator("form[action='/ui/releases/support/rollback']")
        rollback.locator("input[name=why]").fill("answers too short")
        rollback.locator("button[type=submit]").click()
        expect(page.locator(".flash-ok")).to_contain_text("v1 is active")
        expect(page.locator(".serving-active")).to_have_text("v1")
        expect(page.locator(".transitions")).to_contain_text("answers too short")
        _, headers, _ = http(served, "POST", "/v1/tasks/support", {"variables": {"text": "hi"}})
        assert headers["x-turnout-release"] == "v1"

        # A forged POST: the promote form without its CSRF field is refused, nothing changes.
        promote = page.locator("form[action='/ui/releases/support/promote']")
        promote.locator("select[name=release]").select_option("v2")
        promote.locator("input[name=why]").fill("forged")
        promote.locator("input[name=csrf]").evaluate("field => field.remove()")
        with page.expect_response(lambda r: r.url.endswith("/promote")) as forged:
            promote.locator("button[type=submit]").click()
        assert forged.value.status == 403
        expect(page.locator(".flash-error")).to_contain_text("CSRF")
        assert http(served, "POST", "/v1/tasks/support", {"variables": {"text": "hi"}})[1]["x-turnout-release"] == "v1"

        # ... and so is a form posted from another site: the Strict cookie does not go along.
        evil = context.new_page()
        evil.set_content(
            f'<form method="post" action="{base}/ui/releases/support/promote">'
            '<input name="release" value="v2"><input name="why" value="x"><input name="csrf" value="guess">'
            '<button type="submit">go</button></form>'
        )
        with evil.expect_response(lambda r: r.url.endswith("/promote")) as cross:
            evil.click("button")
        assert cross.value.status == 403
        assert http(served, "POST", "/v1/tasks/support", {"variables": {"text": "hi"}})[1]["x-turnout-release"] == "v1"
        assert csp_errors == []
        context.close()

        # A viewer sees the pages, without a single state-changing form.
        viewer = browser.new_context(viewport=VIEWPORT)
        seen = viewer.new_page()
        seen.goto(base + "/ui/login")
        seen.fill("input[name=key]", VIEWER)
        seen.click("button[type=submit]")
        expect(seen.locator(".role-viewer")).to_be_visible()
        for path in ("/ui/releases", "/ui/review"):
            seen.goto(base + path)
            assert seen.locator("form[action^='/ui/releases/'], form[action^='/ui/review/']").count() == 0
        seen.click("text=Log out")
        expect(seen).to_have_url(base + "/ui/login")
        viewer.close()
