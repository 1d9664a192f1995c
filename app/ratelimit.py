"""Rate limits on ``/v1`` (CONTRACT.md §2), with Flask-Limiter.

One budget per caller across every ``/v1`` endpoint (``RATE_LIMIT_MAX_REQUESTS`` per
``RATE_LIMIT_WINDOW_SECS``), keyed by the authenticated user, else by client address
(``TRUSTED_PROXIES`` hops of ``X-Forwarded-For`` trusted). An endpoint named in the config file's
``[rate_limits]`` table gets its own limit instead. Counters live in Redis when ``REDIS_URL`` is
set (shared by every API replica), else in process memory. If Redis is down, requests go through
and the limiter logs it. Logins are also limited per username against password guessing.
"""

from __future__ import annotations

import logging
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import parse

from app.errors import RegistryError
from app.http import route_template
from config import Settings

log = logging.getLogger(__name__)

# Failed logins per username, whatever address they come from.
LOGIN_FAILURES = "10 per 5 minutes"


class RateLimitExceededError(RegistryError):
    status = 429
    code = "RATE_LIMIT_EXCEEDED"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def endpoint_key() -> str:
    """``METHOD /v1/assets/{id}``: the current route as the OpenAPI document writes it."""
    rule = request.url_rule.rule if request.url_rule else request.path
    return f"{request.method} {route_template(rule)}"


def _caller_key() -> str:
    """The authenticated user when the credentials are good, else the client address."""
    if request.headers.get("Authorization") or request.headers.get("X-API-Key"):
        from app.auth.identity import current_identity

        try:
            return f"user:{current_identity().user_id}"
        except Exception:  # noqa: S110 - bad credentials are answered 401 by the route itself
            pass
    return f"addr:{request.remote_addr or 'unknown'}"


def _exempt() -> bool:
    return not request.path.startswith("/v1/") or request.method == "OPTIONS"


def init_rate_limits(app: Flask, settings: Settings) -> Limiter:
    overrides = dict(settings.rate_limits)
    budget = f"{settings.rate_limit_max_requests} per {settings.rate_limit_window_secs} seconds"
    limiter = Limiter(
        key_func=_caller_key,
        application_limits=[budget],
        application_limits_exempt_when=lambda: endpoint_key() in overrides,
        default_limits=[lambda: overrides.get(endpoint_key(), budget)],
        default_limits_exempt_when=lambda: endpoint_key() not in overrides,
        storage_uri=settings.redis_url or "memory://",
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1}
        if settings.redis_url
        else {},
        strategy="fixed-window",
        headers_enabled=True,
        swallow_errors=True,
        enabled=settings.rate_limit_enabled,
        key_prefix="llm-registry-rl",
    )
    limiter.request_filter(_exempt)
    limiter.init_app(app)
    app.extensions["rate_limiter"] = limiter
    return limiter


def check_login_attempts(username: str) -> None:
    """429 while ``username`` has had too many failed logins recently."""
    limiter: Limiter | None = current_app.extensions.get("rate_limiter")
    if limiter is None or not limiter.enabled:
        return
    item = parse(LOGIN_FAILURES)
    try:
        allowed = limiter.limiter.test(item, "login", username.lower())
        if allowed:
            return
        reset, _remaining = limiter.limiter.get_window_stats(item, "login", username.lower())
    except Exception as exc:  # Redis down: let it through, and say so
        log.warning("login throttling skipped: %s", exc.__class__.__name__)
        return
    retry_after = max(1, int(reset - time.time()))
    raise RateLimitExceededError(
        f"too many failed logins for this user; try again in {retry_after} s", retry_after
    )


def record_login_failure(username: str) -> None:
    limiter: Limiter | None = current_app.extensions.get("rate_limiter")
    if limiter is None or not limiter.enabled:
        return
    try:
        limiter.limiter.hit(parse(LOGIN_FAILURES), "login", username.lower())
    except Exception as exc:
        log.warning("login throttling skipped: %s", exc.__class__.__name__)
