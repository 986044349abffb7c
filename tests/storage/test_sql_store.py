"""SqlStore on SQLite and PostgreSQL: accepting, leasing and ending turns, windows, usage,
personas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import ColumnElement, Table, func, select, update

from core.events import ConversationKey, Inbound
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
from core.storage.base import Admission, Delivery, LeaseLost, LimitCounts, Turn, TurnState
from core.storage.tables import conversations, messages, turns, usage, user_requests

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


OWNER = "process-1"
_events = iter(range(1, 1_000_000))


def inbound(text: str, key: ConversationKey = KEY, event_id: str | None = None) -> Inbound:
    return Inbound(
        key=key,
        event_id=event_id or f"Ev{next(_events)}",
        user_id="U-ada",
        user_name="Ada",
        text=text,
    )


async def accept(
    store: SqlStore,
    text: str,
    key: ConversationKey = KEY,
    *,
    owner: str | None = OWNER,
    event_id: str | None = None,
    lease_until: float = 1e12,
) -> Turn:
    turn = await store.accept(
        inbound=inbound(text, key, event_id),
        address={"to": key.thread},
        owner=owner,
        lease_until=lease_until,
    )
    assert turn is not None
    return turn


async def begin(
    store: SqlStore,
    key: ConversationKey,
    content: str,
    *,
    token_count: int | None = None,
    **extra: Any,
) -> tuple[ConversationState, int, Turn]:
    """A turn accepted and leased to OWNER, with its user message stored. Earlier turns of the
    conversation may be unfinished: the lease is forced (these tests are not about order)."""
    turn = await accept(store, content, key)
    async with store.engine.begin() as connection:
        await connection.execute(
            update(turns)
            .where(turns.c.id == turn.id)
            .values(state=TurnState.RUNNING, lease_owner=OWNER, lease_until=1e12)
        )
    message = user_message(content)
    if token_count is not None:
        message = replace(message, token_count=token_count)
    state, message_id = await store.begin_turn(turn=turn, owner=OWNER, message=message, **extra)
    return state, message_id, turn


async def add_turns(store: SqlStore, key: ConversationKey, *contents: str) -> list[int]:
    """Start one turn per message, in order; return the stored messages' ids."""
    return [(await begin(store, key, content))[1] for content in contents]


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


async def turn_state(store: SqlStore, turn_id: int) -> str:
    async with store.engine.connect() as connection:
        query = select(turns.c.state).where(turns.c.id == turn_id)
        return str((await connection.execute(query)).scalar_one())


