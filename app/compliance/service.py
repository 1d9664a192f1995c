"""Governance: the ``scan``, ``policies`` and ``tests`` steps of a registration, and compliance
re-scans of active assets (CONTRACT.md §5-6).

The asset a policy or test case sees is its API document (``asset``) and its scan facts
(``artifact``). Of each policy and test-suite name, the latest active version applies.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm.exc import StaleDataError

from app.assets.errors import AssetNotFoundError
from app.assets.models import GOVERNANCE_TYPES, Asset
from app.assets.schemas import AssetSchema
from app.blobs.service import content_key
from app.db import utcnow
from app.events.service import record_event
from app.extensions import db
from app.jobs.models import Job, JobStep
from app.jobs.pipeline import (
    HEARTBEAT_SECONDS,
    JobContext,
    StepResult,
    StorageUnavailableError,
    adopt_context,
    claim_job,
)
from app.jobs.queue import RUN_COMPLIANCE_SCAN, enqueue_after_commit
from app.paging import Page, SortKey, paginate
from app.policies.service import (
    RuleResult,
    evaluate_policies,
    latest_active_governance,
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
STALE_BATCH_RETRIES = 5  # a batch whose assets changed under it is read and evaluated again
NOT_GOVERNED = "policies and test suites govern models, pipelines and datasets, not a {}"


_ASSET_SCHEMA = AssetSchema()


def asset_document(asset: Asset) -> dict[str, Any]:
    """The asset as the API shows it: what CEL expressions see as ``asset``."""
    document: dict[str, Any] = _ASSET_SCHEMA.dump(asset)
    return document


def _policy_documents(context: JobContext | None = None) -> list[dict[str, Any]]:
    policies = latest_active_policies(db.session) if context is None else _in_force(context)[0]
    return [asset_document(policy) for policy in policies]


def _in_force(context: JobContext) -> tuple[list[Asset], list[Asset]]:
    """The policies and test suites in force, read once per run of a job (the policies step,
    the routing of the tests step and the step itself all ask)."""
    if "governance" not in context.memo:
        # The job's pending changes cannot change which policies and suites are in force (a
        # policy or suite being registered is not governed): they stay unflushed until the
        # commit, one UPDATE per row.
        with db.session.no_autoflush:
            context.memo["governance"] = latest_active_governance(db.session)
    found: tuple[list[Asset], list[Asset]] = context.memo["governance"]
    return found


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
    policies = [
        p
        for p in _policy_documents(context)
        if matches((p.get("spec") or {}).get("applies_to"), asset.asset_type, asset.tags)
    ]
    results = evaluate_policies(policies, asset_document(asset), asset.artifact) if policies else []
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


def _policy_selectors(policy_id: str) -> list[Mapping[str, Any]]:
    """The ``applies_to`` of every version of the policy ``policy_id`` names: a scan after one
    version changed must re-check what any version may have governed (a new version with a
    narrower selector leaves assets that only the old one governed, still marked with the old
    one's verdict)."""
    policy = db.session.get(Asset, policy_id)
    if policy is None:
        return [{}]
    specs = db.session.scalars(
        select(Asset.spec).where(
            Asset.name == policy.name,
            Asset.asset_type == "policy",
            Asset.status != "rejected",  # never applied
        )
    )
    return [(spec or {}).get("applies_to") or {} for spec in specs]


def _scan_batch(
    after_id: str,
    params: Mapping[str, Any],
    policies: list[dict[str, Any]],
    selectors: list[Mapping[str, Any]] | None,
    job_id: str,
    counts: dict[str, int],
) -> tuple[str, int, int] | None:
    """Re-evaluate the next batch of assets after ``after_id`` (uncommitted): (last id, how
    many were covered, how many changed status), or None when there are no more."""
    stmt = (
        select(Asset)
        .where(
            Asset.status == "active",
            Asset.deleted_at.is_(None),
            Asset.id > after_id,
            Asset.asset_type.not_in(GOVERNANCE_TYPES),
        )
        .order_by(Asset.id)
        .limit(SCAN_BATCH)
    )
    if params.get("asset_type"):
        stmt = stmt.where(Asset.asset_type == params["asset_type"])
    batch = list(db.session.scalars(stmt))
    if not batch:
        return None
    seen = changed = 0
    for asset in batch:
        if selectors is not None and not any(
            matches(selector, asset.asset_type, asset.tags) for selector in selectors
        ):
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
    return batch[-1].id, seen, changed


def run_compliance_scan(job_id: str, context: JobContext) -> str:
    """Re-evaluate the active assets a scan covers against the current policies, in batches
    (commits per batch; never rejects or deletes). Returns the step's detail.

    An asset updated meanwhile (a PATCH commits between our read and our write: its row
    version moved on) makes the batch's commit fail; the batch is then read and evaluated
    again rather than failing the whole scan."""
    job = db.session.get(Job, job_id)
    assert job is not None
    params = dict(job.params or {})
    policies = _policy_documents()
    selectors = _policy_selectors(params["policy_id"]) if params.get("policy_id") else None
    counts = {"compliant": 0, "warning": 0, "non_compliant": 0}
    changed = seen = 0
    last_id = ""
    while True:
        for attempt in range(STALE_BATCH_RETRIES):
            batch_counts = dict.fromkeys(counts, 0)
            try:
                outcome = _scan_batch(last_id, params, policies, selectors, job_id, batch_counts)
                if outcome is None:
                    break
                context.hold()
                db.session.commit()
            except StaleDataError:
                db.session.rollback()
                if attempt == STALE_BATCH_RETRIES - 1:
                    raise
                log.info("scan %s: an asset changed under the batch; evaluating it again", job_id)
                continue
            break
        if outcome is None:
            break
        last_id, batch_seen, batch_changed = outcome
        seen, changed = seen + batch_seen, changed + batch_changed
        for status, number in batch_counts.items():
            counts[status] += number
        db.session.expunge_all()  # keep memory flat however many assets there are
        context.heartbeat()
    return (
        f"re-evaluated {seen} active assets against {len(policies)} policies: "
        f"{counts['compliant']} compliant, {counts['warning']} warning, "
        f"{counts['non_compliant']} non_compliant; {changed} changed"
    )


# ---- the tests step --------------------------------------------------------------------------


def applicable_suites(asset: Asset, context: JobContext | None = None) -> list[Asset]:
    """The test suites in force that apply to ``asset``; with ``context``, read once per run
    of its job (the routing of the tests step and the step itself both ask)."""
    if asset.asset_type in GOVERNANCE_TYPES:
        return []
    in_force = latest_active_suites(db.session) if context is None else _in_force(context)[1]
    return [
        suite
        for suite in in_force
        if matches((suite.spec or {}).get("applies_to"), asset.asset_type, asset.tags)
    ]


@contextlib.contextmanager
def _lease_kept(context: JobContext) -> Iterator[None]:
    """Renew the job's lease from a thread of its own while the body runs.

    A test case may wait on the model server for up to its ``timeout_seconds`` (600 s at most),
    far longer than ``LEASE_SECONDS``, and the step can renew nothing while it waits: without
    this, the reaper would hand the job to another worker mid-suite, again and again. The
    thread writes through its own connection and commits nothing else; once the job is no
    longer ours it stops (the step's own ``hold`` then raises ``LeaseLostError``).
    """
    engine: Engine = db.engine
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                with engine.begin() as connection:
                    result = connection.execute(
                        update(Job)
                        .where(
                            Job.id == context.job_id,
                            Job.worker == context.worker,
                            Job.status == "running",
                        )
                        .values(heartbeat_at=utcnow())
                    )
            except Exception as exc:  # the database is away: try again at the next beat
                log.warning("job %s: lease renewal failed: %s", context.job_id, exc)
                continue
            if result.rowcount != 1:
                return

    keeper = threading.Thread(target=renew, name=f"lease-{context.job_id}", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=30)


def tests_step(asset: Asset, context: JobContext) -> StepResult:
    """Run the applicable test suites and record each run; a failing gating suite rejects.

    The runs and their events are written with the step's result, in one commit: a job that
    is taken over or retried mid-step leaves no half-recorded runs behind to be doubled."""
    if asset.asset_type in GOVERNANCE_TYPES:
        return StepResult("skipped", NOT_GOVERNED.format(asset.asset_type.replace("_", " ")))
    suites = applicable_suites(asset, context)
    if not suites:
        return StepResult("skipped", "no test suite applies to this asset")
    settings = current_app.extensions["registry_settings"]
    document = asset_document(asset)
    # End the read transaction before the slow part: on SQLite an open one holds the write
    # lock, and neither the API nor the lease renewal could write while the suites run.
    db.session.commit()
    failed_gating: list[str] = []
    failed_other: list[str] = []
    for suite in suites:
        spec: Mapping[str, Any] = suite.spec or {}
        with _lease_kept(context):
            outcome = run_suite(
                spec, document, asset.artifact, allowed_hosts=settings.test_http_allowed_hosts
            )
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
    adopt_context(job)
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
    context.finish(job, now)  # the job and its step finish at the same time
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
