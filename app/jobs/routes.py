from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.jobs import service
from app.jobs.models import Job
from app.jobs.schemas import JobPageSchema, JobQueryArgsSchema, JobSchema
from app.openapi import Blueprint
from app.paging import Page

blp = Blueprint("jobs", __name__, url_prefix="/v1/jobs", description="Asynchronous work")


@blp.route("")
class Jobs(MethodView):
    @blp.requires("job:read")
    @blp.arguments(JobQueryArgsSchema, location="query")
    @blp.response(200, JobPageSchema)
    def get(self, args: dict[str, Any]) -> Page[Job]:
        """List jobs, newest first."""
        return service.list_jobs(args)


@blp.route("/<string:job_id>")
class JobById(MethodView):
    @blp.requires("job:read")
    @blp.response(200, JobSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, job_id: str) -> Job:
        """One job with its steps; poll it until ``succeeded`` or ``failed``."""
        return service.get_job(job_id)
