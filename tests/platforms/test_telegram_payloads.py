"""Real-shaped Telegram updates through the real python-telegram-bot against the fake Bot API.

Each case pushes one update as Telegram sends it (shapes from the Bot API docs and
python-telegram-bot's test data) and checks what the chat shows, what the model was sent, and
which conversation stored the message. A private "ping" from another user follows every case:
once it is answered, everything the case set going is done, so "not answered" needs no sleep.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from adapters.telegram.translate import ASK_USAGE, CANNOT_SEE, UNKNOWN_COMMAND, command_list
from core import wording
from core.storage.tables import conversations, messages, turns
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import (
    BOT_USER,
    GROUP_CHAT_ID,
    FakeTelegram,
    anonymous_admin_message,
    as_channel_message,
    automatic_forward,
    callback_query_update,
    channel_post,
    edited_message,
    free_port,
    group_chat,
    group_message,
    media_message,
    my_chat_member_update,
    next_message_id,
    poll_message,
    post_update,
    private_message,
    service_message,
    user,
    with_fields,
)
from tests.platforms.running import Running
from tests.platforms.test_telegram import running, telegram_settings

ANSWER = "Sure thing."
ALICE = 1  # a private chat's id is its user's id
PINGER = 42
GROUP = str(GROUP_CHAT_ID)
FRENCH = "Bonjour à tous. Le train part à midi, quai 3."
GREETING = (
    "Hi, I'm Parley, an AI assistant. Ask me anything: I answer questions, explain, "
    "translate, summarize and help with writing and code.\n\n"
    "Here, just write to me. In a group, mention me (@parley_bot) or reply to one of my "
    "messages, or use /ask QUESTION; replying to a message with a mention lets me read it "
    "too.\n\n"
    "Commands: /ask, /help, /reset, /persona, /personas, /usage, /forget"
)


def bots_message(text: str, *, chat_id: int = GROUP_CHAT_ID) -> dict[str, Any]:
    """One of the bot's earlier messages, as it appears in `reply_to_message`."""
    return {
        "message_id": next_message_id(chat_id),
        "from": BOT_USER,
        "chat": group_chat(chat_id),
        "date": int(time.time()) - 60,
        "text": text,
    }


def bobs(text: str) -> dict[str, Any]:
    return group_message(text, user_id=2, first_name="Bob", username="bob")


def entities_message() -> dict[str, Any]:
    text = "Summarize this page: https://example.com/a and the docs, please"
    return private_message(
        text,
        entities=[
            {"offset": 0, "length": 9, "type": "bold"},
            {"offset": 21, "length": 21, "type": "url"},
            {"offset": 51, "length": 4, "type": "text_link", "url": "https://docs.example.com"},
            {"offset": 57, "length": 6, "type": "italic"},
        ],
    )


@dataclass(frozen=True)
class Case:
    """One update, and what must come of it.

    `shown`: the bot's only message in `chat` (and `thread`), None for none. `saw`: the last
    message of the only model request, None for no model call. `stored`: (channel, thread,
    text) of the only turn stored, None for none; when the model answered, the conversation
    also holds the user's text (`saw` without the speaker) and the answer.
    """

    name: str
    update: Callable[[], dict[str, Any]]
    chat: int = ALICE
    shown: str | None = None
    saw: str | None = None
    stored: tuple[str, str, str] | None = None
    thread: int | None = None


def answered(
    name: str,
    update: Callable[[], dict[str, Any]],
    saw: str,
    *,
    chat: int = ALICE,
    thread: int | None = None,
) -> Case:
    """A message the model answers: the turn stores its text, as the model read it."""
    text = saw.split(": ", 1)[1]
    channel = str(chat)
    return Case(
        name,
        update,
        chat=chat,
        shown=ANSWER,
        saw=saw,
        stored=(channel, "" if thread is None else str(thread), text),
        thread=thread,
    )


def ignored(name: str, update: Callable[[], dict[str, Any]], chat: int = ALICE) -> Case:
    return Case(name, update, chat=chat)


