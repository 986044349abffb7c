"""SqlStore on SQLite and PostgreSQL: events, turns, windows, usage, personas and turn locks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Table, func, select, text, update

from core.events import ConversationKey
from core.storage import (
    ConversationState,
    NewMessage,
    SqlStore,
    StoredMessage,
    UsageRecord,
    UsageTotals,
    create_database_engine,
    migrate,
)
from core.storage.tables import conversations, messages, processed_events, usage

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")

TOOL_CALLS: list[dict[str, Any]] = [
    {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "thé ☕", "n": 2}'},
    },
    {"id": "call_2", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
]


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[SqlStore]:
    """A migrated store on an engine of its own, as one process of Parley opens it."""
    store = SqlStore(create_database_engine(url))
    try:
        await migrate(store.engine)
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    async with open_store(database_url) as store:
        yield store


def user_message(content: str) -> NewMessage:
    return NewMessage(
        role="user",
        content=content,
        token_count=len(content.split()),
        author_id="U-ada",
        author_name="Ada",
    )


def usage_record(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    user_id: str = "U-ada",
    platform: str = "slack",
    cost_usd: float | None = None,
) -> UsageRecord:
    return UsageRecord(
        platform=platform,
        user_id=user_id,
        model="gpt-4o-mini",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd,
    )


async def add_turns(store: SqlStore, key: ConversationKey, *contents: str) -> list[int]:
    """Start one turn per message, in order; return the stored messages' ids."""
    ids = []
    for content in contents:
        _, message_id = await store.begin_turn(key=key, message=user_message(content))
        ids.append(message_id)
    return ids


async def window_ids(
    store: SqlStore,
    conversation_id: int,
    *,
    after_id: int = 0,
    before_id: int | None = None,
    limit: int = 100,
) -> list[int]:
    found = await store.recent_messages(
        conversation_id=conversation_id, after_id=after_id, before_id=before_id, limit=limit
    )
    return [message.id for message in found]


