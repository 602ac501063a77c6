"""Numbers in the config are finite and are numbers: ``.inf`` ("unlimited") passed start-up and
then failed every request that met it with a 500 (an infinite budget, price or timeout), and
YAML's ``on``/``yes``/``true`` was taken as 1 (``ledger_days: on`` kept rows a day). Redis URLs
and cache lifetimes are checked where ``turnout check`` sees them, not at the first request.
Each is refused by ``turnout check`` with the key's path, never a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from turnout.cli.main import main
from turnout.config import load, validate
from turnout.errors import ConfigError

TARGET = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def config(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"targets": {"up": dict(TARGET)}, "tasks": {"faq": {"route": ["up"]}}}
    for name, value in sections.items():
        base[name] = value
    return base


def refused(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate(cfg)
    return str(caught.value)


@pytest.mark.parametrize(
    ("cfg", "where"),
    [
        (config(tenants={"acme": {"keys": ["sk-acme-0123456789"], "limits": {"usd_per_day": float("inf")}}}),
         "tenants.acme.limits.usd_per_day"),
        (config(targets={"up": {**TARGET, "price": {"input_per_mtok": float("inf"), "output_per_mtok": 1}}}),
         "targets.up.price.input_per_mtok"),
        (config(targets={"up": {**TARGET, "timeouts": {"total": float("inf")}}}), "targets.up.timeouts.total"),
        (config(limits={"max_request_s": 1e400}), "limits.max_request_s"),
        (config(retention={"rules": [{"ledger_days": float("nan")}]}), "retention.rules[0].ledger_days"),
    ],
)  # fmt: skip
def test_infinite_and_nan_numbers_are_refused(cfg: dict[str, Any], where: str) -> None:
    message = refused(cfg)
    assert where in message and "finite" in message


@pytest.mark.parametrize(
    ("cfg", "where"),
    [
        (config(retention={"rules": [{"ledger_days": True}]}), "retention.rules[0]: 'ledger_days'"),
        (config(tasks={"faq": {"route": ["up"], "cache": {"ttl_s": True, "classes": ["public"]}}}),
         "tasks.faq.cache: 'ttl_s'"),
        (config(server={"port": False}), "server: 'port'"),
        (config(tenants={"acme": {"limits": {"rpm": True}}}), "tenants.acme.limits: 'rpm'"),
    ],
)  # fmt: skip
def test_a_boolean_is_no_number(cfg: dict[str, Any], where: str) -> None:
    message = refused(cfg)
    assert where in message and "must be a number" in message


def test_booleans_stay_booleans_and_numbers_numbers() -> None:
    cfg = validate(
        config(
            server={"port": 8081},
            retention={"rules": [{"ledger_days": 30, "capture_days": 1.5}]},
        )
    )
    assert cfg.server.port == 8081
    assert cfg.retention.rules[0].ledger_days == 30.0


def test_a_cache_lifetime_is_bounded() -> None:
    too_long = {"route": ["up"], "cache": {"ttl_s": 1e300, "classes": ["public"]}}
    assert "tasks.faq.cache.ttl_s" in refused(config(tasks={"faq": too_long}))
    assert "cache_ttl_s" in refused(config(retention={"rules": [{"cache_ttl_s": 1e12}]}))
    year = {"route": ["up"], "cache": {"ttl_s": 365 * 86_400, "classes": ["public"]}}
    assert validate(config(tasks={"faq": year})).tasks["faq"].cache is not None


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:6379/7", "must start with redis://"),
        ("redis://127.0.0.1:6379/notanumber", "the database must be a number"),
        ("redis://127.0.0.1:99999/0", "bad port"),
        ("redis:///0", "names no host"),
    ],
)
def test_a_redis_url_redis_cannot_use_is_refused(url: str, says: str) -> None:
    assert says in refused(config(limits={"redis_url": url}))
    cache = {"backend": "redis", "redis_url": url, "encryption_key": "k" * 40}
    assert says in refused(config(cache=cache))


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1",
        "rediss://user:pw@cache.internal:6380/2",
        "unix:///run/redis.sock",
    ],
)
def test_redis_urls_redis_takes_are_accepted(url: str) -> None:
    assert validate(config(limits={"redis_url": url})).limits.redis_url == url


def test_turnout_check_refuses_them_in_one_line_each(tmp_path: Path) -> None:
    path = tmp_path / "turnout.yaml"
    text = yaml.safe_dump(config(limits={"redis_url": "http://127.0.0.1:6379/7", "max_request_s": 600}))
    path.write_text(text + "retention:\n  rules:\n    - {ledger_days: on}\n    - {tenant: acme, capture_days: .inf}\n")
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert "limits.redis_url" in result.output
    assert "'ledger_days' must be a number, not true" in result.output
    assert "retention.rules[1].capture_days" in result.output


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe\x00bad", "not UTF-8 text"),
        (b"a: &a [*a]\n", "an alias refers to a node that holds it"),
        (b"a: &a {b: [*a]}\n", "an alias refers to a node that holds it"),
        (b"targets: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested deeper than 100 levels"),  # was a RecursionError
        (
            b"a: &a " + b"[" * 60 + b"x" + b"]" * 60 + b"\nb: " + b"[" * 60 + b"*a" + b"]" * 60 + b"\n",
            "its aliases make it deeper than 100 levels",
        ),  # each 60 deep, 120 with *a expanded
    ],
    ids=["not-utf8", "alias-loop", "alias-loop-in-a-mapping", "deep", "deep-by-aliases"],
)
@pytest.mark.parametrize("command", [["check"], ["report", "usage"]])
def test_a_file_yaml_cannot_give_a_config_is_one_line_not_a_traceback(
    tmp_path: Path, content: bytes, says: str, command: list[str]
) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_bytes(content)
    result = CliRunner().invoke(main, [*command, "--config", str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert says in result.output and "Traceback" not in result.output


def test_an_unterminated_variable_is_an_error_not_a_literal(tmp_path: Path) -> None:
    """``"${NOPE"`` was taken literally (a key, a password): a typo passed as the value."""
    path = tmp_path / "turnout.yaml"
    path.write_text(
        'targets: {up: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: m, api_key: "${NOPE"}}\n'
        "tasks: {faq: {route: [up]}}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 1
    assert "targets.up.api_key: an unterminated or empty ${...}" in result.output
    path.write_text(
        'targets: {up: {provider: openai, base_url: "http://127.0.0.1:9/v1", model: m, api_key: "${NOPE:-k}-x"}}\n'
        "tasks: {faq: {route: [up]}}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env={"NOPE": ""})
    assert result.exit_code == 0, result.output


def test_a_blank_cache_key_is_refused() -> None:
    """Forty spaces passed the length check: every replica would seal with a key anyone can guess."""
    cache = {"backend": "redis", "encryption_key": " " * 40}
    assert "encryption_key: blank" in refused(config(cache=cache))


def test_a_billion_laughs_is_refused_before_it_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nine lists of nine aliases of the one before: a few lines that stand for 9⁹ values hung
    `check` and `serve` while each was substituted. Measured at load, the aliases expanded
    (here against a smaller bound, so that the same document without the measure fails fast)."""
    monkeypatch.setattr(load, "MAX_VALUES", 1000, raising=False)  # raising: the test must fail on its assert
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 4)]
    path = tmp_path / "turnout.yaml"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["check", "--config", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "not valid YAML: its aliases make it more than 1,000 values (line 4" in result.output


@pytest.mark.parametrize("env", [{}, {"PRIMARY_KEY": "sk-primary-0123"}])
def test_a_variable_in_a_default_is_an_error_not_a_literal(tmp_path: Path, env: dict[str, str]) -> None:
    """``${A:-${B}}`` (nested, as a shell would take it) read as the default ``${B`` and a
    ``}``: the upstream got the key ``${B}``, or A's value with a ``}`` after it."""
    path = tmp_path / "turnout.yaml"
    path.write_text(
        "targets: {up: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m,"
        " api_key: '${PRIMARY_KEY:-${FALLBACK_KEY}}'}}\n"
        "tasks: {faq: {route: [up]}}\n"
    )
    result = CliRunner().invoke(main, ["check", "--config", str(path)], env={"FALLBACK_KEY": "sk-fallback-0123", **env})
    assert result.exit_code == 1, result.output
    assert "targets.up.api_key: a ${NAME:-default} whose default holds ${...} (they do not nest)" in result.output
