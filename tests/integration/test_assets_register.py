"""POST /v1/assets as a client sees it: 202 with the pending asset and its job, validation
problems keyed by dotted paths, duplicates, type pinning, roles and malformed requests
(CONTRACT.md §1, §4)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.helpers import problem

HEX = "ab" * 32
ULID = "01J0000000000000000000000Z"


def body(**fields: Any) -> dict[str, Any]:
    """A minimal valid model registration, with ``fields`` overriding or adding."""
    doc: dict[str, Any] = {"asset_type": "model", "name": "acme/llm", "version": "1.0.0"}
    doc.update(fields)
    return doc


def register(api: Any, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/assets", json=body(**fields))
    assert response.status_code == 202, response.get_json()
    return response.get_json()  # type: ignore[no-any-return]


def invalid(api: Any, payload: Any) -> dict[str, list[str]]:
    """POST ``payload`` and return the ``errors`` of the 422 problem."""
    doc = problem(api.post("/v1/assets", json=payload), 422, "VALIDATION_FAILED")
    assert isinstance(doc["errors"], dict) and doc["errors"], doc
    for messages in doc["errors"].values():
        assert messages and all(isinstance(m, str) and m for m in messages)
    return doc["errors"]  # type: ignore[no-any-return]


def policy_spec(**rule: Any) -> dict[str, Any]:
    return {
        "rules": [
            {"name": "has-license", "expression": "asset.license != null", "severity": "deny"}
            | rule
        ]
    }


def store_blob(app: Flask, data: bytes) -> str:
    """Put ``data`` into the app's local blob store as POST /v1/blobs would; its hex digest."""
    digest = hashlib.sha256(data).hexdigest()
    root = Path(app.extensions["blob_store"].url.removeprefix("file://"))
    path = root / "sha256" / digest[:2] / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


# ---- accepted --------------------------------------------------------------------------------


def test_register_answers_202_with_pending_asset_and_queued_job(dev):
    response = dev.post(
        "/v1/assets",
        json=body(
            description="A chat model",
            license="apache-2.0",
            tags=["chat", "en"],
            annotations={"endpoint": "http://llm.internal:8000"},
            content_type="application/octet-stream",
            size_bytes=1234,
            provenance={"author": "alice", "commit_hash": "ABCDEF1"},
        ),
    )
    assert response.status_code == 202, response.get_json()
    asset = response.get_json()
    assert asset["status"] == "pending"
    assert asset["name"] == "acme/llm" and asset["version"] == "1.0.0"
    assert asset["asset_type"] == "model"
    assert asset["license"] == "Apache-2.0"  # SPDX spelling
    assert asset["tags"] == ["chat", "en"]
    assert asset["annotations"] == {"endpoint": "http://llm.internal:8000"}
    assert asset["provenance"]["commit_hash"] == "abcdef1"
    assert asset["created_by"] == "developer-1"
    assert asset["checksum"] is None and asset["storage"] is None
    assert asset["compliance"] == {"status": "unknown", "evaluated_at": None, "violations": []}
    assert asset["dependencies"] == []
    assert asset["deprecated_at"] is None
    assert len(asset["id"]) == 26
    job = asset["job"]
    assert job["status"] == "queued"
    assert job["href"] == f"/v1/jobs/{job['id']}"
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert response.headers["ETag"]


def test_registration_job_has_five_pending_steps(dev):
    asset = register(dev)
    response = dev.get(asset["job"]["href"])
    assert response.status_code == 200
    job = response.get_json()
    assert job["kind"] == "registration"
    assert job["asset_id"] == asset["id"]
    assert job["status"] == "queued"
    assert [s["name"] for s in job["steps"]] == [
        "checksum",
        "dependencies",
        "scan",
        "policies",
        "tests",
    ]
    assert {s["status"] for s in job["steps"]} == {"pending"}


def test_registered_asset_is_readable(dev, viewer):
    asset = register(dev)
    response = viewer.get(f"/v1/assets/{asset['id']}")
    assert response.status_code == 200
    assert response.get_json()["name"] == "acme/llm"


