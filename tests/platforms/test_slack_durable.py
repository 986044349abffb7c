"""The Slack adapter on the durable pipeline: stored before acknowledged, answered in order,
delivered for sure. The real slack-bolt / slack-sdk against FakeSlack, the scripted model,
and SQLite and PostgreSQL made unavailable for real."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine, make_url

from adapters.slack.bot import COMMAND_NOT_STORED
from core.storage.database import configure_sqlite
from core.storage.tables import messages, turns
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import (
    FakeSlack,
    Fault,
    app_mention,
    channel_message,
    event_callback,
    html_error,
    next_ts,
    not_json_error,
    post_event,
    refused,
    server_error,
)
from tests.helpers import states_become, turn_states
from tests.platforms.test_slack import SECRET, running, slack_settings

CHANNEL = "C1"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users.update({"U1": "alice", "U2": "bob"})
        yield fake


def fast(**extra: Any) -> dict[str, Any]:
    """Settings that make leases, retries and deadlines short enough for a test."""
    return {
        "PARLEY_LEASE_SECONDS": 2,
        "PARLEY_DELIVERY_DEADLINE": 60,
        "PARLEY_USER_RPM": 0,  # 50 messages a minute from one user are the point here
        **extra,
    }


def socket_mode(**extra: Any) -> dict[str, Any]:
    return fast(SLACK_APP_TOKEN="xapp-test", SLACK_SIGNING_SECRET=None, **extra)


def thread_texts(slack: FakeSlack, thread: str) -> list[str]:
    return [m["text"] for m in slack.messages_in(CHANNEL, thread)]


def ok_calls(slack: FakeSlack, method: str) -> list[Any]:
    return [call for call in slack.calls_to(method) if call.ok]


# --- the Web API failing ---------------------------------------------------------------------


async def test_the_final_text_lands_once_the_web_api_recovers(
    slack: FakeSlack, fake_openai: FakeOpenAI, database_url: str
) -> None:
    answer = "The complete answer arrives in one message once Slack is back."
    # 16 chunks, about 1.6 s of streaming: well past the half second a reply holds its first
    # call (FIRST_CALL_AFTER), so the placeholder goes up and the answer is an edit. At 0.03 s
    # a chunk the answer was sometimes complete within the hold and posted whole: no edit ever.
    fake_openai.reply(answer, chunk_delay=0.1)
    async with running(slack_settings(slack, fake_openai, database_url, **fast())) as bot:
        ts = next_ts()
        status, _ = await bot.deliver(app_mention("<@UBOT> tell me", ts=ts))
        assert status == 200
        await slack.wait_calls("chat.postMessage")  # the placeholder is up
        # Slack goes bad while the answer streams and stays bad past its end: every edit
        # meets 502s with an HTML page, then a 503 whose "JSON" is not, then a closed port.
        slack.outage(html_error(502, times=4), not_json_error(503), refused(1.5))
        await slack.outage_over()
        await slack.wait_for(
            lambda: thread_texts(slack, ts) == [answer], what="the answer after the outage"
        )
        await states_become(bot.database, ["delivered"])

        [message] = slack.messages_in(CHANNEL, ts)  # one message: edited, never reposted
        assert message["versions"][0] == "…" and message["text"] == answer
        assert slack.deleted == {}
        assert len(ok_calls(slack, "chat.postMessage")) == 1
        updates = slack.calls_to("chat.update")
        assert [u.status for u in updates if not u.ok] == [502, 502, 502, 502, 503]
        [(_, back)] = slack.refusals
        # Nothing landed during the outage: the answer went out after the port reopened.
        landed = [u for u in updates if u.ok]
        assert landed and all(u.at >= back for u in landed)
        assert landed[-1].args["text"] == answer
        # The model was asked once: delivering again is not answering again.
        assert len(fake_openai.chat_requests) == 1


async def test_a_failed_placeholder_does_not_stop_the_answer(
    slack: FakeSlack, fake_openai: FakeOpenAI, database_url: str
) -> None:
    answer = "Answered even though the placeholder never appeared."
    fake_openai.reply(answer, delay=0.8, chunk_delay=0.02)  # the placeholder is tried first
    slack.outage(server_error(502), methods={"chat.postMessage"})
    async with running(slack_settings(slack, fake_openai, database_url, **fast())) as bot:
        ts = next_ts()
        status, _ = await bot.deliver(app_mention("<@UBOT> hello", ts=ts))
        assert status == 200  # stored: the placeholder is the scheduler's business
        await slack.wait_for(lambda: thread_texts(slack, ts) == [answer], what="the answer")
        await states_become(bot.database, ["delivered"])

        failed, *posted = slack.calls_to("chat.postMessage")
        assert (failed.status, failed.args["text"]) == (502, "…")
        assert len(posted) == 1 and posted[0].ok  # the answer itself went up once
        [message] = slack.messages_in(CHANNEL, ts)
        assert "…" not in message["versions"]
        assert await bot.count(messages) == 2  # the question and the answer


async def test_a_placeholder_deleted_by_someone_is_replaced_by_a_new_message(
    slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    answer = "Still answered after the placeholder was deleted."
    fake_openai.reply(answer, delay=1.0)
    async with running(slack_settings(slack, fake_openai, sqlite_url, **fast())) as bot:
        ts = next_ts()
        await bot.deliver(app_mention("<@UBOT> hello", ts=ts))
        await slack.wait_for(lambda: thread_texts(slack, ts) == ["…"], what="the placeholder")
        [placeholder] = slack.messages_in(CHANNEL, ts)
        slack.deleted[placeholder["ts"]] = slack.messages.pop(placeholder["ts"])  # a person
        await slack.wait_for(lambda: thread_texts(slack, ts) == [answer], what="the answer")
        await states_become(bot.database, ["delivered"])
        async with bot.runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            posted = (await connection.execute(select(turns.c.posted))).scalar_one()
    [message] = slack.messages_in(CHANNEL, ts)
    assert posted == [message["ts"]] != [placeholder["ts"]]  # a recovery would edit the new one
    failed = [c for c in slack.calls_to("chat.update") if not c.ok]
    assert [c.args["ts"] for c in failed] == [placeholder["ts"]]  # tried once, then posted


async def test_an_error_no_retry_can_fix_ends_the_turn_undelivered_at_once(
    slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("Nobody will read this.")
    settings = slack_settings(slack, fake_openai, sqlite_url, **fast(PARLEY_DELIVERY_DEADLINE=600))
    # Slack answers every post with `ok: false, error: is_archived` (HTTP 200).
    slack.outage(Fault(status=200, error="is_archived", seconds=30), methods={"chat.postMessage"})
    async with running(settings) as bot:
        started = time.monotonic()
        await bot.deliver(app_mention("<@UBOT> anyone?"))
        await states_become(bot.database, ["undelivered"])
        assert time.monotonic() - started < 10  # given up on, not retried for 600 s
        # The placeholder, perhaps a streamed first post, the final delivery: no retry loop.
        assert 1 <= len(slack.calls_to("chat.postMessage")) <= 3
        assert slack.messages == {}


# --- order -----------------------------------------------------------------------------------


async def test_fifty_messages_at_once_in_one_thread_are_answered_in_order(
    slack: FakeSlack, fake_openai: FakeOpenAI, database_url: str
) -> None:
    count = 50
    for n in range(1, count + 1):
        fake_openai.reply(f"answer {n}")
    settings = slack_settings(slack, fake_openai, database_url, **socket_mode())
    async with running(settings):
        await slack.socket_connected()
        thread = next_ts()
        # The first one starts the thread with a mention; the 49 others follow in it without
        # one, which only works if each is stored after the mention (the thread must exist).
        events = [app_mention("<@UBOT> question 1", ts=thread)] + [
            channel_message(f"question {n}", thread_ts=thread) for n in range(2, count + 1)
        ]
        envelopes = [await slack.send_envelope(event_callback(e)) for e in events]
        await slack.wait_for(
            lambda: (
                len(thread_texts(slack, thread)) == count and "…" not in thread_texts(slack, thread)
            ),
            timeout=90,
            what="fifty answers",
        )
        assert thread_texts(slack, thread) == [f"answer {n}" for n in range(1, count + 1)]
        assert {ack["envelope_id"] for ack in slack.acks} >= set(envelopes)

    # Each question reached the model after the whole exchange before it.
    assert len(fake_openai.chat_requests) == count
    for n, request in enumerate(fake_openai.chat_requests, start=1):
        history = [m["content"] for m in request["messages"][1:]]
        expected: list[str] = []
        for k in range(1, n):
            expected += [f"alice: question {k}", f"answer {k}"]
        assert history == [*expected, f"alice: question {n}"], f"request {n}"


# --- redeliveries ----------------------------------------------------------------------------


async def test_a_redelivered_event_is_acknowledged_and_not_answered_again(
    slack: FakeSlack, fake_openai: FakeOpenAI, database_url: str
) -> None:
    fake_openai.reply("Only once.", delay=0.5)
    async with running(slack_settings(slack, fake_openai, database_url, **fast())) as bot:
        ts = next_ts()
        event = app_mention("<@UBOT> hello", ts=ts)
        assert (await bot.deliver(event, event_id="EvOnce"))[0] == 200
        # Slack did not see that ack in time and tries again while the answer is running.
        started = time.monotonic()
        status, _ = await bot.deliver(event, event_id="EvOnce", retry_num=1)
        assert status == 200 and time.monotonic() - started < 1
        await slack.wait_for(lambda: thread_texts(slack, ts) == ["Only once."])
        await states_become(bot.database, ["delivered"])
        # And once more after the answer was delivered.
        assert (await bot.deliver(event, event_id="EvOnce", retry_num=2))[0] == 200
        await asyncio.sleep(0.3)
        assert await turn_states(bot.database) == ["delivered"]
    assert len(fake_openai.chat_requests) == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_a_redelivered_envelope_is_acknowledged_and_not_answered_again(
    slack: FakeSlack, fake_openai: FakeOpenAI, database_url: str
) -> None:
    fake_openai.reply("Only once.")
    settings = slack_settings(slack, fake_openai, database_url, **socket_mode())
    async with running(settings) as bot:
        ts = next_ts()
        payload = event_callback(app_mention("<@UBOT> hello", ts=ts), event_id="EvSock")
        first = await slack.send_envelope(payload)
        await slack.wait_ack(first)
        await slack.wait_for(lambda: thread_texts(slack, ts) == ["Only once."])
        again = await slack.send_envelope(payload, retry_attempt=1, retry_reason="timeout")
        await slack.wait_ack(again)
        await states_become(bot.database, ["delivered"])  # one turn, no second one
    assert len(fake_openai.chat_requests) == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


# --- the database unavailable at accept ------------------------------------------------------


class TcpProxy:
    """A TCP relay to PostgreSQL: `cut()` makes the server unreachable for real (open
    connections are reset, new ones refused, as in a restart or a network split) and
    `restore()` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        await self.start()

    async def close(self) -> None:
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None or not self._server.is_serving():
            writer.transport.abort()  # accepted from the backlog after the cut
            return
        # Known to `cut` from the start: a connection accepted just before a cut, still
        # connecting upstream when it came, must not outlive it.
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            self._writers.discard(writer)
            writer.transport.abort()
            return
        if writer not in self._writers:  # cut meanwhile
            upstream_writer.transport.abort()
            return
        self._writers.add(upstream_writer)
        pumps = [
            asyncio.create_task(_pump(reader, upstream_writer)),
            asyncio.create_task(_pump(upstream_reader, writer)),
        ]
        self._tasks.update(pumps)
        # When one side closes (a client's Terminate, the server going away), so does the
        # other: the client waits for the close, not for more data.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for end in (writer, upstream_writer):
            self._writers.discard(end)
            end.transport.abort()
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


