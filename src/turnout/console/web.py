"""The console's HTTP plumbing: HTML answers with security headers, redirects, form bodies and
the static files (read once from the package; only the files named here are served).

Every page carries a strict Content-Security-Policy: scripts, styles, images and form targets
from this origin only, no inline script or style, no framing. Pages are never cached
(``no-store``): they show live state and may show who is logged in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from turnout.errors import RequestError
from turnout.releases.review import MAX_ANSWER, MAX_NOTE
from turnout.serving.asgi import Receive, Send, header, read_body

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
HTML = b"text/html; charset=utf-8"
# A review form's longest answer and note (the queue's limits), percent-encoded UTF-8: up to 9
# bytes a character, and room for the form's other fields.
MAX_FORM_BYTES = 9 * (MAX_ANSWER + MAX_NOTE) + 16_000
MAX_FIELDS = 50
STATIC_TYPES = {"css": b"text/css; charset=utf-8", "js": b"text/javascript; charset=utf-8"}
STATIC_FILES = ("console.css", "console.js")


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def load_assets() -> dict[str, Asset]:
    folder = resources.files("turnout.console") / "static"
    out = {}
    for name in STATIC_FILES:
        body = (folder / name).read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"'
        out[name] = Asset(body, STATIC_TYPES[name.rpartition(".")[2]], etag)
    return out


async def send_html(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = text.encode("utf-8", "replace")  # a path that was not UTF-8 may be quoted in a message
    head = [
        (b"content-type", HTML),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *SECURITY,
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def redirect(send: Send, location: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """303 See Other: after a form, the browser GETs the page (a reload does not post again)."""
    head = [
        (b"location", location.encode()),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
        *SECURITY,
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": head})
    await send({"type": "http.response.body", "body": b""})


async def send_asset(send: Send, asset: Asset, if_none_match: bytes | None) -> None:
    head = [(b"etag", asset.etag), (b"cache-control", b"no-cache"), *SECURITY]
    if if_none_match is not None and asset.etag in if_none_match.split(b", "):
        await send({"type": "http.response.start", "status": 304, "headers": head})
        await send({"type": "http.response.body", "body": b""})
        return
    head += [(b"content-type", asset.content_type), (b"content-length", str(len(asset.body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": asset.body})


async def read_form(scope: dict[str, Any], receive: Receive) -> dict[str, str]:
    """A urlencoded form body (the only kind the console's forms send): the first value of
    each field. Bytes that are not UTF-8 are replaced, never a 500."""
    kind = (header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
    raw = await read_body(receive, scope, MAX_FORM_BYTES)
    if kind != b"application/x-www-form-urlencoded":
        raise RequestError("the console's forms are sent as application/x-www-form-urlencoded", code="invalid_form")
    return _fields(raw.decode("utf-8", "replace"), MAX_FIELDS, keep_blank=True)


def query(scope: dict[str, Any]) -> dict[str, str]:
    return _fields(scope.get("query_string", b"").decode("utf-8", "replace"), MAX_FIELDS)


def _fields(text: str, most: int, *, keep_blank: bool = False) -> dict[str, str]:
    try:
        fields = parse_qs(text, keep_blank_values=keep_blank, max_num_fields=most)
    except ValueError:  # more fields than any console form or page has
        raise RequestError(f"more than {most} fields", code="too_many_fields") from None
    return {k: v[0] for k, v in fields.items()}


def secure(scope: dict[str, Any]) -> bool:
    """Whether the browser reached us over TLS: directly, or through a proxy that says so."""
    if scope.get("scheme") == "https":
        return True
    forwarded = header(scope, b"x-forwarded-proto")
    return forwarded is not None and forwarded.split(b",")[0].strip().lower() == b"https"


def same_origin(scope: dict[str, Any]) -> bool:
    """A browser's POST names its origin; one from another site is refused even before the
    CSRF token is looked at. No Origin header (an old browser, a script): the token decides.
    Behind a proxy that rewrites ``Host``, its ``X-Forwarded-Host`` names the site."""
    origin = header(scope, b"origin")
    if origin is None:
        return True
    site = origin.partition(b"://")[2]
    forwarded = header(scope, b"x-forwarded-host")
    hosts = [header(scope, b"host"), forwarded.split(b",")[0].strip() if forwarded else None]
    return any(h is not None and site == h for h in hosts)


def client_of(scope: dict[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def local_path(text: str | None, default: str = "/ui") -> str:
    """A redirect target from a form or query: a path under /ui on this site, nothing else
    (``//evil.example``, ``/ui\\..``, ``/uix`` and dot segments, which the browser resolves:
    ``/ui/../admin``, ``/ui/%2e%2e/admin``, are refused)."""
    if not text or "//" in text or "\\" in text or any(ord(c) < 32 for c in text):
        return default
    path = text.partition("?")[0].partition("#")[0]
    if path != "/ui" and not path.startswith("/ui/"):
        return default
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        return default
    return quote(text, safe="/?&=%-._~", errors="replace")
