"""Problem details (RFC 9457) for every error the API returns, rendered by one set of handlers.

Services raise ``RegistryError`` subclasses; routes never catch them. Anything else that escapes a
view becomes a logged 500 ``INTERNAL_ERROR`` without a stack trace in the body.
"""

from __future__ import annotations

import http
import logging
import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson
from flask import Flask, Response, g, has_request_context, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from app.context import new_request_id

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

# HTTP status -> contract code, for errors raised by Flask/Werkzeug rather than by our services.
_CODES_BY_STATUS = {
    400: "INVALID_INPUT",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    416: "RANGE_NOT_SATISFIABLE",
    422: "VALIDATION_FAILED",
    429: "RATE_LIMIT_EXCEEDED",
    503: "UNAVAILABLE",
}


class RegistryError(Exception):
    """Base of every domain error: carries the HTTP status, the contract code and a human detail."""

    status: int = 500
    code: str = "INTERNAL_ERROR"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Mapping[str, list[str]] | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.default_detail())
        self.detail = detail or self.default_detail()
        self.errors = dict(errors) if errors else None
        self.headers = dict(headers or {})
        self.extra = extra

    def default_detail(self) -> str:
        return http.HTTPStatus(self.status).phrase


class InvalidInputError(RegistryError):
    status, code = 400, "INVALID_INPUT"


class UnauthorizedError(RegistryError):
    status, code = 401, "UNAUTHORIZED"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="llm-registry"'})
        super().__init__(detail or "valid credentials are required", **kwargs)


class ForbiddenError(RegistryError):
    status, code = 403, "FORBIDDEN"


class NotFoundError(RegistryError):
    status, code = 404, "NOT_FOUND"


class AlreadyExistsError(RegistryError):
    status, code = 409, "ALREADY_EXISTS"


class ConflictError(RegistryError):
    status, code = 409, "CONFLICT"


class PreconditionFailedError(RegistryError):
    status, code = 412, "PRECONDITION_FAILED"


class PayloadTooLargeError(RegistryError):
    status, code = 413, "PAYLOAD_TOO_LARGE"


class UnsupportedMediaTypeError(RegistryError):
    status, code = 415, "UNSUPPORTED_MEDIA_TYPE"


class ValidationFailedError(RegistryError):
    status, code = 422, "VALIDATION_FAILED"

    def __init__(self, errors: Mapping[str, list[str]], detail: str | None = None) -> None:
        fields = ", ".join(sorted(errors)) or "the request"
        super().__init__(detail or f"invalid value in {fields}", errors=errors)


class UnavailableError(RegistryError):
    status, code = 503, "UNAVAILABLE"


def problem_response(
    status: int,
    code: str,
    detail: str,
    *,
    errors: Mapping[str, list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    """Render one problem+json response; the only place the error body shape is written."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": http.HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": _request_id(),
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update(extra)
    response = Response(orjson.dumps(body), status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _request_id() -> str | None:
    """This request's id; made here when the failure came before the request hooks set it, so
    that the body and the ``X-Request-ID`` header (written from ``g``) still agree."""
    if not has_request_context():
        return None
    if not g.get("request_id"):
        g.request_id = new_request_id()
    return str(g.request_id)


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """Turn marshmallow's nested error dict into ``{"a.b.0": [messages]}`` (CONTRACT.md §1)."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            if key == "_schema":
                path = prefix or "_schema"
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            for sub_path, sub_messages in flatten_errors(value, path).items():
                out.setdefault(sub_path, []).extend(sub_messages)
    elif isinstance(messages, (list, tuple)):
        for item in messages:
            if isinstance(item, (Mapping, list, tuple)):
                for sub_path, sub_messages in flatten_errors(item, prefix).items():
                    out.setdefault(sub_path, []).extend(sub_messages)
            else:
                out.setdefault(prefix or "_schema", []).append(str(item))
    else:
        out.setdefault(prefix or "_schema", []).append(str(messages))
    return out


def _webargs_errors(error: HTTPException) -> dict[str, list[str]] | None:
    data = getattr(error, "data", None) or {}
    messages = data.get("messages") or data.get("errors")
    if not messages:
        return None
    # webargs nests messages under the request location ("json", "query", ...): drop that level.
    out: dict[str, list[str]] = {}
    for location_messages in messages.values():
        for path, items in flatten_errors(location_messages).items():
            out.setdefault(path, []).extend(items)
    return out


def handle_registry_error(error: RegistryError) -> Response:
    return problem_response(
        error.status,
        error.code,
        error.detail,
        errors=error.errors,
        headers=error.headers,
        extra=error.extra,
    )


def handle_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    if status >= 500 and status != 503:
        return handle_unexpected(error)
    code = _CODES_BY_STATUS.get(status, "INVALID_INPUT" if status < 500 else "INTERNAL_ERROR")
    headers: dict[str, str] = {}
    if status == 405:
        headers.update({k: v for k, v in error.get_headers() if k.lower() == "allow"})
    data_headers = (getattr(error, "data", None) or {}).get("headers") or {}
    headers.update(data_headers)
    errors = None
    detail = error.description or http.HTTPStatus(status).phrase
    if status == 422:
        errors = _webargs_errors(error) or {}
        detail = f"invalid value in {', '.join(sorted(errors)) or 'the request'}"
    elif status == 400:
        webargs = _webargs_errors(error)
        if webargs:
            detail = "; ".join(f"{k}: {' '.join(v)}" for k, v in webargs.items())
    elif status == 404 and request.url_rule is None:
        detail = f"no route for {request.path}"
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.path}"
    return problem_response(status, code, detail, errors=errors, headers=headers)


def handle_database_unavailable(error: BaseException) -> Response:
    """A lost database connection is the operator's problem, not the client's: 503, never 500."""
    log.error("database unavailable: %s", error.__class__.__name__)
    return problem_response(
        503,
        "UNAVAILABLE",
        "the database is unavailable; retry shortly",
        headers={"Retry-After": "5"},
    )


def handle_unexpected(error: BaseException) -> Response:
    original = getattr(error, "original_exception", None) or error
    if _is_unavailable(original):
        return handle_database_unavailable(original)
    if isinstance(original, sa_exc.DataError):
        # A value the database refuses (out of range, bad encoding) came from the request:
        # the client's problem, not a crash. Logged, since validation should have caught it.
        log.warning("database refused a value: %s", original.orig.__class__.__name__)
        return problem_response(400, "INVALID_INPUT", "a value in the request is not acceptable")
    log.error("unhandled error", exc_info=original)
    return problem_response(500, "INTERNAL_ERROR", "the registry failed to handle this request")


# SQLite reports a busy or unreachable database file with these; its other OperationalErrors
# ("no such table", "syntax error") are bugs, which must stay 500s.
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open", "disk i/o error", "busy")


def _is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (503), not a bug (500)."""
    if isinstance(error, sa_exc.TimeoutError):  # no pooled connection came free in time
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return False
    if isinstance(error.orig, sqlite3.Error):
        message = str(error.orig).lower()
        return any(marker in message for marker in _SQLITE_UNAVAILABLE)
    # psycopg: connection refused or lost, server shutting down, statement timeout.
    return True


def register_error_handlers(app: Flask) -> None:
    """Bind the handlers; called by create_app after the smorest Api so ours take precedence."""
    app.register_error_handler(RegistryError, handle_registry_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
