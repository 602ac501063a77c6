"""One loader for every pluggable backend (providers, ledger stores, limiters, key stores).

Backends are named by import string (``"package.module:Attribute"``, uvicorn's habit) and
imported only when chosen, so a deployment that uses one backend never imports another's
driver. A missing optional driver becomes a ``ConfigError`` that says which extra to install;
any other import failure is a bug and propagates as it is.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from turnout.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Backend:
    """``target``: ``"module:attribute"``; ``drivers``: top-level packages that the backend
    needs beyond the base dependencies; ``extra``: the pip extra that brings them."""

    target: str
    drivers: tuple[str, ...] = ()
    extra: str = ""


def load(table: Mapping[str, Backend], name: str, what: str) -> Any:
    """The attribute that ``table[name]`` points at. ``what`` names the config key for errors
    (``store.kind``, ``limits.backend``, ``targets.x.provider``)."""
    backend = table.get(name)
    if backend is None:
        known = ", ".join(sorted(table))
        raise ConfigError([f"{what}: unknown backend {name!r}; known: {known}"])
    module_name, _, attr = backend.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = exc.name.split(".")[0] if exc.name else ""
        if missing not in backend.drivers:
            raise
        raise ConfigError([f"{what}: {name} needs {missing}: pip install 'turnout[{backend.extra}]'"]) from exc
    return getattr(module, attr)
