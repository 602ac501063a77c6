"""The Messages ↔ chat translation (``turnout.serving.anthropic``) as properties: a request keeps
its meaning (every text, image, tool call and result, in order), and a streamed answer's events
reassemble to the non-stream message."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.errors import RequestError
from turnout.providers.base import Usage
from turnout.serving import anthropic, anthropic_events

text = st.text(min_size=1, max_size=30)
ident = st.text(alphabet="abcdefghijklmnop0123456789_", min_size=1, max_size=12)
# As the wire gives them: orjson reads integers past 64 bits as floats.
args = st.dictionaries(ident, st.one_of(st.integers(-(2**63), 2**63 - 1), text, st.booleans()), max_size=3)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Alternating turns; an assistant turn may call tools, answered by the next user turn."""
    turns: list[dict[str, Any]] = []
    pending: list[str] = []
    for i in range(draw(st.integers(1, 5))):
        if i % 2 == 0:
            blocks: list[dict[str, Any]] = [
                {"type": "tool_result", "tool_use_id": call, "content": draw(text)} for call in pending
            ]
            blocks += [{"type": "text", "text": draw(text)} for _ in range(draw(st.integers(0 if pending else 1, 2)))]
            if draw(st.booleans()):
                blocks.append(
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
                )
            pending = []
            turns.append({"role": "user", "content": blocks})
        else:
            calls = [f"call_{i}_{k}" for k in range(draw(st.integers(0, 2)))]
            blocks = [{"type": "text", "text": draw(text)}] + [
                {"type": "tool_use", "id": c, "name": draw(ident), "input": draw(args)} for c in calls
            ]
            pending = calls
            turns.append({"role": "assistant", "content": blocks})
    return turns