async def count_rows(store: SqlStore, table: Table, *conditions: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(table).where(*conditions)
    async with store.engine.connect() as connection:
        return (await connection.execute(statement)).scalar_one()


async def backdate_newest_usage(store: SqlStore, when: datetime) -> None:
    newest = select(func.max(usage.c.id)).scalar_subquery()
    async with store.engine.begin() as connection:
        await connection.execute(update(usage).where(usage.c.id == newest).values(created_at=when))


# Accepting: the claim of an event and the stored message, in one transaction


async def test_an_event_is_accepted_once_even_after_a_restart(
    store: SqlStore, database_url: str
) -> None:
    first = await accept(store, "hello", event_id="Ev1")
    assert await store.accept(inbound=inbound("hello", event_id="Ev1"), address={}) is None

    async with open_store(database_url) as restarted:
        assert await restarted.accept(inbound=inbound("x", event_id="Ev1"), address={}) is None
        assert await restarted.accept(inbound=inbound("x", event_id="Ev2"), address={}) is not None

    assert await count_rows(store, turns) == 2
    assert first.inbound.text == "hello" and first.address == {"to": KEY.thread}


async def test_event_ids_are_per_platform(store: SqlStore) -> None:
    telegram = replace(KEY, platform="telegram")
    assert await accept(store, "a", event_id="42")
    assert await accept(store, "b", telegram, event_id="42")
    assert await store.accept(inbound=inbound("c", telegram, "42"), address={}) is None
    assert await store.accept(inbound=inbound("d", KEY, "42"), address={}) is None


async def test_the_first_turn_is_leased_at_once_and_later_ones_wait_until_it_is_delivered(
    store: SqlStore,
) -> None:
    first = await accept(store, "one")
    second = await accept(store, "two")
    third = await accept(store, "three")
    elsewhere = await accept(store, "hi", replace(KEY, thread="other"))
    assert [t.state for t in (first, second, third, elsewhere)] == [
        "running",
        "pending",
        "pending",
        "running",
    ]
    assert first.conversation_id == second.conversation_id != elsewhere.conversation_id

    async def claim(owner: str = "process-2") -> list[int]:
        taken = await store.claim_turns(
            owner=owner, now=100.0, lease_until=200.0, limit=10, platforms=["slack"]
        )
        return [t.id for t in taken]

    assert await claim() == []  # "two" waits for "one" to be answered
    await store.begin_turn(turn=first, owner=OWNER, message=user_message("one"))
    await store.finish_turn(turn=first, owner=OWNER, reply="1")
    # ... and delivered: "two" is not posted while "one" may still be on its way.
    assert await claim() == []
    await store.finish_deliveries(owner=OWNER, done=[Delivery(first.id, delivered=True, at=9.0)])
    [taken] = await store.claim_turns(
        owner="process-2", now=100.0, lease_until=200.0, limit=10, platforms=["slack"]
    )
    assert (taken.id, taken.state, taken.attempts, taken.inbound) == (
        second.id,
        "running",
        1,
        second.inbound,
    )
    assert await claim() == []  # "three" waits for "two"
    assert (
        await store.claim_turns(
            owner="p", now=100.0, lease_until=200.0, limit=10, platforms=["telegram"]
        )
        == []
    )


async def test_a_reply_being_delivered_holds_back_other_processes_but_not_its_own(
    store: SqlStore,
) -> None:
    mine = replace(KEY, thread="mine")
    theirs = replace(KEY, thread="theirs")
    for key in (mine, theirs):
        first = await accept(store, "one", key)
        await store.begin_turn(turn=first, owner=OWNER, message=user_message("one"))
        await store.finish_turn(turn=first, owner=OWNER, reply="1")  # replied, delivering
    # This process's worker delivers "one" before it runs "two": "two" is leased at once.
    assert (await accept(store, "two", mine)).state == "running"
    # Another process's "two" waits, or it could be posted before "one".
    assert (await accept(store, "two", theirs, owner="process-2")).state == "pending"


async def test_an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_end_it(
    store: SqlStore,
) -> None:
    turn = await accept(store, "question", lease_until=50.0)
    _, message_id = await store.begin_turn(turn=turn, owner=OWNER, message=user_message("q"))

    assert (
        await store.claim_turns(
            owner="p2", now=49.0, lease_until=80.0, limit=5, platforms=["slack"]
        )
        == []
    )
    [again] = await store.claim_turns(
        owner="p2", now=51.0, lease_until=80.0, limit=5, platforms=["slack"]
    )
    assert (again.id, again.state, again.attempts, again.message_id) == (
        turn.id,
        "running",
        2,
        message_id,
    )
    # The first process wakes up from a long stall: it may not store a second answer.
    with pytest.raises(LeaseLost):
        await store.finish_turn(
            turn=turn, owner=OWNER, reply="late", messages=[user_message("late")]
        )
    with pytest.raises(LeaseLost):
        await store.begin_turn(turn=turn, owner=OWNER, message=user_message("q"))
    # The new owner re-runs it: the user's message is not stored twice.
    state, same_id = await store.begin_turn(turn=again, owner="p2", message=user_message("q"))
    assert same_id == message_id
    await store.finish_turn(turn=again, owner="p2", reply="answer")
    assert await count_rows(store, messages, messages.c.conversation_id == state.id) == 1


async def test_a_stored_reply_whose_delivery_was_cut_off_is_claimed_with_its_posted_ids(
    store: SqlStore,
) -> None:
    turn = await accept(store, "question", lease_until=50.0)
    await store.record_posted(turn_id=turn.id, owner=OWNER, posted=["ts.1", "ts.2"])
    await store.finish_turn(turn=turn, owner=OWNER, reply="the whole answer")

    [again] = await store.claim_turns(
        owner="p2", now=60.0, lease_until=90.0, limit=5, platforms=["slack"]
    )
    assert (again.state, again.reply, again.posted) == (
        "replied",
        "the whole answer",
        ("ts.1", "ts.2"),
    )
    await store.finish_deliveries(owner="p2", done=[Delivery(again.id, delivered=True, at=61.0)])
    assert (
        await store.claim_turns(
            owner="p3", now=1e9, lease_until=1e9 + 1, limit=5, platforms=["slack"]
        )
        == []
    )


async def test_finished_deliveries_ride_on_the_next_accept_or_claim(store: SqlStore) -> None:
    async def answered(text: str, key: ConversationKey, done: list[Delivery]) -> Turn:
        turn = await store.accept(
            inbound=inbound(text, key, None),
            address={},
            owner=OWNER,
            lease_until=1e12,
            done=done,
        )
        assert turn is not None and turn.state == "running"
        await store.finish_turn(turn=turn, owner=OWNER, reply=f"re: {text}")
        return turn

    first = await answered("one", KEY, [])
    second = await answered("two", replace(KEY, thread="t2"), [Delivery(first.id, True, 5.0)])
    third = await answered("three", replace(KEY, thread="t3"), [])
    await store.claim_turns(
        owner=OWNER,
        now=6.0,
        lease_until=9.0,
        limit=1,
        platforms=["slack"],
        done=[Delivery(second.id, False, 6.0), Delivery(third.id, True, 7.0)],
    )
    async with store.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(turns.c.state, turns.c.finished_at, turns.c.lease_owner).order_by(turns.c.id)
            )
        ).all()
    assert [tuple(row) for row in rows] == [
        ("delivered", 5.0, None),
        ("undelivered", 6.0, None),
        ("delivered", 7.0, None),
    ]
    # Another process's deliveries are not ours to finish.
    fourth = await answered("four", replace(KEY, thread="t4"), [])
    await store.finish_deliveries(owner="someone-else", done=[Delivery(fourth.id, True, 8.0)])
    assert await turn_state(store, fourth.id) == "replied"


