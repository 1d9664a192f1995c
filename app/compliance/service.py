"""Governance: the ``scan``, ``policies`` and ``tests`` steps of a registration, and compliance
re-scans of active assets (CONTRACT.md §5-6).

The asset a policy or test case sees is its API document (``asset``) and its scan facts
(``artifact``). Of each policy and test-suite name, the latest active version applies.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.assets.errors import AssetNotFoundError
from app.assets.models import GOVERNANCE_TYPES, Asset
from app.assets.schemas import AssetSchema
from app.blobs.service import content_key
from app.db import utcnow
from app.events.service import record_event
from app.extensions import db
from app.jobs.models import Job, JobStep
from app.jobs.pipeline import JobContext, StepResult, StorageUnavailableError, claim_job
from app.jobs.queue import RUN_COMPLIANCE_SCAN, enqueue_after_commit
from app.paging import Page, SortKey, paginate
from app.policies.service import (
    RuleResult,
    evaluate_policies,
    latest_active_policies,
    latest_active_suites,
    matches,
    summarize,
)
from app.scan import BlobMissingError, scan_blob
from app.storage import StorageError
from app.testsuites.models import TestRun
from app.testsuites.runner import run_suite

log = logging.getLogger(__name__)

SCAN_BATCH = 200
NOT_GOVERNED = "policies and test suites govern models, pipelines and datasets, not a {}"


def asset_document(asset: Asset) -> dict[str, Any]:
    """The asset as the API shows it: what CEL expressions see as ``asset``."""
    document: dict[str, Any] = AssetSchema().dump(asset)
    return document


def _policy_documents() -> list[dict[str, Any]]:
    return [asset_document(policy) for policy in latest_active_policies(db.session)]


# ---- the scan step ---------------------------------------------------------------------------


def scan_step(asset: Asset, context: JobContext) -> StepResult:
    """Read the content's format and facts (never executing it); reject unsafe pickles."""
    key = content_key(asset)
    if key is None:
        return StepResult("skipped", "metadata-only asset: there is no content to scan")
    try:
        outcome = scan_blob(current_app.extensions["blob_store"], key, heartbeat=context.heartbeat)
    except BlobMissingError:
        return StepResult("failed", f"no object at {asset.storage_uri or key}", "BLOB_NOT_FOUND")
    except StorageError as exc:
        raise StorageUnavailableError(str(exc)) from exc
    asset.artifact = outcome.artifact
    if outcome.unsafe:
        return StepResult("failed", outcome.detail, "UNSAFE_CONTENT")
    return StepResult("passed", outcome.detail)


# ---- the policies step and re-scans ----------------------------------------------------------


def _apply_compliance(
    asset: Asset, results: list[RuleResult], policies: int, *, job_id: str | None
) -> str:
    """Store the evaluation on the asset and write its events; returns the new status."""
    status, violations = summarize(results)
    now = utcnow()
    previous = asset.compliance_status
    asset.compliance_status = status
    asset.compliance = {
        "evaluated_at": now.isoformat().replace("+00:00", "Z"),
        "violations": [v.as_dict() for v in violations],
        "results": [r.as_dict() for r in results],
    }
    record_event(
        db.session,
        "policy_evaluated",
        asset.id,
        {
            "status": status,
            "policies": policies,
            "rules": len(results),
            "violations": len(violations),
            "job_id": job_id,
        },
    )
    if previous != status:
        record_event(
            db.session,
            "compliance_changed",
            asset.id,
            {"from": previous, "to": status, "job_id": job_id},
        )
    return status


def policies_step(asset: Asset, context: JobContext) -> StepResult:
    """Evaluate the applicable policies: a failed ``deny`` rule rejects the registration,
    a failed ``warn`` rule leaves it active with compliance ``warning``."""
    if asset.asset_type in GOVERNANCE_TYPES:
        return StepResult("skipped", NOT_GOVERNED.format(asset.asset_type.replace("_", " ")))
    document = asset_document(asset)
    policies = [
        p
        for p in _policy_documents()
        if matches((p.get("spec") or {}).get("applies_to"), asset.asset_type, asset.tags)
    ]
    results = evaluate_policies(policies, document, asset.artifact)
    status = _apply_compliance(asset, results, len(policies), job_id=context.job_id)
    denied = [r for r in results if not r.passed and r.severity == "deny"]
    if denied:
        reasons = "; ".join(
            f"policy {r.policy_name}@{r.policy_version} rule {r.rule}: {r.message}" for r in denied
        )
        return StepResult("failed", f"denied by {reasons}", "POLICY_VIOLATION")
    if not policies:
        return StepResult("passed", "no policy applies to this asset")
    warned = [r for r in results if not r.passed]
    summary = f"{len(policies)} policies, {len(results)} rules: {status}"
    if warned:
        summary += " (" + "; ".join(f"{r.policy_name}/{r.rule}: {r.message}" for r in warned) + ")"
    return StepResult("passed", summary)


