"""python_test against hostile code: every escape seen from inside the scorer, tried again in the
bubblewrap jail. Each attempt exits 0 when it gets out and 7 when it is stopped (so a broken jail
that fails for some other reason does not pass); where the escape leaves a trace on the host (a
connection, a file, a process), the test looks for the trace itself. The same attempts without
the jail get out (the ``*_without_the_jail`` tests), which is what makes these tests able to fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from turnout.config import Config
from turnout.offline.evals import Case, Expectation, Score, build_scorers
from turnout.offline.evals.jail import sandbox_problem
from turnout.offline.evals.sandbox import PythonTest, SandboxUnavailable, run_python

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="bubblewrap is Linux only"),
    pytest.mark.skipif(
        shutil.which("bwrap") is None, reason="bubblewrap is not installed (apt-get install bubblewrap)"
    ),
]

REPO = Path(__file__).resolve().parent.parent
CASE = Case(id="x", expect=(Expectation("python_test", {"test": "pass"}),), messages=[{"role": "user", "content": "."}])
STOPPED = "exit 7"


async def jailed(code: str, **args: Any) -> Score:
    """The code as a model's output, scored by python_test as turnout eval would."""
    scorer = build_scorers()["python_test"]
    full = {"test": "pass", **args}
    assert scorer.check(full) == []
    return await scorer.score(f"```python\n{code}\n```", CASE, full)


async def unjailed(code: str, workdir: Path) -> Score:
    return await run_python(code, workdir, timeout_s=10, memory_mb=256, sandboxed=False)


class Listener:
    """A TCP service on the host's loopback that answers like an HTTP server and counts every
    connection it accepts."""

    def __init__(self) -> None:
        self.connections = 0
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.connections += 1
                self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nESCAPED")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    service = Listener()
    yield service
    service.close()


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_the_jail_works_here() -> None:
    # bwrap is installed, so the jail must work: a probe failure is a failure, not a skip
    assert sandbox_problem() is None


# --- network ------------------------------------------------------------------------------

RAW_SOCKET = """
import _socket, sys
s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(("127.0.0.1", {port}))
except OSError as e:
    print("connect:", e, file=sys.stderr)
    sys.exit(7)
s.send(b"GET / HTTP/1.0\\r\\n\\r\\n")
sys.exit(0)
"""

RELOADED_SOCKET = """
import importlib, socket, sys, urllib.request
importlib.reload(socket)  # undoes the prelude's patches
errors = []
for url in ("http://127.0.0.1:{port}/", "http://1.1.1.1/", "http://example.com/"):
    try:
        urllib.request.urlopen(url, timeout=3).read()
    except OSError as e:
        errors.append(f"{{url}}: {{e}}")
    else:
        sys.exit(0)
try:
    socket.create_connection(("1.1.1.1", 53), timeout=3)
except OSError as e:
    errors.append(f"1.1.1.1:53: {{e}}")
else:
    sys.exit(0)
print("\\n".join(errors), file=sys.stderr)
sys.exit(7)
"""

CURL = """
import subprocess, sys
done = subprocess.run(["curl", "-sS", "--max-time", "3", "http://127.0.0.1:{port}/"], capture_output=True, text=True)
print(done.returncode, done.stdout, done.stderr, file=sys.stderr)
sys.exit(0 if "ESCAPED" in done.stdout else 7)
"""


async def test_network_through__socket_is_cut(listener: Listener) -> None:
    s = await jailed(RAW_SOCKET.format(port=listener.port))
    assert s.detail.startswith(STOPPED), s.detail
    assert "Connection refused" in s.detail  # the jail's own loopback: nothing listens there
    assert listener.connections == 0


async def test_network_through_a_reloaded_socket_module_is_cut(listener: Listener) -> None:
    s = await jailed(RELOADED_SOCKET.format(port=listener.port))
    assert s.detail.startswith(STOPPED), s.detail
    assert "Network is unreachable" in s.detail  # no route out of the network namespace
    assert listener.connections == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
async def test_network_through_curl_in_a_subprocess_is_cut(listener: Listener) -> None:
    s = await jailed(CURL.format(port=listener.port))
    assert s.detail.startswith(STOPPED), s.detail
    assert listener.connections == 0


async def test_network_through__socket_gets_out_without_the_jail(listener: Listener, tmp_path: Path) -> None:
    # the socket prelude alone is no barrier: this is what the jail stops
    s = await unjailed(RAW_SOCKET.format(port=listener.port), tmp_path)
    assert s.passed, s.detail
    for _ in range(100):
        if listener.connections:
            break
        await asyncio.sleep(0.05)
    assert listener.connections == 1