async def count_rows(store: SqlStore, table: Table, *conditions: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(table).where(*conditions)
    async with store.engine.connect() as connection:
        return (await connection.execute(statement)).scalar_one()


async def backdate_newest_usage(store: SqlStore, when: datetime) -> None:
    newest = select(func.max(usage.c.id)).scalar_subquery()
    async with store.engine.begin() as connection:
        await connection.execute(update(usage).where(usage.c.id == newest).values(created_at=when))


# Events


async def test_claim_event_once_even_after_a_restart(store: SqlStore, database_url: str) -> None:
    assert await store.claim_event(platform="slack", event_id="Ev1") is True
    assert await store.claim_event(platform="slack", event_id="Ev1") is False

    async with open_store(database_url) as restarted:
        assert await restarted.claim_event(platform="slack", event_id="Ev1") is False
        assert await restarted.claim_event(platform="slack", event_id="Ev2") is True

    assert await count_rows(store, processed_events) == 2


async def test_claim_event_is_per_platform(store: SqlStore) -> None:
    assert await store.claim_event(platform="slack", event_id="42") is True
    assert await store.claim_event(platform="telegram", event_id="42") is True
    assert await store.claim_event(platform="telegram", event_id="42") is False
    assert await store.claim_event(platform="slack", event_id="42") is False


# Conversations and messages


async def test_begin_turn_creates_the_conversation_once(store: SqlStore) -> None:
    first, first_id = await store.begin_turn(key=KEY, message=user_message("hello"))
    second, second_id = await store.begin_turn(key=KEY, message=user_message("again"))
    other, _ = await store.begin_turn(
        key=replace(KEY, thread="other"), message=user_message("elsewhere")
    )

    assert first == ConversationState(
        id=first.id,
        persona=None,
        channel_persona=None,
        window_start_id=0,
        summary="",
        summary_through_id=0,
    )
    assert second == first
    assert (await store.conversation(key=KEY)).id == first.id
    assert other.id != first.id
    assert first_id < second_id
    assert await count_rows(store, conversations) == 2
    assert await count_rows(store, messages, messages.c.conversation_id == first.id) == 2


async def test_recent_messages_are_newest_first_within_bounds(store: SqlStore) -> None:
    ids = []
    for n in range(5):
        ids += await add_turns(store, KEY, f"message {n}")
        await add_turns(store, replace(KEY, channel="C2"), f"elsewhere {n}")  # interleaved ids
    conversation_id = (await store.conversation(key=KEY)).id
    newest_first = ids[::-1]

    assert await window_ids(store, conversation_id) == newest_first
    assert await window_ids(store, conversation_id, after_id=ids[1]) == newest_first[:3]
    assert await window_ids(store, conversation_id, before_id=ids[3]) == newest_first[2:]
    assert await window_ids(store, conversation_id, limit=2) == newest_first[:2]
    assert await window_ids(store, conversation_id, after_id=ids[0], before_id=ids[4], limit=2) == [
        ids[3],
        ids[2],
    ]
    assert await window_ids(store, conversation_id, after_id=ids[4]) == []
    assert await store.recent_messages(
        conversation_id=conversation_id, after_id=0, before_id=None, limit=1
    ) == [
        StoredMessage(id=ids[4], role="user", content="message 4", token_count=2, author_name="Ada")
    ]


async def test_finish_turn_stores_the_reply_tool_messages_and_usage(store: SqlStore) -> None:
    state, question_id = await store.begin_turn(key=KEY, message=user_message("which tea?"))
    reply = [
        NewMessage(role="assistant", content="", token_count=12, tool_calls=TOOL_CALLS),
        NewMessage(role="tool", content='{"tea": "sencha"}', token_count=5, tool_call_id="call_1"),
        NewMessage(role="tool", content="12:00", token_count=2, tool_call_id="call_2"),
        NewMessage(role="assistant", content="Sencha.", token_count=3, author_name="Parley"),
    ]

    await store.finish_turn(
        conversation_id=state.id, messages=reply, usage=[usage_record(100, 20, cost_usd=0.25)]
    )

    stored = await store.recent_messages(
        conversation_id=state.id, after_id=question_id, before_id=None, limit=10
    )
    oldest_first = list(reversed(stored))
    assert [m.id for m in oldest_first] == sorted(m.id for m in stored)
    assert oldest_first == [
        StoredMessage(
            id=saved.id,
            role=sent.role,
            content=sent.content,
            token_count=sent.token_count,
            author_name=sent.author_name,
            tool_calls=sent.tool_calls,
            tool_call_id=sent.tool_call_id,
        )
        for saved, sent in zip(oldest_first, reply, strict=True)
    ]
    assert oldest_first[0].tool_calls == TOOL_CALLS
    async with store.engine.connect() as connection:
        usage_rows = (
            await connection.execute(
                select(
                    usage.c.conversation_id,
                    usage.c.platform,
                    usage.c.user_id,
                    usage.c.model,
                    usage.c.prompt_tokens,
                    usage.c.completion_tokens,
                    usage.c.estimated,
                    usage.c.cost_usd,
                )
            )
        ).all()
    assert usage_rows == [(state.id, "slack", "U-ada", "gpt-4o-mini", 100, 20, False, 0.25)]


async def test_usage_totals_per_user_since_a_moment(store: SqlStore) -> None:
    state, _ = await store.begin_turn(key=KEY, message=user_message("hi"))
    other, _ = await store.begin_turn(key=replace(KEY, thread="t2"), message=user_message("yo"))
    await store.finish_turn(
        conversation_id=state.id, messages=[], usage=[usage_record(100, 20, cost_usd=0.25)]
    )
    await store.record_usage(conversation_id=state.id, usage=usage_record(30, 5))
    await store.finish_turn(
        conversation_id=other.id, messages=[], usage=[usage_record(7, 3, cost_usd=0.5)]
    )
    # Somebody else's, and the same user id on another platform: never counted for Ada.
    await store.record_usage(conversation_id=state.id, usage=usage_record(1000, 0, user_id="U-bob"))
    await store.record_usage(
        conversation_id=state.id, usage=usage_record(2000, 0, platform="discord")
    )
    # One of Ada's, backdated by two days.
    await store.record_usage(conversation_id=other.id, usage=usage_record(400, 100, cost_usd=2.0))
    now = datetime.now(UTC)
    await backdate_newest_usage(store, now - timedelta(days=2))

    async def ada_since(since: datetime) -> UsageTotals:
        return await store.usage_since(platform="slack", user_id="U-ada", since=since)

    assert await ada_since(now - timedelta(hours=1)) == UsageTotals(165, 3, 0.75)
    assert await ada_since(now - timedelta(days=3)) == UsageTotals(665, 4, 2.75)
    assert await ada_since(now + timedelta(hours=1)) == UsageTotals(0, 0, 0.0)
    assert await store.conversation_tokens(conversation_id=state.id) == 120 + 35 + 1000 + 2000
    assert await store.conversation_tokens(conversation_id=other.id) == 10 + 500


async def test_reset_starts_an_empty_window_and_keeps_the_rows(store: SqlStore) -> None:
    ids = await add_turns(store, KEY, "one", "two", "three")
    conversation_id = (await store.conversation(key=KEY)).id
    await store.save_summary(conversation_id=conversation_id, summary="counting", through_id=ids[1])
    summarised = await store.conversation(key=KEY)
    assert (summarised.summary, summarised.summary_through_id) == ("counting", ids[1])

    await store.reset(key=KEY)

    state = await store.conversation(key=KEY)
    assert (state.window_start_id, state.summary, state.summary_through_id) == (ids[2], "", ids[2])
    assert await window_ids(store, state.id, after_id=state.window_start_id) == []
    assert await count_rows(store, messages, messages.c.conversation_id == state.id) == 3
    later = await add_turns(store, KEY, "four")
    assert await window_ids(store, state.id, after_id=state.window_start_id) == later


async def test_set_persona_for_the_conversation_and_its_channel(store: SqlStore) -> None:
    same_channel = replace(KEY, thread="another thread")

    await store.set_persona(key=KEY, persona="pirate")

    here = await store.conversation(key=KEY)
    neighbour = await store.conversation(key=same_channel)
    elsewhere = await store.conversation(key=replace(KEY, channel="C2"))
    assert (here.persona, here.channel_persona) == ("pirate", "pirate")
    assert (neighbour.persona, neighbour.channel_persona) == (None, "pirate")
    assert (elsewhere.persona, elsewhere.channel_persona) == (None, None)

    await store.set_persona(key=same_channel, persona="poet")

    here = await store.conversation(key=KEY)
    neighbour = await store.conversation(key=same_channel)
    assert (here.persona, here.channel_persona) == ("pirate", "poet")
    assert (neighbour.persona, neighbour.channel_persona) == ("poet", "poet")


async def test_latest_thread_is_the_newest_conversation_of_the_channel(store: SqlStore) -> None:
    assert await store.latest_thread(platform="slack", workspace="T1", channel="C1") is None
    for thread in ("first", "second", "third"):
        await store.conversation(key=replace(KEY, thread=thread))
    await store.conversation(key=replace(KEY, channel="C2", thread="in another channel"))
    await add_turns(store, replace(KEY, thread="first"), "new activity, not a new conversation")

    assert await store.latest_thread(platform="slack", workspace="T1", channel="C1") == "third"


# Concurrency


async def test_concurrent_turns_all_succeed(store: SqlStore) -> None:
    many_keys = [replace(KEY, thread=f"thread {n}") for n in range(50)]
    turns = [store.begin_turn(key=key, message=user_message(key.thread)) for key in many_keys]
    turns += [store.begin_turn(key=KEY, message=user_message(f"burst {n}")) for n in range(20)]

    results = await asyncio.gather(*turns)

    conversation_ids = [state.id for state, _ in results]
    burst_id = conversation_ids[50]
    assert len(set(conversation_ids[:50])) == 50
    assert set(conversation_ids[50:]) == {burst_id}
    assert burst_id not in conversation_ids[:50]
    assert len({message_id for _, message_id in results}) == 70
    assert await count_rows(store, conversations) == 51
    assert await count_rows(store, messages) == 70
    assert await count_rows(store, messages, messages.c.conversation_id == burst_id) == 20


HOLD_SECONDS = 0.5
ONE_AFTER_THE_OTHER = ["first in", "first out", "second in", "second out"]
OVERLAPPING = ["first in", "second in", "second out", "first out"]


async def contend(
    first: SqlStore, first_key: ConversationKey, second: SqlStore, second_key: ConversationKey
) -> list[str]:
    """`first` takes its turn lock; while it holds it, `second` asks for its own.

    `first` keeps its lock until `second` is in, or for HOLD_SECONDS when `second` cannot get
    in. Returns who entered and left, in order.
    """
    log: list[str] = []
    first_in, second_in = asyncio.Event(), asyncio.Event()

    async def take_first() -> None:
        async with first.turn_lock(first_key):
            log.append("first in")
            first_in.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HOLD_SECONDS):
                    await second_in.wait()
            log.append("first out")

    async def take_second() -> None:
        await first_in.wait()
        async with second.turn_lock(second_key):
            log.append("second in")
            second_in.set()
            log.append("second out")

    await asyncio.gather(take_first(), take_second())
    return log


