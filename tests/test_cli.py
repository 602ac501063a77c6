"""The `turnout` command, through click's CliRunner: check, serve's config handling, help; and
a real `turnout serve` process on a port already held."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import turnout.serving.server
from turnout.cli.main import main
from turnout.config import Config, load_config

KEY = "sk-acme-0123456789"

GOOD = f"""
targets:
  vllm: {{provider: openai, base_url: "http://vllm:8000/v1", model: m}}
  onprem: {{provider: openai, base_urls: ["http://a:8000/v1", "http://b:8000/v1"], model: m}}
tenants:
  acme: {{keys: ["{KEY}"], data_classes: [public, internal, restricted]}}
policy:
  restricted: {{targets: [onprem]}}
tasks:
  chat: {{route: [vllm, onprem]}}
"""

MISSING_TARGET = """
targets:
  vllm: {provider: openai, base_url: "http://vllm:8000/v1", model: m}
tasks:
  chat: {route: [vllm, ghost]}
"""


def write(tmp_path: Path, text: str, name: str = "turnout.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={"TURNOUT_CONFIG": None, **(env or {})})


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Config]:
    """Replace the server's run() so nothing binds a socket; record what it was given."""
    calls: list[Config] = []

    def run(config: Config, source: str | None = None, loader: object = None) -> None:
        calls.append(config)

    monkeypatch.setattr(turnout.serving.server, "run", run)
    return calls


# --- check --------------------------------------------------------------------------------


def test_check_on_a_good_file_prints_ok(tmp_path: Path) -> None:
    result = invoke("check", "--config", write(tmp_path, GOOD))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 2 target(s), 1 task(s), 1 tenant(s)")
    assert "note:" not in result.stdout  # restricted has a policy
    assert result.stderr == ""


def test_check_notes_that_restricted_data_is_refused_without_a_policy(tmp_path: Path) -> None:
    result = invoke("check", "-c", write(tmp_path, MISSING_TARGET.replace("vllm, ghost", "vllm")))
    assert result.exit_code == 0, result.output
    assert "(no tenants: anonymous access on loopback)" in result.stdout
    assert "note: no policy for 'restricted' data" in result.stdout


def test_check_without_a_config_checks_the_built_in_one() -> None:
    result = invoke("check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 1 target(s), 1 task(s), 0 tenant(s)")


def test_check_reads_the_config_path_from_the_environment(tmp_path: Path) -> None:
    result = invoke("check", env={"TURNOUT_CONFIG": write(tmp_path, GOOD)})
    assert result.exit_code == 0, result.output
    assert "2 target(s)" in result.stdout


def test_check_names_a_route_entry_that_is_not_a_target(tmp_path: Path) -> None:
    path = write(tmp_path, MISSING_TARGET)
    result = invoke("check", "--config", path)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"turnout: {path} is invalid:" in result.stderr
    assert "  tasks.chat.route[1]: unknown target 'ghost'" in result.stderr.splitlines()


def test_check_prints_every_problem(tmp_path: Path) -> None:
    text = MISSING_TARGET.replace("model: m}", "model: m, colour: red}") + "bogus: 1\n"
    result = invoke("check", "--config", write(tmp_path, text))
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert "  targets.vllm.colour: unknown key" in lines
    assert "  bogus: unknown key" in lines
    assert "  tasks.chat.route[1]: unknown target 'ghost'" in lines


def test_check_names_a_missing_environment_variable(tmp_path: Path) -> None:
    text = GOOD.replace(KEY, "${TURNOUT_TEST_UNSET_KEY}")
    result = invoke("check", "--config", write(tmp_path, text))
    assert result.exit_code == 1
    assert "  tenants.acme.keys[0]: environment variable TURNOUT_TEST_UNSET_KEY is not set" in result.stderr


