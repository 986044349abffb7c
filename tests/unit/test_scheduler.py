"""The scheduler's bookkeeping of deliveries, on the real store and engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import pytest

from bots.bootstrap import Runtime
from core.events import Inbound, ReplyEvent
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage.base import Turn
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import inbound, states_become, turn_states


class RecordingView:
    def __init__(self, edits_in_place: bool, delivered: asyncio.Queue[str], by: str = "") -> None:
        self.edits_in_place = edits_in_place
        self._delivered = delivered
        self._by = by  # put before each delivered text

    def show(self, event: ReplyEvent) -> None:
        pass

    async def deliver(self, markdown: str) -> None:
        await self._delivered.put(self._by + markdown)

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


async def test_a_message_stored_as_its_conversations_worker_ends_is_still_answered_at_once(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: the second message is stored while the first turn runs (so it must wait),
    but the worker finishes the first turn and ends before `accept` returns to the
    scheduler. Polls are an hour apart: the scheduler itself must start the second turn."""
    fake_openai.reply("first", delay=0.3)
    fake_openai.reply("second")
    delivered: asyncio.Queue[str] = asyncio.Queue()
    returned = asyncio.Event()
    async with engine_factory() as runtime:
        store_it = runtime.engine.accept

        async def accept(inbound: Inbound, *args: Any, **kwargs: Any) -> Any:
            result = await store_it(inbound, *args, **kwargs)
            if inbound.text == "two":
                await returned.wait()  # stored and committed; the scheduler hears it later
            return result

        monkeypatch.setattr(runtime.engine, "accept", accept)
        scheduler = Scheduler(engine=runtime.engine, store=runtime.store, poll_seconds=3600)
        scheduler.add_outlet("test", lambda turn, posted: RecordingView(True, delivered))
        async with scheduler:
            await scheduler.accept(inbound("one"), {})
            await fake_openai.received(1)
            second = asyncio.create_task(scheduler.accept(inbound("two"), {}))
            assert await asyncio.wait_for(delivered.get(), 10) == "first"
            await states_become(runtime.store.engine, ["replied", "pending"])  # type: ignore[attr-defined]
            await asyncio.sleep(0.2)  # the first turn's worker has nothing more: it ends
            returned.set()
            assert (await second).state == "pending"  # type: ignore[union-attr]
            assert await asyncio.wait_for(delivered.get(), 10) == "second"


# --- across processes: signals ----------------------------------------------------------------
# Two schedulers with their own engines, stores and connection pools on one PostgreSQL
# database, as two processes would be, polling an hour apart: a turn that waits for the other
# "process" can only start in time because of a signal (LISTEN/NOTIFY).


class Process:
    def __init__(
        self, name: str, runtime: Runtime, delivered: asyncio.Queue[str], **options: Any
    ) -> None:
        self.store = runtime.store
        self.scheduler = Scheduler(
            engine=runtime.engine, store=runtime.store, poll_seconds=3600, **options
        )
        self.scheduler.add_outlet(
            "test", lambda turn, posted: RecordingView(True, delivered, f"{name}: ")
        )


@contextlib.asynccontextmanager
async def two_processes(
    engine_factory: EngineFactory, database: str, **options: Any
) -> AsyncIterator[tuple[Process, Process, asyncio.Queue[str]]]:
    """Deliveries come out of the queue as "a: text" or "b: text"."""
    delivered: asyncio.Queue[str] = asyncio.Queue()
    async with (
        engine_factory(DATABASE_URL=database) as first,
        engine_factory(DATABASE_URL=database) as second,
    ):
        a = Process("a", first, delivered, **options)
        b = Process("b", second, delivered, **options)
        async with a.scheduler, b.scheduler:
            yield a, b, delivered


async def next_delivery(delivered: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(delivered.get(), 15)


THE_FIRST_EXCHANGE_THEN_TWO = [
    ("user", "alice: one"),
    ("assistant", "first"),
    ("user", "alice: two"),
]


def said_in_the_last_request(fake_openai: FakeOpenAI) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake_openai.chat_requests[-1]["messages"][1:]]


@pytest.mark.postgres
async def test_a_message_another_process_accepted_starts_when_the_earlier_answer_lands(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    fake_openai.reply("first", delay=0.5)
    fake_openai.reply("second")
    async with two_processes(engine_factory, postgres_url) as (a, b, delivered):
        assert (await a.scheduler.accept(inbound("one"), {})).state == "running"  # type: ignore[union-attr]
        await fake_openai.received(1)
        # Accepted by the other process while the first answer is written: it must wait.
        assert (await b.scheduler.accept(inbound("two"), {})).state == "pending"  # type: ignore[union-attr]
        assert await next_delivery(delivered) == "a: first"
        assert await next_delivery(delivered) in ("a: second", "b: second")  # either may take it
    assert said_in_the_last_request(fake_openai) == THE_FIRST_EXCHANGE_THEN_TWO


@pytest.mark.postgres
async def test_also_when_the_earlier_answer_landed_but_is_not_recorded_yet(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    fake_openai.reply("first")
    fake_openai.reply("second")
    async with two_processes(engine_factory, postgres_url) as (a, b, delivered):
        await a.scheduler.accept(inbound("one"), {})
        assert await next_delivery(delivered) == "a: first"
        # Its delivery rides on a's next transaction (an hour away): b's message must wait,
        # and a records it as soon as b says so.
        assert await turn_states(a.store.engine) == ["replied"]  # type: ignore[attr-defined]
        assert (await b.scheduler.accept(inbound("two"), {})).state == "pending"  # type: ignore[union-attr]
        assert await next_delivery(delivered) in ("a: second", "b: second")
    assert said_in_the_last_request(fake_openai) == THE_FIRST_EXCHANGE_THEN_TWO


@pytest.mark.postgres
async def test_signals_are_heard_again_after_the_listening_connections_are_cut(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    fake_openai.reply("first", delay=0.5)
    fake_openai.reply("second")
    async with two_processes(engine_factory, postgres_url) as (a, b, delivered):
        cut = await listening_backends(postgres_url, count=2)
        await terminate(postgres_url, cut)
        await listening_backends(postgres_url, count=2, other_than=cut)  # both listen again
        await a.scheduler.accept(inbound("one"), {})
        await fake_openai.received(1)
        await b.scheduler.accept(inbound("two"), {})
        assert await next_delivery(delivered) == "a: first"
        assert await next_delivery(delivered) in ("a: second", "b: second")


@pytest.mark.postgres
async def test_a_stopping_process_hands_its_turn_over_at_once(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    fake_openai.reply("never finished", delay=30)
    fake_openai.reply("taken over")
    async with two_processes(engine_factory, postgres_url, grace_seconds=0) as (a, _, delivered):
        await a.scheduler.accept(inbound("one"), {})
        await fake_openai.received(1)
        await a.scheduler.stop()  # released: b's poll, an hour away, is woken
        assert await next_delivery(delivered) == "b: taken over"


async def listening_backends(url: str, *, count: int, other_than: Sequence[int] = ()) -> list[int]:
    """The pids of the backends in LISTEN, once there are `count` not in `other_than`."""
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        for _ in range(200):
            pids = [
                row["pid"]
                for row in await connection.fetch(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
                if row["pid"] not in other_than
            ]
            if len(pids) == count:
                return pids
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} listening backends, saw {pids}")
    finally:
        await connection.close()


async def terminate(url: str, pids: Sequence[int]) -> None:
    connection = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        for pid in pids:
            await connection.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await connection.close()
