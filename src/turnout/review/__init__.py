"""Review sampling: a share of a task's production answers, where capture allows text, queued
for a human label (accept / reject / escalate + note) that feeds the release's quality figures."""

from turnout.review.queue import LABELS, Quality, ReviewError, ReviewItem, ReviewQueue

__all__ = ["LABELS", "Quality", "ReviewError", "ReviewItem", "ReviewQueue"]
