"""Compliance tasks: re-scans on demand and on beat's schedule."""

from __future__ import annotations

from celery import Task, shared_task

from app.compliance.service import run_scan_job, schedule_scan
from workers.jobs import MAX_RETRIES, run_job


@shared_task(
    bind=True,
    name="registry.compliance.run_scan",
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=MAX_RETRIES,
)
def run_scan(self: Task, job_id: str) -> None:
    """Re-evaluate active assets against the current policies (idempotent, batched)."""
    run_job(self, job_id, lambda worker: run_scan_job(job_id, worker))


@shared_task(name="registry.compliance.schedule_scan", ignore_result=True)
def scheduled_scan() -> str:
    """Beat, every COMPLIANCE_SCAN_INTERVAL_SECONDS: queue a scan of every active asset."""
    return schedule_scan()
