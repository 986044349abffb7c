"""is_transient and retry_transient against real failures: killed backends, refused
connections, serialization failures, deadlocks, SQLite locks, duplicate keys."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.errors import ParleyError
from core.storage.retry import (
    MAX_DELAY,
    DatabaseUnavailable,
    backoff_delay,
    is_transient,
    retry_transient,
)

LOGGER = "core.storage.retry"

# Waits (up to 5 s) until each backend has exited, so the next query surely meets a dead one.
TERMINATE_OTHERS = text(
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and what it wraps (`orig`, else `__cause__`), for the assertions."""
    links: list[BaseException] = []
    while exc is not None and exc not in links:
        links.append(exc)
        orig = getattr(exc, "orig", None)
        exc = orig if isinstance(orig, BaseException) else exc.__cause__
    return links


class Counted:
    """Wraps an operation and counts how often retry_transient called it."""

    def __init__(self, operation: Callable[[int], Awaitable[Any]]) -> None:
        self.operation = operation
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        return await self.operation(self.calls)


@asynccontextmanager
async def engine_on(url: str, **options: Any) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(url, **options)
    try:
        yield engine
    finally:
        await engine.dispose()


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.begin() as connection:
        return (await connection.execute(text(sql), params)).scalar_one()


async def terminate_other_backends(admin: AsyncEngine) -> int:
    async with admin.connect() as connection:  # autocommit: a fresh pg_stat_activity
        killed = (await connection.execute(TERMINATE_OTHERS)).scalars().all()
    assert all(killed)
    return len(killed)


def retry_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


# --- PostgreSQL: real outages -----------------------------------------------------------------


@pytest.mark.postgres
async def test_terminated_backend_is_transient_and_the_pool_recovers_each_time(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with (
        engine_on(postgres_url, pool_size=2) as engine,
        engine_on(postgres_url, pool_size=1, isolation_level="AUTOCOMMIT") as admin,
    ):
        for round_ in range(1, 6):
            assert await scalar(engine, "SELECT CAST(:n AS int)", n=round_) == round_
            assert await terminate_other_backends(admin) >= 1

            # The pool hands out its dead connection: the first query on it fails for real.
            with pytest.raises(DBAPIError) as caught:
                await scalar(engine, "SELECT CAST(:n AS int)", n=round_)
            assert is_transient(caught.value)
            assert caught.value.connection_invalidated
            # Seen with SQLAlchemy 2.1 and asyncpg 0.30: sqlalchemy.exc.InterfaceError wrapping
            # asyncpg's InterfaceError "connection is closed" (no sqlstate).
            assert "connection is closed" in str(caught.value)

            # Again, now through retry_transient: the second attempt gets a new connection.
            assert await scalar(engine, "SELECT 1") == 1
            assert await terminate_other_backends(admin) >= 1

            async def times_ten(_: int, n: int = round_) -> Any:
                return await scalar(engine, "SELECT CAST(:n AS int) * 10", n=n)

            query = Counted(times_ten)
            assert await retry_transient(query, deadline=10, what="select") == round_ * 10
            assert query.calls == 2

    records = retry_records(caplog)
    assert [r.levelname for r in records] == ["WARNING", "INFO"] * 5
    assert all(r.exc_info is None for r in records)
    assert all(r.getMessage().startswith("select: ") for r in records)


@pytest.mark.postgres
async def test_backend_terminated_in_the_middle_of_a_query_is_retried(postgres_url: str) -> None:
    async with (
        engine_on(postgres_url, pool_size=2) as engine,
        engine_on(postgres_url, pool_size=1, isolation_level="AUTOCOMMIT") as admin,
    ):

        async def sleepy(attempt: int) -> Any:
            # The first attempt sleeps until it is killed; the retry answers at once.
            seconds = 30 if attempt == 1 else 0
            return await scalar(engine, "SELECT 7 FROM pg_sleep(:s)", s=seconds)

        async def kill_the_sleeper() -> None:
            # Autocommit, so that each look at pg_stat_activity is a fresh snapshot.
            async with admin.connect() as connection:
                for _ in range(500):
                    sleeping = await connection.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND state = 'active'"
                            " AND query LIKE 'SELECT 7 FROM pg_sleep%'"
                        )
                    )
                    if sleeping:
                        break
                    await asyncio.sleep(0.01)
                else:
                    raise AssertionError("the query never started")
                assert (await connection.execute(TERMINATE_OTHERS)).scalars().all()

        # Raw first, to see what the error is.
        killer = asyncio.create_task(kill_the_sleeper())
        with pytest.raises(DBAPIError) as caught:
            await sleepy(1)
        await killer
        assert is_transient(caught.value)
        # Seen: sqlalchemy.exc.DBAPIError (not OperationalError) -> the dialect's Error with
        # sqlstate 08003 -> asyncpg ConnectionDoesNotExistError (08003) "connection was closed
        # in the middle of operation" -> asyncpg AdminShutdownError (57P01).
        sqlstates = [getattr(link, "sqlstate", None) for link in chain(caught.value)]
        assert "57P01" in sqlstates or "08003" in sqlstates

        killer = asyncio.create_task(kill_the_sleeper())
        query = Counted(sleepy)
        assert await retry_transient(query, deadline=10, what="sleep") == 7
        await killer
        assert query.calls == 2