def test_valid_storage_uri_inside_the_store_is_accepted(app, dev):
    store = app.extensions["blob_store"]
    uri = f"{store.url}/sha256/{HEX[:2]}/{HEX}"
    asset = register(
        dev, checksum={"algorithm": "SHA3_256", "value": HEX.upper()}, storage={"uri": uri}
    )
    assert asset["storage"] == {"uri": uri}
    assert asset["checksum"] == {"algorithm": "SHA3_256", "value": HEX}


def test_checksum_only_naming_a_stored_blob_is_accepted(app, dev):
    digest = store_blob(app, b"weights of a tiny model")
    asset = register(dev, checksum={"algorithm": "SHA256", "value": digest})
    assert asset["checksum"] == {"algorithm": "SHA256", "value": digest}


def test_id_dependency_shows_target_name_and_type(dev):
    target = register(dev, asset_type="dataset", name="acme/corpus")
    asset = register(dev, dependencies=[{"id": target["id"]}])
    assert asset["dependencies"] == [
        {
            "id": target["id"],
            "name": "acme/corpus",
            "asset_type": "dataset",
            "version": None,
            "resolved_id": None,
            "resolved_version": None,
        }
    ]


def test_range_dependency_is_kept_as_declared(dev):
    asset = register(
        dev,
        dependencies=[
            {"name": "acme/tokenizer", "version": ">=1.0.0 <2.0.0", "asset_type": "pipeline"},
            {"name": "corpus", "version": "^1.2.0"},
        ],
    )
    assert [(d["name"], d["version"], d["asset_type"]) for d in asset["dependencies"]] == [
        ("acme/tokenizer", ">=1.0.0 <2.0.0", "pipeline"),
        ("corpus", "^1.2.0", None),
    ]
    assert all(d["id"] is None and d["resolved_id"] is None for d in asset["dependencies"])


def test_id_and_range_dependencies_and_tags_together_are_kept_in_order(dev, viewer):
    target = register(dev, asset_type="dataset", name="acme/corpus")
    asset = register(
        dev,
        tags=["b-tag", "a-tag"],
        dependencies=[
            {"name": "acme/tokenizer", "version": "^1.0.0"},
            {"id": target["id"]},
            {"name": "acme/eval", "version": "*", "asset_type": "test_suite"},
        ],
    )

    read = viewer.get(f"/v1/assets/{asset['id']}").get_json()
    for document in (asset, read):
        assert document["tags"] == ["b-tag", "a-tag"]
        assert [(d["id"], d["name"], d["version"]) for d in document["dependencies"]] == [
            (None, "acme/tokenizer", "^1.0.0"),
            (target["id"], "acme/corpus", None),
            (None, "acme/eval", "*"),
        ]


@pytest.mark.parametrize("name", ["a", "x" * 64, "org/model", "a.b_c-d/0-e", "9" * 64 + "/z"])
def test_valid_names_are_accepted(dev, name):
    assert register(dev, name=name)["name"] == name


@pytest.mark.parametrize("version", ["0.0.0", "1.0.0-alpha.1", "2.0.0-rc.1+build.5", "10.20.30"])
def test_valid_versions_are_accepted(dev, version):
    assert register(dev, version=version)["version"] == version


# ---- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-01", "1.0.0-", "1.0.0\n", " 1.0.0", "latest"]
)
def test_bad_semver_is_rejected(dev, version):
    assert "version" in invalid(dev, body(version=version))


@pytest.mark.parametrize(
    "name",
    ["Acme/llm", "org/team/model", "x" * 65, "org/" + "y" * 65, "-model", "/model", "model/", ""],
)
def test_bad_name_is_rejected(dev, name):
    assert list(invalid(dev, body(name=name))) == ["name"]


def test_name_with_trailing_newline_is_rejected(dev):
    assert list(invalid(dev, body(name="model\n"))) == ["name"]


def test_missing_required_fields_are_each_named(dev):
    assert set(invalid(dev, {})) == {"asset_type", "name", "version"}


def test_unknown_asset_type_is_rejected(dev):
    assert list(invalid(dev, body(asset_type="checkpoint"))) == ["asset_type"]


def test_unknown_top_level_field_is_rejected(dev):
    assert list(invalid(dev, body(colour="blue"))) == ["colour"]


