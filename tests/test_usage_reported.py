"""What an upstream reports as usage is read defensively (``Usage.from_openai``): a count that
is negative or not a number, or a usage without its prompt count, is no usage at all, and the
gateway counts the answer itself (``usage_estimated``) — an upstream cannot make an answer
free, or credit a tenant's budget, by what it reports."""

from __future__ import annotations

from typing import Any

import pytest

from tests.asgi import ledger_rows, request
from tests.conftest import AppFactory
from tests.fakes.bedrock import FakeBedrock, Reply, use_fake_credentials
from tests.fakes.upstream import FakeUpstream
from turnout.providers.base import Usage

KEY = "sk-acme-usage-0123456789"
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"total_tokens": 2000},
        {"prompt_tokens": -5_000_000, "completion_tokens": 0},
        {"prompt_tokens": 10, "completion_tokens": -3},
        {"prompt_tokens": "10", "completion_tokens": 3},
        {"prompt_tokens": True, "completion_tokens": 3},
        {"prompt_tokens": 1e300, "completion_tokens": 3},
        {"prompt_tokens": None, "completion_tokens": 3},
    ],
)
def test_a_usage_that_is_not_a_count_is_no_usage(raw: dict[str, Any]) -> None:
    assert Usage.from_openai(raw) is None


def test_a_usage_is_read_as_reported() -> None:
    assert Usage.from_openai({"prompt_tokens": 7, "total_tokens": 7}) == Usage(7, 0)  # an embedding server's
    usage = Usage.from_openai(
        {
            "prompt_tokens": 10,
            "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 99},
            "completion_tokens_details": {"reasoning_tokens": -1},
        }
    )
    assert usage == Usage(10, 4, cached_tokens=10, reasoning_tokens=0)  # details never exceed their whole


@pytest.mark.parametrize(
    ("raw", "cached"),
    [
        ({"prompt_cache_hit_tokens": 60, "prompt_cache_miss_tokens": 40}, 60),  # DeepSeek's
        ({"cache_read_input_tokens": 30}, 30),  # an Anthropic-style count beside OpenAI's
        ({"prompt_tokens_details": {"cached_tokens": 20}, "cache_read_input_tokens": 30}, 20),  # OpenAI's first
        ({"prompt_tokens_details": {"cached_tokens": None}, "prompt_cache_hit_tokens": 500}, 100),  # within the prompt
        ({"prompt_cache_hit_tokens": "60"}, 0),  # not a count
    ],
)
def test_cache_reads_are_read_however_the_upstream_names_them(raw: dict[str, Any], cached: int) -> None:
    usage = Usage.from_openai({"prompt_tokens": 100, "completion_tokens": 5, **raw})
    assert usage is not None and usage.cached_tokens == cached and usage.prompt_tokens == 100


@pytest.mark.parametrize("reported", [{"prompt_tokens": -5_000_000, "completion_tokens": 0}, {"total_tokens": 2000}])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_cannot_make_an_answer_free_or_credit_the_budget(
    make_app: AppFactory, reported: dict[str, Any], stream: bool
) -> None:
    async with FakeUpstream(reply=("Hello", " there")) as upstream:
        upstream.usage = reported
        app = await make_app(
            {
                "targets": {"up": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "price": PRICE}},
                "tenants": {"acme": {"keys": [KEY], "limits": {"usd_per_day": 10.0}}},
                "tasks": {"chat": {"route": ["up"]}},
            }
        )
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})
        assert resp.status == 200
        [row] = await ledger_rows(app)
        assert row.usage_estimated is True
        assert row.cost_usd is not None and row.cost_usd > 0
        assert row.prompt_tokens is not None and row.prompt_tokens > 0


