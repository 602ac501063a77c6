"""Where ledger rows live: one small async interface, one backend per module.

    LedgerStore (Protocol)
    ├── MemoryStore     turnout.ledger.memory     tests and ``store.kind: memory``
    ├── SQLiteStore     turnout.ledger.sqlite     the default, one file under ``./.turnout/``
    └── PostgresStore   turnout.ledger.postgres   shared deployments (``pip install 'turnout[postgres]'``)

Every backend passes the one contract suite in ``tests/test_ledger_store.py``; these are its
rules:

* ``write_batch`` is atomic (all rows or none) and idempotent: writing a row whose
  ``request_id`` is already stored replaces the stored row, so a retried batch is harmless.
* Rows come back equal to what was written (attempts included) and are never shared with the
  caller: mutating a returned row does not change the store.
* ``recent`` is newest first by ``started_at``, ties broken by ``request_id`` descending, so
  the order is the same on every backend.
* ``set_outcome`` touches only the outcome fields of one row, and only when the row belongs to
  the tenant given: another tenant's request id behaves exactly like an unknown one.

Nothing here is on the request path: rows reach a store through ``LedgerWriter``'s queue.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

from turnout.config import StoreConfig
from turnout.errors import ConfigError, TurnoutError
from turnout.ledger.record import LedgerRow


class StoreError(TurnoutError):
    """The store cannot be used: its schema is newer than this code, or it is closed."""


class LedgerStore(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date. Call once before anything else."""
        ...

    async def write_batch(self, rows: Sequence[LedgerRow]) -> None:
        """Store ``rows`` in one transaction, replacing rows with the same ``request_id``."""
        ...

    async def get(self, request_id: str) -> LedgerRow | None: ...

    async def recent(self, limit: int = 100) -> list[LedgerRow]:
        """Up to ``limit`` rows, newest first. ``limit`` must not be negative."""
        ...

    async def count(self) -> int: ...

    async def set_outcome(
        self,
        request_id: str,
        tenant: str,
        outcome: str | None,
        human_review: bool | None,
        escalated: bool | None,
        value: float | None,
        episode_id: str | None,
        at: float,
    ) -> bool:
        """Record feedback on a stored row of ``tenant``: each argument that is not None
        replaces its field (``value`` goes to ``outcome_value``), None keeps what is stored, so
        feedback may arrive in pieces; ``outcome_at`` becomes ``at``. True if a row was updated,
        False if ``tenant`` has no row ``request_id`` (yet: rows reach the store in batches)."""
        ...

    async def aclose(self) -> None:
        """Release the connection. Safe to call twice; nothing may be called afterwards."""
        ...


# Backends by import string, loaded only when chosen (uvicorn's habit), so a deployment that
# uses one backend never imports another's driver.
BACKENDS: dict[str, str] = {
    "memory": "turnout.ledger.memory:MemoryStore",
    "sqlite": "turnout.ledger.sqlite:SQLiteStore",
    "postgres": "turnout.ledger.postgres:PostgresStore",
}

# The extra to install for a backend whose driver is not in the base dependencies.
_DRIVERS = {"postgres": ("asyncpg", "postgres")}


def open_store(cfg: StoreConfig) -> LedgerStore:
    """Build the store ``cfg`` names. It is not yet open: ``await store.open()`` before use."""
    module_name, _, class_name = BACKENDS[cfg.kind].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        driver, extra = _DRIVERS.get(cfg.kind, ("", ""))
        if not driver or exc.name is None or exc.name.split(".")[0] != driver:
            raise
        raise ConfigError([f"store.kind: {cfg.kind} needs {driver}: pip install 'turnout[{extra}]'"]) from exc
    backend = getattr(module, class_name)
    store: LedgerStore = backend.from_config(cfg)
    return store


def check_limit(limit: int) -> None:
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