def test_unknown_nested_field_is_rejected_with_its_path(dev):
    errors = invalid(dev, body(provenance={"author": "a", "branch": "main"}))
    assert list(errors) == ["provenance.branch"]


def test_bad_license_is_rejected(dev):
    assert list(invalid(dev, body(license="Not-A-License-1.0"))) == ["license"]


def test_bad_provenance_commit_hash_is_named_by_dotted_path(dev):
    errors = invalid(dev, body(provenance={"commit_hash": "xyz"}))
    assert list(errors) == ["provenance.commit_hash"]


def test_bad_tag_is_named_by_index(dev):
    errors = invalid(dev, body(tags=["ok", "not ok"]))
    assert list(errors) == ["tags.1"]


def test_duplicate_tags_are_rejected(dev):
    assert list(invalid(dev, body(tags=["chat", "chat"]))) == ["tags"]


def test_non_string_annotation_values_are_rejected(dev):
    errors = invalid(dev, body(annotations={"ok": "yes", "n": 1, "flag": True}))
    assert set(errors) == {"annotations.n", "annotations.flag"}


def test_null_annotation_value_is_rejected_at_registration(dev):
    assert list(invalid(dev, body(annotations={"gone": None}))) == ["annotations.gone"]


def test_size_bytes_must_be_a_non_negative_integer(dev):
    assert list(invalid(dev, body(size_bytes=-1))) == ["size_bytes"]
    assert list(invalid(dev, body(size_bytes="12"))) == ["size_bytes"]


@pytest.mark.parametrize("value", ["ab" * 31, "zz" * 32, "ab" * 33, "ab" * 32 + "\n"])
def test_bad_checksum_hex_is_rejected(app, dev, value):
    uri = f"{app.extensions['blob_store'].url}/sha256/ab/{HEX}"
    errors = invalid(
        dev, body(checksum={"algorithm": "SHA256", "value": value}, storage={"uri": uri})
    )
    assert list(errors) == ["checksum.value"]


def test_unknown_checksum_algorithm_is_rejected(app, dev):
    uri = f"{app.extensions['blob_store'].url}/sha256/ab/{HEX}"
    errors = invalid(dev, body(checksum={"algorithm": "MD5", "value": HEX}, storage={"uri": uri}))
    assert list(errors) == ["checksum.algorithm"]


def test_sha3_checksum_without_storage_is_rejected(dev):
    errors = invalid(dev, body(checksum={"algorithm": "SHA3_256", "value": HEX}))
    assert list(errors) == ["checksum.algorithm"]


def test_checksum_only_naming_a_missing_blob_is_rejected(dev):
    errors = invalid(dev, body(checksum={"algorithm": "SHA256", "value": "cd" * 32}))
    assert list(errors) == ["checksum.value"]


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "s3://bucket/model.bin",
        "https://example.com/model.bin",
        "relative/path",
        "{store}/../escape",
        "{store}",
        "file://otherhost{store_path}/sha256/ab/x",
    ],
)
def test_storage_uri_outside_the_store_is_rejected(app, dev, uri):
    url = app.extensions["blob_store"].url
    uri = uri.format(store=url, store_path=url.removeprefix("file://"))
    errors = invalid(
        dev, body(checksum={"algorithm": "SHA256", "value": HEX}, storage={"uri": uri})
    )
    assert list(errors) == ["storage.uri"]


def test_storage_without_checksum_is_rejected(app, dev):
    uri = f"{app.extensions['blob_store'].url}/sha256/ab/{HEX}"
    assert list(invalid(dev, body(storage={"uri": uri}))) == ["checksum"]


def test_dependency_with_both_id_and_name_is_rejected(dev):
    errors = invalid(dev, body(dependencies=[{"id": ULID, "name": "x", "version": "1.0.0"}]))
    assert set(errors) <= {"dependencies.0.name", "dependencies.0.version"}
    assert "dependencies.0.name" in errors


def test_dependency_without_version_is_rejected(dev):
    errors = invalid(dev, body(dependencies=[{"name": "corpus"}]))
    assert list(errors) == ["dependencies.0.version"]


