"""The Telegram adapter on the durable pipeline: stored before acknowledged, answered in order,
delivered for sure. The real python-telegram-bot against FakeTelegram, the scripted model, and
both databases (every test runs on SQLite and on PostgreSQL)."""

# The waiting helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import select

from core.storage.tables import conversations, turns
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import (
    GROUP_CHAT_ID,
    Call,
    FakeTelegram,
    Fault,
    free_port,
    group_message,
    not_json_error,
    post_update,
    private_message,
    refused,
    server_error,
)
from tests.helpers import eventually, states_become, stored_messages
from tests.platforms.running import Running
from tests.platforms.test_telegram import running, telegram_settings

SECRET = "hook-secret"
HOOK_PATH = "/telegram/hook"
ALICE = 1  # a private chat's id is its user's id
BOB = 2


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


def fast(**extra: Any) -> dict[str, Any]:
    """Settings that make leases and deadlines short enough for a test."""
    return {
        "PARLEY_LEASE_SECONDS": 2,
        "PARLEY_DELIVERY_DEADLINE": 60,
        "PARLEY_USER_RPM": 0,  # fifty messages a minute from one user are the point here
        **extra,
    }


def webhook(**extra: Any) -> dict[str, Any]:
    return fast(
        TELEGRAM_WEBHOOK_URL=f"https://bot.example.com{HOOK_PATH}",
        TELEGRAM_WEBHOOK_SECRET=SECRET,
        PARLEY_HTTP_PORT=free_port(),
        **extra,
    )


async def turn_rows(bot: Running) -> list[dict[str, Any]]:
    """The turns, in the order they were accepted."""
    async with bot.runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
        rows = await connection.execute(select(turns).order_by(turns.c.id))
        return [dict(row._mapping) for row in rows]


def in_chat(calls: list[Call], chat: int) -> list[Call]:
    return [call for call in calls if call.int_arg("chat_id") == chat]


def delivery_retries(caplog: pytest.LogCaptureFixture) -> int:
    """How often the final text met a transient failure and was tried again."""
    return sum(
        1
        for record in caplog.records
        if record.name == "adapters.rendering"
        and record.getMessage().startswith("Delivering failed")
    )


# --- fifty messages at once ------------------------------------------------------------------


def expected_history(questions: list[str], answers: list[str], k: int) -> list[tuple[str, str]]:
    """What the k-th model request (from 0) must carry after the system prompt."""
    earlier = [
        turn
        for question, answer in zip(questions[:k], answers[:k], strict=True)
        for turn in (("user", f"Alice: {question}"), ("assistant", answer))
    ]
    return [*earlier, ("user", f"Alice: {questions[k]}")]


async def check_fifty(
    bot: Running,
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    questions: dict[int, str],
    answers: list[str],
) -> None:
    """Every question answered once, in the order the turns were accepted: the model saw each
    with every earlier exchange, the answers were posted in that order, each quoting its
    question, and the database holds the same history. `questions`: message_id -> text."""
    count = len(answers)
    rows = await turn_rows(bot)
    assert [row["state"] for row in rows] == ["delivered"] * count
    # The arrival order, as the database decided it: one turn per message, no duplicate.
    order = [int(row["event_id"].split(":")[1]) for row in rows]
    assert sorted(order) == sorted(questions)
    asked = [questions[message_id] for message_id in order]

    requests = fake_openai.chat_requests
    assert len(requests) == count
    for k, request in enumerate(requests):
        history = [(m["role"], m["content"]) for m in request["messages"][1:]]
        assert history == expected_history(asked, answers, k), f"model request {k + 1}"

    posted = telegram.messages_in(GROUP_CHAT_ID)
    assert [m["text"] for m in posted] == answers  # in order, and nothing else in the chat
    assert telegram.deleted == {}
    assert len(telegram.calls_to("sendMessage")) == count  # one message per answer
    for message, question_id, row in zip(posted, order, rows, strict=True):
        assert message["message"]["reply_to_message"]["message_id"] == question_id
        assert row["posted"] == [str(message["message_id"])]
    assert [row["reply"] for row in rows] == answers

    exchanges: list[tuple[str, str]] = []
    for question, answer in zip(asked, answers, strict=True):
        exchanges += [("user", question), ("assistant", answer)]
    assert await stored_messages(bot.database) == exchanges
    assert await bot.count(conversations) == 1


async def test_fifty_updates_waiting_at_start_are_answered_in_order(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database_url: str
) -> None:
    count = 50
    answers = [f"answer {n}" for n in range(1, count + 1)]
    for answer in answers:
        fake_openai.reply(answer)
    # Fifty messages wait on Telegram's side before the bot polls: its first getUpdates
    # fetches them all in one batch, and PTB hands them over concurrently.
    questions: dict[int, str] = {}
    for n in range(1, count + 1):
        update = group_message(f"@parley_bot question {n}")
        questions[update["message"]["message_id"]] = f"question {n}"
        telegram.push(update)
    async with running(telegram_settings(telegram, fake_openai, database_url, **fast())) as bot:
        await telegram.wait_for(
            lambda: telegram.texts_in(GROUP_CHAT_ID) == answers,
            timeout=90,
            what="fifty answers",
        )
        await states_become(bot.database, ["delivered"] * count)
        # The arrival order is the order Telegram sent them in.
        rows = await turn_rows(bot)
        assert [int(r["event_id"].split(":")[1]) for r in rows] == list(questions)
        await check_fifty(bot, telegram, fake_openai, questions, answers)
        assert telegram.pending == []  # all confirmed


