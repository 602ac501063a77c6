"""Policy before routing: the fail-closed invariant, checked on examples and by property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnout.config import DATA_CLASSES
from turnout.errors import PolicyDenied, RequestError
from turnout.routing.policy import OPEN_BY_DEFAULT, allowed_targets, decide, parse_data_class

NAMES = st.sampled_from(["a", "b", "c", "d", "e", "f"])
ROUTES = st.lists(NAMES, unique=True, max_size=6)
CLASSES = st.sampled_from([*DATA_CLASSES, "secret", ""])
POLICIES = st.dictionaries(st.sampled_from(DATA_CLASSES), st.frozensets(NAMES), max_size=4)


# --- parse_data_class ------------------------------------------------------------------------


@pytest.mark.parametrize("value", DATA_CLASSES)
def test_parse_data_class_accepts_each_class(value: str) -> None:
    assert parse_data_class(value) == value


@pytest.mark.parametrize(("value", "expected"), [("PUBLIC", "public"), ("Restricted", "restricted")])
def test_parse_data_class_ignores_case(value: str, expected: str) -> None:
    assert parse_data_class(value) == expected


@pytest.mark.parametrize("value", [None, ""])
def test_parse_data_class_defaults_when_absent(value: str | None) -> None:
    assert parse_data_class(value) == "internal"
    assert parse_data_class(value, default="public") == "public"


@pytest.mark.parametrize("value", ["secret", "public ", "restricted,public", 3, True, ["public"], {"x": 1}])
def test_parse_data_class_refuses_anything_else_with_a_400(value: object) -> None:
    with pytest.raises(RequestError) as info:
        parse_data_class(value)
    err = info.value
    assert err.status == 400
    assert err.param == "X-Turnout-Data-Class"
    assert err.code == "invalid_data_class"
    assert repr(value) in err.message
    assert all(cls in err.message for cls in DATA_CLASSES)


# --- allowed_targets on examples ------------------------------------------------------------


def test_open_classes_without_a_policy_get_the_whole_route_in_order() -> None:
    for cls in ("public", "internal", "confidential"):
        assert allowed_targets(["b", "a", "c"], cls, {}) == ["b", "a", "c"]


def test_restricted_without_a_policy_gets_nothing() -> None:
    assert allowed_targets(["a", "b"], "restricted", {"public": {"a", "b"}}) == []


def test_an_unknown_class_gets_nothing() -> None:
    assert allowed_targets(["a", "b"], "secret", {}) == []


def test_a_policy_filters_the_route_and_keeps_route_order() -> None:
    assert allowed_targets(["c", "a", "b"], "restricted", {"restricted": ["b", "c"]}) == ["c", "b"]


def test_a_policy_narrows_an_open_class_too() -> None:
    assert allowed_targets(["a", "b"], "confidential", {"confidential": ["b"]}) == ["b"]


def test_a_policy_never_adds_targets_that_are_not_on_the_route() -> None:
    assert allowed_targets(["a"], "restricted", {"restricted": ["a", "z"]}) == ["a"]


def test_an_empty_policy_entry_allows_nothing_even_for_open_classes() -> None:
    assert allowed_targets(["a", "b"], "public", {"public": []}) == []


def test_open_by_default_is_everything_but_restricted() -> None:
    assert frozenset(DATA_CLASSES) - OPEN_BY_DEFAULT == {"restricted"}


# --- the invariant, by property ---------------------------------------------------------------


@given(route=ROUTES, cls=CLASSES, policy=POLICIES)
def test_allowed_targets_is_a_subset_of_route_and_allowed_set_in_route_order(
    route: list[str], cls: str, policy: dict[str, frozenset[str]]
) -> None:
    out = allowed_targets(route, cls, policy)
    assert set(out) <= set(route)
    if cls in policy:
        assert set(out) <= policy[cls]
        assert out == [t for t in route if t in policy[cls]]
    elif cls in OPEN_BY_DEFAULT:
        assert out == route
    else:
        assert out == []  # restricted (or unknown) with no policy entry: fail closed
    # route order kept: out is a subsequence of route
    positions = [route.index(t) for t in out]
    assert positions == sorted(positions)


@given(route=ROUTES, policy=POLICIES)
def test_restricted_without_an_entry_reaches_nothing(route: list[str], policy: dict[str, frozenset[str]]) -> None:
    policy.pop("restricted", None)
    assert allowed_targets(route, "restricted", policy) == []


@given(
    route=ROUTES,
    cls=CLASSES,
    policy=POLICIES,
    tenant_classes=st.frozensets(st.sampled_from(DATA_CLASSES)),
)
def test_decide_never_leaves_the_allowed_set_and_refuses_rather_than_widen(
    route: list[str], cls: str, policy: dict[str, frozenset[str]], tenant_classes: frozenset[str]
) -> None:
    expected = allowed_targets(route, cls, policy)
    if cls not in tenant_classes or not expected:
        with pytest.raises(PolicyDenied) as info:
            decide(task="t", route=route, data_class=cls, tenant_classes=tenant_classes, policy=policy)
        assert info.value.status == 403
        return
    out = decide(task="t", route=route, data_class=cls, tenant_classes=tenant_classes, policy=policy)
    assert out
    assert out == expected
    if cls in policy:
        assert set(out) <= policy[cls]
    else:
        assert cls in OPEN_BY_DEFAULT


# --- decide on examples -------------------------------------------------------------------------


def test_decide_returns_the_filtered_route() -> None:
    out = decide(
        task="t",
        route=["cloud", "onprem"],
        data_class="restricted",
        tenant_classes={"restricted"},
        policy={"restricted": {"onprem"}},
    )
    assert out == ["onprem"]


def test_decide_refuses_a_class_the_tenant_lacks() -> None:
    with pytest.raises(PolicyDenied) as info:
        decide(task="t", route=["a"], data_class="restricted", tenant_classes={"public"}, policy={})
    assert info.value.param == "X-Turnout-Data-Class"
    assert info.value.code == "policy_denied"
    assert "restricted" in info.value.message


def test_decide_checks_the_tenant_before_the_route() -> None:
    # Even when the route would allow it, a class the tenant lacks is refused.
    with pytest.raises(PolicyDenied) as info:
        decide(task="t", route=["a"], data_class="public", tenant_classes=set(), policy={})
    assert info.value.param == "X-Turnout-Data-Class"


def test_decide_refuses_an_empty_allowed_set_naming_the_task() -> None:
    with pytest.raises(PolicyDenied) as info:
        decide(
            task="support-reply",
            route=["cloud"],
            data_class="restricted",
            tenant_classes={"restricted"},
            policy={"restricted": {"onprem"}},
        )
    assert "'support-reply'" in info.value.message
    assert "restricted" in info.value.message
    assert info.value.param is None
