"""Starting one chat platform on a wired engine, as `parley run NAME` does, for the tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bots.bootstrap import Runtime, build_engine, chat_platforms
from core.config import Settings
from tests.cli.test_chat import parley
from tests.conftest import FIXED_NOW, make_settings
from tests.fakes.openai_server import FakeOpenAI


def platform_settings(fake_openai: FakeOpenAI, database: str, **values: Any) -> Settings:
    """The model on the fake server, the database, and the platform's own settings."""
    return make_settings(
        **{
            "OPENAI_BASE_URL": fake_openai.base_url,
            "OPENAI_API_KEY": "sk-test",
            "PARLEY_MODEL_RETRIES": 0,
            "DATABASE_URL": database,
            "PARLEY_HTTP_PORT": 0,
            **values,
        }
    )


@dataclass
class Running:
    bot: Any
    runtime: Runtime
    port: int  # of the shared HTTP server, 0 when the platform needs none

    @property
    def database(self) -> AsyncEngine:
        return self.runtime.store.engine  # type: ignore[attr-defined,no-any-return]

    async def count(self, table: Any) -> int:
        """Rows in a table of the store's database."""
        async with self.runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            query = select(func.count()).select_from(table)
            return int((await connection.execute(query)).scalar_one())


@asynccontextmanager
async def running(settings: Settings, platform: str) -> AsyncIterator[Running]:
    async with (
        build_engine(settings, clock=lambda: FIXED_NOW) as runtime,
        chat_platforms(settings, runtime, [platform]) as started,
    ):
        [bot] = started.bots
        yield Running(bot, runtime, started.http.port if started.http else 0)


async def run_error(arguments: list[str], cwd: Path, **settings: str) -> str:
    """`parley run ARGUMENTS` with these settings, expected to stop at once with exit 2 and
    one line on stderr, which is returned."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env = {**keep, "DATABASE_URL": f"sqlite:///{cwd}/run.db", "OPENAI_API_KEY": "sk-test"}
    code, _, err = await parley("run", *arguments, stdin="", env={**env, **settings}, cwd=cwd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, (code, lines)
    return lines[0]