# --- the file system ----------------------------------------------------------------------

WRITE_OUTSIDE = """
import os, sys
written = []
for path in {paths!r}:
    try:
        with open(path, "w") as f:
            f.write("escaped")
    except OSError as e:
        print(path, e, file=sys.stderr)
    else:
        written.append(path)
try:
    with open("local.txt", "w") as f:  # its own folder stays writable
        f.write("fine")
except OSError as e:
    print("own folder:", e, file=sys.stderr)
    sys.exit(3)
print("written inside the jail:", written, file=sys.stderr)
sys.exit(7)
"""


def outside_paths(tmp_path: Path) -> list[str]:
    tag = uuid.uuid4().hex
    return [
        str(tmp_path / "escaped.txt"),  # a host folder the test owns
        f"/tmp/turnout-escape-{tag}",
        str(REPO / f"escape-{tag}.txt"),  # the project tree
        str(Path.home() / f"escape-{tag}.txt"),
        f"/escape-{tag}.txt",
        f"../escape-{tag}.txt",
        f"/usr/escape-{tag}.txt",
    ]


def host_path(path: str) -> Path:
    return Path("/") / path.removeprefix("../") if path.startswith("../") else Path(path)


async def test_writing_outside_its_folder_leaves_nothing_on_the_host(tmp_path: Path) -> None:
    paths = outside_paths(tmp_path)
    s = await jailed(WRITE_OUTSIDE.format(paths=paths))
    assert s.detail.startswith(STOPPED), s.detail
    for path in paths:
        assert not host_path(path).exists(), path
    assert not (tmp_path / "escaped.txt").exists()


