"""The ceiling for a cache hit on this server: a bare ASGI app on uvicorn (uvloop, httptools, as
turnout and the floor proxy run) that reads each request's body and answers one fixed
completion, with no parsing, lookup, headers or row. No gateway's hit can cost less than this on
the same server; ``bench/cache.sh`` runs it beside the floor proxy, so the share of a hit's CPU
that is the server's own, and what is left for the gateway's work, can be read off one run."""

from __future__ import annotations

from typing import Any

ANSWER = (
    b'{"id":"chatcmpl-0123456789abcdef0123","object":"chat.completion","created":1764979200,'
    b'"model":"bench-model","choices":[{"index":0,"message":{"role":"assistant","content":'
    b'"Sorry to hear that. Please share your order number and I will check its status."},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":32,"completion_tokens":20,"total_tokens":52}}'
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # run with --lifespan off
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
