"""Alembic: `upgrade head` on an empty database gives exactly the models, and `downgrade base` undoes it."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from core.models import Base

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url)
    return config


def schema_drift(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_single_head_and_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert [rev.revision for rev in script.walk_revisions()][-1] == "0001"


def test_upgrade_head_equals_models_then_downgrade_base_on_postgres(make_pg_database) -> None:
    url = make_pg_database()
    config = alembic_config(url)
    command.upgrade(config, "head")
    assert table_names(url) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_drift(url) == []
    command.downgrade(config, "base")
    assert table_names(url) == {"alembic_version"}
    command.upgrade(config, "head")  # and back up again: the downgrade left nothing in the way
    assert schema_drift(url) == []


def test_upgrade_head_on_sqlite_for_embedded_mode(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    command.upgrade(alembic_config(url), "head")
    assert table_names(url) == set(Base.metadata.tables) | {"alembic_version"}
    assert schema_drift(url) == []
    command.downgrade(alembic_config(url), "base")
    assert table_names(url) == {"alembic_version"}


@pytest.mark.parametrize("dialect_url", ["postgresql+psycopg://", "sqlite://"])
def test_offline_sql_renders(dialect_url: str, capsys) -> None:
    command.upgrade(alembic_config(dialect_url), "head", sql=True)
    sql = capsys.readouterr().out
    assert "CREATE TABLE jobs" in sql and "uq_segments_job_id_chunk_index_query_index_ordinal" in sql
