"""``GET /v1/models`` and ``GET /v1/models/{id}`` through the official openai SDK against a real
uvicorn: a tenant lists and retrieves the tasks open to it, and gets 404 for any other (a task
that exists but is not its own looks the same as one that does not)."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import pytest

from tests.asgi import request
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream
from tests.uvicorn_app import gateway

KEY = "sk-acme-models-0123456789"
OTHER = "sk-other-models-0123456789"


def config(upstream: FakeUpstream) -> dict[str, Any]:
    return {
        "targets": {"up": {"provider": "openai", "base_url": upstream.base_url, "model": "m"}},
        "tenants": {"acme": {"keys": [KEY]}, "other": {"keys": [OTHER], "tasks": ["faq"]}},
        "tasks": {
            "faq": {"route": ["up"]},
            "summarize": {"route": ["up"]},
            "a/b c": {"route": ["up"]},
            "50%41": {"route": ["up"]},
        },
    }


async def test_the_sdk_lists_and_retrieves_the_tasks_open_to_the_caller(make_app: AppFactory) -> None:
    async with FakeUpstream() as upstream, gateway(make_app, config(upstream), KEY) as (app, client):
        assert sorted(m.id for m in (await client.models.list()).data) == ["50%41", "a/b c", "faq", "summarize"]
        found = await client.models.retrieve("summarize")
        assert (found.id, found.object, found.owned_by) == ("summarize", "model", "turnout")
        with pytest.raises(openai.NotFoundError) as missing:
            await client.models.retrieve("nope")
        assert missing.value.body["code"] == "not_found"  # type: ignore[index]
        theirs = await request(app, "GET", "/v1/models/summarize", headers={"authorization": f"Bearer {OTHER}"})
        assert theirs.status == 404  # not open to that tenant: as if it did not exist
        mine = await request(app, "GET", "/v1/models/faq", headers={"authorization": f"Bearer {OTHER}"})
        assert mine.status == 200 and mine.json()["id"] == "faq"
        quoted = await request(app, "GET", "/v1/models/a%2Fb%20c", headers={"authorization": f"Bearer {KEY}"})
        assert quoted.status == 200 and quoted.json()["id"] == "a/b c"
        assert (await request(app, "GET", "/v1/models/faq")).status == 401  # a key is needed, as for the list
        # As x-api-key (Anthropic's SDKs), as every door takes it: it was 401 "missing API key".
        listed = await request(app, "GET", "/v1/models", headers={"x-api-key": OTHER})
        assert listed.status == 200 and [m["id"] for m in listed.json()["data"]] == ["faq"]
        assert (await request(app, "GET", "/v1/models/faq", headers={"x-api-key": OTHER})).status == 200
        assert (await request(app, "POST", "/v1/models/faq", headers={"authorization": f"Bearer {KEY}"})).status == 405


async def test_head_is_answered_where_get_is_with_the_head_alone(make_app: AppFactory) -> None:
    """``HEAD /healthz`` was 200 and ``HEAD /v1/models`` 405: HEAD goes where GET does."""
    async with FakeUpstream() as upstream, gateway(make_app, config(upstream), KEY) as (_, client):
        url = str(client.base_url).rstrip("/")
        auth = {"authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession() as http:
            for path in ("/models", "/models/faq"):
                async with http.head(url + path, headers=auth) as head, http.get(url + path, headers=auth) as got:
                    assert (head.status, await head.read()) == (200, b"")
                    assert head.headers["content-length"] == got.headers["content-length"]
            async with http.head(url + "/chat/completions") as refused:
                assert refused.status == 405


async def test_a_task_name_is_decoded_once(make_app: AppFactory) -> None:
    # The server decodes the path: decoding the name again made "50%41" read "50A" (a 404).
    async with FakeUpstream() as upstream, gateway(make_app, config(upstream), KEY) as (_, client):
        url = str(client.base_url).rstrip("/")
        auth = {"authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession() as http, http.get(url + "/models/50%2541", headers=auth) as got:
            assert got.status == 200
            assert (await got.json())["id"] == "50%41"
