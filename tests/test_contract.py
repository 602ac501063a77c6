"""The published contract (``GET /openapi.json``) holds against a real ``turnout serve``:
schemathesis generates valid and invalid requests for every operation (schema examples, boundary
values, then random data, a bounded number of each, derandomized so a run is repeatable), and a
stateful run follows the description's links (a created key is revoked). Every answer must be
below 500, declared for its operation (status, content type, body schema), and every 4xx must be
OpenAI's error shape naming the ``param`` at fault."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from openapi_spec_validator import validate
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hostile import CHAT_TASK, EMBED_TASK, TASK, Gateway, error_shape_problem, hostile_gateway, report
from turnout._support.printable import printable
from turnout.serving import openapi

pytestmark = pytest.mark.slow

Case = schemathesis.Case[Any]

EXAMPLES = 50  # per operation and phase: the whole run stays within a couple of minutes on 2 cores
STATEFUL_STEPS = 8
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {
            "max-examples": EXAMPLES,
            "deterministic": True,
            "database": "none",
            "with-security-parameters": False,
        },
        # The described links only, followed as described: links inferred from responses, or
        # calibrated by them, make what is drawn depend on the server's state, which Hypothesis
        # rightly calls flaky.
        "phases": {
            "stateful": {"max-steps": STATEFUL_STEPS, "inference": {"algorithms": []}, "link-calibration": False}
        },
    }
)
SCHEMA = schemathesis.openapi.from_dict(openapi.document(), config=CONFIG)

TRIED: Counter[str] = Counter()  # requests sent, per operation
SERVER_ERRORS: list[str] = []


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Gateway]:
    with hostile_gateway(tmp_path_factory.mktemp("contract")) as gw:
        yield gw
    total = sum(TRIED.values())
    report(request, f"schemathesis: {total} requests over {len(TRIED)} operations, {len(SERVER_ERRORS)} 5xx")


def openai_errors(ctx: CheckContext, response: Any, case: Case) -> bool | None:
    """Every 4xx/5xx is OpenAI's error shape; a 400 about a field names it, and the field exists
    in the operation (a body property, a header or a query parameter)."""
    if response.status_code < 400:
        return None
    body = orjson.loads(response.content)
    if case.operation.path.startswith("/v1/messages"):  # Anthropic's shape there, a wrong method's too
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), body
        return True
    problem = error_shape_problem(response.status_code, body)
    assert problem is None, problem
    param = body["error"]["param"]
    if response.status_code == 400 and param is not None:
        root = re.split(r"[.\[]", param, maxsplit=1)[0]
        # an unknown field or query parameter is named too, as sent (its name may hold "." or
        # "["); headers: any case
        sent = set(case.body) if isinstance(case.body, dict) else set()
        sent |= {printable(str(name)) for name in case.query or ()}
        named = param in sent or root in sent or root in _declared(case) or root.lower() in _declared(case)
        assert named, f"param {param!r} names nothing of {case.operation.label}"
    return True


def _declared(case: Case) -> set[str]:
    names = {p.name.lower() for p in case.operation.iter_parameters()}
    body = case.operation.definition.raw.get("requestBody")
    if body is not None:
        ref = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        names |= set(openapi.document()["components"]["schemas"][ref]["properties"])
    return names


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    openai_errors,
]


def _aim(case: Case) -> None:
    """Valid bodies name a real task (and the task path a task with a release) often enough to
    go all the way through the pipeline; random names stop at 404."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    texts = ("/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses")
    if case.operation.path in texts and isinstance(case.body, dict):
        case.body["model"] = CHAT_TASK
    elif case.operation.path == "/v1/embeddings" and isinstance(case.body, dict):
        case.body["model"] = EMBED_TASK
        dimensions = case.body.get("dimensions")
        if isinstance(dimensions, int):  # small vectors: the fake sends as many as asked
            case.body["dimensions"] = min(dimensions, 16)
    elif case.operation.path == "/v1/tasks/{task}":
        case.path_parameters = {**(case.path_parameters or {}), "task": TASK}


def _call(gw: Gateway, case: Case) -> Any:
    TRIED[case.operation.label] += 1
    response = case.call(base_url=gw.url, headers=gw.headers_for(case.path))
    if response.status_code >= 500:
        SERVER_ERRORS.append(f"{case.operation.label}: {response.status_code} {response.content[:200]!r}")
    return response


@SCHEMA.parametrize()
def test_every_operation_answers_as_described(case: Case, gateway: Gateway) -> None:
    _aim(case)
    response = _call(gateway, case)
    case.validate_response(response, checks=CHECKS)


def test_stateful_links_hold(gateway: Gateway) -> None:
    class Workflow(SCHEMA.as_state_machine()):  # type: ignore[misc]
        def call(self, case: Case, **kwargs: Any) -> Any:
            _aim(case)
            return _call(gateway, case)

        def validate_response(self, response: Any, case: Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    Workflow.run(settings=CONFIG.projects.default.get_hypothesis_settings(phase="stateful"))


def test_the_served_description_is_openapi_3_1(gateway: Gateway) -> None:
    with urllib.request.urlopen(gateway.url + "/openapi.json", timeout=5) as resp:  # noqa: S310 - loopback
        assert resp.headers["content-type"] == "application/json"
        served = orjson.loads(resp.read())
    validate(served)  # raises on anything OpenAPI 3.1 does not allow
    assert served["openapi"] == "3.1.0"
    assert served == openapi.document()


def test_every_route_is_described() -> None:
    """A route added to the route tables (app.py, admin.py) without a description fails here."""
    serving = Path(openapi.__file__).parent
    source = (serving / "app.py").read_text() + (serving / "admin.py").read_text()
    described = set(openapi.document()["paths"])
    pages = ("/admin", "/ui", "/ui/")  # /admin alone is no operation; /ui is the console's HTML, not the API
    for route in re.findall(r'path == "(/[^"]*)"', source):
        assert route in described or route in pages, f"{route} is served but not described"
    for prefix in re.findall(r'path\.startswith\("(/[^"]*)"\)', source):
        if prefix not in pages:
            assert any(p.startswith(prefix) and p != prefix for p in described), f"{prefix}… is not described"
