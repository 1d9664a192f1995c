"""Reading jobs (CONTRACT.md §5). Workers move job state; the API only reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select

from app.errors import NotFoundError
from app.extensions import db
from app.jobs.models import Job
from app.paging import Page, SortKey, paginate


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
