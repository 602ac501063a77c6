"""``--workers``: the count, what ``turnout check`` refuses to share between workers, and the
supervisor's own rules (restart, start-up failure, SIGHUP, stop) on small spawned targets."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import turnout.serving.server
from turnout.cli.main import main
from turnout.cli.preflight import shared_state
from turnout.cli.serve import Reloader
from turnout.config import Config, load_config, validate
from turnout.serving import supervisor
from turnout.serving.rounds import Conductor
from turnout.serving.supervisor import STARTUP_FAILURE, Supervisor, worker_count

KEY = "sk-acme-workers-0123456789"
TARGETS = {"up": {"provider": "openai", "base_url": "http://up.invalid/v1", "model": "m"}}


def config(**extra: Any) -> Config:
    raw: dict[str, Any] = {
        "targets": TARGETS,
        "tenants": {"acme": {"keys": [KEY], "limits": {"rpm": 60}}},
        "tasks": {"chat": {"route": ["up"]}},
    }
    raw.update(extra)
    return validate(raw)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={"TURNOUT_CONFIG": None})


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "turnout.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- the count ---------------------------------------------------------------------------


def test_auto_is_the_cores_this_process_may_use() -> None:
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    assert worker_count("3") == 3


@pytest.mark.parametrize("value", ["0", "-2", "many", ""])
def test_a_count_below_one_or_not_a_number_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="--workers"):
        worker_count(value)


def test_serve_refuses_a_bad_count_as_a_usage_error(tmp_path: Path) -> None:
    result = invoke("serve", "--workers", "0", "--config", write(tmp_path, "targets: {}\ntasks: {}\n"))
    assert result.exit_code == 2
    assert "--workers: 0 must be at least 1" in result.output


def test_more_workers_than_the_machine_can_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert worker_count("8") == 8  # four per core
    with pytest.raises(ValueError, match=r"--workers: 9 is more than 8 \(4 per core, 2 core\(s\) here\)"):
        worker_count("9")


def test_serve_refuses_a_huge_count_as_a_usage_error_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(turnout.serving.server, "run_workers", lambda *a, **k: pytest.fail("started"))
    result = invoke("serve", "--workers", "100000", "--config", write(tmp_path, "targets: {}\ntasks: {}\n"))
    assert result.exit_code == 2
    assert "--workers: 100000 is more than" in result.output


# --- what workers cannot share -----------------------------------------------------------


def test_one_worker_may_keep_state_in_memory() -> None:
    assert shared_state(config(store={"kind": "memory"}), 1) == []


def test_memory_limits_are_refused_with_what_to_use_instead() -> None:
    [problem] = shared_state(config(), 2)
    assert problem.startswith("limits.backend: memory: with --workers 2")
    assert "2x its RPM" in problem and problem.endswith("use redis")


def test_memory_ledger_and_cache_are_refused() -> None:
    limits = {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    task = {"route": ["up"], "cache": {"ttl_s": 60, "classes": ["public"]}}
    cached = config(limits=limits, store={"kind": "memory"}, tasks={"chat": task})
    problems = shared_state(cached, 4)
    assert [p.split(":")[0] for p in problems] == ["store.kind", "cache.backend"]
    assert problems[0].endswith("use sqlite or postgres") and problems[1].endswith("use redis")


def test_shared_state_passes() -> None:
    limits = {"backend": "redis", "redis_url": "redis://127.0.0.1:6379/0"}
    assert shared_state(config(limits=limits, store={"kind": "postgres", "dsn": "postgresql://h/db"}), 8) == []
    assert shared_state(config(limits=limits), 8) == []  # SQLite: WAL and a busy timeout
    no_limits = config(tenants={"acme": {"keys": [KEY]}})
    assert shared_state(no_limits, 2) == []  # memory limits that limit nothing


def test_check_names_the_problem_for_the_workers_asked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        targets: {{up: {{provider: openai, base_url: "http://up:8000/v1", model: m}}}}
        tenants: {{acme: {{keys: ["{KEY}"], limits: {{rpm: 60}}}}}}
        tasks: {{chat: {{route: [up]}}}}
        """,
    )
    assert invoke("check", "--config", path).exit_code == 0
    refused = invoke("check", "--config", path, "--workers", "2")
    assert refused.exit_code == 1
    assert "limits.backend: memory: with --workers 2" in refused.output
    assert "use redis" in refused.output


