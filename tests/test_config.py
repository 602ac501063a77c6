"""Config loading: every problem is named with its key path, all of them at once."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from turnout.config import Config, LocalTarget, OpenAITarget, cross_problems, default_config, load_config, validate
from turnout.errors import ConfigError

KEY = "sk-acme-0123456789"


def base(**extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "targets": {
            "vllm": {"provider": "openai", "base_url": "http://vllm:8000/v1", "model": "Qwen/Qwen3-32B"},
            "onprem": {"provider": "openai", "base_url": "http://onprem:8000/v1", "model": "m"},
        },
        "tenants": {"acme": {"keys": [KEY], "data_classes": ["public", "internal"]}},
        "tasks": {"chat": {"route": ["vllm", "onprem"]}},
    }
    raw.update(extra)
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return info.value.problems


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "turnout.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# --- what loads ---------------------------------------------------------------------------


def test_a_valid_config_loads_with_typed_sections() -> None:
    config = validate(base(policy={"restricted": {"targets": ["onprem"]}}))
    assert isinstance(config, Config)
    target = config.targets["vllm"]
    assert isinstance(target, OpenAITarget)
    assert target.urls == ["http://vllm:8000/v1"]
    assert config.tenants["acme"].keys == [KEY]
    assert config.policy["restricted"].targets == ["onprem"]
    assert config.tasks["chat"].route == ["vllm", "onprem"]
    assert config.server.host == "127.0.0.1"
    assert config.server.allow_anonymous is False


def test_default_config_is_the_embedded_model_with_sqlite_under_dot_turnout() -> None:
    config = default_config()
    assert list(config.tasks) == ["default"]
    assert config.tasks["default"].route == ["local"]
    assert isinstance(config.targets["local"], LocalTarget)
    assert config.store.kind == "sqlite"
    assert Path(config.store.path).parent == Path(".turnout")
    assert config.store.path.startswith("./.turnout/")
    assert config.tenants == {}
    assert config.server.host == "127.0.0.1"


def test_load_config_without_a_path_is_the_default() -> None:
    assert load_config(None) == default_config()


def test_base_urls_form_strips_trailing_slashes() -> None:
    raw = base()
    raw["targets"]["vllm"] = {
        "provider": "openai",
        "base_urls": ["http://a:8000/v1/", "https://b:8000/v1"],
        "model": "m",
    }
    target = validate(raw).targets["vllm"]
    assert isinstance(target, OpenAITarget)
    assert target.urls == ["http://a:8000/v1", "https://b:8000/v1"]


def test_local_target_defaults_differ_from_openai_ones() -> None:
    config = default_config()
    local = config.targets["local"]
    assert local.retry.attempts == 1
    assert local.timeouts.total == 300.0


def test_the_product_minimal_example_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          qwen-vllm:   {provider: openai, base_url: "http://vllm:8000/v1", model: Qwen/Qwen3-32B}
          deepseek-br: {provider: bedrock, region: us-east-1, model: deepseek.v3-v1:0}
        tenants:
          acme: {keys: ["${ACME_KEY}"], data_classes: [public, internal, confidential]}
        policy:
          restricted: {targets: [qwen-vllm]}
        tasks:
          support-reply: {route: [qwen-vllm, deepseek-br]}
        """,
    )
    config = load_config(path, env={"ACME_KEY": KEY})
    bedrock = config.targets["deepseek-br"]
    assert bedrock.provider == "bedrock" and bedrock.model == "deepseek.v3-v1:0"
    assert config.tasks["support-reply"].route == ["qwen-vllm", "deepseek-br"]


