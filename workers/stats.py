"""Housekeeping of the trigger-kept counts (``app.stats``)."""

from __future__ import annotations

from celery import shared_task

from app.extensions import db
from app.stats.service import fold_deltas


@shared_task(name="registry.stats.fold_counts", ignore_result=True)
def fold_counts() -> None:
    """Periodic (beat): fold the count deltas into the totals, so that list totals and
    ``/metrics`` read a few rows, however many changes came in between."""
    fold_deltas(db.session)
