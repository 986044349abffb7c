"""FakeTelegram against the real python-telegram-bot `Application`, without Parley's code."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from telegram import BotCommand, MessageEntity, Update
from telegram.error import (
    BadRequest,
    Conflict,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
)
from telegram.ext import Application, ContextTypes, MessageHandler, filters
from telegram.warnings import PTBDeprecationWarning

from tests.fakes.telegram_server import (
    BOT_ID,
    GROUP_CHAT_ID,
    FakeTelegram,
    dropped,
    edited_message,
    free_port,
    group_message,
    not_json_error,
    post_update,
    private_message,
    refused,
    server_error,
)

TOKEN = "123:ABC"
Callback = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


@pytest.fixture(autouse=True)
def timedelta_periods(monkeypatch: pytest.MonkeyPatch) -> None:
    """PTB 22.x warns (PTBDeprecationWarning) whenever an int time period is read, and
    `RetryAfter.__init__` reads one: under `filterwarnings = error` that warning replaces the
    RetryAfter. Opting in to timedelta periods, as the adapter must, avoids it."""
    monkeypatch.setenv("PTB_TIMEDELTA", "true")


def build(fake: FakeTelegram, token: str = TOKEN) -> Application[Any, Any, Any, Any, Any, Any]:
    return (
        Application.builder()
        .token(token)
        .base_url(fake.base_url)
        .base_file_url(fake.base_file_url)
        .concurrent_updates(True)
        .build()
    )


async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    assert update.message is not None and update.message.text is not None
    await update.message.reply_text(update.message.text)


@asynccontextmanager
async def polling(
    fake: FakeTelegram, callback: Callback = echo
) -> AsyncIterator[Application[Any, Any, Any, Any, Any, Any]]:
    """The real Application, long-polling the fake; stopped cleanly on exit."""
    app = build(fake)
    app.add_handler(MessageHandler(filters.TEXT, callback))
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_polling(poll_interval=0, timeout=1)
        try:
            yield app
        finally:
            await app.updater.stop()
            await app.stop()


def other_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]


# --- (a) long polling, replies, redelivery, concurrency ------------------------------------


async def test_polling_echo_and_redelivery() -> None:
    async with FakeTelegram() as fake:
        async with polling(fake) as app:
            assert app.bot.username == "parley_bot"
            update = private_message("hello")
            await fake.wait_calls("getUpdates")  # the first poll is held by the fake...
            pushed_at = time.monotonic()
            update_id = fake.push(update)
            [call] = await fake.wait_calls("sendMessage")
            # ...and answered by the push, not by its timeout.
            poll = next(c for c in fake.calls_to("getUpdates") if c.response)
            assert poll.at < pushed_at and [u["update_id"] for u in poll.response] == [update_id]
            # PTB posts form fields, every value a string: chat_id "1", no reply in private.
            assert call.args == {"chat_id": "1", "text": "hello"}
            assert poll.args["offset"] == "0" and poll.args["timeout"] == "1"
            [reply] = fake.messages_in(1)
            assert reply["text"] == "hello" and reply["message"]["from"]["id"] == BOT_ID

            # The bot confirms an update with its next poll (offset = update_id + 1). A
            # redelivery of an update_id below the offset is processed again: PTB does not
            # deduplicate, and its offset follows the last update received, even backwards.
            second = fake.push(private_message("again"))
            await fake.wait_confirmed(second)
            fake.push(update, update_id=update_id)
            await fake.wait_calls("sendMessage", 3)
            assert fake.delivered == [update_id, second, update_id]
            assert [c.args["text"] for c in fake.calls_to("sendMessage")][-1] == "hello"
            await fake.wait_for(
                lambda: fake.calls_to("getUpdates")[-1].int_arg("offset") == update_id + 1,
                what="the offset going back",
            )
            third = fake.push(private_message("third"))
            await fake.wait_calls("sendMessage", 4)
            assert third == second + 1
        # The updater's stop confirms what it fetched with a last getUpdates (timeout 0).
        last = fake.calls_to("getUpdates")[-1]
        assert last.args["timeout"] == "0" and last.int_arg("offset") == third + 1
        assert fake.offset == third + 1 and fake.pending == []
    assert other_tasks() == []


async def test_concurrent_updates_run_in_parallel(fake: FakeTelegram) -> None:
    in_flight: list[int] = []
    both = asyncio.Event()

    async def slow(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        in_flight.append(update.update_id)
        if len(in_flight) == 2:
            both.set()
        async with asyncio.timeout(3):
            await both.wait()  # only returns if the other update is being handled meanwhile
        await update.message.reply_text(f"done {update.update_id}")

    async with polling(fake, slow):
        fake.push(private_message("one", user_id=1))
        fake.push(private_message("two", user_id=2))
        await fake.wait_calls("sendMessage", 2)
    assert sorted(in_flight) == sorted(u["update_id"] for u in fake.pushed)


async def test_group_entities_replies_and_topics(fake: FakeTelegram) -> None:
    seen: list[Update] = []

    async def remember(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_message is not None
        seen.append(update)
        await update.effective_message.reply_text("ok")

    async with polling(fake, remember):
        # UTF-16 offsets: the emoji counts 2, PTB finds the mention text exactly.
        fake.push(group_message("😀 @parley_bot hi"))
        [call] = await fake.wait_calls("sendMessage")
        message = seen[0].message
        assert message is not None
        assert message.parse_entities([MessageEntity.MENTION]).popitem()[1] == "@parley_bot"
        # In groups PTB quotes: reply_parameters arrives as parsed JSON.
        assert call.args["reply_parameters"] == {"message_id": message.message_id}
        assert call.response["reply_to_message"]["message_id"] == message.message_id

        command = group_message("/ask@parley_bot what?")
        assert command["message"]["entities"] == [
            {"offset": 0, "length": 15, "type": "bot_command"}
        ]

        # A forum topic: PTB's reply_text passes the topic's message_thread_id by itself.
        fake.push(
            group_message("in topic", chat_id=-100777, message_thread_id=5, is_topic_message=True)
        )
        await fake.wait_calls("sendMessage", 2)
        assert fake.calls_to("sendMessage")[-1].args["message_thread_id"] == "5"
        assert [m["plain"] for m in fake.messages_in(-100777, thread_id=5)] == ["ok"]
        topic_message = seen[1].message
        assert topic_message is not None and topic_message.reply_to_message is not None
        assert topic_message.reply_to_message.forum_topic_created is not None

        # A reply in a supergroup without topics has a message_thread_id but is no topic:
        # PTB does not send it back, and sending to it fails on the fake (as on Telegram).
        bot_message = fake.messages_in(GROUP_CHAT_ID)[0]
        fake.push(group_message("replying", reply_to=bot_message))
        await fake.wait_calls("sendMessage", 3)
        reply = seen[2].message
        assert reply is not None and reply.message_thread_id == bot_message["message_id"]
        assert not reply.is_topic_message and reply.reply_to_message is not None
        assert reply.reply_to_message.from_user is not None
        assert reply.reply_to_message.from_user.id == BOT_ID
        assert "message_thread_id" not in fake.calls_to("sendMessage")[-1].args
        with pytest.raises(BadRequest, match=r"(?i)message thread not found"):
            await seen[2].get_bot().send_message(GROUP_CHAT_ID, "x", message_thread_id=7)

        fake.push(edited_message(seen[0], "😀 @parley_bot edited"))
        await fake.wait_for(lambda: len(seen) == 4, what="the edit")  # filters.TEXT: edits too
        assert seen[3].edited_message is not None and seen[3].message is None


# --- (b) RetryAfter, (c) BadRequest -----------------------------------------------------------


async def test_retry_after(fake: FakeTelegram, monkeypatch: pytest.MonkeyPatch) -> None:
    async with build(fake) as app:
        sent = await app.bot.send_message(1, "draft")
        fake.fail_next("editMessageText", status=429, retry_after=1)
        with pytest.raises(RetryAfter) as caught:
            await app.bot.edit_message_text("more", chat_id=1, message_id=sent.message_id)
        assert caught.value.retry_after == dtm.timedelta(seconds=1)  # with PTB_TIMEDELTA
        assert fake.calls_to("editMessageText")[0].response["parameters"] == {"retry_after": 1}
        # The failure is used up: the retry goes through.
        await app.bot.edit_message_text("more", chat_id=1, message_id=sent.message_id)
        assert fake.messages[(1, sent.message_id)]["versions"] == ["draft", "more"]

        # Without PTB_TIMEDELTA, RetryAfter's own constructor warns (and retry_after is an
        # int): under filterwarnings=error the warning is what gets raised.
        monkeypatch.delenv("PTB_TIMEDELTA")
        fake.fail_next("sendMessage", status=429, retry_after=3)
        with pytest.warns(PTBDeprecationWarning), pytest.raises(RetryAfter) as caught:
            await app.bot.send_message(1, "x")
        with pytest.warns(PTBDeprecationWarning):
            assert caught.value.retry_after == 3

        fake.fail_next("sendMessage", status=403)
        with pytest.raises(Exception, match=r"(?i)bot was blocked"):
            await app.bot.send_message(1, "x")


async def test_flood_control(fake: FakeTelegram) -> None:
    fake.flood_interval = 1
    async with build(fake) as app:
        sent = await app.bot.send_message(5, "a")
        with pytest.raises(RetryAfter):
            await app.bot.edit_message_text("b", chat_id=5, message_id=sent.message_id)
        await app.bot.send_message(6, "other chats are not limited")


async def test_bad_requests(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        # PTB strips "Bad Request: " and capitalize()s the rest: match case-insensitively.
        with pytest.raises(BadRequest, match=r"(?i)can't parse entities: unsupported start tag"):
            await app.bot.send_message(1, "<think>hm</think> 1 < 2", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)can't find end tag"):
            await app.bot.send_message(1, "<b>bold", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)reserved and must be escaped"):
            await app.bot.send_message(1, "Hello.", parse_mode="MarkdownV2")
        sent = await app.bot.send_message(
            1, '<b>1 &lt; 2</b> <a href="https://x.org">x</a>', parse_mode="HTML"
        )
        assert sent.text == "1 < 2 x"
        assert [e.type for e in sent.entities] == [MessageEntity.BOLD, MessageEntity.TEXT_LINK]

        # The limit counts text after parsing: 4,096 characters of text, tags aside.
        await app.bot.send_message(1, f"<b>{'x' * 4096}</b>", parse_mode="HTML")
        with pytest.raises(BadRequest, match=r"(?i)message is too long"):
            await app.bot.send_message(1, "&amp;" * 4097, parse_mode="HTML")

        with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
            await app.bot.edit_message_text(
                "<b>1 &lt; 2</b> <a href='https://x.org'>x</a>",
                chat_id=1,
                message_id=sent.message_id,
                parse_mode="HTML",
            )
        edited = await app.bot.edit_message_text("1 < 2 x", chat_id=1, message_id=sent.message_id)
        assert not isinstance(edited, bool) and edited.edit_date is not None
        assert fake.messages[(1, sent.message_id)]["text"] == "1 < 2 x"
        with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
            await app.bot.edit_message_text("x", chat_id=1, message_id=10_000)

        assert await app.bot.delete_message(1, sent.message_id) is True
        assert (1, sent.message_id) in fake.deleted
        with pytest.raises(BadRequest, match=r"(?i)message to delete not found"):
            await app.bot.delete_message(1, sent.message_id)

        assert await app.bot.send_chat_action(1, "typing") is True


async def test_unknown_method_is_404(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        with pytest.raises(EndPointNotFound):  # PTB's mapping of a 404 in do_api_request
            await app.bot.do_api_request("noSuchMethod")
    assert fake.calls_to("noSuchMethod")[0].response["error_code"] == 404


async def test_invalid_token() -> None:
    async with FakeTelegram(token="1:RIGHT") as fake:
        app = build(fake, token="1:WRONG")
        with pytest.raises(InvalidToken):
            async with app:
                pass
        # A failed initialize leaves the bot's httpx clients open (Application.shutdown does
        # nothing when not initialized): without this, an unclosed-socket ResourceWarning.
        await app.bot.shutdown()
    assert fake.calls_to("getMe")[0].response["error_code"] == 401


# --- (d) webhooks -------------------------------------------------------------------------


async def test_webhook(fake: FakeTelegram) -> None:
    app = build(fake)
    app.add_handler(MessageHandler(filters.TEXT, echo))
    port = free_port()
    hook = f"http://127.0.0.1:{port}/telegram"
    async with app:
        await app.start()
        assert app.updater is not None
        await app.updater.start_webhook(
            listen="127.0.0.1",
            port=port,
            url_path="telegram",
            webhook_url="https://example.com/telegram",
            secret_token="s3cret",
        )
        try:
            [set_webhook] = fake.calls_to("setWebhook")
            assert fake.webhook is not None
            assert fake.webhook["url"] == "https://example.com/telegram"
            assert fake.webhook["secret_token"] == "s3cret"
            assert set_webhook.args["max_connections"] == "40"
            assert fake.calls_to("deleteWebhook") == []  # only polling deletes it

            assert await post_update(hook, private_message("hooked"), secret="s3cret") == 200
            [call] = await fake.wait_calls("sendMessage")
            assert call.args["text"] == "hooked"

            assert await post_update(hook, private_message("bad"), secret="wrong") == 403
            assert await post_update(hook, private_message("none")) == 403
            await asyncio.sleep(0.2)
            assert len(fake.calls_to("sendMessage")) == 1

            # While a webhook is set, getUpdates is a 409 Conflict.
            with pytest.raises(Conflict, match=r"(?i)webhook is active"):
                await app.bot.get_updates()
        finally:
            await app.updater.stop()
            await app.stop()


# --- (e) commands --------------------------------------------------------------------------


async def test_set_my_commands(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        commands = [BotCommand("ask", "Ask Parley"), BotCommand("reset", "Start over")]
        assert await app.bot.set_my_commands(commands) is True
        [call] = fake.calls_to("setMyCommands")
        assert call.args["commands"] == [
            {"command": "ask", "description": "Ask Parley"},
            {"command": "reset", "description": "Start over"},
        ]
        assert tuple(await app.bot.get_my_commands()) == tuple(commands)
        with pytest.raises(BadRequest):
            await app.bot.set_my_commands([BotCommand("Bad-Name", "x")])


# --- (d) outages: 5xx, bodies that are not JSON, dropped and refused connections -----------


async def test_outage_steps_apply_in_order_to_the_methods_named(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        fake.outage(
            server_error(502),
            not_json_error(503),
            dropped(),
            methods={"sendMessage"},
        )
        assert fake.in_outage
        await app.bot.send_chat_action(1, "typing")  # not covered by this outage
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await app.bot.send_message(1, "one")
        # PTB cannot parse the proxy's HTML page; the status decides: a NetworkError.
        with pytest.raises(NetworkError, match=r"Service Unavailable \(503\)\. Parsing"):
            await app.bot.send_message(1, "two")
        with pytest.raises(NetworkError):  # httpx: the server closed without an answer
            await app.bot.send_message(1, "three")
        assert not fake.in_outage
        await fake.outage_over(timeout=1)
        sent = await app.bot.send_message(1, "four")

    sends = fake.calls_to("sendMessage")
    assert [(c.args["text"], c.status, c.ok) for c in sends] == [
        ("one", 502, False),
        ("two", 503, False),
        ("three", 0, False),
        ("four", 200, True),
    ]
    assert sends[0].response == {"ok": False, "error_code": 502, "description": "Bad Gateway"}
    assert sends[1].response["body"].startswith("<html>")
    assert fake.texts_in(1) == ["four"]  # nothing that failed was applied
    assert sent.message_id == fake.messages_in(1)[0]["message_id"]
    assert fake.calls_to("sendChatAction")[0].status == 200


async def test_a_timed_fault_lasts_its_seconds_from_the_first_call(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        fake.outage(server_error(500, seconds=0.6))
        failed = 0
        started = time.monotonic()
        while True:
            try:
                await app.bot.send_message(1, "hello")
                break
            except NetworkError:
                failed += 1
                await asyncio.sleep(0.1)
        assert failed >= 3
        assert time.monotonic() - started >= 0.6
        assert not fake.in_outage
    codes = [c.status for c in fake.calls_to("sendMessage")]
    assert codes == [500] * failed + [200]


async def test_a_refused_port_fails_every_request_until_it_listens_again(
    fake: FakeTelegram,
) -> None:
    async with build(fake) as app:
        # A keep-alive connection is open now: the refusal closes it too.
        await app.bot.send_message(1, "before")
        fake.outage(refused(0.8))
        await asyncio.sleep(0)  # the refusal starts on the fake's next turn of the loop
        with pytest.raises(NetworkError):
            await app.bot.send_message(1, "during")
        await fake.outage_over(timeout=5)
        await app.bot.send_message(1, "after")
    [(start, end)] = fake.refusals
    assert end - start >= 0.8
    # A refused request never reaches the fake: nothing recorded, nothing applied.
    assert [c.args["text"] for c in fake.calls_to("sendMessage")] == ["before", "after"]
    assert fake.texts_in(1) == ["before", "after"]


async def test_a_blocked_chat_answers_403_and_others_do_not(fake: FakeTelegram) -> None:
    async with build(fake) as app:
        sent = await app.bot.send_message(7, "before the block")
        fake.block(7)
        with pytest.raises(Forbidden, match="bot was blocked by the user"):
            await app.bot.send_message(7, "hello?")
        with pytest.raises(Forbidden):
            await app.bot.edit_message_text("edited", chat_id=7, message_id=sent.message_id)
        with pytest.raises(Forbidden):
            await app.bot.send_chat_action(7, "typing")
        await app.bot.send_message(8, "another chat")
    assert fake.texts_in(7) == ["before the block"]
    assert fake.texts_in(8) == ["another chat"]
    assert [c.status for c in fake.calls if c.args.get("chat_id") == "7"] == [200, 403, 403, 403]
