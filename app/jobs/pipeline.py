"""The registration pipeline (CONTRACT.md §5): what a worker does with a queued job.

Called by ``workers/registration.py`` with a job id. A job is claimed with a conditional update
and a lease that the worker renews while it works; a job whose worker died is taken over once
the lease is stale. Steps that already finished are not run again, so running a job twice gives
the same verdict. A step that may take long commits its start (with the results before it)
so clients see progress.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from opentelemetry import trace
from sqlalchemy import Table, and_, bindparam, func, null, or_, select, update
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value

from app.assets.models import Asset
from app.context import actor_var, request_id_var
from app.db import utcnow
from app.events.service import record_event
from app.extensions import db
from app.jobs.models import Job, JobStep
from app.jobs.queue import QUEUE_DEFAULT, RUN_REGISTRATION, enqueue_after_commit
from app.metrics import JOB_DURATION

_JOBS = cast(Table, Job.__table__)

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

LEASE_SECONDS = 45  # a running job whose heartbeat is older than this is taken over
HEARTBEAT_SECONDS = 10


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
    # What one run of the job computes once and several steps read (the policies and suites
    # in force, the content's size).
    memo: dict[str, Any] = dataclasses.field(default_factory=dict)

    def heartbeat(self, force: bool = False) -> None:
        """Renew the lease (at most every few seconds, commits); ``LeaseLostError`` if it was
        taken."""
        now = time.monotonic()
        if not force and now - self.last_beat < HEARTBEAT_SECONDS:
            return
        self.hold()
        db.session.commit()

    def hold(self) -> None:
        """Renew the lease inside the current transaction, without committing.

        Called right before a commit that writes the job's results: the job row stays locked
        until that commit, so the reaper cannot take the job over between the check and the
        write, and a worker that lost its lease writes nothing (rolled back, ``LeaseLostError``).
        """
        self.last_beat = time.monotonic()
        # On the session's connection: the job's pending changes are not flushed first, they
        # go with the commit that follows, in one flush with the rest (one UPDATE per row, not
        # one per step started).
        result = db.session.connection().execute(
            _RENEW, {"job": self.job_id, "holder": self.worker, "now": utcnow()}
        )
        if result.rowcount != 1:
            db.session.rollback()
            raise LeaseLostError(self.job_id)

    def finish(self, job: Job, now: dt.datetime | None = None) -> None:
        """Mark ``job`` succeeded at ``now`` (default: now), in the current transaction and
        under a lease still ours, as :meth:`hold` and then setting the fields would, in one
        UPDATE instead of two: the job row stays locked until the commit that writes the
        verdict. ``LeaseLostError`` (rolled back) if the job was taken over."""
        now = now or utcnow()
        result = db.session.connection().execute(
            _FINISH, {"job": self.job_id, "holder": self.worker, "now": now}
        )
        if result.rowcount != 1:
            db.session.rollback()
            raise LeaseLostError(self.job_id)
        self.last_beat = time.monotonic()
        # What the row now holds, without a second UPDATE at the flush.
        for key, value in (
            ("status", "succeeded"),
            ("finished_at", now),
            ("worker", None),
            ("error", None),
            ("heartbeat_at", now),
        ):
            set_committed_value(job, key, value)


_TIMESTAMP = _JOBS.c.heartbeat_at.type
# The statements every job runs, built once (building one costs about what running it does).
# The job is still ours: running, with our lease.
_HELD = update(_JOBS).where(
    _JOBS.c.id == bindparam("job"),
    _JOBS.c.worker == bindparam("holder"),
    _JOBS.c.status == "running",
)
_RENEW = _HELD.values(heartbeat_at=bindparam("now", type_=_TIMESTAMP))
_FINISH = _HELD.values(
    status="succeeded",
    finished_at=bindparam("now", type_=_TIMESTAMP),
    worker=None,
    error=null(),  # SQL NULL, not JSON's null
    heartbeat_at=bindparam("now", type_=_TIMESTAMP),
)
# Queued, or running under a lease older than ``stale`` (its worker presumed dead).
_CLAIM = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job"),
        or_(
            _JOBS.c.status == "queued",
            and_(
                _JOBS.c.status == "running",
                or_(
                    _JOBS.c.heartbeat_at.is_(None),
                    _JOBS.c.heartbeat_at < bindparam("stale", type_=_TIMESTAMP),
                ),
            ),
        ),
    )
    .values(
        status="running",
        worker=bindparam("holder"),
        heartbeat_at=bindparam("now", type_=_TIMESTAMP),
        attempts=_JOBS.c.attempts + 1,
        started_at=func.coalesce(_JOBS.c.started_at, bindparam("now", type_=_TIMESTAMP)),
    )
)
# The job with its steps and its asset with the asset's tags and dependencies: one query
# (joined eager loads), not one per object and collection.
_LOAD = (
    select(Job, Asset)
    .outerjoin(Asset, Asset.id == Job.asset_id)
    .options(
        joinedload(Job.steps),
        joinedload(Asset.tag_rows),
        joinedload(Asset.dependency_rows),
    )
    .where(Job.id == bindparam("job"))
)

StepFunction = Callable[[Asset, JobContext], StepResult]
MAX_ATTEMPTS = 5  # a job whose worker keeps dying (a file that crashes it, say) is given up


def adopt_context(job: Job) -> None:
    """Events and log lines written for this job carry the request and actor that queued it."""
    request_id_var.set(job.request_id)
    actor_var.set(job.created_by)


def claim_job(job_id: str, worker: str) -> bool:
    """Take the job if it is queued, or running under a stale lease (commits)."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=LEASE_SECONDS)
    result = db.session.connection().execute(
        _CLAIM, {"job": job_id, "holder": worker, "now": now, "stale": stale}
    )
    db.session.commit()
    return result.rowcount == 1


