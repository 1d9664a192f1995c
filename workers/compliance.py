"""Compliance tasks: re-scans on demand and on beat's schedule."""

from __future__ import annotations

import logging
import socket

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm.exc import StaleDataError

from app.compliance.service import run_scan_job, schedule_scan
from app.jobs import pipeline

log = logging.getLogger(__name__)

MAX_RETRIES = 6
# An asset that kept changing under a batch (see run_compliance_scan) is worth a later retry.
_TRANSIENT = (pipeline.TransientError, OperationalError, StaleDataError)


@shared_task(
    bind=True,
    name="registry.compliance.run_scan",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def run_scan(self: Task, job_id: str) -> None:
    """Re-evaluate active assets against the current policies (idempotent, batched)."""
    worker = f"{self.request.hostname or socket.gethostname()}/{self.request.id}"
    try:
        run_scan_job(job_id, worker)
    except pipeline.LeaseLostError:
        log.warning("scan %s was taken over by another worker", job_id)
    except SoftTimeLimitExceeded:
        pipeline.fail_job(job_id, "TIMEOUT", "the scan ran past its time limit", worker)
    except _TRANSIENT as exc:
        if self.request.retries >= MAX_RETRIES:
            pipeline.fail_job(job_id, "INTERNAL_ERROR", f"gave up: {exc}", worker)
            return
        try:
            pipeline.release_job(job_id, worker)
        except Exception:
            log.warning("scan %s: could not release it for a retry", job_id)
        raise self.retry(exc=exc, countdown=min(300, 2 ** (self.request.retries + 1))) from exc
    except Exception as exc:  # a bug: fail the job rather than retry it forever
        log.exception("scan %s crashed", job_id)
        pipeline.fail_job(
            job_id, "INTERNAL_ERROR", f"the worker failed: {exc.__class__.__name__}", worker
        )


@shared_task(name="registry.compliance.schedule_scan", ignore_result=True)
def scheduled_scan() -> str:
    """Beat, every COMPLIANCE_SCAN_INTERVAL_SECONDS: queue a scan of every active asset."""
    return schedule_scan()