def test_the_product_minimal_example_without_bedrock_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          qwen-vllm:   {provider: openai, base_url: "http://vllm:8000/v1", model: Qwen/Qwen3-32B}
        tenants:
          acme: {keys: ["${ACME_KEY}"], data_classes: [public, internal, confidential]}
        policy:
          restricted: {targets: [qwen-vllm]}
        tasks:
          support-reply: {route: [qwen-vllm]}
        """,
    )
    config = load_config(path, env={"ACME_KEY": KEY})
    assert config.tenants["acme"].keys == [KEY]
    assert config.tenants["acme"].data_classes == ["public", "internal", "confidential"]
    assert config.policy["restricted"].targets == ["qwen-vllm"]
    assert config.tasks["support-reply"].route == ["qwen-vllm"]


# --- per-field problems, with key paths -----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ((), "nonsense: unknown key"),
        (("server",), "server.nonsense: unknown key"),
        (("store",), "store.nonsense: unknown key"),
        (("targets", "vllm"), "targets.vllm.nonsense: unknown key"),
        (("targets", "vllm", "retry"), "targets.vllm.retry.nonsense: unknown key"),
        (("targets", "vllm", "breaker"), "targets.vllm.breaker.nonsense: unknown key"),
        (("targets", "vllm", "timeouts"), "targets.vllm.timeouts.nonsense: unknown key"),
        (("tenants", "acme"), "tenants.acme.nonsense: unknown key"),
        (("tasks", "chat"), "tasks.chat.nonsense: unknown key"),
    ],
)
def test_unknown_keys_are_named_at_every_level(where: tuple[str, ...], expected: str) -> None:
    raw = base(server={}, store={})
    raw["targets"]["vllm"].update(retry={}, breaker={}, timeouts={})
    node = raw
    for key in where:
        node = node[key]
    node["nonsense"] = 1
    assert problems(raw) == [expected]


def test_an_unknown_key_in_a_policy_entry_is_named() -> None:
    raw = base(policy={"restricted": {"targets": ["onprem"], "extra": True}})
    assert problems(raw) == ["policy.restricted.extra: unknown key"]


def test_unknown_provider_is_named_with_its_target() -> None:
    raw = base()
    raw["targets"]["vllm"]["provider"] = "sagemaker"
    assert problems(raw) == ["targets.vllm: unknown provider 'sagemaker' (expected openai, local, bedrock)"]


def test_missing_provider_is_named_with_its_target() -> None:
    raw = base()
    del raw["targets"]["vllm"]["provider"]
    assert problems(raw) == ["targets.vllm: missing 'provider' (openai, local, bedrock)"]


def test_field_problems_name_the_key_inside_a_target() -> None:
    raw = base()
    raw["targets"]["vllm"]["breaker"] = {"failure_rate": 1.5}
    raw["targets"]["onprem"]["max_connections"] = 0
    found = problems(raw)
    assert len(found) == 2
    assert found[0].startswith("targets.vllm.breaker.failure_rate: ")
    assert found[1].startswith("targets.onprem.max_connections: ")


@pytest.mark.parametrize("name", ["local", "openai"])
def test_a_target_named_like_a_provider_keeps_its_name_in_the_path(name: str) -> None:
    raw = base(targets={name: {"provider": "local", "n_ctx": 0}}, tasks={"chat": {"route": [name]}})
    assert [p.split(":")[0] for p in problems(raw)] == [f"targets.{name}.n_ctx"]


def test_a_task_named_like_a_provider_keeps_its_name_in_the_path() -> None:
    raw = base(tasks={"local": {"route": []}})
    assert [p.split(":")[0] for p in problems(raw)] == ["tasks.local.route"]


def test_missing_model_on_an_openai_target() -> None:
    raw = base()
    del raw["targets"]["vllm"]["model"]
    assert problems(raw) == ["targets.vllm.model: Field required"]


@pytest.mark.parametrize("url", ["vllm:8000/v1", "ftp://vllm/v1", "http:///v1", ""])
def test_a_bad_base_url_is_named(url: str) -> None:
    raw = base()
    raw["targets"]["vllm"]["base_url"] = url
    [problem] = problems(raw)
    assert problem.startswith("targets.vllm: base URL must start with http:// or https://")
    assert repr(url) in problem


@pytest.mark.parametrize("url", ["collector:4317", "localhost", "grpc://collector:4317", "ftp://u:pw-CANARY@collector"])
def test_an_otlp_endpoint_that_is_not_an_http_url_is_refused(url: str) -> None:
    """Taken before, it dropped every span at export (a line in the log, nothing from check)."""
    [problem] = problems(base(observability={"otlp_endpoint": url}))
    assert problem.startswith("observability.otlp_endpoint: must start with http:// or https://")
    assert "CANARY" not in problem


@pytest.mark.parametrize("url", ["http://collector:4318", "https://otel.example/v1/traces", ""])
def test_an_otlp_endpoint_over_http_is_taken(url: str) -> None:
    assert validate(base(observability={"otlp_endpoint": url})).observability.otlp_endpoint == url


def test_a_bad_url_in_base_urls_is_named() -> None:
    raw = base()
    raw["targets"]["vllm"] = {"provider": "openai", "base_urls": ["http://ok/v1", "nope"], "model": "m"}
    [problem] = problems(raw)
    assert problem.startswith("targets.vllm: base URL must start with http:// or https://")
    assert "'nope'" in problem


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ({"base_url": "http://a/v1", "base_urls": ["http://b/v1"]}, "give exactly one of base_url or base_urls"),
        ({}, "give exactly one of base_url or base_urls"),
        ({"base_urls": []}, "base_urls is empty"),
        ({"base_urls": ["http://a/v1", "http://a/v1"]}, "base_urls has duplicates"),
    ],
)
def test_base_url_forms(urls: dict[str, Any], message: str) -> None:
    raw = base()
    raw["targets"]["vllm"] = {"provider": "openai", "model": "m", **urls}
    assert problems(raw) == [f"targets.vllm: {message}"]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-team": "a\nb"}, "the value of 'x-team' holds a control character (a line break?)"),
        ({"x team": "a"}, "'x team' is not an HTTP header name (letters, digits, - and the like)"),
        ({"x-team:": "a"}, "'x-team:' is not an HTTP header name (letters, digits, - and the like)"),
    ],
)
def test_a_target_header_the_http_client_would_refuse_is_named(headers: dict[str, str], expected: str) -> None:
    raw = base()
    raw["targets"]["vllm"]["headers"] = headers
    assert problems(raw) == [f"targets.vllm.headers: {expected}"]


@pytest.mark.parametrize("field", ["model", "model_version"])
def test_a_model_name_with_a_line_break_is_named(field: str) -> None:
    # `model: ${VLLM_MODEL}` from a secret file: every answer's X-Turnout-Model-Version header
    # broke, a 500 logged and an empty reply to the client.
    raw = base()
    raw["targets"]["vllm"][field] = "Qwen/Qwen3-32B\n"
    assert problems(raw) == [
        f"targets.vllm.{field}: holds a control character (a trailing line break from a secret file?)"
    ]


@pytest.mark.parametrize("section", ["targets", "tasks", "tenants"])
def test_a_name_with_a_control_character_is_named(section: str) -> None:
    raw = base()
    raw[section]["bad\nname"] = copy.deepcopy(next(iter(raw[section].values())))
    assert f"{section}: the name 'bad\\nname' holds a control character or an unusual space" in problems(raw)


@pytest.mark.parametrize("section", ["targets", "tasks", "tenants"])
def test_an_empty_name_is_refused(section: str) -> None:
    """``"": {...}`` loaded: a task no request could name (``model: ""`` is refused), a target
    or tenant that is a blank in every header, log line and report."""
    raw = base()
    raw[section][""] = copy.deepcopy(next(iter(raw[section].values())))
    if section == "tenants":
        raw["tenants"][""]["keys"] = ["sk-other-0123456789"]
    assert problems(raw) == [f"{section}: a name is empty"]


def test_a_target_header_value_may_hold_a_tab() -> None:
    raw = base()
    raw["targets"]["vllm"]["headers"] = {"X-Team": "a\tb", "x_b.c~1": "!"}
    assert validate(raw).targets["vllm"].headers == {"X-Team": "a\tb", "x_b.c~1": "!"}  # type: ignore[union-attr]


def test_an_empty_route_is_named() -> None:
    raw = base(tasks={"chat": {"route": []}})
    [problem] = problems(raw)
    assert problem.startswith("tasks.chat.route: ")
    assert "at least 1" in problem


def test_a_missing_targets_or_tasks_section_is_named() -> None:
    assert sorted(problems({})) == ["targets: Field required", "tasks: Field required"]


def test_an_unknown_data_class_in_a_tenant_is_named() -> None:
    raw = base()
    raw["tenants"]["acme"]["data_classes"] = ["public", "secret"]
    [problem] = problems(raw)
    assert problem.startswith("tenants.acme.data_classes[1]: ")


def test_an_unknown_data_class_in_policy_is_named() -> None:
    [problem] = problems(base(policy={"secret": {"targets": ["onprem"]}}))
    assert problem.startswith("policy.secret")


def test_a_tenant_may_start_without_config_keys() -> None:
    raw = base()
    raw["tenants"]["acme"]["keys"] = []  # its keys are issued with `turnout keys create`
    assert validate(raw).tenants["acme"].keys == []


def test_task_limits_must_name_a_task() -> None:
    raw = base()
    raw["tenants"]["acme"]["task_limits"] = {"ghost": {"rpm": 5}}
    assert problems(raw) == ["tenants.acme.task_limits.ghost: unknown task 'ghost'"]


# --- cross-section problems ------------------------------------------------------------------


def test_route_naming_a_missing_target() -> None:
    raw = base(tasks={"chat": {"route": ["vllm", "ghost"]}})
    assert problems(raw) == ["tasks.chat.route[1]: unknown target 'ghost'"]


def test_duplicate_target_in_route() -> None:
    raw = base(tasks={"chat": {"route": ["vllm", "onprem", "vllm"]}})
    assert problems(raw) == ["tasks.chat.route[2]: target 'vllm' listed twice"]


def test_policy_naming_an_unknown_target() -> None:
    raw = base(policy={"restricted": {"targets": ["onprem", "ghost"]}})
    assert problems(raw) == ["policy.restricted.targets[1]: unknown target 'ghost'"]


def test_a_key_shared_by_two_tenants_is_named_at_the_second() -> None:
    raw = base()
    raw["tenants"]["other"] = {"keys": ["sk-other-0123456", KEY]}
    assert problems(raw) == ["tenants.other.keys[1]: key also belongs to tenant 'acme'"]


def test_a_key_repeated_within_one_tenant_is_named() -> None:
    raw = base()
    raw["tenants"]["acme"]["keys"] = [KEY, KEY]
    assert problems(raw) == ["tenants.acme.keys[1]: key also belongs to tenant 'acme'"]


def test_a_short_key_is_named() -> None:
    raw = base()
    raw["tenants"]["acme"]["keys"] = [KEY, "1234567"]
    assert problems(raw) == ["tenants.acme.keys[1]: key is shorter than 8 characters"]


def test_an_eight_character_key_is_enough() -> None:
    raw = base()
    raw["tenants"]["acme"]["keys"] = ["12345678"]
    validate(raw)


def test_unknown_task_in_tenant_tasks() -> None:
    raw = base()
    raw["tenants"]["acme"]["tasks"] = ["chat", "nope"]
    assert problems(raw) == ["tenants.acme.tasks[1]: unknown task 'nope'"]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "gateway.internal"])
def test_non_loopback_host_without_tenants_is_refused(host: str) -> None:
    raw = base(server={"host": host})
    del raw["tenants"]
    [problem] = problems(raw)
    assert problem.startswith(f"server.host: {host!r} is not loopback and no tenants are configured")
    assert "allow_anonymous" in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.5.5", "::1", "localhost"])
def test_loopback_host_without_tenants_is_allowed(host: str) -> None:
    raw = base(server={"host": host})
    del raw["tenants"]
    assert validate(raw).tenants == {}


def test_non_loopback_host_without_tenants_is_allowed_with_allow_anonymous() -> None:
    raw = base(server={"host": "0.0.0.0", "allow_anonymous": True})
    del raw["tenants"]
    assert validate(raw).server.allow_anonymous is True


@pytest.mark.parametrize("flag", ["false", "no", "0", "off", False, None])
def test_allow_anonymous_read_as_false_does_not_open_the_host(flag: Any) -> None:
    raw = base(server={"host": "0.0.0.0", "allow_anonymous": flag})
    del raw["tenants"]
    found = problems(raw)
    assert any(p.startswith("server.host: '0.0.0.0' is not loopback") for p in found)


def test_non_loopback_host_with_tenants_is_allowed() -> None:
    assert validate(base(server={"host": "0.0.0.0"})).server.host == "0.0.0.0"


def test_cross_problems_tolerate_malformed_sections() -> None:
    raw: dict[str, Any] = {
        "targets": [1, 2],
        "tasks": {"a": "route", "b": {"route": "x"}, "c": {"route": [["x"], {"y": 1}]}},
        "tenants": {"t": {"keys": [1, None], "tasks": [["a"]]}},
        "policy": {"restricted": {"targets": [{"x": 1}]}},
        "server": "nope",
    }
    assert cross_problems(raw) == []


def test_non_string_entries_are_reported_as_types_not_crashes() -> None:
    raw = base(tasks={"chat": {"route": [["vllm"]]}}, policy={"restricted": {"targets": [{"x": 1}]}})
    raw["tenants"]["acme"]["tasks"] = [["chat"]]
    found = problems(raw)
    assert sorted(p.split(":")[0] for p in found) == [
        "policy.restricted.targets[0]",
        "tasks.chat.route[0]",
        "tenants.acme.tasks[0]",
    ]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"store": 5}, "store: must be a mapping (key: value), not a number (5)"),
        ({"tenants": {"acme": ["sk-acme-0123456789"]}}, "tenants.acme: must be a mapping (key: value), not a list"),
        (
            {"server": {"host": "127.0.0.1"}, "policy": {"public": None}},
            "policy.public: must be a mapping (key: value), not empty (null)",
        ),
        ({"prices": {"2026-01-01": {}}}, "prices: must be a list, not a mapping"),
        ({"tasks": {"chat": {"route": "vllm"}}}, "tasks.chat.route: must be a list, not text"),
    ],
)
def test_a_section_of_the_wrong_kind_is_named_in_yaml_words(section: dict[str, Any], expected: str) -> None:
    # pydantic said "Input should be a valid dictionary or instance of StoreConfig" (a class name).
    assert problems(base(**section)) == [expected]


def test_text_in_the_place_of_a_section_is_not_quoted() -> None:
    # `tenants: {acme: ${ACME_KEY}}`: the key, from the environment, must not reach the message.
    [problem] = problems(base(tenants={"acme": "sk-secret-0123456789"}))
    assert problem == "tenants.acme: must be a mapping (key: value), not text"


def test_every_problem_is_reported_at_once() -> None:
    raw = base(
        bogus=1,
        server={"host": "0.0.0.0", "port": 70000},
        policy={"restricted": {"targets": ["ghost"]}},
        tasks={"chat": {"route": ["vllm", "vllm", "missing"]}, "empty": {"route": []}},
    )
    raw["targets"]["onprem"]["provider"] = "sagemaker"
    raw["tenants"] = {
        "acme": {"keys": [KEY, "short"], "tasks": ["nope"]},
        "other": {"keys": [KEY]},
    }
    found = problems(raw)
    expected_prefixes = [
        "bogus: unknown key",
        "server.port: ",
        "targets.onprem: unknown provider 'sagemaker'",
        "tasks.empty.route: ",
        "tasks.chat.route[1]: target 'vllm' listed twice",
        "tasks.chat.route[2]: unknown target 'missing'",
        "policy.restricted.targets[0]: unknown target 'ghost'",
        "tenants.acme.keys[1]: key is shorter than 8 characters",
        "tenants.other.keys[0]: key also belongs to tenant 'acme'",
        "tenants.acme.tasks[0]: unknown task 'nope'",
    ]
    for prefix in expected_prefixes:
        assert sum(p.startswith(prefix) for p in found) == 1, (prefix, found)
    assert len(found) == len(expected_prefixes)


def test_config_error_message_lists_every_problem() -> None:
    raw = base(tasks={"chat": {"route": ["a", "b"]}})
    with pytest.raises(ConfigError) as info:
        validate(raw)
    text = str(info.value)
    assert text.startswith("invalid configuration:\n")
    assert "  tasks.chat.route[0]: unknown target 'a'" in text
    assert "  tasks.chat.route[1]: unknown target 'b'" in text


def test_validate_does_not_mutate_its_input() -> None:
    raw = base(tasks={"chat": {"route": ["ghost"]}})
    before = copy.deepcopy(raw)
    problems(raw)
    assert raw == before


def test_config_is_frozen() -> None:
    config = validate(base())
    with pytest.raises(ValueError, match="frozen"):
        config.server.port = 1  # type: ignore[misc]


# --- files and the environment -------------------------------------------------------------


def test_load_from_a_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        server: {{host: 127.0.0.1, port: 9000}}
        targets:
          vllm: {{provider: openai, base_url: "http://vllm:8000/v1", model: m}}
        tenants:
          acme: {{keys: ["{KEY}"]}}
        tasks:
          chat: {{route: [vllm]}}
        """,
    )
    config = load_config(str(path), env={})
    assert config.server.port == 9000
    assert config.tasks["chat"].route == ["vllm"]


