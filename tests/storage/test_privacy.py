"""/forget and retention on SQLite and PostgreSQL: what is deleted leaves no row behind,
what belongs to someone else stays as it was."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bots.bootstrap import Runtime
from bots.retention import Retention
from core import wording
from core.events import CommandResult, ConversationKey, Final, ReplyEvent
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage import SqlStore
from core.storage.base import AccessRule, Turn
from core.storage.privacy import Privacy, Purged
from core.storage.tables import (
    attachments,
    conversations,
    messages,
    metadata,
    moderation_flags,
    turns,
    usage,
    user_requests,
)
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import eventually, inbound, turn

ADA_DM = ConversationKey("test", "", "D-ada")
BOB_DM = ConversationKey("test", "", "D-bob")
CHANNEL = ConversationKey("test", "team", "general", "t-1")
ELSEWHERE = ConversationKey("other", "", "D-ada")  # the same id on another platform: not her
ADA = {"user_id": "U-ada", "user_name": "Ada"}
BOB = {"user_id": "U-bob", "user_name": "Bob"}


@asynccontextmanager
async def database(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def say(runtime: Runtime, fake: FakeOpenAI, text: str, reply: str, **inbound: Any) -> None:
    fake.reply(reply)
    events = await turn(runtime.engine, text, **inbound)
    assert isinstance(events[-1], Final), events


async def seed(runtime: Runtime, fake: FakeOpenAI, url: str) -> None:
    """Ada and Bob each in a DM, both in a shared thread; Ada also on another platform.
    Ada's words carry "zebracorn", Bob's "quokka"."""
    await say(
        runtime, fake, "zebracorn one", "About zebracorn one", key=ADA_DM, is_direct=True, **ADA
    )
    await say(
        runtime,
        fake,
        "zebracorn mail ada@example.com",
        "Noted zebracorn",
        key=ADA_DM,
        is_direct=True,
        **ADA,
    )
    await say(runtime, fake, "quokka one", "About quokka one", key=BOB_DM, is_direct=True, **BOB)
    await say(runtime, fake, "zebracorn in the thread", "Thread zebracorn", key=CHANNEL, **ADA)
    await say(runtime, fake, "quokka in the thread", "Thread quokka", key=CHANNEL, **BOB)
    await say(runtime, fake, "zebracorn again", "Again zebracorn", key=CHANNEL, **ADA)
    await say(runtime, fake, "quokka again", "Again quokka", key=CHANNEL, **BOB)
    await say(runtime, fake, "kept elsewhere", "Other platform", key=ELSEWHERE, **ADA)
    assert isinstance(runtime.store, SqlStore)
    await runtime.store.add_access_rule(
        rule=AccessRule(platform="test", kind="user", value="U-ada", list="allow"), added_by="op"
    )
    async with database(url) as engine, engine.begin() as connection:
        newest = (await connection.execute(select(func.max(messages.c.id)))).scalar_one()
        await connection.execute(
            update(conversations)
            .where(conversations.c.channel == "general")
            .values(summary="Ada said zebracorn, Bob quokka", summary_through_id=newest)
        )
        await connection.execute(
            update(conversations)
            .where(conversations.c.channel == "D-bob")
            .values(summary="Bob likes quokka", summary_through_id=newest)
        )
        # An image of Ada's in the thread and one of Bob's.
        for user, key in (("U-ada", CHANNEL), ("U-bob", CHANNEL), ("U-ada", ADA_DM)):
            row = (
                await connection.execute(
                    select(messages.c.id, messages.c.conversation_id)
                    .join(conversations, conversations.c.id == messages.c.conversation_id)
                    .where(messages.c.author_id == user, conversations.c.channel == key.channel)
                    .limit(1)
                )
            ).one()
            await connection.execute(
                insert(attachments).values(
                    conversation_id=row.conversation_id,
                    message_id=row.id,
                    platform="test",
                    user_id=user,
                    kind="image",
                    name=f"{user}.png",
                    mime="image/jpeg",
                    size=3,
                    tokens=85,
                    data=b"\x89PN",
                )
            )


async def rows_of(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as dicts."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with engine.connect() as connection:
        for table in metadata.sorted_tables:
            result = await connection.execute(select(table))
            found[table.name] = [dict(row._mapping) for row in result]
    return found


def mentioning(
    rows: dict[str, list[dict[str, Any]]], *needles: str
) -> list[tuple[str, dict[str, Any]]]:
    """(table, row) of the rows where any text or JSON column contains a needle."""
    hits = []
    for table, listed in rows.items():
        for row in listed:
            text = json.dumps(row, default=str)
            if any(needle in text for needle in needles):
                hits.append((table, row))
    return hits


def bobs(rows: dict[str, list[dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Bob's rows and his DM (the shared thread's row is checked on its own)."""
    found = mentioning({k: v for k, v in rows.items() if k != "conversations"}, "U-bob", "quokka")
    return found + [("conversations", c) for c in rows["conversations"] if c["channel"] == "D-bob"]


