"""Reading jobs (CONTRACT.md §5). Workers move job state; the API only reads it."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import or_, select

from app.db import utcnow
from app.errors import NotFoundError
from app.extensions import db
from app.jobs import pipeline
from app.jobs.models import Job
from app.jobs.queue import (
    QUEUE_DEFAULT,
    RUN_COMPLIANCE_SCAN,
    RUN_REGISTRATION,
    enqueue_after_commit,
)
from app.paging import Page, SortKey, paginate

log = logging.getLogger(__name__)


class JobNotFoundError(NotFoundError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} does not exist")


def get_job(job_id: str) -> Job:
    job = db.session.get(Job, job_id)
    if job is None:
        raise JobNotFoundError(job_id)
    return job


def list_jobs(args: Mapping[str, Any]) -> Page[Job]:
    """Jobs newest first, filtered by ``asset_id``, ``status`` and ``kind``."""
    stmt = select(Job)
    for field in ("asset_id", "status", "kind"):
        if args.get(field):
            stmt = stmt.where(getattr(Job, field) == args[field])
    keys = [
        SortKey(Job.created_at, lambda j: j.created_at, "datetime", descending=True),
        SortKey(Job.id, lambda j: j.id, "str", descending=True),
    ]
    bound = {k: v for k, v in args.items() if k not in ("limit", "cursor")}
    return paginate(
        db.session, stmt, keys, limit=args["limit"], cursor=args.get("cursor"), bound_to=bound
    )


REQUEUE_QUEUED_AFTER = dt.timedelta(minutes=5)


def requeue_stale_jobs() -> int:
    """Send again what no live worker holds (commits; called every few seconds by beat):

    - running jobs whose lease went stale (their worker died): back to ``queued``;
    - queued jobs never sent, or sent long ago (the broker was down or lost the message).

    Returns how many were sent. Sending a job twice is harmless: a worker claims it only once.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=pipeline.LEASE_SECONDS)
    session = db.session
    taken_over = session.scalars(
        select(Job)
        .where(
            Job.status == "running",
            or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
        )
        .limit(500)
        # A locked row is a worker writing (its lease renewal and results commit together):
        # skip it rather than overwrite what it is about to commit.
        .with_for_update(skip_locked=True)
    ).all()
    for job in taken_over:
        log.warning("job %s: worker %s stopped renewing its lease; requeueing", job.id, job.worker)
        job.status, job.worker, job.heartbeat_at = "queued", None, None
        for step in job.steps:
            if step.status == "running":
                step.status, step.started_at = "pending", None
        job.enqueued_at = None
    session.flush()
    lost = session.scalars(
        select(Job)
        .where(
            Job.status == "queued",
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < now - REQUEUE_QUEUED_AFTER),
        )
        .limit(500)
        .with_for_update(skip_locked=True)
    ).all()
    for job in lost:
        job.enqueued_at = now
        queue = (job.params or {}).get("queue", QUEUE_DEFAULT)
        if job.kind == "compliance_scan":
            enqueue_after_commit(session(), RUN_COMPLIANCE_SCAN, [job.id])
        else:
            enqueue_after_commit(session(), RUN_REGISTRATION, [job.id, queue], queue=queue)
    session.commit()
    return len(lost)
