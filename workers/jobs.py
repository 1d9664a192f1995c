"""What every job task does around its work: a worker name for the lease, and one policy for
failures — a lost lease stops quietly, transient errors retry with exponential backoff (the job
released so any worker may take it), the time limit and bugs fail the job with a code."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from app.jobs import pipeline

log = logging.getLogger(__name__)

MAX_RETRIES = 6
TRANSIENT = (pipeline.TransientError, OperationalError, StaleDataError)


def run_job(task: Task, job_id: str, work: Callable[[str], None]) -> None:
    """Call ``work(worker)`` for ``job_id`` under the failure policy above."""
    worker = f"{task.request.hostname or socket.gethostname()}/{task.request.id}"
    try:
        work(worker)
    except pipeline.LeaseLostError:
        log.warning("job %s was taken over by another worker", job_id)
    except SoftTimeLimitExceeded:
        pipeline.fail_job(job_id, "TIMEOUT", "the job ran past its time limit", worker)
    except TRANSIENT as exc:
        code = "INTERNAL_ERROR" if isinstance(exc, OperationalError) else exc_code(exc)
        if task.request.retries >= MAX_RETRIES:
            pipeline.fail_job(job_id, code, f"gave up after {MAX_RETRIES} retries: {exc}", worker)
            return
        try:
            pipeline.release_job(job_id, worker)
        except Exception:  # the database is gone too: the reaper requeues it once it is back
            log.warning("job %s: could not release it for a retry", job_id)
        countdown = min(300, 2 ** (task.request.retries + 1))
        log.warning("job %s: %s; retrying in %ss", job_id, exc.__class__.__name__, countdown)
        raise task.retry(exc=exc, countdown=countdown) from exc
    except Exception as exc:  # a bug: fail the job rather than retry it forever
        log.exception("job %s crashed", job_id)
        pipeline.fail_job(
            job_id, "INTERNAL_ERROR", f"the worker failed: {exc.__class__.__name__}", worker
        )


def exc_code(exc: BaseException) -> str:
    return str(getattr(exc, "code", "INTERNAL_ERROR"))
