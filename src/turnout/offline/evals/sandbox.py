"""``python_test``: run the code in an output against given tests, jailed, with limits.

    {"scorer": "python_test", "test": "assert add(2, 3) == 5",
     "timeout_s": 10, "memory_mb": 512, "max_processes": 16}

The code is the first ```python (or ```py) fenced block of the output, else the first fenced
block of any kind, else the whole output. It is written, followed by the test code, to one
script, run as ``python -I main.py`` (isolated mode: no PYTHON* variables, no user
site-packages); the case passes iff that process exits 0.

The script runs in a bubblewrap jail (``jail``): new user, PID, network, IPC and mount
namespaces, only the interpreter, its standard library and /usr to read, a private tmpfs to
write, an empty environment, a fresh /proc, no network but loopback. Limits, set by a launcher
inside the jail before the script runs (limits survive ``exec``; not a ``preexec_fn``: the
gateway may have threads, and Python code between fork and exec can deadlock):

* wall clock: ``timeout_s`` (default 10); past it bwrap is killed, and with it every process
  in the jail (its PID namespace ends);
* CPU time: RLIMIT_CPU of ``timeout_s`` + 1 s, a backstop for the wall clock;
* memory: RLIMIT_AS of ``memory_mb`` (default 512) per process: allocations past it raise
  MemoryError; the tmpfs folders are 64 MiB (/work, /tmp) and 16 MiB (/dev/shm);
* processes: RLIMIT_NPROC of ``max_processes`` (default 16), processes and threads together,
  counted in the jail's own user namespace: a fork bomb gets EAGAIN. Memory is per process,
  so a run can hold at most ``max_processes`` × ``memory_mb`` (there is no cgroup to count
  them together);
* files: RLIMIT_FSIZE of 8 MiB (stdout and stderr go to files too), no core dumps.

Whatever the script leaves running (a daemon, a fork storm) dies with the jail when the script
exits. Without a working bubblewrap ``python_test`` raises ``SandboxUnavailable``, naming how to
install it, unless the scorer was built with ``allow_unsandboxed_code`` (config
``evals.allow_unsandboxed_code: true``): then the script runs as a plain child process with
the same limits except the process count, with a prelude that disables ``socket`` (best effort only: code
that means to can undo it) and no isolation at all. POSIX only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from turnout.offline.evals.cases import Case
from turnout.offline.evals.jail import (
    INSTALL_HINT,
    Limits,
    SandboxUnavailable,
    find_bwrap,
    jail_command,
    kill_init,
    sandbox_problem,
)
from turnout.offline.evals.scorers import fenced_blocks
from turnout.offline.evals.scoring import Score, Scorer, register

__all__ = ["PythonTest", "SandboxUnavailable", "extract_code", "run_python"]

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512
DEFAULT_MAX_PROCESSES = 16
_MAX_FILE_BYTES = 8 * 1024 * 1024
_KILL_GRACE_S = 5.0  # for bwrap to see its killed jail empty
_TAIL = 600  # characters of stderr/stdout kept in the detail

# Inside the jail the network namespace has no route out anyway; this turns accidental use into
# a clear error, and is all there is without the jail.
_PRELUDE = """\
import socket as _s
def _no_network(*_a, **_k):
    raise OSError("network access is disabled in python_test")
_s.getaddrinfo = _no_network
_s.create_connection = _no_network
for _m in ("connect", "connect_ex", "sendto", "sendmsg"):
    setattr(_s.socket, _m, _no_network)
