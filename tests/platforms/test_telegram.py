"""The Telegram bot as users meet it: the real python-telegram-bot against a fake Bot API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from core import wording
from core.events import ConversationKey
from core.storage.tables import conversations, messages
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import (
    FakeTelegram,
    free_port,
    group_message,
    post_update,
    private_message,
)
from tests.platforms.running import platform_settings, run_error
from tests.platforms.running import running as running_platform

TOKEN = "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GROUP = -100123


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


def telegram_settings(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, database: str, **extra: Any
) -> Any:
    return platform_settings(
        fake_openai,
        database,
        **{
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_URL": telegram.url,
            "PARLEY_TELEGRAM_UPDATE_INTERVAL": 0.05,
            **extra,
        },
    )


def running(settings: Any) -> Any:
    return running_platform(settings, "telegram")


@pytest.fixture
def bot_factory(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> Callable[..., Any]:
    def factory(**extra: Any) -> Any:
        return running(telegram_settings(telegram, fake_openai, sqlite_url, **extra))

    return factory


async def texts_become(
    telegram: FakeTelegram, chat: int, expected: list[str], thread: int | None = None
) -> None:
    await telegram.wait_for(
        lambda: telegram.texts_in(chat, thread) == expected, what=f"chat {chat}: {expected!r}"
    )


async def test_a_private_message_is_answered_with_typing_then_a_growing_reply(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    # The model takes a second to start: "typing…" shows meanwhile.
    fake_openai.reply("Hello **Alice**, nice to meet you.", delay=1.0, chunk_delay=0.02)
    async with bot_factory():
        telegram.push(private_message("hi there"))
        await texts_become(telegram, 1, ["Hello <b>Alice</b>, nice to meet you."])

        [typing, *_] = telegram.calls_to("sendChatAction")
        assert typing.args["action"] == "typing"
        [sent] = telegram.calls_to("sendMessage")
        assert sent.args["parse_mode"] == "HTML"
        assert typing.at <= sent.at
        assert fake_openai.chat_requests[0]["messages"][-1] == {
            "role": "user",
            "content": "Alice: hi there",
        }
        # Registered at start, so the commands show in Telegram's menu.
        [commands] = telegram.calls_to("setMyCommands")
        names = [c["command"] for c in commands.args["commands"]]
        assert names == ["ask", "help", "reset", "persona", "personas", "usage", "forget"]


async def test_a_quick_answer_needs_no_typing_action(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hello Alice.")
    async with bot_factory():
        telegram.push(private_message("hi there"))
        await texts_become(telegram, 1, ["Hello Alice."])
        await asyncio.sleep(0.7)  # past the moment "typing…" would have been sent
    assert telegram.calls_to("sendChatAction") == []


async def test_in_groups_only_mentions_replies_and_commands_are_answered(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("ok")
    async with bot_factory():
        telegram.push(group_message("just chatting among ourselves"))
        telegram.push(group_message("/reset@otherbot"))
        telegram.push(group_message("@parley_bot what is 2+2?"))
        await texts_become(telegram, GROUP, ["ok"])
        [answer] = telegram.messages_in(GROUP)

        telegram.push(
            group_message("and 3+3?", reply_to=answer["message"], user_id=2, first_name="Bob")
        )
        await texts_become(telegram, GROUP, ["ok", "ok"])
        telegram.push(group_message("/ask@parley_bot and 4+4?"))
        await texts_become(telegram, GROUP, ["ok", "ok", "ok"])

        contents = [r["messages"][-1]["content"] for r in fake_openai.chat_requests]
        assert contents == ["Alice: what is 2+2?", "Bob: and 3+3?", "Alice: and 4+4?"]
        # The group shares one conversation: the third request saw the first two.
        assert len(fake_openai.chat_requests[2]["messages"]) == 1 + 5


async def test_two_forum_topics_are_two_conversations(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("noted")
    async with bot_factory() as running:
        telegram.push(
            group_message("@parley_bot topic one", message_thread_id=10, is_topic_message=True)
        )
        await texts_become(telegram, GROUP, ["noted"], thread=10)
        telegram.push(
            group_message("@parley_bot topic two", message_thread_id=20, is_topic_message=True)
        )
        await texts_become(telegram, GROUP, ["noted"], thread=20)

        assert [len(r["messages"]) for r in fake_openai.chat_requests] == [2, 2]
        keys = (
            await running.runtime.store.conversation_exists(
                key=ConversationKey("telegram", "", str(GROUP), "10")
            ),
            await running.runtime.store.conversation_exists(
                key=ConversationKey("telegram", "", str(GROUP), "20")
            ),
        )
        assert keys == (True, True)
        assert await running.count(conversations) == 2


async def test_the_same_update_twice_is_answered_once_also_after_a_restart(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("once")
    update = private_message("hello")
    async with bot_factory():
        update_id = telegram.push(update)
        await texts_become(telegram, 1, ["once"])
        telegram.push(update, update_id=update_id)
        await telegram.wait_for(
            lambda: update_id in telegram.delivered[1:] or telegram.delivered.count(update_id) >= 2
        )
        await asyncio.sleep(0.3)
    async with bot_factory():
        telegram.push(update, update_id=update_id)
        await telegram.wait_for(lambda: telegram.delivered.count(update_id) >= 3)
        await asyncio.sleep(0.3)
    assert len(fake_openai.chat_requests) == 1
    assert telegram.texts_in(1) == ["once"]


async def test_messages_of_one_chat_are_answered_in_order(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("first", delay=0.3)
    fake_openai.reply("second")
    async with bot_factory():
        telegram.push(private_message("one"))
        telegram.push(private_message("two"))
        await texts_become(telegram, 1, ["first", "second"])
    assert [r["messages"][-1]["content"] for r in fake_openai.chat_requests] == [
        "Alice: one",
        "Alice: two",
    ]


async def test_a_webhook_checks_its_secret(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("via webhook")
    settings = telegram_settings(
        telegram,
        fake_openai,
        sqlite_url,
        TELEGRAM_WEBHOOK_URL="https://bot.example.com/telegram/hook",
        TELEGRAM_WEBHOOK_SECRET="s3cret",
        PARLEY_HTTP_PORT=free_port(),
    )
    async with running(settings) as bot:
        assert telegram.webhook is not None
        assert telegram.webhook["url"] == "https://bot.example.com/telegram/hook"
        assert telegram.webhook["secret_token"] == "s3cret"
        url = f"http://127.0.0.1:{bot.port}/telegram/hook"

        update = private_message("hi")
        assert await post_update(url, update, secret="wrong") == 403
        assert await post_update(url, update) == 403
        await asyncio.sleep(0.2)
        assert await bot.count(messages) == 0

        assert await post_update(url, update, secret="s3cret") == 200
        await texts_become(telegram, 1, ["via webhook"])
    assert telegram.calls_to("getUpdates") == []


async def test_retry_after_on_an_edit_waits_and_the_final_text_is_complete(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A reply that streams in several pieces.", chunk_delay=0.05)
    telegram.fail_next("editMessageText", status=429, retry_after=1)
    async with bot_factory():
        telegram.push(private_message("go"))
        await texts_become(telegram, 1, ["A reply that streams in several pieces."])
    edits = telegram.calls_to("editMessageText")
    assert len(edits) >= 2
    assert edits[1].at - edits[0].at >= 0.95


async def test_model_html_is_escaped(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply('<script>alert("x")</script> & <b onclick="evil()">bold</b>')
    async with bot_factory():
        telegram.push(private_message("inject"))
        await texts_become(
            telegram,
            1,
            [
                '&lt;script&gt;alert("x")&lt;/script&gt; &amp; '
                '&lt;b onclick="evil()"&gt;bold&lt;/b&gt;'
            ],
        )
        [message] = telegram.messages_in(1)
        assert message["plain"] == '<script>alert("x")</script> & <b onclick="evil()">bold</b>'


async def test_a_ten_thousand_character_answer_is_split_with_code_blocks_intact(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    code = "\n".join(f"x_{n} = {n} * 2  # step {n}" for n in range(300))
    prose = " ".join(["Here is why the code works the way it does."] * 60)
    answer = f"{prose}\n\n```python\n{code}\n```\n\n{prose}"
    assert len(answer) > 10_000
    fake_openai.reply(answer, chunk_size=500)
    async with bot_factory():
        telegram.push(private_message("long please"))
        await telegram.wait_for(
            lambda: (
                len(telegram.texts_in(1)) >= 3
                and telegram.messages_in(1)[-1]["plain"].endswith("does.")
            ),
            what="the whole answer",
        )
    parts = telegram.messages_in(1)
    assert all(len(part["plain"]) <= 4096 for part in parts)
    assert all(part["text"].count("<pre>") == part["text"].count("</pre>") for part in parts)
    shown = "".join(part["plain"] for part in parts)
    assert all(f"x_{n} = {n} * 2  # step {n}" in shown for n in range(300))


async def test_persona_and_reset_commands_work(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("fine")
    async with bot_factory() as running:
        telegram.push(private_message("/persona coder"))
        await telegram.wait_for(lambda: len(telegram.texts_in(1)) == 1)
        assert "coder" in telegram.texts_in(1)[0]
        channel = await running.runtime.store.channel(key=ConversationKey("telegram", "", "1"))
        assert channel.persona == "coder"

        telegram.push(private_message("remember 42"))
        await texts_become(telegram, 1, [telegram.texts_in(1)[0], "fine"])
        telegram.push(private_message("/reset"))
        await telegram.wait_for(lambda: len(telegram.texts_in(1)) == 3)
        assert telegram.texts_in(1)[2] == wording.RESET_DONE
        telegram.push(private_message("what did I say?"))
        await telegram.wait_for(lambda: len(telegram.texts_in(1)) == 4)
        # After /reset the model sees only the new message.
        assert [m["role"] for m in fake_openai.chat_requests[-1]["messages"]] == [
            "system",
            "user",
        ]
        telegram.push(private_message("/start"))
        await telegram.wait_for(lambda: len(telegram.texts_in(1)) == 5)
        assert telegram.texts_in(1)[4].startswith("Hi, I'm Parley")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"TELEGRAM_BOT_TOKEN": "not-a-token"}, "TELEGRAM_BOT_TOKEN: not a bot token"),
        (
            {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_URL": "https://bot.example.com/t"},
            "TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is not",
        ),
        (
            {"TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_WEBHOOK_SECRET": "has spaces"},
            "TELEGRAM_WEBHOOK_SECRET: use 1-256 characters",
        ),
        (
            {"TELEGRAM_BOT_TOKEN": "999:ZZZZZZZZZZZZZZZZZZZZZZZZZZ"},
            "TELEGRAM_BOT_TOKEN: Telegram refused it",
        ),
    ],
)
async def test_parley_run_telegram_explains_a_wrong_setting_in_one_line(
    tmp_path: Any, settings: dict[str, str], message: str
) -> None:
    async with FakeTelegram(token=TOKEN) as telegram:
        line = await run_error(["telegram"], tmp_path, TELEGRAM_API_URL=telegram.url, **settings)
    assert message in line


async def test_parley_run_telegram_says_when_telegram_cannot_be_reached(
    tmp_path: Any, unused_tcp_port: int
) -> None:
    url = f"http://127.0.0.1:{unused_tcp_port}"
    line = await run_error(["telegram"], tmp_path, TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_API_URL=url)
    assert line.startswith(f"parley: TELEGRAM_API_URL: cannot reach {url}")
    assert "refused it" not in line and TOKEN not in line


async def test_a_group_can_have_one_conversation_per_member(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("ok")
    async with bot_factory():
        telegram.push(group_message("/scope@parley_bot user"))
        await telegram.wait_for(lambda: len(telegram.texts_in(GROUP)) == 1)
        telegram.push(group_message("@parley_bot I am Alice"))
        await telegram.wait_for(lambda: len(telegram.texts_in(GROUP)) == 2)
        telegram.push(group_message("@parley_bot who am I?", user_id=2, first_name="Bob"))
        await telegram.wait_for(lambda: len(telegram.texts_in(GROUP)) == 3)
    # Bob's conversation does not contain Alice's message.
    assert [m["content"] for m in fake_openai.chat_requests[1]["messages"][1:]] == [
        "Bob: who am I?"
    ]


async def test_html_telegram_refuses_is_sent_again_as_plain_text(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Some **bold** words.")
    # As the Bot API words it; python-telegram-bot capitalizes it ("Can't parse entities").
    telegram.fail_next(
        "sendMessage",
        status=400,
        description="Bad Request: can't parse entities: unsupported start tag at byte 5",
    )
    async with bot_factory():
        telegram.push(private_message("go"))
        await texts_become(telegram, 1, ["Some bold words."])
    failed, sent = telegram.calls_to("sendMessage")
    assert (failed.args.get("parse_mode"), sent.args.get("parse_mode")) == ("HTML", None)
    assert sent.args["text"] == "Some bold words."


async def test_a_reply_deleted_while_it_streams_is_posted_again(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    answer = "A reply someone deleted halfway, which still arrives whole."
    fake_openai.reply(answer, chunk_delay=0.1)
    async with bot_factory():
        telegram.push(private_message("go"))
        await telegram.wait_for(lambda: telegram.messages_in(1), what="the first part")
        [first] = telegram.messages_in(1)
        key = (1, first["message_id"])
        telegram.deleted[key] = telegram.messages.pop(key)  # the user deleted it
        await texts_become(telegram, 1, [answer])
    [message] = telegram.messages_in(1)
    assert message["message_id"] != first["message_id"]
    gone = [c for c in telegram.calls_to("editMessageText") if not c.ok]
    assert gone and {c.int_arg("message_id") for c in gone} == {first["message_id"]}


async def test_messages_sent_while_an_answer_is_written_get_one_answer_with_merge_on(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("The first answer.", chunk_delay=0.1)  # about half a second
    fake_openai.reply("Both, together.")
    async with bot_factory():
        telegram.push(private_message("/merge on"))
        await texts_become(telegram, 1, [wording.MERGE_SET[True]])
        telegram.push(private_message("first question"))
        await fake_openai.received(1)  # the first answer is being written
        telegram.push(private_message("and a second"))
        telegram.push(private_message("and a third"))
        await texts_become(
            telegram, 1, [wording.MERGE_SET[True], "The first answer.", "Both, together."]
        )
    first, merged = fake_openai.chat_requests
    assert merged["messages"][1:] == [
        *first["messages"][1:],
        {"role": "assistant", "content": "The first answer."},
        {"role": "user", "content": "Alice: and a second"},
        {"role": "user", "content": "Alice: and a third"},
    ]


async def test_an_update_the_sdk_cannot_read_does_not_stop_polling(
    bot_factory: Callable[..., Any], telegram: FakeTelegram, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Still here.")
    unreadable = private_message("a poll")
    del unreadable["message"]["date"]  # python-telegram-bot requires it
    async with bot_factory():
        bad = telegram.push(unreadable)
        telegram.push(private_message("hello?"))
        await texts_become(telegram, 1, ["Still here."])
        await telegram.wait_confirmed(bad)  # the offset moved past it
    [request] = fake_openai.chat_requests
    assert request["messages"][-1] == {"role": "user", "content": "Alice: hello?"}
