"""``Console``: the routes under ``/ui``, for ``serving.app``'s route table.

    GET  /ui/login, POST /ui/login, POST /ui/logout     access (``console.access``)
    GET  /ui/static/{console.css,console.js}            no login needed: the login page uses them
    GET  /ui                                            overview (?window=15m|1h|6h|24h|7d&task=T)
    GET  /ui/targets                                    targets and replicas
    GET  /ui/releases, POST /ui/releases/{task}/{promote|canary|rollback}
    GET  /ui/review (?status=pending|accept|reject|escalate|all&task=T), POST /ui/review/{id}
    GET  /ui/tenants                                    tenants, keys, usage, capture grants, audit

Without a session, a page redirects to the login form and a POST is refused (403), but Log out
(from a tab whose session ended elsewhere or expired) goes to the login form too. Every POST
must come from this origin and carry the session's CSRF token; a viewer's POST (logout aside)
is refused. A refusal is an HTML page with its status; a form the gateway refuses on its merits
(a release not yet evaluated) comes back as a message on the page it came from.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from turnout.console import actions, views
from turnout.console.access import FLASH_COOKIE, Flash, Session, Sessions, cookie, no_flash, read_cookie
from turnout.console.format import FILTERS
from turnout.console.overview import DEFAULT_WINDOW, WINDOWS, Overview
from turnout.console.web import (
    client_of,
    load_assets,
    local_path,
    query,
    read_form,
    redirect,
    same_origin,
    secure,
    send_asset,
    send_html,
)
from turnout.control.auth import bearer
from turnout.errors import AuthError, NotFound, StoreUnavailable, TurnoutError
from turnout.releases.review import MAX_ANSWER, MAX_NOTE, STATUSES
from turnout.serving.admin import Admin
from turnout.serving.asgi import Receive, Send, expect_method, header
from turnout.serving.runtime import Runtime

log = logging.getLogger("turnout")

PREFIX = "/ui"
STATIC = "/ui/static/"
PAGES = ("overview", "targets", "releases", "review", "tenants")
REFRESH_S = {"overview": 30, "targets": 10}  # pages that reload themselves while visible
OVERVIEW_TTL_S = 5.0


class Refusal(Exception):
    """A request the console refuses outright: an HTML page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Console:
    def __init__(self, runtime: Runtime, admin: Admin) -> None:
        self.runtime = runtime
        self.admin = admin
        viewer = runtime.config.server.viewer_key or os.environ.get("TURNOUT_VIEWER_KEY") or None
        self.sessions = Sessions(admin.key, viewer)
        self.assets = load_assets()
        self.templates = Environment(
            loader=PackageLoader("turnout.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters.update(FILTERS)
        # by (window, task), both checked against WINDOWS and the config's tasks: bounded
        self._overviews: dict[tuple[str, str | None], tuple[float, Overview | None]] = {}
        self._overview_locks: dict[tuple[str, str | None], asyncio.Lock] = {}

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path.startswith(STATIC):
                await self._static(path.removeprefix(STATIC), method, scope, send)
            elif path == "/ui/login" and method == "POST":
                await self._login(scope, receive, send)
            elif path == "/ui/login":
                expect_method(method, "GET", "page")
                await self._login_page(scope, send)
            else:
                await self._inside(scope, receive, send, path.rstrip("/") or PREFIX, method)
        except Refusal as exc:
            await self._error(send, exc.status, exc.message)
        except StoreUnavailable as exc:  # its message names the server: the log's, not the page's
            log.warning("console: a store does not answer: %s", " ".join(exc.message.split()))
            await self._error(send, exc.status, "a store this page needs does not answer right now", exc.headers())
        except TurnoutError as exc:  # a refusal from below; its message never carries secrets
            await self._error(send, exc.status, exc.message, exc.headers())

    # --- access ----------------------------------------------------------------------------

    async def _login_page(self, scope: dict[str, Any], send: Send) -> None:
        target = local_path(query(scope).get("next"))
        if self._session(scope) is not None:
            await redirect(send, target)
            return
        await send_html(send, 200, self._login_form(target))

    def _login_form(self, target: str, error: str = "") -> str:
        return self._render("login.html", None, "login", open=self.sessions.open, error=error, next=target)

    async def _login(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if not same_origin(scope):
            raise Refusal(403, "this form was posted from another site")
        if not self.sessions.open:
            raise Refusal(403, "the console is closed: set server.admin_key (or TURNOUT_ADMIN_KEY)")
        form = await read_form(scope, receive)
        # Counted after the body is in, with no await between the check and the failure it
        # records: checked before, a thousand logins whose bodies were held back and then sent
        # together all passed the check and were all tried.
        now, client = time.time(), client_of(scope)
        if self.sessions.failures.throttled(client, now):
            raise Refusal(429, "too many failed logins from this address; try again in a few minutes")
        key, target = form.get("key", "").strip(), local_path(form.get("next"))
        role = self.sessions.role_of(key) if key else None
        if role is None:
            self.sessions.failures.failed(client, now)
            if key and await self._is_tenant_key(key):
                log.warning("console: a tenant key was refused at login (client %s)", client)
                await send_html(send, 403, self._login_form(target, "a tenant key cannot use the console"))
                return
            await send_html(send, 401, self._login_form(target, "that key is not the admin or viewer key"))
            return
        # The failures stay counted: a viewer's login must not reset the guesses at the admin key.
        session = self.sessions.start(role, form.get("name", ""), now)
        log.info("console: %s session started for %s (client %s)", role, session.name, client)
        await redirect(send, target, [(b"set-cookie", cookie(session, secure=secure(scope), now=now))])

    async def _is_tenant_key(self, key: str) -> bool:
        auth = self.runtime.auth
        if auth.anonymous:
            return False
        try:
            await auth.identify(b"Bearer " + key.encode("utf-8", "replace"), time.time())
        except AuthError:
            return False
        return True

    async def _tenant_bearer(self, authorization: bytes | None) -> bool:
        """Whether the request carries a tenant's API key (a script calling /ui with it)."""
        if not authorization:
            return False
        try:
            key = bearer(authorization)
        except AuthError:
            return False
        return self.sessions.role_of(key) is None and await self._is_tenant_key(key)

    def _session(self, scope: dict[str, Any]) -> Session | None:
        return self.sessions.get(read_cookie(header(scope, b"cookie")), time.time())

    # --- inside ----------------------------------------------------------------------------

    async def _inside(self, scope: dict[str, Any], receive: Receive, send: Send, path: str, method: str) -> None:
        session = self._session(scope)
        if session is None:
            if await self._tenant_bearer(header(scope, b"authorization")):
                raise Refusal(403, "a tenant key cannot use the console")
            if method in ("GET", "HEAD"):
                await redirect(send, "/ui/login?next=" + quote(path + _query_suffix(scope), safe="/", errors="replace"))
                return
            if path == "/ui/logout" and method == "POST" and same_origin(scope):
                # Ended already (in another tab) or expired: what the operator asked for is done.
                await redirect(send, "/ui/login", [(b"set-cookie", cookie(None, secure=secure(scope)))])
                return
            raise Refusal(403, "log in first: this form needs a console session")
        if method == "POST":
            await self._post(scope, receive, send, path, session)
            return
        expect_method(method, "GET", "page")
        await self._page(scope, send, path, session)

    async def _post(self, scope: dict[str, Any], receive: Receive, send: Send, path: str, session: Session) -> None:
        if not same_origin(scope):
            raise Refusal(403, "this form was posted from another site")
        form = await read_form(scope, receive)
        if not self.sessions.csrf_ok(session, form.get("csrf")):
            log.warning("console: a POST to %r without a valid CSRF token was refused", path)
            raise Refusal(403, "this form's CSRF token is missing or wrong: reload the page and try again")
        if path == "/ui/logout":
            self.sessions.end(session.id)
            await redirect(send, "/ui/login", [(b"set-cookie", cookie(None, secure=secure(scope)))])
            return
        if not session.can_change:
            raise Refusal(403, "a viewer session is read-only")
        parts = path.split("/")  # "", "ui", page, ...
        by = f"{session.name} (console)"
        kind: Flash = "ok"
        try:
            if len(parts) == 5 and parts[2] == "releases":
                back = "/ui/releases#task-" + quote(parts[3], safe="", errors="replace")
                done = await actions.release(self.runtime, parts[3], parts[4], form, by)
            elif len(parts) == 4 and parts[2] == "review":
                back = local_path(form.get("back"), "/ui/review")
                done = await actions.label(self.runtime, parts[3], form, by)
            else:
                raise NotFound(f"no console action at {path}")
        except actions.Refused as exc:
            kind, done = "error", exc.message
        else:
            log.info("console: %s by %s", done, session.name)
        await redirect(send, back, [(b"set-cookie", self.sessions.flash(session, kind, done, secure=secure(scope)))])

    async def _page(self, scope: dict[str, Any], send: Send, path: str, session: Session) -> None:
        page = "overview" if path == PREFIX else path.removeprefix(PREFIX + "/")
        if page not in PAGES or (page == "overview" and path != PREFIX):
            raise NotFound(f"no console page at {path}")
        args = query(scope)
        context: dict[str, Any]
        if page == "overview":
            window = args.get("window", DEFAULT_WINDOW)
            window = window if window in WINDOWS else DEFAULT_WINDOW
            task = args.get("task") if args.get("task") in self.runtime.config.tasks else None
            context = {
                "overview": await self._overview(window, task),
                "windows": list(WINDOWS),
                "window": window,
                "task": task,
                "tasks": list(self.runtime.config.tasks),
            }
        elif page == "targets":
            context = {"targets": await views.targets(self.runtime, self.admin)}
        elif page == "releases":
            context = {"tasks": await views.releases(self.runtime), "has_store": self.runtime.release_store is not None}
        elif page == "review":
            status = args.get("status", "pending")
            status = status if status in (*STATUSES, "all") else "pending"
            task = args.get("task") if args.get("task") in self.runtime.config.tasks else None
            context = {
                "review": await views.review(self.runtime, task, status),
                "status": status,
                "statuses": [*STATUSES, "all"],
                "max_answer": MAX_ANSWER,
                "max_note": MAX_NOTE,
                "task": task,
                # where each label form returns: this page's filters, not its whole query string
                "here": f"{path}?status={status}" + (f"&task={quote(task, safe='')}" if task else ""),
            }
        else:
            context = await views.tenants(self.runtime, self.admin)
        cookies = header(scope, b"cookie")
        flash = self.sessions.take_flash(session, cookies)
        shown = [(b"set-cookie", no_flash(secure=secure(scope)))] if read_cookie(cookies, FLASH_COOKIE) else []
        await send_html(send, 200, self._render(f"{page}.html", session, page, flash, **context), shown)

    async def _overview(self, window: str, task: str | None) -> Overview | None:
        """The overview's figures, shared for a few seconds by every open tab: a week of
        rows is read and summed once per ``OVERVIEW_TTL_S``, however many reload it. Tabs that
        ask while it is being computed wait for that computation (seconds, for a week of heavy
        traffic) rather than each starting their own."""
        key = (window, task)
        async with self._overview_locks.setdefault(key, asyncio.Lock()):
            cached = self._overviews.get(key)
            if cached is not None and time.monotonic() - cached[0] < OVERVIEW_TTL_S:
                return cached[1]
            found = await views.overview(self.runtime, window, task)
            self._overviews[key] = (time.monotonic(), found)
            return found

    # --- rendering -------------------------------------------------------------------------

    def _render(
        self, template: str, session: Session | None, page: str, flash: tuple[str, str] | None = None, **context: Any
    ) -> str:
        return self.templates.get_template(template).render(
            session=session,
            page=page,
            pages=PAGES,
            flash=flash,
            refresh=REFRESH_S.get(page, 0),
            now=time.time(),
            **context,
        )

    async def _error(
        self, send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        page = self._render("error.html", None, "error", status=status, message=message)
        await send_html(send, status, page, headers)

    async def _static(self, name: str, method: str, scope: dict[str, Any], send: Send) -> None:
        expect_method(method, "GET", "page")
        asset = self.assets.get(name)
        if asset is None:
            raise NotFound(f"no console file {name!r}")
        await send_asset(send, asset, header(scope, b"if-none-match"))


def _query_suffix(scope: dict[str, Any]) -> str:
    raw = scope.get("query_string", b"").decode("utf-8", "replace")
    return "?" + raw if raw else ""
