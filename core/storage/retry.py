"""Riding out short database outages: which errors are worth retrying, and the retry loop.

A PostgreSQL restart or failover, an administrator's `pg_terminate_backend`, a serialization
failure, or a SQLite writer holding the lock for a moment are not bugs: the same transaction,
run again a little later, will most likely succeed. `is_transient` tells those errors apart
from the rest (constraint violations, bad SQL, bad data, anything not from the database), and
`retry_transient` runs an operation again with backoff until a deadline, then gives up with
`DatabaseUnavailable` so callers can tell "the database stayed down" apart from a bug.

asyncpg is an optional extra, so nothing here imports it: its errors are recognised by their
`sqlstate` attribute and their class names.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import re
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from core.errors import ParleyError

__all__ = ["DatabaseUnavailable", "backoff_delay", "is_transient", "retry_transient"]

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY = 0.05
"""Seconds before the first retry; each later delay doubles, up to `MAX_DELAY`."""

MAX_DELAY = 2.0
"""The longest pause between two attempts, in seconds."""


class DatabaseUnavailable(ParleyError):
    """The database stayed unreachable (or busy) until the retry deadline passed.

    Raised by `retry_transient` from the last transient error, which is its `__cause__`.

    Attributes:
        what: The operation that was being retried, as the caller named it.
        attempts: How many times the operation was called.
        elapsed: Seconds from the first call to giving up.
    """

    def __init__(self, what: str, *, attempts: int, elapsed: float, last: BaseException) -> None:
        super().__init__(
            f"{what}: the database stayed unavailable for {elapsed:.1f} s "
            f"({attempts} attempts; last error {_describe(last)})"
        )
        self.what = what
        self.attempts = attempts
        self.elapsed = elapsed


# SQLSTATEs worth a retry: the server went away or asked us to try the transaction again.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: server restart, failover, pg_terminate_backend
        "57P02",  # crash_shutdown: another backend crashed, the server is resetting
        "57P03",  # cannot_connect_now: the server is starting up or in recovery
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections: other clients hold them for now
    }
)
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08"})  # connection exceptions

# asyncpg class names, for errors that carry no sqlstate (or in case one is ever missing).
_TRANSIENT_ASYNCPG_CLASSES = frozenset(
    {
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        "PostgresConnectionError",
        "ClientCannotConnectError",
        "AdminShutdownError",
        "CrashShutdownError",
        "CannotConnectNowError",
        "SerializationError",
        "DeadlockDetectedError",
        "TooManyConnectionsError",
    }
)

# Socket errors of a server that is down, restarting or unreachable for a while.
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.EHOSTDOWN,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)

# SQLite result codes (the primary code is the low byte of the extended one).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_IOERR = 10
_TRANSIENT_SQLITE_CODES = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR})
_TRANSIENT_SQLITE_MESSAGES = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "disk i/o error",
)

# Modules whose exceptions may wrap the real cause in `__cause__`. Anything else (our own
# errors, an HTTP client's connection error) is not followed: it is not a database error.
_DATABASE_MODULES = ("sqlalchemy", "asyncpg", "sqlite3", "aiosqlite", "psycopg", "psycopg2")

_ERRNO_IN_MESSAGE = re.compile(r"\[Errno (-?\d+)\]")


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is a database error worth retrying, because the database will likely be back.

    True for a lost or refused PostgreSQL connection (SQLSTATE class 08, 57P01, 57P02, 57P03,
    asyncpg's ConnectionDoesNotExistError, its InterfaceError "connection is closed", a refused
    or reset socket), a serialization failure (40001) or deadlock (40P01), an SQLAlchemy
    `DBAPIError` whose connection was invalidated, and SQLite "database is locked" (SQLITE_BUSY,
    SQLITE_LOCKED) or "disk I/O error" (SQLITE_IOERR). SQLAlchemy's wrappers are looked through
    (`orig`, then `__cause__`).

    False for everything else: integrity, programming and data errors, a timeout of our own,
    `DatabaseUnavailable` (the retrying was already done), anything not from the database.

    Args:
        exc: The exception an operation on the database raised.

    Returns:
        True when running the same transaction again later is likely to succeed.
    """
    return any(_transient_alone(link) for link in _database_chain(exc))


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    deadline: float,
    what: str,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Run `operation`, again and again while it fails with a transient database error.

    The pauses between attempts grow from 0.05 s, doubling up to 2 s, each shortened by a
    random part of up to half (so processes that lost the database together do not come back
    in step), and never past the deadline. One WARNING is logged when the outage starts and
    one INFO line when the operation succeeds again; nothing per attempt.

    `operation` must be safe to run again: one whole transaction (a connection lost during
    COMMIT leaves it unknown whether the commit happened, so writes should be idempotent or
    tolerate running twice).

    Args:
        operation: Starts the work afresh each time it is called (a new transaction on a
            connection taken from the pool, not one that already failed).
        deadline: Seconds, from the first call, after which no new attempt is started.
        what: Names the operation in log lines and in `DatabaseUnavailable`.
        sleep: Waits the given number of seconds (injectable for tests).
        clock: Monotonic seconds (injectable for tests).

    Returns:
        What `operation` returned.

    Raises:
        DatabaseUnavailable: The operation still failed with a transient error when the
            deadline passed; the last error is its `__cause__`.
        Exception: Any error that is not transient, at once, unchanged.
    """
    start = clock()
    give_up_at = start + deadline
    attempts = 0
    while True:
        attempts += 1
        try:
            result = await operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = clock()
            if attempts == 1:
                log.warning(
                    "%s: database unavailable (%s); retrying for up to %.1f s",
                    what,
                    _describe(exc),
                    deadline,
                )
            remaining = give_up_at - now
            if remaining <= 0:
                raise DatabaseUnavailable(
                    what, attempts=attempts, elapsed=now - start, last=exc
                ) from exc
            await sleep(min(backoff_delay(attempts), remaining))
            continue
        if attempts > 1:
            log.info(
                "%s: database back after %.2f s (%d attempts)", what, clock() - start, attempts
            )
        return result


def backoff_delay(failures: int) -> float:
    """The pause after the `failures`-th failed attempt in a row, with jitter.

    Args:
        failures: Failed attempts so far (1 after the first failure).

    Returns:
        Seconds: between half and all of min(0.05 * 2 ** (failures - 1), 2).
    """
    ceiling = min(FIRST_DELAY * 2.0 ** min(failures - 1, 32), MAX_DELAY)
    return ceiling * random.uniform(0.5, 1.0)


def _database_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it wraps, for as long as the wrappers are database errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ParleyError):
            return  # our own decision (e.g. DatabaseUnavailable), never retried again
        seen.add(id(current))
        yield current
        if type(current).__module__.split(".")[0] not in _DATABASE_MODULES:
            return
        # SQLAlchemy's DBAPIError (and its emulated DBAPI errors for asyncpg) keep the
        # driver's error in `orig`; the drivers' own wrappers use `raise ... from`.
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def _transient_alone(exc: BaseException) -> bool:
    """Whether this one exception (not what it wraps) is a transient database error."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    sqlstate = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    if isinstance(sqlstate, str) and (
        sqlstate in _TRANSIENT_SQLSTATES or sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES
    ):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    if type(exc).__module__.startswith("asyncpg"):
        if names & _TRANSIENT_ASYNCPG_CLASSES:
            return True
        if "InterfaceError" in names and "connection is closed" in str(exc):
            return True
    if isinstance(exc, sqlite3.Error):
        return _sqlite_transient(exc)
    if isinstance(exc, OSError):
        return _socket_transient(exc)
    return False


