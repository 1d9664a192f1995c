"""Which policies and test suites govern an asset, and what a policy says about it (CONTRACT.md §6).

Pure functions over API documents (plain dicts), so the registration pipeline, the compliance
scan and tests share them without a request or an app context; only the two ``latest_active_*``
queries touch the database, through the session they are given.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import Select, bindparam, func, literal, select
from sqlalchemy.orm import Session, scoped_session

from app.assets.models import Asset
from app.assets.schemas import GOVERNED_TYPES
from app.policies.cel import CelError, compile_expression, evaluate_condition

ComplianceStatus = Literal["compliant", "warning", "non_compliant"]


@dataclasses.dataclass(frozen=True)
class RuleResult:
    """One rule of one policy applied to one asset: a row of ``/compliance``'s ``results``."""

    policy_id: str
    policy_name: str
    policy_version: str
    rule: str
    severity: str  # deny | warn
    passed: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def matches(applies_to: Mapping[str, Any] | None, asset_type: str, tags: Iterable[str]) -> bool:
    """Whether a policy or test suite with selector ``applies_to`` governs an asset.

    Only models, pipelines and datasets are ever governed (policies and test suites are not,
    whatever the selector says). The asset must be of one of ``asset_types`` and carry at least
    one of ``tags`` (exact, case-sensitive), each only when given; an absent selector, or an
    empty list, does not narrow — so ``{}`` and ``None`` match every governed asset.
    """
    if asset_type not in GOVERNED_TYPES:
        return False
    selector = applies_to or {}
    types = selector.get("asset_types") or ()
    if types and asset_type not in types:
        return False
    wanted = selector.get("tags") or ()
    return not wanted or not set(wanted).isdisjoint(tags)


def activation(asset_doc: Mapping[str, Any], artifact: Mapping[str, Any] | None) -> dict[str, Any]:
    """The CEL variables of a policy rule (see ``app.policies.cel`` for their meaning)."""
    return {"asset": dict(asset_doc), "artifact": None if artifact is None else dict(artifact)}


def evaluate_policy(
    policy_doc: Mapping[str, Any],
    asset_doc: Mapping[str, Any],
    artifact: Mapping[str, Any] | None,
) -> list[RuleResult]:
    """Apply every rule of ``policy_doc`` (a policy's asset document, with its ``spec``) to
    ``asset_doc`` (the governed asset's document) and ``artifact`` (its scan facts, or None).

    Does not check ``applies_to``: callers select policies with :func:`matches` first. One
    result per rule, in the spec's order. A rule passes only when its expression yields
    ``true``; ``false``, a non-bool result, or an error (missing key, type mismatch, an
    expression that no longer compiles) fails it, and the message says which. Never raises for
    a bad rule.
    """
    spec = policy_doc.get("spec") or {}
    variables = activation(asset_doc, artifact)
    results = []
    for rule in spec.get("rules") or ():
        name = str(rule.get("name"))
        expression = rule.get("expression")
        failure = rule.get("message") or f"rule {name} failed: {expression}"
        try:
            passed = evaluate_condition(compile_expression(str(expression)), variables)
        except CelError as exc:
            passed, message = False, f"{failure} (could not evaluate: {exc.message})"
        else:
            message = "passed" if passed else failure
        results.append(
            RuleResult(
                policy_id=str(policy_doc.get("id")),
                policy_name=str(policy_doc.get("name")),
                policy_version=str(policy_doc.get("version")),
                rule=name,
                severity=str(rule.get("severity")),
                passed=passed,
                message=message,
            )
        )
    return results


def evaluate_policies(
    policy_docs: Iterable[Mapping[str, Any]],
    asset_doc: Mapping[str, Any],
    artifact: Mapping[str, Any] | None,
) -> list[RuleResult]:
    """:func:`evaluate_policy` for each policy whose ``applies_to`` :func:`matches` the asset."""
    results: list[RuleResult] = []
    for policy in policy_docs:
        spec = policy.get("spec") or {}
        if matches(spec.get("applies_to"), asset_doc["asset_type"], asset_doc.get("tags") or ()):
            results.extend(evaluate_policy(policy, asset_doc, artifact))
    return results


def summarize(results: Sequence[RuleResult]) -> tuple[ComplianceStatus, list[RuleResult]]:
    """The compliance verdict of ``results`` and its violations (the failing results, in order).

    A failed ``deny`` rule makes the asset ``non_compliant`` (and rejects a registration); else a
    failed ``warn`` rule makes it ``warning``; else — including when no policy applies — it is
    ``compliant``.
    """
    violations = [result for result in results if not result.passed]
    if any(result.severity == "deny" for result in violations):
        return "non_compliant", violations
    if violations:
        return "warning", violations
    return "compliant", violations


@functools.cache
def latest_active_statement(asset_types: tuple[str, ...]) -> Select[tuple[Asset]]:
    """The latest-active versions of ``asset_types`` (policies, suites), by name. Built once
    per tuple of types: its cache key is then worked out once, not at every job."""
    # Of each name, the /latest rule of CONTRACT.md §4: active, not deleted, releases before
    # pre-releases (False sorts first), then the highest SemVer. One query with a window.
    # The types and the status are written into the SQL, not bound, so that the plan, the
    # prepared statement's generic one too, sees that only ix_assets_governance_in_force's rows
    # can match; with bound values it guesses from a table of mostly active models that every
    # row may, and sorts the whole table for each job.
    ranked = (
        select(
            Asset.id,
            func.row_number()
            .over(
                partition_by=(Asset.asset_type, Asset.name),
                order_by=(Asset.prerelease.asc(), Asset.version_sort.desc()),
            )
            .label("rank"),
        )
        .where(
            Asset.asset_type.in_(
                bindparam("types", list(asset_types), expanding=True, literal_execute=True)
            ),
            Asset.status == literal("active", literal_execute=True),
            Asset.deleted_at.is_(None),
        )
        .subquery()
    )
    return (
        select(Asset)
        .join(ranked, Asset.id == ranked.c.id)
        .where(ranked.c.rank == 1)
        .order_by(Asset.name)
    )


def _latest_active(
    session: Session | scoped_session[Any], asset_types: tuple[str, ...]
) -> list[Asset]:
    return list(session.scalars(latest_active_statement(asset_types)))


def latest_active_policies(session: Session | scoped_session[Any]) -> list[Asset]:
    """The policies in force: for each policy name its highest active release, else its highest
    active pre-release (names with no active version contribute nothing), ordered by name.
    Read-only; the caller owns the session and its transaction."""
    return _latest_active(session, ("policy",))


def latest_active_suites(session: Session | scoped_session[Any]) -> list[Asset]:
    """The test suites in force, chosen per name as :func:`latest_active_policies` does."""
    return _latest_active(session, ("test_suite",))


def latest_active_governance(
    session: Session | scoped_session[Any],
) -> tuple[list[Asset], list[Asset]]:
    """The policies and the test suites in force, as the two functions above give them, in
    one query."""
    both = _latest_active(session, ("policy", "test_suite"))
    return (
        [a for a in both if a.asset_type == "policy"],
        [a for a in both if a.asset_type == "test_suite"],
    )
