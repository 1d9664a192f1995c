from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Response, current_app, g, request
from flask.views import MethodView

from app.auth.identity import current_identity
from app.blobs import service
from app.blobs.models import Blob
from app.blobs.schemas import BlobReadArgsSchema, BlobSchema
from app.errors import InvalidInputError, UnsupportedMediaTypeError
from app.http import not_modified
from app.openapi import Blueprint

blp = Blueprint("blobs", __name__, url_prefix="/v1", description="Content-addressed blobs")
F = TypeVar("F", bound=Callable[..., Any])

_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_BYTES = {"type": "string", "format": "binary"}
_READ_HEADERS = {
    name: {"schema": {"type": "string"}}
    for name in ("ETag", "X-Checksum-SHA256", "Accept-Ranges", "Content-Range")
}


def _download(view: F) -> F:
    """One documented shape for every streamed download: bytes, 206 with a Range, a presigned
    redirect on S3, 404, 416; it needs ``asset:read`` and takes ``?redirect``."""
    for decorate in reversed(
        (
            blp.requires("asset:read"),
            blp.arguments(BlobReadArgsSchema, location="query"),
            blp.response(
                200,
                _BYTES,
                content_type="application/octet-stream",
                headers=_READ_HEADERS,
                description="The bytes (206 with a Range)",
            ),
            blp.alt_response(
                206,
                schema=_BYTES,
                content_type="application/octet-stream",
                description="Partial content (Range)",
                success=True,
            ),
            blp.alt_response(302, description="Redirect to a presigned URL (S3, ?redirect=true)"),
            blp.alt_response(404, response="NOT_FOUND"),
            blp.alt_response(416, response="REQUESTED_RANGE_NOT_SATISFIABLE"),
        )
    ):
        view = decorate(view)
    return view


def _respond(read: service.BlobRead) -> Response:
    if read.not_modified:
        return Response(status=304, headers={"ETag": read.etag})
    if read.redirect is not None:
        return Response(status=302, headers={"Location": read.redirect, "ETag": read.etag})
    headers = {
        "ETag": read.etag,
        "Accept-Ranges": "bytes",
        "Content-Length": str(read.length),
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if read.hex_digest:
        headers["X-Checksum-SHA256"] = read.hex_digest
    if read.partial:
        headers["Content-Range"] = f"bytes {read.start}-{read.start + read.length - 1}/{read.size}"
    # No body for HEAD: an iterable, not b"", so that Werkzeug keeps our Content-Length.
    # Not stream_with_context: the bytes need no request context, and letting the request end
    # before they flow closes its database session (on SQLite, a held write lock) at once.
    body = read.body if read.body is not None else []
    return Response(
        body,
        status=206 if read.partial else 200,
        headers=headers,
        mimetype="application/octet-stream",
        direct_passthrough=True,
    )


def _chunked_without_end() -> bool:
    """A chunked body the WSGI server does not terminate reads as empty in Werkzeug: refuse it
    rather than store an empty blob (gunicorn and Werkzeug's server do terminate it)."""
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked and not request.environ.get("wsgi.input_terminated")


@blp.route("/blobs")
class Blobs(MethodView):
    @blp.requires("asset:write")
    @blp.doc(
        requestBody={"required": True, "content": _BINARY},
        parameters=[
            {
                "in": "header",
                "name": "X-Checksum-SHA256",
                "required": False,
                "schema": {"type": "string"},
                "description": "Hex SHA-256 the body must have (else 422)",
            }
        ],
    )
    @blp.response(201, BlobSchema, headers={"Location": {"schema": {"type": "string"}}})
    @blp.alt_response(
        200, schema=BlobSchema, description="Already stored (same bytes)", success=True
    )
    @blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE")
    @blp.alt_response(
        422,
        response="UNPROCESSABLE_ENTITY",
        description="X-Checksum-SHA256 does not match the body",
    )
    @blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE")
    def post(self) -> tuple[Blob, int, dict[str, str]]:
        """Upload bytes (streamed; any size up to MAX_BLOB_BYTES). The same bytes twice are one
        blob: the second upload answers 200."""
        mimetype = request.mimetype
        if mimetype and mimetype != "application/octet-stream":
            raise UnsupportedMediaTypeError(
                f"blobs are uploaded as application/octet-stream, not {mimetype}"
            )
        if _chunked_without_end():
            raise InvalidInputError(
                "this server cannot read a chunked body to its end; send a Content-Length"
            )
        limit = int(current_app.extensions["registry_settings"].max_blob_bytes)
        # One past the cap: the store counts the bytes and answers 413 itself; Werkzeug's own
        # limit would refuse a streamed body of exactly MAX_BLOB_BYTES.
        request.max_content_length = limit + 1
        blob, created = service.upload_blob(
            request.stream,
            expected_sha256=request.headers.get("X-Checksum-SHA256"),
            max_bytes=limit,
            actor=current_identity().username,
            content_length=request.content_length,
            verify_body=g.pop("verify_body", None),
        )
        return blob, 201 if created else 200, {"Location": f"/v1/blobs/{blob.digest}"}


@blp.route("/blobs/<string:digest>")
class BlobByDigest(MethodView):
    @_download
    def get(self, args: dict[str, Any], digest: str) -> Response:
        """Download a blob, streamed, with Range support."""
        return _respond(
            service.read_digest(
                digest,
                request.headers.get("Range"),
                head=False,
                redirect=args["redirect"],
                cached=not_modified,
            )
        )

    @blp.requires("asset:read")
    @blp.response(200, _BYTES, content_type="application/octet-stream", headers=_READ_HEADERS)
    @blp.alt_response(404, response="NOT_FOUND")
    def head(self, digest: str) -> Response:
        """The headers of a download, without the bytes."""
        return _respond(
            service.read_digest(
                digest, request.headers.get("Range"), head=True, redirect=False, cached=not_modified
            )
        )


@blp.route("/assets/<string:asset_id>/content")
class AssetContent(MethodView):
    @_download
    def get(self, args: dict[str, Any], asset_id: str) -> Response:
        """Download an asset's content, streamed, with Range support."""
        return _respond(
            service.read_asset_content(
                asset_id,
                request.headers.get("Range"),
                head=False,
                redirect=args["redirect"],
                cached=not_modified,
            )
        )
