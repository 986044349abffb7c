"""The database failing for real under the three chat platforms: PostgreSQL backends killed
between and during turns, a SQLite file locked by another connection, and a database down
longer than the store retries. Every message must be answered exactly once and stored.

Each platform is driven through its real SDK against its fake (python-telegram-bot and
FakeTelegram, slack-bolt and FakeSlack over HTTP events, discord.py and FakeDiscord's
gateway), with the bot started as `parley run NAME` starts it.
"""

# The waiting helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from core.storage.database import configure_sqlite
from tests.fakes.discord_server import DM_CHANNEL_ID, FakeDiscord, dm_message_create
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, dm_message
from tests.fakes.telegram_server import FakeTelegram, free_port, post_update, private_message
from tests.helpers import eventually, states_become, stored_messages, turn_states
from tests.platforms.running import Running
from tests.platforms.test_discord_durable import running as discord_running
from tests.platforms.test_slack import SlackRunning, slack_settings
from tests.platforms.test_slack import running as slack_running
from tests.platforms.test_slack_durable import TcpProxy
from tests.platforms.test_telegram import running as telegram_running
from tests.platforms.test_telegram import telegram_settings

RETRY_LOG = "core.storage.retry"
TERMINATE_OTHERS = (
    # Waits (up to 5 s) until each backend has exited, so the next query surely meets a dead one.
    "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
ALICE = 1  # Telegram: a private chat's id is its user's id


# --- the three platforms, one private conversation each ---------------------------------------


class Platform:
    """One platform's fake, how to start the bot on it, send it a direct message from Alice
    and read what the bot shows in that conversation."""

    name = ""
    speaker = "Alice"  # how the model sees Alice's name

    def start(
        self, fake_openai: FakeOpenAI, database: str, **settings: Any
    ) -> AbstractAsyncContextManager[Running]:
        raise NotImplementedError

    async def send(self, bot: Running, text: str) -> None:
        raise NotImplementedError

    def shown(self) -> list[str]:
        """The bot's messages in the conversation, oldest first (placeholders included)."""
        raise NotImplementedError

    async def wait_shown(self, expected: list[str], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while self.shown() != expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: shown {self.shown()!r}, expected {expected!r}")
            await asyncio.sleep(0.02)


class TelegramPlatform(Platform):
    name = "telegram"

    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake

    def start(
        self, fake_openai: FakeOpenAI, database: str, **settings: Any
    ) -> AbstractAsyncContextManager[Running]:
        started: AbstractAsyncContextManager[Running] = telegram_running(
            telegram_settings(self.fake, fake_openai, database, **settings)
        )
        return started

    async def send(self, bot: Running, text: str) -> None:
        self.fake.push(private_message(text, user_id=ALICE))

    def shown(self) -> list[str]:
        return self.fake.texts_in(ALICE)


class SlackPlatform(Platform):
    name = "slack"
    speaker = "alice"  # Slack's display name

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake

    def start(
        self, fake_openai: FakeOpenAI, database: str, **settings: Any
    ) -> AbstractAsyncContextManager[Running]:
        return slack_running(slack_settings(self.fake, fake_openai, database, **settings))

    async def send(self, bot: Running, text: str) -> None:
        assert isinstance(bot, SlackRunning)
        # Bolt answers once the message is stored: a 200 is Slack's acknowledgement.
        status, _ = await bot.deliver(dm_message(text, user="U1", channel="D1"))
        assert status == 200

    def shown(self) -> list[str]:
        return [message["text"] for message in self.fake.messages_in("D1")]


class DiscordPlatform(Platform):
    name = "discord"

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake

    def start(
        self, fake_openai: FakeOpenAI, database: str, **settings: Any
    ) -> AbstractAsyncContextManager[Running]:
        return discord_running(self.fake, fake_openai, database, **settings)

    async def send(self, bot: Running, text: str) -> None:
        await self.fake.dispatch("MESSAGE_CREATE", dm_message_create(text))

    def shown(self) -> list[str]:
        return [message["content"] for message in self.fake.messages_in(DM_CHANNEL_ID)]


@pytest.fixture(params=["telegram", "slack", "discord"])
async def platform(request: pytest.FixtureRequest) -> AsyncIterator[Platform]:
    if request.param == "telegram":
        async with FakeTelegram() as telegram:
            yield TelegramPlatform(telegram)
    elif request.param == "slack":
        async with FakeSlack() as slack:
            slack.users.update({"U1": "alice"})
            yield SlackPlatform(slack)
    else:
        async with FakeDiscord() as discord:
            yield DiscordPlatform(discord)


# --- reading the database from the side --------------------------------------------------------


@asynccontextmanager
async def side_reader(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of the test's own (no pool), so the test's reads neither meet the bot's
    killed connections nor queue behind its SQLite write lock."""
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()


async def answered_exactly_once(
    reader: AsyncEngine,
    platform: Platform,
    fake_openai: FakeOpenAI,
    questions: list[str],
    answers: list[str],
) -> None:
    """One delivered turn, one model request (with every earlier exchange), one message on
    the platform and one stored exchange per question, in order."""
    await states_become(reader, ["delivered"] * len(questions))
    assert platform.shown() == answers
    requests = fake_openai.chat_requests
    assert len(requests) == len(questions)
    exchanges: list[tuple[str, str]] = []
    for question, answer, request in zip(questions, answers, requests, strict=True):
        sent = [(m["role"], m["content"]) for m in request["messages"][1:]]
        assert sent == [*exchanges, ("user", f"{platform.speaker}: {question}")]
        exchanges += [("user", f"{platform.speaker}: {question}"), ("assistant", answer)]
    assert await stored_messages(reader) == [
        pair
        for question, answer in zip(questions, answers, strict=True)
        for pair in (("user", question), ("assistant", answer))
    ]


def retry_warnings(caplog: pytest.LogCaptureFixture, *, about: str = "") -> list[str]:
    """The store's "database unavailable; retrying" warnings (one per outage it rode out)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == RETRY_LOG
        and record.levelno == logging.WARNING
        and "database unavailable" in record.getMessage()
        and about in record.getMessage()
    ]


def recoveries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == RETRY_LOG and "database back after" in record.getMessage()
    ]


# --- PostgreSQL: the bot's backends terminated -------------------------------------------------


async def terminate_backends(url: str) -> int:
    """`pg_terminate_backend` on every other backend of the database, from a connection of
    the test's own (as an administrator or a failover would); returns how many it killed. A
    backend that ends by itself between the listing and the kill (a pool closing a connection)
    makes `pg_terminate_backend` answer false: that is no failure, it is gone either way."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    admin = await asyncpg.connect(dsn)
    try:
        killed = [row[0] for row in await admin.fetch(TERMINATE_OTHERS)]
    finally:
        await admin.close()
    return sum(killed)


@pytest.mark.postgres
async def test_backends_terminated_between_and_during_turns_lose_no_message(
    platform: Platform,
    fake_openai: FakeOpenAI,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOG)
    questions = [f"question {n}" for n in range(1, 7)]
    answers = [f"answer {n}" for n in range(1, 6)]
    answers.append("The sixth answer streams while its database connections are killed.")
    for answer in answers[:5]:
        fake_openai.reply(answer)
    fake_openai.reply(answers[5], chunk_delay=0.05)  # 17 chunks: almost a second
    settings = {"PARLEY_LEASE_SECONDS": 2, "PARLEY_DELIVERY_DEADLINE": 60}
    async with (
        side_reader(postgres_url) as reader,
        platform.start(fake_openai, postgres_url, **settings) as bot,
    ):
        for n in range(5):
            await platform.send(bot, questions[n])
            await platform.wait_shown(answers[: n + 1])
            await states_become(reader, ["delivered"] * (n + 1))
            # Between two messages: the bot's pooled connections (its poll, its heartbeat)
            # die; the next message must not notice.
            assert await terminate_backends(postgres_url) >= 1

        await platform.send(bot, questions[5])
        await fake_openai.received(6)  # the model is streaming the sixth answer now
        assert await terminate_backends(postgres_url) >= 1
        assert answers[5] not in platform.shown()  # the turn was still going
        await platform.wait_shown(answers)
        await answered_exactly_once(reader, platform, fake_openai, questions, answers)

    # Each killing was met, and ridden out, by the store's retries.
    assert len(retry_warnings(caplog)) >= 6
    assert len(recoveries(caplog)) >= 6


# --- SQLite: the file locked by another connection ---------------------------------------------


class FileLock:
    """Another process's connection holding SQLite's write lock (BEGIN EXCLUSIVE)."""

    def __init__(self, url: str) -> None:
        self._path = str(make_url(url).database)
        self._connection: sqlite3.Connection | None = None

    async def take(self) -> None:
        def take() -> sqlite3.Connection:
            connection = sqlite3.connect(
                self._path, isolation_level=None, timeout=10, check_same_thread=False
            )
            connection.execute("BEGIN EXCLUSIVE")
            return connection

        self._connection = await asyncio.to_thread(take)

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.execute("ROLLBACK")
            connection.close()


@pytest.fixture
def quick_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store waits up to 10 s (busy_timeout) for a locked file before SQLite reports
    "database is locked"; a tenth of a second lets a lock of two seconds reach the store's
    own retrying. The lock, the error and the retrying are the real ones."""

    def quick(engine: Engine) -> None:
        configure_sqlite(engine)

        @event.listens_for(engine, "connect")
        def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=100")

    monkeypatch.setattr("core.storage.sql.configure_sqlite", quick)


async def logged(caplog: pytest.LogCaptureFixture, check: Callable[[], bool], what: str) -> None:
    async def seen() -> bool:
        return check()

    await eventually(seen, what, timeout=10)


@pytest.mark.usefixtures("quick_busy_timeout")
async def test_a_locked_sqlite_file_delays_but_loses_nothing(
    platform: Platform,
    fake_openai: FakeOpenAI,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=RETRY_LOG)
    questions = ["arriving while locked", "finishing while locked"]
    answers = ["Stored once the lock was gone.", "This answer ends while the file is locked."]
    fake_openai.reply(answers[0])
    fake_openai.reply(answers[1], chunk_delay=0.05)  # about half a second of streaming
    lock = FileLock(sqlite_url)
    # The lock lasts a second or two each time, well inside the retry window.
    settings = {"PARLEY_DB_RETRY_SECONDS": 15, "PARLEY_LEASE_SECONDS": 5}
    async with (
        side_reader(sqlite_url) as reader,
        platform.start(fake_openai, sqlite_url, **settings) as bot,
    ):
        # 1. A message arrives while another connection holds the file.
        await lock.take()
        try:
            sending = asyncio.create_task(platform.send(bot, questions[0]))
            await logged(
                caplog,
                lambda: bool(retry_warnings(caplog, about="accept")),
                "the accept to meet the lock",
            )
            await asyncio.sleep(1.0)  # the store keeps trying meanwhile
            assert fake_openai.chat_requests == []
        finally:
            await lock.release()
        await sending  # Slack: acknowledged (200) only now that it is stored
        await platform.wait_shown(answers[:1])
        await states_become(reader, ["delivered"])

        # 2. The file is locked while the model streams, so the turn finishes into the lock.
        await platform.send(bot, questions[1])
        await fake_openai.received(2)
        await lock.take()
        try:
            await logged(
                caplog,
                lambda: bool(retry_warnings(caplog, about="finish_turn")),
                "finish_turn to meet the lock",
            )
            await asyncio.sleep(0.5)  # the store keeps trying meanwhile
            assert await turn_states(reader) == ["delivered", "running"]
        finally:
            await lock.release()
        await platform.wait_shown(answers)
        await answered_exactly_once(reader, platform, fake_openai, questions, answers)
    assert recoveries(caplog)


# --- down longer than the store retries: the platform must redeliver ---------------------------


class Outage:
    """The test's database, and a way to make it unavailable to Parley for real: on SQLite
    another connection holds the write lock, on PostgreSQL the bot reaches the server through
    a relay that is cut (connections reset, new ones refused) and then restored."""

    def __init__(
        self,
        url: str,
        reader_url: str,
        down: Callable[[], Awaitable[None]],
        up: Callable[[], Awaitable[None]],
    ) -> None:
        self.url = url  # what the bot is given
        self.reader_url = reader_url  # what the test reads through: never cut
        self.down = down
        self.up = up


@pytest.fixture
async def outage(
    database_url: str, monkeypatch: pytest.MonkeyPatch, quick_busy_timeout: None
) -> AsyncIterator[Outage]:
    # While the database is down, polling and the gateway keep a message in memory and try
    # again after HOLD_RETRY_SECONDS (5 s); a shorter wait keeps the test short.
    monkeypatch.setattr("adapters.base.HOLD_RETRY_SECONDS", 0.3)
    monkeypatch.setattr("adapters.telegram.bot.HOLD_RETRY_SECONDS", 0.3)
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        lock = FileLock(database_url)
        yield Outage(database_url, database_url, lock.take, lock.release)
        await lock.release()
        return
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        relayed = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield Outage(relayed, database_url, proxy.cut, proxy.restore)
    finally:
        await proxy.close()


def held(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for record in caplog.records if "holding event" in record.getMessage())


async def test_telegram_webhook_answers_503_while_the_database_is_down_then_the_retry_once(
    fake_openai: FakeOpenAI, outage: Outage
) -> None:
    fake_openai.reply("Answered after the outage.")
    settings = {
        "PARLEY_DB_RETRY_SECONDS": 0.5,
        "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram/hook",
        "TELEGRAM_WEBHOOK_SECRET": "s3cret",
        "PARLEY_HTTP_PORT": free_port(),
    }
    async with (
        FakeTelegram() as telegram,
        side_reader(outage.reader_url) as reader,
        telegram_running(telegram_settings(telegram, fake_openai, outage.url, **settings)) as bot,
    ):
        url = f"http://127.0.0.1:{bot.port}/telegram/hook"
        update = private_message("are you there?", user_id=ALICE)
        telegram.remember(update)
        await outage.down()
        try:
            # Not acknowledged: Telegram keeps the update and sends it again later.
            assert await post_update(url, update, secret="s3cret", update_id=7001) == 503
            assert await post_update(url, update, secret="s3cret", update_id=7001) == 503
        finally:
            await outage.up()
        assert await turn_states(reader) == []  # nothing was stored
        assert fake_openai.chat_requests == []

        # Telegram's next attempt, now that the database is back; then one more.
        assert await post_update(url, update, secret="s3cret", update_id=7001) == 200
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == ["Answered after the outage."])
        await states_become(reader, ["delivered"])
        assert await post_update(url, update, secret="s3cret", update_id=7001) == 200
        assert await turn_states(reader) == ["delivered"]  # the claim holds: not a new turn
        assert await stored_messages(reader) == [
            ("user", "are you there?"),
            ("assistant", "Answered after the outage."),
        ]
    assert len(fake_openai.chat_requests) == 1
    assert len(telegram.calls_to("sendMessage")) == 1