@pytest.mark.postgres
async def test_serialization_failure_is_transient_and_retried(postgres_url: str) -> None:
    async with engine_on(postgres_url, pool_size=2) as engine:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE counter (id int PRIMARY KEY, n int)"))
            await connection.execute(text("INSERT INTO counter VALUES (1, 0)"))

        async def increment(attempt: int) -> int:
            async with engine.connect() as connection:
                repeatable = await connection.execution_options(isolation_level="REPEATABLE READ")
                async with repeatable.begin():
                    n = (await repeatable.execute(text("SELECT n FROM counter"))).scalar_one()
                    if attempt == 1:  # someone else commits an update after our snapshot
                        await scalar(engine, "UPDATE counter SET n = n + 100 RETURNING n")
                    await repeatable.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})
                    return int(n) + 1

        with pytest.raises(DBAPIError) as caught:
            await increment(1)
        assert is_transient(caught.value)
        # Seen: plain sqlalchemy.exc.DBAPIError, not OperationalError: SQLAlchemy's asyncpg
        # dialect maps every PostgresError it has no special case for to its generic Error.
        assert type(caught.value) is DBAPIError
        assert not caught.value.connection_invalidated
        assert getattr(caught.value.orig, "sqlstate", None) == "40001"

        assert await retry_transient(Counted(increment), deadline=10, what="increment") == 201
        assert await scalar(engine, "SELECT n FROM counter") == 201


