"""`turnout eval` end to end on the embedded SmolLM2: two releases of a question-answering task
run through the real request path on a small golden set; a release that keeps the answers whole
passes its gates (exit 0, marked evaluated), one that cuts them short fails (exit 1)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("capital", "What is the capital of France?", {"value": "Paris"}),
    ("legs", "How many legs does a dog have?", {"any": ["four", "4"]}),
    ("sum", "What is 2 plus 2?", {"value": "4"}),
    ("opposite", "What is the opposite of hot?", {"value": "cold"}),
    ("sky", "What color is the sky on a clear day?", {"value": "blue"}),
    ("bees", "What do bees make?", {"value": "honey", "ignore_case": True}),
]


def release(max_tokens: int) -> str:
    return (
        "target: local\n"
        "model_version: SmolLM2-135M-Instruct.Q4_1\n"
        "tokenizer: HuggingFaceTB/SmolLM2-135M-Instruct\n"
        "prompt:\n"
        "  system: Answer in one short sentence.\n"
        '  user: "{{ question }}"\n'
        "  variables: {question: str}\n"
        f"params: {{temperature: 0, max_tokens: {max_tokens}}}\n"
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    (root / "turnout.yaml").write_text(
        "targets:\n  local: {provider: local}\n"
        "tasks:\n  qa:\n    route: [local]\n    gates: {min_pass_rate: 0.8, max_regression: 0.1}\n"
    )
    (root / "releases" / "qa").mkdir(parents=True)
    (root / "releases" / "qa" / "v1.yaml").write_text(release(32))
    (root / "releases" / "qa" / "v2-terse.yaml").write_text(release(3))  # cut off mid-sentence
    (root / "evals").mkdir()
    lines = [
        json.dumps(
            {"id": cid, "variables": {"question": q}, "expect": [{"scorer": "contains", **args}], "tags": ["qa"]}
        )
        for cid, q, args in CASES
    ]
    (root / "evals" / "qa.jsonl").write_text("\n".join(lines) + "\n")
    return root


def turnout(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", *args, "--config", "turnout.yaml"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_release_that_passes_its_gates_exits_0_and_is_marked_evaluated(project: Path) -> None:
    done = turnout(project, "eval", "qa", "--candidate", "v1", "--by", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "v1" in done.stdout and "min_pass_rate" in done.stdout
    reports = sorted((project / ".turnout" / "evals").glob("qa-v1-*"))
    assert {p.suffix for p in reports} == {".json", ".html"}
    report = json.loads(next(p for p in reports if p.suffix == ".json").read_text())
    assert "v1" in json.dumps(report)
    listed = turnout(project, "release", "list", "qa")
    assert listed.returncode == 0 and "evaluated" in listed.stdout
    # Seen: the active release evaluated again printed PASS, then exited 1 ("only a registered or
    # retired release can be marked evaluated"). It passes and stays active.
    promoted = turnout(project, "release", "promote", "qa", "v1", "--by", "ci", "--why", "passed")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    again = turnout(project, "eval", "qa", "--candidate", "v1", "--by", "ci")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "v1 is active already" in again.stdout


def test_a_candidate_that_regresses_fails_its_gates_and_exits_1(project: Path) -> None:
    done = turnout(project, "eval", "qa", "--candidate", "v2-terse", "--baseline", "v1", "--by", "ci")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout
    assert "min_pass_rate" in done.stdout or "max_regression" in done.stdout


def test_with_tenants_configured_eval_runs_as_an_internal_identity_or_a_named_tenant(
    project: Path, tmp_path: Path
) -> None:
    """No key to send: `turnout eval` is the internal `turnout-eval` identity by default (no
    HTTP client can be it), or the tenant `--tenant` names, whose rules then apply."""
    secured = tmp_path / "secured"
    secured.mkdir()
    for part in ("releases", "evals"):
        subprocess.run(["cp", "-r", str(project / part), str(secured)], check=True)
    (secured / "turnout.yaml").write_text(
        (project / "turnout.yaml").read_text()
        + "tenants:\n  acme: {keys: [sk-acme-0123456789]}\n  other: {keys: [sk-other-0123456789], tasks: []}\n"
    )
    internal = turnout(secured, "eval", "qa", "--candidate", "v1", "--by", "ci", "--no-mark")
    assert internal.returncode == 0, internal.stdout + internal.stderr
    named = turnout(secured, "eval", "qa", "--candidate", "v1", "--by", "ci", "--no-mark", "--tenant", "acme")
    assert named.returncode == 0, named.stdout + named.stderr
    shut_out = turnout(secured, "eval", "qa", "--candidate", "v1", "--by", "ci", "--no-mark", "--tenant", "other")
    assert shut_out.returncode == 1  # the tenant may not use the task: every case fails, a gate fails
    unknown = turnout(secured, "eval", "qa", "--candidate", "v1", "--by", "ci", "--tenant", "nobody")
    assert unknown.returncode == 1 and "no tenant 'nobody'" in unknown.stderr
    ledger = sqlite3.connect(secured / ".turnout" / "turnout.db")
    tenants = ledger.execute("SELECT DISTINCT tenant, evaluation FROM requests")
    # Every eval row is marked, whichever tenant ran it: canaries never judge golden cases.
    assert set(tenants) == {("turnout-eval", 1), ("acme", 1), ("other", 1)}
