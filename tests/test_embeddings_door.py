"""The embeddings door's request checks and answer encoding, the provider edge's batching
arithmetic and the vectors' checks, and the translation properties (hypothesis): a request keeps
its meaning from the caller's body to every upstream's (OpenAI-compatible, Titan, Cohere), and a
vector keeps its value through base64."""

from __future__ import annotations

import math
import struct
from array import array
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from turnout.errors import RequestError, UpstreamProtocolError, UpstreamStatusError
from turnout.providers.bedrock.embed import (
    COHERE,
    TITAN,
    answer_body,
    cohere_request,
    family,
    header_tokens,
    titan_request,
)
from turnout.providers.embeddings import check_vector, split, vectors_of
from turnout.serving.embeddings import (
    MAX_DIMENSIONS,
    MAX_INPUT_CHARS,
    MAX_INPUTS,
    decode,
    encode,
    validate,
)
from turnout.serving.embeddings import answer_body as door_answer


def bad(body: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as caught:
        validate(body)
    assert caught.value.status == 400
    assert caught.value.to_openai()["error"]["type"] == "invalid_request_error"
    return caught.value


# -- the request ------------------------------------------------------------------------------


def test_a_string_becomes_a_list_of_one_and_encoding_defaults_to_float() -> None:
    req = validate({"model": "embed", "input": "hello"})
    assert req.task == "embed"
    assert req.body == {"input": ["hello"]}
    assert req.encoding == "float"
    assert req.stream is False


def test_what_the_targets_receive_keeps_unknown_fields_and_drops_turnout_s() -> None:
    req = validate(
        {
            "model": "embed",
            "input": ["a", "b"],
            "encoding_format": "base64",
            "dimensions": 256,
            "user": "u-1",
            "input_type": "search_query",
            "metadata": {"data_class": "Confidential", "user": "alice@example.com", "episode_id": "T-1"},
        }
    )
    assert req.body == {"input": ["a", "b"], "dimensions": 256, "user": "u-1", "input_type": "search_query"}
    assert req.encoding == "base64"
    assert (req.data_class, req.user, req.episode_id) == ("Confidential", "alice@example.com", "T-1")


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"input": ["a"]}, "model", "'model' is required"),
        ({"model": "", "input": ["a"]}, "model", "'model' is required"),
        ({"model": "e"}, "input", "'input' is required"),
        ({"model": "e", "input": []}, "input", "non-empty array"),
        ({"model": "e", "input": {"text": "a"}}, "input", "non-empty array"),
        ({"model": "e", "input": ""}, "input[0]", "is empty"),
        ({"model": "e", "input": ["a", ""]}, "input[1]", "is empty"),
        ({"model": "e", "input": ["a", 7.5]}, "input[1]", "must be a string"),
        ({"model": "e", "input": ["a", None]}, "input[1]", "must be a string"),
        ({"model": "e", "input": [1, 2, 3]}, "input", "token ids"),
        ({"model": "e", "input": [[1, 2], [3]]}, "input", "token ids"),
        ({"model": "e", "input": ["a"] * (MAX_INPUTS + 1)}, "input", f"at most {MAX_INPUTS}"),
        ({"model": "e", "input": ["x" * (MAX_INPUT_CHARS + 1)]}, "input[0]", f"at most {MAX_INPUT_CHARS}"),
        ({"model": "e", "input": "a", "encoding_format": "int8"}, "encoding_format", "float or base64"),
        ({"model": "e", "input": "a", "encoding_format": ["float"]}, "encoding_format", "float or base64"),
        ({"model": "e", "input": "a", "dimensions": 0}, "dimensions", "integer from 1"),
        ({"model": "e", "input": "a", "dimensions": MAX_DIMENSIONS + 1}, "dimensions", "integer from 1"),
        ({"model": "e", "input": "a", "dimensions": True}, "dimensions", "integer from 1"),
        ({"model": "e", "input": "a", "dimensions": 25.5}, "dimensions", "integer from 1"),
        ({"model": "e", "input": "a", "user": 5}, "user", "must be a string"),
        ({"model": "e", "input": "a", "metadata": []}, "metadata", "must be an object"),
        ({"model": "e", "input": "a", "metadata": {"data_class": "secret"}}, "metadata.data_class", "one of"),
        ({"model": "e", "input": "a", "metadata": {"user": 3}}, "metadata.user", "must be a string"),
        ({"model": "e", "input": "a", "metadata": {"episode_id": ""}}, "metadata.episode_id", "non-empty"),
    ],
)
def test_bad_requests_name_the_field(body: dict[str, Any], param: str, words: str) -> None:
    err = bad(body)
    assert err.param == param
    assert words in err.message


def test_the_largest_request_allowed_passes() -> None:
    req = validate({"model": "e", "input": ["x" * MAX_INPUT_CHARS] + ["y"] * (MAX_INPUTS - 1)})
    assert len(req.inputs) == MAX_INPUTS


