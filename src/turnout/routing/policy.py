"""Policy before routing: pure functions over data, no I/O.

A request's allowed targets are its task's route, in order, filtered by what its data class
may reach. The filter runs before any attempt, so a fallback can never leave the allowed set.
Fail closed: a ``restricted`` class with no policy entry may reach nothing, and an empty
allowed set is a refusal, never a widening.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from turnout.config import DATA_CLASSES
from turnout.errors import PolicyDenied, RequestError

DATA_CLASS_HEADER = "X-Turnout-Data-Class"  # where a request declares its data class

# Classes whose data may go anywhere on the route unless the policy narrows them.
OPEN_BY_DEFAULT = frozenset({"public", "internal", "confidential"})


def parse_data_class(value: object, default: str = "internal") -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value.lower() not in DATA_CLASSES:
        shown = repr(value) if len(repr(value)) <= 64 else repr(value)[:60] + "…"
        raise RequestError(
            f"unknown data class {shown}; expected one of {', '.join(DATA_CLASSES)}",
            param=DATA_CLASS_HEADER,
            code="invalid_data_class",
        )
    return value.lower()


def strictest_class(declared: Sequence[str | None], default: str = "internal") -> str:
    """The class a request carries when it declares more than one (repeated headers, a header
    joined with commas by a proxy, the header and the body's ``metadata.data_class``): the
    strictest of them, so a conflicting declaration never lowers it. None of them: ``default``."""
    found = [parse_data_class(part.strip()) for value in declared if value for part in value.split(",")]
    return max(found, key=DATA_CLASSES.index) if found else default


def allowed_targets(route: Sequence[str], data_class: str, policy: Mapping[str, Collection[str]]) -> list[str]:
    """The route filtered by the data class's allowed set, route order kept."""
    allowed = policy.get(data_class)
    if allowed is None:
        return list(route) if data_class in OPEN_BY_DEFAULT else []
    return [t for t in route if t in allowed]


def decide(
    *,
    task: str,
    route: Sequence[str],
    data_class: str,
    tenant_classes: Collection[str],
    policy: Mapping[str, Collection[str]],
    declared_in: str = DATA_CLASS_HEADER,
) -> list[str]:
    """The ordered targets this request may try, or PolicyDenied naming why none.
    ``declared_in``: where the request declared its class, the refusal's ``param``."""
    if data_class not in tenant_classes:
        raise PolicyDenied(f"this tenant may not send {data_class} data", param=declared_in)
    targets = allowed_targets(route, data_class, policy)
    if not targets:
        raise PolicyDenied(f"no target on the route of task {task!r} may receive {data_class} data")
    return targets
