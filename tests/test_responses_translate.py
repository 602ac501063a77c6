"""The Responses ↔ chat translation (``turnout.serving.response_items``) as properties: a request
keeps its meaning (every instruction, text, image, function call and output, in order, read back
from the chat body), and a streamed answer's events reassemble to the non-stream Response."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.errors import RequestError
from turnout.providers.base import Usage
from turnout.serving import response_events, response_items
from turnout.serving.openapi_responses import responses_schemas
from turnout.serving.responses import validate

text = st.text(min_size=1, max_size=30)
ident = st.text(alphabet="abcdefghijklmnop0123456789_", min_size=1, max_size=12)
arguments = st.dictionaries(ident, st.one_of(st.integers(-1000, 1000), text), max_size=3).map(
    lambda d: orjson.dumps(d).decode()
)
IMAGE = "data:image/png;base64,AAAA"


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Messages, function calls and their outputs, in the orders a client sends them."""
    items: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["user", "assistant", "developer", "calls"]))
        if kind == "calls":
            calls = [f"call_{i}_{k}" for k in range(draw(st.integers(1, 2)))]
            for call in calls:
                items.append(
                    {"type": "function_call", "call_id": call, "name": draw(ident), "arguments": draw(arguments)}
                )
            for call in calls:
                items.append({"type": "function_call_output", "call_id": call, "output": draw(text)})
        elif kind == "user" and draw(st.booleans()):
            parts: list[dict[str, Any]] = [{"type": "input_text", "text": draw(text)}]
            if draw(st.booleans()):
                parts.append({"type": "input_image", "image_url": IMAGE})
            items.append({"type": "message", "role": "user", "content": parts})
        elif kind == "assistant" and draw(st.booleans()):
            items.append({"role": "assistant", "content": [{"type": "output_text", "text": draw(text)}]})
        else:
            items.append({"role": kind, "content": draw(text)})
    return items