def _texts_of(messages: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for m in messages:
        for b in m["content"]:
            if b["type"] == "text":
                out.append(b["text"])
            elif b["type"] == "tool_result":
                out.append(b["content"])
    return out


def _chat_texts(messages: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            out += [p["text"] for p in content if p["type"] == "text"]
        elif content:
            out.append(content)
    return out


@settings(max_examples=150, deadline=None)
@given(conversations())
def test_a_request_keeps_every_text_tool_call_and_result_in_order(turns: list[dict[str, Any]]) -> None:
    chat = anthropic.to_chat({"model": "t", "max_tokens": 10, "messages": turns})["messages"]
    assert _chat_texts(chat) == _texts_of(turns)
    uses = [(b["id"], b["name"], b["input"]) for m in turns for b in m["content"] if b["type"] == "tool_use"]
    calls = [
        (c["id"], c["function"]["name"], orjson.loads(c["function"]["arguments"]))
        for m in chat
        for c in m.get("tool_calls") or ()
    ]
    assert calls == uses
    # Every tool message follows the assistant message that made its call, before any user turn.
    open_calls: set[str] = set()
    for m in chat:
        if m["role"] == "assistant":
            open_calls = {c["id"] for c in m.get("tool_calls") or ()}
        elif m["role"] == "tool":
            assert m["tool_call_id"] in open_calls
        else:
            open_calls = set()
    images = sum(1 for m in turns for b in m["content"] if b["type"] == "image")
    assert images == sum(
        1 for m in chat if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image_url"
    )


def _chunks(
    content: str, calls: list[tuple[str, str, dict[str, Any]]], cut: int, finish: str, reasoning: str = ""
) -> list[dict[str, Any]]:
    chunks: list[dict[str, Any]] = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for field, said in (("reasoning_content", reasoning), ("content", content)):
        for piece in [said[i : i + cut] for i in range(0, len(said), cut)]:
            chunks.append({"choices": [{"index": 0, "delta": {field: piece}}]})
    for n, (call_id, name, arguments) in enumerate(calls):
        raw = orjson.dumps(arguments).decode()
        head = {"index": n, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        for i in range(0, len(raw), cut):
            delta = {"tool_calls": [{"index": n, "function": {"arguments": raw[i : i + cut]}}]}
            chunks.append({"choices": [{"index": 0, "delta": delta}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return chunks


def _reassemble(stream: bytes) -> dict[str, Any]:
    """What an Anthropic client builds from the events."""
    message: dict[str, Any] = {}
    partial: dict[int, str] = {}
    for frame in stream.decode().split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n", 1)
        event = orjson.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        if event["type"] == "message_start":
            message = event["message"]
        elif event["type"] == "content_block_start":
            assert event["index"] == len(message["content"])
            message["content"].append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            block, delta = message["content"][event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            else:
                partial[event["index"]] = partial.get(event["index"], "") + delta["partial_json"]
        elif event["type"] == "content_block_stop" and event["index"] in partial:
            message["content"][event["index"]]["input"] = orjson.loads(partial[event["index"]])
        elif event["type"] == "message_delta":
            message.update(event["delta"])
            message["usage"].update(event["usage"])
    return message


@settings(max_examples=150, deadline=None)
@given(
    st.text(max_size=60),
    st.lists(st.tuples(ident, ident, args), max_size=3, unique_by=lambda c: c[0]),
    st.integers(1, 7),
    st.sampled_from(["stop", "length", "tool_calls"]),
    st.text(max_size=30),
    st.booleans(),
)
def test_streamed_events_reassemble_to_the_non_stream_message(
    content: str, calls: list[tuple[str, str, dict[str, Any]]], cut: int, finish: str, reasoning: str, shown: bool
) -> None:
    tool_calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": orjson.dumps(a).decode()}}
        for i, n, a in calls
    ]
    said = {"role": "assistant", "content": content or None, "tool_calls": tool_calls or None}
    said["reasoning_content"] = reasoning or None
    whole = {"choices": [{"message": said, "finish_reason": finish}]}
    expected = anthropic.message(whole, "msg_1", "task", Usage(11, 7), thinking=shown)
    events = anthropic_events.Events("msg_1", "task", 11, thinking=shown)
    chunks = _chunks(content, calls, cut, finish, reasoning)
    stream = events.start() + b"".join(events.chunk(c) for c in chunks) + events.end(Usage(11, 7))
    assert _reassemble(stream) == expected


def _interleaved(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same chunks with the calls' deltas taken in turn by index (0, 1, 2, 0, 1, 2, ...), as
    some upstreams send them; the text before them and the finish stay where they were."""
    calls: dict[int, list[dict[str, Any]]] = {}
    rest: list[dict[str, Any]] = []
    for chunk in chunks:
        delta = chunk["choices"][0]["delta"]
        if delta.get("tool_calls"):
            calls.setdefault(delta["tool_calls"][0]["index"], []).append(chunk)
        else:
            rest.append(chunk)
    turns = [c for group in itertools.zip_longest(*calls.values()) for c in group if c is not None]
    return rest[:-1] + turns + rest[-1:]


def _one_block_at_a_time(stream: bytes) -> None:
    """Anthropic's rule: a block is started, filled and stopped before the next one starts."""
    open_block: int | None = None
    started = 0
    for frame in stream.decode().split("\n\n"):
        if not frame:
            continue
        event = orjson.loads(frame.split("\n", 1)[1].removeprefix("data: "))
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == started
            open_block, started = event["index"], started + 1
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_block
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_block
            open_block = None
    assert open_block is None


@settings(max_examples=150, deadline=None)
@given(
    st.text(max_size=20),
    st.lists(st.tuples(ident, ident, args), min_size=2, max_size=3, unique_by=lambda c: c[0]),
    st.integers(1, 7),
)
def test_interleaved_tool_call_deltas_stream_one_whole_block_after_another(
    content: str, calls: list[tuple[str, str, dict[str, Any]]], cut: int
) -> None:
    tool_calls = [
        {"id": i, "type": "function", "function": {"name": n, "arguments": orjson.dumps(a).decode()}}
        for i, n, a in calls
    ]
    said = {"role": "assistant", "content": content or None, "tool_calls": tool_calls}
    whole = {"choices": [{"message": said, "finish_reason": "tool_calls"}]}
    expected = anthropic.message(whole, "m", "t", Usage(11, 7))
    events = anthropic_events.Events("m", "t", 11)
    chunks = _interleaved(_chunks(content, calls, cut, "tool_calls"))
    stream = events.start() + b"".join(events.chunk(c) for c in chunks) + events.end(Usage(11, 7))
    _one_block_at_a_time(stream)
    assert _reassemble(stream) == expected


def test_text_after_a_streamed_call_waits_for_it_to_end() -> None:
    head = {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
    chunks = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]},
        {"choices": [{"index": 0, "delta": {"content": "Looking."}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    events = anthropic_events.Events("m", "t", 1)
    stream = events.start() + b"".join(events.chunk(c) for c in chunks) + events.end(Usage(1, 2))
    _one_block_at_a_time(stream)
    content = _reassemble(stream)["content"]
    assert content == [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"a": 1}},
        {"type": "text", "text": "Looking."},
    ]


USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "max_tokens"),
        ({"max_tokens": 0, "messages": USER}, "max_tokens"),
        ({"max_tokens": 5, "messages": []}, "messages"),
        ({"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
            "messages[0].content[0].type",
        ),
        ({"max_tokens": 5, "messages": USER, "thinking": {}}, "thinking.type"),
        (
            {"max_tokens": 5000, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 1000}},
            "thinking.budget_tokens",
        ),
        (
            {"max_tokens": 2000, "messages": USER, "thinking": {"type": "enabled", "budget_tokens": 2000}},
            "thinking.budget_tokens",
        ),
        ({"max_tokens": 5, "messages": USER, "thinking": {"type": "adaptive", "display": "full"}}, "thinking.display"),
        (
            {"max_tokens": 5, "messages": USER, "thinking": {"type": "disabled", "budget_tokens": 2}},
            "thinking.budget_tokens",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "thinking", "thinking": 1, "signature": "s"}]},
                ],
            },
            "messages[1].content[0].thinking",
        ),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "x"}}, "tool_choice"),
        ({"max_tokens": 5, "messages": USER, "tools": [{"type": "web_search_20250305", "name": "w"}]}, "tools[0].type"),
        ({"max_tokens": 5, "messages": USER, "stop_sequences": [""]}, "stop_sequences"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        # what Anthropic's API refuses is refused here too, not forwarded to a target that may take it
        ({"max_tokens": 5, "messages": USER, "temperature": 5}, "temperature"),
        ({"max_tokens": 5, "messages": USER, "temperature": -0.1}, "temperature"),
        ({"max_tokens": 5, "messages": USER, "top_p": 1.5}, "top_p"),
        ({"max_tokens": 5, "messages": USER, "top_k": 2.5}, "top_k"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            "messages[0].content[0].text",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
            "messages[0].content[0].text",
        ),
        ({"max_tokens": 5, "messages": [{"role": "assistant", "content": "hi"}, *USER]}, "messages[0].role"),
        ({"max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": ""}, *USER]}, "messages[1].content"),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "any"}}, "tool_choice"),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        (
            {"max_tokens": 5, "messages": USER, "tools": [{"name": "a"}], "tool_choice": {"type": "tool", "name": "b"}},
            "tool_choice.name",
        ),
        ({"max_tokens": 5, "messages": USER, "tool_choice": {"type": "auto", "mode": "x"}}, "tool_choice.mode"),
        (
            {"max_tokens": 5, "messages": USER, "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}},
            "tool_choice.disable_parallel_tool_use",
        ),
    ],
)
def test_what_cannot_be_translated_is_refused_naming_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RequestError) as refused:
        anthropic.to_chat({"model": "t", **body})
    assert refused.value.param == param
    assert refused.value.status == 400


