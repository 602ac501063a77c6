"""The supervisor's side of a reload with ``--workers`` (``serving/rounds.py``), against workers
that are only their pipes' messages: the file is read once and validated before any worker
hears of it, then every serving worker swaps the same plan in, or none does."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from turnout.cli.serve import Reloader
from turnout.config import load_config
from turnout.serving import rounds
from turnout.serving.reload import Plan
from turnout.serving.rounds import Conductor


def config(*tasks: str) -> dict[str, Any]:
    return {
        "store": {"kind": "memory"},
        "targets": {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}},
        "tasks": {name: {"route": ["up"]} for name in ("chat", *tasks)},
    }


class Fleet:
    """The supervisor as a round sees it: who serves, what each was sent, who was restarted."""

    def __init__(self, *serving: int) -> None:
        self.pids = {slot: 1000 + slot for slot in serving}
        self.sent: list[tuple[int, tuple[Any, ...]]] = []
        self.restarted: list[int] = []

    def serving(self) -> dict[int, int]:
        return dict(self.pids)

    def send(self, slot: int, message: tuple[Any, ...]) -> bool:
        self.sent.append((slot, message))
        return slot in self.pids or message[0] == "answer"

    def restart(self, slot: int) -> None:
        self.restarted.append(slot)

    def kinds(self) -> list[tuple[int, str]]:
        out = [(slot, m[0]) for slot, m in self.sent]
        self.sent.clear()
        return out


@pytest.fixture
def path(tmp_path: Path) -> Path:
    where = tmp_path / "turnout.yaml"
    where.write_text(json.dumps(config()))
    return where


def conductor_at(path: Path, *serving: int) -> tuple[Conductor, Fleet]:
    """A conductor of the workers in ``serving``, started on the file at ``path``."""
    fleet = Fleet(*serving)
    conductor = Conductor(load_config(path), Reloader(str(path), None, None), str(path))
    for slot in serving:
        conductor.started(slot)
        conductor.up(slot, fleet)
    return conductor, fleet


def prepare_all(conductor: Conductor, fleet: Fleet) -> Plan:
    plans = [m[2] for _, m in fleet.sent if m[0] == "prepare"]
    assert len(plans) == len(fleet.pids) and all(p is plans[0] for p in plans)  # one plan, one reading
    fleet.sent.clear()
    for slot in fleet.pids:
        conductor.heard(slot, ("prepared", 1, []), fleet)
    plan: Plan = plans[0]
    return plan


def test_every_worker_swaps_in_the_one_plan_and_the_asker_hears_it_last(path: Path) -> None:
    conductor, fleet = conductor_at(path, 0, 1)
    path.write_text(json.dumps(config("summarize")))
    conductor.ask((1, 7), fleet)
    plan = prepare_all(conductor, fleet)
    assert list(plan.config.tasks) == ["chat", "summarize"]
    assert fleet.kinds() == [(0, "commit"), (1, "commit")]
    assert conductor.config is plan.config  # a worker started now gets it
    conductor.heard(0, ("committed", 1, {"changed": ["tasks"]}), fleet)
    assert fleet.sent == []  # worker 1 has not swapped yet: the asker waits
    conductor.heard(1, ("committed", 1, {"changed": ["tasks"]}), fleet)
    assert fleet.sent == [
        (1, ("answer", 7, True, {"reloaded": True, "changed": ["tasks"], "restart_needed": [], "workers": 2}))
    ]


def test_an_invalid_file_reaches_no_worker_and_is_one_line(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conductor, fleet = conductor_at(path, 0, 1)
    running = conductor.config
    path.write_text("tasks: {chat: {route: [nowhere]}}\n")
    with caplog.at_level(logging.ERROR, "turnout"):
        conductor.ask((0, 3), fleet)
    [(slot, answer)] = fleet.sent
    assert slot == 0 and answer[:3] == ("answer", 3, False)
    assert "tasks.chat.route[0]: unknown target 'nowhere'" in answer[3]
    assert conductor.config is running and conductor.round is None
    [line] = caplog.messages
    assert line.startswith("config reload refused, the running config is kept on every worker: ")


def test_one_worker_that_cannot_build_it_keeps_every_worker_on_the_running_config(path: Path) -> None:
    """A store the new config opens is down for one worker: the one that had built it closes
    it again, and nobody swaps (before, the fleet served two configs)."""
    conductor, fleet = conductor_at(path, 0, 1)
    running = conductor.config
    path.write_text(json.dumps(config("summarize")))
    conductor.ask(None, fleet)
    fleet.sent.clear()
    conductor.heard(0, ("prepared", 1, []), fleet)
    conductor.heard(1, ("prepared", 1, ["redis 127.0.0.1:6379: connection refused"]), fleet)
    assert fleet.kinds() == [(0, "abort")]
    assert conductor.config is running and conductor.generation == 0
    conductor.started(2)  # a replacement starts on the running config
    conductor.up(2, fleet)
    assert fleet.restarted == []


def test_a_worker_that_does_not_answer_refuses_the_round(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "PREPARE_S", -1.0)  # the deadline has passed at the first tick
    conductor, fleet = conductor_at(path, 0, 1)
    path.write_text(json.dumps(config("summarize")))
    conductor.ask((0, 1), fleet)
    fleet.sent.clear()
    conductor.heard(0, ("prepared", 1, []), fleet)
    conductor.tick(fleet)
    assert fleet.sent[0] == (0, ("abort", 1))
    assert fleet.sent[1][1][:3] == ("answer", 1, False)
    assert fleet.sent[1][1][3] == ["worker 1 (pid 1001) did not answer in -1 s"]


def test_a_worker_that_exits_during_a_round_is_not_waited_for(path: Path) -> None:
    conductor, fleet = conductor_at(path, 0, 1)
    path.write_text(json.dumps(config("summarize")))
    conductor.ask(None, fleet)
    fleet.sent.clear()
    conductor.heard(0, ("prepared", 1, []), fleet)
    del fleet.pids[1]
    conductor.gone(1, fleet)
    assert fleet.kinds() == [(0, "commit")]
    conductor.heard(0, ("committed", 1, {}), fleet)
    assert conductor.round is None and conductor.generation == 1


def test_a_worker_started_on_the_config_before_a_round_is_restarted_once_it_serves(path: Path) -> None:
    conductor, fleet = conductor_at(path, 0)
    conductor.started(1)  # starting: not in the round
    path.write_text(json.dumps(config("summarize")))
    conductor.ask(None, fleet)
    prepare_all(conductor, fleet)
    conductor.heard(0, ("committed", 1, {}), fleet)
    conductor.started(2)  # started after the commit: on the new config
    fleet.pids[1], fleet.pids[2] = 1001, 1002
    conductor.up(1, fleet)
    conductor.up(2, fleet)
    assert fleet.restarted == [1]


def test_a_reload_asked_during_a_round_reads_the_file_again_after_it(path: Path) -> None:
    conductor, fleet = conductor_at(path, 0)
    path.write_text(json.dumps(config("summarize")))
    conductor.ask((0, 1), fleet)
    path.write_text(json.dumps(config("summarize", "translate")))
    conductor.ask((0, 2), fleet)  # the file changed again while the first round ran
    conductor.ask(None, fleet)
    prepare_all(conductor, fleet)
    conductor.heard(0, ("committed", 1, {}), fleet)
    answer, prepare = fleet.sent[-2:]
    assert answer[1][:3] == ("answer", 1, True)
    assert prepare[1][0] == "prepare" and list(prepare[1][2].config.tasks) == ["chat", "summarize", "translate"]
    conductor.heard(0, ("prepared", 2, []), fleet)
    conductor.heard(0, ("committed", 2, {}), fleet)
    assert fleet.sent[-1][1][:3] == ("answer", 2, True)  # one round for both asks made during the first
    assert list(conductor.config.tasks) == ["chat", "summarize", "translate"]


def test_a_commit_not_confirmed_in_time_restarts_that_worker(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rounds, "COMMIT_S", -1.0)
    conductor, fleet = conductor_at(path, 0, 1)
    path.write_text(json.dumps(config("summarize")))
    conductor.ask(None, fleet)
    prepare_all(conductor, fleet)
    conductor.heard(0, ("committed", 1, {}), fleet)
    conductor.tick(fleet)
    assert fleet.restarted == [1] and conductor.round is None
