"""Two upstreams that say the same thing — the Bedrock wire-protocol fake (signatures checked)
and the OpenAI-compatible fake — behind one ``turnout serve`` with a task routed to each
(``via-bedrock``, ``via-openai``): what the translating doors' end-to-end tests
(``test_e2e_messages``, ``test_e2e_responses``) compare answers across."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.fakes.bedrock import ACCESS_KEY, SECRET_KEY
from tests.serving import Process, Served, turnout_serve

TOOL_USE = {"name": "get_weather", "input": {"city": "Paris"}, "tool_use_id": "call_1"}


@contextmanager
def fakes() -> Iterator[dict[str, Process]]:
    procs = {
        "bedrock": Process("tests.fakes.bedrock", "--verify-signature"),
        "openai": Process("tests.fakes.upstream", ready_path="/v1/models"),
    }
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@contextmanager
def served(fakes: dict[str, Process], cwd: Path) -> Iterator[Served]:
    config = {
        "targets": {
            "bedrock": {
                "provider": "bedrock",
                "region": "us-east-1",
                "model": "deepseek.v3-v1:0",
                "endpoint_url": fakes["bedrock"].url,
                "retry": {"attempts": 1},
            },
            "selfhosted": {
                "provider": "openai",
                "base_url": fakes["openai"].url + "/v1",
                "model": "qwen",
                "continue_final_message": True,  # a vLLM: a prefill is continued
            },
        },
        "tasks": {"via-bedrock": {"route": ["bedrock"]}, "via-openai": {"route": ["selfhosted"]}},
    }
    with serve(cwd, config) as s:
        yield s


@contextmanager
def serve(cwd: Path, config: dict[str, Any]) -> Iterator[Served]:
    """``turnout serve`` over ``config`` (written to ``cwd/turnout.yaml``), signing Bedrock calls
    with the fake's credentials and reading nothing from the machine's AWS files."""
    path = cwd / "turnout.yaml"
    path.write_text(json.dumps(config))
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_BEARER_TOKEN_BEDROCK": "",
    }
    with turnout_serve(cwd, path, env=env) as s:
        yield s


def say(fakes: dict[str, Process], text: list[str], calls: bool) -> None:
    """Both servers say the same: the same text, the same call, the same token counts."""
    reply: dict[str, Any] = {"text": text, "input_tokens": 12, "output_tokens": 3}
    chat: dict[str, Any] = {"text": text, "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
    if calls:
        reply["tool_uses"] = [TOOL_USE]
        chat["tool_calls"] = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]
    fakes["bedrock"].post("/_fault", {"mode": "ok", "reply": reply})
    fakes["openai"].post("/_reply", chat)
    fakes["openai"].post("/_fault", {"mode": "ok"})
