"""Output checks end to end: a real ``turnout serve`` in front of two fake upstream processes,
driven by the official ``openai`` SDK. A repair that succeeds on the second attempt (whole and
streamed), an escalation to a stronger target, an escalation to a person that a reviewer answers
through ``/admin/review`` and the caller then fetches (another tenant gets 404), a leaked AWS
key refused; the SQLite ledger and ``turnout report cost`` show the repairs, the escalations
and their cost, never the text."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from tests.serving import Process, Served, sdk_client, turnout_serve

pytestmark = pytest.mark.slow

KEY = "sk-acme-output-e2e-0123456789"
OTHER = "sk-globex-output-e2e-0123456789"
ADMIN = "admin-output-e2e-0123456789"
SCHEMA = {"type": "object", "required": ["order_id"], "properties": {"order_id": {"type": "string"}}}
GOOD = '{"order_id": "A-17"}'
BAD = '{"order": 17}'
AWS_KEY = "AKIAZ3MHQ4PLXK2VBN7R"
ASK: Any = [{"role": "user", "content": "Extract the order from: order A-17"}]


@pytest.fixture
def upstreams() -> Iterator[tuple[Process, Process]]:
    small = Process("tests.fakes.upstream", ready_path="/v1/models")
    strong = Process("tests.fakes.upstream", ready_path="/v1/models")
    yield small, strong
    small.stop()
    strong.stop()


def project(root: Path, small: Process, strong: Process) -> Path:
    price = {"input_per_mtok": 3.0, "output_per_mtok": 15.0}
    target = {"provider": "openai", "model": "m", "retry": {"attempts": 1}, "price": price}
    output = {"schema": SCHEMA, "repair_attempts": 1}
    config: dict[str, Any] = {
        "server": {"admin_key": ADMIN},
        "store": {"flush_interval_ms": 20},
        "targets": {
            "small": {**target, "base_url": small.url + "/v1"},
            "strong": {**target, "base_url": strong.url + "/v1"},
        },
        "tenants": {"acme": {"keys": [KEY]}, "globex": {"keys": [OTHER]}},
        "tasks": {
            "extract": {"route": ["small"], "output": output},
            "upgrade": {"route": ["small"], "output": {**output, "escalate": {"to": "strong"}}},
            "person": {"route": ["small"], "output": {**output, "escalate": {"to": "human"}}},
            "safe": {"route": ["small"], "output": {"must_not_contain": ["secrets"]}},
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


def http(served: Served, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    req = urllib.request.Request(f"http://127.0.0.1:{served.port}{path}", data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback test URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_output_checks_through_turnout_serve(tmp_path: Path, upstreams: tuple[Process, Process]) -> None:
    small, strong = upstreams
    strong.post("/_reply", {"text": [GOOD]})
    with turnout_serve(tmp_path, project(tmp_path, small, strong)) as served:
        repaired = _repair_succeeds_on_the_second_attempt(served, small, tmp_path)
        escalated = _escalates_to_the_stronger_target(served, small, tmp_path)
        _escalates_to_a_person_who_answers(served, small, tmp_path)
        _other_doors_and_streams_get_an_error_naming_the_ticket(served, small)
        _a_leaked_key_is_refused(served, small, tmp_path)
        _the_cost_report_shows_repairs_and_escalations(tmp_path, repaired + escalated)
    log = (tmp_path / "turnout.log").read_text()
    assert AWS_KEY not in log and BAD not in log  # no answer text in the logs


def _repair_succeeds_on_the_second_attempt(served: Served, small: Process, root: Path) -> float:
    small.post("/_reply", {"text": [BAD], "queue": [[BAD], [GOOD]]})
    client = sdk_client(served.base_url, KEY)
    raw = client.chat.completions.with_raw_response.create(model="extract", messages=ASK)
    answer = raw.parse()
    assert json.loads(answer.choices[0].message.content or "") == {"order_id": "A-17"}
    assert raw.headers["x-turnout-attempts"] == "2"
    row = row_of(root, raw.headers["x-turnout-request-id"])
    attempts = json.loads(row["attempts"])
    assert [a["error_class"] for a in attempts] == ["output_invalid", None]
    assert all(a["cost_usd"] > 0 for a in attempts)
    assert row["cost_usd"] == pytest.approx(sum(a["cost_usd"] for a in attempts))
    assert (row["repairs"], row["output_check"], row["escalated_to"]) == (1, "schema", None)
    # Streamed: generated whole, checked, repaired, then relayed as events.
    small.post("/_reply", {"text": [BAD], "queue": [[BAD], [GOOD]]})
    stream = client.chat.completions.create(model="extract", messages=ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == GOOD
    cost: float = row["cost_usd"]
    return cost


def _escalates_to_the_stronger_target(served: Served, small: Process, root: Path) -> float:
    small.post("/_reply", {"text": [BAD]})
    raw = sdk_client(served.base_url, KEY).chat.completions.with_raw_response.create(model="upgrade", messages=ASK)
    assert raw.parse().choices[0].message.content == GOOD
    assert raw.headers["x-turnout-target"] == "strong"
    row = row_of(root, raw.headers["x-turnout-request-id"])
    assert (row["escalated_to"], row["escalated"], row["repairs"], row["target"]) == ("strong", 1, 1, "strong")
    assert [a["target"] for a in json.loads(row["attempts"])] == ["small", "small", "strong"]
    cost: float = row["cost_usd"]
    return cost


def _escalates_to_a_person_who_answers(served: Served, small: Process, root: Path) -> None:
    small.post("/_reply", {"text": [BAD]})
    raw = sdk_client(served.base_url, KEY).chat.completions.with_raw_response.create(model="person", messages=ASK)
    assert raw.status_code == 202
    ticket = raw.http_response.json()
    assert ticket["status"] == "pending" and raw.headers["location"] == ticket["url"]
    assert http(served, "GET", ticket["url"], OTHER)[0] == 404  # another tenant's: as unknown

    status, listed = http(served, "GET", "/admin/review?task=person", ADMIN)
    assert status == 200
    [item] = [i for i in listed["data"] if i["request_id"] == ticket["id"]]
    assert item["reason"] == "escalated" and "Extract the order" in item["text"]
    status, _ = http(
        served, "POST", f"/admin/review/{item['id']}", ADMIN, {"label": "accept", "by": "rev", "answer": GOOD}
    )
    assert status == 200

    status, fetched = http(served, "GET", ticket["url"], KEY)
    assert (status, fetched["status"], fetched["answer"]) == (200, "answered", GOOD)
    row = row_of(root, ticket["id"])
    assert (row["status"], row["escalated_to"], row["human_review"]) == (202, "human", 1)


def _other_doors_and_streams_get_an_error_naming_the_ticket(served: Served, small: Process) -> None:
    """A stream's SDK reads events and the Messages and Responses SDKs their own shapes: a 202
    ticket body was an empty stream or an unreadable object. Each gets an error naming the
    ticket instead, which the SDKs (left to retry as they do by default) do not retry: one
    ticket per call."""
    small.post("/_reply", {"text": [BAD]})
    root = served.base_url.removesuffix("/v1")
    client = openai.OpenAI(base_url=served.base_url, api_key=KEY)  # default retries
    claude = anthropic.Anthropic(base_url=root, api_key=KEY)
    calls: list[Callable[[], object]] = [
        lambda: list(client.chat.completions.create(model="person", messages=ASK, stream=True)),
        lambda: client.responses.create(model="person", input="Extract the order from: order A-17"),
        lambda: claude.messages.create(model="person", max_tokens=64, messages=ASK),
        lambda: list(claude.messages.create(model="person", max_tokens=64, messages=ASK, stream=True)),
    ]
    for call in calls:
        before = len(tickets(served))
        with pytest.raises((openai.APIStatusError, anthropic.APIStatusError)) as caught:
            call()
        err: Any = caught.value
        url = err.response.headers["location"]
        assert err.status_code == 502 and url in str(err.body) and url.startswith("/v1/tasks/person/tickets/")
        assert "went to a person" in err.response.text
        assert "escalated_to_human" in err.response.text or err.response.json()["type"] == "error"  # Anthropic's shape
        assert len(tickets(served)) == before + 1  # not retried: one ticket
        assert http(served, "GET", url, KEY)[1]["status"] == "pending"
    client.close()
    claude.close()


def tickets(served: Served) -> list[Any]:
    status, listed = http(served, "GET", "/admin/review?task=person&status=all", ADMIN)
    assert status == 200
    return [i for i in listed["data"] if i["reason"] == "escalated"]


def _a_leaked_key_is_refused(served: Served, small: Process, root: Path) -> None:
    small.post("/_reply", {"text": [f"Log in with {AWS_KEY} as the key id."]})
    with pytest.raises(openai.InternalServerError) as caught:
        sdk_client(served.base_url, KEY).chat.completions.create(model="safe", messages=ASK)
    err = caught.value
    assert err.status_code == 502 and err.code == "output_invalid"
    assert "AWS access key" in err.message and AWS_KEY not in err.response.text
    row = row_of(root, err.response.headers["x-turnout-request-id"])
    assert row["output_check"] == "secrets"


def _the_cost_report_shows_repairs_and_escalations(root: Path, escalated_floor: float) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "report", "cost", "--by", "task", "--format", "json", "-c", "turnout.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rows = {r["task"]: r for r in report["rows"]}
    assert rows["extract"]["repairs"] == 2 and rows["extract"]["escalated"] == 0
    assert rows["upgrade"]["escalated"] == 1 and rows["person"]["escalated"] == 5  # a ticket, four errors naming one
    assert rows["upgrade"]["escalated_spend_usd"] > 0 and rows["person"]["escalated_spend_usd"] > 0
    total = report["total"]  # the whole window, apart from the groups
    assert total["escalated"] == 6 and total["spend_usd"] >= escalated_floor