CASES: list[Case] = [
    answered("private text", lambda: private_message("hi there"), "Alice: hi there"),
    answered(
        "group mention via entity",
        lambda: group_message("@parley_bot what is 2+2?"),
        "Alice: what is 2+2?",
        chat=GROUP_CHAT_ID,
    ),
    ignored("group chatter", lambda: group_message("lunch at 12?"), GROUP_CHAT_ID),
    answered(
        "reply to the bot",
        lambda: group_message("and 3+3?", user_id=2, first_name="Bob", reply_to=bots_message("4.")),
        "Bob: and 3+3?",
        chat=GROUP_CHAT_ID,
    ),
    answered(
        "forum topic message",
        lambda: group_message(
            "@parley_bot in a topic", message_thread_id=10, is_topic_message=True
        ),
        "Alice: in a topic",
        chat=GROUP_CHAT_ID,
        thread=10,
    ),
    ignored(
        "edited message",
        lambda: edited_message(private_message("hello"), "hello, edited"),
    ),
    ignored("channel post", lambda: channel_post("@parley_bot hello")),
    ignored(
        "automatic forward from the linked channel",
        lambda: automatic_forward("@parley_bot new release is out"),
        GROUP_CHAT_ID,
    ),
    answered(
        "anonymous admin",
        lambda: anonymous_admin_message("@parley_bot hello from the admins"),
        "Test group: hello from the admins",
        chat=GROUP_CHAT_ID,
    ),
    answered(
        "posting as a channel",
        lambda: as_channel_message("@parley_bot is this on?"),
        "News: is this on?",
        chat=GROUP_CHAT_ID,
    ),
    answered(
        "anonymous admin replying to the bot",
        lambda: with_fields(
            anonymous_admin_message("thanks, and tomorrow?"),
            reply_to_message=bots_message("Sunny."),
        ),
        "Test group: thanks, and tomorrow?",
        chat=GROUP_CHAT_ID,
    ),
    Case(
        "our command in a group",
        lambda: group_message("/reset"),
        chat=GROUP_CHAT_ID,
        shown=wording.RESET_DONE,
        stored=(GROUP, "", "/reset"),
    ),
    Case(
        "our command with @bot",
        lambda: group_message("/reset@parley_bot"),
        chat=GROUP_CHAT_ID,
        shown=wording.RESET_DONE,
        stored=(GROUP, "", "/reset"),
    ),
    ignored("our command for another bot", lambda: group_message("/help@otherbot"), GROUP_CHAT_ID),
    ignored("another bot's command", lambda: group_message("/weather Paris"), GROUP_CHAT_ID),
    Case(
        "an unknown command with @bot",
        lambda: group_message("/weather@parley_bot Paris"),
        chat=GROUP_CHAT_ID,
        shown=UNKNOWN_COMMAND.format(name="weather", commands=command_list()),
    ),
    Case(
        "an unknown command in a private chat",
        lambda: private_message("/weather"),
        shown=UNKNOWN_COMMAND.format(name="weather", commands=command_list()),
    ),
    Case("/start", lambda: private_message("/start"), shown=GREETING),
    Case(
        "/start@bot in a group",
        lambda: group_message("/start@parley_bot"),
        chat=GROUP_CHAT_ID,
        shown=GREETING,
    ),
    Case("bare /ask", lambda: group_message("/ask"), chat=GROUP_CHAT_ID, shown=ASK_USAGE),
    Case(
        "bare /ask@bot",
        lambda: group_message("/ask@parley_bot"),
        chat=GROUP_CHAT_ID,
        shown=ASK_USAGE,
    ),
    answered(
        "/ask@bot with a question",
        lambda: group_message("/ask@parley_bot what is a monad?"),
        "Alice: what is a monad?",
        chat=GROUP_CHAT_ID,
    ),
    # Photos, voice notes and documents: tests/platforms/test_telegram_attachments.py.
    answered(
        "video with a caption",
        lambda: media_message("video", "what is this?"),
        "Alice: [a video was attached, which you cannot see]\n\nwhat is this?",
    ),
    ignored(
        "photo in a group, not for the bot",
        lambda: media_message("photo", "our trip", group=True),
        GROUP_CHAT_ID,
    ),
    Case("sticker", lambda: media_message("sticker"), shown=CANNOT_SEE.format(media="a sticker")),
    Case("video", lambda: media_message("video"), shown=CANNOT_SEE.format(media="a video")),
    answered(
        "video with a caption mentioning the bot",
        lambda: media_message("video", "@parley_bot summarize it", group=True),
        "Alice: [a video was attached, which you cannot see]\n\nsummarize it",
        chat=GROUP_CHAT_ID,
    ),
    Case(
        "a sticker replying to the bot",
        lambda: with_fields(
            media_message("sticker", group=True), reply_to_message=bots_message("Done!")
        ),
        chat=GROUP_CHAT_ID,
        shown=CANNOT_SEE.format(media="a sticker"),
    ),
    answered(
        "reply with a quote",
        lambda: with_fields(
            group_message("@parley_bot translate this", reply_to=bobs(FRENCH)),
            quote={"text": "Le train part à midi", "position": 16, "is_manual": True},
        ),
        "Alice: > Le train part à midi\n\ntranslate this",
        chat=GROUP_CHAT_ID,
    ),
    answered(
        "reply to someone's message",
        lambda: group_message("@parley_bot translate this", reply_to=bobs(FRENCH)),
        f"Alice: > {FRENCH}\n\ntranslate this",
        chat=GROUP_CHAT_ID,
    ),
    answered(
        "message with entities",
        entities_message,
        "Alice: Summarize this page: https://example.com/a and the docs, please",
    ),
    ignored(
        "new chat members",
        lambda: service_message(new_chat_members=[user(2, "Bob", "bob"), BOT_USER]),
        GROUP_CHAT_ID,
    ),
    ignored(
        "pinned message",
        lambda: service_message(pinned_message=bots_message("Pinned rules")),
        GROUP_CHAT_ID,
    ),
    ignored("my_chat_member", my_chat_member_update, GROUP_CHAT_ID),
    ignored(
        "callback query",
        lambda: callback_query_update("again", message=bots_message("Pick one")),
        GROUP_CHAT_ID,
    ),
    ignored("poll", lambda: poll_message("Lunch at noon?")),
]


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


