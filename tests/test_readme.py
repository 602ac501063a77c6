"""The README works as written: every ``sh`` and ``python`` block, in order, on a fresh copy.

The copy is the working tree's files (tracked and untracked, not ignored) in a temporary
folder, with ``.venv`` a link to this checkout's (nothing is installed or compiled again;
``PYTHONPATH`` puts the copy's ``src`` first, since the shared venv's editable install points
here). The blocks run as one bash script (``set -euo pipefail``), so a block may use what an
earlier one set up, as a reader's shell would. What the check changes, and nothing else:

* ``curl`` is called with ``--fail-with-body``: an HTTP error fails its block, as a reader
  would notice it;
* ``:8080`` becomes a free port (and ``TURNOUT_PORT`` names it, which the example config reads),
  so the check can run beside other gateways;
* the self-hosted server the example config calls (``VLLM_URL``) is ``tests/fakes/upstream.py``,
  answering ``{"order_id": "A-17"}``; ``HOME`` is an empty folder, so no AWS credentials of this
  machine's can reach Bedrock (the routes never need it: the fake answers first).

A mark on the line before a block changes how it runs: ``<!-- readme-check: background -->``
runs it in the background and waits for ``/healthz`` (``turnout serve``);
``<!-- readme-check: skip: WHY -->`` leaves it out, and the skip list is held to a named few.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import yaml

from tests.serving import free_port, wait_http
from turnout.config import load_config
from turnout.offline.evals.cases import load_cases
from turnout.releases.files import load_task

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LANGUAGES = {"sh", "python"}  # the blocks that run; yaml, json and the rest are read, not run
_MARK = re.compile(r"<!-- readme-check: (?P<kind>[a-z]+)(?::\s*(?P<why>.*?))?\s*-->")
_FENCE = re.compile(r"^```(?P<lang>[A-Za-z0-9_+-]*)\s*$")
# The blocks left out, by their first line, and why: each does what the check must not.
SKIPPED = {"make serve": "installs into .venv (the check reuses it) and runs the whole test suite"}
ORDER_REPLY = '{"order_id": "A-17"}'  # what the fake vLLM answers: the task API's schema wants order_id


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    mark: str = ""  # "", "background" or "skip"
    why: str = ""


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks of ``markdown`` with their marks; a stray or unknown mark is an error,
    so a typo cannot quietly run (or skip) a block."""
    found: list[Block] = []
    lines = markdown.splitlines()
    pending: tuple[int, str, str] | None = None
    i = 0
    while i < len(lines):
        mark = _MARK.fullmatch(lines[i].strip())
        fence = _FENCE.match(lines[i])
        if mark:
            if mark["kind"] not in ("background", "skip"):
                raise ValueError(f"README.md:{i + 1}: unknown readme-check mark {mark['kind']!r}")
            if mark["kind"] == "skip" and not mark["why"]:
                raise ValueError(f"README.md:{i + 1}: a skip says why")
            pending = (i + 1, mark["kind"], mark["why"] or "")
        elif fence:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md:{i + 1}: a block that never closes")
            kind, why = (pending[1], pending[2]) if pending else ("", "")
            found.append(Block(i + 1, fence["lang"], "\n".join(lines[i + 1 : end]) + "\n", kind, why))
            pending, i = None, end
        elif pending and lines[i].strip():
            raise ValueError(f"README.md:{pending[0]}: a readme-check mark must come right before its block")
        i += 1
    if pending:
        raise ValueError(f"README.md:{pending[0]}: a readme-check mark with no block after it")
    return found


def script(found: list[Block], port: int) -> str:
    """One bash script running the ``sh`` and ``python`` blocks in order; each announces its
    README line on stderr first, so a failure names the block that broke."""
    parts = [
        "set -euo pipefail",
        'curl() { command curl --fail-with-body --show-error "$@"; }  # an HTTP error fails the block',
    ]
    for block in found:
        if block.lang not in LANGUAGES or block.mark == "skip":
            continue
        text = block.text.replace(":8080", f":{port}")
        parts.append(f"echo '::readme-check README.md:{block.line}' >&2")
        if block.lang == "python":
            parts.append(f"python - <<'README_PY'\n{text}README_PY")
        elif block.mark == "background":
            parts.append(f"( {text} ) > readme-background-{block.line}.log 2>&1 &")
            parts.append(_wait_for_health(port))
        else:
            parts.append(text)
    return "\n".join(parts) + "\n"


