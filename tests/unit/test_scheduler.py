"""The scheduler's bookkeeping of deliveries, on the real store and engine."""

from __future__ import annotations

import asyncio

import pytest

from core.events import ReplyEvent
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage.base import Turn
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import inbound, states_become, turn_states


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
                assert await turn_states(runtime.store.engine) == ["replied"]  # type: ignore[attr-defined]
            else:
                await states_become(runtime.store.engine, ["delivered"])  # type: ignore[attr-defined]
            await scheduler.accept(inbound("two"), {})
            # The accept's transaction stored the first delivery (if it was still to store).
            assert (await turn_states(runtime.store.engine))[0] == "delivered"  # type: ignore[attr-defined]
            assert await asyncio.wait_for(delivered.get(), 10) == "second"
