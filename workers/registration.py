"""Registration tasks: thin wrappers that take ids and call the app's pipeline."""

from __future__ import annotations

from celery import Task, shared_task

from app.jobs.queue import QUEUE_DEFAULT
from app.jobs.registration import run_registration_job
from app.jobs.service import requeue_stale_jobs
from workers.jobs import MAX_RETRIES, run_job


@shared_task(
    bind=True,
    name="registry.jobs.run_registration",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def run_registration(self: Task, job_id: str, queue: str = QUEUE_DEFAULT) -> None:
    """Validate one registration (idempotent). ``queue`` is the queue this message came on
    (steps bound to another queue are handed over). Failures: see ``workers.jobs``."""
    run_job(self, job_id, lambda worker: run_registration_job(job_id, worker, queue))


@shared_task(name="registry.jobs.requeue_stale", ignore_result=True)
def requeue_stale() -> int:
    """Periodic (beat): requeue jobs whose worker died and jobs the broker never delivered."""
    return requeue_stale_jobs()
