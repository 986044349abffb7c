"""The scheduler's bookkeeping of deliveries, on the real store and engine."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest
from sqlalchemy import select

from core.events import ReplyEvent
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage.base import Turn
from core.storage.tables import turns
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import inbound


class RecordingView:
    def __init__(self, edits_in_place: bool, delivered: asyncio.Queue[str]) -> None:
        self.edits_in_place = edits_in_place
        self._delivered = delivered

    def show(self, event: ReplyEvent) -> None:
        pass

    async def deliver(self, markdown: str) -> None:
        await self._delivered.put(markdown)

    async def aclose(self) -> None:
        pass


async def until(read: Callable[[], Awaitable[object]], expected: object) -> None:
    for _ in range(200):
        if await read() == expected:
            return
        await asyncio.sleep(0.05)
    assert await read() == expected


async def states(store: object) -> Sequence[str]:
    async with store.engine.connect() as connection:  # type: ignore[attr-defined]
        return list((await connection.execute(select(turns.c.state))).scalars())


@pytest.mark.parametrize("edits_in_place", [True, False])
async def test_a_delivery_that_cannot_be_repeated_is_stored_at_once_others_ride_along(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, edits_in_place: bool
) -> None:
    fake_openai.reply("first")
    fake_openai.reply("second")
    delivered: asyncio.Queue[str] = asyncio.Queue()

    def outlet(turn: Turn, posted: PostedCallback) -> ReplyView:
        return RecordingView(edits_in_place, delivered)

    async with engine_factory() as runtime:
        # A poll an hour apart: only the scheduler's own transactions store deliveries.
        scheduler = Scheduler(engine=runtime.engine, store=runtime.store, poll_seconds=3600)
        scheduler.add_outlet("test", outlet)
        async with scheduler:
            await scheduler.accept(inbound("one"), {})
            assert await asyncio.wait_for(delivered.get(), 10) == "first"
            # An edit in place may be repeated after a crash: recorded with the next
            # transaction. A reply sent as a new message must not be: recorded at once.
            if edits_in_place:
                await asyncio.sleep(0.2)  # time enough to store it, were it stored alone
                assert await states(runtime.store) == ["replied"]
            else:
                await until(lambda: states(runtime.store), ["delivered"])
            await scheduler.accept(inbound("two"), {})
            # The accept's transaction stored the first delivery (if it was still to store).
            assert (await states(runtime.store))[0] == "delivered"
            assert await asyncio.wait_for(delivered.get(), 10) == "second"
