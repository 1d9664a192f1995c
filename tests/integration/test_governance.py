"""Governance against real services: the ``scan``, ``policies`` and ``tests`` steps of a
registration and compliance re-scans (CONTRACT.md §4-6), on PostgreSQL, Redis and real Celery
worker (and beat) processes.

One stack serves the module: a worker ``main`` that consumes ``registry,registry-control`` and a
worker ``tester`` that consumes only ``registry-tests`` (test suites run on a fleet of their
own). Policies and suites are scoped by a tag of their own test, so each test sees only what it
registers; the files scanned are built here with the tools that write them.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from app.jobs.models import Job
from app.jobs.pipeline import HEARTBEAT_SECONDS
from tests.integration import governance_files as files
from tests.integration.pipeline_support import Process, Stack, running_stack

pytestmark = pytest.mark.integration

MAIN_QUEUES = "registry,registry-control"
TESTS_QUEUE = "registry-tests"
STEP_NAMES = ["checksum", "dependencies", "scan", "policies", "tests"]
LICENSE_MESSAGE = "license must be MIT or Apache-2.0"
SLOW_SECONDS = HEARTBEAT_SECONDS + 5
ALLOWLIST = 'asset.license in ["MIT", "Apache-2.0"]'


class GovernanceStack:
    """The module's stack and its tests-queue worker (replaced by the queue test)."""

    def __init__(self, stack: Stack, tester: Process) -> None:
        self.stack = stack
        self.tester = tester


@pytest.fixture(scope="module")
def gov(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GovernanceStack]:
    with running_stack(
        tmp_path_factory.mktemp("governance"),
        "_governance",
        TEST_HTTP_ALLOWED_HOSTS="127.0.0.1",
    ) as stack:
        stack.start_worker("main", queues=MAIN_QUEUES)
        tester = stack.start_worker("tester", concurrency=1, queues=TESTS_QUEUE)
        yield GovernanceStack(stack, tester)


@pytest.fixture
def stack(gov: GovernanceStack) -> Stack:
    return gov.stack


