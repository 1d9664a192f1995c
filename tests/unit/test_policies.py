"""Which assets a policy governs, what its rules say about one, and the compliance verdict
(CONTRACT.md §4 ``compliance``, §6)."""

from __future__ import annotations

from typing import Any

import pytest

from app.policies.service import (
    RuleResult,
    evaluate_policies,
    evaluate_policy,
    matches,
    summarize,
)


def asset(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "01J0000000000000000000000A",
        "asset_type": "model",
        "name": "acme/llm",
        "version": "1.0.0",
        "description": "a model",
        "license": "MIT",
        "tags": ["chat"],
        "annotations": {},
        "provenance": None,
        "artifact": None,
        "status": "validating",
    }
    doc.update(fields)
    return doc


def policy(*rules: dict[str, Any], applies_to: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": list(rules)}
    if applies_to is not None:
        spec["applies_to"] = applies_to
    return {
        "id": "01J000000000000000000000PA",
        "asset_type": "policy",
        "name": "org/licensing",
        "version": "2.1.0",
        "spec": spec,
    }


LICENSE_ALLOWLIST = {
    "name": "license-allowlist",
    "expression": 'asset.license in ["MIT", "Apache-2.0"]',
    "severity": "deny",
    "message": "license must be MIT or Apache-2.0",
}
HAS_DESCRIPTION = {
    "name": "has-description",
    "expression": 'asset.description != null && asset.description != ""',
    "severity": "warn",
    "message": "describe the model",
}


# ---- selectors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [None, {}, {"asset_types": [], "tags": []}])
@pytest.mark.parametrize(
    ("asset_type", "governed"),
    [
        ("model", True),
        ("pipeline", True),
        ("dataset", True),
        ("policy", False),
        ("test_suite", False),
    ],
)
def test_empty_selector_matches_every_governed_type(
    selector: dict[str, Any] | None, asset_type: str, governed: bool
) -> None:
    assert matches(selector, asset_type, ["anything"]) is governed
    assert matches(selector, asset_type, []) is governed


@pytest.mark.parametrize(
    ("selector", "asset_type", "tags", "expected"),
    [
        ({"asset_types": ["model"]}, "model", [], True),
        ({"asset_types": ["model"]}, "dataset", [], False),
        ({"asset_types": ["dataset", "pipeline"]}, "pipeline", ["x"], True),
        ({"tags": ["prod", "staging"]}, "model", ["staging"], True),
        ({"tags": ["prod", "staging"]}, "model", ["dev", "prod"], True),
        ({"tags": ["prod"]}, "model", ["dev"], False),
        ({"tags": ["prod"]}, "model", [], False),
        ({"tags": ["prod"]}, "model", ["Prod"], False),  # tags compare exactly
        ({"asset_types": ["model"], "tags": ["prod"]}, "model", ["prod"], True),
        ({"asset_types": ["model"], "tags": ["prod"]}, "dataset", ["prod"], False),
        ({"asset_types": ["model"], "tags": ["prod"]}, "model", ["dev"], False),
        # governance assets are never governed, whatever the selector says
        ({"asset_types": ["policy"]}, "policy", [], False),
        ({"tags": ["prod"]}, "test_suite", ["prod"], False),
    ],
)
def test_selector_narrows_by_type_and_any_tag(
    selector: dict[str, Any], asset_type: str, tags: list[str], expected: bool
) -> None:
    assert matches(selector, asset_type, tags) is expected


# ---- evaluation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("license", "passed"),
    [("MIT", True), ("Apache-2.0", True), ("GPL-3.0-only", False), (None, False)],
)
def test_license_allowlist_rule(license: str | None, passed: bool) -> None:
    [result] = evaluate_policy(policy(LICENSE_ALLOWLIST), asset(license=license), None)
    assert result == RuleResult(
        policy_id="01J000000000000000000000PA",
        policy_name="org/licensing",
        policy_version="2.1.0",
        rule="license-allowlist",
        severity="deny",
        passed=passed,
        message="passed" if passed else "license must be MIT or Apache-2.0",
    )


def test_result_document_has_the_contract_fields() -> None:
    [result] = evaluate_policy(policy(HAS_DESCRIPTION), asset(description=None), None)
    assert result.as_dict() == {
        "policy_id": "01J000000000000000000000PA",
        "policy_name": "org/licensing",
        "policy_version": "2.1.0",
        "rule": "has-description",
        "severity": "warn",
        "passed": False,
        "message": "describe the model",
    }


def test_one_result_per_rule_in_order() -> None:
    results = evaluate_policy(
        policy(LICENSE_ALLOWLIST, HAS_DESCRIPTION), asset(license="GPL-3.0-only"), None
    )
    assert [(r.rule, r.severity, r.passed) for r in results] == [
        ("license-allowlist", "deny", False),
        ("has-description", "warn", True),
    ]