async def test_writing_outside_its_folder_gets_out_without_the_jail(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    (tmp_path / "run").mkdir()
    s = await unjailed(WRITE_OUTSIDE.format(paths=[str(target)]), tmp_path / "run")
    assert s.detail.startswith(STOPPED), s.detail
    assert target.read_text() == "escaped"


async def test_the_jail_shows_no_host_files() -> None:
    code = f"""
import os, sys
visible = [p for p in ({str(REPO)!r}, "/home", "/etc/passwd", "/etc/hostname", "/root/.bashrc", "/var", "/srv", "/mnt")
           if os.path.exists(p)]
pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("visible:", visible, "pids:", pids, "uid:", os.getuid(), file=sys.stderr)
sys.exit(0 if visible or len(pids) > 3 or os.getuid() == 0 else 7)
"""
    s = await jailed(code)
    assert s.detail.startswith(STOPPED), s.detail


# --- the parent's environment -------------------------------------------------------------

READ_ENVIRON = """
import glob, os, sys
secret = bytes.fromhex("{secret_hex}")
found = []
for path in [f"/proc/{{os.getppid()}}/environ", "/proc/1/environ", *glob.glob("/proc/*/environ")]:
    try:
        with open(path, "rb") as f:
            if secret in f.read():
                found.append(path)
    except OSError:
        pass
if secret.decode() in os.environ.values():
    found.append("os.environ")
print("found in:", found, "environ:", dict(os.environ), file=sys.stderr)
sys.exit(0 if found else 7)
"""

# A gateway stand-in: a process started with the secret in its environment scores the code.
GATEWAY = """
import asyncio, json, sys, tempfile
from pathlib import Path
from turnout.offline.evals.sandbox import run_python

async def main():
    with tempfile.TemporaryDirectory() as tmp:
        s = await run_python(sys.stdin.read(), Path(tmp), timeout_s=10, memory_mb=256, sandboxed=sys.argv[1] == "jail")
    print(json.dumps(s.to_dict()))

asyncio.run(main())
"""


def score_in_a_gateway_with_a_secret(code: str, mode: str, secret: str) -> dict[str, Any]:
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": secret}
    done = subprocess.run(
        [sys.executable, "-c", GATEWAY, mode], input=code, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_parents_environment_cannot_be_read() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/" + uuid.uuid4().hex
    result = score_in_a_gateway_with_a_secret(READ_ENVIRON.format(secret_hex=secret.encode().hex()), "jail", secret)
    assert result["detail"].startswith(STOPPED), result["detail"]
    assert secret not in result["detail"]


def test_the_parents_environment_is_read_without_the_jail() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/" + uuid.uuid4().hex
    result = score_in_a_gateway_with_a_secret(READ_ENVIRON.format(secret_hex=secret.encode().hex()), "plain", secret)
    assert result["passed"], result["detail"]


# --- processes ----------------------------------------------------------------------------

DAEMON = """
import os, sys, time
marker = {marker!r}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", marker])
    os._exit(0)
os.wait()
for _ in range(100):  # see the daemon running before going on
    if any(marker.encode() in open(f"/proc/{{p}}/cmdline", "rb").read() for p in os.listdir("/proc") if p.isdigit()):
        break
    time.sleep(0.05)
else:
    sys.exit(3)
time.sleep({linger})
"""


@pytest.mark.parametrize(("linger", "timeout_s"), [(0, 10), (60, 1.5)], ids=["script exits", "script times out"])
async def test_a_double_forked_daemon_does_not_outlive_scoring(linger: int, timeout_s: float) -> None:
    marker = f"turnout-daemon-{uuid.uuid4().hex}"
    s = await jailed(DAEMON.format(marker=marker, linger=linger), timeout_s=timeout_s)
    assert s.passed if linger == 0 else s.detail.startswith("timed out"), s.detail
    # scoring has returned: the jail is already empty, no waiting
    assert processes_with(marker) == []


async def test_a_double_forked_daemon_outlives_scoring_without_the_jail(tmp_path: Path) -> None:
    marker = f"turnout-daemon-{uuid.uuid4().hex}"
    try:
        s = await unjailed(DAEMON.format(marker=marker, linger=0), tmp_path)
        assert s.passed, s.detail
        assert processes_with(marker) != []
    finally:
        for pid in processes_with(marker):
            os.kill(pid, 9)


FORK_STORM = """
import os, sys, time
sys.argv[0] = {marker!r}
children, refused = 0, 0
for _ in range(300):  # bounded even if the limit were gone
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    children += 1
print("children:", children, "refused:", refused, file=sys.stderr)
sys.exit(7 if refused else 0)
"""


async def test_a_fork_storm_hits_the_process_limit() -> None:
    marker = f"turnout-storm-{uuid.uuid4().hex}"
    most = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal most
        while not stop.is_set():
            most = max(most, len(processes_with(marker)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        s = await jailed(FORK_STORM.format(marker=marker), max_processes=16)
    finally:
        stop.set()
        watcher.join()
    assert s.detail.startswith(STOPPED), s.detail
    children = int(s.detail.split("children:")[1].split()[0])
    assert 0 < children < 16  # the script itself is one of the 16
    assert most <= 16
    assert processes_with(marker) == []


async def test_an_unbounded_fork_bomb_ends_in_a_failure() -> None:
    marker = f"turnout-bomb-{uuid.uuid4().hex}"
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    code = f"import os, sys\nos.execv(sys.executable, [sys.executable, '-c', {bomb!r}, {marker!r}])\n"
    s = await jailed(code, max_processes=8, timeout_s=2)
    assert not s.passed and s.detail.startswith(("timed out", "killed by")), s.detail
    assert processes_with(marker) == []
    # and the machine is fine: a normal run still works
    assert (await jailed("assert 1 + 1 == 2")).passed


async def test_the_process_limit_leaves_room_for_normal_children() -> None:
    code = (
        "import subprocess, sys\n"
        "done = subprocess.run([sys.executable, '-c', 'print(1)'], capture_output=True)\n"
        "assert done.stdout == b'1\\n', done\n"
    )
    assert (await jailed(code, max_processes=4)).passed


# --- memory and CPU -----------------------------------------------------------------------


async def test_a_memory_bomb_fails_under_the_limit() -> None:
    code = "x = 'a' * (2 * 1024 ** 3)\n"
    s = await jailed(code, memory_mb=256)
    assert not s.passed and "MemoryError" in s.detail, s.detail


async def test_filling_the_private_folders_stops_at_their_size() -> None:
    code = """
import errno, os, sys
total = 0
for folder in (".", "/tmp", "/dev/shm"):
    for i in range(1000):
        try:
            with open(os.path.join(folder, f"fill-{i}"), "wb") as f:
                for _ in range(8):
                    f.write(b"x" * (1024 * 1024))
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EFBIG):
                raise
            break
        total += 8
print("MiB written:", total, file=sys.stderr)
sys.exit(7 if total <= 160 else 0)
"""
    s = await jailed(code, timeout_s=30)
    assert s.detail.startswith(STOPPED), s.detail


async def test_a_cpu_loop_is_stopped_at_the_time_limit() -> None:
    s = await jailed("while True:\n    pass\n", timeout_s=1)
    assert s.detail == "timed out after 1 s"


async def test_a_cpu_loop_that_ignores_sigxcpu_is_killed_by_the_cpu_limit() -> None:
    # the wall clock is generous; RLIMIT_CPU (timeout + 1 s) ends it first
    code = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    s = await jailed(code, timeout_s=1, memory_mb=64)
    assert not s.passed


# --- no jail ------------------------------------------------------------------------------


async def test_without_bubblewrap_python_test_refuses_and_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap there
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as info:
        await jailed("assert True")
    assert "evals.allow_unsandboxed_code" in str(info.value)


async def test_without_bubblewrap_python_test_runs_unjailed_when_the_config_allows_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    scorer = PythonTest(allow_unsandboxed_code=True)
    code = "import os\nassert os.getcwd() != '/work'\n"  # a plain child process, in its temporary folder
    assert (await scorer.score(f"```python\n{code}```", CASE, {"test": "pass"})).passed


def test_build_scorers_passes_the_config_switch_on() -> None:
    assert build_scorers()["python_test"].allow_unsandboxed_code is False  # type: ignore[attr-defined]
    assert build_scorers(allow_unsandboxed_code=True)["python_test"].allow_unsandboxed_code is True  # type: ignore[attr-defined]


def test_turnout_eval_refuses_before_calling_a_model_without_bubblewrap(tmp_path: Path) -> None:
    (tmp_path / "turnout.yaml").write_text(
        "targets:\n  local: {provider: local}\ntasks:\n  code:\n    route: [local]\n    gates: {min_pass_rate: 0.8}\n"
    )
    (tmp_path / "releases" / "code").mkdir(parents=True)
    (tmp_path / "releases" / "code" / "v1.yaml").write_text(
        "target: local\nprompt:\n  user: '{{ task }}'\n  variables: {task: str}\n"
    )
    (tmp_path / "evals").mkdir()
    case = {"id": "add", "variables": {"task": "write add(a, b)"}, "expect": [{"scorer": "python_test", "test": "1"}]}
    (tmp_path / "evals" / "code.jsonl").write_text(json.dumps(case) + "\n")
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "turnout", "eval", "code", "--candidate", "v1", "--config", "turnout.yaml"],
        cwd=tmp_path,
        env={**os.environ, "PATH": str(empty)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "apt-get install bubblewrap" in done.stderr and "evals.allow_unsandboxed_code" in done.stderr
    assert not (tmp_path / ".turnout" / "evals").exists()  # no run, no report


def test_the_config_switch_is_off_unless_set() -> None:
    base: dict[str, Any] = {"targets": {"local": {"provider": "local"}}, "tasks": {"t": {"route": ["local"]}}}
    assert Config.model_validate(base).evals.allow_unsandboxed_code is False
    on = Config.model_validate({**base, "evals": {"allow_unsandboxed_code": True}})
    assert on.evals.allow_unsandboxed_code is True
    with pytest.raises(ValueError, match="allow_unsandboxed"):
        Config.model_validate({**base, "evals": {"allow_unsandboxed": True}})  # a typo is an error


async def test_a_fork_storm_does_not_take_the_process_budget_of_runs_beside_it() -> None:
    # each jail counts its own processes: a storm next door does not starve a normal run
    marker = f"turnout-storm-{uuid.uuid4().hex}"
    storm = FORK_STORM.format(marker=marker) + "\nimport time\ntime.sleep(3)\n"
    normal = (
        "import subprocess, sys, time\n"
        "time.sleep(0.5)\n"  # while the storm holds its 16
        "children = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)']) for _ in range(5)]\n"
        "assert all(c.wait() == 0 for c in children)\n"
    )
    storm_score, *normal_scores = await asyncio.gather(
        jailed(storm, max_processes=16, timeout_s=10), *(jailed(normal, max_processes=8) for _ in range(3))
    )
    assert storm_score.detail.startswith(STOPPED), storm_score.detail
    assert all(s.passed for s in normal_scores), [s.detail for s in normal_scores]
    assert processes_with(marker) == []


async def test_a_bubblewrap_that_cannot_build_the_jail_makes_python_test_refuse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable, match="user namespaces") as info:
        await jailed("assert True")
    assert "No permissions to create new namespace" in str(info.value)
    assert "evals.allow_unsandboxed_code" in str(info.value)
