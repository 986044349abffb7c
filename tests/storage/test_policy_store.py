"""The store's side of moderation and policy: flags, access rules, channel settings, admission."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from core.events import ConversationKey, Inbound
from core.storage import SqlStore, UsageRecord
from core.storage.base import AccessRule, Admission, ChannelSettings, FlagRecord, LimitCounts
from core.storage.tables import user_requests
from tests.storage.test_sql_store import OWNER, begin, open_store

KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")
NOON = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    async with open_store(database_url) as store:
        yield store


def flag(action: str, *, at: datetime = NOON, key: ConversationKey = KEY) -> FlagRecord:
    return FlagRecord(
        key=key,
        user_id="U-ada",
        direction="input",
        action=action,
        categories=["openai/harassment", "pii/email"],
        scores={"openai/harassment": 0.91},
        excerpt="you are [email removed]",
        at=at,
    )


async def test_flags_are_stored_with_the_turn_and_listed_newest_first(store: SqlStore) -> None:
    _, _, turn = await begin(store, KEY, "hi", flags=[flag("redact", at=NOON)])
    await store.finish_turn(turn=turn, owner=OWNER, reply="", flags=[flag("flag", at=NOON)])
    elsewhere = ConversationKey("slack", "T1", "C9", "")  # no conversation yet: kept anyway
    await store.record_flag(flag=flag("block", at=NOON + timedelta(hours=1), key=elsewhere))

    flags = await store.flags()

    assert [f.action for f in flags] == ["block", "flag", "redact"]
    newest = flags[0]
    assert newest.key == elsewhere
    assert newest.categories == ["openai/harassment", "pii/email"]
    assert newest.scores == {"openai/harassment": 0.91}
    assert newest.excerpt == "you are [email removed]"
    assert newest.at == NOON + timedelta(hours=1)
    assert flags[2].key == KEY
    assert [f.action for f in await store.flags(action="redact")] == ["redact"]
    assert [f.action for f in await store.flags(since=NOON + timedelta(minutes=30))] == ["block"]
    assert len(await store.flags(limit=2)) == 2


async def test_access_rules_are_added_once_and_removed(store: SqlStore) -> None:
    rule = AccessRule(platform="slack", kind="user", value="U-bob", list="block")

    await store.add_access_rule(rule=rule, added_by="U-admin")
    await store.add_access_rule(rule=rule, added_by="U-admin")

    assert list(await store.access_rules()) == [rule]
    assert await store.remove_access_rule(rule=rule) is True
    assert await store.remove_access_rule(rule=rule) is False
    assert list(await store.access_rules()) == []


async def test_channel_settings_are_updated_field_by_field(store: SqlStore) -> None:
    assert await store.channel(key=KEY) == ChannelSettings()

    await store.update_channel(key=KEY, scope="user", user_rpm=5)
    await store.update_channel(key=KEY, tools=["calculate"], buffer_output=True)
    await store.update_channel(key=KEY, user_rpm=None)

    assert await store.channel(key=KEY) == ChannelSettings(
        scope="user", tools=["calculate"], buffer_output=True
    )
    state = await store.conversation(key=KEY)
    assert state.channel_buffer_output is True
    assert state.channel_tools == ["calculate"]
    with pytest.raises(TypeError, match="colour"):
        await store.update_channel(key=KEY, colour="red")


async def admit(
    store: SqlStore, now: datetime, decide: Callable[[LimitCounts], bool]
) -> LimitCounts:
    """Accepts a message of U-ada's with admission; the counts the decision was made on."""
    seen: list[LimitCounts] = []

    def refuse(counts: LimitCounts) -> str | None:
        seen.append(counts)
        return None if decide(counts) else "over the limit"

    message = Inbound(
        key=KEY, event_id=uuid.uuid4().hex, user_id="U-ada", user_name="Ada", text="hi"
    )
    await store.accept(inbound=message, address={}, admission=Admission(now=now, refuse=refuse))
    [counts] = seen
    return counts


async def test_admit_counts_requests_in_the_last_minute_and_tokens_since_midnight(
    store: SqlStore,
) -> None:
    def at_most(limit: int) -> object:
        return lambda counts: counts.requests < limit

    seen: list[LimitCounts] = []
    for second in (0, 20, 40):
        seen.append(
            await admit(store, NOON + timedelta(seconds=second), at_most(2))  # type: ignore[arg-type]
        )
    assert [c.requests for c in seen] == [0, 1, 2]  # the third was not admitted
    assert seen[2].oldest_request == NOON

    later = await admit(store, NOON + timedelta(seconds=61), lambda c: True)
    assert later.requests == 1  # only the one from second 20 is still within the minute
    assert later.oldest_request == NOON + timedelta(seconds=20)
    # Admitting pruned the rows older than a minute: the table stays small.
    async with store.engine.connect() as connection:
        kept = await connection.execute(select(user_requests.c.created_at))
        assert len(kept.all()) == 2  # second 20, and second 61

    state = await store.conversation(key=KEY)
    yesterday = NOON - timedelta(days=1)
    for moment, tokens in ((yesterday, 1000), (NOON - timedelta(hours=11), 70), (NOON, 30)):
        await store.record_usage(
            conversation_id=state.id,
            usage=UsageRecord("slack", "U-ada", "gpt-4o-mini", tokens, 0, at=moment),
        )
    await store.update_channel(key=KEY, user_tokens_per_day=500)
    counts = await admit(store, NOON, lambda c: False)
    assert counts.tokens_today == 100
    assert counts.channel.user_tokens_per_day == 500


@pytest.mark.postgres
async def test_admission_is_serialized_per_user_across_processes(postgres_url: str) -> None:
    """Two stores (two processes' engines) admitting one user's burst: exactly the limit passes."""
    async with open_store(postgres_url) as first, open_store(postgres_url) as second:

        async def admitted(store: SqlStore) -> bool:
            return (await admit(store, NOON, lambda counts: counts.requests < 5)).requests < 5

        results = await asyncio.gather(*(admitted(s) for s in [first, second] * 10))

    assert sum(results) == 5


async def test_conversation_exists_only_once_started(store: SqlStore) -> None:
    assert await store.conversation_exists(key=KEY) is False
    await store.conversation(key=KEY)
    assert await store.conversation_exists(key=KEY) is True
    assert await store.conversation_exists(key=ConversationKey("slack", "T1", "C1", "")) is False