@pytest.mark.parametrize("kind", ["telegram", "discord"])
async def test_messages_are_held_in_memory_while_the_database_is_down_and_answered_in_order(
    fake_openai: FakeOpenAI, outage: Outage, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Telegram polling and the Discord gateway never deliver a message twice: one that
    cannot be stored is kept in memory and stored once the database is back."""
    caplog.set_level(logging.WARNING, logger="adapters.base")
    fake_openai.reply("first")
    fake_openai.reply("second")
    async with (
        FakeTelegram() as telegram,
        FakeDiscord() as discord,
        side_reader(outage.reader_url) as reader,
    ):
        side: Platform = (
            TelegramPlatform(telegram) if kind == "telegram" else DiscordPlatform(discord)
        )
        async with side.start(fake_openai, outage.url, PARLEY_DB_RETRY_SECONDS=0.5) as bot:
            await outage.down()
            try:
                await side.send(bot, "one")
                await side.send(bot, "two")
                if kind == "telegram":
                    # Telegram has moved on: both updates are confirmed, only the bot has them.
                    last = telegram.pushed[-1]["update_id"]
                    await telegram.wait_confirmed(last)
                await logged(caplog, lambda: held(caplog) >= 2, "the message to be held")
                assert fake_openai.chat_requests == []
            finally:
                await outage.up()
            await side.wait_shown(["first", "second"])
            await answered_exactly_once(
                reader, side, fake_openai, ["one", "two"], ["first", "second"]
            )
