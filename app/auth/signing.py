"""Request signing for API keys (CONTRACT.md §2): ``X-Signature`` = hex HMAC-SHA256 with the key's
signing secret over ``METHOD\\nPATH\\nTIMESTAMP\\nhex(sha256(body))``; ``X-Signature-Timestamp``
within 300 s of now; each signature accepted once (a replay cache that outlives the window).

A streamed blob upload cannot be hashed before it is read: its check is handed to the upload,
which runs it when the body ends and discards the bytes if it fails.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from urllib.parse import quote

from flask import g, request

from app.auth.apikeys import signing_secret_of
from app.auth.models import ApiKey
from app.auth.revocation import revocation_store
from app.errors import UnauthorizedError

SKEW_SECONDS = 300
STREAMED = {("POST", "/v1/blobs")}


def signed_path() -> str:
    """The percent-encoded path as the client sent it, plus ``?QUERY`` when there is one."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw:
        return str(raw)
    path = quote(request.path, safe="/%:@!$&'()*+,;=-._~")
    query = request.query_string.decode("latin-1")
    return f"{path}?{query}" if query else path


def signature_for(secret: str, method: str, path: str, timestamp: str, body_sha256: str) -> str:
    message = f"{method}\n{path}\n{timestamp}\n{body_sha256}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_request_signature(key: ApiKey) -> None:
    """Check the current request's signature for ``key``; ``UnauthorizedError`` when it is
    missing, stale, wrong or replayed. For a streamed upload, leaves the check in
    ``g.verify_body`` (a callable taking the body's hex SHA-256)."""
    secret = signing_secret_of(key)
    if secret is None:
        raise UnauthorizedError("this API key has no signing secret; requests must be signed")
    timestamp = request.headers.get("X-Signature-Timestamp", "").strip()
    signature = request.headers.get("X-Signature", "").strip().lower()
    if not timestamp or not signature:
        raise UnauthorizedError("this API key requires signed requests (X-Signature)")
    try:
        skew = abs(time.time() - int(timestamp))
    except ValueError:
        raise UnauthorizedError("X-Signature-Timestamp must be unix seconds") from None
    if skew > SKEW_SECONDS:
        raise UnauthorizedError("the signature timestamp is more than 300 s away from now")
    check = _checker(secret, request.method, signed_path(), timestamp, signature)
    if (request.method, request.path) in STREAMED:
        g.verify_body = check
        return
    check(hashlib.sha256(request.get_data(cache=True)).hexdigest())


def _checker(
    secret: str, method: str, path: str, timestamp: str, signature: str
) -> Callable[[str], None]:
    def check(body_sha256: str) -> None:
        expected = signature_for(secret, method, path, timestamp, body_sha256)
        if not hmac.compare_digest(expected, signature):
            raise UnauthorizedError("the request signature does not match")
        if not revocation_store().claim(f"sig:{signature}", 2 * SKEW_SECONDS + 60):
            raise UnauthorizedError("this signed request was already received (replay)")

    return check