def release_job(job_id: str, worker: str) -> None:
    """Hand a claimed job back to the queue (before a retry) so any worker may take it; a job
    that another worker has taken over meanwhile is left alone."""
    db.session.rollback()
    result = db.session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker == worker, Job.status == "running")
        .values(status="queued", worker=None, heartbeat_at=None)
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        for step in db.session.scalars(
            select(JobStep).where(JobStep.job_id == job_id, JobStep.status == "running")
        ):
            step.status, step.started_at = "pending", None
    db.session.commit()


def fail_job(job_id: str, code: str, message: str, worker: str | None = None) -> None:
    """The job could not run to a verdict (commits): ``failed`` with ``error``, ``job_failed``.

    With ``worker``, only while that worker holds the job (or nobody does): a worker whose job
    was taken over must not fail it under the new owner's feet.
    """
    db.session.rollback()
    job = db.session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None or job.status in ("succeeded", "failed"):
        db.session.rollback()
        return
    if worker is not None and job.worker not in (None, worker):
        db.session.rollback()
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
    *,
    queue: str = QUEUE_DEFAULT,
    step_queues: Mapping[str, Callable[[Asset, JobContext], str]] | None = None,
    may_take_long: Mapping[str, Callable[[Asset, JobContext], bool]] | None = None,
) -> None:
    """Run (or resume) a registration job to its verdict. Idempotent; commits per step.

    ``steps`` maps each step name to its function; ``activate`` runs last, under the graph lock,
    and may still reject (returns the failing step's result) or activates the asset.
    ``step_queues`` names, per step, the Celery queue it must run on (for this asset); when it
    is not ``queue`` (the one this worker serves), the job is handed over to that queue and
    resumes there at that step — test suites run on a fleet of their own.
    ``may_take_long`` tells, per step, whether it may take long for this asset (content to
    read, dependencies to lock, suites to run); the start of a step that cannot is not
    committed on its own but with the next commit: a registration with nothing slow to do
    commits twice (claimed, verdict) rather than once per step. Without it every start is
    committed.
    """
    if not claim_job(job_id, worker):
        log.info("job %s is finished or running elsewhere", job_id)
        return
    context = JobContext(job_id, worker)
    loaded = db.session.execute(_LOAD, {"job": job_id}).unique().first()
    assert loaded is not None
    job, asset = loaded
    adopt_context(job)
    if job.attempts > MAX_ATTEMPTS:
        fail_job(
            job_id,
            "INTERNAL_ERROR",
            f"gave up after {MAX_ATTEMPTS} attempts: the job keeps stopping mid-way",
            worker,
        )
        return
    if asset is None or asset.deleted_at is not None:
        fail_job(job_id, "INTERNAL_ERROR", "the asset was deleted before it was validated", worker)
        return
    if asset.status == "pending":  # committed with the first commit below
        asset.status = "validating"
        asset.updated_at = utcnow()
    # At most one commit per step, before a step that may take long: it shows the step running
    # with the results before it, so a slow step never runs while those are uncommitted (and
    # a lock a step took is released); quick steps' results wait for the next commit.
    for step in job.steps:
        if step.status in ("passed", "skipped", "failed"):
            continue  # done by an earlier attempt
        wanted = (step_queues or {}).get(step.name, _default_queue)(asset, context)
        if wanted != queue:
            _hand_over(job, wanted, context)
            return
        step.status, step.started_at, step.finished_at = "running", utcnow(), None
        if may_take_long is None or may_take_long.get(step.name, _always)(asset, context):
            context.hold()
            db.session.commit()
        with (
            _tracer.start_as_current_span(
                f"step {step.name}",
                attributes={"registry.job_id": job.id, "registry.step": step.name},
            ),
            JOB_DURATION.labels(job.kind, step.name).time(),
        ):
            result = steps[step.name](asset, context)
        if result.status == "failed":
            _reject(job, asset, step, result, context)
            return
        _finish_step(step, result, asset.id)
    verdict = activate(asset, context)
    if verdict is not None:
        step = next(s for s in job.steps if s.name == "dependencies")
        _reject(job, asset, step, verdict, context)
        return
    context.finish(job)  # the verdict is written only under a lease still ours
    db.session.commit()


def _default_queue(_asset: Asset, _context: JobContext) -> str:
    return QUEUE_DEFAULT


def _always(_asset: Asset, _context: JobContext) -> bool:
    return True


def _hand_over(job: Job, queue: str, context: JobContext) -> None:
    """Put the job back as ``queued`` for a worker of ``queue`` (sent after the commit)."""
    context.hold()
    job.status, job.worker, job.heartbeat_at = "queued", None, None
    job.params = {**(job.params or {}), "queue": queue}
    job.enqueued_at = utcnow()
    enqueue_after_commit(db.session(), RUN_REGISTRATION, [job.id, queue], queue=queue)
    db.session.commit()


def _finish_step(
    step: JobStep, result: StepResult, asset_id: str, now: dt.datetime | None = None
) -> None:
    step.status, step.detail, step.finished_at = result.status, result.detail, now or utcnow()
    for event_type, data in result.events:
        record_event(db.session, event_type, asset_id, data)


def _reject(job: Job, asset: Asset, step: JobStep, result: StepResult, context: JobContext) -> None:
    """Record a blocking failure: the step failed, the rest skipped, the asset rejected."""
    # One time for the job, the failed step, the skipped ones and the asset: the job does not
    # finish before its steps. The lease is checked, and the job row locked, before any write.
    now = utcnow()
    context.finish(job, now)
    _finish_step(step, result, asset.id, now)
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
    db.session.commit()