def test_env_substitution_with_and_without_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        server: {port: "${PORT}"}
        targets:
          vllm:
            provider: openai
            base_url: "http://${HOST:-vllm}:8000/v1"
            model: "${MODEL:-Qwen/Qwen3-32B}"
            api_key: "${VLLM_KEY}"
            headers: {x-team: "${TEAM:-}"}
        tenants:
          acme: {keys: ["${ACME_KEY}", "prefix-${ACME_KEY}-suffix"]}
        tasks:
          chat: {route: [vllm]}
        """,
    )
    env = {"PORT": "9001", "ACME_KEY": KEY, "VLLM_KEY": "secret", "MODEL": "from-env"}
    config = load_config(path, env=env)
    target = config.targets["vllm"]
    assert isinstance(target, OpenAITarget)
    assert config.server.port == 9001
    assert target.urls == ["http://vllm:8000/v1"]  # default used
    assert target.model == "from-env"  # the environment wins over the default
    assert target.api_key == "secret"
    assert target.headers == {"x-team": ""}
    assert config.tenants["acme"].keys == [KEY, f"prefix-{KEY}-suffix"]


def test_env_substitution_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TURNOUT_TEST_KEY", KEY)
    path = write(
        tmp_path,
        """
        targets: {vllm: {provider: openai, base_url: "http://vllm/v1", model: m}}
        tenants: {acme: {keys: ["${TURNOUT_TEST_KEY}"]}}
        tasks: {chat: {route: [vllm]}}
        """,
    )
    assert load_config(path).tenants["acme"].keys == [KEY]


def test_a_missing_variable_is_named_with_its_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets:
          vllm: {provider: openai, base_url: "http://vllm/v1", model: m, api_key: "${VLLM_KEY}"}
        tenants:
          acme: {keys: ["${ACME_KEY}"]}
        tasks: {chat: {route: [vllm]}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert info.value.problems == [
        "targets.vllm.api_key: environment variable VLLM_KEY is not set",
        "tenants.acme.keys[0]: environment variable ACME_KEY is not set",
    ]


def test_a_variable_in_a_key_is_refused_not_taken_as_a_name(tmp_path: Path) -> None:
    # `tenants: {${TENANT}: ...}` made a tenant literally named "${TENANT}".
    path = write(
        tmp_path,
        """
        targets: {v: {provider: local}}
        tasks: {t: {route: [v]}}
        tenants:
          ${TENANT}: {keys: [sk-acme-0123456789]}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"TENANT": "acme"})
    assert info.value.problems == ["tenants.${TENANT}: ${...} is replaced in values only, not in keys (names)"]


