"""python_test: code from the output runs against the case's tests in a limited child process."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from turnout.offline.evals import Case, Expectation, Score, build_scorers
from turnout.offline.evals.sandbox import extract_code

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX resource limits")

CASE = Case(
    id="py", expect=(Expectation("python_test", {"test": "pass"}),), messages=[{"role": "user", "content": "."}]
)
TEST = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


async def run(output: str, test: str = TEST, **args: Any) -> Score:
    scorer = build_scorers()["python_test"]
    full = {"test": test, **args}
    assert scorer.check(full) == []
    return await scorer.score(output, CASE, full)


def test_extract_code_prefers_the_python_block() -> None:
    out = "Here:\n```text\nnot code\n```\n```python\ndef f():\n    return 1\n```\nand ```py\nx = 2\n```"
    assert extract_code(out) == "def f():\n    return 1\n"
    assert extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert extract_code("def f(): return 1") == "def f(): return 1"


async def test_passing_code_passes() -> None:
    s = await run("Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nThis adds.")
    assert s.passed and s.value is not None and s.value < 10


async def test_whole_output_is_code_without_a_fence() -> None:
    assert (await run("def add(a, b):\n    return a + b\n")).passed


async def test_failing_assertion_fails_with_the_traceback_tail() -> None:
    s = await run("```python\ndef add(a, b):\n    return a - b\n```")
    assert not s.passed and s.detail.startswith("exit 1:") and "AssertionError" in s.detail


async def test_syntax_error_fails() -> None:
    s = await run("```python\ndef add(a, b) return a + b\n```")
    assert not s.passed and "SyntaxError" in s.detail


async def test_infinite_loop_is_killed_at_the_timeout() -> None:
    t0 = time.monotonic()
    s = await run("```python\ndef add(a, b):\n    while True:\n        pass\n```", timeout_s=1)
    assert not s.passed and s.detail == "timed out after 1 s"
    assert time.monotonic() - t0 < 5


async def test_sleeping_children_are_killed_too() -> None:
    # a child that outlives its parent would hold the run open; the process group is killed
    code = "import os, time\nif os.fork() == 0:\n    time.sleep(60)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    s = await run(f"```python\n{code}```", test="pass", timeout_s=1)
    assert not s.passed and "timed out" in s.detail and time.monotonic() - t0 < 5


async def test_cpu_limit_backs_up_the_wall_clock() -> None:
    # RLIMIT_CPU is timeout + 1 s: it ends a spinning child even if the parent's wall-clock
    # kill came late (a blocked event loop); read it from inside the child
    code = "import resource\nassert resource.getrlimit(resource.RLIMIT_CPU) == (3, 3)\n"
    assert (await run(code, test="pass", timeout_s=2)).passed


async def test_big_allocation_fails_under_the_memory_limit() -> None:
    s = await run("```python\nbuf = bytearray(1024 * 1024 * 1024)\n```", test="assert len(buf) > 0", memory_mb=128)
    assert not s.passed and "MemoryError" in s.detail


async def test_allocation_within_the_limit_succeeds() -> None:
    s = await run("```python\nbuf = bytearray(32 * 1024 * 1024)\n```", test="assert len(buf) > 0", memory_mb=256)
    assert s.passed, s.detail


async def test_network_is_disabled_best_effort() -> None:
    code = (
        "import socket\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9))\n"
        "except OSError as e:\n    assert 'disabled' in str(e)\n"
        "else:\n    raise SystemExit(3)\n"
    )
    assert (await run(code, test="pass")).passed


async def test_runs_isolated_with_an_empty_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_SECRET_FOR_TEST", "leak")
    code = "import os, sys\nassert 'TURNOUT_SECRET_FOR_TEST' not in os.environ\nassert sys.flags.isolated == 1\n"
    assert (await run(code, test="pass")).passed


async def test_huge_output_is_cut_off() -> None:
    s = await run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", test="pass", timeout_s=5)
    # Python ignores SIGXFSZ, so the write past RLIMIT_FSIZE fails with EFBIG instead
    assert not s.passed and "File too large" in s.detail