del _s, _no_network, _m
"""


def extract_code(output: str) -> str:
    blocks = fenced_blocks(output)
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    return blocks[0][1] if blocks else output


# Without the jail. argv: cpu seconds, address-space bytes, file-size bytes, script
_LAUNCHER = """\
import os, resource, sys
cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execv(sys.executable, [sys.executable, "-I", sys.argv[4]])
"""


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - _TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _number(args: Mapping[str, Any], key: str, default: float) -> Any:
    value = args.get(key, default)
    return None if isinstance(value, bool) else value


@register
class PythonTest(Scorer):
    name = "python_test"
    arguments = ("test", "timeout_s", "memory_mb", "max_processes")

    def __init__(self, *, allow_unsandboxed_code: bool = False) -> None:
        self.allow_unsandboxed_code = allow_unsandboxed_code

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = [] if isinstance(args.get("test"), str) and args["test"].strip() else ["'test' must be Python code"]
        timeout = _number(args, "timeout_s", DEFAULT_TIMEOUT_S)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 600:
            problems.append("'timeout_s' must be a number in (0, 600]")
        memory = _number(args, "memory_mb", DEFAULT_MEMORY_MB)
        if not isinstance(memory, int) or memory < 32:
            problems.append("'memory_mb' must be an integer ≥ 32")
        processes = _number(args, "max_processes", DEFAULT_MAX_PROCESSES)
        if not isinstance(processes, int) or not 1 <= processes <= 4096:
            problems.append("'max_processes' must be an integer in [1, 4096]")
        return problems

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        problem = await asyncio.to_thread(sandbox_problem)
        if problem is not None and not self.allow_unsandboxed_code:
            raise SandboxUnavailable(problem)
        source = f"{_PRELUDE}\n{extract_code(output)}\n\n# --- tests ---\n{args['test']}\n"
        with tempfile.TemporaryDirectory(prefix="turnout-pytest-") as tmp:
            return await run_python(
                source,
                Path(tmp),
                timeout_s=float(args.get("timeout_s", DEFAULT_TIMEOUT_S)),
                memory_mb=int(args.get("memory_mb", DEFAULT_MEMORY_MB)),
                max_processes=int(args.get("max_processes", DEFAULT_MAX_PROCESSES)),
                sandboxed=problem is None,
            )


async def run_python(
    source: str,
    workdir: Path,
    *,
    timeout_s: float,
    memory_mb: int,
    max_processes: int = DEFAULT_MAX_PROCESSES,
    sandboxed: bool = True,
) -> Score:
    """Run ``source`` as a script under the limits, in the jail (``sandboxed``) or as a plain
    child process in ``workdir``; pass iff it exits 0. ``value`` is the wall time in seconds.
    ``workdir`` holds the script and its captured output either way."""
    script, out_path, err_path = workdir / "main.py", workdir / "stdout.txt", workdir / "stderr.txt"
    script.write_text(source, encoding="utf-8")
    limits = Limits(math.ceil(timeout_s) + 1, memory_mb * 1024 * 1024, _MAX_FILE_BYTES, max_processes)
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err, script.open("rb") as code:
        proc = await _spawn(script, code, out, err, limits, sandboxed=sandboxed)
        try:
            returncode = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            await _kill(proc, sandboxed=sandboxed)
            return Score(False, time.monotonic() - started, f"timed out after {timeout_s:g} s")
        except BaseException:  # cancelled: leave nothing running
            await _kill(proc, sandboxed=sandboxed)
            raise
    elapsed = time.monotonic() - started
    if returncode == 0:
        return Score(True, elapsed)
    stderr = _tail(err_path) or _tail(out_path)
    if returncode < 0:
        reason = _signal_name(returncode)
        if -returncode == signal.SIGXCPU:
            reason += " (CPU time limit)"
        elif -returncode == signal.SIGXFSZ:
            reason += " (output too large)"
        return Score(False, elapsed, f"killed by {reason}" + (f": {stderr}" if stderr else ""))
    return Score(False, elapsed, f"exit {returncode}: {stderr}" if stderr else f"exit {returncode}")


async def _spawn(
    script: Path, code: IO[bytes], out: IO[bytes], err: IO[bytes], limits: Limits, *, sandboxed: bool
) -> asyncio.subprocess.Process:
    if sandboxed:
        bwrap = find_bwrap()
        if bwrap is None:
            raise SandboxUnavailable(f"no `bwrap` on PATH: {INSTALL_HINT}")
        argv, env, cwd = jail_command(bwrap, code.fileno(), limits), {}, None
    else:
        argv = [sys.executable, "-I", "-c", _LAUNCHER, *limits.argv()[:3], str(script)]
        env, cwd = {"PATH": os.defpath, "LC_ALL": "C.UTF-8"}, script.parent
    return await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,  # empty for bwrap: nothing of the gateway's environment goes near the jail
        stdin=asyncio.subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        pass_fds=(code.fileno(),) if sandboxed else (),
        start_new_session=True,  # its own process group, so a timeout kills its children too
    )


async def _kill(proc: asyncio.subprocess.Process, *, sandboxed: bool) -> None:
    """Kill the run. Jailed: kill the jail's init and wait for bwrap, which exits only once every
    process in the jail is gone (see ``jail``). Unjailed, or if that fails: the process group,
    which holds the script and the children that stayed in it (and bwrap, whose death ends the
    jail through --die-with-parent)."""
    if sandboxed and kill_init(proc.pid):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), _KILL_GRACE_S)
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