def _sqlite_transient(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in _TRANSIENT_SQLITE_CODES:
        return True
    message = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and any(
        known in message for known in _TRANSIENT_SQLITE_MESSAGES
    )


def _socket_transient(exc: OSError) -> bool:
    if isinstance(exc, socket.gaierror):
        # "Temporary failure in name resolution" (DNS during a failover); not an unknown name.
        return exc.errno == socket.EAI_AGAIN
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe
        return True
    if exc.errno is not None:
        return exc.errno in _TRANSIENT_ERRNOS
    # asyncio's create_connection, when every address of a host (::1 and 127.0.0.1 for
    # "localhost") failed differently, raises a plain OSError("Multiple exceptions: ...")
    # with no errno; it is transient when each of them was.
    found = [int(number) for number in _ERRNO_IN_MESSAGE.findall(str(exc))]
    return bool(found) and all(number in _TRANSIENT_ERRNOS for number in found)


_URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^@/\s]*@", re.IGNORECASE)
_PASSWORD_SETTING = re.compile(r"(password\s*=\s*)\S+", re.IGNORECASE)


def _describe(exc: BaseException) -> str:
    """The error's type and the first line of its message, without credentials or SQL."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    first = _URL_CREDENTIALS.sub(r"\1***@", first)
    first = _PASSWORD_SETTING.sub(r"\1***", first)
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