def user(*blocks: Any) -> dict[str, Any]:
    return {"max_tokens": 5, "messages": [{"role": "user", "content": list(blocks)}]}


def assistant(*blocks: Any) -> dict[str, Any]:
    return {"max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": list(blocks)}]}


TEXT = {"type": "text", "text": "x"}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
CALL = {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "c1", "content": "done"}


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        # a block type Anthropic's API does not know
        (user({"type": "txt", "text": "x"}), "messages[0].content[0].type", "'txt' is not a content block type"),
        (assistant({"type": "reasoning", "text": "x"}), "messages[1].content[0].type", "not a content block type"),
        ({**user(TEXT), "system": [{"type": "markdown", "text": "s"}]}, "system[0].type", "not a content block type"),
        (user({**RESULT, "content": [{"type": "json"}]}), "messages[0].content[0].content[0].type", "not a content"),
        (user({"text": "x"}), "messages[0].content[0].type", "is required"),
        (user("x"), "messages[0].content[0]", "must be a content block"),
        # a type Anthropic's API knows, that this gateway does not translate, or not there
        (user({"type": "document", "source": {}}), "messages[0].content[0].type", "document blocks are not supported"),
        (user({"type": "thinking", "thinking": "t", "signature": "s"}), "messages[0].content[0].type",
         "a thinking block is not accepted in a user message"),
        (assistant({"type": "thinking", "thinking": "t", "signature": "s", "sig": "s"}),
         "messages[1].content[0].sig", "not a field of a thinking block"),
        (user(CALL), "messages[0].content[0].type", "a tool_use block is not accepted in a user message"),
        (assistant(RESULT), "messages[1].content[0].type", "a tool_result block is not accepted in an assistant"),
        (user({**RESULT, "content": [URL_IMAGE]}), "messages[0].content[0].content[0].type", "an image block"),
        # a field Anthropic's API does not define there
        (user({**TEXT, "txet": "y"}), "messages[0].content[0].txet", "not a field of a text block"),
        (user({**URL_IMAGE, "detail": "high"}), "messages[0].content[0].detail", "not a field of an image block"),
        (user({**URL_IMAGE, "source": {"type": "url", "url": "u", "detail": "low"}}),
         "messages[0].content[0].source.detail", "not a field of a url image source"),
        (user({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA", "url": "u"}}),
         "messages[0].content[0].source.url", "not a field of a base64 image source"),
        (assistant({**CALL, "arguments": "{}"}), "messages[1].content[0].arguments", "not a field of a tool_use"),
        (user({**RESULT, "output": "x"}), "messages[0].content[0].output", "not a field of a tool_result block"),
        (user({**RESULT, "content": [{**TEXT, "bold": True}]}), "messages[0].content[0].content[0].bold", "a text"),
        ({**user(TEXT), "system": [{**TEXT, "role": "system"}]}, "system[0].role", "not a field of a text block"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x", "name": "ann"}]}, "messages[0].name",
         "not a field of a message"),
        ({**user(TEXT), "tools": [{"name": "f", "input_schem": {}}]}, "tools[0].input_schem", "of a custom tool"),
        ({**user(TEXT), "tools": [{"name": "f", "parameters": {}}]}, "tools[0].parameters", "of a custom tool"),
    ],
)  # fmt: skip
def test_an_unknown_block_type_or_field_is_refused_naming_it(body: dict[str, Any], param: str, says: str) -> None:
    """As Anthropic's API refuses them: a typo is a 400 naming it, never silently dropped."""
    with pytest.raises(RequestError) as refused:
        anthropic.to_chat({"model": "t", **body})
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, "invalid_value")
    assert says in refused.value.message
    if param != "messages[0].content[0]":  # the block is not an object: no field to name
        assert refused.value.message.startswith(f"'{param}'")


