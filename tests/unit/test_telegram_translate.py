"""Telegram translation: updates to TelegramMessage, conversation keys, Markdown to HTML."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.telegram.bot import first_words
from adapters.telegram.translate import (
    ASK_USAGE,
    CANNOT_SEE,
    HORIZONTAL_RULE,
    QUOTE_LIMIT,
    TELEGRAM_LIMIT,
    TelegramMessage,
    addressed_to_bot,
    conversation_key,
    event_id_for,
    html_to_plain,
    local_answer,
    markdown_to_html,
    model_text,
    parse_update,
    rendered_length,
    utf16_length,
    utf16_slice,
)
from core.attachments import Attachment
from core.events import ConversationKey

BOT_ID = 7012345678
BOT_USERNAME = "parley_bot"
DATE = 1700000000

# --- recorded-looking updates (the shape `Update.to_dict()` gives) ------------------------

ALICE: dict[str, Any] = {
    "id": 185000001,
    "is_bot": False,
    "first_name": "Alice",
    "last_name": "Liddell",
    "username": "alice",
    "language_code": "en",
}
BOB: dict[str, Any] = {"id": 185000002, "is_bot": False, "first_name": "Bob", "username": "bob_b"}
PARLEY: dict[str, Any] = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": "Parley",
    "username": BOT_USERNAME,
}
OTHER_BOT: dict[str, Any] = {
    "id": 6000000001,
    "is_bot": True,
    "first_name": "Helper",
    "username": "otherbot",
}

PRIVATE: dict[str, Any] = {
    "id": ALICE["id"],
    "first_name": "Alice",
    "last_name": "Liddell",
    "username": "alice",
    "type": "private",
}
GROUP: dict[str, Any] = {"id": -1001234567890, "title": "Parley users", "type": "supergroup"}
NEWS: dict[str, Any] = {"id": -1005555555555, "title": "News", "type": "channel"}
FORUM: dict[str, Any] = {
    "id": -1009876543210,
    "title": "Parley forum",
    "type": "supergroup",
    "is_forum": True,
}

# python-telegram-bot writes these service flags into every message, False when unset.
_FLAGS = {
    "channel_chat_created": False,
    "delete_chat_photo": False,
    "group_chat_created": False,
    "supergroup_chat_created": False,
}


def _message(
    message_id: int, chat: dict[str, Any], sender: dict[str, Any] | None, **fields: Any
) -> dict[str, Any]:
    message = {**_FLAGS, "message_id": message_id, "chat": chat, "date": DATE, **fields}
    if sender is not None:
        message["from"] = sender
    return message


def _mention(offset: int, length: int) -> dict[str, Any]:
    return {"type": "mention", "offset": offset, "length": length}


def _command(length: int) -> dict[str, Any]:
    return {"type": "bot_command", "offset": 0, "length": length}


BOTS_ANSWER = _message(40, GROUP, PARLEY, text="Canberra.")
TOPIC_42_CREATED = _message(
    42,
    FORUM,
    PARLEY,  # the bot opened this topic itself
    message_thread_id=42,
    forum_topic_created={"name": "Keys", "icon_color": 7322096},
)
TOPIC_43_CREATED = _message(
    43,
    FORUM,
    ALICE,
    message_thread_id=43,
    forum_topic_created={"name": "Billing", "icon_color": 16766590},
)
BOTS_ANSWER_IN_TOPIC = _message(
    50, FORUM, PARLEY, message_thread_id=42, is_topic_message=True, text="Use a vault."
)

UPDATES: dict[str, dict[str, Any]] = {
    "private text": {
        "update_id": 900001,
        "message": _message(11, PRIVATE, ALICE, text="What's the capital of Australia?"),
    },
    "private /start": {
        "update_id": 900002,
        "message": _message(12, PRIVATE, ALICE, text="/start", entities=[_command(6)]),
    },
    "group @mention": {
        "update_id": 900003,
        "message": _message(
            31,
            GROUP,
            ALICE,
            text="@parley_bot, what's a monad? cc @bob_b",
            entities=[_mention(0, 11), _mention(32, 6)],
        ),
    },
    "group without a mention": {
        "update_id": 900004,
        "message": _message(32, GROUP, BOB, text="lunch at 12?"),
    },
    "reply to the bot": {
        "update_id": 900005,
        "message": _message(
            41, GROUP, ALICE, text="and of New Zealand?", reply_to_message=BOTS_ANSWER
        ),
    },
    "/ask@parley_bot": {
        "update_id": 900006,
        "message": _message(33, GROUP, BOB, text="/ask@parley_bot what?", entities=[_command(15)]),
    },
    "/ask": {
        "update_id": 900007,
        "message": _message(34, GROUP, BOB, text="/ask what?", entities=[_command(4)]),
    },
    "/persona@Parley_Bot coder": {
        "update_id": 900008,
        "message": _message(
            35, GROUP, BOB, text="/persona@Parley_Bot coder", entities=[_command(19)]
        ),
    },
    "/reset": {
        "update_id": 900009,
        "message": _message(36, GROUP, BOB, text="/reset", entities=[_command(6)]),
    },
    "/reset@otherbot": {
        "update_id": 900010,
        "message": _message(37, GROUP, BOB, text="/reset@otherbot", entities=[_command(15)]),
    },
    "topic 42 mention": {
        "update_id": 900011,
        "message": _message(
            51,
            FORUM,
            ALICE,
            message_thread_id=42,
            is_topic_message=True,
            reply_to_message=TOPIC_42_CREATED,
            text="@parley_bot how do I rotate keys?",
            entities=[_mention(0, 11)],
        ),
    },
    "topic 42 reply to the bot": {
        "update_id": 900012,
        "message": _message(
            52,
            FORUM,
            BOB,
            message_thread_id=42,
            is_topic_message=True,
            reply_to_message=BOTS_ANSWER_IN_TOPIC,
            text="which one?",
        ),
    },
    "topic 43 chatter": {
        "update_id": 900013,
        "message": _message(
            53,
            FORUM,
            BOB,
            message_thread_id=43,
            is_topic_message=True,
            reply_to_message=TOPIC_43_CREATED,
            text="invoices are late again",
        ),
    },
    "topic 43 mention": {
        "update_id": 900014,
        "message": _message(
            54,
            FORUM,
            ALICE,
            message_thread_id=43,
            is_topic_message=True,
            reply_to_message=TOPIC_43_CREATED,
            text="why? @parley_bot",
            entities=[_mention(5, 11)],
        ),
    },
    "photo with a caption": {
        "update_id": 900015,
        "message": _message(
            38,
            GROUP,
            ALICE,
            photo=[
                {"file_id": "AgACAgQAAx0", "file_unique_id": "AQADa", "width": 90, "height": 67},
                {"file_id": "AgACAgQAAx1", "file_unique_id": "AQADb", "width": 1280, "height": 960},
            ],
            caption="@parley_bot what's in this picture?",
            caption_entities=[_mention(0, 11)],
        ),
    },
    # 👋🏽 is two astral characters (four UTF-16 code units): Telegram's offsets count 16 for
    # what Python indexes as 14.
    "emoji before the mention": {
        "update_id": 900016,
        "message": _message(
            39,
            GROUP,
            BOB,
            text="👋🏽 hi @alice, @parley_bot can you help us?",
            entities=[_mention(8, 6), _mention(16, 11)],
        ),
    },
    "text_mention of the bot": {
        "update_id": 900017,
        "message": _message(
            44,
            GROUP,
            ALICE,
            text="🎉🎉 Parley ship it?",
            entities=[{"type": "text_mention", "offset": 5, "length": 6, "user": PARLEY}],
        ),
    },
    "an anonymous admin (from GroupAnonymousBot)": {
        "update_id": 900104,
        "message": _message(
            46,
            GROUP,
            {
                "id": 1087968824,
                "is_bot": True,
                "first_name": "Group",
                "username": "GroupAnonymousBot",
            },
            sender_chat=GROUP,
            text="@parley_bot hi",
            entities=[_mention(0, 11)],
        ),
    },
    "a sticker": {
        "update_id": 900109,
        "message": _message(
            55, PRIVATE, ALICE, sticker={"file_id": "CAACAgIAAxk", "emoji": "👍", "type": "regular"}
        ),
    },
    "posting as a channel": {
        "update_id": 900018,
        "message": _message(
            58,
            GROUP,
            {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"},
            sender_chat=NEWS,
            text="@parley_bot is this on?",
            entities=[_mention(0, 11)],
        ),
    },
    "reply with a partial quote": {
        "update_id": 900019,
        "message": _message(
            59,
            GROUP,
            ALICE,
            reply_to_message=_message(
                57, GROUP, BOB, text="Bonjour à tous. Le train part à midi, quai 3."
            ),
            quote={"text": "Le train part à midi", "position": 16, "is_manual": True},
            text="@parley_bot translate this",
            entities=[_mention(0, 11)],
        ),
    },
    "a voice message": {
        "update_id": 900020,
        "message": _message(
            60,
            PRIVATE,
            ALICE,
            voice={
                "file_id": "AwACAgIAAxk",
                "file_unique_id": "AgADv",
                "duration": 3,
                "mime_type": "audio/ogg",
                "file_size": 9000,
            },
        ),
    },
}

IGNORED: dict[str, dict[str, Any]] = {
    "edited_message": {
        "update_id": 900101,
        "edited_message": {
            **_message(11, PRIVATE, ALICE, text="What's the capital of Austria?"),
            "edit_date": DATE + 30,
        },
    },
    "channel_post": {
        "update_id": 900102,
        "channel_post": _message(
            7,
            {"id": -1005555555555, "title": "News", "type": "channel"},
            None,
            sender_chat={"id": -1005555555555, "title": "News", "type": "channel"},
            text="@parley_bot hello",
            entities=[_mention(0, 11)],
        ),
    },
    "a message from another bot": {
        "update_id": 900103,
        "message": _message(
            45, GROUP, OTHER_BOT, text="@parley_bot ping", entities=[_mention(0, 11)]
        ),
    },
    "a message without from": {
        "update_id": 900105,
        "message": _message(47, GROUP, None, text="hello"),
    },
    "new_chat_members": {
        "update_id": 900106,
        "message": _message(48, GROUP, ALICE, new_chat_members=[BOB, PARLEY]),
    },
    "pinned_message": {
        "update_id": 900107,
        "message": _message(49, GROUP, ALICE, pinned_message=BOTS_ANSWER),
    },
    "forum_topic_created": {"update_id": 900108, "message": TOPIC_43_CREATED},
    "an automatic forward from the linked channel": {
        "update_id": 900111,
        "message": _message(
            56,
            GROUP,
            {"id": 777000, "is_bot": False, "first_name": "Telegram"},
            sender_chat=NEWS,
            is_automatic_forward=True,
            forward_origin={
                "type": "channel",
                "chat": NEWS,
                "message_id": 7,
                "date": DATE - 5,
            },
            text="@parley_bot new release out",
            entities=[_mention(0, 11)],
        ),
    },
    "a poll": {
        "update_id": 900112,
        "message": _message(
            57,
            PRIVATE,
            ALICE,
            poll={
                "id": "5800000000000000001",
                "question": "Lunch?",
                "options": [
                    {"text": "yes", "voter_count": 0},
                    {"text": "no", "voter_count": 0},
                ],
                "total_voter_count": 0,
                "is_closed": False,
                "is_anonymous": True,
                "type": "regular",
                "allows_multiple_answers": False,
            },
        ),
    },
    "callback_query": {
        "update_id": 900110,
        "callback_query": {"id": "4382", "from": ALICE, "chat_instance": "-77", "data": "x"},
    },
}


def parse(name: str) -> TelegramMessage | None:
    update = UPDATES.get(name) or IGNORED[name]
    return parse_update(update, bot_id=BOT_ID, bot_username=BOT_USERNAME)


def parsed(name: str) -> TelegramMessage:
    message = parse(name)
    assert message is not None
    return message


def message(**fields: Any) -> TelegramMessage:
    """A group message from Alice, addressing no one, with `fields` changed."""
    defaults: dict[str, Any] = {
        "chat_id": GROUP["id"],
        "chat_type": "supergroup",
        "message_id": 31,
        "thread_id": None,
        "user_id": ALICE["id"],
        "user_name": "Alice Liddell",
        "text": "hi",
        "is_direct": False,
        "mentions_bot": False,
        "replies_to_bot": False,
        "command": None,
        "command_for_other_bot": False,
        "date": DATE,
        "quoted": None,
        "media": None,
        "known_command": True,
    }
    return TelegramMessage(**(defaults | fields))


# --- UTF-16 -------------------------------------------------------------------------------


def test_utf16_slicing_counts_astral_characters_twice() -> None:
    text = "👋🏽 hi @alice, @parley_bot can you help us?"

    assert utf16_length(text) == len(text) + 2
    assert utf16_slice(text, 16, 27) == "@parley_bot"
    assert utf16_slice(text, 8, 14) == "@alice"
    assert utf16_slice(text, 0, 4) == "👋🏽"
    assert utf16_slice(text, 27) == " can you help us?"
    assert utf16_length("é日本") == 3


# --- incoming updates ---------------------------------------------------------------------

BOB_FIELDS: dict[str, Any] = {"user_id": BOB["id"], "user_name": "Bob"}


@pytest.mark.parametrize(
    ("name", "expected", "addressed"),
    [
        (
            "private text",
            message(
                chat_id=PRIVATE["id"],
                chat_type="private",
                message_id=11,
                text="What's the capital of Australia?",
                is_direct=True,
            ),
            True,
        ),
        (
            "private /start",
            message(
                chat_id=PRIVATE["id"],
                chat_type="private",
                message_id=12,
                text="/start",
                is_direct=True,
                command="start",
            ),
            True,
        ),
        (
            "group @mention",
            message(message_id=31, text="what's a monad? cc @bob_b", mentions_bot=True),
            True,
        ),
        (
            "group without a mention",
            message(message_id=32, text="lunch at 12?", **BOB_FIELDS),
            False,
        ),
        (
            "reply to the bot",
            message(message_id=41, text="and of New Zealand?", replies_to_bot=True),
            True,
        ),
        (
            "/ask@parley_bot",
            message(message_id=33, text="what?", command="ask", **BOB_FIELDS),
            True,
        ),
        ("/ask", message(message_id=34, text="what?", command="ask", **BOB_FIELDS), True),
        (
            "/persona@Parley_Bot coder",
            message(message_id=35, text="/persona coder", command="persona", **BOB_FIELDS),
            True,
        ),
        ("/reset", message(message_id=36, text="/reset", command="reset", **BOB_FIELDS), True),
        (
            "/reset@otherbot",
            message(
                message_id=37,
                text="/reset@otherbot",
                command="reset",
                command_for_other_bot=True,
                **BOB_FIELDS,
            ),
            False,
        ),
        (
            "topic 42 mention",
            message(
                chat_id=FORUM["id"],
                message_id=51,
                thread_id=42,
                text="how do I rotate keys?",
                mentions_bot=True,
            ),
            True,
        ),
        (
            "topic 42 reply to the bot",
            message(
                chat_id=FORUM["id"],
                message_id=52,
                thread_id=42,
                text="which one?",
                replies_to_bot=True,
                **BOB_FIELDS,
            ),
            True,
        ),
        (
            "topic 43 chatter",
            message(
                chat_id=FORUM["id"],
                message_id=53,
                thread_id=43,
                text="invoices are late again",
                **BOB_FIELDS,
            ),
            False,
        ),
        (
            "topic 43 mention",
            message(
                chat_id=FORUM["id"], message_id=54, thread_id=43, text="why?", mentions_bot=True
            ),
            True,
        ),
        (
            "photo with a caption",
            message(
                message_id=38,
                text="what's in this picture?",
                mentions_bot=True,
                media="photo",
                attachments=(Attachment("image", "photo.jpg", "image/jpeg", 0, "AgACAgQAAx1"),),
            ),
            True,
        ),
        (
            "emoji before the mention",
            message(
                message_id=39,
                text="👋🏽 hi @alice, can you help us?",
                mentions_bot=True,
                **BOB_FIELDS,
            ),
            True,
        ),
        (
            "text_mention of the bot",
            message(message_id=44, text="🎉🎉 ship it?", mentions_bot=True),
            True,
        ),
        (
            "an anonymous admin (from GroupAnonymousBot)",
            message(
                message_id=46,
                text="hi",
                mentions_bot=True,
                user_id=GROUP["id"],
                user_name="Parley users",
            ),
            True,
        ),
        (
            "posting as a channel",
            message(
                message_id=58,
                text="is this on?",
                mentions_bot=True,
                user_id=NEWS["id"],
                user_name="News",
            ),
            True,
        ),
        (
            "a sticker",
            message(
                chat_id=PRIVATE["id"],
                chat_type="private",
                message_id=55,
                text="",
                is_direct=True,
                media="sticker",
            ),
            True,
        ),
        (
            "a voice message",
            message(
                chat_id=PRIVATE["id"],
                chat_type="private",
                message_id=60,
                text="",
                is_direct=True,
                media="voice",
                attachments=(Attachment("audio", "voice.ogg", "audio/ogg", 9000, "AwACAgIAAxk"),),
            ),
            True,
        ),
        (
            "reply with a partial quote",
            message(
                message_id=59,
                text="translate this",
                mentions_bot=True,
                quoted="Le train part à midi",
            ),
            True,
        ),
    ],
)
def test_messages(name: str, expected: TelegramMessage, addressed: bool) -> None:
    assert parse(name) == expected
    assert addressed_to_bot(expected) is addressed


@pytest.mark.parametrize("name", IGNORED)
def test_updates_the_bot_ignores(name: str) -> None:
    assert parse(name) is None


def test_a_topic_the_bot_opened_is_not_a_reply_to_the_bot() -> None:
    # Every message in topic 42 "replies" to its creation message, which the bot wrote.
    chatter = {**UPDATES["topic 42 mention"]["message"], "text": "thanks all", "entities": []}
    message = parse_update({"update_id": 1, "message": chatter}, bot_id=BOT_ID, bot_username="x")

    assert message is not None
    assert (message.thread_id, message.replies_to_bot) == (42, False)
    assert not addressed_to_bot(message)


def test_a_thread_id_outside_a_forum_topic_is_not_a_topic() -> None:
    # In a plain supergroup, replies carry a message_thread_id (the reply chain) but no
    # is_topic_message: they belong to the chat's conversation.
    update = UPDATES["reply to the bot"]
    reply_chain = {"update_id": 1, "message": {**update["message"], "message_thread_id": 40}}

    assert parsed("reply to the bot").thread_id is None
    message = parse_update(reply_chain, bot_id=BOT_ID, bot_username=BOT_USERNAME)
    assert message is not None
    assert message.thread_id is None


@pytest.mark.parametrize(
    ("text", "entities", "expected"),
    [
        # The bot's mention, wherever it is, and the space and punctuation it leaves.
        ("@parley_bot hi", [_mention(0, 11)], "hi"),
        ("@parley_bot: hi", [_mention(0, 11)], "hi"),
        ("@PARLEY_BOT   hi", [_mention(0, 11)], "hi"),
        ("hey @parley_bot how are you", [_mention(4, 11)], "hey how are you"),
        ("thanks @parley_bot", [_mention(7, 11)], "thanks"),
        (
            "first @parley_bot\n@parley_bot second",
            [_mention(6, 11), _mention(18, 11)],
            "first\nsecond",
        ),
        ("@parley_bot", [_mention(0, 11)], ""),
        # Other mentions, and a mention without its entity, stay.
        ("@parley_bots are fun", [_mention(0, 12)], "@parley_bots are fun"),
        ("ask @parley_bot", [], "ask @parley_bot"),
        # Commands: /ask disappears, ours lose the suffix, others' stay whole.
        ("/ask@parley_bot @parley_bot what?", [_command(15), _mention(16, 11)], "what?"),
        ("/ASK what?", [_command(4)], "what?"),
        ("/persona\ncoder", [_command(8)], "/persona coder"),
        ("/Reset@PARLEY_BOT", [_command(17)], "/reset"),
        ("/help@otherbot @parley_bot", [_command(14), _mention(15, 11)], "/help@otherbot"),
        # Only a command at the start counts.
        ("try /reset", [{"type": "bot_command", "offset": 4, "length": 6}], "try /reset"),
    ],
)
def test_cleaning_the_text(text: str, entities: list[dict[str, Any]], expected: str) -> None:
    update = {"update_id": 1, "message": _message(1, GROUP, ALICE, text=text, entities=entities)}
    message = parse_update(update, bot_id=BOT_ID, bot_username="@parley_bot")

    assert message is not None
    assert message.text == expected


@pytest.mark.parametrize(
    ("sender", "name"),
    [
        (ALICE, "Alice Liddell"),
        (BOB, "Bob"),
        ({"id": 7, "is_bot": False, "first_name": "", "username": "carol"}, "carol"),
        ({"id": 7, "is_bot": False, "first_name": ""}, "7"),
    ],
)
def test_user_names(sender: dict[str, Any], name: str) -> None:
    update = {"update_id": 1, "message": _message(1, PRIVATE, sender, text="hi")}
    message = parse_update(update, bot_id=BOT_ID, bot_username=BOT_USERNAME)

    assert message is not None
    assert message.user_name == name


def test_a_command_for_another_bot_is_not_for_us_even_as_a_reply_to_us() -> None:
    reply = {**UPDATES["/reset@otherbot"]["message"], "reply_to_message": BOTS_ANSWER}
    message = parse_update({"update_id": 1, "message": reply}, bot_id=BOT_ID, bot_username="p")

    assert message is not None
    assert message.replies_to_bot
    assert not addressed_to_bot(message)


def test_the_event_id_is_the_chat_and_message_not_the_reusable_update_id() -> None:
    private = parsed("private text")
    update = UPDATES["private text"]
    sent = update["message"]
    assert event_id_for(private) == f"{sent['chat']['id']}:{sent['message_id']}"
    # The same message delivered under another update id (ids restart after a week) is the
    # same claim; another message in the chat is not.
    again = parse_update({**update, "update_id": 5}, bot_id=BOT_ID, bot_username=BOT_USERNAME)
    assert again is not None and event_id_for(again) == event_id_for(private)
    other = {**update, "message": {**update["message"], "message_id": 999}}
    later = parse_update(other, bot_id=BOT_ID, bot_username=BOT_USERNAME)
    assert later is not None and event_id_for(later) != event_id_for(private)


def _group_text(text: str, **fields: Any) -> TelegramMessage:
    update = {"update_id": 1, "message": _message(1, GROUP, ALICE, text=text, **fields)}
    found = parse_update(update, bot_id=BOT_ID, bot_username=BOT_USERNAME)
    assert found is not None
    return found


@pytest.mark.parametrize(
    ("text", "length", "addressed", "known"),
    [
        ("/reset", 6, True, True),
        ("/start", 6, True, True),
        ("/scope user", 6, True, True),
        ("/weather", 8, False, False),  # another bot's command, unqualified
        ("/weather@otherbot", 17, False, False),
        ("/weather@parley_bot", 19, True, True),  # ours by name: answered with the list
    ],
)
def test_in_a_group_only_our_commands_are_answered(
    text: str, length: int, addressed: bool, known: bool
) -> None:
    found = _group_text(text, entities=[_command(length)])
    assert addressed_to_bot(found) is addressed
    assert found.known_command is known


def test_an_unknown_command_in_a_private_chat_gets_the_list_of_ours() -> None:
    sent = _message(1, PRIVATE, ALICE, text="/weather", entities=[_command(8)])
    update = {"update_id": 1, "message": sent}
    found = parse_update(update, bot_id=BOT_ID, bot_username=BOT_USERNAME)
    assert found is not None and addressed_to_bot(found)
    assert local_answer(found, bot_name="Parley", bot_username=BOT_USERNAME) == (
        "I don't know /weather. My commands: /ask, /help, /reset, /persona, /personas, /usage, "
        "/forget"
    )


@pytest.mark.parametrize(
    ("name", "answer"),
    [
        ("private /start", None),  # checked below: the greeting
        ("a sticker", CANNOT_SEE.format(media="a sticker")),
        ("a voice message", None),  # the engine transcribes it
        ("photo with a caption", None),
        ("group @mention", None),
        ("/ask@parley_bot", None),
    ],
)
def test_answers_the_adapter_gives_itself(name: str, answer: str | None) -> None:
    given = local_answer(parsed(name), bot_name="Parley", bot_username=BOT_USERNAME)
    if name == "private /start":
        assert given is not None and given.startswith("Hi, I'm Parley, an AI assistant.")
        assert "mention me (@parley_bot) or reply to one of my messages" in given
        assert "/ask QUESTION" in given
        assert given.endswith("Commands: /ask, /help, /reset, /persona, /personas, /usage, /forget")
    else:
        assert given == answer


@pytest.mark.parametrize("text", ["/ask", "/ask@parley_bot", "/ask@parley_bot   "])
def test_a_bare_ask_gets_its_usage(text: str) -> None:
    found = _group_text(text, entities=[_command(len(text.strip()))])
    assert addressed_to_bot(found)
    assert local_answer(found, bot_name="Parley", bot_username=BOT_USERNAME) == ASK_USAGE


def test_a_bare_ask_replying_to_a_message_asks_about_it() -> None:
    french = _message(9, GROUP, BOB, text="Où est la gare ?")
    found = _group_text("/ask", entities=[_command(4)], reply_to_message=french)
    assert local_answer(found, bot_name="Parley", bot_username=BOT_USERNAME) is None
    assert model_text(found) == "> Où est la gare ?"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("private text", "What's the capital of Australia?"),
        ("photo with a caption", "what's in this picture?"),  # the photo is an attachment
        ("a sticker", "[a sticker was attached, which you cannot see]"),
        ("reply with a partial quote", "> Le train part à midi\n\ntranslate this"),
        ("/persona@Parley_Bot coder", "/persona coder"),
        # The bot's own answer is in the conversation already: not quoted again.
        ("reply to the bot", "and of New Zealand?"),
    ],
)
def test_what_the_model_reads(name: str, text: str) -> None:
    assert model_text(parsed(name)) == text


def test_a_reply_quotes_the_whole_message_or_its_caption_and_is_capped() -> None:
    french = _message(9, GROUP, BOB, text="Bonjour.\nÀ demain !")
    found = _group_text(
        "@parley_bot translate", entities=[_mention(0, 11)], reply_to_message=french
    )
    assert model_text(found) == "> Bonjour.\n> À demain !\n\ntranslate"

    photo = _message(
        9, GROUP, BOB, photo=[{"file_id": "x", "width": 1, "height": 1}], caption="Sunset in Lisbon"
    )
    found = _group_text("@parley_bot where?", entities=[_mention(0, 11)], reply_to_message=photo)
    assert found.quoted == "Sunset in Lisbon"

    long = _message(9, GROUP, BOB, text="word " * 1000)
    found = _group_text("@parley_bot tl;dr", entities=[_mention(0, 11)], reply_to_message=long)
    assert found.quoted is not None
    assert len(found.quoted) == QUOTE_LIMIT and found.quoted.endswith("…")


# --- conversation keys --------------------------------------------------------------------

ALICE_ID = ALICE["id"]


@pytest.mark.parametrize(
    ("name", "scope", "thread"),
    [
        ("private text", None, ""),
        ("private text", "user", ""),
        ("group @mention", None, ""),
        ("group @mention", "chat", ""),
        ("group @mention", "channel", ""),
        ("group @mention", "thread", ""),
        ("group @mention", "user", f"user:{ALICE_ID}"),
        ("topic 42 mention", None, "42"),
        ("topic 42 mention", "channel", "42"),
        ("topic 42 mention", "user", f"42:user:{ALICE_ID}"),
        ("topic 43 mention", None, "43"),
        ("topic 43 mention", "user", f"43:user:{ALICE_ID}"),
    ],
)
def test_conversation_keys(name: str, scope: str | None, thread: str) -> None:
    msg = parsed(name)
    assert conversation_key(msg, scope=scope) == ConversationKey(
        "telegram", "", str(msg.chat_id), thread
    )


def test_two_topics_are_two_conversations_in_one_channel() -> None:
    in_42 = conversation_key(parsed("topic 42 mention"), scope=None)
    in_43 = conversation_key(parsed("topic 43 mention"), scope=None)

    assert in_42 != in_43
    assert (
        in_42.channel_key == in_43.channel_key == ConversationKey("telegram", "", str(FORUM["id"]))
    )


def test_an_unknown_scope_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown conversation scope 'room'"):
        conversation_key(parsed("group @mention"), scope="room")


# --- Markdown → HTML ----------------------------------------------------------------------

FENCE = "```"


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        # Emphasis.
        ("**bold** and __bold__", "<b>bold</b> and <b>bold</b>"),
        ("*italic* and _italic_", "<i>italic</i> and <i>italic</i>"),
        ("~~strike~~", "<s>strike</s>"),
        ("***both*** and ___both___", "<i><b>both</b></i> and <i><b>both</b></i>"),
        ("**Note:** read *this*.", "<b>Note:</b> read <i>this</i>."),
        ("**bold with _italic_ inside**", "<b>bold with <i>italic</i> inside</b>"),
        ("_**nested**_ and ~~**nested**~~", "<i><b>nested</b></i> and <s><b>nested</b></s>"),
        ("***a* b**", "<b><i>a</i> b</b>"),
        ("(**in parentheses**)", "(<b>in parentheses</b>)"),
        ("\\*not italic\\*", "*not italic*"),
        # Markers that do not pair up, or whose pairs would cross, stay literal.
        ("**a _b** c_", "<b>a _b</b> c_"),
        ("**open", "**open"),
        ("~5 min, ~~~ and ~x~", "~5 min, ~~~ and ~x~"),
        # ... and emphasis never crosses code or links.
        ("**a `b** c`", "**a <code>b** c</code>"),
        ("**a [b** c](https://x.io)", '**a <a href="https://x.io">b** c</a>'),
        # Code.
        ("use `a<b && c>d`", "use <code>a&lt;b &amp;&amp; c&gt;d</code>"),
        ("`**not bold**` and `` a ` b ``", "<code>**not bold**</code> and <code>a ` b</code>"),
        (
            f"{FENCE}python\nif a < b & c:\n    print('<b>', my_var_name)\n{FENCE}",
            '<pre><code class="language-python">if a &lt; b &amp; c:\n'
            "    print('&lt;b&gt;', my_var_name)</code></pre>",
        ),
        (
            "~~~\n# not a heading\n- nor a list\n~~~",
            "<pre><code># not a heading\n- nor a list</code></pre>",
        ),
        (f"{FENCE}\nnever closed <b>", "<pre><code>never closed &lt;b&gt;</code></pre>"),
        (
            f'{FENCE}x"><b>\ncode\n{FENCE}',
            '<pre><code class="language-x&quot;&gt;&lt;b&gt;">code</code></pre>',
        ),
        (f"text\n{FENCE}python", "text\n"),
        ("run ```ls -la``` now", "run <code>ls -la</code> now"),
        # Links.
        ("[the docs](https://example.com/a_b)", '<a href="https://example.com/a_b">the docs</a>'),
        ('[the docs](https://example.com "Title")', '<a href="https://example.com">the docs</a>'),
        (
            "[wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
            '<a href="https://en.wikipedia.org/wiki/Foo_(bar)">wiki</a>',
        ),
        ("[write](mailto:ann@example.com)", '<a href="mailto:ann@example.com">write</a>'),
        ("[me](tg://user?id=42)", '<a href="tg://user?id=42">me</a>'),
        ("[](https://example.com)", '<a href="https://example.com">https://example.com</a>'),
        (
            "![a chart](https://example.com/c.png)",
            '<a href="https://example.com/c.png">a chart</a>',
        ),
        ("**[docs](https://example.com)**", '<b><a href="https://example.com">docs</a></b>'),
        ("[**docs** for `f()`](https://x.io)", '<a href="https://x.io"><b>docs</b> for f()</a>'),
        (
            "?a=1&b=2: [q](https://x.io/?a=1&b=2)",
            '?a=1&amp;b=2: <a href="https://x.io/?a=1&amp;b=2">q</a>',
        ),
        (
            '[x](https://x.io/"onmouseover="alert(1))',
            '<a href="https://x.io/%22onmouseover=%22alert(1)">x</a>',
        ),
        ("[x](<https://x.io/a b>)", '<a href="https://x.io/a%20b">x</a>'),
        ("[<b>](https://x.io)", '<a href="https://x.io">&lt;b&gt;</a>'),
        ("[click](javascript:alert(1))", "click (javascript:alert(1))"),
        ("[click](JavaScript:alert(document.cookie))", "click (JavaScript:alert(document.cookie))"),
        ("[relative](/docs/page)", "relative (/docs/page)"),
        ("[empty]()", "empty"),
        # Bare URLs and <url> stay text (Telegram links them), untouched by emphasis.
        ("go to https://example.com/a_b*c*d_, now", "go to https://example.com/a_b*c*d_, now"),
        ("see <https://example.com/x>", "see https://example.com/x"),
        ("**https://example.com/a_b**", "<b>https://example.com/a_b</b>"),
        ("<javascript:alert(1)>", "&lt;javascript:alert(1)&gt;"),
        # Headings, lists, quotes, rules.
        ("# Title", "<b>Title</b>"),
        ("###### Small title ##", "<b>Small title</b>"),
        ("## The **big** _one_", "<b>The big <i>one</i></b>"),
        ("#hashtag and # in text", "#hashtag and # in text"),
        ("- one\n  - nested\n* star\n+ plus", "• one\n  • nested\n• star\n• plus"),
        ("- **bold** item", "• <b>bold</b> item"),
        ("1. first\n2. second", "1. first\n2. second"),
        ("- [ ] to do\n- [x] done\n  - [X] nested", "☐ to do\n☑ done\n  ☑ nested"),
        (
            "> a quote with **bold**\n>\n> > nested\n> - item\nafter",
            "<blockquote>a quote with <b>bold</b>\n\nnested\n• item</blockquote>\nafter",
        ),
        ("above\n\n---\n\nbelow", f"above\n\n{HORIZONTAL_RULE}\n\nbelow"),
        ("***\n* * *\n___", "\n".join([HORIZONTAL_RULE] * 3)),
        # Tables: a <pre> with plain cells, padded, alignment kept, escaped after measuring.
        (
            "| Name | Qty | Note |\n|---|--:|:-:|\n"
            "| apples & pears | 3 | **ok** |\n| kiwi | 12 | [x](https://x.io) |",
            "<pre>"
            "| Name           | Qty |       Note       |\n"
            "|----------------|-----|------------------|\n"
            "| apples &amp; pears |   3 |        ok        |\n"
            "| kiwi           |  12 | x (https://x.io) |"
            "</pre>",
        ),
        (
            "| 名前 | x |\n|---|---|\n| 山 | y |",
            "<pre>| 名前 | x   |\n|------|-----|\n| 山   | y   |</pre>",
        ),
        # Escaping: model output never becomes a tag.
        ("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
        ('<b onclick="steal()">hi</b>', '&lt;b onclick="steal()"&gt;hi&lt;/b&gt;'),
        ("Tom & Jerry, 1 < 2 > 0, &amp;", "Tom &amp; Jerry, 1 &lt; 2 &gt; 0, &amp;amp;"),
        # Left alone.
        ("snake_case_words and _private_var", "snake_case_words and _private_var"),
        ("2*3*4 = 24, a * b * c, 5 * 2", "2*3*4 = 24, a * b * c, 5 * 2"),
        ("/usr/lib/my_long_file_name.py __init__.py", "/usr/lib/my_long_file_name.py __init__.py"),
        ("C:\\Users\\me\\.ssh and \\\\server\\share", "C:\\Users\\me\\.ssh and \\\\server\\share"),
        ("**kwargs and *args", "**kwargs and *args"),
        ("a\r\nb", "a\nb"),
    ],
)
def test_markdown_to_html(markdown: str, expected: str) -> None:
    assert markdown_to_html(markdown) == expected


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        ("<b>bold</b> and <i>it</i>", "bold and it"),
        (
            '<a href="https://x.io/?a=1&amp;b=2">the &lt;docs&gt;</a>',
            "the <docs> (https://x.io/?a=1&b=2)",
        ),
        ('<a href="https://x.io">https://x.io</a>', "https://x.io"),
        ('<pre><code class="language-python">a &lt; b</code></pre>', "a < b"),
        ("<blockquote>q</blockquote>\n&amp;lt; stays &amp;lt;", "q\n&lt; stays &lt;"),
    ],
)
def test_html_to_plain(markup: str, plain: str) -> None:
    assert html_to_plain(markup) == plain


def test_rendered_length_counts_text_after_parsing_in_utf16_units() -> None:
    markup = markdown_to_html("**🎉 a&b** [docs](https://example.com/very/long/url)")

    assert markup == '<b>🎉 a&amp;b</b> <a href="https://example.com/very/long/url">docs</a>'
    assert rendered_length(markup) == len("🎉 a&b docs") + 1
    assert TELEGRAM_LIMIT == 4096


# --- properties ---------------------------------------------------------------------------

_ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "b": set(),
    "i": set(),
    "u": set(),
    "s": set(),
    "code": {"class"},
    "pre": set(),
    "a": {"href"},
    "blockquote": set(),
    "tg-spoiler": set(),
}


class TagChecker(HTMLParser):
    """Collects what Telegram would reject: unknown tags or attributes, unbalanced or
    crossing tags, entities other than the four it knows, markup inside code."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.open: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _ALLOWED_ATTRIBUTES:
            self.problems.append(f"tag <{tag}>")
        elif {name for name, _ in attrs} - _ALLOWED_ATTRIBUTES[tag]:
            self.problems.append(f"attributes {attrs} on <{tag}>")
        if self.open and self.open[-1] == "code":
            self.problems.append(f"<{tag}> inside <code>")
        if self.open and self.open[-1] == "pre" and tag != "code":
            self.problems.append(f"<{tag}> inside <pre>")
        if tag in self.open and tag in ("a", "blockquote", "pre", "code"):
            self.problems.append(f"nested <{tag}>")
        self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> while {self.open} are open")
        else:
            self.open.pop()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_entityref(self, name: str) -> None:
        if name not in ("lt", "gt", "amp", "quot"):
            self.problems.append(f"entity &{name};")

    def handle_charref(self, name: str) -> None:
        self.problems.append(f"character reference &#{name};")

    def handle_comment(self, data: str) -> None:
        self.problems.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.problems.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.problems.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.problems.append(f"declaration {data!r}")


