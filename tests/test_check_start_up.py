"""A walk through the gateway's start-up: everything it refuses on a config, ``turnout check``
refuses too (exit 1, a message naming the key path, no traceback), and so does ``turnout
serve`` before it binds.

Each case is proved twice: the real start-up (the log filter's redactor, as ``server.run``
keys it, then ``Runtime.start``) fails on it, and ``turnout check`` refuses it. For the rules
now checked when the config loads, start-up is handed the config as the loader accepted it
before (the value set after validation), so the walk shows that start-up refused it then.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from pydantic import BaseModel

import turnout.serving.server
from turnout.cli.main import main
from turnout.cli.preflight import preflight
from turnout.config import Config, validate
from turnout.errors import ConfigError
from turnout.privacy.redact import Redactor
from turnout.serving.runtime import Runtime, redaction_key

KEY = "sk-acme-0123456789"
GOOD_REDACTION_KEY = "a-redaction-key-of-32-characters"
SHORT = "123456789"  # 9 bytes: the key the gateway crashed on

RELEASE = "target: up\nprompt:\n  user: 'Reply to: {{ text }}'\n  variables: {text: str}\n"


def base() -> dict[str, Any]:
    """A config that starts: an upstream that refuses connections (health is only a warning)
    and the default paths, under the test's working directory."""
    return {
        "targets": {"up": {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
        "tasks": {"chat": {"route": ["up"]}},
    }


def merged(raw: dict[str, Any], **sections: dict[str, Any]) -> dict[str, Any]:
    return {**raw, **sections}


TENANT = {"acme": {"keys": [KEY], "limits": {"rpm": 60}}}


@dataclass(frozen=True)
class Case:
    """``raw`` fails start-up; or, with ``loaded``, ``raw`` passes and start-up is given it with
    ``loaded = (key path, value)`` set after validation (a rule the loader checks now)."""

    id: str
    says: str  # in check's message: the key path (or variable, or file)
    start_fails: str  # matched against the exception start-up raises
    raw: dict[str, Any] = field(default_factory=base)
    loaded: tuple[tuple[str, ...], Any] | None = None
    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path → content ("/" at the end: a directory)
    hide: tuple[str, str] | None = None  # (driver package, turnout module that imports it): not installed


CASES = [
    Case(
        "redaction key in the config, 9 bytes",
        "capture.redaction_key: needs at least 16 bytes, got 9",
        "redaction key needs at least 16 bytes",
        loaded=(("capture", "redaction_key"), SHORT),
    ),
    Case(
        "redaction key from TURNOUT_REDACTION_KEY, 9 bytes",
        "TURNOUT_REDACTION_KEY (capture.redaction_key is unset): needs at least 16 bytes, got 9",
        "redaction key needs at least 16 bytes",
        env={"TURNOUT_REDACTION_KEY": SHORT},
    ),
    Case(
        "a release directory of no task",
        "releases/ghost: no task 'ghost' in the config",
        "no task 'ghost'",
        files={"releases/ghost/v1.yaml": RELEASE},
    ),
    Case(
        "a release file that routes to a target off the task's route",
        "releases/chat/v1.yaml: target:",
        "v1.yaml: target:",
        raw=merged(base(), targets={**base()["targets"], "other": base()["targets"]["up"]}),
        files={"releases/chat/v1.yaml": RELEASE.replace("target: up", "target: other")},
    ),
    Case(
        "a PostgreSQL ledger without a DSN",
        "store.dsn: required when store.kind is postgres",
        r"store\.dsn: required",
        loaded=(("store", "kind"), "postgres"),
    ),
    Case(
        "a PostgreSQL DSN of another scheme",
        "store.dsn: must start with postgresql://",
        "scheme",
        raw=merged(base(), store={"kind": "postgres", "dsn": "postgresql://turnout@127.0.0.1:5432/test"}),
        loaded=(("store", "dsn"), "mysql://turnout@127.0.0.1/test"),
    ),
    Case(
        "credentials in a base URL and an api_key",
        "targets.up.api_key: give credentials in base_url or as api_key, not both",
        "not both",
        raw=merged(base(), targets={"up": {**base()["targets"]["up"], "base_url": "http://u:pw@127.0.0.1:9/v1"}}),
        loaded=(("targets", "up", "api_key"), "sk-upstream"),
    ),
    Case(
        "a local model file that is not there",
        "targets.small.model_path: no model file at",
        "no model file",
        raw={
            "targets": {"small": {"provider": "local", "model_path": "models/missing.gguf"}},
            "tasks": {"chat": {"route": ["small"]}},
        },
    ),
    Case(
        "a Redis URL the limiter cannot parse",
        "limits.redis_url: must start with redis://, rediss:// or unix://",
        "Redis URL must specify",
        raw=merged(base(), tenants=TENANT, limits={"backend": "redis", "redis_url": "redis://127.0.0.1:6379"}),
        loaded=(("limits", "redis_url"), "127.0.0.1:6379"),
    ),
    Case(
        "the ledger's directory under a file",
        "store.path: cannot create",
        "a-file",
        raw=merged(base(), store={"path": "a-file/ledger.db"}),
        files={"a-file": "not a directory"},
    ),
    Case(
        "the capture store is a directory",
        "store.path (the capture store beside the ledger):",
        "capture",
        raw=merged(base(), store={"path": "data/ledger.db"}, capture={"mode": "redacted"}),
        files={"data/capture.db/": ""},
    ),
    Case(
        "the capture store is a directory, where only the retention purge audits there",
        "store.path (the capture store beside the ledger): data/capture.db is a directory",
        "capture",
        raw=merged(base(), store={"path": "data/ledger.db"}, retention={"rules": [{"ledger_days": 30}]}),
        files={"data/capture.db/": ""},
    ),
    Case(
        "the review queue of an escalation to a person, its store under a file",
        "releases.store_path: cannot create a-file/releases.db: a-file is not a directory",
        "a-file",
        raw=merged(
            base(),
            releases={"store_path": "a-file/releases.db"},
            tasks={"chat": {"route": ["up"], "output": {"max_chars": 100, "escalate": {"to": "human"}}}},
        ),
        files={"a-file": "not a directory"},
    ),
    Case(
        "the in-process cache's purge log beside a release store under a file",
        "releases.store_path (the cache purge log beside it): cannot create",
        "a-file",
        raw=merged(
            base(),
            releases={"store_path": "a-file/releases.db"},
            tasks={"chat": {"route": ["up"], "cache": {"ttl_s": 60, "classes": ["public"]}}},
        ),
        files={"a-file": "not a directory"},
    ),
    Case(
        "the shadow store beside the release store is a directory",
        "releases.store_path (the shadow store beside it):",
        "shadow",
        raw=merged(base(), releases={"store_path": "data/releases.db"}),
        files={"data/shadow.db/": "", "releases/chat/v1.yaml": RELEASE},
    ),
    Case(
        "the issued keys' directory under a file",
        "limits.keys_path: cannot create",
        "a-file",
        raw=merged(base(), tenants=TENANT, limits={"keys_path": "a-file/keys.db"}),
        files={"a-file": "not a directory"},
    ),
    Case(
        "the release store's directory under a file",
        "releases.store_path: cannot create",
        "a-file",
        raw=merged(base(), releases={"store_path": "a-file/releases.db"}),
        files={"a-file": "not a directory", "releases/chat/v1.yaml": RELEASE},
    ),
    Case(
        "the ledger's spill journal directory is a file",
        "store.spill_dir: spill is not a directory",
        "spill",
        raw=merged(base(), store={"spill_dir": "spill"}),
        files={"spill": "not a directory"},
    ),
    Case(
        "the ledger's spill journal directory under a file",
        "store.spill_dir: cannot create",
        "a-file",
        raw=merged(base(), store={"spill_dir": "a-file/spill"}),
        files={"a-file": "not a directory"},
    ),
    Case(
        "PROMETHEUS_MULTIPROC_DIR that is not a directory",
        "PROMETHEUS_MULTIPROC_DIR (observability.metrics is on): ",
        "PROMETHEUS_MULTIPROC_DIR",
        env={"PROMETHEUS_MULTIPROC_DIR": "no-such-dir"},
    ),
    Case(
        "tracing without the OpenTelemetry SDK",
        "observability.otlp_endpoint: otlp needs opentelemetry: pip install 'turnout[observability]'",
        r"observability\.otlp_endpoint",
        raw=merged(base(), observability={"otlp_endpoint": "http://127.0.0.1:9"}),
        hide=("opentelemetry", "turnout.observe.tracing"),
    ),
    Case(
        "a PostgreSQL ledger without asyncpg",
        "store.kind: postgres needs asyncpg: pip install 'turnout[postgres]'",
        r"store\.kind: postgres needs asyncpg",
        raw=merged(base(), store={"kind": "postgres", "dsn": "postgresql://turnout@127.0.0.1:5432/test"}),
        hide=("asyncpg", "turnout.ledger.postgres"),
    ),
    Case(
        "a target's tokenizer without the tokenizers package",
        "targets.up.tokenizer: tok.json needs the tokenizers package: pip install 'turnout[tokenizers]'",
        "needs the tokenizers package",
        raw=merged(base(), targets={"up": {**base()["targets"]["up"], "tokenizer": "tok.json"}}),
        files={"tok.json": "{}"},
        hide=("tokenizers", "turnout.control.tokens"),
    ),
    Case(
        "a target's tokenizer file that is not there",
        "targets.up.tokenizer: models/missing.json is not a file",
        r"missing\.json is not a file",
        raw=merged(base(), targets={"up": {**base()["targets"]["up"], "tokenizer": "models/missing.json"}}),
    ),
    Case(
        "a target's tokenizer file that is no tokenizer",
        "targets.up.tokenizer: tok.json is not a tokenizer.json the tokenizers package can load",
        "the tokenizers package can load",
        raw=merged(base(), targets={"up": {**base()["targets"]["up"], "tokenizer": "tok.json"}}),
        files={"tok.json": '{"not": "a tokenizer"}'},
    ),
    Case(
        "Redis limits without the redis package",
        "limits.backend: redis needs redis: pip install 'turnout[redis]'",
        r"limits\.backend: redis needs redis",
        raw=merged(base(), tenants=TENANT, limits={"backend": "redis"}),
        hide=("redis", "turnout.control.keys.redis"),
    ),
]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: the default ./.turnout and ./releases land here."""
    monkeypatch.chdir(tmp_path)
    for name in ("TURNOUT_REDACTION_KEY", "PROMETHEUS_MULTIPROC_DIR", "TURNOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def arrange(case: Case, where: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for relative, content in case.files.items():
        path = where / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if relative.endswith("/"):
            path.mkdir()
        else:
            path.write_text(content)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.hide is not None:
        package, importer = case.hide
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")] + [package]:
            monkeypatch.setitem(sys.modules, name, None)  # `import package` raises ImportError
        monkeypatch.delitem(sys.modules, importer, raising=False)


def as_written(case: Case) -> dict[str, Any]:
    """The config file check is given."""
    if case.loaded is None:
        return case.raw
    path, value = case.loaded
    raw: dict[str, Any] = copy.deepcopy(case.raw)
    node = raw
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return raw


def as_loaded_before(case: Case) -> Config:
    """The config start-up is given: ``raw`` validated, then the loaded value set unchecked."""
    config = validate(case.raw)
    if case.loaded is None:
        return config
    path, value = case.loaded
    unchecked: Config = _set(config, path, value)
    return unchecked


def _set(node: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, BaseModel):
        return node.model_copy(update={head: _set(getattr(node, head), rest, value)})
    return {**node, head: _set(node[head], rest, value)}


async def start_up(config: Config) -> None:
    """What ``turnout serve`` does with a loaded config before it takes requests."""
    Redactor(redaction_key(config))  # server.run keys its log filter first
    runtime = Runtime(config)
    await runtime.start()
    await runtime.aclose()


def check(where: Path, raw: dict[str, Any], *args: str) -> Result:
    path = where / "turnout.yaml"
    path.write_text(yaml.safe_dump(raw))
    return CliRunner().invoke(main, [*args, "--config", str(path)])


def refused(result: Result, says: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert "Traceback" not in result.output
    assert says in result.stderr, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_start_up_refuses_it(case: Case, here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrange(case, here, monkeypatch)
    with pytest.raises(Exception, match=case.start_fails):  # each case its own way
        await start_up(as_loaded_before(case))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_check_refuses_it(case: Case, here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrange(case, here, monkeypatch)
    refused(check(here, as_written(case), "check"), case.says)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_serve_refuses_it_before_binding(case: Case, here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[Config] = []
    monkeypatch.setattr(turnout.serving.server, "run", runs.append)
    arrange(case, here, monkeypatch)
    refused(check(here, as_written(case), "serve"), case.says)
    assert runs == []


def everything_on() -> dict[str, Any]:
    return merged(
        base(),
        tenants=TENANT,
        capture={"mode": "redacted", "redaction_key": GOOD_REDACTION_KEY},
        tasks={"chat": {"route": ["up"], "review_rate": 0.5}},
        observability={"metrics": True},
    )


async def test_a_config_with_everything_on_passes_check_and_starts(here: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No false refusals: ledger, capture, reviews, keys, limits and a release file."""
    (here / "releases/chat").mkdir(parents=True)
    (here / "releases/chat/v1.yaml").write_text(RELEASE)
    result = check(here, everything_on(), "check")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ok: 1 target(s), 1 task(s), 1 tenant(s)")
    await start_up(validate(everything_on()))


def test_an_environment_key_is_read_only_when_the_config_has_none(here: Path) -> None:
    """As the runtime reads it: the config's key wins over TURNOUT_REDACTION_KEY."""
    with_key = validate(merged(base(), capture={"redaction_key": GOOD_REDACTION_KEY}))
    assert preflight(with_key, {"TURNOUT_REDACTION_KEY": SHORT}) == []
    assert preflight(validate(base()), {"TURNOUT_REDACTION_KEY": GOOD_REDACTION_KEY}) == []
    [problem] = preflight(validate(base()), {"TURNOUT_REDACTION_KEY": "é" * 7})  # 14 bytes, 7 characters
    assert problem.endswith("needs at least 16 bytes, got 14 (e.g. the output of `openssl rand -hex 32`)")


def test_trusted_proxies_from_the_environment_are_checked_as_the_configs_are(here: Path) -> None:
    # uvicorn takes an entry that is no address or network as a name no TCP peer has: a typo
    # trusted no proxy, and every console login counted against the proxy's address.
    [problem] = preflight(validate(base()), {"FORWARDED_ALLOW_IPS": "127.0.0.1, 10.0.0.0/99"})
    assert problem == (
        "FORWARDED_ALLOW_IPS (server.forwarded_allow_ips is unset): "
        "'10.0.0.0/99' is not an address, a network (10.0.0.0/8) or '*'"
    )
    assert preflight(validate(base()), {"FORWARDED_ALLOW_IPS": "127.0.0.1, 10.0.0.0/8, ::1"}) == []
    assert preflight(validate(base()), {"FORWARDED_ALLOW_IPS": "*"}) == []
    configured = validate(merged(base(), server={"forwarded_allow_ips": ["10.0.0.1"]}))
    assert preflight(configured, {"FORWARDED_ALLOW_IPS": "nonsense"}) == []  # the config's list wins


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 64])
def test_check_and_the_redactor_agree_on_every_key_length(size: int, here: Path) -> None:
    key = "k" * size
    try:
        Redactor(key.encode())
    except ValueError:
        starts = False
    else:
        starts = True
    result = check(here, merged(base(), capture={"redaction_key": key}), "check")
    # An empty key is no key: the gateway falls back to TURNOUT_REDACTION_KEY, else a random one.
    assert (result.exit_code == 0) == (starts or size == 0), result.output