def test_empty_dependency_names_both_missing_fields(dev):
    errors = invalid(dev, body(dependencies=[{"name": "ok", "version": "*"}, {}]))
    assert set(errors) == {"dependencies.1.name", "dependencies.1.version"}


@pytest.mark.parametrize("version_range", [">=1 <", "abc", "", "1.0.0 - "])
def test_dependency_with_bad_range_is_rejected(dev, version_range):
    errors = invalid(dev, body(dependencies=[{"name": "corpus", "version": version_range}]))
    assert list(errors) == ["dependencies.0.version"]


def test_dependency_with_bad_id_is_rejected(dev):
    errors = invalid(dev, body(dependencies=[{"id": "not-an-id"}]))
    assert list(errors) == ["dependencies.0.id"]


def test_duplicate_dependency_is_rejected(dev):
    deps = [{"name": "corpus", "version": "^1.0.0"}, {"name": "corpus", "version": "^2.0.0"}]
    assert list(invalid(dev, body(dependencies=deps))) == ["dependencies"]
    ids = [{"id": ULID}, {"id": ULID}]
    assert list(invalid(dev, body(dependencies=ids))) == ["dependencies"]


def test_policy_without_spec_is_rejected(dev):
    assert list(invalid(dev, body(asset_type="policy", name="license-policy"))) == ["spec"]


def test_policy_spec_without_rules_is_rejected(dev):
    errors = invalid(dev, body(asset_type="policy", name="p", spec={"rules": []}))
    assert list(errors) == ["spec.rules"]
    errors = invalid(dev, body(asset_type="policy", name="p", spec={}))
    assert list(errors) == ["spec.rules"]


def test_policy_rule_with_bad_severity_is_named_by_path(dev):
    errors = invalid(dev, body(asset_type="policy", name="p", spec=policy_spec(severity="fatal")))
    assert list(errors) == ["spec.rules.0.severity"]


def test_policy_applies_to_bad_type_is_named_by_path(dev):
    spec = policy_spec() | {"applies_to": {"asset_types": ["model", "policy"]}}
    errors = invalid(dev, body(asset_type="policy", name="p", spec=spec))
    assert list(errors) == ["spec.applies_to.asset_types.1"]


def test_test_suite_with_unknown_case_kind_is_rejected(dev):
    spec = {
        "cases": [
            {"kind": "expression", "name": "ok", "expression": "true"},
            {"kind": "shell", "name": "bad", "command": "true"},
        ]
    }
    errors = invalid(dev, body(asset_type="test_suite", name="suite", spec=spec))
    assert list(errors) == ["spec.cases.1.kind"]


def test_test_suite_http_case_fields_are_validated(dev):
    spec = {"cases": [{"kind": "http", "name": "chat", "path": "v1/chat", "expect": "true"}]}
    errors = invalid(dev, body(asset_type="test_suite", name="suite", spec=spec))
    assert list(errors) == ["spec.cases.0.path"]


def test_valid_test_suite_is_accepted_with_defaults(dev):
    spec = {"cases": [{"kind": "http", "name": "chat", "path": "/v1/chat", "expect": "true"}]}
    asset = register(dev, asset_type="test_suite", name="suite", spec=spec)
    assert asset["spec"]["gating"] is True
    assert asset["spec"]["timeout_seconds"] == 30
    assert asset["spec"]["cases"][0]["method"] == "POST"


def test_json_array_body_is_422(dev):
    doc = problem(dev.post("/v1/assets", json=[body()]), 422, "VALIDATION_FAILED")
    assert doc["errors"]


def test_json_null_body_is_422(dev):
    response = dev.post("/v1/assets", data=b"null", headers={"Content-Type": "application/json"})
    problem(response, 422, "VALIDATION_FAILED")


def test_errors_are_not_prefixed_with_the_request_location(dev):
    errors = invalid(dev, body(version="1.0"))
    assert not any(key.startswith("json") for key in errors)


# ---- duplicates and names --------------------------------------------------------------------


def test_same_name_and_version_is_409_with_asset_id(dev):
    first = register(dev)
    doc = problem(dev.post("/v1/assets", json=body()), 409, "ALREADY_EXISTS")
    assert doc["asset_id"] == first["id"]


