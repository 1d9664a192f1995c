"""The asynchronous registration pipeline against real services: a committing app on
PostgreSQL, the Redis broker, Celery worker processes, the local store and S3 (moto's server).

Each test registers through the API and polls ``GET /v1/jobs/{id}`` until the job reaches its
verdict, then checks what a user sees: the job's steps, the asset document, the outbox events
and the dependency graph (CONTRACT.md §4-5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import boto3
import psycopg
import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session

from app.dependencies.service import _LOCK_KEY as GRAPH_LOCK
from app.jobs.models import Job
from app.jobs.pipeline import LEASE_SECONDS
from app.jobs.queue import REQUEUE_STALE
from app.jobs.service import REQUEUE_QUEUED_AFTER, requeue_stale_jobs
from tests.conftest import Api
from tests.integration.pipeline_support import Stack, running_stack

CLOSED = "127.0.0.1:1"  # nothing listens there: a broker that is down

pytestmark = pytest.mark.integration

LATER_STEPS = ("scan", "policies", "tests")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Local blob store, a broker of its own, one ``llm-registry worker --concurrency 2``."""
    with running_stack(tmp_path_factory.mktemp("pipeline"), "_pipeline") as stack:
        stack.start_worker()
        yield stack


@pytest.fixture(scope="module")
def s3_stack(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[Stack]:
    """The same on S3 (moto over HTTP), with its own database and broker."""
    bucket = f"pipeline-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    with running_stack(
        tmp_path_factory.mktemp("pipeline-s3"),
        "_pipeline_s3",
        BLOB_STORE_URL=f"s3://{bucket}/blobs",
        S3_ENDPOINT_URL=s3_endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    ) as stack:
        stack.start_worker()
        yield stack


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def model(name: str, version: str = "1.0.0", **fields: Any) -> dict[str, Any]:
    return {"asset_type": "model", "name": name, "version": version, **fields}