def test_the_fields_anthropic_defines_that_change_nothing_here_are_accepted_and_ignored() -> None:
    """What Anthropic's SDKs may send on valid requests: none of it reaches a target."""
    ephemeral = {"type": "ephemeral", "ttl": "5m"}
    citation = {"type": "char_location", "cited_text": "x", "document_index": 0, "start_char_index": 0,
                "end_char_index": 1, "document_title": None}  # fmt: skip
    body = {
        "model": "t",
        "max_tokens": 5,
        "system": [{**TEXT, "cache_control": ephemeral, "citations": None}],
        "messages": [
            {"role": "user", "content": [{**TEXT, "cache_control": ephemeral},
                                         {**URL_IMAGE, "cache_control": ephemeral, "transformations": {}}]},
            {"role": "assistant", "content": [{**TEXT, "citations": [citation]},
                                              {**CALL, "cache_control": ephemeral, "caller": {"type": "direct"},
                                               "toolset_name": None}]},
            {"role": "user", "content": [{**RESULT, "is_error": False, "cache_control": ephemeral,
                                          "toolset_name": None,
                                          "content": [{**TEXT, "cache_control": ephemeral, "citations": None}]}]},
        ],
        "tools": [
            {"type": "custom", "name": "f", "description": "d", "input_schema": {"type": "object"}, "strict": True,
             "cache_control": ephemeral, "defer_loading": False, "eager_input_streaming": None,
             "input_examples": [{}], "allowed_callers": ["direct"]},
        ],
    }  # fmt: skip
    chat = anthropic.to_chat(body)
    sent = orjson.dumps(chat).decode()
    assert not [name for name in anthropic.IGNORED if f'"{name}"' in sent]
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant", "tool"]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "description": "d",
                                          "strict": True}}
    ]  # fmt: skip
    # Each ignored field is one Anthropic's API defines on the block or tool that carries it.
    defined = set().union(*anthropic.BLOCK_FIELDS.values(), anthropic.TOOL_FIELDS)
    assert defined >= anthropic.IGNORED


