"""`Engine.handle` (the terminal's path) after a `parley chat` died in the middle of a turn."""

from __future__ import annotations

import time

import pytest

import core.conversation
from core.events import Final
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
