"""Wiring of the registration pipeline: which function runs each step, and where."""

from __future__ import annotations

from app.assets.models import Asset
from app.blobs.service import verify_content_step
from app.compliance.service import (
    applicable_suites,
    create_scan_job,
    policies_step,
    scan_step,
    tests_step,
)
from app.dependencies import service as dependencies
from app.jobs import pipeline
from app.jobs.queue import QUEUE_DEFAULT, QUEUE_TESTS

STEPS: dict[str, pipeline.StepFunction] = {
    "checksum": verify_content_step,
    "dependencies": dependencies.resolve_step,
    "scan": scan_step,
    "policies": policies_step,
    "tests": tests_step,
}


def _tests_queue(asset: Asset) -> str:
    # Only a job with suites to run moves to the test fleet; the rest finish where they are.
    return QUEUE_TESTS if applicable_suites(asset) else QUEUE_DEFAULT


STEP_QUEUES = {"tests": _tests_queue}


def activate(asset: Asset, context: pipeline.JobContext) -> pipeline.StepResult | None:
    """Activate under the graph lock; an activated policy triggers a compliance re-scan of the
    assets it applies to (committed with the verdict)."""
    verdict = dependencies.activate(asset, context)
    if verdict is None and asset.asset_type == "policy":
        create_scan_job(actor=asset.created_by, policy_id=asset.id, reason="policy registered")
    return verdict


def run_registration_job(job_id: str, worker: str, queue: str = QUEUE_DEFAULT) -> None:
    """Run or resume one registration job to its verdict (see ``pipeline.run_registration``)."""
    pipeline.run_registration(job_id, worker, STEPS, activate, queue=queue, step_queues=STEP_QUEUES)
