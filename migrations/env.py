"""Alembic environment: metadata from `core.models`, the URL from `core.settings` (or `-x url=`).

`compare_type` and `compare_server_default` are on so that autogenerate notices every drift, which
is what the migration test relies on ("upgrade head equals the models"). SQLite runs in batch mode
so that ALTERs work there too (embedded mode migrates the same way).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from core.models import Base

target_metadata = Base.metadata


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if url:
        return url
    configured = context.config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    from core.settings import get_settings

    return str(get_settings().database_url)


def run_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=database_url().startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    url = database_url()
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            compare_server_default=True,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