def _wait_for_health(port: int) -> str:
    # Waits on the server, not on the clock: it ends when /healthz answers or the server exits.
    return (
        f"until command curl -fs -o /dev/null http://127.0.0.1:{port}/healthz; do\n"
        '  kill -0 $! 2>/dev/null || { echo "the background block exited" >&2; exit 1; }\n'
        "  sleep 0.1\n"
        "done"
    )


def fresh_copy(dest: Path) -> Path:
    """The working tree's files as a clone would have them, plus what is not committed yet."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is gone from it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    (dest / ".home").mkdir()
    return dest


def _environment(copy: Path, port: int, upstream: str) -> dict[str, str]:
    """A reader's shell: no virtualenv on PATH yet (the README activates it), no turnout or AWS
    variables of this machine's."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(copy / ".home"),  # not this machine's: no ~/.aws credentials to reach Bedrock with
        "USER": "readme",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(copy / "src"),
        "TURNOUT_PORT": str(port),
        "VLLM_URL": upstream,
        "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe for Bedrock's credentials
    }


def _stop_group(pgid: int) -> None:
    """SIGTERM what the script started (the gateway drains), then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(150):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fresh_copy(tmp_path_factory.mktemp("checkout"))


@pytest.fixture(scope="module")
def upstream(copy: Path) -> Iterator[str]:
    """The fake vLLM as a process, answering every chat with ``ORDER_REPLY``."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.upstream", "--port", str(port)],
        cwd=copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", 30, proc)
        body = orjson.dumps({"text": [ORDER_REPLY]})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/_reply", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310 - loopback test URL
            assert resp.status == 200
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_script(text: str, copy: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        ["bash", "-c", text],
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the background gateway is stopped with it
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        _stop_group(proc.pid)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def failed_block(stderr: str) -> str:
    """The README line of the last block that started."""
    started = re.findall(r"::readme-check (README\.md:\d+)", stderr)
    return started[-1] if started else "before the first block"


# --- the README itself --------------------------------------------------------------------------


@pytest.mark.slow
def test_every_command_in_the_readme_runs_as_written(copy: Path, upstream: str) -> None:
    port = free_port()
    found = blocks((copy / "README.md").read_text())
    result = run_script(script(found, port), copy, _environment(copy, port, upstream))
    assert result.returncode == 0, f"{failed_block(result.stderr)} failed:\n{result.stderr[-4000:]}"
    ran = re.findall(r"::readme-check README\.md:(\d+)", result.stderr)
    assert len(ran) == sum(b.lang in LANGUAGES and b.mark != "skip" for b in found)
    # What the blocks promise, seen in what they printed: `default` answered by the embedded model,
    # `support-reply` by the (fake) server at VLLM_URL, the task API's checked output, the verdict.
    for promise in ("x-turnout-target: local", "x-turnout-target: qwen-vllm", '"output":{"order_id":"A-17"}'):
        assert promise in result.stdout, promise
    assert "verdict: PASS" in result.stdout
    assert (copy / ".turnout" / "turnout.db").is_file()
    assert (copy / "cost.svg").is_file() and (copy / "by-hour.svg").is_file()


def test_the_skip_list_is_small_and_named() -> None:
    marked = [b for b in blocks(README.read_text()) if b.mark == "skip"]
    skipped = {b.text.splitlines()[0].split("#")[0].strip(): b.why for b in marked}
    assert set(skipped) == set(SKIPPED), skipped
    assert all(len(why) > 20 for why in skipped.values())  # a reason, not a shrug


def test_the_readme_runs_some_of_everything() -> None:
    found = [b for b in blocks(README.read_text()) if b.lang in LANGUAGES and b.mark != "skip"]
    text = "".join(b.text for b in found)
    commands = ("check", "serve", "keys", "release", "eval", "report", "plan")
    for command in [f"turnout {c}" for c in commands] + ["curl", "sqlite3"]:
        assert command in text, command
    assert [b.mark for b in found].count("background") == 1  # one gateway, serving every later block


def test_every_task_the_readme_names_is_in_the_example_config() -> None:
    config = yaml.safe_load((ROOT / "turnout.example.yaml").read_text())
    text = "".join(b.text for b in blocks(README.read_text()) if b.lang in LANGUAGES)
    named = set(re.findall(r'(?:"model": "|model=")([\w-]+)"', text))
    named |= set(re.findall(r"(?:--task |/v1/tasks/|turnout eval |turnout release \w+ )([\w-]+)", text))
    assert named >= {"default", "support-reply", "extract-order"}, named
    assert named <= set(config["tasks"]), named - set(config["tasks"])
    for task in ("extract-order",):
        assert (ROOT / "evals" / f"{task}.jsonl").is_file()
        assert sorted(p.name for p in (ROOT / "examples" / "releases" / task).glob("*.yaml")) == ["v1.yaml", "v2.yaml"]


# --- the check fails when a command breaks --------------------------------------------------------

BROKEN = """\
# a README

```sh
echo first
```

```yaml
not: run
```

```sh
echo second
false
echo never
```
"""


def test_a_failing_command_fails_the_check_and_names_its_block(tmp_path: Path) -> None:
    result = run_script(script(blocks(BROKEN), free_port()), tmp_path, {"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert failed_block(result.stderr) == "README.md:11"
    assert result.stdout.split() == ["first", "second"]


def test_an_http_error_fails_the_check(tmp_path: Path, upstream: str) -> None:
    port = int(upstream.split(":")[-1].split("/")[0])
    readme = "```sh\ncurl -s localhost:8080/v1/models\ncurl -s localhost:8080/v1/no-such-route\n```\n"
    result = run_script(script(blocks(readme), port), tmp_path, {"PATH": "/usr/bin:/bin"})
    assert result.returncode == 22  # curl's "HTTP page not retrieved"
    assert '"fake-model"' in result.stdout  # the first command ran, on the substituted port


def test_a_background_block_that_exits_fails_the_check(tmp_path: Path) -> None:
    readme = "<!-- readme-check: background -->\n```sh\nexit 3\n```\n\n```sh\necho never\n```\n"
    result = run_script(script(blocks(readme), free_port()), tmp_path, {"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "the background block exited" in result.stderr
    assert "never" not in result.stdout


# --- reading the marks ----------------------------------------------------------------------------


def test_blocks_keep_their_line_language_and_mark() -> None:
    text = "intro\n\n<!-- readme-check: skip: needs a GPU here -->\n```sh\nnvidia-smi\n```\n```python\nprint(1)\n```\n"
    assert blocks(text) == [
        Block(4, "sh", "nvidia-smi\n", "skip", "needs a GPU here"),
        Block(7, "python", "print(1)\n"),
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("<!-- readme-check: skipp: typo -->\n```sh\nx\n```\n", "unknown readme-check mark 'skipp'"),
        ("<!-- readme-check: skip -->\n```sh\nx\n```\n", "a skip says why"),
        ("<!-- readme-check: background -->\ntext between\n```sh\nx\n```\n", "right before its block"),
        ("```sh\nx\n", "never closes"),
        ("```sh\nx\n```\n<!-- readme-check: background -->\n", "no block after it"),
    ],
)
def test_a_mark_that_cannot_be_honoured_is_an_error(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        blocks(text)


# --- the files the README shows --------------------------------------------------------------------


def test_a_file_the_readme_shows_is_the_file_shipped() -> None:
    """A block that starts with ``# path`` of a shipped file shows that file (its own leading
    comments aside); the golden-set lines shown are lines of the shipped golden set."""
    shown = 0
    for block in blocks(README.read_text()):
        first, _, rest = block.text.partition("\n")
        path = ROOT / first.removeprefix("# ").strip()
        if block.lang == "yaml" and first.startswith("# ") and path.is_file():
            shipped = "".join(line for line in path.read_text().splitlines(True) if not line.startswith("#"))
            assert rest == shipped, path
            shown += 1
        if block.lang == "json" and first.startswith('{"id":'):
            golden = (ROOT / "evals" / "extract-order.jsonl").read_text().splitlines()
            assert all(line in golden for line in block.text.splitlines())
            shown += 1
    assert shown == 2


def test_the_golden_set_and_the_releases_load_as_turnout_reads_them() -> None:
    env = {"HOME": "/nonexistent"}  # every ${VAR:-default} falls back to its default
    config = load_config(str(ROOT / "turnout.example.yaml"), env=env)
    assert set(config.tasks) == {"default", "support-reply", "extract-order"}
    assert config.tenants["acme"].keys == ["sk-trial-acme"]
    cases = load_cases(ROOT / "evals" / "extract-order.jsonl")
    assert [c.id for c in cases] == ["order-1", "order-2", "order-3"]
    releases = load_task(config, "extract-order")
    assert sorted(releases) == ["v1", "v2"]
