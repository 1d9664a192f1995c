"""The registration pipeline (CONTRACT.md §5): what a worker does with a queued job.

Called by ``workers/registration.py`` with a job id. A job is claimed with a conditional update
and a lease that the worker renews while it works; a job whose worker died is taken over once
the lease is stale. Steps that already finished are not run again, so running a job twice gives
the same verdict. Each step commits its own result so clients see progress.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, func, or_, select, update

from app.assets.models import Asset
from app.db import utcnow
from app.events.service import record_event
from app.extensions import db
from app.jobs.models import Job, JobStep

log = logging.getLogger(__name__)

LEASE_SECONDS = 45  # a running job whose heartbeat is older than this is taken over
HEARTBEAT_SECONDS = 10
NOT_YET = "skipped: this step arrives with the governance pipeline (scan, policies, tests)"


class TransientError(Exception):
    """A dependency (store, database) failed in a way worth retrying; ``code`` if it persists."""

    code = "INTERNAL_ERROR"


class StorageUnavailableError(TransientError):
    code = "STORAGE_UNAVAILABLE"


class LeaseLostError(Exception):
    """Another worker took this job over (ours was presumed dead): stop without writing."""


@dataclasses.dataclass(frozen=True)
class StepResult:
    status: str  # passed | failed | skipped
    detail: str
    rejection_code: str | None = None
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


@dataclasses.dataclass
class JobContext:
    job_id: str
    worker: str
    last_beat: float = dataclasses.field(default_factory=time.monotonic)

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease (at most every few seconds); ``LeaseLostError`` if it was taken."""
        now = time.monotonic()
        if not force and now - self.last_beat < HEARTBEAT_SECONDS:
            return
        self.last_beat = now
        result = db.session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.worker == self.worker, Job.status == "running")
            .values(heartbeat_at=utcnow())
        )
        db.session.commit()
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLostError(self.job_id)


StepFunction = Callable[[Asset, JobContext], StepResult]


def claim_job(job_id: str, worker: str) -> bool:
    """Take the job if it is queued, or running under a stale lease (commits)."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=LEASE_SECONDS)
    result = db.session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == "queued",
                and_(
                    Job.status == "running",
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                ),
            ),
        )
        .values(
            status="running",
            worker=worker,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
        )
    )
    db.session.commit()
    return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]


def release_job(job_id: str, worker: str) -> None:
    """Hand a claimed job back to the queue (before a retry) so any worker may take it."""
    db.session.rollback()
    db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == "running")
        .values(status="queued", worker=None, heartbeat_at=None)
    )
    for step in db.session.scalars(
        select(JobStep).where(JobStep.job_id == job_id, JobStep.status == "running")
    ):
        step.status, step.started_at = "pending", None
    db.session.commit()


def fail_job(job_id: str, code: str, message: str) -> None:
    """The job could not run to a verdict (commits): ``failed`` with ``error``, ``job_failed``."""
    db.session.rollback()
    job = db.session.get(Job, job_id)
    if job is None or job.status in ("succeeded", "failed"):
        return
    now = utcnow()
    job.status, job.finished_at, job.worker = "failed", now, None
    job.error = {"code": code, "message": message}
    for step in job.steps:
        if step.status == "running":
            step.status, step.finished_at, step.detail = "failed", now, message
    record_event(
        db.session,
        "job_failed",
        job.asset_id,
        {"job_id": job.id, "kind": job.kind, "code": code, "message": message},
    )
    db.session.commit()


def run_registration(
    job_id: str,
    worker: str,
    steps: dict[str, StepFunction],
    activate: Callable[[Asset, JobContext], StepResult | None],
) -> None:
    """Run (or resume) a registration job to its verdict. Idempotent; commits per step.

    ``steps`` maps each step name to its function; ``activate`` runs last, under the graph lock,
    and may still reject (returns the failing step's result) or activates the asset.
    """
    if not claim_job(job_id, worker):
        log.info("job %s is finished or running elsewhere", job_id)
        return
    context = JobContext(job_id, worker)
    job = db.session.get(Job, job_id)
    assert job is not None
    asset = db.session.get(Asset, job.asset_id) if job.asset_id else None
    if asset is None or asset.deleted_at is not None:
        fail_job(job_id, "INTERNAL_ERROR", "the asset was deleted before it was validated")
        return
    if asset.status == "pending":
        asset.status = "validating"
        asset.updated_at = utcnow()
        db.session.commit()
    for step in job.steps:
        if step.status in ("passed", "skipped", "failed"):
            continue  # done by an earlier attempt
        step.status, step.started_at, step.finished_at = "running", utcnow(), None
        db.session.commit()
        result = steps[step.name](asset, context)
        context.heartbeat(force=True)
        if result.status == "failed":
            _reject(job, asset, step, result)
            return
        _finish_step(step, result, asset.id)
        db.session.commit()
    verdict = activate(asset, context)
    if verdict is not None:
        step = next(s for s in job.steps if s.name == "dependencies")
        _reject(job, asset, step, verdict)
        return
    _succeed(job)
    db.session.commit()


def _finish_step(step: JobStep, result: StepResult, asset_id: str) -> None:
    step.status, step.detail, step.finished_at = result.status, result.detail, utcnow()
    for event_type, data in result.events:
        record_event(db.session, event_type, asset_id, data)


def _reject(job: Job, asset: Asset, step: JobStep, result: StepResult) -> None:
    """Record a blocking failure: the step failed, the rest skipped, the asset rejected."""
    _finish_step(step, result, asset.id)
    now = utcnow()
    for later in job.steps:
        if later.position > step.position and later.status in ("pending", "running"):
            later.status, later.finished_at = "skipped", now
            later.detail = f"skipped: the {step.name} step failed"
    asset.status = "rejected"
    asset.rejection = {"code": result.rejection_code, "message": result.detail, "step": step.name}
    asset.updated_at = now
    record_event(
        db.session,
        "asset_rejected",
        asset.id,
        {
            "code": result.rejection_code,
            "message": result.detail,
            "step": step.name,
            "job_id": job.id,
        },
    )
    _succeed(job)
    db.session.commit()


def _succeed(job: Job) -> None:
    job.status, job.finished_at, job.worker, job.error = "succeeded", utcnow(), None, None


def skipped_not_yet(_asset: Asset, _context: JobContext) -> StepResult:
    return StepResult("skipped", NOT_YET)