def test_serve_refuses_before_it_binds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []

    def run_workers(*args: Any, **kwargs: Any) -> int:
        started.append(1)
        return 0

    monkeypatch.setattr(turnout.serving.server, "run_workers", run_workers)
    path = write(tmp_path, "targets: {up: {provider: openai, base_url: 'http://u/v1', model: m}}\n")
    with open(path, "a") as f:
        f.write(f"tenants: {{acme: {{keys: ['{KEY}'], limits: {{rpm: 5}}}}}}\ntasks: {{chat: {{route: [up]}}}}\n")
    result = invoke("serve", "--config", path, "--workers", "2")
    assert result.exit_code == 1 and "use redis" in result.output
    assert started == []


def test_serve_hands_several_workers_to_the_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given: list[tuple[Config, int, Any]] = []

    def run_workers(config: Config, workers: int, source: str | None = None, loader: Any = None) -> int:
        given.append((config, workers, loader))
        return 0

    monkeypatch.setattr(turnout.serving.server, "run_workers", run_workers)
    path = write(tmp_path, "targets: {up: {provider: openai, base_url: 'http://u/v1', model: m}}\n")
    with open(path, "a") as f:
        f.write("tasks: {chat: {route: [up]}}\n")
    result = invoke("serve", "--config", path, "--workers", "3", "--port", "9123")
    assert result.exit_code == 0, result.output
    [(cfg, workers, loader)] = given
    assert workers == 3 and cfg.server.port == 9123
    assert loader() == cfg  # reads the file again with --port over it


# --- the supervisor ----------------------------------------------------------------------
# Targets run in spawned interpreters: module-level functions, their effects seen in files.


def record_and_wait(where: str, sockets: list[socket.socket], pipe: Connection) -> None:
    """A worker: writes its pid and says it serves, then waits; SIGHUP is written down, SIGTERM
    ends it."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: Path(where, f"hup-{os.getpid()}").touch())
    Path(where, f"up-{os.getpid()}").touch()
    pipe.send(("up",))
    done.wait()
    Path(where, f"down-{os.getpid()}").touch()


FAILED_STARTS = ["start-up refused", "import error", "killed while loading"]


def fail_start(where: str, how: str, sockets: list[socket.socket], pipe: Connection) -> None:
    """A worker that ends before it serves: its start-up refused (a store down: uvicorn's exit
    status 3), an import that fails (1), or killed while it loads a model (the OOM killer)."""
    Path(where, f"failed-{os.getpid()}").touch()
    if how == "start-up refused":
        raise SystemExit(STARTUP_FAILURE)
    if how == "import error":
        raise ImportError("turnout_injected")
    os.kill(os.getpid(), signal.SIGKILL)


def files(where: Path, prefix: str) -> set[str]:
    return {p.name.removeprefix(prefix) for p in where.glob(f"{prefix}*")}


def wait_for(check: Any, what: str) -> None:
    for _ in range(600):  # a spawned interpreter starts in well under a second; ample room here
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


class Running:
    """A supervisor in a thread of this process, sent signals as its process would be."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.code: list[int] = []
        self.thread = threading.Thread(target=lambda: self.code.append(sup._loop(self.sock)), daemon=True)
        self.sock = supervisor.bind("127.0.0.1", 0)

    def __enter__(self) -> Running:
        for slot in range(self.sup.n):
            self.sup._start(slot, self.sock)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sup.signals.append(signal.SIGTERM)
        self.thread.join(30)
        self.sup._stop()
        self.sock.close()