async def test_fifty_webhook_requests_at_once_are_answered_in_their_accepted_order(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database_url: str
) -> None:
    count = 50
    answers = [f"answer {n}" for n in range(1, count + 1)]
    for answer in answers:
        fake_openai.reply(answer)
    settings = telegram_settings(telegram, fake_openai, database_url, **webhook())
    async with running(settings) as bot:
        url = f"http://127.0.0.1:{bot.port}{HOOK_PATH}"
        updates = [group_message(f"@parley_bot question {n}") for n in range(1, count + 1)]
        questions = {u["message"]["message_id"]: f"question {n + 1}" for n, u in enumerate(updates)}
        for update in updates:
            telegram.remember(update)
        # Telegram opens up to 40 connections to a webhook (max_connections' default) and
        # sends on each without waiting for the others: the bot decides the order.
        connections = asyncio.Semaphore(40)

        async def send(update: dict[str, Any]) -> int:
            async with connections:
                return await post_update(url, update, secret=SECRET)

        statuses = await asyncio.gather(*(send(update) for update in updates))
        assert statuses == [200] * count  # each acknowledged only once stored
        assert len(await turn_rows(bot)) == count
        await telegram.wait_for(
            lambda: telegram.texts_in(GROUP_CHAT_ID) == answers,
            timeout=90,
            what="fifty answers",
        )
        await states_become(bot.database, ["delivered"] * count)
        await check_fifty(bot, telegram, fake_openai, questions, answers)
    assert telegram.calls_to("getUpdates") == []


# --- the Bot API failing while the answer is delivered ----------------------------------------

# The outage lasts OUTAGE seconds from the first call it meets (an edit while the answer
# streams), and the answer finishes streaming about 1.7 s in. StreamingReply retries the
# final text after 0.5, 1, 2, 4, 8 s, then every 15 s (rendering.py FIRST_BACKOFF, doubling
# up to MAX_BACKOFF): a 3.5-second outage makes the final text fail three or four times with
# growing pauses before it lands. A 30-second outage would take the same path through the
# same loop (only more turns of it, the last ones at the 15 s cap) for 30 s of test time.
OUTAGE = 3.5
ANSWER = "The complete answer, which streams for a moment, lands once Telegram is back in."

OUTAGES: dict[str, Callable[[], Fault]] = {
    "502": lambda: server_error(502, seconds=OUTAGE),
    "refused": lambda: refused(OUTAGE),
    "503-not-json": lambda: not_json_error(503, seconds=OUTAGE),
}


@pytest.mark.parametrize("fault", list(OUTAGES))
async def test_the_final_text_lands_in_one_message_once_the_bot_api_is_back(
    telegram: FakeTelegram,
    fake_openai: FakeOpenAI,
    database_url: str,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="adapters.rendering")
    # 21 chunks, about 1.7 s: well past the half second the first call is held, so the first
    # words go up before the answer is complete (at 0.6 s the margin was a tenth of a second).
    fake_openai.reply(ANSWER, chunk_delay=0.08)
    async with running(telegram_settings(telegram, fake_openai, database_url, **fast())) as bot:
        telegram.push(private_message("tell me"))
        await telegram.wait_for(lambda: len(telegram.messages_in(ALICE)) == 1, what="first words")
        # The Bot API goes bad while the answer streams and stays bad past its end.
        outage_from = time.monotonic()
        telegram.outage(OUTAGES[fault]())
        await telegram.outage_over(timeout=20)
        await telegram.wait_for(
            lambda: telegram.texts_in(ALICE) == [ANSWER], timeout=20, what="the whole answer"
        )
        await states_become(bot.database, ["delivered"])
        assert await stored_messages(bot.database) == [("user", "tell me"), ("assistant", ANSWER)]

    # One message: the first words, edited into the whole answer; never posted twice.
    [message] = telegram.messages_in(ALICE)
    assert ANSWER.startswith(message["versions"][0]) and message["versions"][0] != ANSWER
    assert message["versions"][-1] == ANSWER
    assert telegram.deleted == {}
    assert len(telegram.calls_to("sendMessage")) == 1
    edits = telegram.calls_to("editMessageText")
    failed = [edit for edit in edits if not edit.ok]
    if fault == "refused":
        [(start, back)] = telegram.refusals
        assert back - start >= OUTAGE
        assert failed == []  # a refused connection never reaches the fake
    else:
        status = 502 if fault == "502" else 503
        assert failed and {edit.status for edit in failed} == {status}
        start, back = failed[0].at, failed[-1].at
    # Nothing landed during the outage; the answer went out after it, in the last edit.
    assert not [edit for edit in edits if edit.ok and start <= edit.at <= back]
    assert edits[-1].ok and edits[-1].at >= back and edits[-1].args["text"] == ANSWER
    # Several tries of the final text, with backoff, until the outage was over.
    assert delivery_retries(caplog) >= 3
    assert edits[-1].at - outage_from >= OUTAGE
    # Delivering again is not answering again.
    assert len(fake_openai.chat_requests) == 1