def test_every_case_is_a_different_start_up_check() -> None:
    assert len({c.says for c in CASES}) == len(CASES)


def test_a_short_admin_or_viewer_key_is_refused_from_the_config_and_the_environment() -> None:
    """A 5-character admin key guarded every tenant's keys and releases: at least 16."""
    for field_name in ("admin_key", "viewer_key"):
        with pytest.raises(ConfigError, match=f"server.{field_name}: String should have at least 16 characters"):
            validate({**base(), "server": {field_name: "hunter2"}})
    config = validate(base())
    problems = preflight(config, {"TURNOUT_ADMIN_KEY": "hunter2", "TURNOUT_VIEWER_KEY": "x" * 15})
    assert "TURNOUT_ADMIN_KEY (server.admin_key is unset): needs at least 16 characters, got 7" in problems
    assert "TURNOUT_VIEWER_KEY (server.viewer_key is unset): needs at least 16 characters, got 15" in problems
    assert not [p for p in preflight(config, {"TURNOUT_ADMIN_KEY": "x" * 16}) if "ADMIN" in p]


def test_a_key_with_a_line_break_is_refused_from_the_config_and_the_environment() -> None:
    """A mounted secret file's trailing line break: an upstream key the HTTP client refused at
    start-up (a traceback, once the upstream answered), a bearer key no client can present."""
    target = {**base()["targets"]["up"], "api_key": "sk-upstream-0123\n"}
    [problem] = refused_with(merged(base(), targets={"up": target}))
    assert problem == "targets.up.api_key: holds a control character (a trailing line break from a secret file?)"
    for section in (
        {"server": {"admin_key": "admin-key-0123456789\n"}},
        {"server": {"viewer_key": "viewer-key-0123456789\r\n"}},
        {"observability": {"metrics_key": "metrics-key-0123456789\n"}},
        {"tenants": {"acme": {"keys": [KEY + "\n"]}}},
    ):
        [problem] = refused_with(merged(base(), **section))
        assert problem.endswith(": holds a control character (a trailing line break from a secret file?)")
    problems = preflight(validate(base()), {"TURNOUT_ADMIN_KEY": "admin-key-0123456789\n"})
    assert problems == [
        "TURNOUT_ADMIN_KEY (server.admin_key is unset): holds a control character (a trailing line break?)"
    ]


