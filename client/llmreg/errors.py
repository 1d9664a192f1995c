"""One exception hierarchy for everything the client raises.

``RegistryError`` and its subclasses are answers from the server: RFC 9457 problem details whose
``code`` (CONTRACT.md §1) picks the subclass, so callers can ``except NotFoundError`` rather than
compare status numbers. The others (``ConnectionFailedError``, ``JobTimeoutError``,
``ChecksumMismatchError``) happen on the client's side of the wire.
"""

from __future__ import annotations

import http
import json
from collections.abc import Mapping
from typing import Any

import httpx


class LlmregError(Exception):
    """Base of every error raised by ``llmreg``; ``code`` is stable, for scripts."""

    code: str = "CLIENT_ERROR"


class RegistryError(LlmregError):
    """The server answered with an error (a problem+json document).

    ``status`` is the HTTP status, ``code`` the contract's stable code (``NOT_FOUND``,
    ``ALREADY_EXISTS``, ...), ``problem`` the whole document as the server sent it.
    """

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str,
        problem: Mapping[str, Any] | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code} ({status}): {detail}")
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.problem: dict[str, Any] = dict(problem or {})
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}

    @property
    def request_id(self) -> str | None:
        value = self.problem.get("request_id") or self.headers.get("x-request-id")
        return str(value) if value else None

    @property
    def errors(self) -> dict[str, list[str]]:
        """Field errors of a 422 (``{"provenance.commit_hash": [messages]}``), else ``{}``."""
        errors = self.problem.get("errors")
        return dict(errors) if isinstance(errors, Mapping) else {}


class InvalidInputError(RegistryError):
    """400 ``INVALID_INPUT``: the request could not be parsed."""


class UnauthorizedError(RegistryError):
    """401: missing, expired, forged or revoked credentials, or a failed login."""


class ForbiddenError(RegistryError):
    """403: authenticated, but the role does not allow it."""


class NotFoundError(RegistryError):
    """404 ``NOT_FOUND``."""


class ConflictError(RegistryError):
    """409 ``CONFLICT`` (a refused status change) or ``HAS_DEPENDENTS``."""


class AlreadyExistsError(ConflictError):
    """409 ``ALREADY_EXISTS``: (name, version) is taken forever; ``asset_id`` names the
    existing asset when the caller may read it."""

    @property
    def asset_id(self) -> str | None:
        value = self.problem.get("asset_id")
        return str(value) if value else None


class PreconditionFailedError(RegistryError):
    """412: ``If-Match`` named a stale ETag."""


class PayloadTooLargeError(RegistryError):
    """413: over ``MAX_BLOB_BYTES``."""


class ValidationFailedError(RegistryError):
    """422 ``VALIDATION_FAILED``; ``errors`` maps dotted field paths to messages."""


class RateLimitError(RegistryError):
    """429 ``RATE_LIMIT_EXCEEDED``; ``retry_after`` is the server's ``Retry-After`` in seconds."""

    @property
    def retry_after(self) -> float | None:
        try:
            return float(self.headers["retry-after"])
        except (KeyError, ValueError):
            return None


class UnavailableError(RegistryError):
    """503 ``UNAVAILABLE``: the server cannot reach its database; try again later."""


class ServerError(RegistryError):
    """Any other 5xx (``INTERNAL_ERROR``)."""


class InvalidReferenceError(LlmregError, ValueError):
    """A string that is not an asset reference (``NAME@VERSION``, ``NAME``, an id) or a
    dependency (``NAME@RANGE``, an id)."""

    code = "INVALID_REFERENCE"


class ConnectionFailedError(LlmregError):
    """The server could not be reached, or the connection broke or timed out."""

    code = "CONNECTION_FAILED"


class RequestTimeoutError(ConnectionFailedError, TimeoutError):
    """The server did not answer within the client's timeout."""

    code = "TIMEOUT"


class JobTimeoutError(LlmregError, TimeoutError):
    """``wait_for_job`` gave up; ``job`` is the last state seen (the job goes on running)."""

    code = "JOB_TIMEOUT"

    def __init__(self, message: str, job: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.job: dict[str, Any] = dict(job)


class ChecksumMismatchError(LlmregError):
    """Downloaded bytes do not have the SHA-256 the registry promised; nothing was kept."""

    code = "CHECKSUM_MISMATCH"

    def __init__(self, expected: str, actual: str, what: str) -> None:
        super().__init__(f"SHA-256 of {what} is {actual}, expected {expected}; nothing was kept")
        self.expected = expected
        self.actual = actual


_BY_CODE: dict[str, type[RegistryError]] = {
    "INVALID_INPUT": InvalidInputError,
    "UNAUTHORIZED": UnauthorizedError,
    "FORBIDDEN": ForbiddenError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "CONFLICT": ConflictError,
    "HAS_DEPENDENTS": ConflictError,
    "PRECONDITION_FAILED": PreconditionFailedError,
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "VALIDATION_FAILED": ValidationFailedError,
    "RATE_LIMIT_EXCEEDED": RateLimitError,
    "UNAVAILABLE": UnavailableError,
    "INTERNAL_ERROR": ServerError,
}

# For answers that are not problem documents (a proxy's HTML page, an empty 502).
_CODE_BY_STATUS = {
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


def _class_for(status: int, code: str) -> type[RegistryError]:
    if code in _BY_CODE:
        return _BY_CODE[code]
    fallback = _CODE_BY_STATUS.get(status)
    if fallback in _BY_CODE:
        return _BY_CODE[str(fallback)]
    return ServerError if status >= 500 else RegistryError


def error_from_response(response: httpx.Response) -> RegistryError:
    """The exception for an error response (its body must have been read)."""
    status = response.status_code
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(response.content) if response.content else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    code = str(problem.get("code") or _CODE_BY_STATUS.get(status, "INTERNAL_ERROR"))
    title = str(problem.get("title") or phrase)
    detail = problem.get("detail")
    if not detail:
        text = response.text.strip() if not problem else ""
        detail = text[:200] if text and not text.startswith("<") else phrase
    cls = _class_for(status, code)
    return cls(status, code, title, str(detail), problem, headers=dict(response.headers))
