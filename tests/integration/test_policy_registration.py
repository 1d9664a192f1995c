"""Registering policies and test suites: CEL that does not compile is a 422 naming the rule or
case; and which version of each policy or suite is in force (CONTRACT.md §4 /latest, §6)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert, text, update

from app.assets.models import Asset
from app.db import utcnow
from app.extensions import db
from app.policies.service import (
    latest_active_policies,
    latest_active_statement,
    latest_active_suites,
)
from tests.helpers import problem, set_status

pytestmark = pytest.mark.integration

RULE = {
    "name": "has-license",
    "expression": 'asset.license in ["MIT", "Apache-2.0"]',
    "severity": "deny",
    "message": "license must be MIT or Apache-2.0",
}
HTTP_CASE = {
    "kind": "http",
    "name": "chat",
    "method": "POST",
    "path": "/v1/chat/completions",
    "body": {"messages": [{"role": "user", "content": "hi"}]},
    "expect": "response.status == 200",
}
EXPRESSION_CASE = {"kind": "expression", "name": "licensed", "expression": "asset.license != null"}


def post(api: Any, asset_type: str, name: str, version: str, spec: dict[str, Any]) -> Any:
    return api.post(
        "/v1/assets",
        json={"asset_type": asset_type, "name": name, "version": version, "spec": spec},
    )


def register(api: Any, asset_type: str, name: str, version: str, spec: dict[str, Any]) -> str:
    response = post(api, asset_type, name, version, spec)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def count(api: Any, name: str) -> int:
    response = api.get("/v1/assets", query_string={"name": name})
    assert response.status_code == 200, response.get_json()
    return int(response.get_json()["total"])


def test_policy_with_bad_cel_is_422_naming_the_rule(dev: Any) -> None:
    bad = {**RULE, "name": "allowlist", "expression": 'asset.license in ["MIT"'}
    spec = {"rules": [RULE, {**RULE, "name": "second", "expression": "asset.name != ''"}, bad]}
    doc = problem(post(dev, "policy", "org/licensing", "1.0.0", spec), 422, "VALIDATION_FAILED")
    assert list(doc["errors"]) == ["spec.rules.2.expression"]
    [message] = doc["errors"]["spec.rules.2.expression"]
    assert message.startswith("expression of rule 'allowlist' does not compile: syntax error at")
    assert count(dev, "org/licensing") == 0


def test_compile_errors_are_reported_with_other_spec_errors(dev: Any) -> None:
    spec = {
        "rules": [
            {**RULE, "expression": "1 +"},
            {**RULE, "name": "other", "severity": "fatal"},
        ]
    }
    doc = problem(post(dev, "policy", "org/licensing", "1.0.0", spec), 422, "VALIDATION_FAILED")
    assert set(doc["errors"]) == {"spec.rules.0.expression", "spec.rules.1.severity"}
    assert "rule 'has-license'" in doc["errors"]["spec.rules.0.expression"][0]


def test_good_policy_is_accepted(dev: Any) -> None:
    response = post(dev, "policy", "org/licensing", "1.0.0", {"rules": [RULE]})
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["status"] == "pending"
    assert body["spec"]["rules"][0]["expression"] == RULE["expression"]


def test_test_suite_with_bad_cel_is_422_naming_the_case(dev: Any) -> None:
    spec = {
        "cases": [
            {**HTTP_CASE, "expect": "response.status =="},
            {**EXPRESSION_CASE, "expression": "asset.license !="},
            {**HTTP_CASE, "name": "fine"},
        ]
    }
    doc = problem(post(dev, "test_suite", "org/smoke", "1.0.0", spec), 422, "VALIDATION_FAILED")
    assert set(doc["errors"]) == {"spec.cases.0.expect", "spec.cases.1.expression"}
    assert doc["errors"]["spec.cases.0.expect"][0].startswith(
        "expect of case 'chat' does not compile: syntax error at line 1, column 19"
    )
    assert "case 'licensed'" in doc["errors"]["spec.cases.1.expression"][0]
    assert count(dev, "org/smoke") == 0


def test_good_test_suite_is_accepted(dev: Any) -> None:
    spec = {"gating": True, "timeout_seconds": 10, "cases": [HTTP_CASE, EXPRESSION_CASE]}
    response = post(dev, "test_suite", "org/smoke", "1.0.0", spec)
    assert response.status_code == 202, response.get_json()


def _delete(asset_id: str) -> None:
    db.session.execute(update(Asset).where(Asset.id == asset_id).values(deleted_at=utcnow()))
    db.session.commit()


def test_latest_active_version_of_each_policy_and_suite(app: Flask, dev: Any) -> None:
    spec = {"rules": [RULE]}
    suite_spec = {"cases": [EXPRESSION_CASE]}
    statuses = {
        # highest active release wins: SemVer order (1.10 > 1.9), pre-release and inactive ignored
        ("pol-a", "1.9.0"): "active",
        ("pol-a", "1.10.0"): "active",
        ("pol-a", "2.0.0-rc.1"): "active",
        ("pol-a", "3.0.0"): "deprecated",
        ("pol-a", "3.1.0"): "pending",
        # no active release: the highest active pre-release
        ("pol-b", "1.0.0-alpha.1"): "active",
        ("pol-b", "1.0.0-beta.2"): "active",
        ("pol-b", "1.0.0"): "rejected",
        # nothing active: no policy of that name applies
        ("pol-c", "1.0.0"): "pending",
        ("pol-c", "0.1.0"): "archived",
        # a deleted version is out of the running
        ("pol-d", "0.9.0"): "active",
        ("pol-d", "1.0.0"): "active",
    }
    ids = {}
    for (name, version), status in statuses.items():
        ids[name, version] = register(dev, "policy", name, version, spec)
        if status != "pending":
            set_status(ids[name, version], status)
    _delete(ids["pol-d", "1.0.0"])

    suites = {("suite-a", "1.0.0"): "active", ("suite-a", "1.1.0"): "active"}
    for (name, version), status in suites.items():
        ids[name, version] = register(dev, "test_suite", name, version, suite_spec)
        set_status(ids[name, version], status)
    model = dev.post("/v1/assets", json={"asset_type": "model", "name": "m", "version": "1.0.0"})
    assert model.status_code == 202, model.get_json()
    set_status(model.get_json()["id"], "active")

    policies = latest_active_policies(db.session)
    assert [(p.name, p.version) for p in policies] == [
        ("pol-a", "1.10.0"),
        ("pol-b", "1.0.0-beta.2"),
        ("pol-d", "0.9.0"),
    ]
    assert [p.id for p in policies] == [
        ids["pol-a", "1.10.0"],
        ids["pol-b", "1.0.0-beta.2"],
        ids["pol-d", "0.9.0"],
    ]
    assert all(p.asset_type == "policy" and p.spec == spec for p in policies)
    assert [(s.name, s.version) for s in latest_active_suites(db.session)] == [("suite-a", "1.1.0")]

    # once the winner is deprecated, the next active release takes over
    set_status(ids["pol-a", "1.10.0"], "deprecated")
    set_status(ids["pol-b", "1.0.0"], "active")
    assert [(p.name, p.version) for p in latest_active_policies(db.session)] == [
        ("pol-a", "1.9.0"),
        ("pol-b", "1.0.0"),
        ("pol-d", "0.9.0"),
    ]


@pytest.mark.parametrize("backend", ["pg"])
def test_in_force_read_walks_only_governance_rows(app: Flask) -> None:
    """Every registration job reads what is in force: on a table of active models that read
    touches the small governance index, not every row (the plan the job's prepared statement
    keeps, given the statement's own SQL)."""
    now = utcnow()
    rows = [
        {
            "id": f"01PLAN{n:020d}",
            "asset_type": "model",
            "name": "plan-model",
            "version": f"1.0.{n}",
            "version_key": f"1.0.{n}",
            "version_sort": n.to_bytes(4, "big"),
            "prerelease": False,
            "annotations": {},
            "status": "active",
            "compliance_status": "unknown",
            "created_by": "plan",
            "created_at": now,
            "updated_at": now,
            "row_version": 1,
        }
        for n in range(3000)
    ]
    db.session.execute(
        text(
            "INSERT INTO asset_names (name, asset_type, created_at) "
            "VALUES ('plan-model', 'model', now())"
        )
    )
    db.session.execute(insert(Asset), rows)
    db.session.execute(text("ANALYZE assets"))
    # The statement as the job's connection prepares it (bound values as $n), planned the way
    # a prepared statement is once PostgreSQL settles on a generic plan.
    compiled = latest_active_statement(("policy", "test_suite")).compile(
        dialect=db.session.get_bind().dialect, compile_kwargs={"render_postcompile": True}
    )
    names: list[str] = []

    def positional(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}"

    sql = re.sub(r"%\((\w+)\)s", positional, str(compiled))
    db.session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    db.session.execute(text(f"PREPARE in_force AS {sql}"))
    values = ", ".join(repr(compiled.params[name]) for name in names)
    plan = db.session.execute(
        text(f"EXPLAIN (FORMAT JSON) EXECUTE in_force({values})")
    ).scalar_one()
    db.session.execute(text("DEALLOCATE in_force"))
    scans = []

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") == "assets" and node.get("Alias") != "assets":
            scans.append((node["Node Type"], node.get("Index Name")))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    assert scans == [("Index Scan", "ix_assets_governance_in_force")], scans