def test_a_bedrock_token_with_a_line_break_is_refused_by_check_and_serve(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``AWS_BEARER_TOKEN_BEDROCK`` from a secret file: the gateway started, and the HTTP
    client refused the header on every request (500, "ValueError at _http_writer.pyx")."""
    runs: list[Config] = []
    monkeypatch.setattr(turnout.serving.server, "run", runs.append)
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-token-CANARY\n")
    aws = {"provider": "bedrock", "region": "us-east-1", "model": "deepseek.v3-v1:0"}
    raw = merged(base(), targets={**base()["targets"], "aws": aws})
    for command in ("check", "serve"):
        result = check(here, raw, command)
        refused(result, "AWS_BEARER_TOKEN_BEDROCK (targets.aws is bedrock): holds a control character")
        assert "CANARY" not in result.output
    assert runs == []
    assert check(here, base(), "check").exit_code == 0  # no Bedrock target: the variable is not read


def refused_with(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return info.value.problems


def test_a_tenant_key_that_is_the_admin_or_viewer_key_is_refused() -> None:
    """That tenant was an admin: the admin API compares its key first."""
    shared = "k" * 20
    for field_name in ("admin_key", "viewer_key"):
        raw = {**base(), "server": {field_name: shared}, "tenants": {"acme": {"keys": [shared]}}}
        with pytest.raises(ConfigError, match=rf"tenants.acme.keys\[0\]: key is also server.{field_name}"):
            validate(raw)
    config = validate({**base(), "tenants": {"acme": {"keys": [shared]}}})
    assert "TURNOUT_ADMIN_KEY: is also a key of tenant 'acme': a tenant key must be its own" in preflight(
        config, {"TURNOUT_ADMIN_KEY": shared}
    )
