"""PATCH and DELETE /v1/assets/{id}: merges, immutable fields, status transitions, If-Match,
outbox events, soft deletes and HAS_DEPENDENTS (CONTRACT.md §4, §7)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.assets.models import AssetDependency
from app.events.models import Event
from app.extensions import db
from tests.helpers import problem, set_status

POLICY_SPEC = {"rules": [{"name": "r", "expression": "true", "severity": "warn"}]}


def register(
    api: Any, name: str = "m", version: str = "1.0.0", status: str | None = None, **fields: Any
) -> dict[str, Any]:
    doc = {"asset_type": "model", "name": name, "version": version, **fields}
    response = api.post("/v1/assets", json=doc)
    assert response.status_code == 202, response.get_json()
    asset: dict[str, Any] = response.get_json()
    if status is not None:
        set_status(asset["id"], status)
    return asset


def patch(api: Any, asset_id: str, changes: Any, **kw: Any) -> dict[str, Any]:
    response = api.patch(f"/v1/assets/{asset_id}", json=changes, **kw)
    assert response.status_code == 200, response.get_json()
    assert response.headers["ETag"]
    return response.get_json()  # type: ignore[no-any-return]


def events(asset_id: str) -> list[tuple[str, dict[str, Any]]]:
    # ULIDs made within one millisecond are not ordered: go by time first.
    rows = db.session.scalars(
        select(Event).where(Event.asset_id == asset_id).order_by(Event.created_at, Event.id)
    )
    return [(e.type, e.data) for e in rows]


def depend_on(dependent_id: str, target: dict[str, Any]) -> None:
    """A locked edge as the pipeline's dependencies step would store it."""
    db.session.add(
        AssetDependency(
            asset_id=dependent_id,
            position=0,
            name=target["name"],
            version_range="^1.0.0",
            resolved_id=target["id"],
            resolved_version=target["version"],
        )
    )
    db.session.commit()


# ---- PATCH: fields ---------------------------------------------------------------------------


def test_patch_replaces_tags(dev):
    asset = register(dev, tags=["a", "b", "c"])
    assert patch(dev, asset["id"], {"tags": ["c", "d"]})["tags"] == ["c", "d"]
    assert patch(dev, asset["id"], {"tags": ["d", "c"]})["tags"] == ["d", "c"]
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["tags"] == ["d", "c"]
    assert patch(dev, asset["id"], {"tags": []})["tags"] == []


def test_patch_tags_are_validated(dev):
    asset = register(dev)
    doc = problem(
        dev.patch(f"/v1/assets/{asset['id']}", json={"tags": ["x", "x"]}), 422, "VALIDATION_FAILED"
    )
    assert list(doc["errors"]) == ["tags"]
    doc = problem(
        dev.patch(f"/v1/assets/{asset['id']}", json={"tags": ["ok", "no way"]}),
        422,
        "VALIDATION_FAILED",
    )
    assert list(doc["errors"]) == ["tags.1"]


def test_patch_merges_annotations_and_null_deletes(dev):
    asset = register(dev, annotations={"a": "1", "b": "2"})
    doc = patch(dev, asset["id"], {"annotations": {"b": None, "c": "3", "gone": None}})
    assert doc["annotations"] == {"a": "1", "c": "3"}
    doc = patch(dev, asset["id"], {"annotations": {"a": "one"}})
    assert doc["annotations"] == {"a": "one", "c": "3"}
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["annotations"] == doc["annotations"]


def test_patch_annotation_values_must_be_strings_or_null(dev):
    asset = register(dev)
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"annotations": {"n": 1}})
    assert list(problem(response, 422, "VALIDATION_FAILED")["errors"]) == ["annotations.n"]


def test_patch_description_and_license(dev):
    asset = register(dev, description="old", license="MIT")
    doc = patch(dev, asset["id"], {"description": "new", "license": "apache-2.0"})
    assert doc["description"] == "new"
    assert doc["license"] == "Apache-2.0"
    doc = patch(dev, asset["id"], {"description": None, "license": None})
    assert doc["description"] is None and doc["license"] is None
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"license": "Bogus-9"})
    assert list(problem(response, 422, "VALIDATION_FAILED")["errors"]) == ["license"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "other"),
        ("version", "2.0.0"),
        ("asset_type", "dataset"),
        ("checksum", {"algorithm": "SHA256", "value": "ab" * 32}),
        ("storage", {"uri": "file:///x"}),
        ("spec", {"rules": []}),
    ],
)
def test_patch_immutable_field_is_422_naming_it(dev, field, value):
    asset = register(dev, description="keep")
    response = dev.patch(f"/v1/assets/{asset['id']}", json={field: value, "description": "changed"})
    doc = problem(response, 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == [field]
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["description"] == "keep"


def test_patch_unknown_field_is_422(dev):
    asset = register(dev)
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"colour": "red"})
    assert list(problem(response, 422, "VALIDATION_FAILED")["errors"]) == ["colour"]


