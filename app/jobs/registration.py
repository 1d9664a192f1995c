"""Wiring of the registration pipeline: which function runs each step, and where."""

from __future__ import annotations

from app.assets.models import Asset
from app.blobs.service import content_size, verify_content_step
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
from app.storage import StorageError

STEPS: dict[str, pipeline.StepFunction] = {
    "checksum": verify_content_step,
    "dependencies": dependencies.resolve_step,
    "scan": scan_step,
    "policies": policies_step,
    "tests": tests_step,
}


def _tests_queue(asset: Asset, context: pipeline.JobContext) -> str:
    # Only a job with suites to run moves to the test fleet; the rest finish where they are.
    return QUEUE_TESTS if applicable_suites(asset, context) else QUEUE_DEFAULT


STEP_QUEUES = {"tests": _tests_queue}


# Content up to this size is read (hashed, scanned) in milliseconds: its steps are quick.
QUICK_CONTENT_BYTES = 4 * 1024 * 1024


def content_may_take_long(asset: Asset, context: pipeline.JobContext) -> bool:
    """Content to read, unless the store says it is small; an unknown size (no object, the
    store away) counts as long, and the step says what is wrong."""
    if not (asset.checksum_value or asset.storage_uri):
        return False
    try:
        size = content_size(asset, context)
    except StorageError:
        return True
    return size is None or size > QUICK_CONTENT_BYTES


def _has_dependencies(asset: Asset, _context: pipeline.JobContext) -> bool:
    return bool(asset.dependency_rows)


# Steps that may take long for an asset (a blob of some size to read, edges to lock, suites to
# run); the others (policies: CEL over the asset's document) run in a moment.
MAY_TAKE_LONG = {
    "checksum": content_may_take_long,
    "dependencies": _has_dependencies,
    "scan": content_may_take_long,
    "policies": lambda _asset, _context: False,
    "tests": lambda asset, context: bool(applicable_suites(asset, context)),
}


def activate(asset: Asset, context: pipeline.JobContext) -> pipeline.StepResult | None:
    """Activate under the graph lock; an activated policy triggers a compliance re-scan of the
    assets it applies to (committed with the verdict)."""
    verdict = dependencies.activate(asset, context)
    if verdict is None and asset.asset_type == "policy":
        create_scan_job(actor=asset.created_by, policy_id=asset.id, reason="policy registered")
    return verdict


def run_registration_job(job_id: str, worker: str, queue: str = QUEUE_DEFAULT) -> None:
    """Run or resume one registration job to its verdict (see ``pipeline.run_registration``)."""
    pipeline.run_registration(
        job_id,
        worker,
        STEPS,
        activate,
        queue=queue,
        step_queues=STEP_QUEUES,
        may_take_long=MAY_TAKE_LONG,
    )