def upload(stack: Stack, data: bytes) -> dict[str, Any]:
    response = stack.api("user").post(
        "/v1/blobs", data=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code in (200, 201), response.get_json()
    doc: dict[str, Any] = response.get_json()
    assert doc["digest"] == f"sha256:{hashlib.sha256(data).hexdigest()}"
    return doc


def steps(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    assert [s["name"] for s in job["steps"]] == ["checksum", "dependencies", *LATER_STEPS]
    return {s["name"]: s for s in job["steps"]}


def event_types(stack: Stack, asset_id: str) -> list[str]:
    return [e.type for e in stack.events(asset_id)]


def assert_active(job: dict[str, Any], asset: dict[str, Any]) -> None:
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert asset["status"] == "active", asset
    assert asset["rejection"] is None


def assert_rejected(
    job: dict[str, Any], asset: dict[str, Any], code: str, step: str
) -> dict[str, Any]:
    """The job reached a verdict (succeeded), ``step`` failed, later steps were skipped."""
    assert job["status"] == "succeeded", job
    assert job["error"] is None
    assert asset["status"] == "rejected", asset
    rejection: dict[str, Any] = asset["rejection"]
    assert rejection["code"] == code and rejection["step"] == step, rejection
    assert rejection["message"]
    by_name = steps(job)
    assert by_name[step]["status"] == "failed"
    assert by_name[step]["detail"] == rejection["message"]
    names = [s["name"] for s in job["steps"]]
    for later in names[names.index(step) + 1 :]:
        assert by_name[later]["status"] == "skipped", job
        assert by_name[later]["detail"], job
    return rejection


# ---- content ---------------------------------------------------------------------------------


def test_uploaded_blob_is_verified_and_the_asset_becomes_active(stack: Stack) -> None:
    data = b"weights " * 100_000
    blob = upload(stack, data)
    name = unique("verified")
    doc = stack.register(
        model(
            name,
            checksum={"algorithm": "SHA256", "value": hashlib.sha256(data).hexdigest()},
            dependencies=[],
        )
    )
    assert doc["job"]["status"] == "queued"
    job = stack.wait_job(doc["job"]["id"])
    asset = stack.asset(doc["id"])

    assert_active(job, asset)
    assert job["kind"] == "registration" and job["asset_id"] == doc["id"]
    assert job["attempts"] == 1
    assert job["started_at"] and job["finished_at"]
    by_name = steps(job)
    assert by_name["checksum"]["status"] == "passed"
    assert "SHA256" in by_name["checksum"]["detail"]
    assert by_name["dependencies"]["status"] == "passed"
    # The governance steps ran: a file of no known format, no policy and no suite applies.
    assert by_name["scan"]["status"] == "passed"
    assert "format" in by_name["scan"]["detail"] or "unknown" in by_name["scan"]["detail"]
    assert by_name["policies"]["status"] == "passed"
    assert "no policy applies" in by_name["policies"]["detail"]
    assert by_name["tests"]["status"] == "skipped"
    assert "no test suite applies" in by_name["tests"]["detail"]
    assert asset["artifact"]["format"] == "unknown"
    assert asset["compliance"]["status"] == "compliant"
    for step in job["steps"]:
        assert step["started_at"] is None or step["started_at"] <= step["finished_at"]
        assert step["finished_at"] is not None
    assert asset["size_bytes"] == len(data)
    assert asset["checksum"] == {"algorithm": "SHA256", "value": blob["digest"][7:]}
    assert event_types(stack, doc["id"]) == [
        "asset_registered",
        "checksum_verified",
        "policy_evaluated",
        "compliance_changed",
        "asset_validated",
    ]
    content = stack.api("viewer").get(f"/v1/assets/{doc['id']}/content")
    assert content.status_code == 200 and content.data == data
    assert_finished_row(stack, job["id"])


def assert_finished_row(stack: Stack, job_id: str) -> None:
    """The job's row as its verdict left it: succeeded, no holder, no error (SQL NULL), the
    last heartbeat at the finish."""
    with _pg(stack) as conn:
        row = conn.execute(
            "SELECT status, worker, error IS NULL, finished_at, heartbeat_at FROM jobs "
            "WHERE id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    status, worker, no_error, finished_at, heartbeat_at = row
    assert (status, worker, no_error) == ("succeeded", None, True)
    assert finished_at is not None and heartbeat_at == finished_at


def test_a_wrong_checksum_rejects_the_asset(stack: Stack) -> None:
    data = b"the real bytes"
    blob = upload(stack, data)
    # The checksum names the stored blob; the declared size is what does not match.
    doc = stack.register(
        model(
            unique("wrong-size"),
            size_bytes=len(data) + 1,
            checksum={"algorithm": "SHA256", "value": blob["digest"][7:]},
        )
    )
    job = stack.wait_job(doc["job"]["id"])
    rejection = assert_rejected(job, stack.asset(doc["id"]), "CHECKSUM_MISMATCH", "checksum")
    assert str(len(data)) in rejection["message"]
    # The job does not finish before its steps (the failed one and the skipped ones).
    finished = dt.datetime.fromisoformat(job["finished_at"])
    assert all(dt.datetime.fromisoformat(s["finished_at"]) <= finished for s in job["steps"])
    assert event_types(stack, doc["id"]) == [
        "asset_registered",
        "checksum_failed",
        "asset_rejected",
    ]
    # A checksum that does not match the bytes at storage.uri.
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    doc = stack.register(
        model(
            unique("wrong-digest"),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": "SHA256", "value": wrong},
        )
    )
    job = stack.wait_job(doc["job"]["id"])
    rejection = assert_rejected(job, stack.asset(doc["id"]), "CHECKSUM_MISMATCH", "checksum")
    assert wrong in rejection["message"] and blob["digest"][7:] in rejection["message"]
    events = stack.events(doc["id"])
    assert [e.type for e in events] == ["asset_registered", "checksum_failed", "asset_rejected"]
    assert events[1].data["expected"] == wrong
    assert events[1].data["actual"] == blob["digest"][7:]
    assert events[2].data["code"] == "CHECKSUM_MISMATCH"
    assert_finished_row(stack, job["id"])


def test_storage_uri_without_an_object_is_blob_not_found(stack: Stack) -> None:
    store_url = stack.env["BLOB_STORE_URL"]
    uri = f"{store_url}/models/{unique('missing')}.safetensors"
    doc = stack.register(
        model(
            unique("no-object"),
            storage={"uri": uri},
            checksum={"algorithm": "SHA256", "value": "0" * 64},
        )
    )
    job = stack.wait_job(doc["job"]["id"])
    rejection = assert_rejected(job, stack.asset(doc["id"]), "BLOB_NOT_FOUND", "checksum")
    assert uri in rejection["message"]
    assert event_types(stack, doc["id"]) == ["asset_registered", "asset_rejected"]


def test_a_uri_outside_the_store_is_refused_at_once(stack: Stack) -> None:
    response = stack.api("developer").post(
        "/v1/assets",
        json=model(
            unique("outside"),
            storage={"uri": "file:///etc/passwd"},
            checksum={"algorithm": "SHA256", "value": "0" * 64},
        ),
    )
    assert response.status_code == 422, response.get_json()
    assert "storage.uri" in response.get_json()["errors"]


def _digest(algorithm: str, data: bytes) -> str:
    if algorithm == "SHA3_256":
        return hashlib.sha3_256(data).hexdigest()
    if algorithm == "BLAKE3":
        return str(blake3.blake3(data).hexdigest())
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("algorithm", ["SHA3_256", "BLAKE3"])
def test_other_algorithms_through_storage_uri(stack: Stack, algorithm: str) -> None:
    data = f"tensor bytes for {algorithm} ".encode() * 50_000
    blob = upload(stack, data)
    good = stack.register(
        model(
            unique(algorithm.lower().replace("_", "")),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": algorithm, "value": _digest(algorithm, data)},
        )
    )
    bad = stack.register(
        model(
            unique("bad-" + algorithm.lower().replace("_", "")),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": algorithm, "value": _digest(algorithm, data + b"!")},
        )
    )
    job = stack.wait_job(good["job"]["id"])
    assert_active(job, stack.asset(good["id"]))
    assert algorithm in steps(job)["checksum"]["detail"]
    verified = stack.events(good["id"])[1]
    assert verified.type == "checksum_verified"
    assert verified.data["algorithm"] == algorithm
    assert verified.data["value"] == _digest(algorithm, data)
    job = stack.wait_job(bad["job"]["id"])
    assert_rejected(job, stack.asset(bad["id"]), "CHECKSUM_MISMATCH", "checksum")


def test_content_on_s3(s3_stack: Stack) -> None:
    data = b"s3 weights " * 200_000  # several chunks of a ranged read
    blob = upload(s3_stack, data)
    bucket_prefix = s3_stack.env["BLOB_STORE_URL"]
    assert blob["uri"].startswith(bucket_prefix + "/")
    sha256 = s3_stack.register(
        model(unique("s3-sha256"), checksum={"algorithm": "SHA256", "value": blob["digest"][7:]})
    )
    sha3 = s3_stack.register(
        model(
            unique("s3-sha3"),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": "SHA3_256", "value": _digest("SHA3_256", data)},
        )
    )
    b3 = s3_stack.register(
        model(
            unique("s3-blake3"),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": "BLAKE3", "value": _digest("BLAKE3", data)},
        )
    )
    wrong = s3_stack.register(
        model(
            unique("s3-wrong"),
            storage={"uri": blob["uri"]},
            checksum={"algorithm": "SHA3_256", "value": _digest("SHA3_256", b"nope")},
        )
    )
    missing_uri = f"{bucket_prefix}/models/{unique('absent')}.bin"
    missing = s3_stack.register(
        model(
            unique("s3-missing"),
            storage={"uri": missing_uri},
            checksum={"algorithm": "SHA256", "value": "1" * 64},
        )
    )
    for doc in (sha256, sha3, b3):
        job = s3_stack.wait_job(doc["job"]["id"])
        assert_active(job, s3_stack.asset(doc["id"]))
        assert s3_stack.asset(doc["id"])["size_bytes"] == len(data)
        assert event_types(s3_stack, doc["id"]) == [
            "asset_registered",
            "checksum_verified",
            "policy_evaluated",
            "compliance_changed",
            "asset_validated",
        ]
    job = s3_stack.wait_job(wrong["job"]["id"])
    assert_rejected(job, s3_stack.asset(wrong["id"]), "CHECKSUM_MISMATCH", "checksum")
    job = s3_stack.wait_job(missing["job"]["id"])
    rejection = assert_rejected(job, s3_stack.asset(missing["id"]), "BLOB_NOT_FOUND", "checksum")
    assert missing_uri in rejection["message"]


# ---- dependencies ----------------------------------------------------------------------------


def settle_all(stack: Stack, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Register each body in order, waiting for each verdict; returns the asset documents."""
    assets = []
    for body in bodies:
        job, asset = stack.settle(body)
        assert job["status"] == "succeeded", job
        assets.append(asset)
    return assets


def locks(asset: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    return [(d["version"], d["resolved_version"]) for d in asset["dependencies"]]


def test_ranges_resolve_to_the_highest_active_version_and_stay_locked(stack: Stack) -> None:
    lib = unique("lib")
    versions = ["1.0.0", "1.2.0", "1.3.0-beta.1", "1.5.0", "2.0.0", "3.0.0-rc.1"]
    by_version = {a["version"]: a for a in settle_all(stack, [model(lib, v) for v in versions])}
    assert all(a["status"] == "active" for a in by_version.values())
    # 1.5.0 is deprecated, 1.6.0 rejected: neither may be picked by a range.
    response = stack.api("developer").patch(
        f"/v1/assets/{by_version['1.5.0']['id']}", json={"status": "deprecated"}
    )
    assert response.status_code == 200, response.get_json()
    _, rejected = stack.settle(
        model(lib, "1.6.0", dependencies=[{"name": unique("nothing"), "version": "*"}])
    )
    assert rejected["status"] == "rejected"

    ranges = {
        "^1.0.0": "1.2.0",  # not the pre-release 1.3.0-beta.1, deprecated 1.5.0, rejected 1.6.0
        "~1.2": "1.2.0",
        ">=1.0.0 <2.0.0": "1.2.0",
        "^1.3.0-beta.0": "1.3.0-beta.1",  # names a pre-release of 1.3.0
        "1.0.0": "1.0.0",
        "*": "2.0.0",  # not 3.0.0-rc.1
        ">=3.0.0-rc.0": "3.0.0-rc.1",
    }
    consumer_name = unique("consumer")
    consumers = []
    for i, (version_range, _) in enumerate(ranges.items()):
        deps = [{"name": lib, "version": version_range, "asset_type": "model"}]
        consumers.append(stack.register(model(consumer_name, f"1.0.{i}", dependencies=deps)))
    for doc, (version_range, expected) in zip(consumers, ranges.items(), strict=True):
        job = stack.wait_job(doc["job"]["id"])
        asset = stack.asset(doc["id"])
        assert_active(job, asset)
        assert locks(asset) == [(version_range, expected)], (version_range, asset)
        [dependency] = asset["dependencies"]
        assert dependency["resolved_id"] == by_version[expected]["id"]
        assert dependency["name"] == lib and dependency["asset_type"] == "model"
        assert expected in steps(job)["dependencies"]["detail"]

    # A higher matching version appears: the lock does not move; a new registration takes it.
    settle_all(stack, [model(lib, "1.4.0")])
    first = stack.asset(consumers[0]["id"])
    assert locks(first) == [("^1.0.0", "1.2.0")]
    graph = stack.api("viewer").get(f"/v1/assets/{first['id']}/dependencies").get_json()
    assert [(n["name"], n["version"]) for n in graph["nodes"]] == [
        (consumer_name, "1.0.0"),
        (lib, "1.2.0"),
    ]
    _, later = stack.settle(
        model(consumer_name, "2.0.0", dependencies=[{"name": lib, "version": "^1.0.0"}])
    )
    assert locks(later) == [("^1.0.0", "1.4.0")]


def test_id_references_must_be_active_or_deprecated(stack: Stack) -> None:
    active, deprecated, rejected = settle_all(
        stack,
        [
            model(unique("ref-active")),
            model(unique("ref-deprecated")),
            model(
                unique("ref-rejected"), dependencies=[{"name": unique("ghost"), "version": "^1"}]
            ),
        ],
    )
    assert rejected["status"] == "rejected"
    response = stack.api("developer").patch(
        f"/v1/assets/{deprecated['id']}", json={"status": "deprecated"}
    )
    assert response.status_code == 200

    _, ok = stack.settle(
        model(unique("by-id"), dependencies=[{"id": active["id"]}, {"id": deprecated["id"]}])
    )
    assert ok["status"] == "active", ok
    assert [(d["id"], d["version"], d["resolved_id"]) for d in ok["dependencies"]] == [
        (active["id"], None, active["id"]),
        (deprecated["id"], None, deprecated["id"]),
    ]
    graph = stack.api("viewer").get(f"/v1/assets/{ok['id']}/dependencies").get_json()
    assert {(e["to"], e["constraint"]) for e in graph["edges"]} == {
        (active["id"], None),
        (deprecated["id"], None),
    }

    job, refused = stack.settle(model(unique("by-bad-id"), dependencies=[{"id": rejected["id"]}]))
    rejection = assert_rejected(job, refused, "DEPENDENCY_NOT_FOUND", "dependencies")
    assert rejected["id"] in rejection["message"] and "rejected" in rejection["message"]
    assert steps(job)["checksum"]["status"] == "skipped"  # metadata-only


def test_a_missing_dependency_names_the_range(stack: Stack) -> None:
    present, other = unique("present"), unique("other")
    settle_all(stack, [model(present, "1.0.0"), model(other, "1.0.0")])
    job, asset = stack.settle(
        model(
            unique("needs-more"),
            dependencies=[
                {"name": other, "version": "^1.0.0"},
                {"name": present, "version": ">=2.0.0", "asset_type": "model"},
            ],
        )
    )
    rejection = assert_rejected(job, asset, "DEPENDENCY_NOT_FOUND", "dependencies")
    assert f"{present} model >=2.0.0" in rejection["message"]
    assert "1.0.0" in rejection["message"]  # what is there instead
    # Nothing was locked for a rejected resolution.
    assert all(d["resolved_id"] is None for d in asset["dependencies"])
    assert event_types(stack, asset["id"]) == ["asset_registered", "asset_rejected"]


def test_the_contract_cycle_is_refused(stack: Stack) -> None:
    x, y = unique("x"), unique("y")
    settle_all(
        stack,
        [model(y, "1.0.0"), model(x, "1.0.0", dependencies=[{"name": y, "version": "^1.0.0"}])],
    )
    job, asset = stack.settle(model(y, "1.1.0", dependencies=[{"name": x, "version": "^1.0.0"}]))
    rejection = assert_rejected(job, asset, "CIRCULAR_DEPENDENCY", "dependencies")
    path = f"{y}@1.1.0 -> {x}@1.0.0 -> {y}@1.1.0"
    assert path in rejection["message"], rejection
    events = stack.events(asset["id"])
    assert [e.type for e in events] == [
        "asset_registered",
        "circular_dependency_detected",
        "asset_rejected",
    ]
    assert events[1].data["path"] == [f"{y}@1.1.0", f"{x}@1.0.0", f"{y}@1.1.0"]
    # The graph did not change: x still depends on y 1.0.0, nothing on y 1.1.0.
    dependents = stack.api("viewer").get(f"/v1/assets/{asset['id']}/dependents").get_json()
    assert [n["id"] for n in dependents["nodes"]] == [asset["id"]]


def test_a_version_that_needs_its_own_name_is_a_cycle(stack: Stack) -> None:
    z = unique("z")
    settle_all(stack, [model(z, "1.0.0")])
    job, asset = stack.settle(model(z, "2.0.0", dependencies=[{"name": z, "version": "^1.0.0"}]))
    rejection = assert_rejected(job, asset, "CIRCULAR_DEPENDENCY", "dependencies")
    assert f"{z}@2.0.0" in rejection["message"]
    # Also when no other version of the name exists yet: the range resolves to the candidate.
    lone = unique("lone")
    job, asset = stack.settle(model(lone, "1.0.0", dependencies=[{"name": lone, "version": "*"}]))
    assert_rejected(job, asset, "CIRCULAR_DEPENDENCY", "dependencies")
    assert "circular_dependency_detected" in event_types(stack, asset["id"])


def test_dependency_graph_endpoints(stack: Stack) -> None:
    leaf, base, left, right, top = (
        unique(n) for n in ("e-leaf", "d-base", "b-left", "c-right", "a-top")
    )
    [leaf_doc] = settle_all(stack, [model(leaf)])
    [base_doc, left_doc, right_doc] = settle_all(
        stack,
        [
            model(base, dependencies=[{"name": leaf, "version": "^1.0.0"}]),
            model(left, dependencies=[{"name": base, "version": "^1.0.0"}]),
            model(right, dependencies=[{"name": base, "version": "~1.0"}]),
        ],
    )
    [top_doc] = settle_all(
        stack,
        [
            model(
                top,
                dependencies=[
                    {"name": left, "version": "^1.0.0"},
                    {"name": right, "version": "*"},
                    {"id": leaf_doc["id"]},  # leaf: depth 1 by id, depth 3 through base
                ],
            )
        ],
    )
    # More versions of left lock base too; SemVer orders them (1.9.0 before 1.10.0).
    left_110, left_19 = settle_all(
        stack,
        [
            model(left, "1.10.0", dependencies=[{"name": base, "version": "^1.0.0"}]),
            model(left, "1.9.0", dependencies=[{"name": base, "version": "^1.0.0"}]),
        ],
    )
    viewer = stack.api("viewer")

    def graph(asset_id: str, kind: str, **query: int) -> dict[str, Any]:
        response = viewer.get(f"/v1/assets/{asset_id}/{kind}", query_string=query)
        assert response.status_code == 200, response.get_json()
        doc: dict[str, Any] = response.get_json()
        assert doc["root"] == asset_id
        return doc

    def nodes(doc: dict[str, Any]) -> list[tuple[int, str, str]]:
        return [(n["depth"], n["name"], n["version"]) for n in doc["nodes"]]

    def edges(doc: dict[str, Any]) -> set[tuple[str, str, str | None]]:
        return {(e["from"], e["to"], e["constraint"]) for e in doc["edges"]}

    full = graph(top_doc["id"], "dependencies")
    assert nodes(full) == [
        (0, top, "1.0.0"),
        (1, left, "1.0.0"),
        (1, right, "1.0.0"),
        (1, leaf, "1.0.0"),
        (2, base, "1.0.0"),
    ]
    assert full["nodes"][0]["id"] == top_doc["id"]
    assert all(n["status"] == "active" and n["asset_type"] == "model" for n in full["nodes"])
    assert full["truncated"] is False
    assert edges(full) == {
        (top_doc["id"], left_doc["id"], "^1.0.0"),
        (top_doc["id"], right_doc["id"], "*"),
        (top_doc["id"], leaf_doc["id"], None),
        (left_doc["id"], base_doc["id"], "^1.0.0"),
        (right_doc["id"], base_doc["id"], "~1.0"),
        (base_doc["id"], leaf_doc["id"], "^1.0.0"),
    }
    assert len(full["edges"]) == 6

    one = graph(top_doc["id"], "dependencies", max_depth=1)
    assert nodes(one) == nodes(full)[:4]
    assert one["truncated"] is True
    assert edges(one) == {
        (top_doc["id"], left_doc["id"], "^1.0.0"),
        (top_doc["id"], right_doc["id"], "*"),
        (top_doc["id"], leaf_doc["id"], None),
    }
    zero = graph(top_doc["id"], "dependencies", max_depth=0)
    assert nodes(zero) == [(0, top, "1.0.0")] and zero["edges"] == [] and zero["truncated"]
    assert graph(top_doc["id"], "dependencies", max_depth=2)["truncated"] is False
    alone = graph(leaf_doc["id"], "dependencies")
    assert nodes(alone) == [(0, leaf, "1.0.0")]
    assert alone["edges"] == [] and alone["truncated"] is False

    reverse = graph(leaf_doc["id"], "dependents")
    assert nodes(reverse) == [
        (0, leaf, "1.0.0"),
        (1, top, "1.0.0"),  # by id: depth 1, although also reached at depth 3
        (1, base, "1.0.0"),
        (2, left, "1.0.0"),
        (2, left, "1.9.0"),
        (2, left, "1.10.0"),
        (2, right, "1.0.0"),
    ]
    # Edges keep their from -> to direction.
    assert (base_doc["id"], leaf_doc["id"], "^1.0.0") in edges(reverse)
    assert (left_110["id"], base_doc["id"], "^1.0.0") in edges(reverse)
    assert (left_19["id"], base_doc["id"], "^1.0.0") in edges(reverse)
    near = graph(leaf_doc["id"], "dependents", max_depth=1)
    assert nodes(near) == nodes(reverse)[:3] and near["truncated"] is True

    for kind in ("dependencies", "dependents"):
        response = viewer.get(f"/v1/assets/01ARZ3NDEKTSV4RRFFQ69G5FAV/{kind}")
        assert response.status_code == 404
        assert response.get_json()["code"] == "NOT_FOUND"
        bad = viewer.get(f"/v1/assets/{top_doc['id']}/{kind}", query_string={"max_depth": -1})
        assert bad.status_code == 422


def test_deleting_an_asset_with_active_dependents(stack: Stack) -> None:
    base, user_of_base = unique("del-base"), unique("del-user")
    base_doc, dependent = settle_all(
        stack,
        [model(base), model(user_of_base, dependencies=[{"name": base, "version": "^1.0.0"}])],
    )
    assert dependent["status"] == "active"
    response = stack.api("developer").delete(f"/v1/assets/{base_doc['id']}")
    assert response.status_code == 409, response.get_json()
    problem = response.get_json()
    assert problem["code"] == "HAS_DEPENDENTS"
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert dependent["id"] in problem["detail"] or dependent["id"] in str(problem)
    response = stack.api("developer").delete(f"/v1/assets/{base_doc['id']}?force=true")
    assert response.status_code == 403
    assert stack.api("viewer").get(f"/v1/assets/{base_doc['id']}").status_code == 200

    response = stack.api("admin").delete(f"/v1/assets/{base_doc['id']}?force=true")
    assert response.status_code == 204
    assert stack.api("viewer").get(f"/v1/assets/{base_doc['id']}").status_code == 404
    assert "asset_deleted" in event_types(stack, base_doc["id"])
    # The dependent is untouched; the deleted asset leaves its graph reads.
    assert stack.asset(dependent["id"])["status"] == "active"
    graph = stack.api("viewer").get(f"/v1/assets/{dependent['id']}/dependencies").get_json()
    assert [n["id"] for n in graph["nodes"]] == [dependent["id"]]
    assert graph["edges"] == []
    # A leaf without dependents is deleted without force.
    assert stack.api("developer").delete(f"/v1/assets/{dependent['id']}").status_code == 204


# ---- concurrency and lost messages -----------------------------------------------------------


def submit_together(stack: Stack, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST every body at the same moment, each from its own thread and client."""
    api = stack.api("developer")
    barrier = threading.Barrier(len(bodies))
    docs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def submit(body: dict[str, Any]) -> None:
        client = Api(stack.app.test_client(), api.token, api.user)
        barrier.wait()
        response = client.post("/v1/assets", json=body)
        assert response.status_code == 202, response.get_json()
        with lock:
            docs.append(response.get_json())

    threads = [threading.Thread(target=submit, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return docs


def test_concurrent_registrations_never_close_a_cycle(stack: Stack) -> None:
    """P 1.1.0 needs Q ^1 and Q 1.1.0 needs P ^1, submitted at once: whichever activates first
    wins; the other closes a cycle and is rejected. Never both."""
    rounds = 3
    for _ in range(rounds):
        p, q = unique("p"), unique("q")
        settle_all(stack, [model(p), model(q)])
        bodies = [
            model(p, "1.1.0", dependencies=[{"name": q, "version": "^1.0.0"}]),
            model(q, "1.1.0", dependencies=[{"name": p, "version": "^1.0.0"}]),
        ]
        docs = submit_together(stack, bodies)
        assert len(docs) == 2
        for doc in docs:
            assert stack.wait_job(doc["job"]["id"])["status"] == "succeeded"
        verdicts = sorted((stack.asset(d["id"]) for d in docs), key=lambda a: str(a["status"]))
        assert [a["status"] for a in verdicts] == ["active", "rejected"], verdicts
        assert verdicts[1]["rejection"]["code"] == "CIRCULAR_DEPENDENCY"
        # The winner's locked edge points at the other name's 1.0.0, never at the loser.
        assert locks(verdicts[0]) == [("^1.0.0", "1.0.0")]


def _registered_unsent(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, producer: Celery | None, name: str
) -> dict[str, Any]:
    """Register a model while the app sends its tasks through ``producer`` (None: not at
    all); the asset document, once its job is seen still queued, never attempted."""
    monkeypatch.setitem(stack.app.extensions, "task_producer", producer)
    doc = stack.register(model(unique(name)))
    monkeypatch.undo()
    time.sleep(1.0)
    job = stack.api("viewer").get(f"/v1/jobs/{doc['job']['id']}").get_json()
    assert job["status"] == "queued" and job["attempts"] == 0
    return doc


def test_a_job_whose_message_was_lost_is_requeued(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The broker never gets the message (as when Redis took it, then lost it).
    doc = _registered_unsent(stack, monkeypatch, None, "lost")
    job_id = doc["job"]["id"]

    # Sent long ago: the reaper sends it again (a fresh one is left alone).
    stack.send_task(REQUEUE_STALE)
    time.sleep(1.0)
    assert stack.api("viewer").get(f"/v1/jobs/{job_id}").get_json()["status"] == "queued"
    old = dt.datetime.now(dt.UTC) - REQUEUE_QUEUED_AFTER - dt.timedelta(seconds=30)

    def age(session: Session) -> None:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=old))
        session.commit()

    stack.query(age)
    stack.send_task(REQUEUE_STALE)
    job = stack.wait_job(job_id)
    assert_active(job, stack.asset(doc["id"]))
    assert job["attempts"] == 1


def test_a_job_the_broker_refused_is_sent_at_the_reapers_next_pass(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker is down when the registration commits: the 202 still comes (the job is
    queued, nothing lost), and the reaper's next pass sends it, without the wait it gives a
    message the broker took."""
    down = Celery("broker-down", broker=f"redis://{CLOSED}/0")
    down.conf.broker_connection_timeout = 0.5
    doc = _registered_unsent(stack, monkeypatch, down, "refused")

    stack.send_task(REQUEUE_STALE)  # the broker is back: beat's next pass
    job = stack.wait_job(doc["job"]["id"])
    assert_active(job, stack.asset(doc["id"]))
    assert job["attempts"] == 1


# ---- leases ----------------------------------------------------------------------------------


def _pg(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(stack.database_url.replace("+psycopg", ""), autocommit=True)


def _waiting_for_graph_lock(stack: Stack) -> int:
    """Sessions of this stack's database waiting for the graph lock (not for another advisory
    lock, such as the events' commit lock, nor in another test's database on the server)."""
    with _pg(stack) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid::bigint = %s AND objid::bigint = %s",
            (GRAPH_LOCK >> 32, GRAPH_LOCK & 0xFFFFFFFF),
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for(condition: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_worker_whose_lease_was_taken_over_writes_no_verdict(stack: Stack) -> None:
    """A worker stalls longer than its lease (here: waiting for the graph lock) and another
    takes the job over. When the first wakes up it must not write a verdict of its own."""
    [base] = settle_all(stack, [model(unique("stalled-base"))])
    with _pg(stack) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (GRAPH_LOCK,))
        doc = stack.register(model(unique("stalled"), dependencies=[{"id": base["id"]}]))
        job_id = doc["job"]["id"]
        _wait_for(lambda: _waiting_for_graph_lock(stack) == 1)  # the first worker, resolving
        # Its lease goes stale (as after LEASE_SECONDS without a heartbeat); beat requeues it
        # and the other worker process takes the job and waits for the same lock.
        stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LEASE_SECONDS + 5)
        holder.execute("UPDATE jobs SET heartbeat_at = %s WHERE id = %s", (stale, job_id))
        stack.send_task(REQUEUE_STALE)
        _wait_for(lambda: _waiting_for_graph_lock(stack) == 2)
        holder.execute("SELECT pg_advisory_unlock(%s)", (GRAPH_LOCK,))
    job = stack.wait_job(job_id)
    _wait_for(lambda: _waiting_for_graph_lock(stack) == 0)
    time.sleep(0.5)  # let the stalled worker finish whatever it still does
    assert_active(stack.wait_job(job_id), stack.asset(doc["id"]))
    assert job["attempts"] == 2
    types = event_types(stack, doc["id"])
    assert types == [
        "asset_registered",
        "policy_evaluated",
        "compliance_changed",
        "asset_validated",
    ], types


def test_a_registration_without_edges_activates_while_the_graph_lock_is_held(
    stack: Stack,
) -> None:
    """Only edges close cycles: an asset with no dependencies is not held up by resolution or
    activation going on elsewhere (here: the graph lock held throughout)."""
    with _pg(stack) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (GRAPH_LOCK,))
        try:
            job, asset = stack.settle(model(unique("edgeless")))
            assert _waiting_for_graph_lock(stack) == 0
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (GRAPH_LOCK,))
    assert_active(job, asset)


def test_the_reaper_never_requeues_a_job_while_its_worker_commits(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper reads a job as stale while its (slow, but alive) worker is committing the
    verdict: the job must stay finished, not go back to the queue and run again."""
    monkeypatch.setitem(stack.app.extensions, "task_producer", None)
    doc = stack.register(model(unique("finishing")))
    monkeypatch.undo()
    job_id = doc["job"]["id"]
    stale = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=LEASE_SECONDS + 5)
    reaped: list[int] = []

    def reap() -> None:
        with stack.app.app_context():
            reaped.append(requeue_stale_jobs())

    with _pg(stack) as worker:
        worker.execute(
            "UPDATE jobs SET status = 'running', worker = 'slow@host/1', attempts = 1, "
            "heartbeat_at = %s, started_at = now() WHERE id = %s",
            (stale, job_id),
        )
        with worker.transaction():  # the worker writes its verdict: the job row is locked
            worker.execute(
                "UPDATE jobs SET status = 'succeeded', worker = NULL, finished_at = now() "
                "WHERE id = %s",
                (job_id,),
            )
            reaper = threading.Thread(target=reap)
            reaper.start()
            reaper.join(timeout=1.0)
        reaper.join(timeout=10)
    assert not reaper.is_alive()
    time.sleep(0.5)  # a requeued job would be on its way to a worker by now
    job = stack.api("viewer").get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["attempts"] == 1, job


# ---- the read-through cache, across processes ---------------------------------------------------


def _cache_counts(stack: Stack) -> dict[str, float]:
    """``cache_operations_total{operation="get"}`` by result, as /metrics shows it."""
    text = stack.app.test_client().get("/metrics").get_data(as_text=True)
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cache_operations_total" and sample.labels["operation"] == "get":
                counts[sample.labels["result"]] = sample.value
    return counts


_CHANGE_IN_ANOTHER_PROCESS = """
import sys
from app import create_app
from app.assets.models import Asset
from app.extensions import db

app = create_app()
with app.app_context():
    asset = db.session.get(Asset, sys.argv[1])
    asset.description = sys.argv[2]
    db.session.commit()
"""


def test_single_asset_reads_come_from_redis_and_follow_every_change(stack: Stack) -> None:
    """A read is cached (a hit the second time, 304 on its ETag); the worker's verdict, a
    change committed by another process, an update and a delete each show at the next read."""
    viewer = stack.api("viewer")
    doc = stack.register(model(unique("cached"), dependencies=[]))
    early = viewer.get(f"/v1/assets/{doc['id']}")  # cached before the worker's verdict, mostly
    job = stack.wait_job(doc["job"]["id"])
    validated = viewer.get(f"/v1/assets/{doc['id']}")
    assert_active(job, validated.get_json())
    if early.get_json()["status"] != "active":
        assert validated.headers["ETag"] != early.headers["ETag"]
    stale = viewer.get(f"/v1/assets/{doc['id']}", headers={"If-None-Match": early.headers["ETag"]})
    assert stale.status_code == 200 and stale.data == validated.data

    before = _cache_counts(stack)
    first = viewer.get(f"/v1/assets/{doc['id']}")
    second = viewer.get(f"/v1/assets/{doc['id']}")
    after = _cache_counts(stack)
    assert first.status_code == second.status_code == 200
    assert first.data == second.data == validated.data
    assert after.get("hit", 0) >= before.get("hit", 0) + 2
    unchanged = viewer.get(
        f"/v1/assets/{doc['id']}", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert unchanged.status_code == 304 and unchanged.headers["ETag"] == first.headers["ETag"]

    subprocess.run(
        [sys.executable, "-c", _CHANGE_IN_ANOTHER_PROCESS, doc["id"], "said elsewhere"],
        env=stack.env,
        cwd=Path(__file__).parents[2],
        check=True,
        timeout=60,
    )
    assert viewer.get(f"/v1/assets/{doc['id']}").get_json()["description"] == "said elsewhere"

    patched = stack.api("developer").patch(
        f"/v1/assets/{doc['id']}", json={"description": "now described"}
    )
    assert patched.status_code == 200, patched.get_json()
    assert viewer.get(f"/v1/assets/{doc['id']}").get_json()["description"] == "now described"

    assert stack.api("admin").delete(f"/v1/assets/{doc['id']}").status_code == 204
    gone = viewer.get(f"/v1/assets/{doc['id']}")
    assert gone.status_code == 404 and gone.get_json()["code"] == "NOT_FOUND"


def test_workers_send_task_events_once_flower_asks(stack: Stack) -> None:
    """Task events are off until asked for (Celery's default): Flower (docker-compose.yml)
    broadcasts enable_events while it runs, and from then on it sees each task arrive and
    finish; ``celery events`` after ``celery control enable_events`` alike."""
    producer = stack.app.extensions["task_producer"]
    seen: list[dict[str, Any]] = []
    ready = threading.Event()

    def received_for(job_id: str) -> list[dict[str, Any]]:
        return [e for e in seen if e["type"] == "task-received" and job_id in e["args"]]

    def finished(job_id: str) -> bool:
        return any(
            e["type"] == "task-succeeded" and e["uuid"] == received["uuid"]
            for received in received_for(job_id)
            for e in seen
        )

    with producer.connection_for_read() as connection:
        receiver = producer.events.Receiver(connection, handlers={"*": seen.append})
        consume_ready = receiver.on_consume_ready

        def on_consume_ready(*args: Any, **kwargs: Any) -> None:
            consume_ready(*args, **kwargs)
            ready.set()

        receiver.on_consume_ready = on_consume_ready
        listener = threading.Thread(
            target=receiver.capture, kwargs={"wakeup": False}, name="events", daemon=True
        )
        listener.start()
        try:
            assert ready.wait(10), "the event receiver did not start"
            quiet = stack.register(model(unique("flower"), dependencies=[]))
            assert stack.wait_job(quiet["job"]["id"])["status"] == "succeeded"
            time.sleep(1)  # an event sent at the task's end would have arrived by now
            unasked = [e for e in seen if e["type"].startswith("task-")]
            # What Flower does every few seconds; every worker answers once it has switched.
            replies = producer.control.enable_events(reply=True, timeout=5)
            assert replies, "no worker answered enable_events"
            doc = stack.register(model(unique("flower"), dependencies=[]))
            job = stack.wait_job(doc["job"]["id"])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not finished(doc["job"]["id"]):
                time.sleep(0.05)
        finally:
            producer.control.disable_events(reply=True, timeout=5)
            receiver.should_stop = True
            listener.join(10)
    assert unasked == [], [e["type"] for e in unasked]
    assert job["status"] == "succeeded"
    received = received_for(doc["job"]["id"])
    assert len(received) == 1, [e["type"] for e in seen]
    assert received[0]["name"] == "registry.jobs.run_registration"
    done = [e for e in seen if e["type"] == "task-succeeded" and e["uuid"] == received[0]["uuid"]]
    assert len(done) == 1 and done[0]["runtime"] > 0, seen
