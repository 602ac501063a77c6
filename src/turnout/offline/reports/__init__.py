"""Reports from the ledger: cost per completed task, latency, quality and usage.

    rows (LedgerStore.rows_between) → compute (pure: rows → Report) → render (table, JSON, CSV)
                                                                    → charts (SVG)

``turnout report`` (``turnout.cli.report``) is the command; everything here is pure and
importable without a store, so the numbers are tested on hand-built rows.
"""

from turnout.offline.reports.figures import DIMENSIONS, KINDS, Column, Report, compute

__all__ = ["DIMENSIONS", "KINDS", "Column", "Report", "compute"]
