"""The migrations have one head and build exactly the schema the models describe, on both
PostgreSQL and SQLite; they also run down and up again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import inspect

from app import create_app
from app.assets.models import PG_ONLY_INDEXES, include_in_autogenerate
from app.db import Base
from app.extensions import db
from tests.conftest import drop_pg_database, fresh_pg_database, make_settings

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


@pytest.fixture(params=["pg", "sqlite"])
def empty_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    if request.param == "sqlite":
        yield create_app(make_settings(f"sqlite:///{tmp_path / 'm.db'}", tmp_path))
        return
    url = fresh_pg_database("_migrations")
    yield create_app(make_settings(url, tmp_path))
    drop_pg_database(url)


def test_single_head() -> None:
    from alembic.config import Config

    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(config).get_heads()
    assert len(heads) == 1, heads


def _diff(app: Flask) -> list[object]:
    with app.app_context():
        with db.engine.connect() as connection:
            opts = {"compare_type": True, "include_object": include_in_autogenerate}
            context = MigrationContext.configure(connection, opts=opts)
            diff = list(compare_metadata(context, Base.metadata))
        db.engine.dispose()  # so the database can be dropped
    return diff


def test_migrations_match_models(empty_app: Flask) -> None:
    with empty_app.app_context():
        upgrade()
        tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert _diff(empty_app) == []


def test_downgrade_to_base_and_up_again(empty_app: Flask) -> None:
    with empty_app.app_context():
        upgrade()
        downgrade(revision="base")
        remaining = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
        assert remaining == set()
        upgrade()
    assert _diff(empty_app) == []


def test_postgresql_only_indexes_are_made(empty_app: Flask) -> None:
    """The indexes autogenerate is told to leave alone exist where they are meant to."""
    with empty_app.app_context():
        upgrade()
        names = {index["name"] for index in inspect(db.engine).get_indexes("assets")}
        is_pg = db.engine.dialect.name == "postgresql"
        db.engine.dispose()
    expected = PG_ONLY_INDEXES if is_pg else frozenset()
    assert names & PG_ONLY_INDEXES == expected
