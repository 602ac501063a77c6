"""A real ``turnout serve`` with ``server.log_format: json`` and the access log on: its stderr is
JSON lines from start to finish (uvicorn's own lines too), opening with the start-up summary,
with one access line per request and a warning for a fallback; neither the prompt nor a key
appears anywhere in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.serving import Process, sdk_client, turnout_serve

SENTINEL = "SENTINEL-e2e-9c41-prompt-text"
API_KEY = "sk-proj-E2eSecretKey0123456789abcdefXYZ"
PG_LIKE_PASSWORD = "url-pass-5f2e"


def test_serve_writes_json_lines_with_the_summary_access_lines_and_warnings(tmp_path: Path) -> None:
    upstream = Process("tests.fakes.upstream")
    try:
        config = {
            "server": {"log_format": "json", "access_log": True},
            "store": {"kind": "sqlite", "path": str(tmp_path / "ledger.db")},
            "targets": {
                "down": {
                    "provider": "openai",
                    "base_url": f"http://user:{PG_LIKE_PASSWORD}@127.0.0.1:9/v1",  # refuses connections
                    "model": "m",
                    "retry": {"attempts": 1},
                },
                "up": {"provider": "openai", "base_url": upstream.url + "/v1", "model": "m", "api_key": API_KEY},
            },
            "tasks": {"chat": {"route": ["down", "up"]}},
        }
        path = tmp_path / "turnout.yaml"
        path.write_text(yaml.safe_dump(config))
        with turnout_serve(tmp_path, path) as served:
            client = sdk_client(served.base_url, "anonymous")
            answer = client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": SENTINEL}]
            )
            request_id = answer.headers["x-turnout-request-id"]
            assert served.stop() in (0, -15)  # uvicorn re-raises SIGTERM once it has shut down
        text = served.log.read_text()
    finally:
        upstream.stop()

    lines: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    messages = [line["message"] for line in lines]

    [started] = [line for line in lines if line["message"].startswith("turnout started")]
    assert f"config {path}" in started["message"] and started["config"] == str(path)
    assert started["address"] == f"http://127.0.0.1:{served.port}"
    assert "tasks: chat → down, up" in messages
    assert "targets: down (openai, 1 replica), up (openai, 1 replica)" in messages
    assert any(m.startswith("stores: ledger sqlite ") for m in messages)
    assert messages.index(started["message"]) < next(i for i, m in enumerate(messages) if "Uvicorn running" in m)

    [access] = [line for line in lines if line["logger"] == "turnout.access"]
    assert access["level"] == "INFO"
    assert {k: access[k] for k in ("request_id", "task", "tenant", "target", "status")} == {
        "request_id": request_id,
        "task": "chat",
        "tenant": "anonymous",
        "target": "up",
        "status": 200,
    }
    assert access["latency_ms"] >= 0

    [fallback] = [line for line in lines if line["logger"] == "turnout.requests"]
    assert fallback["level"] == "WARNING"
    assert (fallback["from_target"], fallback["to_target"], fallback["error_class"]) == ("down", "up", "connect")

    # The last words of a SIGTERM shutdown are written before uvicorn re-raises the signal.
    assert any(m.startswith("Finished server process") for m in messages[-3:])

    for secret in (SENTINEL, API_KEY, PG_LIKE_PASSWORD):
        assert secret not in text
