"""``python_test``: run the code in an output against given tests, in a child process with
limits.

    {"scorer": "python_test", "test": "assert add(2, 3) == 5", "timeout_s": 10, "memory_mb": 512}

The code is the first ```python (or ```py) fenced block of the output, else the first fenced
block of any kind, else the whole output. It is written, followed by the test code, to one file
in a fresh temporary directory, and run there as ``python -I main.py`` (isolated mode: no
PYTHON* environment variables, no user site-packages, the script's directory not on sys.path)
with an empty environment. The case passes iff that process exits 0.

The limits are set with ``resource.setrlimit`` in the child before the code runs, by a tiny
launcher (``python -I -c``) that then ``exec``s the script; limits survive ``exec``. Not a
``preexec_fn``: the gateway may have threads running (a local model's worker, exporters), and
Python code between fork and exec can deadlock on a lock another thread held at the fork.

* wall clock: ``timeout_s`` (default 10); past it the whole process group is killed;
* CPU time: RLIMIT_CPU of ``timeout_s`` + 1 s, a backstop for the wall clock;
* memory: RLIMIT_AS of ``memory_mb`` (default 512): allocations past it raise MemoryError;
* files: RLIMIT_FSIZE of 8 MiB (stdout and stderr go to files too), no core dumps.

**Network: best effort only.** A prelude replaces ``socket.getaddrinfo`` and the connect/send
methods of ``socket.socket`` so that accidental network use fails, but code that means to can
undo that (``import _socket``). This is a harness for your own golden sets, not a jail for
hostile code: run evals of untrusted outputs inside a container or VM without a network.
POSIX only (``resource``).
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
from typing import Any

from turnout.offline.evals.cases import Case
from turnout.offline.evals.scorers import fenced_blocks
from turnout.offline.evals.scoring import Score, Scorer, register

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_MB = 512
_MAX_FILE_BYTES = 8 * 1024 * 1024
_TAIL = 600  # characters of stderr/stdout kept in the detail

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


# argv: cpu seconds, address-space bytes, file-size bytes, script
_LAUNCHER = """\
import os, resource, sys
cpu, mem, fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
os.execv(sys.executable, [sys.executable, "-I", sys.argv[4]])
"""


def _command(script: Path, timeout_s: float, memory_mb: int) -> list[str]:
    cpu = math.ceil(timeout_s) + 1
    limits = [str(cpu), str(memory_mb * 1024 * 1024), str(_MAX_FILE_BYTES)]
    return [sys.executable, "-I", "-c", _LAUNCHER, *limits, str(script)]


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


@register
class PythonTest(Scorer):
    name = "python_test"

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = [] if isinstance(args.get("test"), str) and args["test"].strip() else ["'test' must be Python code"]
        timeout = args.get("timeout_s", DEFAULT_TIMEOUT_S)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= 600:
            problems.append("'timeout_s' must be a number in (0, 600]")
        memory = args.get("memory_mb", DEFAULT_MEMORY_MB)
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 32:
            problems.append("'memory_mb' must be an integer ≥ 32")
        return problems

    async def score(self, output: str, case: Case, args: Mapping[str, Any]) -> Score:
        timeout_s = float(args.get("timeout_s", DEFAULT_TIMEOUT_S))
        memory_mb = int(args.get("memory_mb", DEFAULT_MEMORY_MB))
        source = f"{_PRELUDE}\n{extract_code(output)}\n\n# --- tests ---\n{args['test']}\n"
        with tempfile.TemporaryDirectory(prefix="turnout-pytest-") as tmp:
            return await run_python(source, Path(tmp), timeout_s=timeout_s, memory_mb=memory_mb)


async def run_python(source: str, workdir: Path, *, timeout_s: float, memory_mb: int) -> Score:
    """Run ``source`` as a script in ``workdir`` under the limits; pass iff it exits 0. ``value``
    is the wall time in seconds."""
    script, out_path, err_path = workdir / "main.py", workdir / "stdout.txt", workdir / "stderr.txt"
    script.write_text(source, encoding="utf-8")
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *_command(script, timeout_s, memory_mb),
            cwd=workdir,
            env={"PATH": os.defpath, "LC_ALL": "C.UTF-8"},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            returncode = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            elapsed = time.monotonic() - started
            return Score(False, elapsed, f"timed out after {timeout_s:g} s")
        except BaseException:  # cancelled: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
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
