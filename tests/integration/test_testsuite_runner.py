"""A test suite run against a real HTTP server: an OpenAI-compatible endpoint the test starts on
127.0.0.1, spoken to over real connections (CONTRACT.md §6)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from app.testsuites.runner import MAX_RESPONSE_BYTES, run_suite
from tests.conftest import free_port

pytestmark = pytest.mark.integration

CHAT = {"choices": [{"message": {"content": "hello"}}]}
HUGE = 5 * 1024 * 1024


class FakeModelServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on /slow or /huge is what those tests do


class Handler(BaseHTTPRequestHandler):
    server: FakeModelServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "body": json.loads(body) if body else None,
                }
            )
        return body

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._record()
        if self.path == "/v1/chat/completions":
            self._send(200, json.dumps(CHAT).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_GET(self) -> None:
        self._record()
        if self.path == "/slow":
            time.sleep(3)
            self._send(200, b"{}")
        elif self.path == "/drip":  # each read is quick, the whole response is not
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                time.sleep(0.3)
        elif self.path == "/huge":
            self._send(200, b"a" * HUGE, "text/plain")
        elif self.path == "/huge-undeclared":  # no Content-Length: only the stream tells
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            chunk = b"a" * 65536
            for _ in range(HUGE // len(chunk)):
                self.wfile.write(chunk)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/v1/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/text":
            self._send(200, b"plain words", "text/plain; charset=utf-8")
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeModelServer]:
    httpd = FakeModelServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def model(server: FakeModelServer) -> dict[str, Any]:
    server.seen.clear()
    return {
        "id": "01J0000000000000000000000A",
        "asset_type": "model",
        "name": "acme/llm",
        "version": "1.0.0",
        "license": "MIT",
        "tags": ["chat"],
        "annotations": {"endpoint": server.base_url + "/"},
    }


def http_case(
    name: str, path: str, expect: str, method: str = "GET", **extra: Any
) -> dict[str, Any]:
    return {"kind": "http", "name": name, "method": method, "path": path, "expect": expect, **extra}


def suite(*cases: dict[str, Any], timeout: int = 5) -> dict[str, Any]:
    return {"gating": True, "timeout_seconds": timeout, "cases": list(cases)}


CHAT_CASE = http_case(
    "says-hello",
    "/v1/chat/completions",
    'response.status == 200 && response.json.choices[0].message.content == "hello"',
    method="POST",
    body={"model": "llm", "messages": [{"role": "user", "content": "hi"}]},
)
ALLOWED = ["127.0.0.1"]


def test_passing_http_case_posts_json_to_the_endpoint(
    server: FakeModelServer, model: dict[str, Any]
) -> None:
    run = run_suite(suite(CHAT_CASE), model, None, allowed_hosts=ALLOWED)
    assert run.status == "passed" and not run.suite_failed
    [case] = run.cases
    assert (case.name, case.status, case.message) == ("says-hello", "passed", "passed")
    assert isinstance(case.duration_ms, int) and case.duration_ms >= 0
    assert server.seen == [
        {
            "method": "POST",
            "path": "/v1/chat/completions",  # endpoint's trailing "/" stripped before the path
            "content_type": "application/json",
            "body": {"model": "llm", "messages": [{"role": "user", "content": "hi"}]},
        }
    ]
    assert run.started_at <= run.finished_at
    assert run.started_at.utcoffset() is not None


def test_false_expectation_fails_the_case_and_suite(model: dict[str, Any]) -> None:
    wrong = {
        **CHAT_CASE,
        "name": "says-bye",
        "expect": 'response.json.choices[0].message.content == "bye"',
    }
    run = run_suite(suite(CHAT_CASE, wrong), model, None, allowed_hosts=ALLOWED)
    assert run.status == "failed" and run.suite_failed
    assert [c.status for c in run.cases] == ["passed", "failed"]
    assert run.cases[1].message.startswith("expect was false: response.json.choices[0]")
    assert "HTTP 200" in run.cases[1].message and "hello" in run.cases[1].message


def test_expectation_over_missing_fields_fails(model: dict[str, Any]) -> None:
    case = http_case("not-json", "/text", "response.json.choices.size() > 0")
    text = http_case("text", "/text", 'response.json == null && response.text == "plain words"')
    run = run_suite(suite(case, text), model, None, allowed_hosts=ALLOWED)
    assert [c.status for c in run.cases] == ["failed", "passed"]
    assert "could not be evaluated" in run.cases[0].message


def test_timeout_is_an_error(model: dict[str, Any]) -> None:
    began = time.monotonic()
    run = run_suite(
        suite(http_case("slow", "/slow", "true"), timeout=1), model, None, allowed_hosts=ALLOWED
    )
    assert time.monotonic() - began < 2.5
    assert run.status == "error" and run.suite_failed
    [case] = run.cases
    assert (case.status, case.message) == ("error", "timed out after 1 s")
    assert 900 <= case.duration_ms < 2500


def test_the_whole_response_must_arrive_within_the_timeout(model: dict[str, Any]) -> None:
    run = run_suite(
        suite(http_case("drip", "/drip", "true"), timeout=1), model, None, allowed_hosts=ALLOWED
    )
    [case] = run.cases
    assert (case.status, case.message) == ("error", "timed out after 1 s")
    assert case.duration_ms < 2500


@pytest.mark.parametrize("path", ["/huge", "/huge-undeclared"])
def test_oversized_response_is_an_error(model: dict[str, Any], path: str) -> None:
    run = run_suite(
        suite(http_case("huge", path, "response.status == 200")),
        model,
        None,
        allowed_hosts=ALLOWED,
    )
    [case] = run.cases
    assert case.status == "error"
    assert f"exceeds {MAX_RESPONSE_BYTES} bytes" in case.message
    assert run.status == "error"


def test_redirects_are_not_followed(server: FakeModelServer, model: dict[str, Any]) -> None:
    case = http_case("redirect", "/redirect", "response.status == 302")
    run = run_suite(suite(case), model, None, allowed_hosts=ALLOWED)
    assert run.cases[0].status == "passed", run.cases[0].message
    assert [seen["path"] for seen in server.seen] == ["/redirect"]


@pytest.mark.parametrize(
    ("endpoint_host", "allowed"),
    [
        ("127.0.0.1", []),  # the default: nothing may be contacted
        ("127.0.0.1", ["example.internal"]),
        ("localhost", ["127.0.0.1"]),  # host names compare exactly, not by address
        ("127.0.0.1", ["127.0.0.10"]),
    ],
)
def test_host_not_allowed_errors_without_a_connection(
    server: FakeModelServer, model: dict[str, Any], endpoint_host: str, allowed: list[str]
) -> None:
    port = server.server_address[1]
    model["annotations"]["endpoint"] = f"http://{endpoint_host}:{port}"
    run = run_suite(suite(CHAT_CASE), model, None, allowed_hosts=allowed)
    [case] = run.cases
    assert case.status == "error"
    assert case.message == (
        f"host {endpoint_host!r} is not in TEST_HTTP_ALLOWED_HOSTS; not contacted"
    )
    assert server.seen == []


def test_allowed_hosts_compare_case_insensitively(
    server: FakeModelServer, model: dict[str, Any]
) -> None:
    model["annotations"]["endpoint"] = f"http://LocalHost:{server.server_address[1]}"
    run = run_suite(suite(CHAT_CASE), model, None, allowed_hosts=["LOCALHOST"])
    assert run.cases[0].status == "passed", run.cases[0].message
    assert len(server.seen) == 1


@pytest.mark.parametrize("annotations", [{}, {"endpoint": ""}, {"other": "x"}])
def test_missing_endpoint_annotation_is_an_error(
    server: FakeModelServer, model: dict[str, Any], annotations: dict[str, str]
) -> None:
    model["annotations"] = annotations
    run = run_suite(suite(CHAT_CASE), model, None, allowed_hosts=ALLOWED)
    [case] = run.cases
    assert case.status == "error"
    assert "no annotations.endpoint" in case.message
    assert server.seen == []


def test_connection_refused_is_an_error(model: dict[str, Any]) -> None:
    model["annotations"]["endpoint"] = f"http://127.0.0.1:{free_port()}"
    run = run_suite(suite(CHAT_CASE), model, None, allowed_hosts=ALLOWED)
    [case] = run.cases
    assert case.status == "error"
    assert case.message.startswith("request failed: ConnectError")


def test_expression_cases_see_asset_and_artifact(model: dict[str, Any]) -> None:
    cases = [
        {"kind": "expression", "name": "licensed", "expression": 'asset.license == "MIT"'},
        {"kind": "expression", "name": "big", "expression": "artifact.parameter_count > 1000"},
        {"kind": "expression", "name": "gguf", "expression": 'artifact.format == "gguf"'},
    ]
    artifact = {"format": "safetensors", "parameter_count": 7000}
    run = run_suite(suite(*cases), model, artifact, allowed_hosts=[])
    assert [(c.name, c.status) for c in run.cases] == [
        ("licensed", "passed"),
        ("big", "passed"),
        ("gguf", "failed"),
    ]
    assert run.cases[2].message == 'expression was false: artifact.format == "gguf"'
    unscanned = run_suite(suite(cases[1]), model, None, allowed_hosts=[])
    assert unscanned.cases[0].status == "failed"
    assert "(artifact is null)" in unscanned.cases[0].message


def test_errors_alone_make_an_error_suite_and_failures_win(model: dict[str, Any]) -> None:
    good = {"kind": "expression", "name": "ok", "expression": "true"}
    bad = {"kind": "expression", "name": "no", "expression": "false"}
    unreachable = {**CHAT_CASE, "name": "unreachable"}
    assert run_suite(suite(good), model, None, allowed_hosts=[]).status == "passed"
    errored = run_suite(suite(good, unreachable), model, None, allowed_hosts=[])
    assert (errored.status, errored.suite_failed) == ("error", True)
    both = run_suite(suite(unreachable, bad, good), model, None, allowed_hosts=[])
    assert (both.status, both.suite_failed) == ("failed", True)
    assert [c.status for c in both.cases] == ["error", "failed", "passed"]
    assert both.as_dict()["cases"][1] == {
        "name": "no",
        "status": "failed",
        "duration_ms": both.cases[1].duration_ms,
        "message": "expression was false: false",
    }