def test_a_worker_that_dies_is_started_again(tmp_path: Path) -> None:
    sup = Supervisor(2, record_and_wait, (str(tmp_path),), stop_after_s=5)
    with Running(sup):
        wait_for(lambda: len(files(tmp_path, "up-")) == 2, "two workers up")
        victim = sorted(files(tmp_path, "up-"))[0]
        os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: len(files(tmp_path, "up-")) == 3, "a third worker up")
        alive = {str(p.pid) for p, _ in sup.workers.values()}
        assert victim not in alive and len(alive) == 2
    assert files(tmp_path, "down-") == alive  # SIGTERM reached both, each ended on its own


def take_rounds(cfg: Config, where: str, sockets: list[socket.socket], pipe: Connection) -> None:
    """A worker that says it serves, then takes each round (``serving/rounds.py``): what it
    commits is written down as its tasks."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Path(where, f"up-{os.getpid()}").write_text(",".join(cfg.tasks))
    pipe.send(("up",))
    plans: dict[int, Any] = {}
    while True:
        message = pipe.recv()
        if message[0] == "prepare":
            plans[message[1]] = message[2]
            pipe.send(("prepared", message[1], []))
        elif message[0] == "commit":
            Path(where, f"reloaded-{os.getpid()}").write_text(",".join(plans[message[1]].config.tasks))
            pipe.send(("committed", message[1], {}))


def test_sighup_reloads_every_worker_through_its_pipe_and_later_workers_start_on_it(tmp_path: Path) -> None:
    raw: dict[str, Any] = {"targets": TARGETS, "tasks": {"chat": {"route": ["up"]}}}
    path = write(tmp_path, json.dumps(raw))
    cfg = load_config(path)
    reloads = Conductor(cfg, Reloader(path, None, None), path)
    sup = Supervisor(2, take_rounds, (cfg, str(tmp_path)), stop_after_s=5, reloads=reloads)
    with Running(sup):
        wait_for(lambda: len(files(tmp_path, "up-")) == 2, "two workers up")
        raw["tasks"]["summarize"] = {"route": ["up"]}
        Path(path).write_text(json.dumps(raw))
        sup.signals.append(signal.SIGHUP)
        wait_for(lambda: files(tmp_path, "reloaded-") == files(tmp_path, "up-"), "the reload in each worker")
        assert {(tmp_path / f"reloaded-{pid}").read_text() for pid in files(tmp_path, "up-")} == {"chat,summarize"}
        wait_for(lambda: reloads.round is None, "the round over")
        victim = sorted(files(tmp_path, "up-"))[0]
        os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: len(files(tmp_path, "up-")) == 3, "a replacement up")
        [new] = files(tmp_path, "up-") - files(tmp_path, "reloaded-")
        assert (tmp_path / f"up-{new}").read_text() == "chat,summarize"


def test_sighup_without_a_config_file_reaches_no_worker(tmp_path: Path) -> None:
    sup = Supervisor(2, record_and_wait, (str(tmp_path),), stop_after_s=5)
    with Running(sup) as running:
        wait_for(lambda: len(files(tmp_path, "up-")) == 2, "two workers up")
        sup.signals.append(signal.SIGHUP)
        wait_for(lambda: not sup.signals, "the SIGHUP handled")
        assert running.thread.is_alive() and files(tmp_path, "hup-") == set()


@pytest.mark.parametrize("how", FAILED_STARTS)
def test_a_failed_start_up_stops_the_supervisor(tmp_path: Path, how: str) -> None:
    """However a worker of the first start ends before it serves, the server cannot start: an
    exit other than uvicorn's 3 was restarted every second, for ever."""
    sup = Supervisor(2, fail_start, (str(tmp_path), how), stop_after_s=5)
    with Running(sup) as running:
        running.thread.join(30)
        assert running.code == [1]  # no crash loop: the server cannot start
    assert len(files(tmp_path, "failed-")) <= 2


