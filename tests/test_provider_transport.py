"""The HTTP transport both HTTP providers share (``turnout.providers.transport``), against the
fault-injecting fake upstream: every call is settled exactly once, with the verdict that
ended it, however it ends; transport failures become turnout's errors raised ``from`` aiohttp's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.fakes.upstream import FakeUpstream, Fault
from tests.serving import free_port
from turnout.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from turnout.providers.base import Timeouts
from turnout.providers.transport import ABANDONED, Client, Exchange, Response, StreamBody, json_object

ROOMY = Timeouts(connect=2, ttft=5, total=10)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class Verdicts(list[BaseException | None]):
    """A ``settle`` callback that records each verdict it is given."""

    def __call__(self, exc: BaseException | None) -> None:
        self.append(exc)


@pytest.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as upstream:
        yield upstream


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    http = Client(max_connections=4, keepalive_s=4.0)
    yield http
    await http.aclose()


async def status_error(resp: Response) -> UpstreamError:
    return UpstreamStatusError(resp.status, "fake said no")


def exchange(
    client: Client, url: str, settle: Verdicts, *, stream: bool = False, timeouts: Timeouts = ROOMY
) -> Exchange:
    payload = orjson.dumps({**BODY, "stream": stream})
    return Exchange(lambda: client.post(URL(url), payload, timeouts), status_error, "r0", timeouts, settle)


def parse(raw: bytes) -> dict[str, Any]:
    return json_object(raw, "r0", "response")


async def first_line(body: StreamBody) -> StreamBody:
    """A ``first`` that reads one line of the body and hands the body on."""
    await body.content.readline()
    return body


async def read_lines_forever(body: StreamBody) -> None:
    while await body.read(body.content.readline()):
        pass
    raise AssertionError("the stream ended before the total ran out")


def chat_url(fake: FakeUpstream) -> str:
    return fake.base_url + "/chat/completions"


# -- non-streaming --------------------------------------------------------------------------


async def test_a_completed_call_is_settled_once_as_a_success(fake: FakeUpstream, client: Client) -> None:
    settle = Verdicts()
    body = await exchange(client, chat_url(fake), settle).complete(parse)
    assert body["object"] == "chat.completion"
    assert settle == [None]


async def test_a_body_the_parser_rejects_is_the_verdict(fake: FakeUpstream, client: Client) -> None:
    fake.fault = Fault("malformed")
    settle = Verdicts()
    with pytest.raises(UpstreamProtocolError, match="r0: response is not valid JSON") as caught:
        await exchange(client, chat_url(fake), settle).complete(parse)
    assert settle == [caught.value]


async def test_an_error_status_is_the_status_errors_verdict(fake: FakeUpstream, client: Client) -> None:
    fake.fault = Fault("status", status=503)
    settle = Verdicts()
    with pytest.raises(UpstreamStatusError) as caught:
        await exchange(client, chat_url(fake), settle).complete(parse)
    assert caught.value.upstream_status == 503
    assert settle == [caught.value]


async def test_a_refused_connection_is_a_connect_error_from_aiohttps(client: Client) -> None:
    settle = Verdicts()
    url = f"http://127.0.0.1:{free_port()}/v1/chat/completions"  # nothing listens there
    with pytest.raises(UpstreamConnectError) as caught:
        await exchange(client, url, settle).complete(parse)
    assert caught.value.message == "r0: cannot connect (Connection refused)"  # the label, never the address
    assert isinstance(caught.value.__cause__, aiohttp.ClientConnectorError)  # raised from the vendor error
    assert settle == [caught.value]


async def test_a_tls_failure_names_the_failure_not_the_address(fake: FakeUpstream, client: Client) -> None:
    settle = Verdicts()
    https = chat_url(fake).replace("http://", "https://")  # TLS to a plain-HTTP server
    with pytest.raises(UpstreamConnectError) as caught:
        await exchange(client, https, settle).complete(parse)
    assert caught.value.message.startswith("r0: cannot connect ([SSL: ")  # OpenSSL names the failure
    assert str(fake.port) not in caught.value.message
    assert settle == [caught.value]


async def test_a_cancelled_call_is_settled_with_the_cancellation(fake: FakeUpstream, client: Client) -> None:
    fake.fault = Fault("hang")
    settle = Verdicts()
    task = asyncio.create_task(exchange(client, chat_url(fake), settle).complete(parse))
    while True:  # polled: the fake counts the request on its own schedule
        if fake.in_flight:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(settle) == 1 and isinstance(settle[0], asyncio.CancelledError)


# -- streaming ------------------------------------------------------------------------------


async def test_a_started_stream_is_settled_by_its_body_once(fake: FakeUpstream, client: Client) -> None:
    settle = Verdicts()
    body = await exchange(client, chat_url(fake), settle, stream=True).stream(first_line)
    assert settle == []  # the body owns the call now
    body.finish(ABANDONED)
    body.finish(None)  # a second end is ignored
    assert settle == [ABANDONED]
    assert body.finished


async def test_a_stream_refused_by_status_is_settled_by_the_opener(fake: FakeUpstream, client: Client) -> None:
    fake.fault = Fault("status", status=429)
    settle = Verdicts()
    with pytest.raises(UpstreamStatusError) as caught:
        await exchange(client, chat_url(fake), settle, stream=True).stream(first_line)
    assert settle == [caught.value]


async def test_a_first_event_past_ttft_is_settled_as_a_ttft_timeout(fake: FakeUpstream, client: Client) -> None:
    """``first`` only raises; the opener tells the ttft apart and settles with that."""
    fake.fault = Fault(first_chunk_delay=5)
    settle = Verdicts()

    async def first_event(body: StreamBody) -> StreamBody:
        while not (await body.content.readline()).startswith(b"data:"):
            pass  # the keep-alive comment arrives at once, the first event not within the ttft
        return body

    tight = Timeouts(connect=2, ttft=0.2, total=10)
    with pytest.raises(UpstreamTimeout) as caught:
        await exchange(client, chat_url(fake), settle, stream=True, timeouts=tight).stream(first_event)
    assert caught.value.phase == "ttft"
    assert settle == [caught.value]


async def test_a_read_past_the_total_is_a_total_timeout(fake: FakeUpstream, client: Client) -> None:
    fake.fault = Fault(chunk_delay=5)
    settle = Verdicts()
    short = Timeouts(connect=2, ttft=5, total=0.3)
    body = await exchange(client, chat_url(fake), settle, stream=True, timeouts=short).stream(first_line)
    with pytest.raises(UpstreamTimeout) as caught:
        await read_lines_forever(body)
    assert caught.value.phase == "total"
    assert isinstance(caught.value.__cause__, TimeoutError)
    body.finish(caught.value)
    assert settle == [caught.value]
