"""Dependency resolution, cycle detection on the live graph, and graph reads (CONTRACT.md §4-5).

Edges are rows of ``asset_dependencies``: the range as declared and, once resolved, the version it
is locked to. Reads walk the locked edges with a recursive CTE in the database; resolution and the
cycle check work on the *live* graph (ranges resolved against today's active versions), under one
lock so that two concurrent registrations can never close a cycle between them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import String, Table, bindparam, func, literal, select, text

from app.assets.errors import AssetNotFoundError
from app.assets.models import Asset, AssetDependency
from app.assets.semver import parse_range, parse_version
from app.db import DbSession, utcnow
from app.events.service import record_event
from app.extensions import db
from app.jobs.pipeline import JobContext, StepResult
from app.json import json_bytes

# Statuses an {id} reference may point at; name ranges resolve to active versions only.
ID_REF_STATUSES = ("active", "deprecated")
# No locked graph is this deep; the bound only keeps a damaged table from looping forever.
MAX_WALK_DEPTH = 10_000
_ASSETS = cast(Table, Asset.__table__)
_EDGES = cast(Table, AssetDependency.__table__)
_LOCK_KEY = 0x6C6C6D72  # "llmr": the advisory lock serialising resolution and activation


def serialize_graph_changes(session: DbSession, context: JobContext | None = None) -> None:
    """Take the lock that orders resolution and activation across all workers (until commit).

    On PostgreSQL an advisory transaction lock; SQLite transactions already run one at a time
    (BEGIN IMMEDIATE), so nothing more is needed there. A job (``context``) that has to wait
    for it first commits what it wrote so far, under its lease: no one waits on its rows
    meanwhile (say, the worker that took the job over from it while it waited).
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    key = {"key": _LOCK_KEY}
    if context is not None:
        if session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), key).scalar():
            return
        context.hold()
        session.commit()
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), key)


@dataclasses.dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    version: str
    asset_type: str
    status: str


def _label(node: Candidate) -> str:
    return f"{node.name}@{node.version}"


def _active_versions(session: DbSession, names: Iterable[str]) -> dict[str, list[Candidate]]:
    """Active, not deleted versions of each name, highest SemVer first."""
    names = sorted(set(names))
    if not names:
        return {}
    rows = session.execute(
        select(Asset.id, Asset.name, Asset.version, Asset.asset_type, Asset.status)
        .where(Asset.name.in_(names), Asset.status == "active", Asset.deleted_at.is_(None))
        .order_by(Asset.name, Asset.version_sort.desc())
    )
    out: dict[str, list[Candidate]] = {name: [] for name in names}
    for row in rows:
        out[row.name].append(Candidate(row.id, row.name, row.version, row.asset_type, row.status))
    return out


def _pick(
    candidates: list[Candidate], version_range: str, asset_type: str | None
) -> Candidate | None:
    spec = parse_range(version_range)
    for candidate in candidates:  # highest first
        if asset_type and candidate.asset_type != asset_type:
            continue
        if spec.match(parse_version(candidate.version)):
            return candidate
    return None


@dataclasses.dataclass
class Resolution:
    """What the ``dependencies`` step found: locked targets per edge, or why it failed."""

    locked: list[tuple[AssetDependency, Candidate]]
    missing: list[str]
    cycle: list[str] | None = None

    @property
    def ok(self) -> bool:
        return not self.missing and self.cycle is None


def resolve_dependencies(session: DbSession, asset: Asset) -> Resolution:
    """Resolve each declared dependency of ``asset`` and look for a cycle (no writes).

    A name range resolves to the highest *active* version satisfying it (npm rules: a
    pre-release only when the range names one); an ``{id}`` reference must be active or
    deprecated. Call under ``serialize_graph_changes``.
    """
    rows = list(asset.dependency_rows)
    own = _own_name_cycle(asset)
    if own is not None:
        # Checked first: with no other version of the name active, the range would otherwise
        # look unsatisfiable, but in the live graph it resolves to the candidate itself.
        return Resolution(locked=[], missing=[], cycle=own)
    active = _active_versions(session, (r.name for r in rows if r.ref_id is None and r.name))
    by_id = _by_id(session, [r.ref_id for r in rows if r.ref_id])
    locked: list[tuple[AssetDependency, Candidate]] = []
    missing: list[str] = []
    for row in rows:
        if row.ref_id is not None:
            target = by_id.get(row.ref_id)
            if target is None or target.status not in ID_REF_STATUSES:
                state = "does not exist" if target is None else f"is {target.status}"
                missing.append(
                    f"{row.ref_id} ({state}; an id reference must be active or deprecated)"
                )
                continue
            locked.append((row, target))
            continue
        assert row.name is not None and row.version_range is not None
        target = _pick(active.get(row.name, []), row.version_range, row.asset_type)
        if target is None:
            versions = [c.version for c in active.get(row.name, [])][:10]
            have = f"active versions: {', '.join(versions)}" if versions else "no active version"
            kind = f" {row.asset_type}" if row.asset_type else ""
            missing.append(f"{row.name}{kind} {row.version_range} ({have})")
            continue
        locked.append((row, target))
    resolution = Resolution(locked=locked, missing=missing)
    if not missing:
        resolution.cycle = find_cycle(session, asset)
    return resolution