def test_build_metadata_is_ignored_for_uniqueness(dev):
    first = register(dev, version="1.0.0+a")
    doc = problem(dev.post("/v1/assets", json=body(version="1.0.0+b")), 409, "ALREADY_EXISTS")
    assert doc["asset_id"] == first["id"]
    # ... but a pre-release is a different version
    assert register(dev, version="1.0.0-rc.1")["version"] == "1.0.0-rc.1"


def test_a_name_keeps_the_type_of_its_first_version(dev):
    register(dev, name="shared", version="1.0.0")
    response = dev.post(
        "/v1/assets", json=body(asset_type="dataset", name="shared", version="2.0.0")
    )
    doc = problem(response, 409, "ALREADY_EXISTS")
    assert "model" in doc["detail"]
    assert register(dev, name="shared", version="2.0.0")["asset_type"] == "model"


def test_each_request_acts_as_its_own_caller(dev, viewer):
    register(dev)
    problem(viewer.post("/v1/assets", json=body(version="2.0.0")), 403, "FORBIDDEN")
    assert register(dev, version="2.0.0")["created_by"] == "developer-1"


def test_duplicate_of_a_deleted_version_is_409(dev):
    first = register(dev)
    assert dev.delete(f"/v1/assets/{first['id']}").status_code == 204
    problem(dev.post("/v1/assets", json=body()), 409, "ALREADY_EXISTS")


# ---- who may register ------------------------------------------------------------------------


def test_user_role_may_register_a_model(as_role):
    assert register(as_role("user"))["created_by"] == "user-1"


def test_user_role_may_not_register_a_policy(as_role):
    response = as_role("user").post(
        "/v1/assets", json=body(asset_type="policy", name="p", spec=policy_spec())
    )
    problem(response, 403, "FORBIDDEN")


def test_user_role_may_not_register_a_test_suite(as_role):
    spec = {"cases": [{"kind": "expression", "name": "c", "expression": "true"}]}
    response = as_role("user").post(
        "/v1/assets", json=body(asset_type="test_suite", name="s", spec=spec)
    )
    problem(response, 403, "FORBIDDEN")


def test_developer_may_register_a_policy(dev):
    asset = register(dev, asset_type="policy", name="license-policy", spec=policy_spec())
    assert asset["asset_type"] == "policy"
    assert asset["spec"]["rules"][0]["severity"] == "deny"


def test_viewer_may_not_register(viewer):
    problem(viewer.post("/v1/assets", json=body()), 403, "FORBIDDEN")


def test_anonymous_gets_401_even_for_an_invalid_body(client):
    problem(client.post("/v1/assets", json=body()), 401, "UNAUTHORIZED")
    problem(client.post("/v1/assets", json={"bad": 1}), 401, "UNAUTHORIZED")


def test_garbage_token_is_401(client):
    response = client.post("/v1/assets", json=body(), headers={"Authorization": "Bearer not.a.jwt"})
    problem(response, 401, "UNAUTHORIZED")


# ---- malformed requests ----------------------------------------------------------------------


def test_wrong_content_type_is_415(dev):
    response = dev.post(
        "/v1/assets", data=b'{"asset_type": "model"}', headers={"Content-Type": "text/plain"}
    )
    problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_malformed_json_is_400(dev):
    response = dev.post(
        "/v1/assets", data=b'{"asset_type": "model",', headers={"Content-Type": "application/json"}
    )
    problem(response, 400, "INVALID_INPUT")


def test_invalid_utf8_is_400(dev):
    response = dev.post(
        "/v1/assets", data=b'{"name": "\xff"}', headers={"Content-Type": "application/json"}
    )
    problem(response, 400, "INVALID_INPUT")


def test_no_asset_row_is_left_by_a_rejected_request(dev):
    invalid(dev, body(version="1.0"))
    problem(
        dev.post("/v1/assets", json=body(asset_type="policy", name="p")), 422, "VALIDATION_FAILED"
    )
    listed = dev.get("/v1/assets").get_json()
    assert listed["total"] == 0 and listed["items"] == []
