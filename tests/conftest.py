"""Shared fixtures: the scripted model server, databases, and a wired engine."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from bots.bootstrap import Runtime, build_engine
from core.config import Settings
from core.storage import SessionStore
from tests.fakes.databases import throwaway_postgres_database
from tests.fakes.openai_server import FakeOpenAI

FIXED_NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/parley.db"


@asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TEST_POSTGRES_URL is not set (e.g. postgresql://postgres@127.0.0.1/test)")
    async with throwaway_postgres_database(base, "parley_test") as url:
        yield url


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    async with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, sqlite_url: str) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield sqlite_url
        return
    async with fresh_postgres_database() as url:
        yield url


def make_settings(**values: Any) -> Settings:
    """Settings from explicit values only: no `.env`, defaults for the rest."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


EngineFactory = Callable[..., AbstractAsyncContextManager[Runtime]]


@pytest.fixture
def engine_factory(fake_openai: FakeOpenAI, sqlite_url: str) -> EngineFactory:
    """`async with engine_factory(**settings) as runtime:` an engine on the fake model server.

    `store=` puts a store of the test's own in place of the SQL store the settings describe;
    `clock=` a clock of the test's own in place of FIXED_NOW.
    """

    def factory(
        *,
        store: SessionStore | None = None,
        clock: Callable[[], datetime] = lambda: FIXED_NOW,
        **values: Any,
    ) -> AbstractAsyncContextManager[Runtime]:
        settings = make_settings(
            **{
                "OPENAI_BASE_URL": fake_openai.base_url,
                "OPENAI_API_KEY": "sk-test",
                "PARLEY_MODEL": "gpt-4o-mini",
                "PARLEY_MODEL_RETRIES": 0,
                "DATABASE_URL": sqlite_url,
                **values,
            }
        )
        return build_engine(settings, store=store, clock=clock)

    return factory