def _by_id(session: DbSession, ids: list[str]) -> dict[str, Candidate]:
    if not ids:
        return {}
    rows = session.execute(
        select(Asset.id, Asset.name, Asset.version, Asset.asset_type, Asset.status).where(
            Asset.id.in_(ids), Asset.deleted_at.is_(None)
        )
    )
    return {r.id: Candidate(r.id, r.name, r.version, r.asset_type, r.status) for r in rows}


def _own_name_cycle(asset: Asset) -> list[str] | None:
    """A version that needs its own name (or itself) is a cycle whatever the range (§5)."""
    for row in asset.dependency_rows:
        if (row.ref_id is None and row.name == asset.name) or row.ref_id == asset.id:
            label = f"{asset.name}@{asset.version}"
            return [label, label]
    return None


def find_cycle(session: DbSession, asset: Asset) -> list[str] | None:
    """The path of a cycle through ``asset`` in the live graph, or None.

    The live graph resolves every range in the candidate's transitive closure against today's
    active versions plus the candidate itself (CONTRACT.md §5). A dependency on the candidate's
    own name is a cycle whatever the range.
    """
    own = _own_name_cycle(asset)
    if own is not None:
        return own
    me = Candidate(asset.id, asset.name, asset.version, asset.asset_type, asset.status)
    parents: dict[str, Candidate | None] = {me.id: None}
    nodes: dict[str, Candidate] = {me.id: me}
    frontier = [me]
    while frontier:
        edges = _declared_edges(session, [n.id for n in frontier], asset)
        names = {e.name for e in edges if e.ref_id is None and e.name}
        active = _active_versions(session, names)
        ids = _by_id(session, [e.ref_id for e in edges if e.ref_id])
        next_frontier: list[Candidate] = []
        for edge in edges:
            source = nodes[edge.asset_id]
            target: Candidate | None
            if edge.ref_id is not None:
                target = me if edge.ref_id == me.id else ids.get(edge.ref_id)
            else:
                options = list(active.get(edge.name or "", []))
                if edge.name == me.name:
                    options.append(me)
                    options.sort(key=lambda c: parse_version(c.version), reverse=True)
                target = _pick(options, edge.version_range or "*", edge.asset_type)
            if target is None:
                continue
            if target.id == me.id:
                path = [_label(me)]
                node: Candidate | None = source
                trail = []
                while node is not None and node.id != me.id:
                    trail.append(_label(node))
                    node = parents[node.id]
                return path + list(reversed(trail)) + [_label(me)]
            if target.id not in parents:
                parents[target.id] = source
                nodes[target.id] = target
                next_frontier.append(target)
        frontier = next_frontier
    return None


@dataclasses.dataclass(frozen=True)
class _Edge:
    asset_id: str
    ref_id: str | None
    name: str | None
    asset_type: str | None
    version_range: str | None


def _declared_edges(session: DbSession, ids: list[str], candidate: Asset) -> list[_Edge]:
    """Declared edges of ``ids``; the candidate's come from memory (it may not be flushed)."""
    edges = [
        _Edge(candidate.id, r.ref_id, r.name, r.asset_type, r.version_range)
        for r in candidate.dependency_rows
        if candidate.id in ids
    ]
    others = [i for i in ids if i != candidate.id]
    if others:
        rows = session.execute(
            select(
                AssetDependency.asset_id,
                AssetDependency.ref_id,
                AssetDependency.name,
                AssetDependency.asset_type,
                AssetDependency.version_range,
            ).where(AssetDependency.asset_id.in_(others))
        )
        edges += [_Edge(r.asset_id, r.ref_id, r.name, r.asset_type, r.version_range) for r in rows]
    return edges


def lock_edges(resolution: Resolution) -> None:
    """Store the version each edge resolved to (the caller commits)."""
    for row, target in resolution.locked:
        row.resolved_id = target.id
        row.resolved_version = target.version
        row.name = target.name
        row.asset_type = row.asset_type or target.asset_type


# ---- reads -----------------------------------------------------------------------------------


