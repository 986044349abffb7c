"""Small helpers shared by the engine, CLI and platform tests."""

# A polling helper's deadline reads better as an argument than as asyncio.timeout around it.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from core.conversation import Engine
from core.events import Accepted, ConversationKey, Inbound, ReplyEvent
from core.storage.tables import messages, turns

KEY = ConversationKey("test", "team", "general", "thread-1")
_ids = itertools.count(1)


def inbound(
    text: str, *, key: ConversationKey = KEY, event_id: str | None = None, **extra: Any
) -> Inbound:
    values: dict[str, Any] = {"user_id": "U1", "user_name": "alice", **extra}
    return Inbound(key=key, event_id=event_id or f"ev-{next(_ids)}", text=text, **values)


async def turn(engine: Engine, text: str, **options: Any) -> list[ReplyEvent]:
    """The turn's events after Accepted (which every answered or refused-later turn starts with)."""
    events = [event async for event in engine.handle(inbound(text, **options))]
    return events[1:] if events and isinstance(events[0], Accepted) else events


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
) -> None:
    """Polls `check` until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def turn_states(database: AsyncEngine) -> list[str]:
    """The turns' states, in arrival order."""
    async with database.connect() as connection:
        rows = await connection.execute(select(turns.c.state).order_by(turns.c.id))
        return list(rows.scalars())


async def states_become(database: AsyncEngine, expected: list[str], timeout: float = 20.0) -> None:
    async def check() -> bool:
        return await turn_states(database) == expected

    await eventually(check, f"turn states {expected}", timeout)


async def stored_messages(database: AsyncEngine) -> list[tuple[str, str]]:
    """(role, content) of every stored message, oldest first."""
    async with database.connect() as connection:
        rows = await connection.execute(
            select(messages.c.role, messages.c.content).order_by(messages.c.id)
        )
        return [(role, content) for role, content in rows]


@asynccontextmanager
async def web_server(*routes: web.RouteDef) -> AsyncIterator[str]:
    """A small HTTP server on 127.0.0.1 with these routes; yields its base URL."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
