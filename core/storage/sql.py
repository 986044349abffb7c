"""The SQL session store: SQLite by default, PostgreSQL when several processes share the load.

Every operation is one plain function of a synchronous SQLAlchemy `Connection`, run as one
transaction:

- on SQLite, on one dedicated thread with the standard `sqlite3` driver. aiosqlite hands every
  cursor call to its thread and back (about 45 hand-offs a turn, ~100 µs each on an idle
  2-core VM); one hand-off per operation is four to five times cheaper. SQLite runs one writer
  at a time anyway, so one thread costs no concurrency (see bench/README.md);
- on PostgreSQL, through asyncpg with `AsyncConnection.run_sync`, on a pooled connection held
  only for that transaction (never across a model call).

Transient database errors (a terminated connection, a locked SQLite file) are retried with
backoff for a bounded time (core/storage/retry.py); only then do they reach the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Engine,
    and_,
    case,
    create_engine,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from core.attachments import Attachment
from core.events import ConversationKey, Inbound
from core.storage.base import (
    AccessRule,
    Admission,
    ChannelSettings,
    ConversationState,
    Delivery,
    FlagRecord,
    LeaseLost,
    LimitCounts,
    NewMessage,
    StoredFlag,
    StoredMessage,
    Turn,
    TurnState,
    UsageRecord,
    UsageTotals,
)
from core.storage.database import configure_sqlite
from core.storage.retry import retry_transient
from core.storage.statements import CHANNEL_COLUMNS, NO_LIMIT_ID, STORED_COLUMNS, HotStatements
from core.storage.tables import (
    access_rules,
    attachments,
    channel_settings,
    conversations,
    moderation_flags,
    turns,
)
from core.storage.tables import messages as message_rows
from core.storage.tables import usage as usage_rows

T = TypeVar("T")
Work = Callable[[Connection], T]
log = logging.getLogger(__name__)

# PostgreSQL's LISTEN/NOTIFY channel for `signal`/`listen`.
SIGNALS = "parley_turns"
# A listening connection that has heard nothing for this long is checked with a query: a
# connection that died without a word (a cut network) raises nothing by itself.
LISTEN_CHECK_SECONDS = 30.0


class SqlStore:
    """SessionStore on SQLAlchemy Core (no ORM: a turn is a handful of plain statements)."""

    def __init__(self, engine: AsyncEngine, *, retry_seconds: float = 30.0) -> None:
        self.engine = engine
        self._retry_seconds = retry_seconds
        self._postgres = engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert
        self._hot = HotStatements.build(self._insert, self._postgres)
        self._sqlite = (
            None if self._postgres else _SqliteThread(engine.url.set(drivername="sqlite"))
        )

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()
        await self.engine.dispose()

    @property
    def postgres(self) -> bool:
        return self._postgres

    async def run(self, work: Work[T], *, write: bool = True) -> T:
        """`work(connection)` as one transaction, retried as the store's own are (for queries
        of other modules, such as `core.storage.api`)."""
        return await self._run(work, write=write)

    async def _run(self, work: Work[T], *, write: bool = True) -> T:
        """Runs `work` as one transaction, again on a transient error (a dropped connection,
        a locked file) until `retry_seconds` pass; then DatabaseUnavailable. A transaction
        that failed was rolled back, so running it again is safe."""

        async def once() -> T:
            if self._sqlite is not None:
                return await self._sqlite.run(work, write=write)
            async with self.engine.begin() as connection:
                return await connection.run_sync(work)

        name = getattr(work, "__qualname__", "a transaction")
        return await retry_transient(once, deadline=self._retry_seconds, what=name)

    # --- the turn ---------------------------------------------------------------------------

    async def accept(
        self,
        *,
        inbound: Inbound,
        address: dict[str, Any],
        owner: str | None = None,
        lease_until: float = 0.0,
        admission: Admission | None = None,
        done: Sequence[Delivery] = (),
    ) -> Turn | None:
        key = inbound.key
        key_values = _key_values(key)

        def work(connection: Connection) -> Turn | None:
            if done and owner is not None:
                self._finish_deliveries(connection, owner, done)
            # Upserting the conversation locks its row (PostgreSQL) until commit, so two
            # processes accepting messages of one conversation take turns: ids follow arrival
            # order and the "is it first?" check below sees every earlier turn.
            hot = self._hot
            conversation_id = int(connection.execute(hot.conversation_id, key_values).scalar_one())
            waiting = connection.execute(
                hot.unfinished_turn, {"conversation_id": conversation_id, "p_owner": owner}
            ).first()
            leased = owner is not None and waiting is None
            turn_id = connection.execute(
                hot.insert_turn,
                {
                    "platform": key.platform,
                    "event_id": inbound.event_id,
                    "conversation_id": conversation_id,
                    "user_id": inbound.user_id,
                    "user_name": inbound.user_name,
                    "text": inbound.text,
                    "is_direct": inbound.is_direct,
                    "mentions_bot": inbound.mentions_bot,
                    "attachments": [a.as_json() for a in inbound.attachments] or None,
                    "address": address,
                    "state": TurnState.RUNNING if leased else TurnState.PENDING,
                    "lease_owner": owner if leased else None,
                    "lease_until": lease_until if leased else None,
                    "attempts": 1 if leased else 0,
                },
            ).scalar()
            if turn_id is None:
                return None  # a redelivery: not counted again
            refusal: str | None = None
            if admission is not None:

                def decide(counts: LimitCounts) -> bool:
                    nonlocal refusal
                    refusal = admission.refuse(counts)
                    return refusal is None

                self._admit(connection, key, inbound.user_id, admission.now, decide)
                if refusal is not None:
                    connection.execute(hot.set_refusal, {"p_turn_id": turn_id, "p_reply": refusal})
            return Turn(
                id=turn_id,
                conversation_id=conversation_id,
                inbound=inbound,
                address=address,
                state=TurnState.RUNNING if leased else TurnState.PENDING,
                attempts=1 if leased else 0,
                reply=refusal,
            )

        return await self._run(work)

    async def claim_turns(
        self,
        *,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        platforms: Sequence[str],
        conversation_id: int | None = None,
        exclude: Sequence[int] = (),
        done: Sequence[Delivery] = (),
        merge: bool = False,
    ) -> Sequence[Turn]:
        t = turns.c
        earlier = turns.alias("earlier")
        first_unfinished = ~(
            select(earlier.c.id)
            .where(
                earlier.c.conversation_id == t.conversation_id,
                earlier.c.id < t.id,
                earlier.c.state.in_(TurnState.UNFINISHED),
            )
            .exists()
        )
        due = or_(
            and_(t.state == TurnState.PENDING, first_unfinished),
            and_(t.state.in_(TurnState.LEASED), t.lease_until < now),
        )
        due = and_(due, t.platform.in_(platforms), t.merged_into.is_(None))
        if conversation_id is not None:
            due = and_(due, t.conversation_id == conversation_id)
        if exclude:
            due = and_(due, t.conversation_id.not_in(exclude))
        # SKIP LOCKED: processes claiming at once take different rows instead of waiting.
        chosen = (
            select(t.id).where(due).order_by(t.id).limit(limit).with_for_update(skip_locked=True)
        )

        def work(connection: Connection) -> list[Turn]:
            if done:
                self._finish_deliveries(connection, owner, done)
            ids = list(connection.execute(chosen).scalars())
            if not ids:
                return []
            merged: list[int] = []
            if conversation_id is not None and self._merges(connection, ids[0], merge):
                queued = connection.execute(
                    select(t.id)
                    .where(
                        t.conversation_id == conversation_id,
                        t.state == TurnState.PENDING,
                        t.id > ids[0],
                    )
                    .order_by(t.id)
                    .with_for_update(skip_locked=True)
                ).scalars()
                *merged, newest = [ids[0], *queued]
                ids = [newest]
            connection.execute(
                update(turns)  # a merged turn's parts go with it, also when taken over
                .where(or_(t.id.in_([*ids, *merged]), t.merged_into.in_(ids)))
                .values(
                    state=case((t.state == TurnState.PENDING, TurnState.RUNNING), else_=t.state),
                    lease_owner=owner,
                    lease_until=lease_until,
                    attempts=t.attempts + 1,
                )
            )
            if merged:
                connection.execute(update(turns).where(t.id.in_(merged)).values(merged_into=ids[0]))
            rows = connection.execute(
                select(*_TURN_COLUMNS, t.merged_into)
                .join(conversations, conversations.c.id == t.conversation_id)
                .where(or_(t.id.in_(ids), t.merged_into.in_(ids)))
                .order_by(t.id)
            ).all()
            parts: dict[int, list[Turn]] = {}
            for row in rows:
                if row.merged_into is not None:
                    parts.setdefault(row.merged_into, []).append(_turn(row))
            return [
                replace(_turn(row), merged=tuple(parts.get(row.id, ())))
                for row in rows
                if row.merged_into is None
            ]

        return await self._run(work)

    @staticmethod
    def _merges(connection: Connection, turn_id: int, default: bool) -> bool:
        """Whether `turn_id` is pending and its channel merges messages queued during a turn
        (its own choice, else `default`)."""
        t, c, s = turns.c, conversations.c, channel_settings.c
        row = connection.execute(
            select(t.state, s.merge_queued)
            .join(conversations, c.id == t.conversation_id)
            .outerjoin(
                channel_settings,
                and_(s.platform == c.platform, s.workspace == c.workspace, s.channel == c.channel),
            )
            .where(t.id == turn_id)
        ).one()
        chosen = default if row.merge_queued is None else row.merge_queued
        return bool(row.state == TurnState.PENDING and chosen)

    async def renew_leases(self, *, owner: str, lease_until: float) -> int:
        # Rows this process is writing right now (a reply, a delivery) are skipped, not waited
        # for: waiting would lock the rows in another order than those transactions do (a
        # deadlock). They are renewed by the next heartbeat, long before the lease runs out.
        t = turns.c
        held = (
            select(t.id)
            .where(t.lease_owner == owner, t.state.in_(TurnState.LEASED))
            .with_for_update(skip_locked=True)
        )
        statement = (
            update(turns).where(t.id.in_(held.scalar_subquery())).values(lease_until=lease_until)
        )
        return await self._run(lambda c: c.execute(statement).rowcount)

    async def release_leases(self, *, owner: str) -> int:
        statement = (
            update(turns)
            .where(turns.c.lease_owner == owner, turns.c.state.in_(TurnState.LEASED))
            .values(lease_until=0.0)  # expired: anyone takes them at once
        )
        return await self._run(lambda c: c.execute(statement).rowcount)

    async def record_posted(self, *, turn_id: int, owner: str, posted: Sequence[str]) -> None:
        values = {"p_turn_id": turn_id, "p_owner": owner, "p_posted": list(posted)}
        await self._run(lambda c: c.execute(self._hot.record_posted, values))

    async def finish_deliveries(self, *, owner: str, done: Sequence[Delivery]) -> None:
        if done:
            await self._run(lambda c: self._finish_deliveries(c, owner, done))

    def _finish_deliveries(
        self, connection: Connection, owner: str, done: Sequence[Delivery]
    ) -> None:
        connection.execute(
            self._hot.finish_delivery,
            [
                {
                    "p_turn_id": d.turn_id,
                    "p_owner": owner,
                    "p_state": TurnState.DELIVERED if d.delivered else TurnState.UNDELIVERED,
                    "p_at": d.at,
                }
                for d in sorted(done, key=lambda d: d.turn_id)  # one lock order everywhere
            ],
        )

    @contextlib.asynccontextmanager
    async def listen(self, heard: Callable[[str], None]) -> AsyncIterator[None]:
        if not self._postgres:
            yield
            return
        task = asyncio.create_task(self._listen(heard), name="parley-listen")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _listen(self, heard: Callable[[str], None]) -> None:
        """Listens on one pooled connection; on a new one when it is lost (backoff to 30 s).
        After each (re)connection `heard("")`: whatever was sent meanwhile is lost, so look."""
        pause = 1.0
        while True:
            try:
                async with self.engine.connect() as connection:
                    try:
                        raw = await connection.get_raw_connection()
                        await _listen_on(raw.driver_connection, heard)
                    finally:
                        await connection.invalidate()  # never back into the pool listening
                log.info("the connection listening for signals was lost; connecting again")
                pause = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("listening for other processes' signals: %s; again in %.0f s", exc, pause)
                pause = min(pause * 2, 30.0)
            await asyncio.sleep(pause / 2)

    async def signal(self, message: str) -> None:
        if not self._postgres:
            return
        # Tried once, not retried like the store's transactions: a hint that comes late helps
        # nobody, and a process stopping must not wait out a database outage for it.
        statement = sql_text("SELECT pg_notify(:channel, :message)")
        async with self.engine.begin() as connection:
            await connection.execute(statement, {"channel": SIGNALS, "message": message})

    async def prune_turns(self, *, finished_before: float) -> int:
        statement = delete(turns).where(
            turns.c.state.in_((TurnState.DELIVERED, TurnState.UNDELIVERED)),
            turns.c.finished_at < finished_before,
        )
        return await self._run(lambda c: c.execute(statement).rowcount)

    def _upsert_conversation(
        self, connection: Connection, key: ConversationKey
    ) -> ConversationState:
        row = connection.execute(self._hot.conversation_state, _key_values(key)).one()
        channel = connection.execute(self._hot.channel, _key_values(key)).first()
        settings = ChannelSettings(*channel) if channel else ChannelSettings()
        return ConversationState(
            id=row.id,
            persona=row.persona,
            channel_persona=settings.persona,
            window_start_id=row.window_start_id,
            summary=row.summary,
            summary_through_id=row.summary_through_id,
            channel_tools=settings.tools,
            channel_buffer_output=settings.buffer_output,
            channel_knowledge=settings.knowledge,
        )

    async def begin_turn(
        self,
        *,
        turn: Turn,
        owner: str,
        message: NewMessage,
        count_tokens: Callable[[ConversationState, NewMessage], int] | None = None,
        flags: Sequence[FlagRecord] = (),
        merged: Sequence[NewMessage] = (),
    ) -> tuple[ConversationState, int]:
        def store(
            connection: Connection, state: ConversationState, turn: Turn, new: NewMessage
        ) -> int:
            values = _message_values(new)
            if count_tokens is not None:
                values["token_count"] = count_tokens(state, new)
            message_id = int(
                connection.execute(
                    self._hot.insert_message, {"conversation_id": state.id, **values}
                ).scalar_one()
            )
            connection.execute(
                self._hot.set_message, {"p_turn_id": turn.id, "p_message_id": message_id}
            )
            if new.attachments:
                _store_attachments(connection, state.id, message_id, turn.inbound, new)
            return message_id

        def work(connection: Connection) -> tuple[ConversationState, int]:
            hot = self._hot
            stored = connection.execute(
                hot.leased_message, {"p_turn_id": turn.id, "p_owner": owner}
            ).first()
            if stored is None:
                raise LeaseLost(f"turn {turn.id} was taken over")
            state = self._upsert_conversation(connection, turn.inbound.key)
            if stored.message_id is not None:  # a re-run after a crash: stored already
                return state, int(stored.message_id)
            # Merged messages first, in arrival order: the window shows them as they came.
            for earlier, new in zip(turn.merged, merged, strict=True):
                store(connection, state, earlier, new)
            message_id = store(connection, state, turn, message)
            _insert_flags(connection, state.id, flags)
            return state, message_id

        return await self._run(work)

    async def conversation(self, *, key: ConversationKey) -> ConversationState:
        return await self._run(lambda c: self._upsert_conversation(c, key))

    async def recent_messages(
        self, *, conversation_id: int, after_id: int, before_id: int | None, limit: int
    ) -> Sequence[StoredMessage]:
        values = {
            "conversation_id": conversation_id,
            "after_id": after_id,
            "before_id": NO_LIMIT_ID if before_id is None else before_id,
            "limit": limit,
        }
        statement = self._hot.recent_messages
        rows = await self._run(lambda c: c.execute(statement, values).all(), write=False)
        return [StoredMessage(*row) for row in rows]

    async def images(self, *, ids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        a = attachments.c
        statement = select(a.id, a.mime, a.data).where(a.id.in_(ids), a.data.is_not(None))
        rows = await self._run(lambda c: c.execute(statement).all(), write=False)
        return {row.id: (row.mime, row.data) for row in rows}

    async def finish_turn(
        self,
        *,
        turn: Turn,
        owner: str,
        reply: str,
        messages: Sequence[NewMessage] = (),
        usage: Sequence[UsageRecord] = (),
        flags: Sequence[FlagRecord] = (),
    ) -> None:
        conversation_id = turn.conversation_id

        def work(connection: Connection) -> None:
            # Only the lease holder may end the turn: a process whose lease expired while it
            # worked (a long stall) must not store a second answer beside its successor's.
            ended = connection.execute(
                self._hot.end_turn, {"p_turn_id": turn.id, "p_owner": owner, "p_reply": reply}
            ).rowcount
            if not ended:
                raise LeaseLost(f"turn {turn.id} was taken over")
            if turn.merged:  # answered with it: no longer holding up later turns
                connection.execute(
                    update(turns)
                    .where(turns.c.merged_into == turn.id)
                    .values(state=TurnState.REPLIED)
                )
            if messages:
                connection.execute(
                    message_rows.insert(),
                    [{"conversation_id": conversation_id, **_message_values(m)} for m in messages],
                )
            if usage:
                connection.execute(
                    usage_rows.insert(), [_usage_values(conversation_id, r) for r in usage]
                )
            _insert_flags(connection, conversation_id, flags)

        await self._run(work)

    async def search_messages(
        self, *, conversation_id: int, query: str, limit: int
    ) -> Sequence[StoredMessage]:
        statement = (
            select(*STORED_COLUMNS)
            .where(
                message_rows.c.conversation_id == conversation_id,
                message_rows.c.role.in_(("user", "assistant")),
                message_rows.c.content.icontains(query, autoescape=True),
            )
            .order_by(message_rows.c.id.desc())
            .limit(limit)
        )
        rows = await self._run(lambda c: c.execute(statement).all(), write=False)
        return [StoredMessage(*row) for row in rows]

    async def record_usage(self, *, conversation_id: int, usage: UsageRecord) -> None:
        values = _usage_values(conversation_id, usage)
        await self._run(lambda c: c.execute(usage_rows.insert(), values))

    # --- commands and the rest --------------------------------------------------------------

    async def reset(self, *, key: ConversationKey) -> None:
        def work(connection: Connection) -> None:
            state = self._upsert_conversation(connection, key)
            newest = connection.execute(
                select(func.max(message_rows.c.id)).where(
                    message_rows.c.conversation_id == state.id
                )
            ).scalar()
            connection.execute(
                update(conversations)
                .where(conversations.c.id == state.id)
                .values(window_start_id=newest or 0, summary="", summary_through_id=newest or 0)
            )

        await self._run(work)

    async def set_persona(
        self, *, key: ConversationKey, persona: str, channel: bool = True
    ) -> None:
        def work(connection: Connection) -> None:
            if channel:
                connection.execute(
                    self._insert(channel_settings)
                    .values(
                        platform=key.platform,
                        workspace=key.workspace,
                        channel=key.channel,
                        persona=persona,
                    )
                    .on_conflict_do_update(
                        index_elements=["platform", "workspace", "channel"],
                        set_={"persona": persona, "updated_at": func.now()},
                    )
                )
            state = self._upsert_conversation(connection, key)
            connection.execute(
                update(conversations).where(conversations.c.id == state.id).values(persona=persona)
            )

        await self._run(work)

    async def save_summary(self, *, conversation_id: int, summary: str, through_id: int) -> None:
        statement = (
            update(conversations)
            .where(conversations.c.id == conversation_id)
            .values(summary=summary, summary_through_id=through_id)
        )
        await self._run(lambda c: c.execute(statement))

    async def usage_since(self, *, platform: str, user_id: str, since: datetime) -> UsageTotals:
        statement = select(
            func.coalesce(func.sum(usage_rows.c.prompt_tokens + usage_rows.c.completion_tokens), 0),
            func.count(),
            func.coalesce(func.sum(usage_rows.c.cost_usd), 0.0),
        ).where(
            usage_rows.c.platform == platform,
            usage_rows.c.user_id == user_id,
            usage_rows.c.created_at >= _utc(since),
        )
        tokens, turns, cost = await self._run(lambda c: c.execute(statement).one(), write=False)
        return UsageTotals(tokens=int(tokens), turns=int(turns), cost_usd=float(cost))

    async def conversation_tokens(self, *, conversation_id: int) -> int:
        statement = select(
            func.coalesce(func.sum(usage_rows.c.prompt_tokens + usage_rows.c.completion_tokens), 0)
        ).where(usage_rows.c.conversation_id == conversation_id)
        return int(await self._run(lambda c: c.execute(statement).scalar_one(), write=False))

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
        return await self._run(lambda c: c.execute(statement).scalar(), write=False)

    # --- moderation flags -------------------------------------------------------------------

    async def record_flag(self, *, flag: FlagRecord) -> None:
        key = flag.key
        conversation = (
            select(conversations.c.id)
            .where(
                conversations.c.platform == key.platform,
                conversations.c.workspace == key.workspace,
                conversations.c.channel == key.channel,
                conversations.c.thread == key.thread,
            )
            .scalar_subquery()
        )
        # The conversation may not exist (a first message blocked): the id is then NULL.
        statement = moderation_flags.insert().values(
            conversation_id=conversation, **_flag_values(flag)
        )
        await self._run(lambda c: c.execute(statement))

    async def flags(
        self, *, since: datetime | None = None, limit: int = 50, action: str | None = None
    ) -> Sequence[StoredFlag]:
        f = moderation_flags.c
        statement = select(
            f.id,
            f.platform,
            f.workspace,
            f.channel,
            f.thread,
            f.user_id,
            f.direction,
            f.action,
            f.categories,
            f.scores,
            f.excerpt,
            f.created_at,
        )
        if since is not None:
            statement = statement.where(f.created_at >= _utc(since))
        if action is not None:
            statement = statement.where(f.action == action)
        statement = statement.order_by(f.id.desc()).limit(limit)
        rows = await self._run(lambda c: c.execute(statement).all(), write=False)
        return [stored_flag(row) for row in rows]

    # --- limits and channel settings ----------------------------------------------------------

    def _admit(
        self,
        connection: Connection,
        key: ConversationKey,
        user_id: str,
        now: datetime,
        decide: Callable[[LimitCounts], bool],
    ) -> LimitCounts:
        now = _utc(now)
        hot = self._hot
        mine = {"p_platform": key.platform, "p_user_id": user_id}
        minute_ago = now - timedelta(minutes=1)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self._postgres:
            # Two processes admitting the same user's requests take turns, so both see
            # each other's rows and a burst cannot slip past the limit.
            connection.execute(
                select(func.pg_advisory_xact_lock(_advisory_id(key.platform, user_id)))
            )
        # Everything the decision needs in one statement: one round trip.
        requests, oldest, tokens = connection.execute(
            hot.limit_counts, {**mine, "minute_ago": minute_ago, "midnight": midnight}
        ).one()
        row = connection.execute(
            hot.channel,
            {"platform": key.platform, "workspace": key.workspace, "channel": key.channel},
        ).first()
        result = LimitCounts(
            requests=int(requests),
            oldest_request=_aware(oldest) if oldest is not None else None,
            tokens_today=int(tokens),
            channel=ChannelSettings(*row) if row else ChannelSettings(),
        )
        if decide(result):
            record = {"platform": key.platform, "user_id": user_id, "created_at": now}
            if self._postgres:
                connection.execute(hot.record_request, {**record, **mine, "minute_ago": minute_ago})
            else:
                connection.execute(hot.prune_requests, {**mine, "minute_ago": minute_ago})
                connection.execute(hot.record_request, record)
        return result

    async def conversation_exists(self, *, key: ConversationKey) -> bool:
        statement = select(conversations.c.id).where(
            conversations.c.platform == key.platform,
            conversations.c.workspace == key.workspace,
            conversations.c.channel == key.channel,
            conversations.c.thread == key.thread,
        )
        found = await self._run(lambda c: c.execute(statement).first(), write=False)
        return found is not None

    async def channel(self, *, key: ConversationKey) -> ChannelSettings:
        statement = select(*CHANNEL_COLUMNS).where(_channel_is(key))
        row = await self._run(lambda c: c.execute(statement).first(), write=False)
        return ChannelSettings(*row) if row else ChannelSettings()

    async def update_channel(self, *, key: ConversationKey, **values: object) -> None:
        unknown = set(values) - _CHANNEL_FIELDS
        if unknown:
            raise TypeError(f"not channel settings: {', '.join(sorted(unknown))}")
        statement = (
            self._insert(channel_settings)
            .values(platform=key.platform, workspace=key.workspace, channel=key.channel, **values)
            .on_conflict_do_update(
                index_elements=["platform", "workspace", "channel"],
                set_={**values, "updated_at": func.now()},
            )
        )
        await self._run(lambda c: c.execute(statement))

    # --- access rules ---------------------------------------------------------------------------

    async def access_rules(self) -> Sequence[AccessRule]:
        a = access_rules.c
        statement = select(a.platform, a.kind, a.value, a.list)
        rows = await self._run(lambda c: c.execute(statement).all(), write=False)
        return [AccessRule(*row) for row in rows]

    async def add_access_rule(self, *, rule: AccessRule, added_by: str) -> None:
        statement = (
            self._insert(access_rules)
            .values(
                platform=rule.platform,
                kind=rule.kind,
                value=rule.value,
                list=rule.list,
                added_by=added_by,
            )
            .on_conflict_do_nothing()
        )
        await self._run(lambda c: c.execute(statement))

    async def remove_access_rule(self, *, rule: AccessRule) -> bool:
        a = access_rules.c
        statement = delete(access_rules).where(
            a.platform == rule.platform,
            a.kind == rule.kind,
            a.value == rule.value,
            a.list == rule.list,
        )
        return await self._run(lambda c: c.execute(statement).rowcount > 0)


_CHANNEL_FIELDS = {f.name for f in fields(ChannelSettings)}


def _channel_is(key: ConversationKey) -> Any:
    return and_(
        channel_settings.c.platform == key.platform,
        channel_settings.c.workspace == key.workspace,
        channel_settings.c.channel == key.channel,
    )


def stored_flag(row: Any) -> StoredFlag:  # a Row of moderation_flags
    """A row of moderation_flags (its flag columns at least) as a StoredFlag."""
    return StoredFlag(
        id=row.id,
        key=ConversationKey(row.platform, row.workspace, row.channel, row.thread),
        user_id=row.user_id,
        direction=row.direction,
        action=row.action,
        categories=list(row.categories),
        scores=dict(row.scores),
        excerpt=row.excerpt,
        at=_aware(row.created_at),
    )


def _utc(moment: datetime) -> datetime:
    """Aware UTC: SQLite stores the wall time as given, so every stored moment must be UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    """SQLite gives back naive times; they were stored as UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _insert_flags(
    connection: Connection, conversation_id: int, flags: Sequence[FlagRecord]
) -> None:
    if flags:
        connection.execute(
            moderation_flags.insert(),
            [{"conversation_id": conversation_id, **_flag_values(flag)} for flag in flags],
        )


def _flag_values(flag: FlagRecord) -> dict[str, Any]:
    return {
        "platform": flag.key.platform,
        "workspace": flag.key.workspace,
        "channel": flag.key.channel,
        "thread": flag.key.thread,
        "user_id": flag.user_id,
        "direction": flag.direction,
        "action": flag.action,
        "categories": flag.categories,
        "scores": flag.scores,
        "excerpt": flag.excerpt,
        "created_at": _utc(flag.at),
    }


_TURN_COLUMNS = (
    turns.c.id,
    turns.c.conversation_id,
    conversations.c.platform,
    conversations.c.workspace,
    conversations.c.channel,
    conversations.c.thread,
    turns.c.event_id,
    turns.c.user_id,
    turns.c.user_name,
    turns.c.text,
    turns.c.is_direct,
    turns.c.mentions_bot,
    turns.c.attachments,
    turns.c.address,
    turns.c.state,
    turns.c.attempts,
    turns.c.message_id,
    turns.c.reply,
    turns.c.posted,
)


def _turn(row: Any) -> Turn:  # a Row of _TURN_COLUMNS
    return Turn(
        id=row.id,
        conversation_id=row.conversation_id,
        inbound=Inbound(
            key=ConversationKey(row.platform, row.workspace, row.channel, row.thread),
            event_id=row.event_id,
            user_id=row.user_id,
            user_name=row.user_name,
            text=row.text,
            is_direct=row.is_direct,
            mentions_bot=row.mentions_bot,
            attachments=tuple(Attachment.from_json(a) for a in row.attachments or ()),
        ),
        address=dict(row.address),
        state=row.state,
        attempts=row.attempts,
        message_id=row.message_id,
        reply=row.reply,
        posted=tuple(row.posted or ()),
    )


def _store_attachments(
    connection: Connection, conversation_id: int, message_id: int, inbound: Inbound, new: NewMessage
) -> None:
    """The message's attachments as rows; images are listed on the message, so a window
    that shows it can send them again."""
    images: list[dict[str, Any]] = []
    for kept in new.attachments:
        attachment_id = connection.execute(
            attachments.insert().returning(attachments.c.id),
            {
                "conversation_id": conversation_id,
                "message_id": message_id,
                "platform": inbound.key.platform,
                "user_id": inbound.user_id,
                "kind": kept.kind,
                "name": kept.name[:256],
                "mime": kept.mime[:128],
                "size": kept.size,
                "tokens": kept.tokens,
                "data": kept.data,
            },
        ).scalar_one()
        if kept.data is not None:
            images.append({"id": attachment_id, "tokens": kept.tokens, "name": kept.name})
    if images:
        connection.execute(
            update(message_rows).where(message_rows.c.id == message_id).values(images=images)
        )


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


def _key_values(key: ConversationKey) -> dict[str, str]:
    return {
        "platform": key.platform,
        "workspace": key.workspace,
        "channel": key.channel,
        "thread": key.thread,
    }


def _usage_values(conversation_id: int, record: UsageRecord) -> dict[str, Any]:
    # One turn's records are all stamped by the engine, or none is: one executemany.
    stamped = {} if record.at is None else {"created_at": _utc(record.at)}
    return {
        **stamped,
        "conversation_id": conversation_id,
        "platform": record.platform,
        "user_id": record.user_id,
        "model": record.model,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "estimated": record.estimated,
        "cost_usd": record.cost_usd,
    }


async def _listen_on(listener: Any, heard: Callable[[str], None]) -> None:
    """LISTEN on an asyncpg connection until it is lost; `heard("")` once listening."""
    lost = asyncio.Event()
    listener.add_termination_listener(lambda _connection: lost.set())
    await listener.add_listener(
        SIGNALS, lambda _connection, _pid, _channel, message: heard(message)
    )
    heard("")
    while not lost.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lost.wait(), LISTEN_CHECK_SECONDS)
            return
        await listener.execute("SELECT 1", timeout=5)


def _advisory_id(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _SqliteThread:
    """Runs each unit of work as one transaction on a single thread with the sqlite3 driver."""

    def __init__(self, url: Any) -> None:
        self._engine: Engine = create_engine(url, connect_args={"timeout": 30})
        configure_sqlite(self._engine)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parley-sqlite")

    async def run(self, work: Work[T], *, write: bool) -> T:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._transaction, work, write
        )

    def _transaction(self, work: Work[T], write: bool) -> T:
        with self._engine.connect() as connection:
            if not write:
                # A deferred BEGIN: reads share the database with a writer (WAL).
                connection = connection.execution_options(sqlite_deferred=True)
            with connection.begin():
                return work(connection)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._engine.dispose)
        self._thread.shutdown(wait=True)