def _graph_statements(reverse: bool) -> tuple[Any, Any]:
    """The walk (joined to its assets) and the edges between reached nodes, for one direction:
    built once, bound per request (``root``, ``limit``, ``ids``)."""
    assets, edges = _ASSETS, _EDGES
    near, far = edges.c.asset_id, edges.c.resolved_id
    if reverse:
        near, far = far, near
    walk = select(bindparam("root", type_=String).label("id"), literal(0).label("depth")).cte(
        "walk", recursive=True
    )
    # A deleted asset has left every read (§4): the walk neither shows it nor goes through it.
    walk = walk.union(
        select(far.label("id"), (walk.c.depth + 1).label("depth"))
        .join(walk, near == walk.c.id)
        .join(assets, assets.c.id == far)
        .where(assets.c.deleted_at.is_(None), walk.c.depth < bindparam("limit"))
    )
    depths = select(walk.c.id, func.min(walk.c.depth).label("depth")).group_by(walk.c.id)
    reached = depths.subquery("reached")
    # The root comes back with the walk (depth 0), deleted or not: one statement answers both
    # "does it exist" and "what does it reach".
    nodes = select(
        assets.c.id,
        assets.c.asset_type,
        assets.c.name,
        assets.c.version,
        assets.c.version_sort,
        assets.c.status,
        assets.c.deleted_at,
        reached.c.depth,
    ).join(reached, reached.c.id == assets.c.id)
    edge_read = (
        select(edges.c.asset_id, edges.c.resolved_id, edges.c.version_range)
        .where(
            edges.c.asset_id.in_(bindparam("ids", expanding=True)),
            edges.c.resolved_id.in_(bindparam("ids", expanding=True)),
        )
        .order_by(edges.c.asset_id, edges.c.position)
    )
    return nodes, edge_read


_GRAPH_STATEMENTS = {reverse: _graph_statements(reverse) for reverse in (False, True)}


def dependency_graph(
    session: DbSession, asset_id: str, *, reverse: bool, max_depth: int | None
) -> dict[str, Any]:
    """The transitive locked graph from ``asset_id`` (``reverse``: its dependents), computed by a
    recursive CTE; nodes at their smallest depth, ordered by (depth, name, version).

    Two Core statements built once (the walk joined to its assets, the root included; the
    edges between them) on one connection, no ORM objects. The graph read of SQLite; on
    PostgreSQL ``dependency_graph_json`` builds the document in one statement and is tested
    against this one. Raises ``AssetNotFoundError`` for an unknown or deleted root."""
    connection = session.connection()
    walk, edge_read = _GRAPH_STATEMENTS[reverse]
    limit = MAX_WALK_DEPTH if max_depth is None else max_depth + 1
    rows = connection.execute(walk, {"root": asset_id, "limit": limit}).all()
    root = next((row for row in rows if row.id == asset_id), None)
    if root is None or root.deleted_at is not None:
        raise AssetNotFoundError(asset_id)
    truncated = max_depth is not None and any(row.depth > max_depth for row in rows)
    nodes = sorted(
        (row for row in rows if max_depth is None or row.depth <= max_depth),
        key=lambda row: (row.depth, row.name, row.version_sort),
    )
    ids = [row.id for row in nodes]
    edge_rows = connection.execute(edge_read, {"ids": ids}).all()
    return {
        "root": asset_id,
        "nodes": [
            {
                "id": row.id,
                "asset_type": row.asset_type,
                "name": row.name,
                "version": row.version,
                "status": row.status,
                "depth": row.depth,
            }
            for row in nodes
        ],
        "edges": [
            {"from": e.asset_id, "to": e.resolved_id, "constraint": e.version_range}
            for e in edge_rows
        ],
        "truncated": truncated,
    }


