"""Tool allowlists and data classification end to end: a real ``turnout serve`` in front of two
fake upstream processes, driven by the official ``openai`` SDK. An undeclared tool call blocked
in a stream and not (502 ``tool_call_blocked``, the call never reaching the client), a declared
tool outside the allowlist (400 naming it), an argument-schema violation falling back to the
next target (whole and streamed), and a PII prompt declared ``public`` kept away from the
public-only target; the SQLite ledger and ``/metrics`` record it all, never the arguments."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serving import Process, Served, sdk_client, turnout_serve

pytestmark = pytest.mark.slow

KEY = "sk-acme-tools-e2e-0123456789"
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
DELETE: Any = {"type": "function", "function": {"name": "delete_all_records", "parameters": {"type": "object"}}}
ASK: Any = [{"role": "user", "content": "What's the weather in Paris?"}]
PII = "My card 4111 1111 1111 1111 was charged twice, email me at jane.doe@example.com"


@pytest.fixture
def upstreams() -> Iterator[tuple[Process, Process]]:
    cloud = Process("tests.fakes.upstream", ready_path="/v1/models")
    onprem = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield cloud, onprem
    cloud.stop()
    onprem.stop()


def project(root: Path, cloud: Process, onprem: Process) -> Path:
    config: dict[str, Any] = {
        "store": {"flush_interval_ms": 20},
        "targets": {
            "cloud": {"provider": "openai", "base_url": cloud.url + "/v1", "model": "m", "retry": {"attempts": 1}},
            "onprem": {"provider": "openai", "base_url": onprem.url + "/v1", "model": "m", "retry": {"attempts": 1}},
        },
        "policy": {
            "public": {"targets": ["cloud"]},
            "internal": {"targets": ["cloud", "onprem"]},
            "confidential": {"targets": ["onprem"]},
        },
        "tenants": {"acme": {"keys": [KEY], "data_classes": ["public", "internal", "confidential"]}},
        "tasks": {
            "agent": {"route": ["cloud"], "tools": {"allow": ["get_weather"]}},
            "agent_fb": {"route": ["cloud", "onprem"], "tools": {"allow": ["get_weather"], "on_violation": "fallback"}},
            "support": {"route": ["cloud", "onprem"], "classify": {"detect": ["pii", "secrets"]}},
        },
    }
    (root / "turnout.yaml").write_text(json.dumps(config))
    return root / "turnout.yaml"


def row_of(root: Path, request_id: str, within_s: float = 5.0) -> dict[str, Any]:
    end = time.monotonic() + within_s
    while True:
        with sqlite3.connect(root / ".turnout" / "turnout.db") as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < end, f"no ledger row for {request_id}"
        time.sleep(0.05)


def calls(proc: Process) -> list[Any]:
    return [r for r in proc.requests() if r["path"].endswith("/chat/completions")]


def test_tool_allowlists_and_classification_through_turnout_serve(
    tmp_path: Path, upstreams: tuple[Process, Process]
) -> None:
    cloud, onprem = upstreams
    with turnout_serve(tmp_path, project(tmp_path, cloud, onprem)) as served:
        _undeclared_call_blocked(served, cloud, tmp_path)
        _declared_tool_refused(served)
        _bad_arguments_fall_back(served, cloud, onprem, tmp_path)
        _pii_kept_from_the_public_target(served, cloud, onprem, tmp_path)
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        assert 'turnout_tool_violations_total{reason="not_allowed",task="agent",tool="other"}' in metrics
        assert 'turnout_tool_violations_total{reason="invalid_arguments",task="agent_fb",tool="get_weather"}' in metrics
        assert 'turnout_data_class_raised_total{declared="public",effective="confidential",task="support"}' in metrics
    log = (tmp_path / "turnout.log").read_text()
    assert "delete everything" not in log and "jane.doe" not in log  # neither arguments nor PII logged


def _undeclared_call_blocked(served: Served, cloud: Process, root: Path) -> None:
    cloud.post(
        "/_reply",
        {"tool_calls": [{"id": "c1", "name": "delete_all_records", "arguments": '{"why": "delete everything"}'}]},
    )
    client = sdk_client(served.base_url, KEY)
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER])
    err = caught.value
    assert err.status_code == 502 and err.code == "tool_call_blocked"
    assert "delete_all_records" in err.message and "delete everything" not in err.response.text
    row = row_of(root, err.response.headers["x-turnout-request-id"])
    assert (row["status"], row["error_class"], row["tool_violations"]) == (
        502,
        "tool_call_blocked",
        "delete_all_records:not_allowed",
    )
    # Streamed: the tool call is held back until it is whole, so it is blocked before the first byte.
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER], stream=True)
    assert caught.value.code == "tool_call_blocked" and "delete everything" not in caught.value.response.text
    row = row_of(root, caught.value.response.headers["x-turnout-request-id"])
    assert row["stream"] and row["tool_violations"] == "delete_all_records:not_allowed"
    assert len(calls(cloud)) == 2  # asked, answered, blocked at the gateway


def _declared_tool_refused(served: Served) -> None:
    client = sdk_client(served.base_url, KEY)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER, DELETE])
    assert caught.value.code == "tool_not_allowed"
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "tools[1]" and "delete_all_records" in body["message"]


def _bad_arguments_fall_back(served: Served, cloud: Process, onprem: Process, root: Path) -> None:
    cloud.post(
        "/_reply", {"tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris", "then": "rm"}'}]}
    )
    onprem.post("/_reply", {"tool_calls": [{"id": "c2", "name": "get_weather", "arguments": '{"city": "Paris"}'}]})
    client = sdk_client(served.base_url, KEY)
    raw = client.chat.completions.with_raw_response.create(model="agent_fb", messages=ASK, tools=[WEATHER])
    assert raw.headers["x-turnout-target"] == "onprem" and raw.headers["x-turnout-fallback"] == "true"
    [call] = raw.parse().choices[0].message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    row = row_of(root, raw.headers["x-turnout-request-id"])
    assert row["status"] == 200 and row["tool_violations"] == "get_weather:invalid_arguments"
    assert [a["error_class"] for a in json.loads(row["attempts"])] == ["tool_call_blocked", None]
    # Streamed, the SDK puts the released call together as it would any other.
    stream = client.chat.completions.create(model="agent_fb", messages=ASK, tools=[WEATHER], stream=True)
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                name += (delta.function and delta.function.name) or ""
                arguments += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def _pii_kept_from_the_public_target(served: Served, cloud: Process, onprem: Process, root: Path) -> None:
    client = sdk_client(served.base_url, KEY)
    public = {"X-Turnout-Data-Class": "public"}
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": PII}], extra_headers=public
    )
    assert raw.headers["x-turnout-target"] == "onprem" and raw.parse().choices[0].message.content
    row = row_of(root, raw.headers["x-turnout-request-id"])
    assert (row["declared_class"], row["data_class"]) == ("public", "confidential")
    assert "jane.doe" not in json.dumps(calls(cloud))  # the public-only target never saw it
    assert "jane.doe" in json.dumps(calls(onprem))
    # A clean public request still goes to the public target.
    raw = client.chat.completions.with_raw_response.create(
        model="support", messages=[{"role": "user", "content": "What are your opening hours?"}], extra_headers=public
    )
    assert raw.headers["x-turnout-target"] == "cloud"
    row = row_of(root, raw.headers["x-turnout-request-id"])
    assert (row["declared_class"], row["data_class"]) == ("public", "public")