def test_check_on_a_missing_file(tmp_path: Path) -> None:
    result = invoke("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


# --- help ---------------------------------------------------------------------------------------


def test_main_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    assert "check" in result.stdout
    assert "serve" in result.stdout
    assert invoke("-h").stdout == result.stdout


def test_serve_help_mentions_its_options() -> None:
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    for text in ("--config", "-c", "--host", "--port", "server.host", "server.port", ".turnout"):
        assert text in result.stdout


def test_check_help_mentions_its_options() -> None:
    result = invoke("check", "--help")
    assert result.exit_code == 0
    assert "--config" in result.stdout
    assert "key path" in result.stdout


def test_check_help_says_what_workers_checks() -> None:
    """`check` starts no worker: its --workers checks the config for `serve --workers`, and
    its help no longer sends the reader to 'turnout check --workers' from that very option."""
    check = " ".join(invoke("check", "--help").stdout.split())
    assert "Check the config as 'turnout serve --workers N' would run it" in check
    assert "see 'turnout check --workers'" not in check
    assert "Worker processes on one socket" in " ".join(invoke("serve", "--help").stdout.split())


def commands(group: click.Group, path: str = "") -> dict[str, click.Command]:
    """Every command a user can run, by its words (``keys create``)."""
    found: dict[str, click.Command] = {}
    for name, command in group.commands.items():
        words = f"{path} {name}".strip()
        found |= commands(command, words) if isinstance(command, click.Group) else {words: command}
    return found


def test_every_command_the_readme_says_takes_config_does() -> None:
    """The README: the CLI takes --config on every command but those it names as reading none."""
    without = sorted(w for w, c in commands(main).items() if not any("--config" in p.opts for p in c.params))
    assert without == ["safety scan"]
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert "on every command but `safety scan`, which reads no config" in readme


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.stdout


# --- serve ---------------------------------------------------------------------------------------


def test_serve_with_an_invalid_config_exits_1_without_starting(tmp_path: Path, served: list[Config]) -> None:
    result = invoke("serve", "--config", write(tmp_path, MISSING_TARGET))
    assert result.exit_code == 1
    assert "  tasks.chat.route[1]: unknown target 'ghost'" in result.stderr
    assert served == []


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_port_in_use_says_so_in_one_line_and_exits_1_before_starting(tmp_path: Path, workers: str) -> None:
    config = write(tmp_path, GOOD)
    env = {k: v for k, v in os.environ.items() if k != "TURNOUT_CONFIG"}
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "turnout", "serve", "--config", config, "--port", str(port), "--workers", workers],
            cwd=tmp_path,
            env={**env, "PYTHONUNBUFFERED": "1"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    # One line, and nothing logged before it: no "listening", no start-up summary, no traceback.
    assert done.stderr == f"turnout: cannot listen on 127.0.0.1:{port}: address already in use\n"
    assert done.stdout == ""
    assert done.returncode == 1  # a command that cannot do what it was asked (uvicorn's was 3)
    assert not (tmp_path / ".turnout").exists()  # nothing started: no ledger was opened


def test_serve_runs_the_loaded_config(tmp_path: Path, served: list[Config]) -> None:
    result = invoke("serve", "--config", write(tmp_path, GOOD))
    assert result.exit_code == 0, result.output
    [config] = served
    assert set(config.targets) == {"vllm", "onprem"}
    assert config.server.host == "127.0.0.1"
    assert config.server.port == 8080


def test_serve_host_and_port_override_the_file(tmp_path: Path, served: list[Config]) -> None:
    result = invoke("serve", "--config", write(tmp_path, GOOD), "--host", "0.0.0.0", "--port", "9999")
    assert result.exit_code == 0, result.output
    [config] = served
    assert (config.server.host, config.server.port) == ("0.0.0.0", 9999)
    assert config.tenants["acme"].keys == [KEY]


# Every section a deployment may set, prices of both forms among them: a validator that tells
# forms apart by which fields were given must see the file's fields, not the defaults.
RICH = f"""
server: {{admin_key: "admin-0123456789abcdef", shutdown_grace_s: 3}}
targets:
  vllm:
    {{provider: openai, base_url: "http://vllm:8000/v1", model: m, price: {{input_per_mtok: 0.1, output_per_mtok: 1}}}}
  cloud: {{provider: openai, base_url: "https://api.example.com/v1", model: m}}
tenants:
  acme: {{keys: ["{KEY}"], data_classes: [public, internal], limits: {{rpm: 60, usd_per_day: 5}}}}
tasks:
  chat: {{route: [vllm, cloud], cache: {{ttl_s: 60, classes: [public]}}}}
prices:
  - effective: "2025-01-01"
    targets:
      cloud: &managed {{input_per_mtok: 1.0, output_per_mtok: 2.0}}
      vllm: {{gpu_hour_usd: 3.0, gpus: 2, schedule: {{"8-19": 3}}, allocation: tokens, tokens_per_s: 900}}
  - effective: "2026-01-01"
    targets:
      cloud: *managed
retention:
  rules:
    - {{ledger_days: 30}}
    - {{tenant: acme, task: chat, cache_ttl_s: 30}}
"""


def test_serve_port_over_a_file_with_every_section_serves_that_file(tmp_path: Path, served: list[Config]) -> None:
    path = write(tmp_path, RICH)
    result = invoke("serve", "--config", path, "--port", "9999")
    assert result.exit_code == 0, result.output
    [config] = served
    expected = load_config(path).model_dump()
    expected["server"]["port"] = 9999
    assert config.model_dump() == expected


def test_serve_without_a_config_runs_the_default(served: list[Config]) -> None:
    result = invoke("serve")
    assert result.exit_code == 0, result.output
    [config] = served
    assert config.tasks["default"].route == ["local"]


def test_serve_refuses_a_public_host_without_tenants(served: list[Config]) -> None:
    result = invoke("serve", "--host", "0.0.0.0")
    assert result.exit_code == 1
    assert "server.host: '0.0.0.0' is not loopback" in result.stderr
    assert served == []


def test_serve_refuses_a_port_out_of_range(served: list[Config]) -> None:
    result = invoke("serve", "--port", "70000")
    assert result.exit_code == 1
    assert "server.port:" in result.stderr
    assert served == []


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1\n", "a control character"),
        ("127.0.0.1 ", "a space"),
        ("", "is empty"),
        ("http://127.0.0.1:8080", "is a URL"),
        ("127.0.0.1:8080", "a port goes in server.port"),
        ("[::1]", "without brackets"),
        ("999.1.1.1", "not an IPv4 address"),
        ("gate way", "a space"),
    ],
)
def test_check_and_serve_refuse_a_host_no_socket_can_bind(
    host: str, says: str, tmp_path: Path, served: list[Config]
) -> None:
    """`check` passed these and `serve` then failed at bind ("name or service not known"); an
    empty host bound every interface. Both now refuse them, naming server.host."""
    path = write(tmp_path, GOOD)
    with open(path, "a") as file:
        file.write(f"server: {{host: {json.dumps(host)}}}\n")  # a JSON string is a YAML one
    for command in ("check", "serve"):
        result = invoke(command, "--config", path)
        assert result.exit_code == 1, result.output
        assert "server.host: " in result.stderr and says in result.stderr
    result = invoke("serve", "--config", write(tmp_path, GOOD, "other.yaml"), "--host", host)
    assert result.exit_code == 1 and says in result.stderr
    assert served == []


