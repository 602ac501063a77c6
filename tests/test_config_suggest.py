"""A typo in the config gets the nearest valid name ("did you mean …"), for keys at any depth
and for names of targets, tasks and tenants; a name far from every valid one gets none."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from turnout._support.suggest import keys_at, nearest
from turnout.cli.main import main
from turnout.config import Config, validate
from turnout.errors import ConfigError

TARGET = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    return list(caught.value.problems)


def test_every_typo_is_reported_at_once_with_its_nearest_name() -> None:
    raw = {
        "targets": {"selfhosted": {**TARGET, "timeuots": {"total": 5}}},
        "tasks": {"support": {"route": ["selfhostd"]}},
        "tenants": {"acme": {"keys": ["sk-0123456789abcdef"], "limts": {"rpm": 5}, "tasks": ["suport"]}},
        "policy": {"public": {"targets": ["selfhoste"]}},
    }
    found = problems(raw)
    assert "targets.selfhosted.timeuots: unknown key (did you mean 'timeouts'?)" in found
    assert "tenants.acme.limts: unknown key (did you mean 'limits'?)" in found
    assert "tasks.support.route[0]: unknown target 'selfhostd' (did you mean 'selfhosted'?)" in found
    assert "tenants.acme.tasks[0]: unknown task 'suport' (did you mean 'support'?)" in found
    assert "policy.public.targets[0]: unknown target 'selfhoste' (did you mean 'selfhosted'?)" in found


def test_a_typo_inside_an_optional_section_gets_its_nearest_name() -> None:
    """``tasks.T.cache`` (a section that may be left out) gave no guess for ``allowsampled``."""
    cache = {"ttl_s": 60, "classes": ["public"], "allowsampled": True}
    found = problems({"targets": {"t": TARGET}, "tasks": {"x": {"route": ["t"], "cache": cache}}})
    assert "tasks.x.cache.allowsampled: unknown key (did you mean 'allow_sampled'?)" in found


def test_a_policy_for_a_data_class_that_is_misspelled_gets_its_nearest_class() -> None:
    """It read "policy.restriced.[key]: Input should be 'public', …": pydantic's marker as a key."""
    raw = {"targets": {"t": TARGET}, "tasks": {"x": {"route": ["t"]}}}
    found = problems({**raw, "policy": {"restriced": {"targets": ["t"]}, "secret": {"targets": ["t"]}}})
    assert found == [
        "policy.restriced: unknown key (did you mean 'restricted'?)",
        "policy.secret: unknown key (expected 'public', 'internal', 'confidential' or 'restricted')",
    ]


def test_a_top_level_key_and_a_name_far_from_any_get_no_guess_or_the_right_one() -> None:
    found = problems({"targets": {"t": TARGET}, "tasks": {"x": {"route": ["zzzzzz"]}}, "tenatns": {}})
    assert "tenatns: unknown key (did you mean 'tenants'?)" in found
    assert "tasks.x.route[0]: unknown target 'zzzzzz'" in found


def test_check_prints_the_guesses(tmp_path: Any) -> None:
    path = tmp_path / "turnout.yaml"
    path.write_text("targets:\n  up: {provider: openai, base_url: 'http://127.0.0.1:9/v1', model: m, modle: x}\n")
    result = CliRunner().invoke(main, ["check", "-c", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "targets.up.modle: unknown key (did you mean 'model'?)" in result.output


def test_keys_at_walks_maps_lists_and_the_provider_union() -> None:
    assert "timeouts" in keys_at(Config, ("targets", "t", "openai", "timeuots"))
    assert "limits" in keys_at(Config, ("tenants", "acme", "limts"))
    assert "tenants" in keys_at(Config, ("tenatns",))
    assert keys_at(Config, ("no", "such", "place", "x")) == []


@given(st.text(max_size=30), st.lists(st.text(max_size=30), max_size=8))
def test_nearest_never_fails_and_only_names_a_candidate(word: str, candidates: list[str]) -> None:
    hint = nearest(word, candidates)
    assert hint == "" or any(hint == f" (did you mean {c!r}?)" for c in candidates)
    assert nearest(3, candidates) == ""