@pytest.mark.postgres
async def test_deadlock_is_transient(postgres_url: str) -> None:
    async with engine_on(postgres_url, pool_size=2) as engine:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE pair (id int PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO pair VALUES (1), (2)"))
        both_locked = asyncio.Barrier(2)

        async def lock(first: int, second: int) -> None:
            async with engine.begin() as connection:
                await connection.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
                await connection.execute(text(f"SELECT * FROM pair WHERE id = {first} FOR UPDATE"))
                await both_locked.wait()
                await connection.execute(text(f"SELECT * FROM pair WHERE id = {second} FOR UPDATE"))

        results = await asyncio.gather(lock(1, 2), lock(2, 1), return_exceptions=True)
        [deadlock] = [r for r in results if isinstance(r, BaseException)]
        assert is_transient(deadlock)
        assert type(deadlock) is DBAPIError  # not OperationalError, as above
        assert getattr(deadlock.orig, "sqlstate", None) == "40P01"


@pytest.mark.postgres
async def test_too_many_connections_is_transient_and_retried_until_one_frees(
    postgres_url: str,
) -> None:
    role = f"parley_limited_{uuid.uuid4().hex[:8]}"
    async with engine_on(postgres_url) as admin:
        async with admin.connect() as connection:
            await connection.execute(text(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1"))
            await connection.commit()
        try:
            url = make_url(postgres_url).set(username=role)
            async with engine_on(url.render_as_string(False), poolclass=NullPool) as engine:
                holder = await engine.connect()  # the role's one connection
                await holder.execute(text("SELECT 1"))
                freed = asyncio.get_running_loop().call_later(
                    0.5, lambda: asyncio.ensure_future(holder.close())
                )
                operation = Counted(lambda _: scalar(engine, "SELECT 41 + 1"))
                try:
                    assert await retry_transient(operation, deadline=10, what="a query") == 42
                finally:
                    freed.cancel()
                    await holder.close()
                assert operation.calls > 1  # refused (53300) until the holder let go
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f"DROP ROLE {role}"))
                await connection.commit()


async def test_refused_connection_is_transient_and_gives_up_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("asyncpg")
    caplog.set_level(logging.INFO, logger=LOGGER)
    # Nothing listens on port 1; the password must show up in no log line and no message.
    async with engine_on("postgresql+asyncpg://parley:s3cret-pw@127.0.0.1:1/test") as engine:
        with pytest.raises(OSError) as caught:
            await scalar(engine, "SELECT 1")
        assert type(caught.value) is ConnectionRefusedError  # raw from asyncpg, not wrapped
        assert is_transient(caught.value)

        query = Counted(lambda _: scalar(engine, "SELECT 1"))
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as gave_up:
            await retry_transient(query, deadline=0.5, what="connect")
        elapsed = time.monotonic() - started

    assert 0.5 <= elapsed < 1.0
    assert query.calls >= 4  # 0.05, 0.1, 0.2, ... at least
    assert isinstance(gave_up.value, ParleyError)
    assert type(gave_up.value.__cause__) is ConnectionRefusedError
    assert gave_up.value.attempts == query.calls
    assert not is_transient(gave_up.value)  # an outer retry must not start over
    assert "s3cret" not in str(gave_up.value)
    assert "s3cret" not in caplog.text
    [warning] = retry_records(caplog)
    assert warning.levelname == "WARNING"
    assert warning.exc_info is None
    assert "connect: database unavailable (ConnectionRefusedError: [Errno 111]" in (
        warning.getMessage()
    )


# --- SQLite: real locks and a real duplicate key -----------------------------------------------


async def test_duplicate_key_is_not_transient_and_raised_after_one_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with engine_on(f"sqlite+aiosqlite:///{tmp_path}/dup.db") as engine:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
            await connection.execute(text("INSERT INTO t VALUES (1)"))

        async def insert(_: int) -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO t VALUES (1)"))

        query = Counted(insert)
        with pytest.raises(IntegrityError) as caught:
            await retry_transient(query, deadline=10, what="insert", sleep=sleep)

    assert query.calls == 1
    assert slept == []
    assert not is_transient(caught.value)
    assert type(caught.value.orig) is sqlite3.IntegrityError
    assert retry_records(caplog) == []


def hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_locked_database_is_transient_raw_and_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = hold_write_lock(path)
    writer = sqlite3.connect(path, timeout=0, isolation_level=None)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with pytest.raises(sqlite3.OperationalError) as raw:
            writer.execute("INSERT INTO t VALUES (1)")
        assert str(raw.value) == "database is locked"
        assert raw.value.sqlite_errorname == "SQLITE_BUSY"
        assert is_transient(raw.value)

        with pytest.raises(OperationalError) as caught, engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (1)"))
        assert type(caught.value.orig) is sqlite3.OperationalError
        assert not caught.value.connection_invalidated
        assert is_transient(caught.value)
    finally:
        engine.dispose()
        writer.close()
        holder.close()


async def test_sqlite_locked_database_is_transient_through_aiosqlite(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    holder = hold_write_lock(path)
    try:
        url = f"sqlite+aiosqlite:///{path}"
        async with engine_on(url, connect_args={"timeout": 0}) as engine:
            with pytest.raises(OperationalError) as caught:
                async with engine.begin() as connection:
                    await connection.execute(text("INSERT INTO t VALUES (1)"))
        assert is_transient(caught.value)
        assert type(caught.value.orig) is sqlite3.OperationalError
    finally:
        holder.close()


def test_sqlite_locked_table_is_transient() -> None:
    # A real SQLITE_LOCKED: dropping a table that an unfinished statement is still reading.
    connection = sqlite3.connect(":memory:", isolation_level=None)
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(3)])
        reading = connection.execute("SELECT x FROM t")
        reading.fetchone()
        with pytest.raises(sqlite3.OperationalError) as locked:
            connection.execute("DROP TABLE t")
        assert str(locked.value) == "database table is locked"
        assert locked.value.sqlite_errorname == "SQLITE_LOCKED"
        assert is_transient(locked.value)
        reading.close()
    finally:
        connection.close()