def test_a_final_assistant_prefill_may_be_empty_and_valid_ranges_pass() -> None:
    chat = anthropic.to_chat(
        {"model": "t", "max_tokens": 5, "messages": [*USER, {"role": "assistant", "content": ""}], "temperature": 1,
         "top_p": 0, "top_k": 0, "tools": [{"name": "a"}], "tool_choice": {"type": "tool", "name": "a"}}
    )  # fmt: skip
    assert (chat["temperature"], chat["top_p"], chat["top_k"]) == (1, 0, 0)
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "a"}}


def test_a_stop_sequence_the_upstream_names_is_reported_as_one() -> None:
    """vLLM says which stop string ended the answer (``stop_reason``); it was reported as end_turn."""
    said = {"choices": [{"message": {"content": "one, two"}, "finish_reason": "stop", "stop_reason": "END"}]}
    whole = anthropic.message(said, "msg_1", "task", Usage(1, 2), ["END"])
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", "END")
    natural = {"choices": [{"message": {"content": "one"}, "finish_reason": "stop", "stop_reason": None}]}
    assert anthropic.message(natural, "msg_1", "task", Usage(1, 2), ["END"])["stop_reason"] == "end_turn"
    token = {"choices": [{"message": {"content": "one"}, "finish_reason": "stop", "stop_reason": 128009}]}
    assert anthropic.message(token, "msg_1", "task", Usage(1, 2), ["END"])["stop_sequence"] is None  # a token id: EOS
    events = anthropic_events.Events("msg_1", "task", 1, ["END"])
    last = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}
    stream = events.start() + events.chunk(last) + events.end(Usage(1, 2))
    assert b'"stop_reason":"stop_sequence","stop_sequence":"END"' in stream


def test_the_data_class_is_read_in_any_case_as_on_the_other_doors() -> None:
    from turnout.serving.messages import validate

    found = validate({"model": "t", "max_tokens": 5, "messages": USER, "metadata": {"data_class": "Public"}})
    assert found.data_class == "public"


def test_a_tools_strict_reaches_the_target_and_cache_control_is_accepted_and_ignored() -> None:
    """``strict`` is chat's ``function.strict``; ``cache_control`` (which the SDKs send) has no
    chat equivalent for an OpenAI-compatible upstream: accepted, documented as ignored, and not
    passed on."""
    ephemeral = {"type": "ephemeral"}
    chat = anthropic.to_chat(
        {
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief.", "cache_control": ephemeral}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "x", "cache_control": ephemeral}]}],
            "tools": [
                {"name": "f", "input_schema": {"type": "object"}, "strict": True, "cache_control": ephemeral},
                {"name": "g"},
            ],
        }
    )
    assert [t["function"] for t in chat["tools"]] == [
        {"name": "f", "parameters": {"type": "object"}, "strict": True},
        {"name": "g", "parameters": {"type": "object"}},
    ]
    assert "cache_control" not in orjson.dumps(chat).decode()
    with pytest.raises(RequestError) as refused:
        anthropic.to_chat({"max_tokens": 5, "messages": USER, "tools": [{"name": "f", "strict": "yes"}]})
    assert refused.value.param == "tools[0].strict"


@pytest.mark.parametrize("kind", [[], {}, ["base64"], {"type": "url"}])
def test_an_image_source_type_that_is_not_a_string_is_a_400(kind: Any) -> None:
    """A list or an object as the source's ``type`` was looked up in a dict: a TypeError, a 500."""
    with pytest.raises(RequestError) as refused:
        anthropic.to_chat({"model": "t", **user({"type": "image", "source": {"type": kind, "url": "u"}})})
    assert (refused.value.status, refused.value.param) == (400, "messages[0].content[0].source")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"metadata": ""}, "metadata"),
        ({"metadata": []}, "metadata"),
        ({"metadata": 0}, "metadata"),
        ({"tools": [{"name": "f", "description": 7}]}, "tools[0].description"),
        (user({**RESULT, "is_error": "true"}), "messages[0].content[0].is_error"),
    ],
)
def test_a_wrong_type_in_a_field_the_door_reads_is_a_400_never_dropped(body: dict[str, Any], param: str) -> None:
    """A ``metadata`` that is empty but not an object, a tool's ``description`` that is not a
    string, an ``is_error`` that is not a boolean: each was read as absent, the answer then
    differing from the caller's ask without a word (an error result sent as a success)."""
    from turnout.serving.messages import validate

    with pytest.raises(RequestError) as refused:
        validate({"model": "t", "max_tokens": 5, "messages": USER, **body})
    assert (refused.value.status, refused.value.param) == (400, param)


