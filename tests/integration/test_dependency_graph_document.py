"""The graph document PostgreSQL builds in one statement equals the one built in Python.

``GET /v1/assets/{id}/dependencies`` (and ``/dependents``) answer from
``dependency_graph_json``: on PostgreSQL the server aggregates nodes and edges to JSON. It must
order and cut exactly as ``dependency_graph`` does (names by code point, then version order;
a node at its smallest depth; edges between shown nodes only; deleted nodes left out)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from flask import Flask

from app.assets.errors import AssetNotFoundError
from app.assets.models import Asset, AssetDependency, AssetName
from app.assets.semver import parse_version, sort_key
from app.db import utcnow
from app.dependencies.service import dependency_graph, dependency_graph_json
from app.extensions import db

pytestmark = pytest.mark.integration


def _asset(key: str, name: str, version: str = "1.0.0", *, deleted: bool = False) -> Asset:
    if db.session.get(AssetName, name) is None:
        db.session.add(AssetName(name=name, asset_type="model"))
        db.session.flush()  # before its asset: no relationship orders the two inserts
    asset = Asset(
        id=f"01GRAPH{key:0>19}",
        asset_type="model",
        name=name,
        version=version,
        version_key=version,
        version_sort=sort_key(parse_version(version)),
        prerelease=False,
        annotations={},
        status="active",
        created_by="test",
        deleted_at=utcnow() if deleted else None,
    )
    db.session.add(asset)
    return asset


def _edge(source: Asset, position: int, target: Asset | None, constraint: str = "^1") -> None:
    db.session.add(
        AssetDependency(
            asset_id=source.id,
            position=position,
            name=target.name if target else "unresolved/name",
            asset_type="model",
            version_range=constraint,
            resolved_id=target.id if target else None,
            resolved_version=target.version if target else None,
        )
    )


@pytest.fixture
def backend() -> str:
    """PostgreSQL only: the one-statement document is its; on SQLite the dict is dumped."""
    return "pg"


@pytest.fixture
def graph(app: Flask) -> dict[str, Asset]:
    nodes = {
        "root": _asset("1", "root/model"),
        "zeta": _asset("2", "zeta/a"),
        "Alpha": _asset("3", "Alpha/b"),
        "alpha": _asset("4", "alpha/B"),
        "under": _asset("5", "_x/y"),
        "v10": _asset("6", "same/name", "1.10.0"),
        "v9": _asset("7", "same/name", "1.9.0"),
        "deep": _asset("8", "deep/one"),
        "deeper": _asset("9", "deep/two"),
        "gone": _asset("10", "gone/model", deleted=True),
        "beyond": _asset("11", "beyond/gone"),
    }
    db.session.flush()
    root = nodes["root"]
    for position, key in enumerate(("zeta", "Alpha", "alpha", "under", "v10", "v9", "gone")):
        _edge(root, position, nodes[key])
    _edge(root, 7, None)  # unresolved: no node, no edge
    _edge(nodes["zeta"], 0, nodes["deep"], ">=1.0.0")
    _edge(nodes["zeta"], 1, nodes["alpha"])  # a diamond: alpha stays at depth 1
    _edge(nodes["deep"], 0, nodes["deeper"])
    _edge(nodes["deeper"], 0, nodes["zeta"])  # a cycle back up
    _edge(nodes["gone"], 0, nodes["beyond"])  # only reachable through a deleted node
    db.session.flush()
    return nodes


def _both(asset_id: str, **kwargs: Any) -> tuple[Any, Any]:
    document = orjson.loads(dependency_graph_json(db.session, asset_id, **kwargs))
    return document, dependency_graph(db.session, asset_id, **kwargs)


@pytest.mark.parametrize("max_depth", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_document_equals_the_dict(
    graph: dict[str, Asset], max_depth: int | None, reverse: bool
) -> None:
    start = graph["deeper"] if reverse else graph["root"]
    document, expected = _both(start.id, reverse=reverse, max_depth=max_depth)
    assert document == expected
    assert list(document) == ["root", "nodes", "edges", "truncated"]


def test_names_by_code_point_then_version_order(graph: dict[str, Asset]) -> None:
    document, _ = _both(graph["root"].id, reverse=False, max_depth=1)
    depth_one = [(n["name"], n["version"]) for n in document["nodes"] if n["depth"] == 1]
    assert depth_one == [
        ("Alpha/b", "1.0.0"),
        ("_x/y", "1.0.0"),
        ("alpha/B", "1.0.0"),
        ("same/name", "1.9.0"),
        ("same/name", "1.10.0"),
        ("zeta/a", "1.0.0"),
    ]
    names = {n["name"] for n in document["nodes"]}
    assert "gone/model" not in names and "beyond/gone" not in names
    assert document["truncated"] is True


def test_a_deleted_or_unknown_root_is_not_found(graph: dict[str, Asset]) -> None:
    for asset_id in (graph["gone"].id, "01GRAPHNOSUCHASSET00000000"):
        with pytest.raises(AssetNotFoundError):
            dependency_graph_json(db.session, asset_id, reverse=False, max_depth=None)
        with pytest.raises(AssetNotFoundError):
            dependency_graph(db.session, asset_id, reverse=False, max_depth=None)