def test_patch_non_object_body_is_422(dev):
    asset = register(dev)
    problem(dev.patch(f"/v1/assets/{asset['id']}", json=["tags"]), 422, "VALIDATION_FAILED")


def test_patch_malformed_json_is_400_and_text_is_415(dev):
    asset = register(dev)
    response = dev.patch(
        f"/v1/assets/{asset['id']}", data=b"{", headers={"Content-Type": "application/json"}
    )
    problem(response, 400, "INVALID_INPUT")
    response = dev.patch(
        f"/v1/assets/{asset['id']}", data=b"tags=a", headers={"Content-Type": "text/plain"}
    )
    problem(response, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_patch_bumps_updated_at_and_etag(dev):
    asset = register(dev)
    before = dev.get(f"/v1/assets/{asset['id']}")
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"tags": ["x"]})
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["updated_at"] > before.get_json()["updated_at"]
    assert doc["created_at"] == before.get_json()["created_at"]
    assert response.headers["ETag"] != before.headers["ETag"]
    assert dev.get(f"/v1/assets/{asset['id']}").headers["ETag"] == response.headers["ETag"]


def test_noop_patch_changes_nothing(dev):
    asset = register(dev, tags=["a"], description="d")
    before = dev.get(f"/v1/assets/{asset['id']}")
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"tags": ["a"], "description": "d", "status": "pending"}
    )
    assert response.status_code == 200
    assert response.headers["ETag"] == before.headers["ETag"]
    assert response.get_json()["updated_at"] == before.get_json()["updated_at"]
    assert [t for t, _ in events(asset["id"])] == ["asset_registered"]


def test_patch_writes_outbox_events(dev):
    asset = register(dev, status="active")
    assert [t for t, _ in events(asset["id"])] == ["asset_registered"]
    patch(dev, asset["id"], {"tags": ["x"], "description": "d"})
    assert events(asset["id"])[1:] == [("asset_updated", {"fields": ["description", "tags"]})]
    patch(
        dev,
        asset["id"],
        {"status": "deprecated", "annotations": {"k": "v"}},
        headers={"X-Request-ID": "req-patch-2"},
    )
    # one event per concern, written by the same request
    rows = db.session.scalars(select(Event).where(Event.request_id == "req-patch-2"))
    written = [(e.type, e.asset_id, e.data) for e in rows]
    assert sorted(written, key=lambda e: e[0]) == [
        ("asset_status_changed", asset["id"], {"from": "active", "to": "deprecated"}),
        ("asset_updated", asset["id"], {"fields": ["annotations"]}),
    ]
    patch(dev, asset["id"], {"status": "active"})
    assert events(asset["id"])[-1] == (
        "asset_status_changed",
        {"from": "deprecated", "to": "active"},
    )
    assert len(events(asset["id"])) == 5


# ---- PATCH: status ---------------------------------------------------------------------------


def test_active_to_deprecated_and_back(dev):
    asset = register(dev, status="active")
    doc = patch(dev, asset["id"], {"status": "deprecated"})
    assert doc["status"] == "deprecated"
    assert doc["deprecated_at"] is not None
    assert doc["deprecated_at"] == doc["updated_at"]
    doc = patch(dev, asset["id"], {"status": "active"})
    assert doc["status"] == "active"
    assert doc["deprecated_at"] is None


@pytest.mark.parametrize("start", ["active", "deprecated"])
def test_archive_is_terminal(dev, start):
    asset = register(dev, status=start)
    assert patch(dev, asset["id"], {"status": "archived"})["status"] == "archived"
    for target in ("active", "deprecated"):
        response = dev.patch(f"/v1/assets/{asset['id']}", json={"status": target})
        doc = problem(response, 409, "CONFLICT")
        assert "archived" in doc["detail"]
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["status"] == "archived"