def create_scan_job(
    *,
    actor: str | None,
    asset_type: str | None = None,
    policy_id: str | None = None,
    reason: str = "requested",
) -> Job:
    """A queued ``compliance_scan`` job (the caller commits; it is sent after the commit)."""
    now = utcnow()
    params = {
        k: v
        for k, v in (("asset_type", asset_type), ("policy_id", policy_id), ("reason", reason))
        if v
    }
    job = Job(
        kind="compliance_scan",
        asset_id=None,
        status="queued",
        params=params,
        created_by=actor,
        created_at=now,
        enqueued_at=now,
    )
    job.steps = [JobStep(position=0, name="evaluate")]
    db.session.add(job)
    db.session.flush()
    enqueue_after_commit(db.session(), RUN_COMPLIANCE_SCAN, [job.id])
    return job


def run_compliance_scan(job_id: str, context: JobContext) -> str:
    """Re-evaluate the active assets a scan covers against the current policies, in batches
    (commits per batch; never rejects or deletes). Returns the step's detail."""
    job = db.session.get(Job, job_id)
    assert job is not None
    params = job.params or {}
    policies = _policy_documents()
    selector = None
    if params.get("policy_id"):
        policy = db.session.get(Asset, params["policy_id"])
        selector = ((policy.spec or {}).get("applies_to") if policy else None) or {}
    counts = {"compliant": 0, "warning": 0, "non_compliant": 0}
    changed = seen = 0
    last_id = ""
    while True:
        stmt = (
            select(Asset)
            .where(
                Asset.status == "active",
                Asset.deleted_at.is_(None),
                Asset.id > last_id,
                Asset.asset_type.not_in(GOVERNANCE_TYPES),
            )
            .order_by(Asset.id)
            .limit(SCAN_BATCH)
        )
        if params.get("asset_type"):
            stmt = stmt.where(Asset.asset_type == params["asset_type"])
        batch = list(db.session.scalars(stmt))
        if not batch:
            break
        for asset in batch:
            last_id = asset.id
            if selector is not None and not matches(selector, asset.asset_type, asset.tags):
                continue
            seen += 1
            applicable = [
                p
                for p in policies
                if matches((p.get("spec") or {}).get("applies_to"), asset.asset_type, asset.tags)
            ]
            before = asset.compliance_status
            results = evaluate_policies(applicable, asset_document(asset), asset.artifact)
            status = _apply_compliance(asset, results, len(applicable), job_id=job_id)
            counts[status] += 1
            changed += before != status
        context.hold()
        db.session.commit()
        db.session.expunge_all()  # keep memory flat however many assets there are
        context.heartbeat()
    return (
        f"re-evaluated {seen} active assets against {len(policies)} policies: "
        f"{counts['compliant']} compliant, {counts['warning']} warning, "
        f"{counts['non_compliant']} non_compliant; {changed} changed"
    )


# ---- the tests step --------------------------------------------------------------------------


def applicable_suites(asset: Asset) -> list[Asset]:
    if asset.asset_type in GOVERNANCE_TYPES:
        return []
    return [
        suite
        for suite in latest_active_suites(db.session)
        if matches((suite.spec or {}).get("applies_to"), asset.asset_type, asset.tags)
    ]