def test_a_top_level_cache_control_is_accepted_and_ignored_as_a_blocks_is() -> None:
    """The SDKs send ``cache_control`` at the top level too (``messages.create(cache_control=...)``,
    Anthropic's automatic cache point on the last cacheable block): no target here has a cache
    point to put it in, as for a block's. It was a 400."""
    body = {"model": "t", "max_tokens": 5, "messages": USER, "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    assert "cache_control" not in orjson.dumps(anthropic.to_chat(body)).decode()
    counted = {k: v for k, v in body.items() if k != "max_tokens"}
    assert "cache_control" not in orjson.dumps(anthropic.to_counted(counted)).decode()


def test_a_field_sent_as_null_asks_for_nothing_and_is_accepted() -> None:
    """The SDK's ``Optional`` parameters (``speed``, ``inference_geo``, ``container``,
    ``diagnostics``): typed code that passes None sends a null, the API's default. Refusing the
    fields this door does not translate is for what they ask; a null asks for nothing. It was a 400."""
    nulls = dict.fromkeys(("speed", "inference_geo", "container", "diagnostics", "thinking", "service_tier"))
    chat = anthropic.to_chat({"model": "t", "max_tokens": 5, "messages": USER, **nulls})
    assert not set(nulls) & set(chat)
    assert anthropic.to_counted({"model": "t", "messages": USER, **nulls})["messages"] == chat["messages"]
    with pytest.raises(RequestError) as refused:
        anthropic.to_chat({"model": "t", "max_tokens": 5, "messages": USER, "speed": "fast"})
    assert refused.value.param == "speed"


def _raw_call_chunks(arguments: list[str], cut: int, interleave: bool) -> list[dict[str, Any]]:
    """Calls whose arguments are raw strings (not necessarily JSON), cut every ``cut``
    characters; with ``interleave``, taken in turn by index, so that the second call is held."""
    per_call: list[list[dict[str, Any]]] = []
    for n, raw in enumerate(arguments):
        head = {"index": n, "id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": ""}}
        pieces = [{"index": n, "function": {"arguments": raw[i : i + cut]}} for i in range(0, len(raw), cut)]
        per_call.append([head, *pieces])
    order = itertools.zip_longest(*per_call) if interleave else [(c,) for calls in per_call for c in calls]
    chunks = [{"choices": [{"index": 0, "delta": {"tool_calls": [c]}}]} for group in order for c in group if c]
    return [*chunks, {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}]


@pytest.mark.parametrize("bad", ["city=Paris", "{'city': 'Paris'}", "[1, 2]", '"Paris"', '{"city": Paris}'])
@pytest.mark.parametrize("cut", [1, 3, 40])
@pytest.mark.parametrize("interleave", [False, True])
def test_arguments_that_are_not_a_json_object_stream_without_breaking_the_sdk(
    bad: str, cut: int, interleave: bool
) -> None:
    """A model may write arguments that are not JSON. Anthropic's SDK parses the input at every
    ``input_json_delta`` and raised ``ValueError`` in the middle of the stream; now it reads
    what the whole message says (``{"_raw": ...}``), where nothing sent before contradicts it."""
    from anthropic.lib.streaming._messages import accumulate_event

    arguments = ['{"city": "Oslo"}', bad]
    said = {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": raw}}
        for n, raw in enumerate(arguments)]}  # fmt: skip
    expected = anthropic.message({"choices": [{"message": said, "finish_reason": "tool_calls"}]}, "m", "t", Usage(1, 1))
    for calls in (arguments, arguments[::-1]):  # the bad call held, then streamed
        events = anthropic_events.Events("m", "t", 1)
        stream = events.start() + b"".join(events.chunk(c) for c in _raw_call_chunks(calls, cut, interleave))
        stream += events.end(Usage(1, 1))
        snapshot: Any = None
        buffers: dict[int, bytes] = {}
        for frame in stream.decode().split("\n\n"):
            if frame:
                event = orjson.loads(frame.split("\n", 1)[1].removeprefix("data: "))
                snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
        inputs = {block.id: block.input for block in snapshot.content}
        assert inputs["c0" if calls is arguments else "c1"] == {"city": "Oslo"}
        bad_id = "c1" if calls is arguments else "c0"
        if bad != '{"city": Paris}':  # not a JSON object from its first characters on: as the message says
            assert inputs[bad_id] == expected["content"][1]["input"]