def meaning_of_items(instructions: str | None, items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """What a Responses input says, in order, independent of its shape."""
    out: list[tuple[str, ...]] = [("developer", instructions)] if instructions is not None else []
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            out.append(("call", item["call_id"], item["name"], item["arguments"]))
        elif kind == "function_call_output":
            out.append(("output", item["call_id"], item["output"]))
        elif isinstance(item["content"], str):
            out.append((item["role"], item["content"]))
        else:
            for part in item["content"]:
                out.append((item["role"], part.get("text") or part["image_url"]))
    return out


def meaning_of_chat(messages: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """What a chat body says, read back the other way."""
    out: list[tuple[str, ...]] = []
    for m in messages:
        role = "developer" if m["role"] == "system" else m["role"]
        if m["role"] == "tool":
            out.append(("output", m["tool_call_id"], m["content"]))
            continue
        if isinstance(m["content"], str):
            out.append((role, m["content"]))
        for part in m["content"] if isinstance(m["content"], list) else ():
            out.append((role, part["text"] if part["type"] == "text" else part["image_url"]["url"]))
        for call in m.get("tool_calls") or ():
            out.append(("call", call["id"], call["function"]["name"], call["function"]["arguments"]))
    return out


@settings(max_examples=200, deadline=None)
@given(conversations(), st.one_of(st.none(), text))
def test_a_request_keeps_its_meaning(items: list[dict[str, Any]], instructions: str | None) -> None:
    body: dict[str, Any] = {"model": "t", "input": items}
    if instructions is not None:
        body["instructions"] = instructions
    chat = response_items.to_chat(body)
    expected = [("developer", *m[1:]) if m[0] == "system" else m for m in meaning_of_items(instructions, items)]
    assert meaning_of_chat(chat["messages"]) == expected
    for i, m in enumerate(chat["messages"]):  # chat wants each tool message right after its call
        if m["role"] == "tool":
            earlier = [c["id"] for prev in chat["messages"][:i] for c in prev.get("tool_calls") or ()]
            assert m["tool_call_id"] in earlier


def test_settings_map_to_their_chat_names() -> None:
    body = {
        "model": "t",
        "input": "hi",
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 1,
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True}],
        "tool_choice": "required",
        "text": {
            "format": {"type": "json_schema", "name": "Out", "schema": {"type": "object"}, "strict": True},
            "verbosity": "low",
        },
    }
    assert response_items.to_chat(body) == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 1,
        "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}],
        "tool_choice": "required",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Out", "schema": {"type": "object"}, "strict": True},
        },
        "verbosity": "low",  # chat's name for it: the targets that know it apply it
    }
    plain = response_items.to_chat({"model": "t", "input": "x", "text": {"format": {"type": "text"}}})
    assert "response_format" not in plain


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "not_kept"),
        ({"conversation": "conv_1"}, "conversation", "not_kept"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "not_kept"),
        ({"reasoning": {"effort": "low"}}, "reasoning", "invalid_value"),
        ({"input": []}, "input", "empty_array"),
        ({"input": ""}, "input", "empty_string"),
        ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0]",
         "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
         "input[0].content[0].image_url", "invalid_value"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]", "invalid_value"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output",
         "invalid_value"),
        # a chat tool message carries text only: an image in a call's output would be lost
        ({"input": [{"type": "function_call_output", "call_id": "c",
                     "output": [{"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": IMAGE}]}]},
         "input[0].output[1]", "invalid_value"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
        ({"text": {"format": {"type": "text"}, "tone": "dry"}}, "text.tone", "invalid_value"),
        ({"tools": [{"type": "file_search"}]}, "tools[0]", "invalid_value"),
        ({"tool_choice": {"type": "function"}}, "tool_choice", "invalid_value"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "invalid_value"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_value"),
        ({"temperature": 3}, "temperature", "invalid_value"),
        ({"top_p": True}, "top_p", "invalid_value"),
        ({"metadata": []}, "metadata", "invalid_value"),
        ({"metadata": {"data_class": ["public"]}}, "metadata.data_class", "invalid_value"),
        ({"metadata": {"data_class": "secret"}}, "metadata.data_class", "invalid_value"),
        ({"user": 5, "metadata": {"user": "u"}}, "user", "invalid_value"),
        ({"store": "yes"}, "store", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_value"),
        # a wrong type in a field the door reads: refused, never read as absent
        ({"tools": [{"type": "function", "name": "f", "parameters": []}]}, "tools[0].parameters", "invalid_value"),
        ({"tools": [{"type": "function", "name": "f", "parameters": ""}]}, "tools[0].parameters", "invalid_value"),
        ({"tools": [{"type": "function", "name": "f", "strict": "yes"}]}, "tools[0].strict", "invalid_value"),
        ({"tools": [{"type": "function", "name": "f", "description": 7}]}, "tools[0].description", "invalid_value"),
        ({"text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "strict": "yes"}}},
         "text.format.strict", "invalid_value"),
        ({"text": {"format": {"type": "json_schema", "name": "n", "schema": {}, "description": 7}}},
         "text.format.description", "invalid_value"),
        ({"tool_choice": {"type": "function", "name": ""}}, "tool_choice", "invalid_value"),
    ],
)  # fmt: skip
def test_what_the_door_does_not_translate_is_a_400_naming_it(body: dict[str, Any], param: str, code: str) -> None:
    with pytest.raises(RequestError) as refused:
        validate({"model": "t", "input": "x", **body})
    assert (refused.value.status, refused.value.param, refused.value.code) == (400, param, code)


@pytest.mark.parametrize(
    ("tools", "choice", "param"),
    [
        (None, "required", "tool_choice"),
        (None, {"type": "function", "name": "lookup"}, "tool_choice.name"),
        ([{"type": "function", "name": "search"}], {"type": "function", "name": "lookup"}, "tool_choice.name"),
    ],
)
def test_a_tool_choice_that_names_no_declared_tool_is_a_400(tools: Any, choice: Any, param: str) -> None:
    """As OpenAI answers it. It reached the targets, and a target with no such tool to call (the
    embedded model ignores the choice) answered in text: the caller that required a call got none."""
    with pytest.raises(RequestError) as refused:
        validate({"model": "t", "input": "x", "tools": tools, "tool_choice": choice})
    assert (refused.value.status, refused.value.param) == (400, param)
    named = validate(
        {"model": "t", "input": "x", "tools": [{"type": "function", "name": "lookup"}], "tool_choice": choice}
    )
    assert named.body["tool_choice"] in ("required", {"type": "function", "function": {"name": "lookup"}})


def test_input_is_required_and_is_a_string_or_a_list_of_items() -> None:
    """As OpenAI takes it; required here, where no response state stands in for it."""
    with pytest.raises(RequestError) as missing:
        validate({"model": "t"})
    assert (missing.value.param, missing.value.status) == ("input", 400)
    assert missing.value.message.startswith("'input' is required: a string or a list of items")
    wrongs: list[Any] = [5, {"role": "user", "content": "hi"}, None]
    for wrong in wrongs:
        with pytest.raises(RequestError) as refused:
            validate({"model": "t", "input": wrong})
        assert refused.value.param == "input"
        assert ("is required" if wrong is None else "must be a string or a non-empty list") in refused.value.message
    # Empty is nothing to answer: never an empty user turn sent to a target.
    for empty, what in (("", "empty string"), ([], "empty array")):
        with pytest.raises(RequestError) as refused:
            validate({"model": "t", "input": empty})
        err = refused.value
        assert (err.status, err.type, err.param) == (400, "invalid_request_error", "input")
        assert err.message.startswith(f"Invalid 'input': {what}.")
    said = [{"role": "user", "content": "hi"}]
    assert validate({"model": "t", "input": "hi"}).body["messages"] == said
    assert validate({"model": "t", "input": [{"role": "user", "content": "hi"}]}).body["messages"] == said
    assert (
        validate({"model": "t", "input": [{"type": "message", "role": "user", "content": "hi"}]}).body["messages"]
        == said
    )


def test_the_door_reads_its_metadata_and_accepts_store() -> None:
    request = validate(
        {"model": "t", "input": "x", "store": True, "stream": True,
         "metadata": {"data_class": "Restricted", "user": "u-1", "episode_id": "T-9", "ticket": "x"}}
    )  # fmt: skip
    assert (request.data_class, request.user, request.episode_id, request.stream) == ("restricted", "u-1", "T-9", True)
    assert request.body["stream_options"] == {"include_usage": True} and request.body["user"] == "u-1"
    assert "metadata" not in request.body and "store" not in request.body  # neither reaches a target
    assert request.echo["metadata"]["ticket"] == "x"
    assert request.echo["store"] is False  # nothing was stored: the Response does not say it was


def test_the_description_names_exactly_the_fields_the_door_reads() -> None:
    described = responses_schemas()["ResponseRequest"]["properties"]
    assert set(described) == response_items.FIELDS


# --- the answer ------------------------------------------------------------------------------

answers = st.tuples(
    st.one_of(st.just(""), text),
    st.lists(st.tuples(ident, ident, arguments), max_size=2, unique_by=lambda c: c[0]),
    st.sampled_from(["stop", "tool_calls", "length", None]),
)


# What a reasoning model thinks before it answers, and a refusal (each maybe none).
beside = st.tuples(st.one_of(st.just(""), text), st.one_of(st.just(""), text))


def completion(
    said: str, calls: list[tuple[str, str, str]], finish: Any, reasoning: str = "", refusal: str = ""
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": said or None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if refusal:
        message["refusal"] = refusal
    if calls:
        message["tool_calls"] = [
            {"id": c, "type": "function", "function": {"name": n, "arguments": a}} for c, n, a in calls
        ]
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def chunks(
    said: str, calls: list[tuple[str, str, str]], finish: Any, cuts: list[int], reasoning: str = "", refusal: str = ""
) -> list[dict[str, Any]]:
    """The same answer as a chat stream: the reasoning, text, refusal and each call's arguments
    cut at ``cuts``."""
    out: list[dict[str, Any]] = []
    for field, said_there in (("reasoning_content", reasoning), ("content", said), ("refusal", refusal)):
        for piece in _pieces(said_there, cuts):
            out.append({"choices": [{"index": 0, "delta": {field: piece}}]})
    for k, (call_id, name, args) in enumerate(calls):
        head = {"index": k, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        out.append({"choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
        for piece in _pieces(args, cuts):
            delta = {"tool_calls": [{"index": k, "function": {"arguments": piece}}]}
            out.append({"choices": [{"index": 0, "delta": delta}]})
    out.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    return out


def _pieces(s: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(s) + 1) for c in cuts} | {0, len(s)})
    return [s[a:b] for a, b in itertools.pairwise(points) if s[a:b]]


def parse(sse: bytes) -> list[dict[str, Any]]:
    events = []
    for block in sse.decode().split("\n\n"):
        if block:
            name, data = block.split("\n", 1)
            event = orjson.loads(data.removeprefix("data: "))
            assert name == f"event: {event['type']}"
            events.append(event)
    return events


def reassemble(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output items as a client builds them from the deltas alone."""
    items: dict[int, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "response.output_item.added":
            items[e["output_index"]] = dict(e["item"], content=[]) if e["item"]["type"] == "message" else e["item"]
        elif e["type"] == "response.content_part.added":
            items[e["output_index"]]["content"].append(e["part"])
        elif e["type"] in ("response.output_text.delta", "response.reasoning_text.delta"):
            items[e["output_index"]]["content"][e["content_index"]]["text"] += e["delta"]
        elif e["type"] == "response.refusal.delta":
            items[e["output_index"]]["content"][e["content_index"]]["refusal"] += e["delta"]
        elif e["type"] == "response.function_call_arguments.delta":
            items[e["output_index"]]["arguments"] += e["delta"]
        elif e["type"] == "response.output_item.done":
            assert e["item"]["status"] in ("completed", "incomplete")
            items[e["output_index"]]["status"] = e["item"]["status"]
    return [items[k] for k in sorted(items)]


@settings(max_examples=300, deadline=None)
@given(answers, beside, st.lists(st.integers(0, 64), max_size=5))
def test_streamed_events_reassemble_to_the_plain_response(answer: Any, also: tuple[str, str], cuts: list[int]) -> None:
    said, calls, finish = answer
    if not said and not calls:
        said = "ok"
    items, plain_finish = response_items.output(completion(said, calls, finish, *also), "r1")
    plain = response_items.response("r1", 7, "task", items, Usage(3, 5), plain_finish, {"metadata": {}})
    events_out = response_events.Events("r1", 7, "task", {"metadata": {}})
    sse = events_out.start() + b"".join(events_out.chunk(c) for c in chunks(said, calls, finish, cuts, *also))
    events = parse(sse + events_out.end(Usage(3, 5)))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    last = events[-1]
    assert last["type"] == ("response.incomplete" if finish == "length" else "response.completed")
    assert last["response"] == plain
    assert reassemble(events) == plain["output"]
    # The item the model was writing when it was cut is incomplete; those before it are whole.
    *whole, cut = [item["status"] for item in plain["output"]]
    assert whole == ["completed"] * len(whole)
    assert cut == ("incomplete" if finish == "length" else "completed")


def interleaved(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same chunks with the calls' deltas taken in turn by index (0, 1, 0, 1, ...), as some
    upstreams send them; the text before them and the finish stay where they were."""
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


def one_item_at_a_time(events: list[dict[str, Any]]) -> None:
    """Each item is added, filled and done before the next is added; every delta names it."""
    open_item: tuple[Any, Any] | None = None
    for e in events:
        at = (e.get("item_id") or e.get("item", {}).get("id"), e.get("output_index"))
        if e["type"] == "response.output_item.added":
            assert open_item is None
            open_item = at
        elif e["type"] == "response.output_item.done":
            assert at == open_item
            open_item = None
        elif "item_id" in e:
            assert at == open_item, e
    assert open_item is None


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.just(""), text),
    st.lists(st.tuples(ident, ident, arguments), min_size=2, max_size=3, unique_by=lambda c: c[0]),
    st.lists(st.integers(0, 64), max_size=5),
)
def test_interleaved_tool_call_deltas_go_to_their_own_items(
    said: str, calls: list[tuple[str, str, str]], cuts: list[int]
) -> None:
    items, finish = response_items.output(completion(said, calls, "tool_calls"), "r1")
    plain = response_items.response("r1", 7, "task", items, Usage(3, 5), finish, {"metadata": {}})
    events_out = response_events.Events("r1", 7, "task", {"metadata": {}})
    sse = events_out.start() + b"".join(events_out.chunk(c) for c in interleaved(chunks(said, calls, None, cuts)))
    events = parse(sse + events_out.end(Usage(3, 5)))
    one_item_at_a_time(events)
    for e in events:
        if e["type"] == "response.function_call_arguments.done":
            assert e["arguments"] == plain["output"][e["output_index"]]["arguments"]
    assert events[-1]["response"] == plain
    assert reassemble(events) == plain["output"]


def test_a_cut_answer_is_incomplete_and_says_why() -> None:
    items, finish = response_items.output(completion("half", [], "length"), "r2")
    answer = response_items.response("r2", 1, "task", items, Usage(1, 1), finish)
    assert (answer["status"], answer["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    [message] = answer["output"]
    assert message["status"] == "incomplete"
    assert message["content"] == [{"type": "output_text", "text": "half", "annotations": []}]
    assert answer["usage"]["total_tokens"] == 2
    # Cut while writing a call's arguments: the call is the incomplete item.
    items, finish = response_items.output(completion("Let me look.", [("c1", "f", '{"a"')], "length"), "r3")
    assert [(item["type"], item["status"]) for item in items] == [
        ("message", "completed"),
        ("function_call", "incomplete"),
    ]
    filtered, finish = response_items.output(completion("no", [], "content_filter"), "r4")
    answer = response_items.response("r4", 1, "task", filtered, Usage(1, 1), finish)
    assert (answer["status"], answer["incomplete_details"], filtered[0]["status"]) == (
        "incomplete",
        {"reason": "content_filter"},
        "incomplete",
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
near_fields = st.sampled_from(
    [*sorted(response_items.FIELDS), "type", "role", "content", "call_id", "name", "arguments", "output", "format"]
)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies near the real shape: known field names holding any JSON, items with any fields."""
    body: dict[str, Any] = draw(st.dictionaries(near_fields, json_values, max_size=6))
    if draw(st.booleans()):
        item = draw(st.dictionaries(near_fields, json_values, max_size=5))
        body["input"] = [item, draw(json_values)]
    return {"model": "t", **body} if draw(st.booleans()) else body


@settings(max_examples=500, deadline=None)
@given(hostile_bodies())
def test_any_body_is_translated_or_refused_with_a_400_never_a_crash(body: dict[str, Any]) -> None:
    refused: RequestError | None = None
    try:
        request = validate(body)
    except RequestError as exc:
        refused = exc
    if refused is not None:
        assert refused.status == 400 and refused.param
    else:
        assert request.body["messages"]  # translated: something for the targets to answer


@pytest.mark.parametrize("finish", ["stop", "tool_calls", "length"])
def test_the_response_and_every_event_validate_against_the_sdks_own_types(finish: str) -> None:
    """The SDK builds its objects without validating them: a required field left out (usage's
    ``cache_write_tokens``) only shows as a None where typed code expects a number."""
    from openai.types.responses import Response, ResponseStreamEvent
    from pydantic import TypeAdapter

    said, calls, also = "Let me look.", [("c1", "f", '{"a": 1}')], ("Hm.", "No.")
    usage = Usage(10, 5, cached_tokens=4, cache_write_tokens=3, reasoning_tokens=2)
    items, why = response_items.output(completion(said, calls, finish, *also), "r1")
    plain = response_items.response("r1", 1, "task", items, usage, why, response_items.echo({"input": "x"}))
    Response.model_validate(plain)
    assert plain["usage"]["input_tokens_details"] == {"cached_tokens": 4, "cache_write_tokens": 3}
    events = response_events.Events("r1", 1, "task", response_items.echo({"input": "x"}))
    sse = events.start() + b"".join(events.chunk(c) for c in chunks(said, calls, finish, [3], *also))
    assert [item["type"] for item in plain["output"]] == ["reasoning", "message", "function_call"]
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for event in parse(sse + events.end(usage)):
        adapter.validate_python(event)


def test_a_field_sent_as_null_asks_for_nothing_and_is_accepted() -> None:
    """The SDK's parameters are ``Optional``: typed code that passes ``reasoning=None`` or
    ``stream=None`` sends a null, which OpenAI reads as the default. Refusing the fields this door
    does not translate is for what they ask; a null asks for nothing. It was a 400."""
    names = ("reasoning", "include", "truncation", "service_tier", "prompt_cache_key", "safety_identifier",
             "background", "stream_options", "top_logprobs", "stream")  # fmt: skip
    nulls = dict.fromkeys(names)
    request = validate({"model": "t", "input": "x", **nulls})
    assert request.stream is False
    assert not set(nulls) & set(request.body)
    with pytest.raises(RequestError) as refused:
        validate({"model": "t", "input": "x", "reasoning": {"effort": "low"}})
    assert refused.value.param == "reasoning"


def test_text_after_a_streamed_call_is_a_message_item_of_its_own_id() -> None:
    """Text an upstream sends after a call has started follows it, in a second message item:
    it had the first one's id, and the SDK's stream state raises on two items of one identity."""
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    events_out = response_events.Events("r1", 7, "task", response_items.echo({"input": "x"}))
    said = chunks("Let me look.", [("c1", "f", '{"a": 1}')], None, [])
    said.insert(-1, {"choices": [{"index": 0, "delta": {"content": "Done."}}]})
    events = parse(events_out.start() + b"".join(events_out.chunk(c) for c in said) + events_out.end(Usage(1, 1)))
    one_item_at_a_time(events)
    output = events[-1]["response"]["output"]
    assert [item["type"] for item in output] == ["message", "function_call", "message"]
    assert len({item["id"] for item in output}) == 3
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    for event in events:
        adapter.validate_python(event)