@pytest.mark.parametrize(
    "reported", [{"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}, {"total_tokens": 2000}]
)
async def test_a_stream_relays_one_usage_the_gateways_count_where_the_upstreams_is_unreadable(
    make_app: AppFactory, reported: dict[str, Any]
) -> None:
    """The caller asked for usage: it got the upstream's chunk of nulls, then the gateway's
    count, two usage chunks that disagree; now only the count the ledger has."""
    async with FakeUpstream(reply=("Hello", " there")) as upstream:
        upstream.usage = reported
        app = await make_app(
            {
                "targets": {"up": {"provider": "openai", "base_url": upstream.base_url, "model": "m", "price": PRICE}},
                "tenants": {"acme": {"keys": [KEY]}},
                "tasks": {"chat": {"route": ["up"]}},
            }
        )
        body = {
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})
        usages = [e["usage"] for e in resp.events() if isinstance(e, dict) and e.get("usage") is not None]
        [row] = await ledger_rows(app)
        assert row.prompt_tokens is not None and row.completion_tokens is not None
        counted = {"prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens}
        assert usages == [{**counted, "total_tokens": row.prompt_tokens + row.completion_tokens}]


# A prompt of 1,000 tokens, 800 of them read from the upstream's prompt cache, and no completion.
CACHED_USAGE = {"prompt_tokens": 1000, "completion_tokens": 0, "prompt_tokens_details": {"cached_tokens": 800}}
CACHED_PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0, "cached_input_per_mtok": 100.0}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/responses"])
@pytest.mark.parametrize("where", ["target", "book", "none"])
async def test_cached_prompt_tokens_are_billed_at_the_cached_price(
    make_app: AppFactory, stream: bool, path: str, where: str
) -> None:
    """800 cached at $100/M + 200 fresh at $1000/M = $0.28 on every door, streamed or not, with
    the price on the target or in the price book; without a cached price, the full input price
    ($1.00): never less than the upstream may bill."""
    price = CACHED_PRICE if where != "none" else PRICE
    target: dict[str, Any] = {"provider": "openai", "model": "m"}
    async with FakeUpstream(reply=("Hello", " there")) as upstream:
        upstream.usage = CACHED_USAGE
        target["base_url"] = upstream.base_url
        raw: dict[str, Any] = {
            "targets": {"up": {**target, "price": price} if where != "book" else target},
            "tenants": {"acme": {"keys": [KEY]}},
            "tasks": {"chat": {"route": ["up"]}},
        }
        if where == "book":
            raw["prices"] = [{"effective": "2020-01-01", "targets": {"up": price}}]
        app = await make_app(raw)
        body: dict[str, Any] = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
        if path == "/v1/responses":
            body = {"model": "chat", "input": "hi"}
        resp = await request(app, "POST", path, {**body, "stream": stream}, {"authorization": f"Bearer {KEY}"})
        assert resp.status == 200, resp.body
        [row] = await ledger_rows(app)
        assert row.prompt_tokens == 1000 and row.usage_estimated is False
        assert row.cost_usd == pytest.approx(1.0 if where == "none" else 0.28)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("write_price", [1250.0, None])
async def test_bedrock_cache_writes_are_billed_at_the_cache_write_price(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, stream: bool, write_price: float | None
) -> None:
    """Bedrock reports 200 fresh input tokens and 800 written to its prompt cache: 800 at the
    cache-write price ($1250/M) + 200 at $1000/M = $1.20; without a cache-write price the
    writes cost the input price: $1.00."""
    use_fake_credentials(monkeypatch)
    price: dict[str, Any] = dict(PRICE)
    if write_price is not None:
        price["cache_write_per_mtok"] = write_price
    async with FakeBedrock() as fake:
        fake.reply = Reply(input_tokens=200, output_tokens=0, cache_write_tokens=800)
        target = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3.2", "endpoint_url": fake.url}
        app = await make_app(
            {
                "targets": {"br": {**target, "price": price}},
                "tenants": {"acme": {"keys": [KEY]}},
                "tasks": {"chat": {"route": ["br"]}},
            }
        )
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})
        assert resp.status == 200, resp.body
        [row] = await ledger_rows(app)
        assert row.prompt_tokens == 1000 and row.usage_estimated is False
        assert row.cost_usd == pytest.approx(1.0 if write_price is None else 1.2)


@pytest.mark.parametrize("stream", [False, True])
async def test_bedrock_cannot_lower_its_count_with_a_negative_one(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """inputTokens -100 beside 200 cache reads read as a 100-token prompt, taken as reported;
    a count that is not one makes the usage unreadable, and the gateway counts the answer."""
    use_fake_credentials(monkeypatch)
    async with FakeBedrock() as fake:
        fake.reply = Reply(input_tokens=-100, output_tokens=2, cache_read_tokens=200)
        target = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3.2", "endpoint_url": fake.url}
        app = await make_app(
            {
                "targets": {"br": {**target, "price": PRICE}},
                "tenants": {"acme": {"keys": [KEY]}},
                "tasks": {"chat": {"route": ["br"]}},
            }
        )
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        resp = await request(app, "POST", "/v1/chat/completions", body, {"authorization": f"Bearer {KEY}"})
        assert resp.status == 200, resp.body
        [row] = await ledger_rows(app)
        assert row.usage_estimated is True and row.prompt_tokens != 100
