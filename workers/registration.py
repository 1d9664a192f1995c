"""Registration tasks: thin wrappers that take ids and call the app's pipeline."""

from __future__ import annotations

import logging
import socket

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from app.jobs import pipeline
from app.jobs.queue import QUEUE_DEFAULT
from app.jobs.registration import run_registration_job
from app.jobs.service import requeue_stale_jobs

log = logging.getLogger(__name__)

MAX_RETRIES = 6
_TRANSIENT = (pipeline.TransientError, OperationalError, StaleDataError)


@shared_task(
    bind=True,
    name="registry.jobs.run_registration",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def run_registration(self: Task, job_id: str, queue: str = QUEUE_DEFAULT) -> None:
    """Validate one registration (idempotent). ``queue`` is the queue this message came on
    (steps bound to another queue are handed over). Transient failures are retried with
    exponential backoff; when they persist, or the time limit hits, the job fails."""
    worker = f"{self.request.hostname or socket.gethostname()}/{self.request.id}"
    try:
        run_registration_job(job_id, worker, queue)
    except pipeline.LeaseLostError:
        log.warning("job %s was taken over by another worker", job_id)
    except SoftTimeLimitExceeded:
        pipeline.fail_job(job_id, "TIMEOUT", "the job ran past its time limit", worker)
    except _TRANSIENT as exc:
        code = getattr(exc, "code", "INTERNAL_ERROR")
        if isinstance(exc, OperationalError):
            code = "INTERNAL_ERROR"
        if self.request.retries >= MAX_RETRIES:
            pipeline.fail_job(job_id, code, f"gave up after {MAX_RETRIES} retries: {exc}", worker)
            return
        try:
            pipeline.release_job(job_id, worker)
        except Exception:  # the database is gone too: the reaper requeues it once it is back
            log.warning("job %s: could not release it for a retry", job_id)
        countdown = min(300, 2 ** (self.request.retries + 1))
        log.warning("job %s: %s; retrying in %ss", job_id, exc.__class__.__name__, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:  # a bug: fail the job rather than retry it forever
        log.exception("job %s crashed", job_id)
        pipeline.fail_job(
            job_id, "INTERNAL_ERROR", f"the worker failed: {exc.__class__.__name__}", worker
        )


@shared_task(name="registry.jobs.requeue_stale", ignore_result=True)
def requeue_stale() -> int:
    """Periodic (beat): requeue jobs whose worker died and jobs the broker never delivered."""
    return requeue_stale_jobs()
