"""The SQL session store: SQLite by default, PostgreSQL when several processes share the load."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Table, and_, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.events import ConversationKey
from core.storage.base import (
    ConversationState,
    NewMessage,
    StoredMessage,
    UsageRecord,
    UsageTotals,
)
from core.storage.tables import channel_settings, conversations, processed_events
from core.storage.tables import messages as message_rows
from core.storage.tables import usage as usage_rows


class SqlStore:
    """SessionStore on SQLAlchemy Core (no ORM: a turn is a handful of plain statements)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"
        self._locks = _KeyedLocks()

    async def close(self) -> None:
        await self.engine.dispose()

    def _insert(self, table: Table) -> Any:
        # ON CONFLICT lives in the dialects; both speak it the same way.
        return (postgresql.insert if self._postgres else sqlite.insert)(table)

    async def claim_event(self, *, platform: str, event_id: str) -> bool:
        statement = (
            self._insert(processed_events)
            .values(platform=platform, event_id=event_id)
            .on_conflict_do_nothing()
            .returning(processed_events.c.event_id)
        )
        async with self.engine.begin() as connection:
            return (await connection.execute(statement)).first() is not None

    @asynccontextmanager
    async def turn_lock(self, key: ConversationKey) -> AsyncIterator[None]:
        async with self._locks.hold(key):
            if not self._postgres:
                yield
                return
            # Across processes: a session-level advisory lock, on a connection held for the turn.
            lock_id = _advisory_id(key)
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
                await connection.commit()
                try:
                    yield
                finally:
                    await connection.execute(
                        text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id}
                    )
                    await connection.commit()

    async def _upsert_conversation(
        self, connection: AsyncConnection, key: ConversationKey
    ) -> ConversationState:
        row = (
            await connection.execute(
                self._insert(conversations)
                .values(
                    platform=key.platform,
                    workspace=key.workspace,
                    channel=key.channel,
                    thread=key.thread,
                )
                .on_conflict_do_update(
                    index_elements=["platform", "workspace", "channel", "thread"],
                    set_={"updated_at": func.now()},
                )
                .returning(
                    conversations.c.id,
                    conversations.c.persona,
                    conversations.c.window_start_id,
                    conversations.c.summary,
                    conversations.c.summary_through_id,
                )
            )
        ).one()
        channel_persona = (
            await connection.execute(
                select(channel_settings.c.persona).where(
                    channel_settings.c.platform == key.platform,
                    channel_settings.c.workspace == key.workspace,
                    channel_settings.c.channel == key.channel,
                )
            )
        ).scalar()
        return ConversationState(
            id=row.id,
            persona=row.persona,
            channel_persona=channel_persona,
            window_start_id=row.window_start_id,
            summary=row.summary,
            summary_through_id=row.summary_through_id,
        )

    async def begin_turn(
        self, *, key: ConversationKey, message: NewMessage
    ) -> tuple[ConversationState, int]:
        async with self.engine.begin() as connection:
            state = await self._upsert_conversation(connection, key)
            message_id = (
                await connection.execute(
                    message_rows.insert()
                    .values(conversation_id=state.id, **_message_values(message))
                    .returning(message_rows.c.id)
                )
            ).scalar_one()
        return state, message_id

    async def conversation(self, *, key: ConversationKey) -> ConversationState:
        async with self.engine.begin() as connection:
            return await self._upsert_conversation(connection, key)

    async def recent_messages(
        self, *, conversation_id: int, after_id: int, before_id: int | None, limit: int
    ) -> Sequence[StoredMessage]:
        condition = and_(
            message_rows.c.conversation_id == conversation_id, message_rows.c.id > after_id
        )
        if before_id is not None:
            condition = and_(condition, message_rows.c.id < before_id)
        statement = (
            select(
                message_rows.c.id,
                message_rows.c.role,
                message_rows.c.content,
                message_rows.c.token_count,
                message_rows.c.author_name,
                message_rows.c.tool_calls,
                message_rows.c.tool_call_id,
            )
            .where(condition)
            .order_by(message_rows.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as connection:
            rows = (await connection.execute(statement)).all()
        return [StoredMessage(*row) for row in rows]

    async def finish_turn(
        self, *, conversation_id: int, messages: Sequence[NewMessage], usage: UsageRecord
    ) -> None:
        async with self.engine.begin() as connection:
            if messages:
                await connection.execute(
                    message_rows.insert(),
                    [{"conversation_id": conversation_id, **_message_values(m)} for m in messages],
                )
            await connection.execute(_usage_insert(conversation_id, usage))

    async def record_usage(self, *, conversation_id: int, usage: UsageRecord) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(_usage_insert(conversation_id, usage))

    async def reset(self, *, key: ConversationKey) -> None:
        async with self.engine.begin() as connection:
            state = await self._upsert_conversation(connection, key)
            newest = (
                await connection.execute(
                    select(func.max(message_rows.c.id)).where(
                        message_rows.c.conversation_id == state.id
                    )
                )
            ).scalar()
            await connection.execute(
                update(conversations)
                .where(conversations.c.id == state.id)
                .values(
                    window_start_id=newest or 0,
                    summary="",
                    summary_through_id=newest or 0,
                )
            )

    async def set_persona(self, *, key: ConversationKey, persona: str) -> None:
        channel = key.channel_key
        async with self.engine.begin() as connection:
            await connection.execute(
                self._insert(channel_settings)
                .values(
                    platform=channel.platform,
                    workspace=channel.workspace,
                    channel=channel.channel,
                    persona=persona,
                )
                .on_conflict_do_update(
                    index_elements=["platform", "workspace", "channel"],
                    set_={"persona": persona, "updated_at": func.now()},
                )
            )
            state = await self._upsert_conversation(connection, key)
            await connection.execute(
                update(conversations).where(conversations.c.id == state.id).values(persona=persona)
            )

    async def save_summary(self, *, conversation_id: int, summary: str, through_id: int) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(summary=summary, summary_through_id=through_id)
            )

    async def usage_since(self, *, platform: str, user_id: str, since: datetime) -> UsageTotals:
        statement = select(
            func.coalesce(func.sum(usage_rows.c.prompt_tokens + usage_rows.c.completion_tokens), 0),
            func.count(),
            func.coalesce(func.sum(usage_rows.c.cost_usd), 0.0),
        ).where(
            usage_rows.c.platform == platform,
            usage_rows.c.user_id == user_id,
            usage_rows.c.created_at >= since,
        )
        async with self.engine.connect() as connection:
            tokens, turns, cost = (await connection.execute(statement)).one()
        return UsageTotals(tokens=int(tokens), turns=int(turns), cost_usd=float(cost))

    async def conversation_tokens(self, *, conversation_id: int) -> int:
        statement = select(
            func.coalesce(func.sum(usage_rows.c.prompt_tokens + usage_rows.c.completion_tokens), 0)
        ).where(usage_rows.c.conversation_id == conversation_id)
        async with self.engine.connect() as connection:
            return int((await connection.execute(statement)).scalar_one())

    async def latest_thread(self, *, platform: str, workspace: str, channel: str) -> str | None:
        statement = (
            select(conversations.c.thread)
            .where(
                conversations.c.platform == platform,
                conversations.c.workspace == workspace,
                conversations.c.channel == channel,
            )
            .order_by(conversations.c.id.desc())
            .limit(1)
        )
        async with self.engine.connect() as connection:
            return (await connection.execute(statement)).scalar()


def _message_values(message: NewMessage) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": message.content,
        "token_count": message.token_count,
        "author_id": message.author_id,
        "author_name": message.author_name,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
    }


def _usage_insert(conversation_id: int, record: UsageRecord) -> Insert:
    return usage_rows.insert().values(
        conversation_id=conversation_id,
        platform=record.platform,
        user_id=record.user_id,
        model=record.model,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        estimated=record.estimated,
        cost_usd=record.cost_usd,
    )


def _advisory_id(key: ConversationKey) -> int:
    digest = hashlib.blake2b(
        "\x1f".join((key.platform, key.workspace, key.channel, key.thread)).encode(),
        digest_size=8,
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class _KeyedLocks:
    """One asyncio.Lock per key, dropped when nobody holds or waits for it (no leak)."""

    def __init__(self) -> None:
        self._locks: dict[ConversationKey, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: ConversationKey) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
