"""Parley over HTTP as `parley run http` wires it, on a free port, with the scripted model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from adapters.http import HttpServer
from bots.bootstrap import build_engine, chat_platforms
from core.storage.api import ApiStore
from core.storage.sql import SqlStore
from core.storage.tables import conversations, messages
from tests.fakes.openai_server import FakeOpenAI
from tests.platforms.running import platform_settings

ALLOWED_ORIGIN = "https://app.example.com"
JWT_SECRET = "jwt-test-secret-of-at-least-32-bytes!"


@dataclass
class Served:
    url: str
    user_key: str  # alice's
    admin_key: str  # root's
    store: SqlStore
    keys: ApiStore
    http: aiohttp.ClientSession
    server: HttpServer

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.user_key}"}

    async def call(
        self, method: str, path: str, *, key: str | None = None, **options: Any
    ) -> tuple[int, Any]:
        headers = {**self.auth(key), **options.pop("headers", {})}
        async with self.http.request(method, self.url + path, headers=headers, **options) as r:
            body = await r.text()
            return r.status, json.loads(body) if body and r.content_type.endswith("json") else body

    async def start(self, persona: str | None = None, key: str | None = None) -> str:
        status, body = await self.call(
            "POST", "/api/v1/conversations", key=key, json={"persona": persona} if persona else {}
        )
        assert status == 201, body
        conversation: str = body["id"]
        return conversation

    async def events(
        self, conversation: str, text: str, **headers: str
    ) -> list[tuple[str, dict[str, Any]]]:
        """Send a message; the server-sent events of its reply, in order."""
        async with self.http.post(
            f"{self.url}/api/v1/conversations/{conversation}/messages",
            json={"text": text},
            headers={**self.auth(), "Accept": "text/event-stream", **headers},
        ) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "text/event-stream"
            return parse_events(await response.text())

    async def rows(self) -> tuple[int, int]:
        """(conversations, messages) stored."""
        async with self.store.engine.connect() as connection:
            counted = [
                (await connection.execute(select(func.count()).select_from(table))).scalar_one()
                for table in (conversations, messages)
            ]
        return counted[0], counted[1]


def parse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


Serve = Callable[..., AbstractAsyncContextManager[Served]]


@asynccontextmanager
async def serving(
    database_url: str, fake_openai: FakeOpenAI, **values: Any
) -> AsyncIterator[Served]:
    """Parley over HTTP on this database, with these settings."""
    settings = platform_settings(
        fake_openai,
        database_url,
        **{
            "PARLEY_MODEL": "gpt-4o-mini",
            "PARLEY_HTTP_CORS_ORIGINS": ALLOWED_ORIGIN,
            "PARLEY_JWT_SECRET": JWT_SECRET,
            **values,
        },
    )
    async with build_engine(settings) as runtime:
        assert isinstance(runtime.store, SqlStore)
        keys = ApiStore(runtime.store)
        user_key = await keys.create_key(name="alice")
        admin_key = await keys.create_key(name="root", admin=True)
        async with (
            chat_platforms(settings, runtime, ["http"]) as platforms,
            aiohttp.ClientSession() as http,
        ):
            assert platforms.http is not None
            url = f"http://127.0.0.1:{platforms.http.port}"
            yield Served(url, user_key, admin_key, runtime.store, keys, http, platforms.http)


@pytest.fixture
def serve(database_url: str, fake_openai: FakeOpenAI) -> Serve:
    """`async with serve(**settings) as served:` Parley over HTTP with these settings."""
    return partial(serving, database_url, fake_openai)


@pytest.fixture
async def served(serve: Serve) -> AsyncIterator[Served]:
    async with serve() as served:
        yield served