class Database:
    """The test's database, and a way to make it unavailable to Parley for real."""

    def __init__(
        self, url: str, down: Callable[[], Awaitable[None]], up: Callable[[], Awaitable[None]]
    ) -> None:
        self.url = url
        self.backend = make_url(url).get_backend_name()
        self.down = down
        self.up = up


@pytest.fixture
async def database(database_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    """SQLite: another connection holds the write lock (BEGIN EXCLUSIVE) on the file.
    PostgreSQL: Parley reaches the server through a relay that is cut, then restored."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        # The store waits up to 10 s (busy_timeout) for a locked file before it reports
        # "database is locked"; a tenth of a second keeps the test short. The lock, the error
        # and the retrying until PARLEY_DB_RETRY_SECONDS are the real ones.

        def quick(engine: Engine) -> None:
            configure_sqlite(engine)

            @event.listens_for(engine, "connect")
            def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute("PRAGMA busy_timeout=100")

        monkeypatch.setattr("core.storage.sql.configure_sqlite", quick)
        holder: list[sqlite3.Connection] = []

        async def lock() -> None:
            connection = sqlite3.connect(str(url.database), isolation_level=None, timeout=10)
            connection.execute("BEGIN EXCLUSIVE")
            holder.append(connection)

        async def unlock() -> None:
            connection = holder.pop()
            connection.execute("ROLLBACK")
            connection.close()

        yield Database(database_url, lock, unlock)
        return
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        relayed = url.set(host="127.0.0.1", port=proxy.port)
        yield Database(relayed.render_as_string(hide_password=False), proxy.cut, proxy.restore)
    finally:
        await proxy.close()


@asynccontextmanager
async def unavailable(database: Database) -> AsyncIterator[None]:
    await database.down()
    try:
        yield
    finally:
        await database.up()


async def test_http_events_get_a_5xx_while_the_database_is_down_and_the_retry_is_answered(
    slack: FakeSlack, fake_openai: FakeOpenAI, database: Database
) -> None:
    fake_openai.reply("Answered after the outage.")
    settings = slack_settings(slack, fake_openai, database.url, **fast(PARLEY_DB_RETRY_SECONDS=0.5))
    async with running(settings) as bot:
        ts = next_ts()
        event = app_mention("<@UBOT> are you there?", ts=ts)
        async with unavailable(database):
            status, _ = await bot.deliver(event, event_id="EvDown")
            assert status == 503  # not acknowledged: Slack will send it again
            await asyncio.sleep(0.3)
            assert slack.calls_to("chat.postMessage") == []
        assert await turn_states(bot.database) == []  # nothing was stored
        assert fake_openai.chat_requests == []

        # Slack's retry of the same event, now that the database is back.
        status, _ = await bot.deliver(event, event_id="EvDown", retry_num=1)
        assert status == 200
        await slack.wait_for(lambda: thread_texts(slack, ts) == ["Answered after the outage."])
        await states_become(bot.database, ["delivered"])
        status, _ = await bot.deliver(event, event_id="EvDown", retry_num=2)
        assert status == 200
        await asyncio.sleep(0.3)
        assert await turn_states(bot.database) == ["delivered"]
    assert len(fake_openai.chat_requests) == 1
    assert len(slack.calls_to("chat.postMessage")) == 1


async def test_an_envelope_is_not_acknowledged_while_the_database_is_down(
    slack: FakeSlack, fake_openai: FakeOpenAI, database: Database
) -> None:
    fake_openai.reply("Answered after the outage.")
    settings = slack_settings(
        slack, fake_openai, database.url, **socket_mode(PARLEY_DB_RETRY_SECONDS=0.5)
    )
    async with running(settings) as bot:
        await slack.socket_connected()
        ts = next_ts()
        payload = event_callback(app_mention("<@UBOT> are you there?", ts=ts), event_id="EvDown")
        async with unavailable(database):
            first = await slack.send_envelope(payload)
            # Long enough for the store to give up (0.5 s of retries, plus its waits).
            await asyncio.sleep(2.5)
            assert slack.acks == []
        assert await turn_states(bot.database) == []
        again = await slack.send_envelope(payload, retry_attempt=1, retry_reason="timeout")
        await slack.wait_ack(again)
        await slack.wait_for(lambda: thread_texts(slack, ts) == ["Answered after the outage."])
        await states_become(bot.database, ["delivered"])
        assert [ack["envelope_id"] for ack in slack.acks] == [again]
        assert first != again
    assert len(fake_openai.chat_requests) == 1


async def test_a_slash_command_that_cannot_be_stored_says_so_at_once(
    slack: FakeSlack, fake_openai: FakeOpenAI, database: Database
) -> None:
    settings = slack_settings(slack, fake_openai, database.url, **fast(PARLEY_DB_RETRY_SECONDS=0.5))
    async with running(settings) as bot:
        async with unavailable(database):
            status, text = await post_event(
                bot.events_url, slack.slash_command(text="what is 2+2?"), secret=SECRET
            )
        # Slack never sends a slash command again, so the user is told in the ack itself.
        assert status == 200
        assert json.loads(text) == {"text": COMMAND_NOT_STORED, "response_type": "ephemeral"}
        assert await turn_states(bot.database) == []
    assert fake_openai.chat_requests == []


# --- /parley: private answers through response_url --------------------------------------------


async def test_a_slash_question_is_answered_privately_once_even_when_response_url_fails(
    slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    answer = "**Four**, privately."
    fake_openai.reply(answer, chunk_delay=0.02)
    slack.outage(server_error(502), server_error(503), methods={"response_url"})
    async with running(slack_settings(slack, fake_openai, sqlite_url, **fast())) as bot:
        status, _ = await post_event(
            bot.events_url, slack.slash_command(text="what is 2+2?"), secret=SECRET
        )
        assert status == 200
        [response] = await slack.wait_responses(1)
        await states_become(bot.database, ["delivered"])
        await asyncio.sleep(0.3)
        # Only the final text, once, and only for the asker: no placeholder, no fragments.
        assert response.body == {
            "text": "*Four*, privately.",
            "response_type": "ephemeral",
            "unfurl_links": False,
            "unfurl_media": False,
        }
        assert len(slack.responses) == 1 and len(slack.failed_responses) == 2
        assert slack.calls_to("chat.postMessage") == []
    assert fake_openai.chat_requests[0]["messages"][-1] == {
        "role": "user",
        "content": "alice: what is 2+2?",
    }
