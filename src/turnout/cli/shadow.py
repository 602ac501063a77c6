"""Shadow releases on the command line: ``turnout release shadow`` (start, change, stop), the
shadow sample that ``turnout release show`` prints, the gates ``turnout release canary`` checks
before a shadow may take traffic, and ``turnout report shadow``. The figures and gates are
``turnout.offline.shadow``'s; the pairs come from the shadow store
(``turnout.releases.shadowstore``), which none of these commands creates.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import click
import orjson

from turnout.cli._common import CommandError, iso, run_store, when
from turnout.config import Config
from turnout.offline.evals.gates import GateResult
from turnout.offline.shadow import ShadowSummary, Side, refusal, summarize
from turnout.releases.shadowstore import Pair, ShadowStore, shadow_path


def _place(config: Config) -> Any:
    return config.state_at(shadow_path(config.releases.store_path))


def has_store(config: Config) -> bool:
    """False where a SQLite shadow store was never made (no shadow ever ran): nothing to read."""
    place = _place(config)
    return not isinstance(place, str) or Path(place).is_file()


def read_pairs(
    config: Config,
    task: str,
    release: str | None = None,
    since: float | None = None,
    baseline: str | None = None,
) -> list[Pair]:
    if not has_store(config):
        return []
    return run_store(
        lambda: ShadowStore(_place(config)),
        lambda s: s.pairs(task, release, since=since, baseline=baseline),
        "the shadow store",
    )


def read_summary(config: Config, task: str, release: str, baseline: str | None = None) -> ShadowSummary:
    """The shadow sample of ``release`` against ``baseline``, the task's active release: pairs
    served by another (active before a promotion or a rollback) compared it with something
    else, and do not count. No ``baseline``: every pair (a release's shadow history)."""
    return summarize(task, release, read_pairs(config, task, release, baseline=baseline))


def refuse_failed(config: Config, task: str, release: str, baseline: str | None) -> ShadowSummary:
    """The shadow sample of ``release`` against ``baseline``, when it passes the task's gates
    (``turnout release canary``); a ``CommandError`` naming each failing gate when it does not."""
    summary = read_summary(config, task, release, baseline)
    why = refusal(summary, config.tasks[task])
    if why is not None:
        raise CommandError(why)
    return summary


# --- text -----------------------------------------------------------------------------------


def summary_lines(s: ShadowSummary) -> list[str]:
    """``turnout release show``'s shadow section: side by side, with 95 % intervals."""
    if s.pairs == 0:
        return [f"shadow sample: none yet (no request mirrored to {s.release})"]
    span = f"{when(s.first_at or 0)} → {when(s.last_at or 0)}"
    agreement = (
        "-" if s.agreement is None else f"{s.agreement:.1%} {_ci(s.agreement_interval.low, s.agreement_interval.high)}"
    )
    rows = [
        ("", f"served ({s.served.release or '-'})", f"shadow ({s.release})"),
        ("pass rate", _pass(s.served), _pass(s.shadow)),
        ("latency p50", _ms(s.served.p50_ms), _ms(s.shadow.p50_ms)),
        ("latency p95", _ms(s.served.p95_ms), _ms(s.shadow.p95_ms)),
        ("cost / request", _cost(s.served), _cost(s.shadow)),
        ("cost / pass", _usd(s.served.cost_per_pass()), _usd(s.shadow.cost_per_pass())),
    ]
    out = [
        f"shadow sample: {s.pairs} mirrored requests, {span}",
        f"  agreement:  {agreement} of {s.compared} compared",
        f"  errors:     {s.errors} shadow calls failed ({(s.error_rate or 0):.1%})",
    ]
    if s.judge_calls:
        out.append(f"  judge:      {s.judge_calls} priced calls, {_usd(s.judge_cost_usd)} (not in the shadow's cost)")
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    out += ["  " + "  ".join(c.ljust(width[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return out


def gate_lines(gates: list[GateResult]) -> list[str]:
    return [f"  {g.verdict:<4}  {g.name}: {g.explanation}" for g in gates]


def _ci(low: float, high: float) -> str:
    return f"[{low:.1%}, {high:.1%}]"


def _pass(side: Side) -> str:
    how = "" if side.scored else " (unscored)"
    return f"{side.pass_rate:.1%} {_ci(side.pass_interval.low, side.pass_interval.high)}{how}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def _cost(side: Side) -> str:
    if side.mean_cost_usd is None:
        return "- (unpriced)"
    if side.cost_interval is None:
        return _usd(side.mean_cost_usd)
    return f"{_usd(side.mean_cost_usd)} [{side.cost_interval.low:.6f}, {side.cost_interval.high:.6f}]"


# --- the report -----------------------------------------------------------------------------


def report(config: Config, since: float, until: float, task: str | None, fmt: str) -> str:
    """``turnout report shadow``: one line per task × shadow release × active (served) release
    with pairs in the window. A pair compares the shadow with the release active when it was
    served: pairs from before and after a promotion or a rollback measure two comparisons, never
    one sample (as ``read_summary`` keeps only the active release's)."""
    summaries = []
    for name in sorted([task] if task is not None else config.tasks):
        pairs = [p for p in read_pairs(config, name, since=since) if p.at < until]
        groups: dict[tuple[str, str | None], list[Pair]] = {}
        for p in pairs:
            groups.setdefault((p.shadow_release, p.served_release), []).append(p)
        for (release, _), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            summaries.append(summarize(name, release, group))
    if fmt == "json":
        out: dict[str, Any] = {"since": iso(since), "until": iso(until), "shadows": [s.to_dict() for s in summaries]}
        return _json(out)
    rows = [_report_row(s) for s in summaries]
    header = (
        "TASK",
        "SHADOW",
        "SERVED",
        "PAIRS",
        "AGREEMENT",
        "SHADOW PASS",
        "SERVED PASS",
        "P50 SHADOW/SERVED",
        "COST SHADOW/SERVED",
    )
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([header, *rows])
        return buf.getvalue()
    if not rows:
        return f"no shadow pairs {when(since)} → {when(until)}\n"
    buf = io.StringIO()
    click.echo(f"shadow traffic {when(since)} → {when(until)}", file=buf)
    width = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(width[i]) for i, c in enumerate(r)).rstrip(), file=buf)
    return buf.getvalue()


def _report_row(s: ShadowSummary) -> tuple[str, ...]:
    agreement = (
        "-" if s.agreement is None else f"{s.agreement:.1%} {_ci(s.agreement_interval.low, s.agreement_interval.high)}"
    )
    return (
        s.task,
        s.release,
        s.served.release or "-",
        str(s.pairs),
        agreement,
        _pass(s.shadow),
        _pass(s.served),
        f"{_ms(s.shadow.p50_ms)} / {_ms(s.served.p50_ms)}",
        f"{_usd(s.shadow.mean_cost_usd)} / {_usd(s.served.mean_cost_usd)}",
    )


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n"
