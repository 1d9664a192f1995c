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
            context = MigrationContext.configure(connection, opts={"compare_type": True})
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