async def test_admission_is_decided_as_the_message_is_accepted_and_counted_once(
    store: SqlStore,
) -> None:
    seen: list[int] = []

    def refuse_the_third(counts: LimitCounts) -> str | None:
        seen.append(counts.requests)
        return "slow down" if counts.requests >= 2 else None

    admission = Admission(now=datetime(2026, 12, 6, 12, tzinfo=UTC), refuse=refuse_the_third)
    accepted = [
        await store.accept(
            inbound=inbound(text, KEY, f"ev-{text}"), address={}, admission=admission
        )
        for text in ("a", "b", "c", "a")  # the last one is a redelivery
    ]
    assert accepted[3] is None and seen == [0, 1, 2]  # a redelivery is not counted
    assert [t.reply for t in accepted if t] == [None, None, "slow down"]
    async with store.engine.connect() as connection:
        stored = (await connection.execute(select(turns.c.reply).order_by(turns.c.id))).all()
    assert [row.reply for row in stored] == [None, None, "slow down"]
    assert await count_rows(store, user_requests) == 2  # the refused message is not counted


@pytest.mark.parametrize("merge", [False, True])
async def test_messages_queued_behind_a_turn_are_merged_when_the_channel_says_so(
    store: SqlStore, merge: bool
) -> None:
    first = await accept(store, "one")
    queued = [await accept(store, text) for text in ("two", "three", "four")]
    await store.update_channel(key=KEY, merge_queued=merge)
    await store.begin_turn(turn=first, owner=OWNER, message=user_message("one"))
    await store.finish_turn(turn=first, owner=OWNER, reply="1")

    [taken] = await store.claim_turns(
        owner=OWNER,
        now=1.0,
        lease_until=2.0,  # expires before the next claim below
        limit=1,
        platforms=["slack"],
        conversation_id=first.conversation_id,
        merge=not merge,  # the channel's choice wins over the default
        done=[Delivery(first.id, delivered=True, at=1.0)],  # "one" landed
    )
    if not merge:
        assert (taken.id, taken.merged) == (queued[0].id, ())
        return
    # The newest answers for all: its address is where the answer goes.
    assert taken.id == queued[-1].id
    assert [t.inbound.text for t in taken.merged] == ["two", "three"]
    assert all(t.state == "running" for t in (taken, *taken.merged))
    await store.begin_turn(
        turn=taken,
        owner=OWNER,
        message=user_message("four"),
        merged=[user_message("two"), user_message("three")],
    )
    # Its process dies: another one takes the merged turn over whole, not part by part.
    [again] = await store.claim_turns(
        owner="p2", now=5.0, lease_until=50.0, limit=10, platforms=["slack"]
    )
    assert again.id == taken.id and [t.id for t in again.merged] == [q.id for q in queued[:2]]
    state, _ = await store.begin_turn(turn=again, owner="p2", message=user_message("four"))
    texts = [
        m.content
        for m in await store.recent_messages(
            conversation_id=state.id, after_id=0, before_id=None, limit=10
        )
    ]
    assert texts[::-1] == ["one", "two", "three", "four"]  # once each, in arrival order
    await store.finish_turn(turn=again, owner="p2", reply="2, 3 and 4")
    await store.finish_deliveries(owner="p2", done=[Delivery(again.id, True, 6.0)])
    assert [await turn_state(store, q.id) for q in queued] == ["delivered"] * 3