def tests_step(asset: Asset, context: JobContext) -> StepResult:
    """Run the applicable test suites and record each run; a failing gating suite rejects."""
    if asset.asset_type in GOVERNANCE_TYPES:
        return StepResult("skipped", NOT_GOVERNED.format(asset.asset_type.replace("_", " ")))
    suites = applicable_suites(asset)
    if not suites:
        return StepResult("skipped", "no test suite applies to this asset")
    settings = current_app.extensions["registry_settings"]
    document = asset_document(asset)
    failed_gating: list[str] = []
    failed_other: list[str] = []
    for suite in suites:
        spec: Mapping[str, Any] = suite.spec or {}
        outcome = run_suite(
            spec, document, asset.artifact, allowed_hosts=settings.test_http_allowed_hosts
        )
        context.heartbeat()
        cases = [case.as_dict() for case in outcome.cases]
        gating = bool(spec.get("gating", True))
        db.session.add(
            TestRun(
                asset_id=asset.id,
                suite_id=suite.id,
                suite_name=suite.name,
                suite_version=suite.version,
                job_id=context.job_id,
                status=outcome.status,
                gating=gating,
                cases=cases,
                started_at=outcome.started_at,
                finished_at=outcome.finished_at,
            )
        )
        record_event(
            db.session,
            "test_suite_completed",
            asset.id,
            {
                "suite_id": suite.id,
                "suite_name": suite.name,
                "suite_version": suite.version,
                "status": outcome.status,
                "gating": gating,
                "job_id": context.job_id,
            },
        )
        if outcome.status != "passed":
            bad = [f"{c['name']}: {c['message']}" for c in cases if c["status"] != "passed"]
            line = f"suite {suite.name}@{suite.version} {outcome.status} ({'; '.join(bad)})"
            (failed_gating if gating else failed_other).append(line)
    if failed_gating:
        return StepResult("failed", "; ".join(failed_gating), "TEST_SUITE_FAILED")
    detail = f"{len(suites)} suite(s) run"
    if failed_other:
        detail += "; non-gating failures: " + "; ".join(failed_other)
    return StepResult("passed", detail)


def compliance_report(asset: Asset) -> dict[str, Any]:
    """``GET /v1/assets/{id}/compliance``: the latest evaluation, each rule's result."""
    summary = asset.compliance or {}
    return {
        "asset_id": asset.id,
        "status": asset.compliance_status,
        "evaluated_at": summary.get("evaluated_at"),
        "results": summary.get("results", []),
    }


def run_scan_job(job_id: str, worker: str) -> None:
    """Run (or resume) a ``compliance_scan`` job: claim it, re-evaluate, record the verdict.
    Idempotent: re-running re-evaluates the same assets to the same result."""
    if not claim_job(job_id, worker):
        return
    context = JobContext(job_id, worker)
    job = db.session.get(Job, job_id)
    assert job is not None
    step = job.steps[0]
    step.status, step.started_at, step.finished_at = "running", utcnow(), None
    context.hold()
    db.session.commit()
    detail = run_compliance_scan(job_id, context)
    job = db.session.get(Job, job_id)
    assert job is not None
    step = job.steps[0]
    now = utcnow()
    step.status, step.detail, step.finished_at = "passed", detail, now
    context.hold()
    job.status, job.finished_at, job.worker, job.error = "succeeded", now, None, None
    db.session.commit()


def schedule_scan() -> str:
    """Beat: queue a scan of every active asset (commits)."""
    job = create_scan_job(actor=None, reason="scheduled")
    db.session.commit()
    return job.id


def request_scan(*, actor: str, asset_type: str | None, policy_id: str | None) -> Job:
    """``POST /v1/compliance/scans`` (commits): 404 for an unknown policy id."""
    if policy_id is not None:
        policy = db.session.get(Asset, policy_id)
        if policy is None or policy.deleted_at is not None or policy.asset_type != "policy":
            raise AssetNotFoundError(f"{policy_id} (a policy)")
    job = create_scan_job(actor=actor, asset_type=asset_type, policy_id=policy_id)
    db.session.commit()
    return job


def list_test_runs(asset_id: str, limit: int, cursor: str | None) -> Page[TestRun]:
    keys = [
        SortKey(TestRun.started_at, lambda r: r.started_at, "datetime", descending=True),
        SortKey(TestRun.id, lambda r: r.id, "str", descending=True),
    ]
    stmt = select(TestRun).where(TestRun.asset_id == asset_id)
    return paginate(
        db.session, stmt, keys, limit=limit, cursor=cursor, bound_to={"asset_id": asset_id}
    )
