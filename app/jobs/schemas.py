from __future__ import annotations

import marshmallow as ma

from app.jobs.models import JOB_KINDS, JOB_STATUSES, STEP_STATUSES
from app.schemas import PagingArgsSchema, UTCDateTime, page_schema


class JobStepSchema(ma.Schema):
    name = ma.fields.String()
    status = ma.fields.String(validate=ma.validate.OneOf(STEP_STATUSES))
    started_at = UTCDateTime(allow_none=True)
    finished_at = UTCDateTime(allow_none=True)
    detail = ma.fields.String(allow_none=True)


class JobErrorSchema(ma.Schema):
    code = ma.fields.String()
    message = ma.fields.String()


class JobSchema(ma.Schema):
    id = ma.fields.String()
    kind = ma.fields.String(validate=ma.validate.OneOf(JOB_KINDS))
    asset_id = ma.fields.String(allow_none=True)
    status = ma.fields.String(validate=ma.validate.OneOf(JOB_STATUSES))
    steps = ma.fields.List(ma.fields.Nested(JobStepSchema))
    error = ma.fields.Nested(JobErrorSchema, allow_none=True)
    attempts = ma.fields.Integer()
    created_at = UTCDateTime()
    started_at = UTCDateTime(allow_none=True)
    finished_at = UTCDateTime(allow_none=True)


class JobQueryArgsSchema(PagingArgsSchema):
    asset_id = ma.fields.String(validate=ma.validate.Length(min=1, max=26))
    status = ma.fields.String(validate=ma.validate.OneOf(JOB_STATUSES))
    kind = ma.fields.String(validate=ma.validate.OneOf(JOB_KINDS))


JobPageSchema = page_schema(JobSchema, "JobPage")
