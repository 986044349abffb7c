"""What the HTTP API and the admin console read and write beyond a turn: API keys, a user's
conversations and their history, flag reviews, usage per day, search across conversations."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, func, select, update

from core.events import ConversationKey
from core.storage.base import StoredFlag
from core.storage.sql import SqlStore, _aware, _utc, stored_flag
from core.storage.tables import api_keys, conversations, messages, moderation_flags, usage
from core.tokens import MESSAGE_OVERHEAD

KEY_PREFIX = "pk-"
# A key's last use is written at most this often, so a busy key costs no write per request.
LAST_USED_EVERY = timedelta(minutes=1)
REVIEWS = {"dismiss": "dismissed", "confirm": "confirmed"}


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    thread: str
    title: str
    persona: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    id: int
    role: str
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Review:
    review: str | None
    reviewed_by: str
    reviewed_at: datetime | None


@dataclass(frozen=True, slots=True)
class DayUsage:
    day: str  # YYYY-MM-DD, UTC
    platform: str
    user_id: str
    calls: int  # model calls (a turn with tools makes several)
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Found:
    key: ConversationKey
    user_id: str
    role: str
    content: str
    created_at: datetime


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiStore:
    """Queries of the HTTP API, in the store's transactions (same retries, same SQLite
    thread)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    # --- keys -------------------------------------------------------------------------------

    async def create_key(self, *, name: str, admin: bool = False) -> str:
        """A new key, returned once; only its digest is stored. A revoked key's name may be
        used again; a live one's may not (ValueError)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        k = api_keys.c

        def work(connection: Connection) -> None:
            live = connection.execute(
                select(k.id).where(k.name == name, k.revoked_at.is_(None))
            ).first()
            if live is not None:
                raise ValueError(f"a key named {name!r} exists; revoke it first")
            connection.execute(api_keys.delete().where(k.name == name))  # revoked: replaced
            connection.execute(
                api_keys.insert().values(
                    name=name, digest=digest(key), prefix=key[:10], admin=admin
                )
            )

        await self._store.run(work)
        return key

    async def keys(self) -> list[ApiKey]:
        k = api_keys.c
        statement = select(
            k.name, k.prefix, k.admin, k.created_at, k.last_used_at, k.revoked_at
        ).order_by(k.name)
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [
            ApiKey(
                row.name,
                row.prefix,
                bool(row.admin),
                _aware(row.created_at),
                _maybe_aware(row.last_used_at),
                _maybe_aware(row.revoked_at),
            )
            for row in rows
        ]

    async def revoke_key(self, *, name: str) -> bool:
        k = api_keys.c
        statement = (
            update(api_keys)
            .where(k.name == name, k.revoked_at.is_(None))
            .values(revoked_at=func.now())
        )
        count = await self._store.run(lambda c: c.execute(statement).rowcount)
        return bool(count)

    async def key_for(self, key: str) -> ApiKey | None:
        """The live key `key` is, or None; notes its use (at most once a minute)."""
        if not key.startswith(KEY_PREFIX):
            return None
        k = api_keys.c
        statement = select(k.id, k.name, k.prefix, k.admin, k.created_at, k.last_used_at).where(
            k.digest == digest(key), k.revoked_at.is_(None)
        )
        row = await self._store.run(lambda c: c.execute(statement).first(), write=False)
        if row is None:
            return None
        now = datetime.now(UTC)
        last = _maybe_aware(row.last_used_at)
        if last is None or now - last >= LAST_USED_EVERY:
            touch = update(api_keys).where(k.id == row.id).values(last_used_at=now)
            await self._store.run(lambda c: c.execute(touch))
        return ApiKey(row.name, row.prefix, bool(row.admin), _aware(row.created_at), now)

    # --- a user's conversations -------------------------------------------------------------

    async def conversations(
        self, *, channel: ConversationKey, thread: str | None = None
    ) -> list[ConversationSummary]:
        """The conversations of a channel (an API user), most recently active first, each
        titled by its first message; with `thread`, only that one."""
        c, m = conversations.c, messages.c
        first = (
            select(m.content)
            .where(m.conversation_id == c.id, m.role == "user")
            .order_by(m.id)
            .limit(1)
            .scalar_subquery()
        )
        statement = (
            select(c.thread, first.label("title"), c.persona, c.updated_at)
            .where(
                c.platform == channel.platform,
                c.workspace == channel.workspace,
                c.channel == channel.channel,
            )
            .order_by(c.updated_at.desc(), c.id.desc())
            .limit(200)
        )
        if thread is not None:
            statement = statement.where(c.thread == thread)
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [
            ConversationSummary(row.thread, row.title or "", row.persona, _aware(row.updated_at))
            for row in rows
        ]

    async def history(self, *, key: ConversationKey, limit: int = 500) -> list[HistoryMessage]:
        """The conversation's user and assistant messages, oldest first (the newest `limit`),
        resets included: a reset starts the model afresh, not the user's record."""
        c, m = conversations.c, messages.c
        statement = (
            select(m.id, m.role, m.content, m.created_at)
            .join(conversations, c.id == m.conversation_id)
            .where(
                c.platform == key.platform,
                c.workspace == key.workspace,
                c.channel == key.channel,
                c.thread == key.thread,
                m.role.in_(("user", "assistant")),
                m.content != "",
            )
            .order_by(m.id.desc())
            .limit(limit)
        )
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [
            HistoryMessage(row.id, row.role, row.content, _aware(row.created_at))
            for row in reversed(rows)
        ]

    async def seed(self, *, key: ConversationKey, history: list[tuple[str, str]]) -> None:
        """Start a conversation with (role, text) messages as its history (what an OpenAI
        client sends with each request), counted with the bound every counter accepts."""
        state = await self._store.conversation(key=key)
        rows = [
            {
                "conversation_id": state.id,
                "role": role,
                "content": text,
                "token_count": len(text.encode("utf-8")) + MESSAGE_OVERHEAD,
            }
            for role, text in history
            if role in ("user", "assistant") and text
        ]
        if rows:
            await self._store.run(lambda c: c.execute(messages.insert(), rows))

    # --- the admin console ------------------------------------------------------------------

    async def flags(self, *, unreviewed: bool, limit: int = 50) -> list[tuple[StoredFlag, Review]]:
        f = moderation_flags.c
        statement = select(moderation_flags)
        if unreviewed:
            statement = statement.where(f.review.is_(None))
        statement = statement.order_by(f.id.desc()).limit(limit)
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [_flag(row) for row in rows]

    async def review_flag(
        self, *, flag_id: int, decision: str, by: str
    ) -> tuple[StoredFlag, Review] | None:
        """Record a person's review ("dismiss" or "confirm"); None for an unknown flag."""
        f = moderation_flags.c

        def work(connection: Connection) -> Row[Any] | None:
            connection.execute(
                update(moderation_flags)
                .where(f.id == flag_id)
                .values(review=REVIEWS[decision], reviewed_by=by, reviewed_at=func.now())
            )
            return connection.execute(select(moderation_flags).where(f.id == flag_id)).first()

        row: Row[Any] | None = await self._store.run(work)
        return None if row is None else _flag(row)

    async def usage_by_day(self, *, days: int) -> list[DayUsage]:
        """Turns, tokens and cost per user and UTC day, over the last `days` days."""
        u = usage.c
        since = datetime.now(UTC) - timedelta(days=days)
        day = (
            func.date(u.created_at)
            if not self._store.postgres
            else func.to_char(func.timezone("UTC", u.created_at), "YYYY-MM-DD")
        )
        statement = (
            select(
                day.label("day"),
                u.platform,
                u.user_id,
                func.count().label("calls"),
                func.sum(u.prompt_tokens).label("prompt_tokens"),
                func.sum(u.completion_tokens).label("completion_tokens"),
                func.coalesce(func.sum(u.cost_usd), 0.0).label("cost_usd"),
            )
            .where(u.created_at >= _utc(since))
            .group_by(day, u.platform, u.user_id)
            .order_by(day, u.platform, u.user_id)
        )
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [
            DayUsage(
                str(row.day),
                row.platform,
                row.user_id,
                int(row.calls),
                int(row.prompt_tokens or 0),
                int(row.completion_tokens or 0),
                float(row.cost_usd or 0.0),
            )
            for row in rows
        ]

    async def search(self, *, query: str, limit: int = 50) -> list[Found]:
        """Messages of every conversation containing `query` (any case), newest first."""
        c, m = conversations.c, messages.c
        statement = (
            select(
                c.platform,
                c.workspace,
                c.channel,
                c.thread,
                m.author_id,
                m.role,
                m.content,
                m.created_at,
            )
            .join(conversations, c.id == m.conversation_id)
            .where(
                and_(
                    m.role.in_(("user", "assistant")),
                    m.content.icontains(query, autoescape=True),
                )
            )
            .order_by(m.id.desc())
            .limit(limit)
        )
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [
            Found(
                ConversationKey(row.platform, row.workspace, row.channel, row.thread),
                row.author_id,
                row.role,
                row.content,
                _aware(row.created_at),
            )
            for row in rows
        ]


def _flag(row: Row[Any]) -> tuple[StoredFlag, Review]:
    return stored_flag(row), Review(row.review, row.reviewed_by, _maybe_aware(row.reviewed_at))


def _maybe_aware(moment: datetime | None) -> datetime | None:
    return None if moment is None else _aware(moment)
