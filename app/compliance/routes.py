from __future__ import annotations

from typing import Any

from flask import url_for
from flask.views import MethodView

from app.assets.service import get_asset
from app.auth.identity import current_identity
from app.compliance import service
from app.compliance.schemas import (
    ComplianceSchema,
    ScanAcceptedSchema,
    ScanRequestSchema,
    TestRunPageSchema,
    TestRunQueryArgsSchema,
)
from app.openapi import Blueprint
from app.paging import Page

blp = Blueprint(
    "compliance", __name__, url_prefix="/v1", description="Policies, compliance and test runs"
)


@blp.route("/assets/<string:asset_id>/compliance")
class AssetCompliance(MethodView):
    @blp.requires("asset:read")
    @blp.response(200, ComplianceSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, asset_id: str) -> dict[str, Any]:
        """The asset's latest policy evaluation, with every rule's result."""
        return service.compliance_report(get_asset(asset_id))


@blp.route("/assets/<string:asset_id>/test-runs")
class AssetTestRuns(MethodView):
    @blp.requires("asset:read")
    @blp.arguments(TestRunQueryArgsSchema, location="query")
    @blp.response(200, TestRunPageSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Page[Any]:
        """The test-suite runs of this asset, newest first."""
        return service.list_test_runs(get_asset(asset_id).id, args["limit"], args["cursor"])


@blp.route("/compliance/scans")
class ComplianceScans(MethodView):
    @blp.requires("compliance:scan")
    @blp.arguments(ScanRequestSchema, required=False)
    @blp.response(202, ScanAcceptedSchema, headers={"Location": {"schema": {"type": "string"}}})
    def post(self, body: dict[str, Any] | None) -> tuple[dict[str, Any], int, dict[str, str]]:
        """Re-evaluate active assets (optionally of one type, or those one policy applies to)
        against the current policies. Answers 202 with the job."""
        body = body or {}
        job = service.request_scan(
            actor=current_identity().username,
            asset_type=body.get("asset_type"),
            policy_id=body.get("policy_id"),
        )
        href = url_for("jobs.JobById", job_id=job.id)
        return {"job": {"id": job.id, "status": job.status, "href": href}}, 202, {"Location": href}
