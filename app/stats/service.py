"""Reading the trigger-kept counts (see ``app.stats.models``)."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from app.db import DbSession
from app.stats.models import StatusCount, StatusCountDelta

FOLD_AFTER = 10_000  # deltas; folding is a short transaction of its own


def read_status_counts(session: DbSession) -> dict[tuple[str, str, str], int]:
    """{(entity, kind, status): count} for assets and jobs, exact as of the read. Folds the
    delta rows into the totals when they have piled up (at most a few thousand rows read)."""
    key = (StatusCount.entity, StatusCount.kind, StatusCount.status)
    totals = {(e, k, s): n for e, k, s, n in session.execute(select(*key, StatusCount.n))}
    pending = 0
    for e, k, s, delta, rows in session.execute(
        select(
            StatusCountDelta.entity,
            StatusCountDelta.kind,
            StatusCountDelta.status,
            func.sum(StatusCountDelta.delta),
            func.count(),
        ).group_by(StatusCountDelta.entity, StatusCountDelta.kind, StatusCountDelta.status)
    ):
        totals[(e, k, s)] = totals.get((e, k, s), 0) + int(delta or 0)
        pending += int(rows)
    if pending >= FOLD_AFTER:
        fold_deltas(session)
    return {key: n for key, n in totals.items() if n}


def fold_deltas(session: DbSession) -> None:
    """Move the delta rows into ``status_counts``; commits. Safe to run concurrently: each delta
    row is deleted, and so counted, by exactly one folder."""
    is_pg = session.get_bind().dialect.name == "postgresql"
    moved = session.execute(
        delete(StatusCountDelta).returning(
            StatusCountDelta.entity,
            StatusCountDelta.kind,
            StatusCountDelta.status,
            StatusCountDelta.delta,
        )
    ).all()
    sums: dict[tuple[str, str, str], int] = {}
    for e, k, s, d in moved:
        sums[(e, k, s)] = sums.get((e, k, s), 0) + d
    insert = postgresql.insert if is_pg else sqlite.insert
    for (e, k, s), d in sums.items():
        stmt = insert(StatusCount).values(entity=e, kind=k, status=s, n=d)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["entity", "kind", "status"],
                set_={"n": StatusCount.n + stmt.excluded.n},
            )
        )
    session.commit()