# ---- helpers ---------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def upload(stack: Stack, data: bytes) -> str:
    """POST /v1/blobs; returns the sha256 hex."""
    response = stack.api("user").post(
        "/v1/blobs", data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code in (200, 201), response.get_json()
    digest = hashlib.sha256(data).hexdigest()
    assert response.get_json()["digest"] == f"sha256:{digest}"
    return digest


def model_with_content(stack: Stack, data: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "asset_type": "model",
        "name": unique("scanned"),
        "version": "1.0.0",
        "checksum": {"algorithm": "SHA256", "value": upload(stack, data)},
        **fields,
    }


def model(tags: list[str], license: str = "MIT", **fields: Any) -> dict[str, Any]:
    return {
        "asset_type": "model",
        "name": unique("model"),
        "version": "1.0.0",
        "license": license,
        "tags": tags,
        **fields,
    }


def policy_body(
    name: str,
    rules: list[dict[str, Any]],
    version: str = "1.0.0",
    **applies_to: list[str],
) -> dict[str, Any]:
    return {
        "asset_type": "policy",
        "name": name,
        "version": version,
        "spec": {"applies_to": applies_to, "rules": rules},
    }


def rule(name: str, expression: str, severity: str = "deny", message: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "expression": expression,
        "severity": severity,
        "message": message or f"{name} failed",
    }


def by_step(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert [s["name"] for s in job["steps"]] == STEP_NAMES, job
    return {s["name"]: s for s in job["steps"]}


def settle_active(stack: Stack, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    job, asset = stack.settle(body)
    assert job["status"] == "succeeded", job
    assert asset["status"] == "active", (asset, job)
    assert asset["rejection"] is None
    return job, asset


def settle_rejected(
    stack: Stack, body: dict[str, Any], code: str, step: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    job, asset = stack.settle(body)
    assert job["status"] == "succeeded" and job["error"] is None, job
    assert asset["status"] == "rejected", (asset, job)
    assert asset["rejection"]["code"] == code, asset["rejection"]
    assert asset["rejection"]["step"] == step
    steps = by_step(job)
    assert steps[step]["status"] == "failed"
    assert steps[step]["detail"] == asset["rejection"]["message"]
    for later in STEP_NAMES[STEP_NAMES.index(step) + 1 :]:
        assert steps[later]["status"] == "skipped", job
    return job, asset


def register_policy(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    """Register a policy (as a developer) and wait for it to be active."""
    _, policy = settle_active(stack, body)
    return policy


def compliance(stack: Stack, asset_id: str) -> dict[str, Any]:
    response = stack.api("viewer").get(f"/v1/assets/{asset_id}/compliance")
    assert response.status_code == 200, response.get_json()
    doc: dict[str, Any] = response.get_json()
    assert doc["asset_id"] == asset_id
    return doc


def runs_of(stack: Stack, asset_id: str) -> list[dict[str, Any]]:
    response = stack.api("viewer").get(f"/v1/assets/{asset_id}/test-runs")
    assert response.status_code == 200, response.get_json()
    page = response.get_json()
    assert page["total"] == len(page["items"])
    items: list[dict[str, Any]] = page["items"]
    return items


def event_types(stack: Stack, asset_id: str) -> list[str]:
    return [e.type for e in stack.events(asset_id)]


def scan_job_ids(stack: Stack) -> set[str]:
    response = stack.api("viewer").get("/v1/jobs", query_string={"kind": "compliance_scan"})
    assert response.status_code == 200, response.get_json()
    page = response.get_json()
    assert page["total"] <= page["limit"], "more scan jobs than one page"
    assert all(j["kind"] == "compliance_scan" and j["asset_id"] is None for j in page["items"])
    return {j["id"] for j in page["items"]}


def job_params(stack: Stack, job_id: str) -> dict[str, Any]:
    def read(session: Any) -> dict[str, Any]:
        job = session.get(Job, job_id)
        assert job is not None
        return dict(job.params or {})

    return stack.query(read)


def wait_for(condition: Any, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"{what} not within {timeout} s\n{stack.logs()}")


# ---- scan ------------------------------------------------------------------------------------


def test_a_pickle_importing_os_system_is_rejected_and_never_run(
    stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    data = files.os_system_pickle(f"touch {marker}")
    job, asset = settle_rejected(stack, model_with_content(stack, data), "UNSAFE_CONTENT", "scan")
    message = asset["rejection"]["message"]
    assert "os.system" in message, message
    assert asset["artifact"]["format"] == "pickle"
    critical = [f for f in asset["artifact"]["findings"] if f["severity"] == "critical"]
    assert critical and "os.system" in critical[0]["message"]
    assert by_step(job)["checksum"]["status"] == "passed"
    assert event_types(stack, asset["id"])[-1] == "asset_rejected"
    # Read, never executed: neither the API (this process) nor a worker process ran it.
    assert not marker.exists()
    # Whereas loading it for real would have run the command (so the check above can fail).
    assert not (tmp_path / "control").exists()
    pickle.loads(files.os_system_pickle(f"touch {tmp_path / 'control'}"))  # noqa: S301
    assert (tmp_path / "control").exists()


def test_a_pytorch_zip_checkpoint_with_tensors_only_is_active(stack: Stack) -> None:
    job, asset = settle_active(stack, model_with_content(stack, files.pytorch_zip_checkpoint()))
    artifact = asset["artifact"]
    assert artifact["format"] == "pytorch_zip"
    assert artifact["dtypes"] == ["F32"]  # named by the torch.FloatStorage of data.pkl
    assert not [f for f in artifact["findings"] if f["severity"] != "info"], artifact
    assert by_step(job)["scan"]["status"] == "passed"
    assert "PyTorch checkpoint" in by_step(job)["scan"]["detail"]


def test_a_safetensors_file_shows_its_facts(stack: Stack) -> None:
    job, asset = settle_active(stack, model_with_content(stack, files.safetensors_file()))
    artifact = stack.asset(asset["id"])["artifact"]
    assert artifact["format"] == "safetensors"
    assert artifact["dtypes"] == ["F16", "F32"]
    assert artifact["tensor_count"] == 2
    assert artifact["parameter_count"] == 4 * 8 + 8
    assert artifact["findings"] == []
    assert "2 tensors" in by_step(job)["scan"]["detail"]


def test_a_gguf_file_shows_architecture_and_context_length(stack: Stack, tmp_path: Path) -> None:
    data = files.gguf_file(tmp_path, architecture="llama", context_length=4096)
    _, asset = settle_active(stack, model_with_content(stack, data))
    artifact = asset["artifact"]
    assert artifact["format"] == "gguf"
    assert artifact["architecture"] == "llama"
    assert artifact["context_length"] == 4096
    assert artifact["tensor_count"] == 1 and artifact["parameter_count"] == 16


def test_a_metadata_only_asset_skips_the_scan(stack: Stack) -> None:
    job, asset = settle_active(stack, model([unique("meta")]))
    steps = by_step(job)
    assert steps["checksum"]["status"] == "skipped"
    assert steps["scan"]["status"] == "skipped"
    assert "metadata-only" in steps["scan"]["detail"]
    assert asset["artifact"] is None


# ---- policies --------------------------------------------------------------------------------


def test_license_allowlist_policy(stack: Stack) -> None:
    tag = unique("licensed")
    body = policy_body(
        "license-allowlist",
        [rule("allowed-license", ALLOWLIST, "deny", LICENSE_MESSAGE)],
        tags=[tag],
    )
    policy_job, policy = settle_active(stack, body)
    assert policy["asset_type"] == "policy"
    assert by_step(policy_job)["policies"]["status"] == "skipped"  # policies are not governed

    job, mit = settle_active(stack, model([tag], "MIT"))
    assert mit["compliance"]["status"] == "compliant"
    assert mit["compliance"]["violations"] == []
    assert "1 policies" in by_step(job)["policies"]["detail"]
    report = compliance(stack, mit["id"])
    assert report["status"] == "compliant" and report["evaluated_at"]
    assert report["results"] == [
        {
            "policy_id": policy["id"],
            "policy_name": "license-allowlist",
            "policy_version": "1.0.0",
            "rule": "allowed-license",
            "severity": "deny",
            "passed": True,
            "message": "passed",
        }
    ]

    _, gpl = settle_rejected(stack, model([tag], "GPL-3.0-only"), "POLICY_VIOLATION", "policies")
    message = gpl["rejection"]["message"]
    assert "allowed-license" in message and LICENSE_MESSAGE in message, message
    report = compliance(stack, gpl["id"])
    assert report["status"] == "non_compliant"
    [result] = report["results"]
    assert result["passed"] is False and result["rule"] == "allowed-license"
    assert result["message"] == LICENSE_MESSAGE and result["policy_id"] == policy["id"]
    assert gpl["compliance"]["status"] == "non_compliant"
    assert gpl["compliance"]["violations"] == [result]
    types = event_types(stack, gpl["id"])
    assert "policy_evaluated" in types and types[-1] == "asset_rejected"


def test_a_failing_warn_rule_leaves_the_asset_active_with_a_warning(stack: Stack) -> None:
    tag = unique("warned")
    register_policy(
        stack,
        policy_body(
            unique("review"),
            [rule("reviewed", '"reviewed" in asset.tags', "warn", "should be reviewed")],
            tags=[tag],
        ),
    )
    job, asset = settle_active(stack, model([tag]))
    assert asset["compliance"]["status"] == "warning"
    [violation] = asset["compliance"]["violations"]
    assert violation["rule"] == "reviewed" and violation["severity"] == "warn"
    assert violation["passed"] is False and violation["message"] == "should be reviewed"
    assert "should be reviewed" in by_step(job)["policies"]["detail"]
    _, reviewed = settle_active(stack, model([tag, "reviewed"]))
    assert reviewed["compliance"]["status"] == "compliant"


def test_a_policy_that_does_not_compile_is_422(stack: Stack) -> None:
    body = policy_body(unique("broken"), [rule("bad", 'asset.license in ["MIT"')])
    response = stack.api("developer").post("/v1/assets", json=body)
    assert response.status_code == 422, response.get_json()
    problem = response.get_json()
    assert problem["code"] == "VALIDATION_FAILED"
    assert list(problem["errors"]) == ["spec.rules.0.expression"]


def test_a_user_may_not_register_a_policy(stack: Stack) -> None:
    name = unique("forbidden")
    response = stack.api("user").post("/v1/assets", json=policy_body(name, [rule("any", "true")]))
    assert response.status_code == 403, response.get_json()
    assert response.get_json()["code"] == "FORBIDDEN"
    listed = stack.api("viewer").get("/v1/assets", query_string={"name": name}).get_json()
    assert listed["total"] == 0


def test_applies_to_asset_types_leaves_other_types_alone(stack: Stack) -> None:
    tag = unique("datasets-only")
    policy = register_policy(
        stack,
        policy_body(
            unique("dataset-license"),
            [rule("cc-only", 'asset.license == "CC-BY-4.0"', "deny", "datasets must be CC-BY")],
            asset_types=["dataset"],
            tags=[tag],
        ),
    )
    _, mit_model = settle_active(stack, model([tag], "MIT"))
    assert compliance(stack, mit_model["id"])["results"] == []
    assert mit_model["compliance"]["status"] == "compliant"
    dataset = {**model([tag], "MIT"), "asset_type": "dataset"}
    _, rejected = settle_rejected(stack, dataset, "POLICY_VIOLATION", "policies")
    [result] = compliance(stack, rejected["id"])["results"]
    assert result["policy_id"] == policy["id"] and result["passed"] is False


def test_only_the_latest_version_of_a_policy_applies(stack: Stack) -> None:
    tag, name = unique("versioned"), unique("evolving")
    register_policy(stack, policy_body(name, [rule("old-rule", "false")], "1.0.0", tags=[tag]))
    settle_rejected(stack, model([tag]), "POLICY_VIOLATION", "policies")  # 1.0.0 alone applies

    v2 = register_policy(stack, policy_body(name, [rule("new-rule", "true")], "2.0.0", tags=[tag]))
    _, asset = settle_active(stack, model([tag]))
    [result] = compliance(stack, asset["id"])["results"]
    assert (result["policy_id"], result["policy_version"], result["rule"]) == (
        v2["id"],
        "2.0.0",
        "new-rule",
    )
    # Registered later but lower: 2.0.0 still applies (SemVer decides, not time).
    register_policy(stack, policy_body(name, [rule("old-rule", "false")], "1.5.0", tags=[tag]))
    _, asset = settle_active(stack, model([tag]))
    assert [r["policy_version"] for r in compliance(stack, asset["id"])["results"]] == ["2.0.0"]


# ---- test suites -----------------------------------------------------------------------------


class ModelServer(ThreadingHTTPServer):
    """A tiny OpenAI-compatible server: POST /v1/chat/completions answers "hello"."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ModelHandler)
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _ModelHandler(BaseHTTPRequestHandler):
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        with self.server.lock:
            self.server.requests.append((self.command, self.path, body))
        if self.path == "/v1/slow/chat/completions":
            time.sleep(SLOW_SECONDS)  # longer than a heartbeat interval
        elif self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        payload = json.dumps({"choices": [{"message": {"content": "hello"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def model_server() -> Iterator[ModelServer]:
    server = ModelServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


CHAT_BODY = {"model": "m", "messages": [{"role": "user", "content": "say hello"}]}


def suite_body(tag: str, expect: str, gating: bool = True) -> dict[str, Any]:
    return {
        "asset_type": "test_suite",
        "name": unique("chat-suite"),
        "version": "1.0.0",
        "spec": {
            "applies_to": {"tags": [tag]},
            "gating": gating,
            "timeout_seconds": 5,
            "cases": [
                {
                    "kind": "http",
                    "name": "says-hello",
                    "method": "POST",
                    "path": "/chat/completions",  # joined to the endpoint, .../v1
                    "body": CHAT_BODY,
                    "expect": expect,
                }
            ],
        },
    }


HELLO = 'response.status == 200 && response.json.choices[0].message.content == "hello"'
GOODBYE = 'response.json.choices[0].message.content == "goodbye"'


def served_model(tag: str, port: int, host: str = "127.0.0.1") -> dict[str, Any]:
    return model([tag], annotations={"endpoint": f"http://{host}:{port}/v1"})


def test_a_passing_gating_suite(stack: Stack, model_server: ModelServer) -> None:
    tag = unique("chat-ok")
    _, suite = settle_active(stack, suite_body(tag, HELLO))
    before = len(model_server.requests)
    job, asset = settle_active(stack, served_model(tag, model_server.port))
    assert model_server.requests[before:] == [("POST", "/v1/chat/completions", CHAT_BODY)]
    assert by_step(job)["tests"]["status"] == "passed"
    [run] = runs_of(stack, asset["id"])
    assert (run["suite_id"], run["suite_name"], run["suite_version"]) == (
        suite["id"],
        suite["name"],
        "1.0.0",
    )
    assert run["status"] == "passed"
    [case] = run["cases"]
    assert case["name"] == "says-hello" and case["status"] == "passed"
    assert isinstance(case["duration_ms"], int) and case["duration_ms"] >= 0
    assert run["started_at"] <= run["finished_at"]
    assert "test_suite_completed" in event_types(stack, asset["id"])


def test_a_failing_gating_suite_rejects(stack: Stack, model_server: ModelServer) -> None:
    tag = unique("chat-bad")
    settle_active(stack, suite_body(tag, GOODBYE))
    _, asset = settle_rejected(
        stack, served_model(tag, model_server.port), "TEST_SUITE_FAILED", "tests"
    )
    assert "says-hello" in asset["rejection"]["message"], asset["rejection"]
    [run] = runs_of(stack, asset["id"])
    assert run["status"] == "failed" and run["cases"][0]["status"] == "failed"
    assert "goodbye" in run["cases"][0]["message"]


def test_a_failing_non_gating_suite_is_recorded_only(
    stack: Stack, model_server: ModelServer
) -> None:
    tag = unique("chat-advisory")
    settle_active(stack, suite_body(tag, GOODBYE, gating=False))
    job, asset = settle_active(stack, served_model(tag, model_server.port))
    assert by_step(job)["tests"]["status"] == "passed"
    assert "says-hello" in by_step(job)["tests"]["detail"]
    [run] = runs_of(stack, asset["id"])
    assert run["status"] == "failed" and run["cases"][0]["status"] == "failed"


def test_a_host_not_allowed_is_never_contacted(stack: Stack, model_server: ModelServer) -> None:
    tag = unique("chat-elsewhere")
    settle_active(stack, suite_body(tag, HELLO))
    before = len(model_server.requests)
    # The same server, but by a name that TEST_HTTP_ALLOWED_HOSTS does not list.
    body = served_model(tag, model_server.port, host="localhost")
    _, asset = settle_rejected(stack, body, "TEST_SUITE_FAILED", "tests")
    [run] = runs_of(stack, asset["id"])
    assert run["status"] == "error"
    [case] = run["cases"]
    assert case["status"] == "error" and "TEST_HTTP_ALLOWED_HOSTS" in case["message"]
    assert model_server.requests[before:] == []


def test_suites_run_on_the_tests_queue(gov: GovernanceStack) -> None:
    stack = gov.stack
    gov.tester.stop()  # nobody consumes registry-tests now
    tag = unique("queued")
    suite = {
        "asset_type": "test_suite",
        "name": unique("expr-suite"),
        "version": "1.0.0",
        "spec": {
            "applies_to": {"tags": [tag]},
            "cases": [{"kind": "expression", "name": "named", "expression": 'asset.name != ""'}],
        },
    }
    settle_active(stack, suite)  # a suite itself has no suite to run: finished by main
    doc = stack.register(model([tag]))
    api = stack.api("viewer")

    def handed_over() -> dict[str, Any] | None:
        job: dict[str, Any] = api.get(f"/v1/jobs/{doc['job']['id']}").get_json()
        steps = {s["name"]: s["status"] for s in job["steps"]}
        done = all(steps[s] in ("passed", "skipped") for s in STEP_NAMES[:4])
        return job if done and job["status"] == "queued" else None

    job = wait_for(handed_over, 20, "hand-over to registry-tests", stack)
    assert by_step(job)["tests"]["status"] == "pending"
    time.sleep(2)  # the main worker does not pick it up
    job = api.get(f"/v1/jobs/{doc['job']['id']}").get_json()
    assert job["status"] == "queued" and by_step(job)["tests"]["status"] == "pending"
    assert stack.asset(doc["id"])["status"] == "validating"

    gov.tester = stack.start_worker("tester-2", concurrency=1, queues=TESTS_QUEUE)
    job = stack.wait_job(doc["job"]["id"])
    asset = stack.asset(doc["id"])
    assert job["status"] == "succeeded" and asset["status"] == "active", (job, asset)
    assert by_step(job)["tests"]["status"] == "passed"
    assert [r["status"] for r in runs_of(stack, asset["id"])] == ["passed"]
    # The tests-queue worker took the hand-over message (its log names the job and the queue).
    assert f"['{doc['job']['id']}', '{TESTS_QUEUE}']" in gov.tester.log_path.read_text()


# ---- compliance scans ------------------------------------------------------------------------


def test_a_new_policy_rescans_older_assets(stack: Stack) -> None:
    tag = unique("rescanned")
    _, older = settle_active(stack, model([tag], "Apache-2.0"))
    assert older["compliance"]["status"] == "compliant"
    scans_before = scan_job_ids(stack)
    policy = register_policy(
        stack,
        policy_body(
            unique("mit-only"),
            [rule("mit", 'asset.license == "MIT"', "deny", "MIT only")],
            tags=[tag],
        ),
    )
    [scan_id] = scan_job_ids(stack) - scans_before
    assert job_params(stack, scan_id)["policy_id"] == policy["id"]
    scan = stack.wait_job(scan_id)
    assert scan["status"] == "succeeded", scan
    [evaluate] = scan["steps"]
    assert evaluate["name"] == "evaluate" and evaluate["status"] == "passed"
    assert "re-evaluated 1 active assets" in evaluate["detail"], evaluate

    after = stack.asset(older["id"])
    assert after["status"] == "active"  # a scan never rejects or deletes
    assert after["compliance"]["status"] == "non_compliant"
    [violation] = after["compliance"]["violations"]
    assert violation["policy_id"] == policy["id"] and violation["message"] == "MIT only"
    changed = [e for e in stack.events(older["id"]) if e.type == "compliance_changed"]
    assert changed[-1].data["from"] == "compliant"
    assert changed[-1].data["to"] == "non_compliant"
    assert changed[-1].data["job_id"] == scan_id
    listed = stack.api("viewer").get(
        "/v1/assets", query_string={"tag": tag, "compliance": "non_compliant"}
    )
    assert [a["id"] for a in listed.get_json()["items"]] == [older["id"]]


def active_count(stack: Stack, asset_type: str) -> int:
    response = stack.api("viewer").get(
        "/v1/assets", query_string={"asset_type": asset_type, "status": "active", "limit": 1}
    )
    assert response.status_code == 200, response.get_json()
    return int(response.get_json()["total"])


def request_scan(stack: Stack, body: dict[str, Any] | None, role: str = "admin") -> Any:
    api = stack.api(role)
    if body is None:
        return api.post("/v1/compliance/scans")
    return api.post("/v1/compliance/scans", json=body)


def test_an_admin_requests_a_compliance_scan(stack: Stack) -> None:
    settle_active(stack, {**model([unique("data")]), "asset_type": "dataset"})
    governed = sum(active_count(stack, t) for t in ("model", "pipeline", "dataset"))
    datasets = active_count(stack, "dataset")
    assert governed > datasets >= 1

    response = request_scan(stack, None)
    assert response.status_code == 202, response.get_json()
    ref = response.get_json()["job"]
    assert ref["status"] == "queued"
    assert response.headers["Location"] == ref["href"] == f"/v1/jobs/{ref['id']}"
    job = stack.wait_job(ref["id"])
    assert job["status"] == "succeeded" and job["kind"] == "compliance_scan", job
    assert job["asset_id"] is None
    [step] = job["steps"]
    assert step["name"] == "evaluate" and step["status"] == "passed"
    assert step["detail"].startswith(f"re-evaluated {governed} active assets"), step

    response = request_scan(stack, {"asset_type": "dataset"})
    assert response.status_code == 202, response.get_json()
    job = stack.wait_job(response.get_json()["job"]["id"])
    assert job["steps"][0]["detail"].startswith(f"re-evaluated {datasets} active assets"), job


def test_compliance_scan_refusals(stack: Stack) -> None:
    before = scan_job_ids(stack)
    response = request_scan(stack, {}, role="developer")
    assert response.status_code == 403 and response.get_json()["code"] == "FORBIDDEN"
    response = request_scan(stack, {"policy_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"})
    assert response.status_code == 404 and response.get_json()["code"] == "NOT_FOUND"
    for asset_type in ("spaceship", "policy"):  # policies carry no compliance verdict
        response = request_scan(stack, {"asset_type": asset_type})
        assert response.status_code == 422, response.get_json()
        assert list(response.get_json()["errors"]) == ["asset_type"]
    assert scan_job_ids(stack) == before


def test_beat_schedules_compliance_scans(stack: Stack) -> None:
    before = scan_job_ids(stack)
    beat = stack.start_beat(COMPLIANCE_SCAN_INTERVAL_SECONDS="3")
    try:
        new = wait_for(lambda: scan_job_ids(stack) - before, 15, "a scheduled scan job", stack)
        scan_id = sorted(new)[0]
        assert job_params(stack, scan_id)["reason"] == "scheduled"
        job = stack.wait_job(scan_id, timeout=15)
        assert job["status"] == "succeeded", job
        assert job["steps"][0]["detail"].startswith("re-evaluated ")
    finally:
        beat.stop()


def test_a_new_policy_version_rescans_what_the_old_one_governed(stack: Stack) -> None:
    """2.0.0 narrows the selector: what only 1.0.0 governed is re-checked too, and is no
    longer held to 1.0.0's rules."""
    old_tag, new_tag, name = unique("old-scope"), unique("new-scope"), unique("narrowing")
    _, asset = settle_active(stack, model([old_tag]))
    before = scan_job_ids(stack)
    register_policy(stack, policy_body(name, [rule("never", "false")], "1.0.0", tags=[old_tag]))
    [scan_id] = scan_job_ids(stack) - before
    assert stack.wait_job(scan_id)["status"] == "succeeded"
    assert stack.asset(asset["id"])["compliance"]["status"] == "non_compliant"
    before = scan_job_ids(stack)
    register_policy(stack, policy_body(name, [rule("always", "true")], "2.0.0", tags=[new_tag]))
    [scan_id] = scan_job_ids(stack) - before
    assert stack.wait_job(scan_id)["status"] == "succeeded"
    after = stack.asset(asset["id"])
    assert after["compliance"]["status"] == "compliant", after["compliance"]
    assert compliance(stack, asset["id"])["results"] == []


def _pg(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(stack.database_url.replace("+psycopg", ""), autocommit=True)


def _lock_waiters(stack: Stack) -> int:
    with _pg(stack) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_scan_racing_an_update_of_the_asset_still_succeeds(stack: Stack) -> None:
    """The asset changes (a PATCH commits) between the scan reading it and writing its
    compliance: the scan re-reads it instead of failing."""
    tag = unique("raced")
    _, asset = settle_active(stack, {**model([tag]), "asset_type": "pipeline"})
    with _pg(stack) as patcher, patcher.transaction():
        patcher.execute("SELECT 1 FROM assets WHERE id = %s FOR UPDATE", (asset["id"],))
        response = request_scan(stack, {"asset_type": "pipeline"})
        assert response.status_code == 202
        scan_id = response.get_json()["job"]["id"]
        wait_for(lambda: _lock_waiters(stack) > 0, 15, "the scan waiting for the row", stack)
        patcher.execute(
            "UPDATE assets SET description = 'patched', row_version = row_version + 1 "
            "WHERE id = %s",
            (asset["id"],),
        )
    job = stack.wait_job(scan_id)
    assert job["status"] == "succeeded", job
    after = stack.asset(asset["id"])
    assert after["description"] == "patched"
    assert after["compliance"]["evaluated_at"] > asset["compliance"]["evaluated_at"]


def test_the_lease_is_renewed_while_a_slow_case_runs(
    stack: Stack, model_server: ModelServer
) -> None:
    """A case may wait up to its timeout (600 s at most) on the model server, longer than a
    job's lease: the worker keeps renewing it, so the job is not taken over meanwhile."""
    tag = unique("slow")
    body = suite_body(tag, HELLO)
    body["spec"]["timeout_seconds"] = 30
    body["spec"]["cases"][0]["path"] = "/slow/chat/completions"
    settle_active(stack, body)
    doc = stack.register(served_model(tag, model_server.port))
    wait_for(
        lambda: any(r[1].startswith("/v1/slow") for r in model_server.requests),
        20,
        "the slow request",
        stack,
    )
    asked = time.monotonic()

    def heartbeat() -> Any:
        return stack.query(lambda s: s.get(Job, doc["job"]["id"]).heartbeat_at)

    first = heartbeat()
    # Renewed while the request is still waiting for its answer (SLOW_SECONDS after it came).
    wait_for(lambda: heartbeat() != first, HEARTBEAT_SECONDS + 3, "a lease renewal", stack)
    assert time.monotonic() - asked < SLOW_SECONDS - 1
    assert stack.api("viewer").get(f"/v1/jobs/{doc['job']['id']}").get_json()["status"] == (
        "running"
    )
    job = stack.wait_job(doc["job"]["id"])
    assert job["status"] == "succeeded"
    assert stack.asset(doc["id"])["status"] == "active"
    assert [r["status"] for r in runs_of(stack, doc["id"])] == ["passed"]
