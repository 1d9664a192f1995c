from __future__ import annotations

from typing import Any

from flask import Response, current_app, request, url_for
from flask.views import MethodView

from app.assets import service
from app.assets.models import Asset
from app.assets.schemas import (
    AssetCreateSchema,
    AssetPageSchema,
    AssetQueryArgsSchema,
    AssetRegisteredSchema,
    AssetSchema,
    AssetUpdateSchema,
    DeleteArgsSchema,
    ReadArgsSchema,
    VersionQueryArgsSchema,
)
from app.auth.identity import current_identity
from app.cache import CachedEntry, ReadCache, asset_key, current_read_cache, prefetch
from app.http import if_match_values, not_modified
from app.json import json_bytes
from app.openapi import Blueprint
from app.paging import Page

blp = Blueprint("assets", __name__, url_prefix="/v1/assets", description="Versioned assets")


@blp.before_request
def _prefetch_single_asset() -> None:
    # GET /v1/assets/{id}: its cache entry comes in the same round trip as the caller's.
    req = request._get_current_object()  # type: ignore[attr-defined]
    if req.method == "GET" and req.endpoint == "assets.AssetById":
        asset_id = (req.view_args or {}).get("asset_id")
        # Most reads have no query string: req.args would parse one nonetheless.
        plain = not req.query_string or "include_deleted" not in req.args
        if isinstance(asset_id, str) and plain:
            prefetch(asset_key(asset_id))


ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "Entity tag of the asset"}}


def _with_etag(asset: Asset) -> Response | tuple[Asset, dict[str, str]]:
    if not_modified(asset.etag):
        return Response(status=304, headers={"ETag": asset.etag})
    return asset, {"ETag": asset.etag}


class _Registered:
    """The registered asset plus its job, as the 202 body shows them."""

    def __init__(self, asset: Asset, job: dict[str, str]) -> None:
        self._asset = asset
        self.job = job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._asset, name)


