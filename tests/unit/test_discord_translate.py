"""Discord translation: MESSAGE_CREATE payloads, conversation keys, thread names, safe text."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.discord.translate import (
    DISCORD_LIMIT,
    DiscordMessage,
    close_open_fence,
    conversation_key,
    event_id_for_interaction,
    event_id_for_message,
    parse_message,
    safe_text,
    thread_name,
)
from core.attachments import IMAGE, Attachment
from core.events import ConversationKey

BOT_ID = "1180427365310451812"
ALICE, BOB, OTHER_BOT = "283720358194872320", "412959101240459264", "159985870458322944"
GUILD, GENERAL, THREAD, DM = (
    "1031275146612961280",
    "1031275147388907530",
    "1187651924311851038",
    "1187650010480293908",
)
ROLE = "1031284497205547079"
ZWSP = "\u200b"

# --- recorded-looking payloads ------------------------------------------------------------


def _user(
    user_id: str, username: str, global_name: str | None, *, bot: bool = False
) -> dict[str, Any]:
    user: dict[str, Any] = {
        "id": user_id,
        "username": username,
        "avatar": "a1b2c3d4e5f60718293a4b5c6d7e8f90",
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "global_name": global_name,
        "avatar_decoration_data": None,
        "banner_color": None,
        "clan": None,
    }
    if bot:
        user |= {"bot": True, "discriminator": "4711", "global_name": None}
    return user


BOT_USER = _user(BOT_ID, "parley", None, bot=True)
ALICE_USER = _user(ALICE, "alice.w", "Alice Walker")
BOB_USER = _user(BOB, "bob_builds", None)
_MEMBER: dict[str, Any] = {
    "roles": [],
    "premium_since": None,
    "pending": False,
    "nick": None,
    "mute": False,
    "joined_at": "2022-10-17T09:12:44.512000+00:00",
    "flags": 0,
    "deaf": False,
    "communication_disabled_until": None,
    "banner": None,
    "avatar": None,
}


def _guild_message(**fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "type": 0,
        "tts": False,
        "timestamp": "2023-12-20T14:03:11.842000+00:00",
        "pinned": False,
        "nonce": "1187651920000000000",
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "member": _MEMBER,
        "id": "1187651921711075368",
        "flags": 0,
        "embeds": [],
        "edited_timestamp": None,
        "content": "",
        "components": [],
        "channel_id": GENERAL,
        "author": ALICE_USER,
        "attachments": [],
        "guild_id": GUILD,
    }
    return payload | fields


def _mentioned(user: dict[str, Any]) -> dict[str, Any]:
    # In a guild, each mentioned user carries their member object.
    return user | {"member": _MEMBER}


PAYLOADS: dict[str, dict[str, Any]] = {
    "mention": _guild_message(
        content=f"<@{BOT_ID}> how do I rotate a PDF page?",
        mentions=[_mentioned(BOT_USER)],
    ),
    "nickname mention, addressed": _guild_message(
        id="1187651999999999999",
        content=f"<@!{BOT_ID}>, summarise   this for me",
        mentions=[_mentioned(BOT_USER)],
    ),
    "bare mention": _guild_message(content=f"<@{BOT_ID}>", mentions=[_mentioned(BOT_USER)]),
    "reply to the bot": _guild_message(
        type=19,
        id="1187652300000000001",
        content="and in landscape?",
        mentions=[_mentioned(BOT_USER)],  # the reply pings the bot
        message_reference={
            "type": 0,
            "channel_id": GENERAL,
            "message_id": "1187652000000000000",
            "guild_id": GUILD,
        },
        referenced_message={
            "type": 0,
            "content": "Use **Rotate** in the toolbar.",
            "mentions": [],
            "id": "1187652000000000000",
            "channel_id": GENERAL,
            "author": BOT_USER,
        },
    ),
    "reply to a user, without ping": _guild_message(
        type=19,
        content="agreed",
        message_reference={"type": 0, "channel_id": GENERAL, "message_id": "1187652000000000"},
        referenced_message={"id": "1187652000000000", "author": BOB_USER, "content": "tabs!"},
    ),
    "in a thread": _guild_message(
        channel_id=THREAD,
        content="what about odd pages only?",
        position=3,
    ),
    "direct message": {
        "type": 0,
        "tts": False,
        "timestamp": "2023-12-20T14:10:02.113000+00:00",
        "pinned": False,
        "nonce": "1187653600000000000",
        "mentions": [],
        "mention_roles": [],
        "mention_everyone": False,
        "id": "1187653601101234176",
        "flags": 0,
        "embeds": [],
        "edited_timestamp": None,
        "content": "hi! can you *explain* monads?",
        "components": [],
        "channel_id": DM,
        "author": BOB_USER,
        "attachments": [],
    },
    "markup": _guild_message(
        content=(
            f"<@{BOT_ID}> <:partyblob:1031290019847749662> ask <@&{ROLE}> or <@{BOB}> "
            f"in <#{GENERAL}> <a:typing:1031290019847749663>, not <@{ALICE}>"
        ),
        mentions=[_mentioned(BOT_USER), _mentioned(BOB_USER)],
        mention_roles=[ROLE],
    ),
}

IGNORED: dict[str, dict[str, Any]] = {
    "from a bot": _guild_message(
        author=_user(OTHER_BOT, "Dyno", None, bot=True),
        content=f"<@{BOT_ID}> ping",
        mentions=[_mentioned(BOT_USER)],
    ),
    "from the bot itself": _guild_message(author=BOT_USER, content="Here is the answer."),
    "from a webhook": _guild_message(
        webhook_id="1101010101010101010",
        author={"id": "1101010101010101010", "username": "GitHub", "bot": True, "avatar": None},
        content=f"<@{BOT_ID}> new issue",
        mentions=[_mentioned(BOT_USER)],
    ),
    "a member joined (type 7)": _guild_message(type=7, content=""),
    "a pin (type 6), mentioning the bot": _guild_message(
        type=6, content="", mentions=[_mentioned(BOT_USER)]
    ),
    "nothing left once cleaned": _guild_message(content="   "),
}


def message(**fields: Any) -> DiscordMessage:
    defaults: dict[str, Any] = {
        "guild_id": GUILD,
        "channel_id": GENERAL,
        "parent_id": "",
        "message_id": "1187651921711075368",
        "author_id": ALICE,
        "author_name": "Alice Walker",
        "text": "",
        "is_direct": False,
        "mentions_bot": False,
        "in_thread": False,
        "replies_to_bot": False,
    }
    return DiscordMessage(**(defaults | fields))


# --- incoming messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "thread_parent_id", "expected"),
    [
        (
            "mention",
            None,
            message(text="how do I rotate a PDF page?", mentions_bot=True),
        ),
        (
            "nickname mention, addressed",
            None,
            message(
                message_id="1187651999999999999",
                text="summarise   this for me",
                mentions_bot=True,
            ),
        ),
        ("bare mention", None, message(text="", mentions_bot=True)),
        (
            "reply to the bot",
            None,
            message(
                message_id="1187652300000000001",
                text="and in landscape?",
                mentions_bot=True,
                replies_to_bot=True,
            ),
        ),
        ("reply to a user, without ping", None, message(text="agreed")),
        (
            "in a thread",
            GENERAL,
            message(
                channel_id=THREAD,
                parent_id=GENERAL,
                text="what about odd pages only?",
                in_thread=True,
            ),
        ),
        (
            "direct message",
            None,
            message(
                guild_id="",
                channel_id=DM,
                message_id="1187653601101234176",
                author_id=BOB,
                author_name="bob_builds",  # no global name: the username
                text="hi! can you *explain* monads?",
                is_direct=True,
            ),
        ),
        (
            "markup",
            None,
            message(
                text=(
                    ":partyblob: ask @role or @bob_builds in #channel :typing:, "
                    f"not @{ALICE}"  # not in `mentions`: the id stays
                ),
                mentions_bot=True,
            ),
        ),
    ],
)
def test_parse_message(name: str, thread_parent_id: str | None, expected: DiscordMessage) -> None:
    payload = copy.deepcopy(PAYLOADS[name])

    assert parse_message(payload, bot_id=BOT_ID, thread_parent_id=thread_parent_id) == expected
    assert payload == PAYLOADS[name]


@pytest.mark.parametrize("name", IGNORED)
def test_parse_message_ignores(name: str) -> None:
    assert parse_message(IGNORED[name], bot_id=BOT_ID) is None


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (f"tell <@{BOT_ID}> hello", "tell hello"),
        (f"first line <@{BOT_ID}>\nsecond", "first line\nsecond"),
        (f"<@{BOT_ID}>: what now", "what now"),
        (f"<@{BOT_ID}>:) hi", ":) hi"),  # a smiley, not addressing punctuation
        (f"<@{BOT_ID}> <@!{BOT_ID}> twice", "twice"),
    ],
)
def test_bot_mention_is_removed_with_its_spacing(content: str, text: str) -> None:
    payload = _guild_message(content=content, mentions=[_mentioned(BOT_USER)])

    parsed = parse_message(payload, bot_id=BOT_ID)

    assert parsed is not None
    assert parsed.text == text


def _forward(text: str, **fields: Any) -> dict[str, Any]:
    """A forwarded message as the gateway sends it: empty content, the original in a
    snapshot, a message_reference of type 1 (FORWARD)."""
    snapshot = {
        "type": 0,
        "content": text,
        "embeds": [],
        "attachments": [],
        "timestamp": "2023-12-20T13:55:02.114000+00:00",
        "edited_timestamp": None,
        "flags": 0,
        "mentions": [],
        "mention_roles": [],
        "components": [],
    }
    return _guild_message(
        content="",
        message_snapshots=[{"message": snapshot}],
        message_reference={"type": 1, "channel_id": GENERAL, "message_id": "1187650000000000000"},
        **fields,
    )


def test_a_forwarded_message_reads_the_forwarded_text() -> None:
    payload = _forward(f"the **release** is <@&{ROLE}> friday", guild_id=None, channel_id=DM)

    parsed = parse_message(payload, bot_id=BOT_ID)

    assert parsed is not None
    assert (parsed.text, parsed.is_direct) == ("the **release** is @role friday", True)


def test_a_forward_of_a_message_without_text_is_ignored() -> None:
    assert parse_message(_forward("", guild_id=None, channel_id=DM), bot_id=BOT_ID) is None


def test_payload_as_the_runtime_builds_it() -> None:
    # The runtime rebuilds the payload from discord.py's Message: absent ids are None.
    payload: dict[str, Any] = {
        "id": "1187653601101234176",
        "channel_id": DM,
        "guild_id": None,
        "content": "hello",
        "type": 0,
        "webhook_id": None,
        "author": {"id": BOB, "username": "bob_builds", "global_name": None, "bot": False},
        "mentions": [],
        "mention_roles": [],
        "referenced_message": None,
        "message_snapshots": [],
    }

    parsed = parse_message(payload, bot_id=BOT_ID)

    assert parsed is not None
    assert (parsed.guild_id, parsed.is_direct, parsed.replies_to_bot) == ("", True, False)


def test_event_ids() -> None:
    assert event_id_for_message("1187651921711075368") == "message:1187651921711075368"
    assert event_id_for_interaction("1187651921711075368") == "interaction:1187651921711075368"


# --- conversation keys --------------------------------------------------------------------

IN_CHANNEL = message(message_id="1187651921711075368", text="q", mentions_bot=True)
IN_THREAD = message(channel_id=THREAD, parent_id=GENERAL, in_thread=True, text="q")
DIRECT = message(guild_id="", channel_id=DM, is_direct=True, text="q")
NEW_THREAD = "1187651921711075368"  # a thread started from a message has its id


@pytest.mark.parametrize(
    ("parsed", "scope", "thread_id", "thread"),
    [
        (IN_CHANNEL, None, NEW_THREAD, NEW_THREAD),
        (IN_CHANNEL, "thread", NEW_THREAD, NEW_THREAD),
        (IN_CHANNEL, None, None, ""),  # no thread started: the channel
        (IN_CHANNEL, "channel", None, ""),
        (IN_CHANNEL, "user", None, f"user:{ALICE}"),
        (IN_THREAD, None, THREAD, THREAD),
        (IN_THREAD, "thread", None, THREAD),
        (IN_THREAD, "channel", THREAD, ""),
        (IN_THREAD, "user", THREAD, f"user:{ALICE}"),
    ],
)
def test_conversation_key_in_a_guild(
    parsed: DiscordMessage, scope: str | None, thread_id: str | None, thread: str
) -> None:
    key = conversation_key(parsed, scope=scope, thread_id=thread_id)

    # The channel is the parent for a thread's messages, so the channel's settings apply.
    assert key == ConversationKey("discord", GUILD, GENERAL, thread)


@pytest.mark.parametrize("scope", [None, "thread", "channel", "user"])
def test_a_direct_message_channel_is_one_conversation(scope: str | None) -> None:
    assert conversation_key(DIRECT, scope=scope) == ConversationKey("discord", "", DM, "")


def test_unknown_scope() -> None:
    with pytest.raises(ValueError, match="unknown conversation scope 'room'"):
        conversation_key(IN_CHANNEL, scope="room")


# --- thread names -------------------------------------------------------------------------

LONG_QUESTION = (
    "Could you explain how the garbage collector in CPython decides when to run a full "
    "collection of these oldest generations, and why?"
)


@pytest.mark.parametrize(
    ("question", "name"),
    [
        ("how do I rotate a PDF page?", "how do I rotate a PDF page?"),
        (
            LONG_QUESTION,
            "Could you explain how the garbage collector in CPython decides when to run a "
            "full collection of…",
        ),
        (
            "## Why does **this** ~~fail~~ with `None`?\n> quoted ||spoiler|| _note_",
            "Why does this fail with None? quoted spoiler note",
        ),
        ("```python\nprint(1)\n```\nwhy?", "print(1) why?"),
        ("is snake_case fine in C# > Java?", "is snake_case fine in C# > Java?"),
        ("  lots\n\n of \t space  ", "lots of space"),
        ("", "Conversation"),
        ("**`~~`** # >", "Conversation"),
        ("x" * 300, "x" * 99 + "…"),
    ],
)
def test_thread_name(question: str, name: str) -> None:
    assert thread_name(question) == name


def test_thread_name_cut_exactly_between_words() -> None:
    words = "word " * 40  # "word word …": 99 characters are 20 whole words

    assert thread_name(words) == " ".join(["word"] * 20) + "…"
    assert len(thread_name(words)) == 100


@settings(max_examples=200, database=None)
@given(question=st.text())
def test_thread_name_fits(question: str) -> None:
    name = thread_name(question)

    assert 0 < len(name) <= 100
    assert name == name.strip()


# --- safe text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("Hello @everyone and @here!", f"Hello @{ZWSP}everyone and @{ZWSP}here!"),
        ("ping @Everyone", f"ping @{ZWSP}Everyone"),
        (
            f"<@{ALICE}> <@!{ALICE}> <@&{ROLE}> <#{GENERAL}>",
            f"<{ZWSP}@{ALICE}> <{ZWSP}@!{ALICE}> <{ZWSP}@&{ROLE}> <{ZWSP}#{GENERAL}>",
        ),
        ("use `@everyone` or ``<@1>``", "use `@everyone` or ``<@1>``"),
        ("```\n@here <@1>\n```\nthen @here", f"```\n@here <@1>\n```\nthen @{ZWSP}here"),
        ("```py\nx = '<#1>'```", "```py\nx = '<#1>'```"),
        # An escaped backtick opens no code, so the mention after it is text.
        ("\\`@everyone`", f"\\`@{ZWSP}everyone`"),
        # An unclosed fence is no code block on Discord: its text is text.
        ("```\n@everyone", f"```\n@{ZWSP}everyone"),
        (
            "# Title\n## Sub\n**bold** [docs](https://example.com) > quote",
            "# Title\n## Sub\n**bold** [docs](https://example.com) > quote",
        ),
        (
            "Results:\n| Name | Score |\n|:-----|------:|\n| `ana` | 9 |\n| @here | 10 |\nDone.",
            "Results:\n```\n| Name  | Score |\n|-------|-------|\n| ana   |     9 |\n"
            "| @here |    10 |\n```\nDone.",
        ),
        (
            "```\n| a | b |\n|---|---|\n```",  # a table in a code block stays as written
            "```\n| a | b |\n|---|---|\n```",
        ),
    ],
)
def test_safe_text(markdown: str, expected: str) -> None:
    assert safe_text(markdown) == expected


def test_limit() -> None:
    assert DISCORD_LIMIT == 2000


# Code as Discord reads it: ``` blocks, `` and ` spans; a backslash escapes the character
# after it outside code.
CODE_OR_ESCAPE = re.compile(r"\\[\s\S]|(```[\s\S]+?```|``[\s\S]+?``|`[^`]+`)")
PINGS = re.compile(r"@everyone|@here|<@|<#", re.IGNORECASE)


def outside_code(text: str) -> list[str]:
    """The stretches of `text` Discord renders as text, not code."""
    stretches, position = [], 0
    for match in CODE_OR_ESCAPE.finditer(text):
        if match[1] is not None:
            stretches.append(text[position : match.start()])
            position = match.end()
    return [*stretches, text[position:]]


markdownish = st.lists(
    st.sampled_from(
        [
            "@",
            "@everyone",
            "@here",
            "@HERE",
            "<",
            "<@",
            "<@1>",
            "<@!1>",
            "<@&1>",
            "<#1>",
            "#",
            "`",
            "``",
            "```",
            "\\",
            "|",
            "| a | b |\n|---|---|\n",
            "---",
            "\n",
            " ",
            "x",
            ZWSP,
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500, database=None)
@given(text=st.one_of(st.text(), markdownish))
def test_no_mention_survives_outside_code(text: str) -> None:
    for stretch in outside_code(safe_text(text)):
        assert not PINGS.search(stretch), stretch


@settings(max_examples=300, database=None)
@given(text=st.one_of(st.text(), markdownish))
def test_safe_text_only_adds_zero_width_spaces_without_tables(text: str) -> None:
    if "|" in text:  # a table may be rewritten
        return
    assert safe_text(text).replace(ZWSP, "") == text.replace(ZWSP, "")


def test_mentioning_the_bots_managed_role_is_mentioning_the_bot() -> None:
    payload = _guild_message(content=f"<@&{ROLE}> when is the release?", mention_roles=[ROLE])

    ours = parse_message(payload, bot_id=BOT_ID, bot_role_ids=frozenset({ROLE}))
    other = parse_message(payload, bot_id=BOT_ID, bot_role_ids=frozenset({"999"}))

    assert ours is not None and other is not None
    assert (ours.text, ours.mentions_bot) == ("when is the release?", True)
    assert (other.text, other.mentions_bot) == ("@role when is the release?", False)


def test_a_message_of_attachments_only_is_kept_with_them() -> None:
    image = {"id": "1", "filename": "a.png", "size": 10, "url": "https://cdn/a.png"}
    described = (Attachment(IMAGE, "a.png", "", 10, "https://cdn/a.png"),)
    only = parse_message(
        _guild_message(content="", guild_id=None, channel_id=DM, attachments=[image]),
        bot_id=BOT_ID,
    )
    sticker = parse_message(
        _guild_message(content="", sticker_items=[{"id": "2", "name": "wave", "format_type": 1}]),
        bot_id=BOT_ID,
    )
    with_text = parse_message(
        _guild_message(content="what is this?", attachments=[image]), bot_id=BOT_ID
    )

    assert only is not None and (only.text, only.attachments, only.stickers_only) == (
        "",
        described,
        False,
    )
    assert sticker is not None and (sticker.attachments, sticker.stickers_only) == ((), True)
    assert with_text is not None and (with_text.text, with_text.attachments) == (
        "what is this?",
        described,
    )


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("Start:\n```python\nprint(1)", "Start:\n```python\nprint(1)\n```"),
        ("Start:\n```python\nprint(1)\n", "Start:\n```python\nprint(1)\n```"),
        ("```\nclosed\n```", "```\nclosed\n```"),
        ("```py\nx = 1```", "```py\nx = 1```"),  # Discord closes it at the line's end
        ("```", "```"),  # no code yet
        ("no code", "no code"),
    ],
)
def test_an_open_code_block_is_closed(markdown: str, expected: str) -> None:
    assert close_open_fence(markdown) == expected