async def test_sqlite_write_succeeds_once_the_lock_is_released(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    path = tmp_path / "locked.db"
    holder = hold_write_lock(path)
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        holder.execute("COMMIT")

    async def insert(_: int) -> int:
        # Fails at once while the lock is held (timeout 0), so the event loop stays free.
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO t VALUES (42)"))
            return int(connection.execute(text("SELECT count(*) FROM t")).scalar_one())

    try:
        releaser = asyncio.create_task(release_later())
        started = time.monotonic()
        query = Counted(insert)
        assert await retry_transient(query, deadline=5, what="insert") == 1
        elapsed = time.monotonic() - started
        await releaser
    finally:
        engine.dispose()
        holder.close()

    assert 0.25 <= elapsed < 2.5
    assert query.calls >= 3
    levels = [r.levelname for r in retry_records(caplog)]
    assert levels == ["WARNING", "INFO"]
    check = sqlite3.connect(path)
    try:
        assert check.execute("SELECT id FROM t").fetchall() == [(42,)]
    finally:
        check.close()


# --- classification of errors that cannot be produced here for real ----------------------------


def wrap_sqlite(orig: BaseException) -> OperationalError:
    return OperationalError("INSERT INTO t VALUES (?)", (1,), orig)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        # A real disk I/O error is hard to produce, so this one is constructed.
        (wrap_sqlite(sqlite3.OperationalError("disk I/O error")), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (wrap_sqlite(sqlite3.OperationalError("no such table: t")), False),
        (wrap_sqlite(sqlite3.OperationalError("database or disk is full")), False),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), True),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), True),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
                "[Errno 99] Cannot assign requested address"
            ),
            False,
        ),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 5432, 0, 0), "
                "[Errno 101] Network is unreachable"
            ),
            True,
        ),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), True),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), False),
        (FileNotFoundError(errno.ENOENT, "No such file"), False),
        (TimeoutError(), False),  # our own asyncio timeout, not the server's
        (ValueError("bad"), False),
        (DatabaseUnavailable("x", attempts=3, elapsed=1.0, last=ValueError()), False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classification_of_constructed_errors(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def test_a_connection_error_wrapped_by_something_else_is_not_a_database_error() -> None:
    # An HTTP client's error caused by a refused connection (the model server, say).
    class APIConnectionError(Exception):
        pass

    try:
        try:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        except ConnectionRefusedError as refused:
            raise APIConnectionError("could not reach the model") from refused
    except APIConnectionError as error:
        assert not is_transient(error)
        assert is_transient(error.__cause__)  # type: ignore[arg-type]


def test_asyncpg_errors_by_sqlstate() -> None:
    asyncpg = pytest.importorskip("asyncpg")
    exceptions = asyncpg.exceptions
    # Server start-up and crash recovery cannot be produced here; these are asyncpg's classes.
    assert is_transient(exceptions.CannotConnectNowError("the database system is starting up"))
    assert is_transient(exceptions.CrashShutdownError("terminating connection"))
    assert is_transient(exceptions.ConnectionFailureError("connection failure"))
    assert is_transient(exceptions.InterfaceError("connection is closed"))
    assert not is_transient(exceptions.InterfaceError("another operation is in progress"))
    assert not is_transient(exceptions.UniqueViolationError("duplicate key"))
    assert not is_transient(exceptions.UndefinedTableError('relation "t" does not exist'))


# --- backoff ------------------------------------------------------------------------------------


class FakeTime:
    """A clock that moves only when slept on, or when an attempt takes time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("attempt_takes", [0.0, 0.01, 0.3])
async def test_backoff_grows_is_capped_and_stops_at_the_deadline(
    attempt_takes: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    for _ in range(20):  # the jitter is random: several runs
        time_ = FakeTime()

        async def locked(_: int, time_: FakeTime = time_) -> None:
            time_.now += attempt_takes
            raise wrap_sqlite(sqlite3.OperationalError("database is locked"))

        query = Counted(locked)
        with pytest.raises(DatabaseUnavailable) as gave_up:
            await retry_transient(
                query, deadline=10, what="w", sleep=time_.sleep, clock=time_.clock
            )

        delays = time_.sleeps
        assert query.calls == len(delays) + 1
        assert gave_up.value.attempts == query.calls
        assert isinstance(gave_up.value.__cause__, OperationalError)
        # Every pause within [half, all] of min(0.05 * 2**n, 2), except the last, cut short
        # by the deadline.
        for n, delay in enumerate(delays[:-1]):
            ceiling = min(0.05 * 2**n, MAX_DELAY)
            assert ceiling / 2 <= delay <= ceiling
        assert max(delays) <= MAX_DELAY
        # Growing until the cap is reached.
        uncapped = [d for n, d in enumerate(delays[:-1]) if 0.05 * 2**n < MAX_DELAY / 2]
        assert uncapped == sorted(uncapped)
        # No attempt starts after the deadline; the last one ends at or just after it.
        elapsed = time_.now - 1000.0
        assert gave_up.value.elapsed == pytest.approx(elapsed)
        assert 10 <= elapsed <= 10 + attempt_takes + 1e-9
        assert sum(delays) + attempt_takes * query.calls == pytest.approx(elapsed)

    # One warning per outage, none per attempt.
    assert [r.levelname for r in retry_records(caplog)] == ["WARNING"] * 20


async def test_recovery_logs_one_warning_and_one_info_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    time_ = FakeTime()

    async def flaky(attempt: int) -> str:
        if attempt < 4:
            raise wrap_sqlite(sqlite3.OperationalError("database is locked"))
        return "ok"

    query = Counted(flaky)
    result = await retry_transient(
        query, deadline=10, what="w", sleep=time_.sleep, clock=time_.clock
    )
    assert result == "ok"
    assert query.calls == 4
    assert len(time_.sleeps) == 3
    warning, info = retry_records(caplog)
    assert warning.levelname == "WARNING"
    assert warning.getMessage() == (
        "w: database unavailable (OperationalError: (sqlite3.OperationalError) database is"
        " locked); retrying for up to 10.0 s"
    )
    assert info.levelname == "INFO"
    assert info.getMessage().startswith("w: database back after ")
    assert "(4 attempts)" in info.getMessage()


def test_backoff_delay_bounds() -> None:
    for failures in range(1, 60):
        ceiling = min(0.05 * 2 ** (failures - 1), MAX_DELAY)
        assert ceiling / 2 <= backoff_delay(failures) <= ceiling
