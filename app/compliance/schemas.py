from __future__ import annotations

import marshmallow as ma

from app.assets.models import COMPLIANCE_STATUSES
from app.assets.schemas import GOVERNED_TYPES, ULID_PATTERN, FullMatch, JobRefSchema
from app.schemas import PagingArgsSchema, UTCDateTime, page_schema


class RuleResultSchema(ma.Schema):
    policy_id = ma.fields.String()
    policy_name = ma.fields.String()
    policy_version = ma.fields.String()
    rule = ma.fields.String()
    severity = ma.fields.String(validate=ma.validate.OneOf(("deny", "warn")))
    passed = ma.fields.Boolean()
    message = ma.fields.String()


class ComplianceSchema(ma.Schema):
    asset_id = ma.fields.String()
    status = ma.fields.String(validate=ma.validate.OneOf(COMPLIANCE_STATUSES))
    evaluated_at = ma.fields.String(allow_none=True, metadata={"format": "date-time"})
    results = ma.fields.List(ma.fields.Nested(RuleResultSchema))


class ScanRequestSchema(ma.Schema):
    class Meta:
        body_optional = True  # POST /v1/compliance/scans with no body scans everything

    # Only these carry a compliance verdict: a scan of policies or test suites re-checks nothing.
    asset_type = ma.fields.String(validate=ma.validate.OneOf(GOVERNED_TYPES))
    policy_id = ma.fields.String(validate=FullMatch(ULID_PATTERN, error="must be an asset id"))


class ScanAcceptedSchema(ma.Schema):
    job = ma.fields.Nested(JobRefSchema)


class TestCaseResultSchema(ma.Schema):
    name = ma.fields.String()
    status = ma.fields.String(validate=ma.validate.OneOf(("passed", "failed", "error")))
    duration_ms = ma.fields.Integer()
    message = ma.fields.String(allow_none=True)


class TestRunSchema(ma.Schema):
    id = ma.fields.String()
    suite_id = ma.fields.String()
    suite_name = ma.fields.String()
    suite_version = ma.fields.String()
    status = ma.fields.String(validate=ma.validate.OneOf(("passed", "failed", "error")))
    gating = ma.fields.Boolean()
    job_id = ma.fields.String(allow_none=True)
    cases = ma.fields.List(ma.fields.Nested(TestCaseResultSchema))
    started_at = UTCDateTime()
    finished_at = UTCDateTime()


class TestRunQueryArgsSchema(PagingArgsSchema):
    pass


TestRunPageSchema = page_schema(TestRunSchema, "TestRunPage")