def test_a_failing_rule_without_message_names_its_expression() -> None:
    rule = {"name": "small", "expression": "asset.size_bytes < 10", "severity": "warn"}
    [result] = evaluate_policy(policy(rule), asset(size_bytes=99), None)
    assert not result.passed
    assert result.message == "rule small failed: asset.size_bytes < 10"


def test_an_erroring_rule_fails_and_says_why() -> None:
    rule = {
        "name": "has-author",
        "expression": 'asset.provenance.author != ""',
        "severity": "deny",
        "message": "provenance.author is required",
    }
    [result] = evaluate_policy(policy(rule), asset(provenance=None), None)
    assert result.passed is False
    assert result.message.startswith("provenance.author is required (could not evaluate: ")
    assert "No such overload" in result.message

    [missing] = evaluate_policy(
        policy({**rule, "expression": 'asset.annotations.owner != ""'}), asset(), None
    )
    assert missing.passed is False
    assert "no such key: 'owner'" in missing.message


def test_a_non_bool_rule_fails() -> None:
    rule = {"name": "count", "expression": "size(asset.tags)", "severity": "warn"}
    [result] = evaluate_policy(policy(rule), asset(tags=["a", "b"]), None)
    assert result.passed is False
    assert "returned int 2, not a bool" in result.message


def test_a_rule_that_no_longer_compiles_fails_instead_of_raising() -> None:
    rule = {"name": "broken", "expression": "asset.license in [", "severity": "deny"}
    [result] = evaluate_policy(policy(rule), asset(), None)
    assert result.passed is False
    assert "syntax error at line 1" in result.message


def test_artifact_rules_see_the_scan_facts_or_null() -> None:
    safe = {
        "name": "no-pickle",
        "expression": 'artifact.format != "pickle"',
        "severity": "deny",
    }
    guarded = {
        "name": "no-pickle-if-scanned",
        "expression": 'artifact == null || artifact.format != "pickle"',
        "severity": "deny",
    }
    doc = policy(safe, guarded)
    assert [r.passed for r in evaluate_policy(doc, asset(), {"format": "safetensors"})] == [
        True,
        True,
    ]
    assert [r.passed for r in evaluate_policy(doc, asset(), {"format": "pickle"})] == [
        False,
        False,
    ]
    unscanned = evaluate_policy(doc, asset(), None)
    assert [r.passed for r in unscanned] == [False, True]
    assert "(artifact is null)" in unscanned[0].message


def test_evaluate_policies_applies_only_matching_policies() -> None:
    datasets_only = policy(LICENSE_ALLOWLIST, applies_to={"asset_types": ["dataset"]})
    prod_only = policy(HAS_DESCRIPTION, applies_to={"tags": ["prod"]})
    everyone = {**policy({**HAS_DESCRIPTION, "name": "any"}), "name": "org/all"}
    docs = [datasets_only, prod_only, everyone]

    results = evaluate_policies(docs, asset(tags=["prod"], license="GPL-3.0-only"), None)
    assert [(r.policy_name, r.rule) for r in results] == [
        ("org/licensing", "has-description"),
        ("org/all", "any"),
    ]
    dataset = asset(asset_type="dataset", tags=[], license="GPL-3.0-only")
    assert [r.rule for r in evaluate_policies(docs, dataset, None)] == ["license-allowlist", "any"]
    assert evaluate_policies(docs, asset(asset_type="policy"), None) == []


# ---- verdict -----------------------------------------------------------------------------------


def result(rule: str, severity: str, passed: bool) -> RuleResult:
    return RuleResult("P", "p", "1.0.0", rule, severity, passed, "passed" if passed else "no")


def test_a_failed_deny_rule_is_non_compliant() -> None:
    results = [result("a", "warn", False), result("b", "deny", True), result("c", "deny", False)]
    status, violations = summarize(results)
    assert status == "non_compliant"
    assert violations == [results[0], results[2]]


def test_only_failed_warn_rules_are_a_warning() -> None:
    results = [result("a", "deny", True), result("b", "warn", False)]
    assert summarize(results) == ("warning", [results[1]])


@pytest.mark.parametrize(
    "results", [[], [result("a", "deny", True), result("b", "warn", True)]], ids=["none", "all"]
)
def test_no_failure_is_compliant(results: list[RuleResult]) -> None:
    assert summarize(results) == ("compliant", [])


def test_summary_of_a_real_evaluation() -> None:
    doc = policy(LICENSE_ALLOWLIST, HAS_DESCRIPTION)
    assert summarize(evaluate_policy(doc, asset(), None))[0] == "compliant"
    assert summarize(evaluate_policy(doc, asset(description=""), None))[0] == "warning"
    status, violations = summarize(evaluate_policy(doc, asset(license="BSD-3-Clause"), None))
    assert status == "non_compliant"
    assert [v.rule for v in violations] == ["license-allowlist"]