@pytest.mark.parametrize("host", ["::1", "fe80::1%lo", "gateway.internal", "my_gateway", "localhost."])
def test_serve_takes_addresses_and_host_names(host: str, tmp_path: Path, served: list[Config]) -> None:
    result = invoke("serve", "--config", write(tmp_path, GOOD), "--host", host)
    assert result.exit_code == 0, result.output
    assert served[0].server.host == host


def test_serve_refuses_a_base_url_with_a_bad_port_before_it_starts(tmp_path: Path, served: list[Config]) -> None:
    """It started and then failed its start-up with a traceback ("Port could not be cast")."""
    path = write(tmp_path, GOOD.replace("http://vllm:8000/v1", "http://vllm:80OO/v1"))
    result = invoke("serve", "--config", path)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "targets.vllm: base URL has a host or port no HTTP client takes" in result.stderr
    assert served == []


def test_serve_refuses_a_non_integer_port(served: list[Config]) -> None:
    result = invoke("serve", "--port", "eighty")
    assert result.exit_code == 2  # click's usage error
    assert served == []


def test_serve_on_a_port_in_use_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(config: Config, source: str | None = None, loader: object = None) -> None:
        raise OSError(98, "Address already in use")

    monkeypatch.setattr(turnout.serving.server, "run", run)
    result = invoke("serve")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stderr == "turnout: Address already in use\n"


JUDGED = """
targets:
  vllm: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: m}
tasks:
  qa: {route: [vllm]}
releases: {path: ./releases, evals_path: ./evals, store_path: ./.turnout/releases.db}
"""


@pytest.fixture
def judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A task with a release and a golden set whose second case a judge scores (no target)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "releases" / "qa").mkdir(parents=True)
    (tmp_path / "releases" / "qa" / "v1.yaml").write_text("target: vllm\nprompt:\n  user: 'Hi'\n")
    (tmp_path / "evals").mkdir()
    hi = '"messages": [{"role": "user", "content": "hi"}]'
    (tmp_path / "evals" / "qa.jsonl").write_text(
        f'{{"id": "a", {hi}, "expect": [{{"scorer": "contains", "value": "x"}}]}}\n'
        f'{{"id": "b", {hi}, "expect": [{{"scorer": "judge", "rubric": "ok"}}]}}\n'
    )
    return write(tmp_path, JUDGED)


def test_eval_refuses_a_judge_target_the_config_lacks_before_any_case_runs(judged: str) -> None:
    # A typo used to run every case: each judge answered "judge vlm failed: KeyError", a failed gate.
    result = invoke("eval", "qa", "--candidate", "v1", "--judge-target", "vlm", "-c", judged)
    assert result.exit_code == 2
    assert "--judge-target: no target 'vlm' in the config (targets: vllm)" in result.output
    assert not Path(".turnout").exists()  # nothing opened, nothing asked


def test_eval_refuses_a_judged_case_without_a_target_before_any_case_runs(judged: str) -> None:
    result = invoke("eval", "qa", "--candidate", "v1", "-c", judged)
    assert result.exit_code == 1
    assert "case 'b' (line 2): a judge expectation with no target: give --judge-target" in result.stderr
    assert "Traceback" not in result.output and not Path(".turnout").exists()
