"""The capture store's tables in PostgreSQL (``state.kind: postgres``): ``capture.store``'s
SQLite schema with PostgreSQL's types and its triggers as trigger functions (grants are never
deleted and change once, by their revocation; the audit trail is append-only). Versioned in
``capture_migrations``, append-only history."""

from __future__ import annotations

from turnout.releases.pgschema import REFUSE

CAPTURE: tuple[tuple[str, ...], ...] = (
    (
        REFUSE,
        """CREATE TABLE grants (
            id         text PRIMARY KEY,
            tenant     text NOT NULL,
            task       text NOT NULL,
            starts_at  double precision NOT NULL,
            ends_at    double precision NOT NULL,
            reason     text NOT NULL CHECK (length(trim(reason)) > 0),
            granted_by text NOT NULL CHECK (length(trim(granted_by)) > 0),
            revoked_at double precision,
            revoked_by text,
            CHECK (ends_at > starts_at)
        )""",
        "CREATE INDEX grants_tenant_task ON grants (tenant, task)",
        "CREATE INDEX grants_ends_at ON grants (ends_at)",
        """CREATE TRIGGER grants_no_delete BEFORE DELETE ON grants
            FOR EACH ROW EXECUTE FUNCTION turnout_refuse('capture grants cannot be deleted')""",
        """CREATE TRIGGER grants_revoke_only BEFORE UPDATE ON grants FOR EACH ROW
            WHEN (OLD.revoked_at IS NOT NULL OR NEW.revoked_at IS NULL OR NEW.revoked_by IS NULL
              OR NEW.id IS DISTINCT FROM OLD.id OR NEW.tenant IS DISTINCT FROM OLD.tenant
              OR NEW.task IS DISTINCT FROM OLD.task OR NEW.starts_at IS DISTINCT FROM OLD.starts_at
              OR NEW.ends_at IS DISTINCT FROM OLD.ends_at OR NEW.reason IS DISTINCT FROM OLD.reason
              OR NEW.granted_by IS DISTINCT FROM OLD.granted_by)
            EXECUTE FUNCTION turnout_refuse('a capture grant can only be revoked, once')""",
        """CREATE TABLE audit (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at         double precision NOT NULL,
            event      text NOT NULL CHECK (event IN ('granted', 'used', 'expired', 'revoked', 'purged')),
            grant_id   text,
            tenant     text,
            task       text,
            request_id text,
            actor      text NOT NULL,
            detail     text NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX audit_tenant ON audit (tenant, id)",
        """CREATE UNIQUE INDEX audit_once ON audit (grant_id, event)
            WHERE event IN ('granted', 'expired', 'revoked')""",
        """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
            FOR EACH ROW EXECUTE FUNCTION turnout_refuse('the capture audit trail is append-only')""",
        """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION turnout_refuse('the capture audit trail is append-only')""",
        """CREATE TABLE captures (
            request_id      text PRIMARY KEY,
            tenant          text NOT NULL,
            task            text NOT NULL,
            mode            text NOT NULL CHECK (mode IN ('redacted', 'full')),
            grant_id        text,
            captured_at     double precision NOT NULL,
            expires_at      double precision NOT NULL,
            prompt_text     text NOT NULL,
            completion_text text,
            CHECK (mode = 'redacted' OR grant_id IS NOT NULL)
        )""",
        "CREATE INDEX captures_expires_at ON captures (expires_at)",
        "CREATE INDEX captures_tenant_task ON captures (tenant, task)",
    ),
    # 2: which process runs a purge job this interval (as in SQLite).
    (
        """CREATE TABLE purge_runs (
            name          text PRIMARY KEY,
            owner         text NOT NULL,
            claimed_at    double precision NOT NULL,
            claimed_until double precision NOT NULL
        )""",
    ),
)
