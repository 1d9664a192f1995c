"""Reading assets: GET /v1/assets/{id} with ETag / If-None-Match, and the versions of a name
(``/versions``, ``/versions/latest``, ``/versions/{version}``), names raw or as ``org%2Fmodel``
(CONTRACT.md §1, §4)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import problem, set_status


def register(api: Any, name: str, version: str, status: str | None = None, **fields: Any) -> str:
    doc = {"asset_type": "model", "name": name, "version": version, **fields}
    response = api.post("/v1/assets", json=doc)
    assert response.status_code == 202, response.get_json()
    asset_id: str = response.get_json()["id"]
    if status is not None:
        set_status(asset_id, status)
    return asset_id


def versions(api: Any, path_name: str, **query: Any) -> list[str]:
    response = api.get(f"/v1/assets/{path_name}/versions", query_string=query)
    assert response.status_code == 200, response.get_json()
    return [item["version"] for item in response.get_json()["items"]]


# ---- GET /v1/assets/{id} ---------------------------------------------------------------------


def test_get_by_id_has_etag(dev, viewer):
    asset_id = register(dev, "m", "1.0.0")
    response = viewer.get(f"/v1/assets/{asset_id}")
    assert response.status_code == 200
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2
    assert response.get_json()["id"] == asset_id
    assert viewer.get(f"/v1/assets/{asset_id}").headers["ETag"] == etag


def test_if_none_match_current_is_304_with_etag(dev):
    asset_id = register(dev, "m", "1.0.0")
    etag = dev.get(f"/v1/assets/{asset_id}").headers["ETag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        response = dev.get(f"/v1/assets/{asset_id}", headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.headers["ETag"] == etag
        assert response.data == b""


def test_if_none_match_stale_is_200(dev):
    asset_id = register(dev, "m", "1.0.0")
    stale = dev.get(f"/v1/assets/{asset_id}").headers["ETag"]
    patched = dev.patch(f"/v1/assets/{asset_id}", json={"description": "changed"})
    assert patched.status_code == 200
    assert patched.headers["ETag"] != stale
    response = dev.get(f"/v1/assets/{asset_id}", headers={"If-None-Match": stale})
    assert response.status_code == 200
    assert response.headers["ETag"] == patched.headers["ETag"]
    assert response.get_json()["description"] == "changed"


def test_malformed_if_none_match_is_400(dev):
    asset_id = register(dev, "m", "1.0.0")
    response = dev.get(f"/v1/assets/{asset_id}", headers={"If-None-Match": "no-quotes"})
    problem(response, 400, "INVALID_INPUT")


def test_unknown_id_is_404(viewer):
    problem(viewer.get("/v1/assets/01J0000000000000000000000Z"), 404, "NOT_FOUND")
    problem(viewer.get("/v1/assets/not-an-id"), 404, "NOT_FOUND")


def test_anonymous_read_is_401(client, dev):
    asset_id = register(dev, "m", "1.0.0")
    problem(client.get(f"/v1/assets/{asset_id}"), 401, "UNAUTHORIZED")


def test_unknown_query_parameter_on_read_is_422(dev):
    asset_id = register(dev, "m", "1.0.0")
    doc = problem(dev.get(f"/v1/assets/{asset_id}?expand=all"), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["expand"]


# ---- /versions -------------------------------------------------------------------------------


ORDER_NEWEST_FIRST = ["2.0.0-beta", "1.10.0", "1.2.0", "1.0.0", "1.0.0-rc.2", "1.0.0-rc.1"]


@pytest.mark.parametrize("path_name", ["org/model", "org%2Fmodel", "org%2fmodel"])
def test_versions_newest_semver_first(dev, path_name):
    for version in ["1.0.0", "1.2.0", "1.0.0-rc.1", "2.0.0-beta", "1.10.0", "1.0.0-rc.2"]:
        register(dev, "org/model", version)
    register(dev, "org/other", "9.0.0")
    assert versions(dev, path_name) == ORDER_NEWEST_FIRST


def test_versions_list_envelope_and_paging(dev):
    for version in ORDER_NEWEST_FIRST:
        register(dev, "m", version)
    first = dev.get("/v1/assets/m/versions?limit=4").get_json()
    assert first["total"] == 6 and first["limit"] == 4 and first["next_cursor"]
    assert [i["version"] for i in first["items"]] == ORDER_NEWEST_FIRST[:4]
    second = dev.get(
        "/v1/assets/m/versions", query_string={"limit": 4, "cursor": first["next_cursor"]}
    ).get_json()
    assert [i["version"] for i in second["items"]] == ORDER_NEWEST_FIRST[4:]
    assert second["next_cursor"] is None


def test_versions_cursor_is_bound_to_the_name(dev):
    for name in ("a", "b"):
        register(dev, name, "1.0.0")
        register(dev, name, "2.0.0")
    cursor = dev.get("/v1/assets/a/versions?limit=1").get_json()["next_cursor"]
    response = dev.get("/v1/assets/b/versions", query_string={"limit": 1, "cursor": cursor})
    problem(response, 400, "INVALID_INPUT")


def test_versions_list_every_status_but_deleted(dev):
    register(dev, "m", "1.0.0", "rejected")
    register(dev, "m", "1.1.0", "archived")
    register(dev, "m", "1.2.0", "active")
    gone = register(dev, "m", "1.3.0")
    assert dev.delete(f"/v1/assets/{gone}").status_code == 204
    assert versions(dev, "m") == ["1.2.0", "1.1.0", "1.0.0"]


def test_versions_of_unknown_name_is_404(dev):
    register(dev, "org/model", "1.0.0")
    problem(dev.get("/v1/assets/org/nope/versions"), 404, "NOT_FOUND")
    problem(dev.get("/v1/assets/org%2Fnope/versions"), 404, "NOT_FOUND")
    problem(dev.get("/v1/assets/org/versions"), 404, "NOT_FOUND")


def test_versions_of_a_name_whose_versions_are_all_deleted_is_404(dev):
    gone = register(dev, "m", "1.0.0")
    assert dev.delete(f"/v1/assets/{gone}").status_code == 204
    problem(dev.get("/v1/assets/m/versions"), 404, "NOT_FOUND")


def test_versions_bad_limit_is_422(dev):
    register(dev, "m", "1.0.0")
    problem(dev.get("/v1/assets/m/versions?limit=0"), 422, "VALIDATION_FAILED")


# ---- /versions/latest ------------------------------------------------------------------------


@pytest.mark.parametrize("path_name", ["org/model", "org%2Fmodel"])
def test_latest_is_highest_active_release(dev, path_name):
    register(dev, "org/model", "1.0.0", "active")
    best = register(dev, "org/model", "1.10.0", "active")
    register(dev, "org/model", "1.2.0", "active")
    register(dev, "org/model", "2.0.0-rc.1", "active")  # a pre-release never beats a release
    register(dev, "org/model", "3.0.0", "pending")
    register(dev, "org/model", "2.5.0", "deprecated")
    register(dev, "org/model", "2.6.0", "rejected")
    response = dev.get(f"/v1/assets/{path_name}/versions/latest")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == best
    assert response.get_json()["version"] == "1.10.0"
    assert response.headers["ETag"]


def test_latest_falls_back_to_highest_active_prerelease(dev):
    register(dev, "m", "1.0.0-alpha", "active")
    best = register(dev, "m", "1.0.0-beta.2", "active")
    register(dev, "m", "1.0.0-beta.11", "pending")
    register(dev, "m", "1.0.0", "rejected")
    response = dev.get("/v1/assets/m/versions/latest")
    assert response.status_code == 200
    assert response.get_json()["id"] == best


def test_latest_ignores_deleted_active_versions(dev):
    register(dev, "m", "1.0.0", "active")
    newest = register(dev, "m", "2.0.0", "active")
    assert dev.delete(f"/v1/assets/{newest}").status_code == 204
    assert dev.get("/v1/assets/m/versions/latest").get_json()["version"] == "1.0.0"


def test_latest_without_active_version_is_404(dev):
    register(dev, "m", "1.0.0")
    register(dev, "m", "1.1.0", "deprecated")
    doc = problem(dev.get("/v1/assets/m/versions/latest"), 404, "NOT_FOUND")
    assert "m" in doc["detail"]
    problem(dev.get("/v1/assets/unknown/versions/latest"), 404, "NOT_FOUND")


def test_latest_if_none_match_is_304(dev):
    register(dev, "m", "1.0.0", "active")
    etag = dev.get("/v1/assets/m/versions/latest").headers["ETag"]
    response = dev.get("/v1/assets/m/versions/latest", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.headers["ETag"] == etag


# ---- /versions/{version} ---------------------------------------------------------------------


@pytest.mark.parametrize("path_name", ["org/model", "org%2Fmodel"])
def test_version_by_name(dev, path_name):
    wanted = register(dev, "org/model", "1.0.0-rc.1")
    register(dev, "org/model", "1.0.0")
    response = dev.get(f"/v1/assets/{path_name}/versions/1.0.0-rc.1")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["id"] == wanted
    assert response.headers["ETag"]


def test_version_lookup_ignores_build_metadata(dev):
    wanted = register(dev, "m", "1.0.0+build.7")
    for asked in ("1.0.0", "1.0.0+build.7", "1.0.0+other"):
        response = dev.get(f"/v1/assets/m/versions/{asked.replace('+', '%2B')}")
        assert response.status_code == 200, asked
        assert response.get_json()["id"] == wanted
        assert response.get_json()["version"] == "1.0.0+build.7"


def test_unknown_or_invalid_version_is_404(dev):
    register(dev, "m", "1.0.0")
    for asked in ("2.0.0", "1.0", "v1.0.0", "1.0.0-rc.1"):
        problem(dev.get(f"/v1/assets/m/versions/{asked}"), 404, "NOT_FOUND")
    problem(dev.get("/v1/assets/other/versions/1.0.0"), 404, "NOT_FOUND")


def test_deleted_version_is_404(dev):
    gone = register(dev, "m", "1.0.0")
    assert dev.delete(f"/v1/assets/{gone}").status_code == 204
    problem(dev.get("/v1/assets/m/versions/1.0.0"), 404, "NOT_FOUND")


def test_a_name_ending_in_versions_is_not_mistaken_for_a_version(dev):
    # "acme" and "acme/versions" are both valid names; version segments start with a digit.
    short = register(dev, "acme", "1.0.0", status="active")
    long_ = register(dev, "acme/versions", "2.0.0", status="active")
    listing = dev.get("/v1/assets/acme/versions/versions")
    assert listing.status_code == 200, listing.get_json()
    assert [item["id"] for item in listing.get_json()["items"]] == [long_]
    assert dev.get("/v1/assets/acme/versions/versions/latest").get_json()["id"] == long_
    assert dev.get("/v1/assets/acme/versions/1.0.0").get_json()["id"] == short
    assert dev.get("/v1/assets/acme/versions/versions/2.0.0").get_json()["id"] == long_
    assert dev.get("/v1/assets/acme/versions/latest").get_json()["id"] == short