# -- the answer -------------------------------------------------------------------------------


def test_base64_is_little_endian_float32_as_openai_sends_it() -> None:
    vector = [0.5, -1.25, 3.0]
    raw = struct.pack("<3f", *vector)
    import base64

    assert encode(vector) == base64.b64encode(raw).decode()
    assert decode(encode(vector)) == vector


def test_the_answer_names_the_task_and_counts_tokens() -> None:
    data = [{"object": "embedding", "index": 0, "embedding": [0.25, 0.5]}]
    floats = door_answer(data, "embed", "float", 7)
    assert floats == {
        "object": "list",
        "data": data,
        "model": "embed",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    packed = door_answer(data, "embed", "base64", 7)
    assert decode(packed["data"][0]["embedding"]) == [0.25, 0.5]
    assert data[0]["embedding"] == [0.25, 0.5]  # the floats are not changed in place


# -- the provider edge's arithmetic -----------------------------------------------------------


def test_split_keeps_order_and_sizes() -> None:
    assert split(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert split(["a"], 32) == [["a"]]


def test_vectors_are_put_in_input_order_by_index() -> None:
    body = {
        "data": [{"index": 2, "embedding": [3.0]}, {"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2]}]
    }
    assert vectors_of(body, 3, "t") == [[1.0], [2], [3.0]]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"data": [{"index": 0, "embedding": [1.0]}]}, "1 embeddings for 2 inputs"),
        ({}, "no embeddings for 2 inputs"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}, "two embeddings have index 0"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 5, "embedding": [1.0]}]}, "no valid index"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": True, "embedding": [1.0]}]}, "no valid index"),
        ({"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": "AAAA"}]}, "not a list of numbers"),
        ({"data": [{"index": 0, "embedding": [1.0]}, "x"]}, "no valid index"),
    ],
)
def test_a_batch_answer_that_does_not_match_its_inputs_is_refused(body: dict[str, Any], words: str) -> None:
    with pytest.raises(UpstreamProtocolError, match=words):
        vectors_of(body, 2, "t")


def test_vectors_must_share_a_length_of_finite_numbers() -> None:
    assert check_vector([1.0, 2], None, None, "t") == 2
    with pytest.raises(UpstreamProtocolError, match="3 dimensions, 2 in the others"):
        check_vector([1.0, 2.0, 3.0], 2, None, "t")
    with pytest.raises(UpstreamProtocolError, match="3 dimensions, 2 asked"):
        check_vector([1.0, 2.0, 3.0], 2, 2, "t")
    for wrong in ([], [1.0, "2"], [1.0, None], [1.0, True], [math.nan], [math.inf]):
        with pytest.raises(UpstreamProtocolError, match="empty or holds something other than numbers"):
            check_vector(wrong, None, None, "t")


# -- Bedrock's bodies -------------------------------------------------------------------------


def test_families_by_model_id_profile_or_arn() -> None:
    assert family("amazon.titan-embed-text-v2:0") is TITAN
    assert family("us.amazon.titan-embed-text-v2:0") is TITAN
    assert family("arn:aws:bedrock:us-east-1::foundation-model/cohere.embed-english-v3") is COHERE
    assert family("cohere.embed-multilingual-v3") is COHERE
    assert family("amazon.titan-embed-text-v1") is None  # G1: another body, not called
    assert family("deepseek.v3-v1:0") is None


def test_titan_body_one_text_with_dimensions_and_normalized() -> None:
    assert titan_request(["hi"], {"input": ["hi"], "dimensions": 512}, {}) == {
        "normalize": True,
        "inputText": "hi",
        "dimensions": 512,
    }
    assert titan_request(["hi"], {"input": ["hi"]}, {"normalize": False}) == {"normalize": False, "inputText": "hi"}
    with pytest.raises(UpstreamStatusError, match="256, 512, 1024") as caught:
        titan_request(["hi"], {"input": ["hi"], "dimensions": 300}, {})
    assert caught.value.upstream_status == 400 and not caught.value.fallback


def test_cohere_body_takes_the_callers_input_type_then_the_targets() -> None:
    texts = ["a", "b"]
    assert cohere_request(texts, {"input": texts}, {}) == {
        "truncate": "NONE",
        "texts": texts,
        "input_type": "search_document",
    }
    assert cohere_request(texts, {"input": texts}, {"input_type": "clustering"})["input_type"] == "clustering"
    body = {"input": texts, "input_type": "search_query"}
    assert cohere_request(texts, body, {"input_type": "clustering"})["input_type"] == "search_query"
    with pytest.raises(UpstreamStatusError, match="input_type"):
        cohere_request(texts, {"input": texts, "input_type": "poem"}, {})
    with pytest.raises(UpstreamStatusError, match="1024 dimensions"):
        cohere_request(texts, {"input": texts, "dimensions": 256}, {})