async def stored_turns(bot: Running) -> list[tuple[str, str, str]]:
    """(channel, thread, text) of every turn, oldest first."""
    query = (
        select(conversations.c.channel, conversations.c.thread, turns.c.text)
        .join(conversations, conversations.c.id == turns.c.conversation_id)
        .order_by(turns.c.id)
    )
    async with bot.database.connect() as connection:
        return [(c, t, text) for c, t, text in await connection.execute(query)]


async def stored_messages_by_conversation(bot: Running) -> list[tuple[str, str, str, str]]:
    """(channel, thread, role, content) of every stored message, oldest first."""
    query = (
        select(conversations.c.channel, conversations.c.thread, messages.c.role, messages.c.content)
        .join(conversations, conversations.c.id == messages.c.conversation_id)
        .order_by(messages.c.id)
    )
    async with bot.database.connect() as connection:
        return [(c, t, role, text) for c, t, role, text in await connection.execute(query)]


def model_saw(fake_openai: FakeOpenAI) -> list[str]:
    return [r["messages"][-1]["content"] for r in fake_openai.chat_requests]


def test_the_corpus_is_large_and_named_uniquely() -> None:
    assert len(CASES) >= 25
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_payload(
    case: Case, telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(telegram_settings(telegram, fake_openai, sqlite_url)) as bot:
        update_id = telegram.push(case.update())
        if case.shown is not None:
            await telegram.wait_for(
                lambda: telegram.texts_in(case.chat, case.thread) == [case.shown],
                what=f"the answer {case.shown!r}",
            )
        # The ping comes after the update (a higher update_id): once it is answered, the
        # update was handled, or (an update type the bot did not ask for) never sent.
        telegram.push(private_message("ping", user_id=PINGER, first_name="Pinger"))
        await telegram.wait_for(lambda: telegram.texts_in(PINGER) == [ANSWER], what="the ping")
        kind = next(key for key in telegram.pushed[0] if key != "update_id")
        assert (update_id in telegram.delivered) is (kind == "message")

        # The chat shows the answer (or nothing), in the right topic.
        assert telegram.texts_in(case.chat) == ([] if case.shown is None else [case.shown])
        # The model saw the message as expected (or was not called for it).
        assert model_saw(fake_openai) == [*([case.saw] if case.saw else []), "Pinger: ping"]
        # The right conversation stored it.
        ping = (str(PINGER), "", "ping")
        assert await stored_turns(bot) == [*([case.stored] if case.stored else []), ping]
        exchange = []
        if case.saw is not None and case.stored is not None:
            channel, thread, text = case.stored
            exchange = [(channel, thread, "user", text), (channel, thread, "assistant", ANSWER)]
        assert await stored_messages_by_conversation(bot) == [
            *exchange,
            (str(PINGER), "", "user", "ping"),
            (str(PINGER), "", "assistant", ANSWER),
        ]


async def test_the_first_message_of_an_answer_holds_whole_words(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    # The first sendMessage is what the phone's notification shows: never "C".
    answer = "Certainly! Here is a longer answer, which streams in one character at a time."
    fake_openai.reply(answer, chunk_size=1, chunk_delay=0.01)
    fake_openai.reply("OK")
    async with running(telegram_settings(telegram, fake_openai, sqlite_url)):
        telegram.push(private_message("explain"))
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == [answer], what="the answer")
        telegram.push(private_message("short, please"))
        await telegram.wait_for(
            lambda: telegram.texts_in(ALICE) == [answer, "OK"], what="the short answer"
        )
    first, short = telegram.calls_to("sendMessage")
    # Posted half a second in (FIRST_CALL_AFTER): what had come by then, up to a whole word.
    head = first.args["text"]
    assert head.startswith("Certainly!") and answer.startswith(head) and head != answer
    assert answer[len(head)] == " "
    assert telegram.messages_in(ALICE)[0]["versions"][-1] == answer
    assert short.args["text"] == "OK"  # a short final answer is posted whole


async def test_an_edit_of_an_answered_message_is_ignored(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    # Edits are not asked for (allowed_updates) and ignored if they come: the answer stands,
    # the stored text stays as first sent, and nothing is answered twice.
    fake_openai.default = Reply(ANSWER)
    original = private_message("what is the capital of Austria?")
    async with running(telegram_settings(telegram, fake_openai, sqlite_url)) as bot:
        telegram.push(original)
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == [ANSWER], what="the answer")
        telegram.push(edited_message(original, "what is the capital of Australia?"))
        telegram.push(private_message("ping", user_id=PINGER, first_name="Pinger"))
        await telegram.wait_for(lambda: telegram.texts_in(PINGER) == [ANSWER], what="the ping")
        assert telegram.allowed_updates == ["message"]
        assert telegram.texts_in(ALICE) == [ANSWER]
        assert model_saw(fake_openai) == [
            "Alice: what is the capital of Austria?",
            "Pinger: ping",
        ]
        assert [text for _, _, text in await stored_turns(bot)] == [
            "what is the capital of Austria?",
            "ping",
        ]


async def test_a_start_delivered_twice_is_greeted_once(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    start = private_message("/start")
    async with running(telegram_settings(telegram, fake_openai, sqlite_url)):
        update_id = telegram.push(start)
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == [GREETING], what="greeting")
        telegram.push(start, update_id=update_id)
        await telegram.wait_for(lambda: telegram.delivered.count(update_id) >= 2)
        telegram.push(private_message("ping", user_id=PINGER, first_name="Pinger"))
        await telegram.wait_for(lambda: telegram.texts_in(PINGER) == [ANSWER], what="the ping")
        assert telegram.texts_in(ALICE) == [GREETING]
        assert model_saw(fake_openai) == ["Pinger: ping"]


# Update types the bot does not ask for (allowed_updates=["message"]) never come by polling;
# a webhook set up by hand, or by an older version, can still deliver them: ignored all the same.
UNASKED: dict[str, Callable[[], dict[str, Any]]] = {
    "edited message": lambda: edited_message(private_message("hello"), "hello, edited"),
    "channel post": lambda: channel_post("@parley_bot hello"),
    "my_chat_member": my_chat_member_update,
    "callback query": lambda: callback_query_update("again", message=bots_message("Pick")),
}


@pytest.mark.parametrize("name", UNASKED)
async def test_updates_not_asked_for_are_ignored_when_a_webhook_delivers_them(
    name: str, telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    settings = telegram_settings(
        telegram,
        fake_openai,
        sqlite_url,
        TELEGRAM_WEBHOOK_URL="https://bot.example.com/telegram/hook",
        TELEGRAM_WEBHOOK_SECRET="s3cret",
        PARLEY_HTTP_PORT=free_port(),
    )
    async with running(settings) as bot:
        url = f"http://127.0.0.1:{bot.port}/telegram/hook"
        assert await post_update(url, UNASKED[name](), secret="s3cret") == 200
        ping = private_message("ping", user_id=PINGER, first_name="Pinger")
        assert await post_update(url, ping, secret="s3cret") == 200
        await telegram.wait_for(lambda: telegram.texts_in(PINGER) == [ANSWER], what="the ping")
        assert [call.method for call in telegram.calls if call.method == "sendMessage"] == [
            "sendMessage"
        ]
        assert model_saw(fake_openai) == ["Pinger: ping"]
        assert await stored_turns(bot) == [(str(PINGER), "", "ping")]