async def test_heartbeat_release_and_prune(store: SqlStore) -> None:
    mine = await accept(store, "a", lease_until=10.0)
    theirs = await accept(store, "b", replace(KEY, thread="t2"), owner="other", lease_until=10.0)
    assert await store.renew_leases(owner=OWNER, lease_until=100.0) == 1
    taken = await store.claim_turns(
        owner="p3", now=50.0, lease_until=60.0, limit=5, platforms=["slack"]
    )
    assert [t.id for t in taken] == [theirs.id]  # ours was renewed

    assert await store.release_leases(owner=OWNER) == 1
    [released] = await store.claim_turns(
        owner="p3", now=50.0, lease_until=60.0, limit=5, platforms=["slack"]
    )
    assert released.id == mine.id

    await store.finish_turn(turn=released, owner="p3", reply="done")
    await store.finish_deliveries(
        owner="p3", done=[Delivery(released.id, delivered=True, at=1000.0)]
    )
    assert await store.prune_turns(finished_before=1000.0) == 0
    assert await store.prune_turns(finished_before=1000.5) == 1
    # Unfinished turns are never pruned, however old.
    assert await store.prune_turns(finished_before=1e12) == 0
    assert await count_rows(store, turns) == 1


async def test_processes_claiming_at_once_each_get_different_turns(database_url: str) -> None:
    async with open_store(database_url) as one, open_store(database_url) as two:
        for n in range(40):
            await accept(one, f"m{n}", replace(KEY, thread=f"t{n}"), owner=None)

        async def claim(store: SqlStore, owner: str) -> list[int]:
            taken: list[int] = []
            while batch := await store.claim_turns(
                owner=owner, now=1.0, lease_until=1e12, limit=3, platforms=["slack"]
            ):
                taken += [t.id for t in batch]
                await asyncio.sleep(0)
            return taken

        first, second = await asyncio.gather(claim(one, "one"), claim(two, "two"))
    assert len(first) + len(second) == 40
    assert set(first).isdisjoint(second)


# Conversations and messages


async def test_begin_turn_creates_the_conversation_once(store: SqlStore) -> None:
    first, first_id, _ = await begin(store, KEY, "hello")
    second, second_id, _ = await begin(store, KEY, "again")
    other, _, _ = await begin(store, replace(KEY, thread="other"), "elsewhere")

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
    state, question_id, turn = await begin(store, KEY, "which tea?")
    reply = [
        NewMessage(role="assistant", content="", token_count=12, tool_calls=TOOL_CALLS),
        NewMessage(role="tool", content='{"tea": "sencha"}', token_count=5, tool_call_id="call_1"),
        NewMessage(role="tool", content="12:00", token_count=2, tool_call_id="call_2"),
        NewMessage(role="assistant", content="Sencha.", token_count=3, author_name="Parley"),
    ]

    await store.finish_turn(
        turn=turn,
        owner=OWNER,
        reply="Sencha.",
        messages=reply,
        usage=[usage_record(100, 20, cost_usd=0.25)],
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
    state, _, turn = await begin(store, KEY, "hi")
    other, _, other_turn = await begin(store, replace(KEY, thread="t2"), "yo")
    await store.finish_turn(
        turn=turn, owner=OWNER, reply="", usage=[usage_record(100, 20, cost_usd=0.25)]
    )
    await store.record_usage(conversation_id=state.id, usage=usage_record(30, 5))
    await store.finish_turn(
        turn=other_turn, owner=OWNER, reply="", usage=[usage_record(7, 3, cost_usd=0.5)]
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
    started = [begin(store, key, key.thread) for key in many_keys]
    started += [begin(store, KEY, f"burst {n}") for n in range(20)]

    results = await asyncio.gather(*started)

    conversation_ids = [state.id for state, _, _ in results]
    burst_id = conversation_ids[50]
    assert len(set(conversation_ids[:50])) == 50
    assert set(conversation_ids[50:]) == {burst_id}
    assert burst_id not in conversation_ids[:50]
    assert len({message_id for _, message_id, _ in results}) == 70
    assert await count_rows(store, conversations) == 51
    assert await count_rows(store, messages) == 70
    assert await count_rows(store, messages, messages.c.conversation_id == burst_id) == 20


async def test_search_messages_finds_text_in_one_conversation(store: SqlStore) -> None:
    other = replace(KEY, thread="elsewhere")
    await add_turns(store, KEY, "The 50% discount_code is TEA", "Green TEA please")
    state, _, turn = await begin(store, KEY, "coffee")
    await add_turns(store, other, "tea in another thread")
    await store.finish_turn(
        turn=turn,
        owner=OWNER,
        reply="",
        messages=[NewMessage(role="tool", content="tea from a tool", token_count=1)],
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
