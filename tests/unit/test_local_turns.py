"""`Engine.handle` (the terminal's path) after a `parley chat` died in the middle of a turn."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select

import core.conversation
from core.conversation import STOPPED
from core.events import Delta, Final
from core.storage.tables import turns
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import inbound, turn, turn_states


@pytest.mark.parametrize("lease_left", [-1.0, 1.0], ids=["expired", "expiring"])
async def test_a_turn_left_by_a_dead_process_is_answered_first_then_the_new_one(
    engine_factory: EngineFactory,
    fake_openai: FakeOpenAI,
    monkeypatch: pytest.MonkeyPatch,
    lease_left: float,
) -> None:
    monkeypatch.setattr(core.conversation, "LOCAL_WAIT", 0.1)
    fake_openai.reply("The old answer.")
    fake_openai.reply("The new answer.")
    async with engine_factory() as runtime:
        # A terminal closed while this question was being answered: accepted and leased by
        # a process that is gone, the lease running out (or run out).
        orphan = await runtime.store.accept(
            inbound=inbound("the old question"),
            address={},
            owner="a-process-that-died",
            lease_until=time.time() + lease_left,
        )
        assert orphan is not None and orphan.state == "running"
        started = time.monotonic()
        events = await turn(runtime.engine, "the new question")
        waited = time.monotonic() - started
        states = await turn_states(runtime.store.engine)  # type: ignore[attr-defined]

    assert events[-1] == Final("The new answer.", events[-1].usage)  # type: ignore[union-attr]
    old, new = fake_openai.chat_requests
    assert old["messages"][1:] == [{"role": "user", "content": "alice: the old question"}]
    assert new["messages"][1:] == [
        {"role": "user", "content": "alice: the old question"},
        {"role": "assistant", "content": "The old answer."},
        {"role": "user", "content": "alice: the new question"},
    ]
    assert states == ["delivered", "delivered"]
    if lease_left > 0:
        assert waited >= lease_left * 0.9  # it waited for the lease, not taking it early


async def test_a_turn_its_caller_stops_is_ended_and_the_next_one_goes_at_once(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A long answer that the user will not wait for. " * 5, chunk_delay=0.05)
    fake_openai.reply("The next answer.")
    async with engine_factory() as runtime:
        writing = asyncio.Event()

        async def consume() -> None:
            async for event in runtime.engine.handle(inbound("go on and on")):
                if isinstance(event, Delta):
                    writing.set()

        answering = asyncio.create_task(consume())
        await asyncio.wait_for(writing.wait(), 10)
        answering.cancel()  # Ctrl-C in the terminal
        with pytest.raises(asyncio.CancelledError):
            await answering
        started = time.monotonic()
        events = await turn(runtime.engine, "something else")
        assert time.monotonic() - started < 5  # not the 30 s lease
        states = await turn_states(runtime.store.engine)  # type: ignore[attr-defined]
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            replies = list(
                (await connection.execute(select(turns.c.reply).order_by(turns.c.id))).scalars()
            )
    assert events[-1].text == "The next answer."  # type: ignore[union-attr]
    assert states == ["delivered", "delivered"]
    # The stopped question stays in the history; its cut-off answer does not (as with a
    # failed turn), and the turn's reply says it was stopped.
    assert fake_openai.chat_requests[-1]["messages"][1:] == [
        {"role": "user", "content": "alice: go on and on"},
        {"role": "user", "content": "alice: something else"},
    ]
    assert replies == [STOPPED, "The next answer."]