def test_a_default_also_covers_a_variable_set_but_empty(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets: {vllm: {provider: openai, base_url: "http://vllm/v1", model: "${M:-fallback}", api_key: "${K}"}}
        tasks: {chat: {route: [vllm]}}
        """,
    )
    target = load_config(path, env={"M": "", "K": ""}).targets["vllm"]
    assert isinstance(target, OpenAITarget)
    assert target.model == "fallback"  # ":-" as in the shell
    assert target.api_key == ""  # no default: set-but-empty is a value, not a missing variable


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    [problem] = info.value.problems
    assert problem.startswith(f"{missing}: cannot read")


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems[0].startswith(f"{tmp_path}: cannot read")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_non_mapping_top_level_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: the top level must be a mapping"]


def test_an_empty_file_reports_the_missing_sections(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.problems) == ["targets: Field required", "tasks: Field required"]


def test_invalid_yaml_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: {a: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML")


def test_invalid_yaml_is_located_without_quoting_the_file(tmp_path: Path) -> None:
    """The parser quotes the line it stopped at, and a line may hold a key: the problem (logged,
    and a reload's answer) gives the line and column only."""
    path = write(tmp_path, 'tenants:\n  acme: {keys: ["sk-acme-literal-key-0123"\n  other: 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert "sk-acme-literal-key-0123" not in problem and "line 2" in problem and "column" in problem


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("targets: {}\ntasks: {}\ntargets: {}\n", "targets"),
        (
            """
            targets:
              vllm: {provider: openai, base_url: "http://a/v1", model: m}
              vllm: {provider: openai, base_url: "http://b/v1", model: m}
            tasks: {chat: {route: [vllm]}}
            """,
            "vllm",
        ),
        ("targets: {a: {provider: local, provider: openai}}\ntasks: {}\n", "provider"),
    ],
)
def test_duplicate_yaml_keys_are_refused(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML")
    assert f"duplicate key {key!r}" in problem
    assert "line " in problem


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("? [a]\n: b\ntargets: {}\ntasks: {}\n", "a list"),
        ("targets: {}\ntasks: {}\ntenants: {a: {task_limits: {? {x: 1}: {}}}}\n", "a mapping"),
    ],
)
def test_a_yaml_key_that_is_a_list_or_a_mapping_is_named_not_a_crash(tmp_path: Path, text: str, what: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert problem.startswith(f"{path}: not valid YAML: a key is {what} (line ")


@pytest.mark.parametrize(
    "section",
    [
        {"capture": {"rules": [{"task": ["chat"], "mode": "redacted"}]}},
        {"capture": {"rules": [{"tenant": {"acme": 1}, "mode": "redacted"}]}},
        {"retention": {"rules": [{"task": {"chat": 1}, "ledger_days": 1}]}},
        {"retention": {"rules": [{"tenant": ["acme"], "ledger_days": 1}]}},
    ],
)
def test_a_rule_naming_a_list_or_mapping_is_a_type_problem_not_a_crash(section: dict[str, Any]) -> None:
    [problem] = problems(base(**section))
    assert "Input should be a valid string" in problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tenants: {5: {keys: [sk-acme-0123456789]}}", "tenants: key 5 must be text (quote it)"),
        ("server: {2024-01-01: 1}", "server: key datetime.date(2024, 1, 1) must be text (quote it)"),
        ("7: x", "key 7 must be text (quote it)"),
    ],
)
def test_a_key_that_is_not_text_is_named_where_it_is(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, f"targets: {{v: {{provider: local}}}}\ntasks: {{t: {{route: [v]}}}}\n{text}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [expected]


def test_a_price_schedule_takes_a_bare_hour_as_yaml_reads_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        targets: {v: {provider: local}}
        tasks: {t: {route: [v]}}
        prices:
          - effective: 2026-01-01
            targets: {v: {gpu_hour_usd: 2, replicas: 1, schedule: {8: 3, "9-10": 2}}}
        """,
    )
    hours = load_config(path).prices[0].targets["v"].hourly_replicas()
    assert hours[7:12] == (1, 3, 2, 2, 1)


def test_a_target_named_by_a_number_does_not_break_the_suggestions() -> None:
    raw = base()
    raw["targets"][5] = raw["targets"].pop("onprem")  # `targets: {5: ...}` in YAML
    found = problems(raw)
    assert "tasks.chat.route[1]: unknown target 'onprem'" in found


@pytest.mark.parametrize("entry", ["10.0.0.0/99", "bogus", "10.0.0.1 10.0.0.2", ""])
def test_a_trusted_proxy_that_is_no_address_or_network_is_named(entry: str) -> None:
    [problem] = problems(base(server={"forwarded_allow_ips": ["127.0.0.1", entry]}))
    assert problem == f"server.forwarded_allow_ips[1]: {entry!r} is not an address, a network (10.0.0.0/8) or '*'"


def test_trusted_proxies_take_addresses_networks_and_a_star() -> None:
    listed = ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8", "*"]
    assert validate(base(server={"forwarded_allow_ips": listed})).server.forwarded_allow_ips == listed


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "targets: !!python/object/apply:os.getcwd []\ntasks: {}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in info.value.problems[0]


# --- what start-up used to refuse, refused at load ---------------------------------------------


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("123456789", "capture.redaction_key: needs at least 16 bytes, got 9"),
        ("é" * 7, "capture.redaction_key: needs at least 16 bytes, got 14"),  # bytes, as the redactor counts
        ("\ud800" * 16, "capture.redaction_key: is not valid UTF-8 text"),
    ],
)
def test_a_redaction_key_the_redactor_would_refuse_is_named(key: str, message: str) -> None:
    [problem] = problems(base(capture={"redaction_key": key}))
    assert problem.startswith(message)


def test_an_empty_redaction_key_is_no_key() -> None:
    # ``${TURNOUT_REDACTION_KEY:-}``: the gateway then reads the variable, else keys at random.
    assert validate(base(capture={"redaction_key": ""})).capture.redaction_key == ""
    assert validate(base(capture={"redaction_key": "é" * 8})).capture.redaction_key == "é" * 8


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"kind": "postgres"}, "store.dsn: required when store.kind is postgres"),
        ({"kind": "postgres", "dsn": ""}, "store.dsn: required when store.kind is postgres"),
        ({"kind": "postgres", "dsn": "mysql://u@h/db"}, "store.dsn: must start with postgresql:// or postgres://"),
    ],
)
def test_a_postgres_ledger_needs_a_postgres_dsn(store: dict[str, Any], message: str) -> None:
    [problem] = problems(base(store=store))
    assert problem.startswith(message)


@pytest.mark.parametrize(
    ("dsn", "says"),
    [
        ("postgresql://u:pw-CANARY@db:54x2/test", "names a host or port the drivers cannot read"),
        ("postgresql://u:pw-CANARY@db:99999/test", "names a host or port the drivers cannot read"),
        ("postgresql://u:pw-CANARY@db1,,db2/test", "names a host or port the drivers cannot read"),
        ("postgresql://u:pw-CANARY@[::1/test", "has an unclosed ["),
        ("postgresql://u:pw-CANARY@db:5432/test\n", "a control character"),
    ],
)
def test_a_dsn_the_drivers_cannot_read_is_refused_without_its_password(dsn: str, says: str) -> None:
    """asyncpg failed the start-up with a traceback on these ("invalid literal for int()",
    "Invalid IPv6 URL") after `turnout check` passed them."""
    found = problems(base(store={"kind": "postgres", "dsn": dsn}, state={"kind": "postgres", "dsn": dsn}))
    assert [p.split(":")[0] for p in found] == ["store.dsn", "state.dsn"]
    assert all(says in p for p in found) and not any("CANARY" in p for p in found), found


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p%40ss@db1:5432,db2:5433/test",
        "postgresql://u@[::1]:5432/test",
        "postgresql://u@db:/test",
        "postgresql://%2Fvar%2Frun%2Fpostgresql/test",
        "postgresql:///test?host=/var/run/postgresql",
    ],
)
def test_dsns_the_drivers_read_still_load(dsn: str) -> None:
    assert validate(base(store={"kind": "postgres", "dsn": dsn})).store.dsn == dsn


def test_a_postgres_dsn_of_either_scheme_loads_and_other_stores_need_none() -> None:
    for dsn in ("postgresql://u@h:5432/db", "postgres://u@h/db"):
        assert validate(base(store={"kind": "postgres", "dsn": dsn})).store.dsn == dsn
    assert validate(base(store={"kind": "sqlite"})).store.dsn is None


@pytest.mark.parametrize(
    "urls",
    [{"base_url": "http://user:pw@vllm:8000/v1"}, {"base_urls": ["http://a:8000/v1", "http://user@b:8000/v1"]}],
)
def test_credentials_in_a_base_url_and_an_api_key_are_refused(urls: dict[str, Any]) -> None:
    target = {"provider": "openai", "model": "m", "api_key": "sk-up", **urls}
    [problem] = problems(base(targets={**base()["targets"], "vllm": target}))
    assert problem == "targets.vllm.api_key: give credentials in base_url or as api_key, not both"
    del target["api_key"]
    assert validate(base(targets={**base()["targets"], "vllm": target}))  # either alone is fine


@pytest.mark.parametrize(
    "url",
    [
        "ftp://alice:pw-CANARY@vllm/v1",
        "vllm.internal:pw-CANARY@vllm:8000/v1",
        "ftp://alice:p@ss/pw-CANARY@vllm/v1",
        "tcp://vllm:8000/v1?api_key=pw-CANARY",
        "ftp://:pw-CANARY@vllm/v1#pw-CANARY",
    ],
)
def test_a_bad_base_url_is_named_without_its_credentials(url: str) -> None:
    """`turnout check` prints every problem: a base URL with a password or a key in its query
    is named by its scheme, host and path, never the secret."""
    raw = base()
    raw["targets"]["vllm"]["base_url"] = url
    raw["targets"]["onprem"] = {"provider": "openai", "base_urls": ["http://ok/v1", url], "model": "m"}
    found = problems(raw)
    assert len(found) == 2 and all("base URL must start with http:// or https://" in p for p in found)
    assert not any("CANARY" in p for p in found), found
    assert all("vllm" in p for p in found)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://vllm:abc/v1", "has a host or port no HTTP client takes"),
        ("http://vllm:99999/v1", "has a host or port no HTTP client takes"),
        ("http://[::1/v1", "has a host or port no HTTP client takes"),
        ("http://vllm:0/v1", "has port 0"),
        ("http://vllm:8000/v1\n", "a control character"),
        ("http://vllm :8000/v1", "a space"),
        ("http://vllm:8000/v1?api-version=1", "has a query or a fragment"),
    ],
)
def test_a_base_url_the_http_clients_cannot_call_is_refused_at_load(url: str, says: str) -> None:
    """These passed `turnout check`; `serve` then failed its start-up with a traceback (a bad
    port, an unclosed [), sent every call to a host that is not there (a space, a line break)
    or lost the paths appended after a query. Bedrock's endpoint_url and the OTLP endpoint,
    read by the same clients, are held to the same rule."""
    raw = base()
    raw["targets"]["vllm"]["base_url"] = url
    raw["targets"]["onprem"] = {"provider": "openai", "base_urls": ["http://ok/v1", url], "model": "m"}
    raw["targets"]["aws"] = {"provider": "bedrock", "region": "us-east-1", "model": "m", "endpoint_url": url}
    raw["observability"] = {"otlp_endpoint": url}
    found = problems(raw)
    assert [p.split(":")[0] for p in found] == [
        "observability.otlp_endpoint",
        "targets.vllm",
        "targets.onprem",
        "targets.aws.endpoint_url",
    ], found
    assert all(says in p for p in found), found


def test_a_password_in_a_base_url_without_its_host_is_not_shown() -> None:
    """``http://user:password/v1`` (the ``@host`` forgotten) reads as a host and a port that is
    no number: the problem names it without that "port"."""
    raw = base()
    raw["targets"]["vllm"]["base_url"] = "http://alice:pw-CANARY/v1"
    [problem] = problems(raw)
    assert "has a host or port no HTTP client takes" in problem
    assert "CANARY" not in problem and "'http://alice:…/v1'" in problem


@pytest.mark.parametrize("url", ["http://vllm:8000/v1/", "https://[::1]:8443", "http://u:p%40ss@vllm/v1"])
def test_base_urls_the_clients_take_still_load(url: str) -> None:
    raw = base()
    raw["targets"]["vllm"]["base_url"] = url
    raw["observability"] = {"otlp_endpoint": url}
    assert validate(raw).observability.otlp_endpoint == url
