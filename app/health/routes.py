from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView

from app.health import service
from app.openapi import Blueprint

blp = Blueprint("health", __name__, description="Liveness, readiness and build information")


class CheckSchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "ok, error or disabled"})
    latency_ms = ma.fields.Float()
    message = ma.fields.String()
    pending = ma.fields.Integer(metadata={"description": "outbox: events not yet published"})
    oldest_pending_age_seconds = ma.fields.Float(
        metadata={"description": "outbox: how long the oldest pending event has waited"}
    )


class HealthSchema(ma.Schema):
    status = ma.fields.String(metadata={"description": "healthy, degraded or unhealthy"})
    version = ma.fields.String()
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(CheckSchema))


class ProbeSchema(ma.Schema):
    status = ma.fields.String()
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.Nested(CheckSchema))


class VersionSchema(ma.Schema):
    version = ma.fields.String()
    api_version = ma.fields.String()
    git_sha = ma.fields.String(allow_none=True)
    build_timestamp = ma.fields.String(allow_none=True)


@blp.route("/health")
class Health(MethodView):
    @blp.doc(security=[])
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Unhealthy: the database is down")
    def get(self) -> tuple[dict[str, Any], int]:
        """Every part of the registry with its status and latency."""
        report = service.health(
            current_app.extensions["registry_settings"], current_app.extensions["blob_store"]
        )
        return report, 503 if report["status"] == "unhealthy" else 200


@blp.route("/health/live")
class Live(MethodView):
    @blp.doc(security=[])
    @blp.response(200, ProbeSchema)
    def get(self) -> dict[str, Any]:
        """The process is up (no dependency is checked)."""
        return {"status": "alive", "checks": {}}


@blp.route("/health/ready")
class Ready(MethodView):
    @blp.doc(security=[])
    @blp.response(200, ProbeSchema)
    @blp.alt_response(503, schema=ProbeSchema, description="Database or broker unreachable")
    def get(self) -> tuple[dict[str, Any], int]:
        """Database and broker reachable: ready to take traffic."""
        checks = service.readiness(current_app.extensions["registry_settings"])
        ready = all(c["status"] in ("ok", "disabled") for c in checks.values())
        return {"status": "ready" if ready else "not_ready", "checks": checks}, (
            200 if ready else 503
        )


@blp.route("/version")
class Version(MethodView):
    @blp.doc(security=[])
    @blp.response(200, VersionSchema)
    def get(self) -> dict[str, Any]:
        """Version of the registry and of its API, and the build it came from."""
        return service.build_info()