def test_the_supervisor_owns_its_metrics_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(supervisor.METRICS_ENV, "")  # so that monkeypatch restores what was there
    monkeypatch.delenv(supervisor.METRICS_ENV)
    sup = Supervisor(1, record_and_wait, (), stop_after_s=1)
    owned = sup._metrics_dir()
    assert owned is not None and os.environ[supervisor.METRICS_ENV] == owned and os.path.isdir(owned)
    os.rmdir(owned)
    monkeypatch.setenv(supervisor.METRICS_ENV, "/somewhere/given")
    assert sup._metrics_dir() is None  # the operator's: neither created nor removed


def serve_unless_failing(where: str, how: str, sockets: list[socket.socket], pipe: Connection) -> None:
    """A worker that fails its start-up (``how``) while the file ``fail`` exists (a store it
    opens down)."""
    if Path(where, "fail").exists():
        fail_start(where, how, sockets, pipe)
    record_and_wait(where, sockets, pipe)


@pytest.mark.parametrize("how", FAILED_STARTS)
def test_a_replacement_that_fails_to_start_is_tried_again_while_another_worker_serves(tmp_path: Path, how: str) -> None:
    sup = Supervisor(2, serve_unless_failing, (str(tmp_path), how), stop_after_s=5)
    with Running(sup) as running:
        wait_for(lambda: len(files(tmp_path, "up-")) == 2, "two workers up")
        survivor, victim = sorted(files(tmp_path, "up-"))
        Path(tmp_path, "fail").touch()  # the store is down: a new worker cannot start
        os.kill(int(victim), signal.SIGKILL)
        wait_for(lambda: len(files(tmp_path, "failed-")) >= 1, "the replacement failed its start-up")
        wait_for(lambda: bool(sup.pending), "its next try put off (2, 4, 8 … s), not a restart at once")
        time.sleep(0.5)
        assert running.thread.is_alive() and running.code == []  # the survivor still serves
        assert survivor in {str(p.pid) for p, _ in sup.workers.values()}
        Path(tmp_path, "fail").unlink()  # the store is back
        wait_for(lambda: len(files(tmp_path, "up-")) == 3, "the replacement up on a later try")
        assert len({str(p.pid) for p, _ in sup.workers.values() if p.is_alive()}) == 2


def test_a_replacement_that_fails_to_start_with_no_worker_left_stops_the_supervisor(tmp_path: Path) -> None:
    sup = Supervisor(1, serve_unless_failing, (str(tmp_path), "start-up refused"), stop_after_s=5)
    with Running(sup) as running:
        wait_for(lambda: len(files(tmp_path, "up-")) == 1, "the worker up")
        Path(tmp_path, "fail").touch()
        os.kill(int(next(iter(files(tmp_path, "up-")))), signal.SIGKILL)
        running.thread.join(30)
        assert running.code == [1]


def drain_until_forced(where: str, sockets: list[socket.socket], pipe: Connection) -> None:
    """A worker with a request that outlasts any grace: SIGTERM is noted, SIGINT ends it."""
    forced = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: Path(where, f"term-{os.getpid()}").touch())
    signal.signal(signal.SIGINT, lambda *_: forced.set())
    Path(where, f"up-{os.getpid()}").touch()
    pipe.send(("up",))
    forced.wait()
    Path(where, f"forced-{os.getpid()}").touch()


def test_a_second_ctrl_c_while_draining_reaches_every_worker(tmp_path: Path) -> None:
    sup = Supervisor(2, drain_until_forced, (str(tmp_path),), stop_after_s=20)
    sock = supervisor.bind("127.0.0.1", 0)
    try:
        for slot in range(2):
            sup._start(slot, sock)
        wait_for(lambda: len(files(tmp_path, "up-")) == 2, "two workers up")

        def ctrl_c_again() -> None:
            wait_for(lambda: len(files(tmp_path, "term-")) == 2, "both draining")
            sup.signals.append(signal.SIGINT)

        threading.Thread(target=ctrl_c_again, daemon=True).start()
        started = time.monotonic()
        sup._stop()
        assert time.monotonic() - started < 10  # not the grace and the settle time
    finally:
        sock.close()
    assert files(tmp_path, "forced-") == files(tmp_path, "up-")  # each quit on the SIGINT, none killed
