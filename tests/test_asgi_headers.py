"""Request headers as the request path reads them (``turnout.serving.asgi.header``): mapped once
a request, the first of a repeated header winning, whatever sequence the server hands over."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.serving.asgi import HEADERS, header


def scope_with(headers: Any) -> dict[str, Any]:
    return {"type": "http", "headers": headers}


@pytest.mark.parametrize(
    "headers",
    [
        [(b"authorization", b"Bearer first"), (b"x-a", b"1"), (b"authorization", b"Bearer second")],
        ((b"authorization", b"Bearer first"), (b"x-a", b"1"), (b"authorization", b"Bearer second")),
        [[b"authorization", b"Bearer first"], [b"x-a", b"1"], [b"authorization", b"Bearer second"]],
    ],
    ids=["list of tuples", "tuple of tuples", "list of lists"],
)
def test_the_first_of_a_repeated_header_wins(headers: Any) -> None:
    scope = scope_with(headers)
    assert header(scope, b"authorization") == b"Bearer first"
    assert header(scope, b"x-a") == b"1"
    assert header(scope, b"x-missing") is None


def test_an_iterable_that_is_not_a_sequence_is_read_once() -> None:
    scope = scope_with(iter([(b"x-turnout-user", b"u1"), (b"x-turnout-user", b"u2")]))
    assert header(scope, b"x-turnout-user") == b"u1"
    assert header(scope, b"x-turnout-user") == b"u1"  # from the map: the iterator is spent


def test_the_headers_are_mapped_once_a_request() -> None:
    scope = scope_with([(b"content-length", b"12")])
    assert header(scope, b"content-length") == b"12"
    mapped = scope[HEADERS]
    scope["headers"] = [(b"content-length", b"99")]  # not read again
    assert header(scope, b"content-length") == b"12" and scope[HEADERS] is mapped


def test_a_bytearray_value_comes_back_as_bytes() -> None:
    value = header(scope_with([(b"x-a", bytearray(b"v"))]), b"x-a")
    assert value == b"v" and type(value) is bytes
