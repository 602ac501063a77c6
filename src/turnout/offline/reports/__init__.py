"""Reports from the ledger: cost per completed task, latency, quality and usage.

    pages of rows (rows_in_pages) → ReportTally (tally: counts, row by row) → Report → render (table, JSON, CSV)
                                  → ChartTally                                       → charts (SVG)

``turnout report`` (``turnout.cli.report``) is the command; everything here is pure and
importable without a store, so the numbers are tested on hand-built rows (``compute``: the
tally over a list).
"""

from turnout.offline.reports.figures import DIMENSIONS, KINDS, Column, Report, compute

__all__ = ["DIMENSIONS", "KINDS", "Column", "Report", "compute"]