def _graph_document_sql(reverse: bool) -> Any:
    """PostgreSQL: the whole graph document of ``dependency_graph`` in one statement, the nodes
    and edges aggregated to JSON text by the server (no rows to fetch, convert and dump)."""
    # Only these two fixed column names are put into the SQL; the values are bound.
    near, far = ("resolved_id", "asset_id") if reverse else ("asset_id", "resolved_id")
    return text(
        f"""
WITH RECURSIVE walk(id, depth) AS (
    SELECT CAST(:root AS VARCHAR), 0
  UNION
    SELECT e.{far}, w.depth + 1
    FROM walk w
    JOIN asset_dependencies e ON e.{near} = w.id
    JOIN assets a ON a.id = e.{far}
    WHERE a.deleted_at IS NULL AND w.depth < :limit
),
reached AS (SELECT id, min(depth) AS depth FROM walk GROUP BY id),
nodes AS (
    SELECT a.id, a.asset_type, a.name, a.version, a.version_sort, a.status, a.deleted_at, r.depth
    FROM assets a JOIN reached r ON r.id = a.id
),
shown AS (SELECT * FROM nodes WHERE depth <= :shown)
SELECT
    (SELECT deleted_at IS NULL FROM nodes WHERE id = :root) AS root_live,
    EXISTS (SELECT 1 FROM nodes WHERE depth > :shown) AS truncated,
    (SELECT coalesce(json_agg(json_build_object(
                'id', id, 'asset_type', asset_type, 'name', name, 'version', version,
                'status', status, 'depth', depth)
            ORDER BY depth, name COLLATE "C", version_sort), '[]')::text
     FROM shown) AS nodes,
    (SELECT coalesce(json_agg(json_build_object(
                'from', e.asset_id, 'to', e.resolved_id, 'constraint', e.version_range)
            ORDER BY e.asset_id, e.position), '[]')::text
     FROM asset_dependencies e
     WHERE e.asset_id IN (SELECT id FROM shown) AND e.resolved_id IN (SELECT id FROM shown)
    ) AS edges
"""  # noqa: S608 (the two names above are fixed; every value is bound)
    )


_GRAPH_DOCUMENTS = {reverse: _graph_document_sql(reverse) for reverse in (False, True)}


def dependency_graph_json(
    session: DbSession, asset_id: str, *, reverse: bool, max_depth: int | None
) -> bytes:
    """``dependency_graph`` as its JSON document. On PostgreSQL one statement answers it, the
    server building the nodes' and edges' JSON (names ordered by code point, as Python sorts);
    elsewhere the dict is dumped. Raises ``AssetNotFoundError`` for an unknown or deleted
    root."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        graph = dependency_graph(session, asset_id, reverse=reverse, max_depth=max_depth)
        return json_bytes(graph)
    limit = MAX_WALK_DEPTH if max_depth is None else max_depth + 1
    shown = MAX_WALK_DEPTH if max_depth is None else max_depth
    row = connection.execute(
        _GRAPH_DOCUMENTS[reverse], {"root": asset_id, "limit": limit, "shown": shown}
    ).one()
    if not row.root_live:  # NULL: no such asset; false: deleted
        raise AssetNotFoundError(asset_id)
    return b"".join(
        (
            b'{"root":',
            json_bytes(asset_id),
            b',"nodes":',
            row.nodes.encode(),
            b',"edges":',
            row.edges.encode(),
            b',"truncated":',
            b"true" if row.truncated else b"false",
            b"}",
        )
    )


# ---- pipeline steps --------------------------------------------------------------------------


def resolve_step(asset: Asset, context: JobContext) -> StepResult:
    """The ``dependencies`` step: resolve and lock every edge, or reject the registration."""
    rows = list(asset.dependency_rows)
    if not rows:
        return StepResult("passed", "no dependencies declared")
    serialize_graph_changes(db.session, context)
    resolution = resolve_dependencies(db.session, asset)
    if resolution.missing:
        return StepResult(
            "failed",
            "no active version satisfies: "
            + "; ".join(resolution.missing)
            + ". Register or activate those versions, then register a new version of this asset.",
            "DEPENDENCY_NOT_FOUND",
        )
    if resolution.cycle is not None:
        return _cycle_result(resolution.cycle)
    lock_edges(resolution)
    resolved = "; ".join(
        f"{row.name} {row.version_range or '(by id)'} -> {target.version}"
        for row, target in resolution.locked
    )
    return StepResult("passed", f"resolved {len(resolution.locked)}: {resolved}")


def _cycle_result(cycle: list[str]) -> StepResult:
    path = " -> ".join(cycle)
    return StepResult(
        "failed",
        f"circular dependency: {path}. Drop or narrow the range that points back.",
        "CIRCULAR_DEPENDENCY",
        events=(("circular_dependency_detected", {"path": cycle}),),
    )


def activate(asset: Asset, context: JobContext) -> StepResult | None:
    """Make the asset ``active`` unless, under the graph lock, the live graph now has a cycle
    through it (another registration activated meanwhile). The caller commits.

    Only an asset with edges of its own can close a cycle: one without waits for no lock (most
    registrations: the lock is global, and waiting for it costs a commit of its own)."""
    if asset.dependency_rows:
        serialize_graph_changes(db.session, context)
        cycle = find_cycle(db.session, asset)
        if cycle is not None:
            return _cycle_result(cycle)
    asset.status = "active"
    asset.updated_at = utcnow()
    record_event(
        db.session,
        "asset_validated",
        asset.id,
        {"name": asset.name, "version": asset.version, "asset_type": asset.asset_type},
    )
    return None
