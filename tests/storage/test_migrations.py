"""Alembic migrations against the schema in core.storage.tables, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from core.storage.database import (
    SCHEMA_HEAD,
    create_database_engine,
    current_revision,
    head_revision,
    migrate,
    schema_is_current,
)
from core.storage.tables import metadata

SCHEMA_TABLES = set(metadata.tables)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_database_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))


async def schema_differences(engine: AsyncEngine) -> list[Any]:
    """What autogenerate would put in a new migration: empty when the schema matches `metadata`."""

    def compare(connection: Connection) -> list[Any]:
        options = {
            "compare_type": True,
            # Alembic misreads SQLite's DEFAULT '' (it reports every empty-string default as
            # changed), so server defaults are compared on PostgreSQL only.
            "compare_server_default": connection.dialect.name == "postgresql",
        }
        return compare_metadata(MigrationContext.configure(connection, opts=options), metadata)

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


async def test_upgrade_creates_exactly_the_schema_tables(engine: AsyncEngine) -> None:
    assert await table_names(engine) == set()

    await migrate(engine)

    assert await table_names(engine) == SCHEMA_TABLES | {"alembic_version"}
    assert {
        "conversations",
        "messages",
        "channel_settings",
        "turns",
        "usage",
        "moderation_flags",
        "access_rules",
        "user_requests",
        "api_keys",
        "kb_documents",
        "kb_chunks",
        "attachments",
    } == SCHEMA_TABLES


async def test_migrated_schema_matches_the_tables(engine: AsyncEngine) -> None:
    await migrate(engine)

    assert await schema_differences(engine) == []


async def test_revisions_agree_after_upgrade(engine: AsyncEngine) -> None:
    assert head_revision() == SCHEMA_HEAD == "0007"
    assert await current_revision(engine) is None
    assert not await schema_is_current(engine)

    await migrate(engine)

    assert await current_revision(engine) == head_revision()
    assert await schema_is_current(engine)
    await migrate(engine, "-1", down=True)
    assert not await schema_is_current(engine)


async def test_downgrade_to_base_then_upgrade_again(engine: AsyncEngine) -> None:
    await migrate(engine)

    await migrate(engine, "base", down=True)
    assert await table_names(engine) == {"alembic_version"}
    assert await current_revision(engine) is None

    await migrate(engine)
    assert await table_names(engine) == SCHEMA_TABLES | {"alembic_version"}
    assert await current_revision(engine) == "0007"
    assert await schema_differences(engine) == []


def run_cli(*arguments: str, database: Path) -> str:
    """Run `python -m bots ARGUMENTS` in a fresh process; return its standard output."""
    environment = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "PARLEY_LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bots", *arguments],
        # Away from the repository, so that no `.env` there is read.
        cwd=database.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_db_commands_of_the_cli(tmp_path: Path) -> None:
    database = tmp_path / "cli.db"

    assert run_cli("db", "upgrade", database=database) == "database at 0007"
    assert run_cli("db", "current", database=database) == "0007"
    assert run_cli("db", "downgrade", "base", database=database) == "database at base"
    assert run_cli("db", "current", database=database) == "(empty database)"


def test_an_installed_copy_finds_its_migrations(tmp_path: Path) -> None:
    """`pip install .` (not editable) must carry the migrations: run them from such a copy."""
    root = Path(__file__).resolve().parents[2]
    target = tmp_path / "site"
    install = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(root),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(target),
        "DATABASE_URL": f"sqlite:///{tmp_path}/installed.db",
    }
    check_copy = f"import core; assert core.__file__.startswith({str(target)!r}), core.__file__"
    upgrade = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{check_copy}\nimport bots.cli\nraise SystemExit(bots.cli.main(['db', 'upgrade']))",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert (upgrade.returncode, upgrade.stdout.strip()) == (0, "database at 0007"), upgrade.stderr


@pytest.mark.postgres
async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    engines = [create_database_engine(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(engine) for engine in engines))
        assert await current_revision(engines[0]) == head_revision()
    finally:
        for engine in engines:
            await engine.dispose()