async def test_a_failed_first_message_does_not_stop_the_answer(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database_url: str
) -> None:
    answer = "Answered even though the first message could not be sent."
    fake_openai.reply(answer, chunk_delay=0.02)
    # Telegram shows "typing…" rather than a placeholder: the first sendMessage carries the
    # first words, and that is the call that fails.
    telegram.outage(server_error(502), methods={"sendMessage"})
    async with running(telegram_settings(telegram, fake_openai, database_url, **fast())) as bot:
        telegram.push(private_message("hello"))
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == [answer], what="the answer")
        await states_become(bot.database, ["delivered"])
        assert await stored_messages(bot.database) == [("user", "hello"), ("assistant", answer)]
        [row] = await turn_rows(bot)

    failed, *sent = telegram.calls_to("sendMessage")
    assert failed.status == 502 and not failed.ok
    assert len(sent) == 1 and sent[0].ok  # exactly one answer in the chat
    [message] = telegram.messages_in(ALICE)
    assert row["posted"] == [str(message["message_id"])]
    assert message["versions"][-1] == answer
    assert len(fake_openai.chat_requests) == 1


async def test_a_blocked_bot_gives_up_at_once_and_keeps_answering_other_chats(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database_url: str
) -> None:
    unread = "Nobody will read this answer, however long it streams."
    fake_openai.reply(unread, delay=1.0, chunk_delay=0.03)  # long enough to show "typing…"
    fake_openai.reply("Hello Bob.")
    fake_openai.reply("Still here, Bob.")
    telegram.block(ALICE)  # Alice blocked the bot: every call to her chat answers 403
    settings = telegram_settings(
        telegram, fake_openai, database_url, **fast(PARLEY_DELIVERY_DEADLINE=600)
    )
    async with running(settings) as bot:
        telegram.push(private_message("anyone?", user_id=ALICE))
        await fake_openai.received(1)
        telegram.push(private_message("hi", user_id=BOB, first_name="Bob", username="bob"))
        await telegram.wait_for(lambda: telegram.texts_in(BOB) == ["Hello Bob."], what="Bob")

        async def alice_undelivered() -> bool:
            rows = await turn_rows(bot)
            return any(
                r["event_id"].startswith(f"{ALICE}:") and r["state"] == "undelivered" for r in rows
            )

        started = time.monotonic()
        await eventually(alice_undelivered, "Alice's turn to end undelivered")
        # Given up on as soon as the answer was complete, not retried for 600 s.
        assert time.monotonic() - started < 5
        calls_to_alice = len(in_chat(telegram.calls, ALICE))

        telegram.push(private_message("still there?", user_id=BOB, first_name="Bob"))
        await telegram.wait_for(
            lambda: telegram.texts_in(BOB) == ["Hello Bob.", "Still here, Bob."], what="Bob again"
        )
        # Alice's turn stays undelivered; Bob's two are delivered.
        await states_become(bot.database, ["undelivered", "delivered", "delivered"])
        rows = await turn_rows(bot)
        assert [r["event_id"].split(":")[0] for r in rows] == [str(ALICE), str(BOB), str(BOB)]
        # Nothing more was sent to Alice after her turn ended.
        assert len(in_chat(telegram.calls, ALICE)) == calls_to_alice

    to_alice = in_chat(telegram.calls, ALICE)
    assert to_alice and all(call.status == 403 for call in to_alice)
    assert telegram.texts_in(ALICE) == []
    # "typing…" once (it is renewed every 4.5 s, and the first words stop it).
    assert len([call for call in to_alice if call.method == "sendChatAction"]) == 1
    assert len(fake_openai.chat_requests) == 3


async def test_a_blocked_chat_is_not_called_again_while_the_answer_streams(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database_url: str
) -> None:
    # 14 chunks over about 0.4 s; updates are shown every 0.05 s (telegram_settings).
    fake_openai.reply("Nobody will read this answer, however long it streams.", chunk_delay=0.03)
    telegram.block(ALICE)
    settings = telegram_settings(
        telegram, fake_openai, database_url, **fast(PARLEY_DELIVERY_DEADLINE=600)
    )
    async with running(settings) as bot:
        telegram.push(private_message("anyone?", user_id=ALICE))
        await states_become(bot.database, ["undelivered"])
    # A 403 means the user blocked the bot: no later call can succeed. The first refused post
    # should end the streaming (and the final delivery may try once more), not be repeated
    # for every update of the stream: with the default interval of 1 s, a 30-second answer
    # sends 30 refused messages, each logged with a traceback.
    sends = [call.args["text"] for call in in_chat(telegram.calls_to("sendMessage"), ALICE)]
    assert 1 <= len(sends) <= 2, sends