def test_cohere_answers_either_shape() -> None:
    floats = {"embeddings": [[1.0], [2.0]], "response_type": "embeddings_floats"}
    by_type = {"embeddings": {"float": [[1.0], [2.0]]}, "response_type": "embeddings_by_type"}
    assert COHERE.vectors(floats, "t") == ([[1.0], [2.0]], None)
    assert COHERE.vectors(by_type, "t") == ([[1.0], [2.0]], None)
    with pytest.raises(UpstreamProtocolError):
        COHERE.vectors({"embeddings": {"int8": [[1]]}}, "t")
    assert TITAN.vectors({"embedding": [0.5], "inputTextTokenCount": 4}, "t") == ([[0.5]], 4)
    assert TITAN.vectors({"embeddingsByType": {"float": [0.5]}}, "t") == ([[0.5]], None)
    # Read defensively: a negative count is none (it priced the call below $0), a list where the
    # types belong is no vector (the caller refuses it), never an AttributeError (a 500).
    assert TITAN.vectors({"embedding": [0.5], "inputTextTokenCount": -4000}, "t") == ([[0.5]], None)
    assert TITAN.vectors({"embeddingsByType": [[0.5]], "inputTextTokenCount": 4}, "t") == ([None], 4)


def test_answer_body_and_token_header() -> None:
    assert answer_body([[1.0], [2.0]], 2, "t") == {
        "data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [2.0]}]
    }
    with pytest.raises(UpstreamProtocolError):
        answer_body([[1.0]], 2, "t")
    assert header_tokens("12") == 12
    assert header_tokens(None) is None
    assert header_tokens("-3") is None


# -- properties -------------------------------------------------------------------------------

TEXT = st.text(min_size=1, max_size=40)
REQUESTS = st.fixed_dictionaries(
    {"model": st.text(min_size=1, max_size=10), "input": st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=50))},
    optional={
        "encoding_format": st.sampled_from(["float", "base64"]),
        "dimensions": st.integers(1, MAX_DIMENSIONS),
        "user": st.text(max_size=10),
        "input_type": st.sampled_from(["search_document", "search_query"]),
    },
)


@settings(max_examples=200, deadline=None)
@given(REQUESTS, st.integers(1, 20))
def test_a_request_keeps_its_meaning_on_its_way_to_every_upstream(request: dict[str, Any], batch: int) -> None:
    """Caller's body → JSON → the door's request → each upstream's bodies, batch by batch: the
    same texts in the same order, the same dimensions, user and extras; nothing dropped."""
    req = validate(orjson.loads(orjson.dumps(request)))
    texts = [request["input"]] if isinstance(request["input"], str) else request["input"]
    assert req.inputs == texts
    assert req.encoding == request.get("encoding_format", "float")
    kept = {k: v for k, v in request.items() if k not in ("model", "input", "encoding_format")}
    # OpenAI-compatible: what the provider posts, batch by batch (its own model, floats asked).
    parts = [
        {**req.body, "input": b, "model": "upstream", "encoding_format": "float"} for b in split(req.inputs, batch)
    ]
    assert [t for p in parts for t in p["input"]] == texts
    for part in parts:
        assert {k: v for k, v in part.items() if k not in ("input", "model", "encoding_format")} == kept
    # Titan: one text per call, the dimensions asked where Titan has them.
    if request.get("dimensions") in (None, 256, 512, 1024):
        titan = [titan_request(b, req.body, {}) for b in split(req.inputs, TITAN.batch)]
        assert [t["inputText"] for t in titan] == texts
        assert all(t.get("dimensions") == request.get("dimensions") for t in titan)
    # Cohere: up to 96 a call, the input type kept.
    if request.get("dimensions") in (None, 1024):
        cohere = [cohere_request(b, req.body, {}) for b in split(req.inputs, COHERE.batch)]
        assert [t for c in cohere for t in c["texts"]] == texts
        assert {c["input_type"] for c in cohere} == {request.get("input_type", "search_document")}


FLOATS = st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=64)


@given(FLOATS)
def test_base64_round_trips_float32_vectors(vector: list[float]) -> None:
    assert decode(encode(vector)) == vector
    assert len(encode(vector)) == 4 * math.ceil(len(vector) * 4 / 3)


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30), min_size=1))
def test_base64_of_doubles_is_their_float32_value(vector: list[float]) -> None:
    assert decode(encode(vector)) == array("f", vector).tolist()


@given(st.lists(FLOATS, min_size=1, max_size=20).flatmap(lambda vs: st.permutations(list(enumerate(vs)))))
def test_an_answer_in_any_order_is_put_back_in_input_order(shuffled: list[tuple[int, list[float]]]) -> None:
    body = {"data": [{"index": i, "embedding": v} for i, v in shuffled]}
    assert vectors_of(body, len(shuffled), "t") == [v for _, v in sorted(shuffled, key=lambda p: p[0])]