def check_tags(markup: str) -> list[str]:
    checker = TagChecker()
    checker.feed(markup)
    checker.close()
    return checker.problems + [f"<{tag}> never closed" for tag in checker.open]


def test_the_checker_catches_what_telegram_rejects() -> None:
    assert check_tags("<b>a <i>b</b> c</i>")
    assert check_tags("<b>open")
    assert check_tags('<b onclick="x">a</b>')
    assert check_tags("<script>x</script>")
    assert check_tags("&nbsp;")
    assert check_tags("<code><b>x</b></code>")
    assert not check_tags('<b>a <a href="https://x.io">b &amp; c</a></b>')


markdownish = st.lists(
    st.sampled_from(
        [
            "<",
            ">",
            "&",
            '"',
            "'",
            "|",
            "!",
            "[",
            "]",
            "(",
            ")",
            "`",
            "```",
            "~~~",
            "*",
            "**",
            "_",
            "__",
            "~",
            "~~",
            "\\",
            "\n",
            " ",
            "> ",
            "- ",
            "- [x] ",
            "# ",
            "---",
            "| --- |",
            "https://",
            "mailto:",
            "tg://",
            "javascript:",
            "<b>",
            "</i>",
            "<a href='x'>",
            "&amp;",
            "&lt;",
            "&#60;",
            "x.y",
            "a",
            "🎉",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=400, database=None)
@given(text=st.one_of(st.text(), markdownish))
def test_only_allowed_balanced_tags_come_out(text: str) -> None:
    markup = markdown_to_html(text)

    assert check_tags(markup) == []


@settings(max_examples=400, database=None)
@given(text=st.one_of(st.text(), markdownish))
def test_the_plain_fallback_adds_no_markup_characters(text: str) -> None:
    plain = html_to_plain(markdown_to_html(text))

    for char in "<>&":
        assert plain.count(char) <= text.count(char)
    assert rendered_length(markdown_to_html(text)) <= utf16_length(plain)


prose = st.text(alphabet="abcXYZ019 .,?!'\n\t", max_size=80)


@settings(max_examples=200, database=None)
@given(text=prose)
def test_prose_without_markdown_passes_through(text: str) -> None:
    assert markdown_to_html(text) == text
    assert html_to_plain(text) == text


# --- the first post of a streamed answer --------------------------------------------------


@pytest.mark.parametrize(
    ("streamed", "first"),
    [
        ("C", None),
        ("Cert", None),
        ("Certainly", None),
        ("Certainly!", None),  # the sentence may go on ("!?"); its end shows with what follows
        ("Certainly! H", "Certainly!"),
        ("Yes, that", None),
        ("Line one\nLi", "Line one"),
        ("The capital of Australia is", "The capital of Australia"),
        ("  **Bold** start of something long", "**Bold** start of something"),
    ],
)
def test_the_first_post_waits_for_whole_words(streamed: str, first: str | None) -> None:
    assert first_words(streamed) == first
