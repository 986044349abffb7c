"""The engine-overhead benchmark with proposed fixes patched in at run time.

Nothing in the project is edited: each patch replaces a constant, a store method or the store
itself in this process only, so the figures of a proposal can be had before writing it.

    python -m bench.what_if --patch one-hop-sqlite,page-size=512 --database sqlite
    python -m bench.what_if --patch cap-pg-turns --database postgres --history 10
    python -m bench.what_if --count-handoffs --database sqlite --history 10,1000

Patches:
    one-hop-sqlite  SQLite store calls run as synchronous SQLAlchemy (pysqlite) on one worker
                    thread: one thread handoff per store call instead of 3-4 per statement.
                    Reads begin a deferred transaction instead of BEGIN IMMEDIATE.
    page-size=N     core.context.PAGE_SIZE = N (64 in the project).
    cap-pg-turns    On PostgreSQL, at most half the pool's connections hold a turn lock, so the
                    turns' own statements always find a connection.
Any other option is the benchmark's (see `python -m bench.engine_overhead --help`). Run it from
the repository's top directory with `python -m`, so that `bench` is importable.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy import Connection, and_, create_engine, event, func, select
from sqlalchemy.engine import Engine as SyncEngine

import core.context
from bench import engine_overhead as bench
from bots.bootstrap import build_engine
from core.config import Settings
from core.events import ConversationKey
from core.storage import SqlStore, create_database_engine, migrate
from core.storage.base import ConversationState, NewMessage, StoredMessage, UsageRecord
from core.storage.sql import _message_values, _usage_insert
from core.storage.tables import channel_settings, conversations, processed_events
from core.storage.tables import messages as message_rows

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# one-hop-sqlite: a prototype of the proposed SQLite store (same statements as core/storage/sql.py)


def sqlite_sync_engine(url: str) -> SyncEngine:
    """A pysqlite engine with the pragmas of core.storage.database, deferred BEGIN for reads."""
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=10000"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class OneHopSqliteStore(SqlStore):
    """The turn's store calls as one job each on a single SQLite thread."""

    def __init__(self, engine: Any, url: str) -> None:
        super().__init__(engine)
        self.sync = sqlite_sync_engine(url)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")

    async def close(self) -> None:
        self._thread.shutdown()
        self.sync.dispose()
        await super().close()

    async def _run(self, job: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, job)

    async def claim_event(self, *, platform: str, event_id: str) -> bool:
        statement = (
            self._insert(processed_events)
            .values(platform=platform, event_id=event_id)
            .on_conflict_do_nothing()
            .returning(processed_events.c.event_id)
        )

        def job() -> bool:
            with self.sync.begin() as connection:
                return connection.execute(statement).first() is not None

        return await self._run(job)

    def _upsert(self, connection: Connection, key: ConversationKey) -> ConversationState:
        row = connection.execute(
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
        ).one()
        channel_persona = connection.execute(
            select(channel_settings.c.persona).where(
                channel_settings.c.platform == key.platform,
                channel_settings.c.workspace == key.workspace,
                channel_settings.c.channel == key.channel,
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
        def job() -> tuple[ConversationState, int]:
            with self.sync.begin() as connection:
                state = self._upsert(connection, key)
                message_id = connection.execute(
                    message_rows.insert()
                    .values(conversation_id=state.id, **_message_values(message))
                    .returning(message_rows.c.id)
                ).scalar_one()
            return state, message_id

        return await self._run(job)

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

        def job() -> list[StoredMessage]:
            with self.sync.connect().execution_options(read_only=True) as connection:
                return [StoredMessage(*row) for row in connection.execute(statement)]

        return await self._run(job)

    async def finish_turn(
        self, *, conversation_id: int, messages: Sequence[NewMessage], usage: UsageRecord
    ) -> None:
        rows = [{"conversation_id": conversation_id, **_message_values(m)} for m in messages]

        def job() -> None:
            with self.sync.begin() as connection:
                if rows:
                    connection.execute(message_rows.insert(), rows)
                connection.execute(_usage_insert(conversation_id, usage))

        await self._run(job)


@asynccontextmanager
async def open_one_hop_runtime(
    url: str, args: argparse.Namespace, model: bench.InstantModel
) -> AsyncIterator[tuple[Any, SqlStore]]:
    if not url.startswith("sqlite"):
        async with bench_open_runtime(url, args, model) as runtime:
            yield runtime
        return
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATABASE_URL=url,
        PARLEY_MODEL=args.model,
        PARLEY_CONTEXT_TOKENS=args.context_tokens,
    )
    engine = create_database_engine(settings.database_url)
    await migrate(engine)
    store = OneHopSqliteStore(engine, url.replace("sqlite+aiosqlite", "sqlite"))
    try:
        async with build_engine(settings, model=model, store=store) as runtime:
            yield runtime.engine, store
    finally:
        await store.close()


bench_open_runtime = bench.open_runtime


# ---------------------------------------------------------------------------------------------
# cap-pg-turns


def cap_postgres_turns() -> None:
    """Wrap SqlStore.turn_lock: on PostgreSQL, a semaphore of half the pool's capacity first."""
    original = SqlStore.turn_lock
    semaphores: dict[int, asyncio.Semaphore] = {}

    @asynccontextmanager
    async def turn_lock(self: SqlStore, key: ConversationKey) -> AsyncIterator[None]:
        if self.engine.dialect.name != "postgresql":
            async with original(self, key):
                yield
            return
        pool: Any = self.engine.sync_engine.pool
        capacity = pool.size() + pool._max_overflow
        semaphore = semaphores.setdefault(id(self), asyncio.Semaphore(capacity // 2))
        async with semaphore, original(self, key):
            yield

    SqlStore.turn_lock = turn_lock  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# count-handoffs


def count_aiosqlite_handoffs() -> None:
    """Count each job aiosqlite sends to its connection's thread, by the store call it is in."""
    import aiosqlite.core

    original: Callable[..., Any] = aiosqlite.core.Connection._execute

    async def counted(self: Any, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        running = bench.CURRENT_STAGE.get()
        if running is not None:
            timer, stage = running
            timer.handoffs[stage] += 1
        return await original(self, fn, *args, **kwargs)

    aiosqlite.core.Connection._execute = counted  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------
# Main


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--patch", default="", help="comma-separated patches (see the docstring)")
    parser.add_argument("--count-handoffs", action="store_true")
    ours, rest = parser.parse_known_args(argv)
    args = bench.parse_args(rest)

    for patch in filter(None, ours.patch.split(",")):
        name, _, value = patch.partition("=")
        if name == "one-hop-sqlite":
            bench.open_runtime = open_one_hop_runtime
        elif name == "page-size":
            core.context.PAGE_SIZE = int(value)
        elif name == "cap-pg-turns":
            cap_postgres_turns()
        else:
            parser.error(f"unknown patch: {patch}")
    if ours.count_handoffs:
        count_aiosqlite_handoffs()
        args.breakdown = True
    print(f"patches: {ours.patch or 'none'}")
    asyncio.run(bench.main(args))


if __name__ == "__main__":
    main()
