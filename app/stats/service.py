"""Reading the trigger-kept counts (see ``app.stats.models``)."""

from __future__ import annotations

from sqlalchemy import delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite

from app.db import DbSession
from app.stats.models import StatusCount, StatusCountDelta

FOLD_AFTER = 10_000  # deltas; folding is a short transaction of its own
# Entities of the counts of live assets (migration 0007): by type and status, by type and
# compliance.
LIVE_ASSETS, LIVE_COMPLIANCE = "asset_live", "live_compliance"
METRIC_ENTITIES = ("asset", "job")  # what /metrics reports (all assets, deleted ones included)


def read_status_counts(session: DbSession) -> dict[tuple[str, str, str], int]:
    """{(entity, kind, status): count} for assets (deleted ones included) and jobs, exact as of
    the read. Folds the delta rows into the totals when they have piled up."""
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
    return {key: n for key, n in totals.items() if n and key[0] in METRIC_ENTITIES}


def live_asset_total(
    session: DbSession,
    asset_type: str | None = None,
    status: str | None = None,
    compliance: str | None = None,
) -> int | None:
    """How many live (not deleted) assets have this type, status and/or compliance, exact as of
    the read, from the trigger-kept counts (migration 0007): what a list filtered by nothing
    else reports as ``total`` without counting rows. None for status and compliance together
    (the counts are by type and one of them). Folds the deltas when they have piled up."""
    if status is not None and compliance is not None:
        return None
    entity, value = (
        (LIVE_COMPLIANCE, compliance) if compliance is not None else (LIVE_ASSETS, status)
    )
    counted, pending = [StatusCount.entity == entity], [StatusCountDelta.entity == entity]
    for column, delta_column, wanted in (
        (StatusCount.kind, StatusCountDelta.kind, asset_type),
        (StatusCount.status, StatusCountDelta.status, value),
    ):
        if wanted is not None:
            counted.append(column == wanted)
            pending.append(delta_column == wanted)
    folded = select(func.coalesce(func.sum(StatusCount.n), 0)).where(*counted)
    deltas = select(func.coalesce(func.sum(StatusCountDelta.delta), 0), func.count()).where(
        *pending
    )
    row = session.execute(select(folded.scalar_subquery(), *deltas.subquery().c)).one()
    if row[2] >= FOLD_AFTER:  # beat folds every few seconds; this is the fallback
        fold_deltas(session)
    return int(row[0]) + int(row[1])


def fold_deltas(session: DbSession) -> None:
    """Move the delta rows into ``status_counts``; commits. Safe to run concurrently: each delta
    row is deleted, and so counted, by exactly one folder."""
    is_pg = session.get_bind().dialect.name == "postgresql"
    # One statement, however many rows a bulk load left; it must stay one: a GET's reads (a list
    # total, a scrape) fold in autocommit (app.db.RegistrySession).
    if is_pg:
        session.execute(
            text(
                "WITH moved AS (DELETE FROM status_count_deltas "
                "RETURNING entity, kind, status, delta) "
                "INSERT INTO status_counts AS c (entity, kind, status, n) "
                "SELECT entity, kind, status, sum(delta) FROM moved "
                "GROUP BY entity, kind, status "
                "ON CONFLICT (entity, kind, status) DO UPDATE SET n = c.n + excluded.n"
            )
        )
        session.commit()
        return
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
