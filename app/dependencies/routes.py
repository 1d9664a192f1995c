from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from app.dependencies import service
from app.dependencies.schemas import GraphArgsSchema, GraphSchema
from app.extensions import db
from app.openapi import Blueprint

blp = Blueprint(
    "dependencies", __name__, url_prefix="/v1/assets", description="The dependency graph"
)


def _graph(asset_id: str, *, reverse: bool, max_depth: int | None) -> Response:
    # The document in GraphSchema's shape (the schema documents it), built by the database on
    # PostgreSQL, else from plain values dumped once: never walked node by node by marshmallow.
    body = service.dependency_graph_json(db.session, asset_id, reverse=reverse, max_depth=max_depth)
    return Response(body, mimetype="application/json")


@blp.route("/<string:asset_id>/dependencies")
class Dependencies(MethodView):
    @blp.requires("dependency:read")
    @blp.arguments(GraphArgsSchema, location="query")
    @blp.response(200, GraphSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Response:
        """What this asset depends on, transitively, along the locked edges."""
        return _graph(asset_id, reverse=False, max_depth=args["max_depth"])


@blp.route("/<string:asset_id>/dependents")
class Dependents(MethodView):
    @blp.requires("dependency:read")
    @blp.arguments(GraphArgsSchema, location="query")
    @blp.response(200, GraphSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Response:
        """What depends on this asset, transitively (edges keep their from -> to direction)."""
        return _graph(asset_id, reverse=True, max_depth=args["max_depth"])
