"""Wiring of the registration pipeline: which function runs each step."""

from __future__ import annotations

from app.blobs.service import verify_content_step
from app.dependencies.service import activate, resolve_step
from app.jobs import pipeline

STEPS: dict[str, pipeline.StepFunction] = {
    "checksum": verify_content_step,
    "dependencies": resolve_step,
    "scan": pipeline.skipped_not_yet,
    "policies": pipeline.skipped_not_yet,
    "tests": pipeline.skipped_not_yet,
}


def run_registration_job(job_id: str, worker: str) -> None:
    """Run or resume one registration job to its verdict (see ``pipeline.run_registration``)."""
    pipeline.run_registration(job_id, worker, STEPS, activate)