async def test_turn_lock_serialises_one_conversation(store: SqlStore) -> None:
    assert await contend(store, KEY, store, KEY) == ONE_AFTER_THE_OTHER


async def test_turn_lock_lets_other_conversations_run(store: SqlStore) -> None:
    other = replace(KEY, thread="other")

    assert await contend(store, KEY, store, other) == OVERLAPPING


@pytest.mark.postgres
async def test_turn_lock_excludes_across_processes_on_postgres(postgres_url: str) -> None:
    other = replace(KEY, thread="other")
    async with open_store(postgres_url) as one, open_store(postgres_url) as another:
        assert await contend(one, KEY, another, KEY) == ONE_AFTER_THE_OTHER
        assert await contend(another, KEY, one, KEY) == ONE_AFTER_THE_OTHER
        assert await contend(one, KEY, another, other) == OVERLAPPING

        async with one.engine.connect() as connection:
            held = text(
                "SELECT count(*) FROM pg_locks JOIN pg_database ON pg_database.oid = database"
                " WHERE locktype = 'advisory' AND datname = current_database()"
            )
            assert (await connection.execute(held)).scalar_one() == 0


async def test_search_messages_finds_text_in_one_conversation(store: SqlStore) -> None:
    other = replace(KEY, thread="elsewhere")
    await add_turns(store, KEY, "The 50% discount_code is TEA", "Green TEA please", "coffee")
    await add_turns(store, other, "tea in another thread")
    state = await store.conversation(key=KEY)
    await store.finish_turn(
        conversation_id=state.id,
        messages=[NewMessage(role="tool", content="tea from a tool", token_count=1)],
        usage=[],
    )

    found = await store.search_messages(conversation_id=state.id, query="tea", limit=10)
    assert [m.content for m in found] == ["Green TEA please", "The 50% discount_code is TEA"]
    assert [
        m.content
        for m in await store.search_messages(conversation_id=state.id, query="tea", limit=1)
    ] == ["Green TEA please"]
    # LIKE wildcards in the query are literal characters.
    percent = await store.search_messages(conversation_id=state.id, query="50%", limit=10)
    assert [m.content for m in percent] == ["The 50% discount_code is TEA"]
    assert await store.search_messages(conversation_id=state.id, query="t_a", limit=10) == []