async def test_forget_leaves_no_row_of_the_user_and_keeps_everyone_elses(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(DATABASE_URL=database_url, PARLEY_MODERATION="pii") as runtime:
        await seed(runtime, fake_openai, database_url)
        assert isinstance(runtime.store, SqlStore)
        async with database(database_url) as engine:
            before = await rows_of(engine)
            assert len(before["moderation_flags"]) == 1  # the e-mail address, redacted
            assert before["moderation_flags"][0]["user_id"] == "U-ada"
            assert before["user_requests"] and before["usage"]

            forgotten = await Privacy(runtime.store).forget(platform="test", user_id="U-ada")
            after = await rows_of(engine)

    # Her DM whole (2 exchanges); in the thread her 2 messages and the 2 replies to them.
    assert (forgotten.conversations, forgotten.messages, forgotten.summaries_cleared) == (1, 8, 1)
    assert (forgotten.attachments, forgotten.flags, forgotten.usage) == (2, 1, 4)
    left = mentioning(after, "U-ada", "zebracorn", "Ada")
    # Only the admins' access-list entry, and her account on another platform.
    assert sorted(table for table, _ in left) == [
        "access_rules",
        "messages",
        "turns",
        "usage",
        "user_requests",
    ]
    assert sorted(row.get("platform", "") for _, row in left) == ["", *["other"] * 3, "test"]
    assert [row["content"] for table, row in left if table == "messages"] == ["kept elsewhere"]
    assert [row["platform"] for table, row in left if table in ("turns", "usage")] == [
        "other",
        "other",
    ]
    assert bobs(after) == bobs(before)
    channel = next(c for c in after["conversations"] if c["channel"] == "general")
    assert (channel["summary"], channel["summary_through_id"]) == ("", 0)
    thread = [
        (m["role"], m["content"])
        for m in after["messages"]
        if m["conversation_id"] == channel["id"]
    ]
    assert thread == [
        ("user", "quokka in the thread"),
        ("assistant", "Thread quokka"),
        ("user", "quokka again"),
        ("assistant", "Again quokka"),
    ]
    assert {c["channel"] for c in after["conversations"]} == {"D-bob", "general", "D-ada"}
    assert [c["platform"] for c in after["conversations"] if c["channel"] == "D-ada"] == ["other"]


async def test_a_shared_window_is_read_afresh_after_a_forget(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await say(runtime, fake_openai, "zebracorn here", "Yes zebracorn", key=CHANNEL, **ADA)
        await say(runtime, fake_openai, "quokka here", "Yes quokka", key=CHANNEL, **BOB)
        assert isinstance(runtime.store, SqlStore)
        await Privacy(runtime.store).forget(platform="test", user_id="U-ada")
        # This process cached the window with her words; the next turn must not send them.
        await say(runtime, fake_openai, "and now?", "Only quokka", key=CHANNEL, **BOB)
    sent = json.dumps(fake_openai.chat_requests[-1]["messages"])
    assert "zebracorn" not in sent and "quokka here" in sent


async def test_forget_as_a_command_asks_then_deletes(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await seed(runtime, fake_openai, database_url)
        asked = await turn(
            runtime.engine, "/forget", key=ADA_DM, is_direct=True, event_id="ask", **ADA
        )
        assert asked == [
            CommandResult(text=wording.FORGET_ASK.format(usage_kept=""), command="forget")
        ]
        async with database(database_url) as engine:
            assert len(mentioning(await rows_of(engine), "zebracorn")) > 10  # nothing deleted
        done = await turn(
            runtime.engine, "/forget confirm", key=ADA_DM, is_direct=True, event_id="yes", **ADA
        )
        assert done == [
            CommandResult(
                text="Done: I deleted 8 messages (yours and my answers), 2 images and files, and "
                "1 conversation in full, with everything else I kept about you on this "
                "platform. I no longer remember our conversations.",
                command="forget",
            )
        ]
        async with database(database_url) as engine:
            after = await rows_of(engine)
        # A new conversation in the same DM starts without any of it.
        await say(runtime, fake_openai, "hello again", "Hello", key=ADA_DM, is_direct=True, **ADA)
        assert "zebracorn" not in json.dumps(fake_openai.chat_requests[-1]["messages"])
    left = [
        (table, row.get("text") or row.get("channel") or row.get("thread"))
        for table, row in mentioning(after, "U-ada", "zebracorn", "D-ada", "forget", "forgotten")
        if row.get("platform") != "other" and row.get("content") != "kept elsewhere"
    ]
    # The admins' entry, and the command's own turn (pruned with finished turns), parked in a
    # conversation of its own so that it could store its answer once the DM was deleted.
    assert sorted(left, key=str) == [
        ("access_rules", None),
        ("conversations", "parley:forgotten"),
        ("turns", "/forget confirm"),
    ]
    [parked] = [t for t in after["turns"] if t["text"] == "/forget confirm"]
    assert parked["state"] == "delivered" and parked["reply"].startswith("Done: I deleted 8")


async def test_forget_keeps_todays_token_counts_when_a_budget_applies(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(
        DATABASE_URL=database_url, PARLEY_USER_TOKENS_PER_DAY=10_000
    ) as runtime:
        await say(runtime, fake_openai, "zebracorn", "ok", key=ADA_DM, is_direct=True, **ADA)
        asked = await turn(runtime.engine, "/forget", key=ADA_DM, is_direct=True, **ADA)
        assert wording.FORGET_USAGE_KEPT in asked[0].text  # type: ignore[union-attr]
        await turn(runtime.engine, "/forget confirm", key=ADA_DM, is_direct=True, **ADA)
        async with database(database_url) as engine:
            after = await rows_of(engine)
    [kept] = after["usage"]
    assert (kept["user_id"], kept["conversation_id"], kept["prompt_tokens"]) == ("U-ada", None, 10)
    assert mentioning(after, "zebracorn") == []


async def test_retention_purges_what_is_older_and_keeps_the_rest(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(
        DATABASE_URL=database_url, PARLEY_MODERATION="pii", clock=lambda: datetime.now(UTC)
    ) as runtime:
        await seed(runtime, fake_openai, database_url)
        # Everything of Ada's DM and Bob's first thread exchange is ten days old.
        old = datetime.now(UTC) - timedelta(days=10)
        async with database(database_url) as engine:
            async with engine.begin() as connection:
                ada_dm = (
                    await connection.execute(
                        select(conversations.c.id).where(
                            conversations.c.channel == "D-ada", conversations.c.platform == "test"
                        )
                    )
                ).scalar_one()
                thread_first = (
                    await connection.execute(
                        select(messages.c.id).where(messages.c.content == "quokka in the thread")
                    )
                ).scalar_one()
                aged = (messages.c.conversation_id == ada_dm) | messages.c.id.in_(
                    [thread_first, thread_first + 1]
                )
                await connection.execute(update(messages).where(aged).values(created_at=old))
                await connection.execute(
                    update(conversations)
                    .where(conversations.c.id == ada_dm)
                    .values(created_at=old, updated_at=old)
                )
                for table in (attachments, turns, usage, moderation_flags, user_requests):
                    await connection.execute(
                        update(table)
                        .where(
                            table.c.conversation_id == ada_dm
                            if "conversation_id" in table.c
                            else table.c.user_id == "U-ada"
                        )
                        .values(created_at=old)
                    )
            before = await rows_of(engine)
            assert isinstance(runtime.store, SqlStore)
            purged = await Privacy(runtime.store).purge(
                before=datetime.now(UTC) - timedelta(days=7)
            )
            again = await Privacy(runtime.store).purge(before=datetime.now(UTC) - timedelta(days=7))
            after = await rows_of(engine)
        # The thread's window, cached with the purged exchange, is read afresh.
        await say(runtime, fake_openai, "what now?", "Now this", key=CHANNEL, **BOB)
        sent = json.dumps(fake_openai.chat_requests[-1]["messages"])
        assert "quokka in the thread" not in sent and "zebracorn again" in sent

    old_messages = [
        m
        for m in before["messages"]
        if m["conversation_id"] == ada_dm or m["id"] in (thread_first, thread_first + 1)
    ]
    assert purged == Purged(
        messages=len(old_messages),
        attachments=1,
        turns=2,
        usage=2,
        flags=1,
        requests=len([r for r in before["user_requests"] if r["user_id"] == "U-ada"]),
        conversations=1,
    )
    assert again == Purged()
    for table in ("messages", "attachments", "turns", "usage", "moderation_flags", "user_requests"):
        assert all(
            row["created_at"].replace(tzinfo=None) > old.replace(tzinfo=None)
            for row in after[table]
        ), table
    gone = {m["id"] for m in old_messages}
    assert [m for m in after["messages"]] == [m for m in before["messages"] if m["id"] not in gone]
    assert ada_dm not in {c["id"] for c in after["conversations"]}


async def test_a_running_process_purges_at_start(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    async with engine_factory(
        DATABASE_URL=database_url, clock=lambda: datetime.now(UTC)
    ) as runtime:
        await say(runtime, fake_openai, "zebracorn", "ok", key=ADA_DM, is_direct=True, **ADA)
        await say(runtime, fake_openai, "quokka", "ok", key=BOB_DM, is_direct=True, **BOB)
        async with database(database_url) as engine:
            async with engine.begin() as connection:
                await connection.execute(
                    update(messages)
                    .where(messages.c.content == "zebracorn")
                    .values(created_at=datetime.now(UTC) - timedelta(days=3))
                )
            assert isinstance(runtime.store, SqlStore)
            async with Retention(runtime.store, days=2):

                async def purged() -> bool:
                    listed = (await rows_of(engine))["messages"]
                    return all(m["content"] != "zebracorn" for m in listed)

                await eventually(purged, "the purge at start")
            contents = [m["content"] for m in (await rows_of(engine))["messages"]]
    assert contents == ["ok", "quokka", "ok"]


async def test_a_deleted_conversations_id_is_never_given_to_a_new_one(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    # SQLite would hand the newest id to the next row; this process still caches the deleted
    # conversation's window under it, and would show her words in someone else's context.
    thread = ConversationKey("test", "team", "general", "t-ada")
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await say(runtime, fake_openai, "zebracorn", "ok", key=thread, **ADA)
        assert isinstance(runtime.store, SqlStore)
        for _ in range(2):  # the second time, the id kept back is moved on
            await Privacy(runtime.store).forget(platform="test", user_id="U-ada")
            await say(runtime, fake_openai, "quokka", "ok", key=thread, **BOB)
            assert "zebracorn" not in json.dumps(fake_openai.chat_requests[-1]["messages"])
            await say(runtime, fake_openai, "zebracorn", "ok", key=CHANNEL, **ADA)
            thread = ConversationKey("test", "team", "general", f"{thread.thread}-next")
            await say(runtime, fake_openai, "zebracorn", "ok", key=thread, **ADA)


class _Delivered:
    """A chat platform's reply view that records what was delivered."""

    def __init__(self, delivered: asyncio.Queue[str]) -> None:
        self.edits_in_place = True
        self._delivered = delivered

    def show(self, event: ReplyEvent) -> None:
        pass

    async def deliver(self, markdown: str) -> None:
        await self._delivered.put(markdown)

    async def aclose(self) -> None:
        pass


async def test_forget_through_the_scheduler_answers_from_the_deleted_conversation(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    delivered: asyncio.Queue[str] = asyncio.Queue()

    def outlet(turn: Turn, posted: PostedCallback) -> ReplyView:
        return _Delivered(delivered)

    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await say(runtime, fake_openai, "zebracorn", "ok", key=ADA_DM, is_direct=True, **ADA)
        scheduler = Scheduler(engine=runtime.engine, store=runtime.store)
        scheduler.add_outlet("test", outlet)
        async with scheduler:
            sent = inbound("/forget confirm", key=ADA_DM, is_direct=True, **ADA)
            await scheduler.accept(sent, {})
            answer = await asyncio.wait_for(delivered.get(), 10)
            assert answer.startswith("Done: I deleted 2 messages")
            fake_openai.reply("Hello")
            await scheduler.accept(inbound("hi", key=ADA_DM, is_direct=True, **ADA), {})
            assert await asyncio.wait_for(delivered.get(), 10) == "Hello"
        assert "zebracorn" not in json.dumps(fake_openai.chat_requests[-1]["messages"])
        async with database(database_url) as engine:
            after = await rows_of(engine)
    assert [(t["text"], t["state"]) for t in after["turns"]] == [
        ("/forget confirm", "delivered"),
        ("hi", "delivered"),
    ]
    assert mentioning(after, "zebracorn") == []