@blp.route("")
class Assets(MethodView):
    @blp.requires("asset:read")
    @blp.arguments(AssetQueryArgsSchema, location="query")
    @blp.response(200, AssetPageSchema)
    def get(self, args: dict[str, Any]) -> Any:
        """List assets: filters, sort and keyset paging (every status but deleted)."""
        cache = current_read_cache()
        if cache is None or cache.backend == "none" or args.get("include_deleted"):
            return service.list_assets(args, current_identity())
        # The page's ids come from the database, their documents from the read cache that
        # GET /v1/assets/{id} fills (one MGET; the misses are loaded, dumped and cached).
        page = service.list_assets(args, current_identity(), ids_only=True)
        items = _asset_documents(cache, [row.id for row in page.items])
        tail = json_bytes(
            {"total": page.total, "limit": page.limit, "next_cursor": page.next_cursor}
        )
        body = b'{"items":[' + b",".join(items) + b"]," + tail[1:]
        return Response(body, mimetype="application/json")

    @blp.requires("asset:write")
    @blp.arguments(AssetCreateSchema)
    @blp.response(202, AssetRegisteredSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(409, response="CONFLICT")
    def post(self, body: dict[str, Any]) -> tuple[_Registered, int, dict[str, str]]:
        """Register a new asset version. Answers 202 at once with the pending asset and the job
        that validates it; poll the job at ``Location``."""
        registration = service.register_asset(
            body, current_identity(), current_app.extensions["blob_store"]
        )
        href = url_for("jobs.JobById", job_id=registration.job.id)
        job = {"id": registration.job.id, "status": registration.job.status, "href": href}
        body_out = _Registered(registration.asset, job)
        return body_out, 202, {"Location": href, "ETag": registration.asset.etag}


_ASSET_SCHEMA = AssetSchema()  # dump only: no state between calls


def _asset_documents(cache: ReadCache, ids: list[str]) -> list[bytes]:
    """The cached JSON documents of ``ids``, in order; the ones not cached are read in one
    query (and cached). An asset deleted since its id was read is left out."""
    keys = [asset_key(asset_id) for asset_id in ids]
    found = cache.lookup_many(keys)
    missing = [asset_id for asset_id, (entry, _) in zip(ids, found, strict=True) if entry is None]
    loaded = {asset.id: asset for asset in service.get_assets(missing)} if missing else {}
    documents, stores = [], []
    for asset_id, key, (entry, token) in zip(ids, keys, found, strict=True):
        if entry is None:
            asset = loaded.get(asset_id)
            if asset is None:
                continue
            entry = CachedEntry(asset.etag, json_bytes(_ASSET_SCHEMA.dump(asset)))
            stores.append((key, token, entry))
        documents.append(entry.body)
    if stores:
        cache.store_many(stores)
    return documents


@blp.route("/<string:asset_id>")
class AssetById(MethodView):
    @blp.requires("asset:read")
    @blp.arguments(ReadArgsSchema, location="query")
    @blp.response(200, AssetSchema, headers=ETAG_HEADER)
    @blp.alt_response(304, description="Not modified (If-None-Match)")
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], asset_id: str) -> Any:
        """One asset, with its ETag; ``If-None-Match`` answers 304 when unchanged."""
        if args["include_deleted"]:
            return _with_etag(service.read_asset(asset_id, current_identity(), True))
        # The hot path: the answer comes from the read-through cache (app/cache.py).
        cache = current_read_cache() or ReadCache()
        entry, token = cache.lookup(asset_key(asset_id))
        if entry is None:
            asset = service.get_asset(asset_id)
            entry = CachedEntry(asset.etag, json_bytes(_ASSET_SCHEMA.dump(asset)))
            cache.store(asset_key(asset_id), token, entry)
        if not_modified(entry.etag):
            return Response(status=304, headers={"ETag": entry.etag})
        return Response(entry.body, content_type="application/json", headers={"ETag": entry.etag})

    @blp.requires("asset:write")
    @blp.arguments(AssetUpdateSchema)
    @blp.response(200, AssetSchema, headers=ETAG_HEADER)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    @blp.alt_response(412, response="PRECONDITION_FAILED")
    def patch(self, body: dict[str, Any], asset_id: str) -> Any:
        """Update description, license, tags (replace), annotations (merge; null deletes) or
        status. Send ``If-Match`` with the ETag to refuse a lost update (412)."""
        asset = service.update_asset(asset_id, body, current_identity(), if_match_values())
        return asset, {"ETag": asset.etag}

    @blp.requires("asset:delete")
    @blp.arguments(DeleteArgsSchema, location="query")
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def delete(self, args: dict[str, Any], asset_id: str) -> None:
        """Soft-delete: the asset leaves reads and lists; its name and version stay reserved."""
        service.delete_asset(asset_id, current_identity(), args["force"])


@blp.route("/<asset_name:name>/versions")
class Versions(MethodView):
    @blp.requires("asset:read")
    @blp.arguments(VersionQueryArgsSchema, location="query")
    @blp.response(200, AssetPageSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args: dict[str, Any], name: str) -> Page[Asset]:
        """Every version of a name, highest SemVer first (pre-releases below their release)."""
        return service.list_versions(name, args["limit"], args["cursor"])


@blp.route("/<asset_name:name>/versions/latest")
class LatestVersion(MethodView):
    @blp.requires("asset:read")
    @blp.response(200, AssetSchema, headers=ETAG_HEADER)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, name: str) -> Any:
        """The highest active release, else the highest active pre-release."""
        return _with_etag(service.latest_version(name))


@blp.route("/<asset_name:name>/versions/<semver:version>")
class VersionByName(MethodView):
    @blp.requires("asset:read")
    @blp.response(200, AssetSchema, headers=ETAG_HEADER)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, name: str, version: str) -> Any:
        """One version of a name (build metadata ignored)."""
        return _with_etag(service.get_version(name, version))