@pytest.mark.parametrize(
    ("start", "target"),
    [
        ("pending", "active"),
        ("pending", "deprecated"),
        ("pending", "archived"),
        ("validating", "active"),
        ("rejected", "active"),
        ("rejected", "archived"),
        ("active", "pending"),
        ("active", "rejected"),
        ("active", "validating"),
        ("deprecated", "rejected"),
    ],
)
def test_forbidden_transitions_are_409(dev, start, target):
    asset = register(dev, status=None if start == "pending" else start)
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"status": target})
    problem(response, 409, "CONFLICT")
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["status"] == start
    assert [t for t, _ in events(asset["id"])] == ["asset_registered"]


def test_forbidden_transition_applies_no_other_change(dev):
    asset = register(dev, description="old")
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "new", "status": "active"}
    )
    problem(response, 409, "CONFLICT")
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["description"] == "old"


def test_unknown_status_is_422(dev):
    asset = register(dev, status="active")
    response = dev.patch(f"/v1/assets/{asset['id']}", json={"status": "deleted"})
    assert list(problem(response, 422, "VALIDATION_FAILED")["errors"]) == ["status"]


# ---- PATCH: If-Match -------------------------------------------------------------------------


def test_if_match_current_is_200_with_new_etag(dev):
    asset = register(dev)
    etag = dev.get(f"/v1/assets/{asset['id']}").headers["ETag"]
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "x"}, headers={"If-Match": etag}
    )
    assert response.status_code == 200
    assert response.headers["ETag"] != etag
    listed = dev.patch(
        f"/v1/assets/{asset['id']}",
        json={"description": "y"},
        headers={"If-Match": f'"nope", {response.headers["ETag"]}'},
    )
    assert listed.status_code == 200
    star = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "z"}, headers={"If-Match": "*"}
    )
    assert star.status_code == 200


def test_if_match_stale_is_412_and_changes_nothing(dev):
    asset = register(dev)
    stale = dev.get(f"/v1/assets/{asset['id']}").headers["ETag"]
    patch(dev, asset["id"], {"description": "first"})
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "second"}, headers={"If-Match": stale}
    )
    problem(response, 412, "PRECONDITION_FAILED")
    assert dev.get(f"/v1/assets/{asset['id']}").get_json()["description"] == "first"


def test_if_match_weak_etag_never_matches(dev):
    asset = register(dev)
    etag = dev.get(f"/v1/assets/{asset['id']}").headers["ETag"]
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "x"}, headers={"If-Match": f"W/{etag}"}
    )
    problem(response, 412, "PRECONDITION_FAILED")


@pytest.mark.parametrize("header", ["abc", '"unterminated', '"a" "b"', ""])
def test_malformed_if_match_is_400(dev, header):
    asset = register(dev)
    response = dev.patch(
        f"/v1/assets/{asset['id']}", json={"description": "x"}, headers={"If-Match": header}
    )
    problem(response, 400, "INVALID_INPUT")


# ---- PATCH: who ------------------------------------------------------------------------------


def test_patch_roles(dev, viewer, as_role):
    model = register(dev)
    policy = register(dev, "p", asset_type="policy", spec=POLICY_SPEC)
    user = as_role("user")
    assert patch(user, model["id"], {"description": "by user"})["description"] == "by user"
    problem(user.patch(f"/v1/assets/{policy['id']}", json={"description": "x"}), 403, "FORBIDDEN")
    problem(viewer.patch(f"/v1/assets/{model['id']}", json={"description": "x"}), 403, "FORBIDDEN")
    assert patch(dev, policy["id"], {"description": "by dev"})["description"] == "by dev"


def test_patch_unknown_or_deleted_is_404(dev):
    problem(dev.patch("/v1/assets/01J0000000000000000000000Z", json={}), 404, "NOT_FOUND")
    asset = register(dev)
    assert dev.delete(f"/v1/assets/{asset['id']}").status_code == 204
    problem(dev.patch(f"/v1/assets/{asset['id']}", json={"tags": []}), 404, "NOT_FOUND")


# ---- DELETE ----------------------------------------------------------------------------------


