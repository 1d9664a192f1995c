"""Run a test suite's cases against an asset (CONTRACT.md §6).

Called by the registration pipeline's ``tests`` step (and anything else that wants a verdict)
with plain documents; it touches no database and needs no app context. The only outside contact
is an ``http`` case's request, and only to a host named in ``allowed_hosts``
(``TEST_HTTP_ALLOWED_HOSTS``): any other host makes the case ``error`` before a connection is
attempted. Requests follow no redirects, ignore proxy environment variables, and read at most
``max_response_bytes`` of a response.

Case outcomes: ``passed`` when the expression (``expression`` or ``expect``) yields ``true``;
``failed`` when it yields ``false``, a non-bool, or fails at run time (a missing key, a type
mismatch — the subject did not look as expected); ``error`` when the case could not be judged
(no ``annotations.endpoint``, host not allowed, connection error, timeout, oversized response,
an expression that no longer compiles).

Suite outcome: ``failed`` if any case failed, else ``error`` if any case errored, else
``passed``. Per §6 a case that fails *or* errors fails its suite: :attr:`SuiteRun.suite_failed`
is ``status != "passed"``, and a gating suite with ``suite_failed`` rejects the registration.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx

from app.policies.cel import CelCompileError, CelEvalError, compile_expression, evaluate_condition

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_SECONDS = 30
_HEADERS = {
    "Accept": "application/json",
    # Compressed bodies would be inflated before the size cap sees them.
    "Accept-Encoding": "identity",
    "User-Agent": "llm-registry-test-runner",
}

CaseStatus = Literal["passed", "failed", "error"]


@dataclasses.dataclass(frozen=True)
class CaseResult:
    name: str
    status: CaseStatus
    duration_ms: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SuiteRun:
    status: CaseStatus  # passed | failed | error
    cases: tuple[CaseResult, ...]
    started_at: dt.datetime  # UTC, aware
    finished_at: dt.datetime

    @property
    def suite_failed(self) -> bool:
        """§6: a case that fails or errors fails its suite."""
        return self.status != "passed"

    def as_dict(self) -> dict[str, Any]:
        """``{status, cases: [{name, status, duration_ms, message}], started_at, finished_at}``
        (the datetimes left as objects for the caller's serializer)."""
        return {
            "status": self.status,
            "cases": [case.as_dict() for case in self.cases],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class _CaseError(Exception):
    """The case could not be judged; ``str(exc)`` says why."""


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _judge(expression: str, variables: Mapping[str, Any], what: str) -> tuple[CaseStatus, str]:
    try:
        program = compile_expression(expression)
    except CelCompileError as exc:
        return "error", f"{what} does not compile: {exc.message}"
    try:
        ok = evaluate_condition(program, variables)
    except CelEvalError as exc:
        return "failed", f"{what} could not be evaluated: {exc.message}"
    return ("passed", "passed") if ok else ("failed", f"{what} was false: {expression}")


def _target(case: Mapping[str, Any], asset_doc: Mapping[str, Any], allowed: set[str]) -> httpx.URL:
    endpoint = (asset_doc.get("annotations") or {}).get("endpoint")
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise _CaseError(
            "the asset has no annotations.endpoint (the base URL that http cases are sent to)"
        )
    raw = endpoint.strip().rstrip("/") + str(case.get("path") or "")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise _CaseError(f"{_shorten(raw)!r} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _CaseError(f"{_shorten(raw)!r} is not an http(s) URL")
    hosts = {_normal_host(url.host), _normal_host(url.raw_host.decode("ascii", "replace"))}
    if hosts.isdisjoint(allowed):
        raise _CaseError(
            f"host {_normal_host(url.host)!r} is not in TEST_HTTP_ALLOWED_HOSTS; not contacted"
        )
    return url


def _request(
    client: httpx.Client,
    case: Mapping[str, Any],
    url: httpx.URL,
    timeout: float,
    max_bytes: int,
) -> dict[str, Any]:
    """Send the case's request; the ``response`` variable of its ``expect``."""
    deadline = time.monotonic() + timeout
    body = case.get("body")
    client.cookies.clear()  # cases do not share state
    try:
        with client.stream(
            str(case.get("method") or "POST"), url, json=body if body is not None else None
        ) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise _CaseError(f"response of {declared} bytes exceeds {max_bytes} bytes")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _CaseError(f"response exceeds {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _CaseError(f"timed out after {timeout:g} s")
                chunks.append(chunk)
            status = response.status_code
            charset = response.charset_encoding or "utf-8"
    except httpx.TimeoutException:
        raise _CaseError(f"timed out after {timeout:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _CaseError(_shorten(f"request failed: {type(exc).__name__}: {exc}")) from None
    content = b"".join(chunks)
    try:
        text = content.decode(charset, errors="replace")
    except LookupError:  # an unknown charset label
        text = content.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(text) if text.strip() else None
    except (ValueError, RecursionError):
        parsed = None
    return {"status": status, "json": parsed, "text": text}


def _run_case(
    client: httpx.Client,
    case: Mapping[str, Any],
    variables: Mapping[str, Any],
    asset_doc: Mapping[str, Any],
    allowed: set[str],
    timeout: float,
    max_bytes: int,
) -> tuple[CaseStatus, str]:
    kind = case.get("kind")
    if kind == "expression":
        return _judge(str(case.get("expression")), variables, "expression")
    if kind == "http":
        try:
            url = _target(case, asset_doc, allowed)
            response = _request(client, case, url, timeout, max_bytes)
        except _CaseError as exc:
            return "error", str(exc)
        status, message = _judge(
            str(case.get("expect")), {**variables, "response": response}, "expect"
        )
        if status == "failed":
            message += f" (HTTP {response['status']}, body {_shorten(response['text'], 120)!r})"
        return status, message
    return "error", f"unknown case kind {kind!r}"


def run_suite(
    spec: Mapping[str, Any],
    asset_doc: Mapping[str, Any],
    artifact: Mapping[str, Any] | None,
    *,
    allowed_hosts: Sequence[str],
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> SuiteRun:
    """Run every case of ``spec`` (a test suite's spec) in order against ``asset_doc`` (the asset
    document as the API shows it) and ``artifact`` (its scan facts, or None).

    ``allowed_hosts`` are the host names ``http`` cases may contact (compared exactly,
    case-insensitively); each request gets ``spec.timeout_seconds`` for connecting and for each
    read, and the whole response must arrive within it. Does not check ``applies_to``. Never
    raises for a case: whatever goes wrong becomes that case's ``error``.
    """
    allowed = {_normal_host(host) for host in allowed_hosts if host.strip()}
    timeout = float(spec.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS)
    variables = {
        "asset": dict(asset_doc),
        "artifact": None if artifact is None else dict(artifact),
    }
    started_at = dt.datetime.now(dt.UTC)
    results: list[CaseResult] = []
    with httpx.Client(
        follow_redirects=False,
        trust_env=False,  # no proxy from the environment: only allowed hosts are contacted
        timeout=httpx.Timeout(timeout),
        headers=_HEADERS,
    ) as client:
        for case in spec.get("cases") or ():
            began = time.monotonic()
            try:
                status, message = _run_case(
                    client, case, variables, asset_doc, allowed, timeout, max_response_bytes
                )
            except Exception as exc:  # a bug here must not take the registration down with it
                log.exception("test case %r crashed", case.get("name"))
                status, message = "error", _shorten(f"internal error: {type(exc).__name__}")
            results.append(
                CaseResult(
                    name=str(case.get("name")),
                    status=status,
                    duration_ms=round((time.monotonic() - began) * 1000),
                    message=message,
                )
            )
    statuses = {result.status for result in results}
    suite: CaseStatus = (
        "failed" if "failed" in statuses else "error" if "error" in statuses else "passed"
    )
    return SuiteRun(
        status=suite,
        cases=tuple(results),
        started_at=started_at,
        finished_at=dt.datetime.now(dt.UTC),
    )
