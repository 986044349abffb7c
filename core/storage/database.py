"""Creating the database engine (SQLite or PostgreSQL) and applying migrations."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def migrations_dir() -> Path:
    """The Alembic scripts: the top-level alembic/ folder, installed as `parley_migrations`."""
    spec = importlib.util.find_spec("parley_migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("Parley's migrations are not installed (package parley_migrations)")
    return Path(next(iter(spec.submodule_search_locations)))


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_database_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine with the settings each backend needs for concurrent use."""
    if not is_sqlite(url):
        # A connection is held for one transaction at a time (never across a model call);
        # bursts may open up to twice the steady pool (connections past the pool size are
        # closed when returned). More is slower: under bench.load on 2 cores, 10 + 10 answered
        # 90 msg/s with a p95 of 700-740 ms, 20 + 40 72-78 msg/s and 780-890 ms (backends
        # compete for the same cores, and every new connection costs a handshake).
        return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    configure_sqlite(engine.sync_engine)
    return engine


def configure_sqlite(engine: Engine) -> None:
    """Pragmas for concurrent use, and BEGIN IMMEDIATE unless `sqlite_deferred` is set."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own BEGIN handling is off so that ours (below) takes effect.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL, far fewer fsyncs
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: a deferred transaction that later writes can
        # fail with "database is locked" without waiting for busy_timeout. Read-only work asks
        # for a deferred one, so it does not queue behind writers.
        deferred = connection.get_execution_options().get("sqlite_deferred", False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def alembic_config(url: str) -> Any:
    """An Alembic Config pointing at our migrations and at `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# The newest migration (a test checks it is Alembic's head): a database already there needs
# no Alembic at all, which saves every start after the first ~10 MiB and the import time.
SCHEMA_HEAD = "0007"


async def schema_is_current(engine: AsyncEngine) -> bool:
    """Whether the database is at SCHEMA_HEAD, read without Alembic (False when it has no
    schema yet, or an older or newer one)."""
    async with engine.connect() as connection:
        try:
            version = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
        except DBAPIError:  # no such table: a fresh database
            return False
    return version == SCHEMA_HEAD


# An arbitrary constant: the advisory lock id that serializes migrations across processes.
MIGRATION_LOCK_ID = 0x7061726C65796D67  # "parleymg"


async def migrate(engine: AsyncEngine, revision: str = "head", *, down: bool = False) -> None:
    """Upgrade (or downgrade) the schema on `engine`, inside the running event loop."""
    from alembic import command

    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        if down:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)

    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Processes starting together on a fresh database would otherwise both create the
            # tables, and one would fail; this lock makes the second wait, then find it done.
            await connection.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The schema revision the database is at (None before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


def head_revision() -> str | None:
    """The newest migration shipped with this version of Parley."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