def test_delete_is_soft_and_keeps_the_version_reserved(dev, admin):
    asset = register(dev, tags=["x"])
    response = dev.delete(f"/v1/assets/{asset['id']}")
    assert response.status_code == 204
    assert response.data == b""
    problem(dev.get(f"/v1/assets/{asset['id']}"), 404, "NOT_FOUND")
    assert dev.get("/v1/assets").get_json()["total"] == 0
    assert dev.get("/v1/assets?tag=x").get_json()["items"] == []
    again = dev.post("/v1/assets", json={"asset_type": "model", "name": "m", "version": "1.0.0"})
    problem(again, 409, "ALREADY_EXISTS")
    problem(dev.delete(f"/v1/assets/{asset['id']}"), 404, "NOT_FOUND")
    assert [t for t, _ in events(asset["id"])] == ["asset_registered", "asset_deleted"]


def test_admin_reads_deleted_with_include_deleted(dev, admin):
    asset = register(dev)
    assert dev.delete(f"/v1/assets/{asset['id']}").status_code == 204
    problem(admin.get(f"/v1/assets/{asset['id']}"), 404, "NOT_FOUND")
    response = admin.get(f"/v1/assets/{asset['id']}?include_deleted=true")
    assert response.status_code == 200
    assert response.get_json()["deleted_at"] is not None
    problem(dev.get(f"/v1/assets/{asset['id']}?include_deleted=true"), 403, "FORBIDDEN")
    listed = admin.get("/v1/assets?include_deleted=true").get_json()["items"]
    assert [i["id"] for i in listed] == [asset["id"]]
    # the admin sees which asset holds the version
    again = admin.post("/v1/assets", json={"asset_type": "model", "name": "m", "version": "1.0.0"})
    assert problem(again, 409, "ALREADY_EXISTS")["asset_id"] == asset["id"]


def test_delete_roles(dev, viewer, as_role):
    asset = register(dev)
    problem(as_role("user").delete(f"/v1/assets/{asset['id']}"), 403, "FORBIDDEN")
    problem(viewer.delete(f"/v1/assets/{asset['id']}"), 403, "FORBIDDEN")
    problem(dev.delete(f"/v1/assets/{asset['id']}?force=true"), 403, "FORBIDDEN")
    assert dev.get(f"/v1/assets/{asset['id']}").status_code == 200


def test_delete_unknown_is_404_and_bad_force_is_422(dev):
    problem(dev.delete("/v1/assets/01J0000000000000000000000Z"), 404, "NOT_FOUND")
    asset = register(dev)
    problem(dev.delete(f"/v1/assets/{asset['id']}?force=perhaps"), 422, "VALIDATION_FAILED")


def test_delete_with_active_dependent_is_409_has_dependents(dev, admin):
    target = register(dev, "base")
    dependent = register(dev, "app", status="active")
    depend_on(dependent["id"], target)
    doc = problem(dev.delete(f"/v1/assets/{target['id']}"), 409, "HAS_DEPENDENTS")
    assert doc["dependents"] == [dependent["id"]]
    assert dev.get(f"/v1/assets/{target['id']}").status_code == 200
    assert admin.delete(f"/v1/assets/{target['id']}?force=true").status_code == 204
    problem(dev.get(f"/v1/assets/{target['id']}"), 404, "NOT_FOUND")
    deleted = [d for t, d in events(target["id"]) if t == "asset_deleted"]
    assert deleted == [{"name": "base", "version": "1.0.0", "forced": True}]


def test_admin_without_force_also_gets_has_dependents(dev, admin):
    target = register(dev, "base")
    dependent = register(dev, "app", status="deprecated")
    depend_on(dependent["id"], target)
    problem(admin.delete(f"/v1/assets/{target['id']}"), 409, "HAS_DEPENDENTS")


@pytest.mark.parametrize("status", ["rejected", "archived"])
def test_dead_dependents_do_not_block_a_delete(dev, status):
    target = register(dev, "base")
    dependent = register(dev, "app", status=status)
    depend_on(dependent["id"], target)
    assert dev.delete(f"/v1/assets/{target['id']}").status_code == 204


def test_deleted_dependent_does_not_block_a_delete(dev):
    target = register(dev, "base")
    dependent = register(dev, "app", status="active")
    depend_on(dependent["id"], target)
    assert dev.delete(f"/v1/assets/{dependent['id']}").status_code == 204
    assert dev.delete(f"/v1/assets/{target['id']}").status_code == 204


def test_delete_policy_needs_policy_write(dev, as_role):
    policy = register(dev, "p", asset_type="policy", spec=POLICY_SPEC)
    assert dev.delete(f"/v1/assets/{policy['id']}").status_code == 204
