"""Slack translation: events to SlackMessage, conversation keys, and Markdown to mrkdwn."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.slack.translate import (
    HORIZONTAL_RULE,
    SlackMessage,
    clean_text,
    conversation_key,
    event_id_for,
    markdown_to_mrkdwn,
    parse_event,
    replace_user_mentions,
)
from core.attachments import FILE, Attachment
from core.events import ConversationKey

TEAM = "T0G9PQBBK"
BOT_USER_ID = "U0BOT1234"
BOT_ID = "B0BOT1234"
ALICE, BOB, CAROL = "U061F7AUR", "U0G9QF9C6", "U07QCRPA4"
GENERAL, PRIVATE, GROUP_DM, DM = "C0LAN2Q65", "G0PRIV123", "C0MPIM456", "D0DMALICE"

# --- recorded-looking payloads ------------------------------------------------------------

# One mention arrives twice: as app_mention and as message.channels, with the same ts.
MENTION_TS = "1700000101.000200"
MENTION_TEXT = f"<@{BOT_USER_ID}> what's the difference between TCP &amp; UDP? cc <@{BOB}>"
_BLOCKS = [{"type": "rich_text", "block_id": "yQ3", "elements": []}]

EVENTS: dict[str, dict[str, Any]] = {
    "app_mention": {
        "client_msg_id": "4a1d1c9e-3b6f-4f8e-9c2a-0f8f6f0b8d11",
        "type": "app_mention",
        "text": MENTION_TEXT,
        "user": ALICE,
        "ts": MENTION_TS,
        "blocks": _BLOCKS,
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": MENTION_TS,
    },
    "message.channels (the same mention)": {
        "client_msg_id": "4a1d1c9e-3b6f-4f8e-9c2a-0f8f6f0b8d11",
        "type": "message",
        "text": MENTION_TEXT,
        "user": ALICE,
        "ts": MENTION_TS,
        "blocks": _BLOCKS,
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": MENTION_TS,
        "channel_type": "channel",
    },
    "message.channels in a thread": {
        "client_msg_id": "9f3c2b1a-7d6e-4c5b-8a9f-1e2d3c4b5a69",
        "type": "message",
        "text": "and which one does <https://webrtc.org|WebRTC> use?",
        "user": BOB,
        "ts": "1700000160.000300",
        "blocks": _BLOCKS,
        "team": TEAM,
        "thread_ts": MENTION_TS,
        "parent_user_id": ALICE,
        "channel": GENERAL,
        "event_ts": "1700000160.000300",
        "channel_type": "channel",
    },
    "message.im": {
        "client_msg_id": "0c6a5d4e-2f1b-4a3c-9d8e-7f6a5b4c3d2e",
        "type": "message",
        "text": "summarise <#C0LAN2Q65|general> for me, please",
        "user": ALICE,
        "ts": "1700000200.000400",
        "blocks": _BLOCKS,
        "team": TEAM,
        "channel": DM,
        "event_ts": "1700000200.000400",
        "channel_type": "im",
    },
    "message.im in a thread": {
        "type": "message",
        "text": "and shorter?",
        "user": ALICE,
        "ts": "1700000230.000500",
        "thread_ts": "1700000200.000400",
        "parent_user_id": ALICE,
        "team": TEAM,
        "channel": DM,
        "event_ts": "1700000230.000500",
        "channel_type": "im",
    },
    "message.groups": {
        "type": "message",
        "text": f"<@{BOT_USER_ID}>: status?",
        "user": CAROL,
        "ts": "1700000300.000600",
        "team": TEAM,
        "channel": PRIVATE,
        "event_ts": "1700000300.000600",
        "channel_type": "group",
    },
    "message.mpim": {
        "type": "message",
        "text": f"<!here> <@{BOT_USER_ID}> lunch at 12?",
        "user": BOB,
        "ts": "1700000330.000700",
        "team": TEAM,
        "channel": GROUP_DM,
        "event_ts": "1700000330.000700",
        "channel_type": "mpim",
    },
    "file_share": {
        "type": "message",
        "subtype": "file_share",
        "text": f"<@{BOT_USER_ID}> can you check this log?",
        "files": [
            {
                "id": "F0LOG4567",
                "created": 1700000400,
                "name": "build.log",
                "title": "build.log",
                "mimetype": "text/plain",
                "filetype": "text",
                "size": 18342,
                "url_private": "https://files.slack.com/files-pri/T0G9PQBBK-F0LOG4567/build.log",
            }
        ],
        "upload": False,
        "user": CAROL,
        "display_as_bot": False,
        "ts": "1700000400.000800",
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": "1700000400.000800",
        "channel_type": "channel",
    },
    "thread_broadcast": {
        "type": "message",
        "subtype": "thread_broadcast",
        "text": "posting this to the channel too",
        "user": BOB,
        "ts": "1700000430.000900",
        "thread_ts": MENTION_TS,
        "root": {"type": "message", "user": ALICE, "ts": MENTION_TS, "text": MENTION_TEXT},
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": "1700000430.000900",
        "channel_type": "channel",
    },
    # Ignored ---------------------------------------------------------------------------
    "bot_message (a legacy integration)": {
        "type": "message",
        "subtype": "bot_message",
        "text": "Build #1289 passed :white_check_mark:",
        "username": "CI",
        "bot_id": "B0CI00001",
        "ts": "1700000500.001000",
        "channel": GENERAL,
        "event_ts": "1700000500.001000",
        "channel_type": "channel",
    },
    "another app's message": {
        "type": "message",
        "text": "Reminder: stand-up in 5 minutes",
        "user": "U0OTHERBOT",
        "bot_id": "B0OTHER01",
        "app_id": "A0OTHER01",
        "bot_profile": {"id": "B0OTHER01", "name": "Reminders", "team_id": TEAM},
        "ts": "1700000530.001100",
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": "1700000530.001100",
        "channel_type": "channel",
    },
    "the bot's own reply": {
        "type": "message",
        "text": "TCP is connection-oriented; UDP is not.",
        "user": BOT_USER_ID,
        "bot_id": BOT_ID,
        "app_id": "A0PARLEY1",
        "ts": "1700000102.000100",
        "thread_ts": MENTION_TS,
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": "1700000102.000100",
        "channel_type": "channel",
    },
    "message_changed": {
        "type": "message",
        "subtype": "message_changed",
        "hidden": True,
        "message": {
            "type": "message",
            "text": f"<@{BOT_USER_ID}> what's the difference between TCP and UDP?",
            "user": ALICE,
            "ts": MENTION_TS,
            "edited": {"user": ALICE, "ts": "1700000120.000000"},
        },
        "previous_message": {"type": "message", "text": MENTION_TEXT, "user": ALICE},
        "channel": GENERAL,
        "ts": "1700000120.000100",
        "event_ts": "1700000120.000100",
        "channel_type": "channel",
    },
    "message_deleted": {
        "type": "message",
        "subtype": "message_deleted",
        "hidden": True,
        "deleted_ts": MENTION_TS,
        "previous_message": {"type": "message", "text": MENTION_TEXT, "user": ALICE},
        "channel": GENERAL,
        "ts": "1700000140.000100",
        "event_ts": "1700000140.000100",
        "channel_type": "channel",
    },
    "channel_join": {
        "type": "message",
        "subtype": "channel_join",
        "text": f"<@{CAROL}> has joined the channel",
        "user": CAROL,
        "inviter": ALICE,
        "ts": "1700000600.001200",
        "channel": GENERAL,
        "event_ts": "1700000600.001200",
        "channel_type": "channel",
    },
    "channel_leave": {
        "type": "message",
        "subtype": "channel_leave",
        "text": f"<@{CAROL}> has left the channel",
        "user": CAROL,
        "ts": "1700000630.001300",
        "channel": GENERAL,
        "event_ts": "1700000630.001300",
        "channel_type": "channel",
    },
    "group_join": {
        "type": "message",
        "subtype": "group_join",
        "text": f"<@{BOB}> has joined the group",
        "user": BOB,
        "ts": "1700000660.001400",
        "channel": PRIVATE,
        "event_ts": "1700000660.001400",
        "channel_type": "group",
    },
    "channel_topic": {
        "type": "message",
        "subtype": "channel_topic",
        "text": f"<@{ALICE}> set the channel topic: Networking",
        "topic": "Networking",
        "user": ALICE,
        "ts": "1700000690.001500",
        "channel": GENERAL,
        "event_ts": "1700000690.001500",
        "channel_type": "channel",
    },
    "reaction_added": {
        "type": "reaction_added",
        "user": ALICE,
        "reaction": "thumbsup",
        "item_user": BOT_USER_ID,
        "item": {"type": "message", "channel": GENERAL, "ts": "1700000102.000100"},
        "event_ts": "1700000700.001600",
    },
    "a channel message without text": {
        "type": "message",
        "text": "",
        "user": BOB,
        "ts": "1700000730.001700",
        "team": TEAM,
        "channel": GENERAL,
        "event_ts": "1700000730.001700",
        "channel_type": "channel",
    },
}


def parse(name_or_event: str | dict[str, Any], **options: Any) -> SlackMessage | None:
    event = EVENTS[name_or_event] if isinstance(name_or_event, str) else name_or_event
    return parse_event(event, team_id=TEAM, bot_user_id=BOT_USER_ID, bot_id=BOT_ID, **options)


def message(**fields: Any) -> SlackMessage:
    """A channel message, top-level, not mentioning the bot, with `fields` changed."""
    defaults: dict[str, Any] = {
        "team": TEAM,
        "channel": GENERAL,
        "user": ALICE,
        "text": "hi",
        "ts": "1700000001.000100",
        "thread_ts": "1700000001.000100",
        "in_thread": False,
        "is_direct": False,
        "mentions_bot": False,
        "mentioned_users": (),
    }
    return SlackMessage(**(defaults | fields))


# --- incoming events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "app_mention",
            message(
                user=ALICE,
                text=f"what's the difference between TCP & UDP? cc <@{BOB}>",
                ts=MENTION_TS,
                thread_ts=MENTION_TS,
                mentions_bot=True,
                mentioned_users=(BOB,),
            ),
        ),
        (
            "message.channels (the same mention)",
            message(
                user=ALICE,
                text=f"what's the difference between TCP & UDP? cc <@{BOB}>",
                ts=MENTION_TS,
                thread_ts=MENTION_TS,
                mentions_bot=True,
                mentioned_users=(BOB,),
            ),
        ),
        (
            "message.channels in a thread",
            message(
                user=BOB,
                text="and which one does WebRTC (https://webrtc.org) use?",
                ts="1700000160.000300",
                thread_ts=MENTION_TS,
                in_thread=True,
            ),
        ),
        (
            "message.im",
            message(
                channel=DM,
                text="summarise #general for me, please",
                ts="1700000200.000400",
                thread_ts="1700000200.000400",
                is_direct=True,
            ),
        ),
        (
            "message.im in a thread",
            message(
                channel=DM,
                text="and shorter?",
                ts="1700000230.000500",
                thread_ts="1700000200.000400",
                in_thread=True,
                is_direct=True,
            ),
        ),
        (
            "message.groups",
            message(
                channel=PRIVATE,
                user=CAROL,
                text="status?",
                ts="1700000300.000600",
                thread_ts="1700000300.000600",
                mentions_bot=True,
            ),
        ),
        (
            "message.mpim",
            message(
                channel=GROUP_DM,
                user=BOB,
                text="@here lunch at 12?",
                ts="1700000330.000700",
                thread_ts="1700000330.000700",
                mentions_bot=True,
            ),
        ),
        (
            "file_share",
            message(
                user=CAROL,
                text="can you check this log?",
                ts="1700000400.000800",
                thread_ts="1700000400.000800",
                mentions_bot=True,
                attachments=(
                    Attachment(
                        FILE,
                        "build.log",
                        "text/plain",
                        18342,
                        "https://files.slack.com/files-pri/T0G9PQBBK-F0LOG4567/build.log",
                    ),
                ),
            ),
        ),
        (
            "thread_broadcast",
            message(
                user=BOB,
                text="posting this to the channel too",
                ts="1700000430.000900",
                thread_ts=MENTION_TS,
                in_thread=True,
            ),
        ),
    ],
)
def test_messages_for_the_bot(name: str, expected: SlackMessage) -> None:
    assert parse(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "bot_message (a legacy integration)",
        "another app's message",
        "the bot's own reply",
        "message_changed",
        "message_deleted",
        "channel_join",
        "channel_leave",
        "group_join",
        "channel_topic",
        "reaction_added",
        "a channel message without text",
    ],
)
def test_events_the_bot_ignores(name: str) -> None:
    assert parse(name) is None


def test_other_bots_are_heard_when_not_ignored_but_never_the_bot_itself() -> None:
    other_app = parse("another app's message", ignore_bots=False)
    legacy = parse("bot_message (a legacy integration)", ignore_bots=False)

    assert other_app is not None
    assert (other_app.user, other_app.text) == ("U0OTHERBOT", "Reminder: stand-up in 5 minutes")
    assert legacy is not None  # a legacy bot has no user: its bot id stands in
    assert (legacy.user, legacy.text) == ("B0CI00001", "Build #1289 passed :white_check_mark:")
    assert parse("the bot's own reply", ignore_bots=False) is None
    assert parse({**EVENTS["the bot's own reply"], "user": None}, ignore_bots=False) is None
    assert parse("message_changed", ignore_bots=False) is None


def test_a_bare_mention_or_empty_dm_is_kept_with_empty_text_for_a_hint() -> None:
    bare = parse({**EVENTS["app_mention"], "text": f"<@{BOT_USER_ID}> "})
    empty_dm = parse({**EVENTS["message.im"], "text": ""})
    no_user = parse({**EVENTS["app_mention"], "user": None})

    assert bare is not None
    assert (bare.text, bare.mentions_bot, bare.mentioned_users) == ("", True, ())
    assert empty_dm is not None
    assert (empty_dm.text, empty_dm.is_direct) == ("", True)
    assert no_user is None


def test_the_team_falls_back_to_the_installation_and_a_d_channel_is_direct() -> None:
    event = {k: v for k, v in EVENTS["message.im"].items() if k not in ("team", "channel_type")}
    parsed = parse_event(event, team_id="T0OTHER", bot_user_id=BOT_USER_ID, bot_id=BOT_ID)

    assert parsed is not None
    assert (parsed.team, parsed.is_direct) == ("T0OTHER", True)


def test_mentioned_users_are_unique_in_order_without_the_bot() -> None:
    text = f"<@{CAROL}> and <@{BOB}|bob>, ask <@{BOT_USER_ID}> about <@{CAROL}>"
    parsed = parse({**EVENTS["message.channels in a thread"], "text": text})

    assert parsed is not None
    assert parsed.mentioned_users == (CAROL, BOB)
    assert parsed.mentions_bot
    assert parsed.text == f"<@{CAROL}> and <@{BOB}|bob>, ask about <@{CAROL}>"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The bot's mention, wherever it is, and the space it leaves.
        ("<@U0BOT1234> hi", "hi"),
        ("<@U0BOT1234|parley>   hi", "hi"),
        ("<@U0BOT1234>: hi", "hi"),
        ("<@U0BOT1234>, hi", "hi"),
        ("hey <@U0BOT1234> how are you", "hey how are you"),
        ("thanks <@U0BOT1234>", "thanks"),
        ("ask <@U0BOT1234>: why", "ask : why"),
        ("first <@U0BOT1234>\n<@U0BOT1234> second", "first\nsecond"),
        ("<@U0BOT1234>", ""),
        ("  keep\n    indentation  ", "keep\n    indentation"),
        # Slack's escapes, undone once.
        ("a &amp; b &lt;tag&gt;", "a & b <tag>"),
        ("literally &amp;lt;", "literally &lt;"),
        # Links.
        (
            "<https://example.com/a?b=1&amp;c=2|the docs>",
            "the docs (https://example.com/a?b=1&c=2)",
        ),
        ("<https://example.com/a_b>", "https://example.com/a_b"),
        ("<http://example.com|example.com>", "example.com"),
        ("<https://example.com|https://example.com>", "https://example.com"),
        ("<mailto:ann@example.com|ann@example.com>", "ann@example.com"),
        ("<mailto:ann@example.com|Ann>", "Ann (ann@example.com)"),
        # Channels and special mentions.
        ("in <#C0LAN2Q65|general>", "in #general"),
        ("in <#C0LAN2Q65|>", "in #C0LAN2Q65"),
        ("<!here> <!channel> <!everyone>", "@here @channel @everyone"),
        ("<!here|@here>", "@here"),
        ("ping <!subteam^S0DEVS123|@devs>", "ping @devs"),
        ("ping <!subteam^S0DEVS123>", "ping @S0DEVS123"),
        ("on <!date^1700000000^{date_short}|Nov 14, 2023>", "on Nov 14, 2023"),
        # Other users stay for replace_user_mentions.
        ("ask <@U0G9QF9C6>", "ask <@U0G9QF9C6>"),
    ],
)
def test_cleaning_the_text(text: str, expected: str) -> None:
    assert clean_text(text, bot_user_id=BOT_USER_ID) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ask <@U0G9QF9C6> and <@U07QCRPA4>", "ask @Bob and @Carol"),
        ("unknown <@U0NOBODY1>", "unknown @U0NOBODY1"),
        ("legacy <@U0NOBODY1|dana>", "legacy @dana"),
        ("legacy <@U0G9QF9C6|bobby>", "legacy @Bob"),
        ("no mentions", "no mentions"),
    ],
)
def test_replace_user_mentions(text: str, expected: str) -> None:
    names = {BOB: "Bob", CAROL: "Carol"}
    assert replace_user_mentions(text, names) == expected


def test_the_two_deliveries_of_one_mention_share_one_event_id() -> None:
    as_mention = parse("app_mention")
    as_message = parse("message.channels (the same mention)")
    reply_in_thread = parse("message.channels in a thread")

    assert as_mention is not None
    assert as_message is not None
    assert reply_in_thread is not None
    assert event_id_for(as_mention) == event_id_for(as_message) == f"{GENERAL}:{MENTION_TS}"
    assert event_id_for(reply_in_thread) != event_id_for(as_mention)


# --- conversation keys --------------------------------------------------------------------

TOP_LEVEL = message(ts="1700000001.000100", thread_ts="1700000001.000100")
IN_THREAD = message(ts="1700000009.000100", thread_ts="1700000001.000100", in_thread=True)
DIRECT = message(channel=DM, ts="1700000002.000100", thread_ts="1700000002.000100", is_direct=True)
DIRECT_IN_THREAD = message(
    channel=DM,
    ts="1700000003.000100",
    thread_ts="1700000002.000100",
    in_thread=True,
    is_direct=True,
)


@pytest.mark.parametrize(
    ("msg", "scope", "thread"),
    [
        (TOP_LEVEL, None, "1700000001.000100"),
        (IN_THREAD, None, "1700000001.000100"),
        (TOP_LEVEL, "thread", "1700000001.000100"),
        (IN_THREAD, "thread", "1700000001.000100"),
        (TOP_LEVEL, "channel", ""),
        (IN_THREAD, "channel", ""),
        (IN_THREAD, "user", f"user:{ALICE}"),
        (DIRECT, None, ""),
        (DIRECT_IN_THREAD, None, "1700000002.000100"),
        (DIRECT, "thread", "1700000002.000100"),
        (DIRECT, "channel", ""),
        (DIRECT, "user", f"user:{ALICE}"),
    ],
)
def test_conversation_keys(msg: SlackMessage, scope: str | None, thread: str) -> None:
    assert conversation_key(msg, scope=scope) == ConversationKey("slack", TEAM, msg.channel, thread)


def test_an_unknown_scope_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown conversation scope 'room'"):
        conversation_key(TOP_LEVEL, scope="room")


# --- Markdown → mrkdwn --------------------------------------------------------------------

FENCE = "```"


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        # Emphasis.
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("***both*** and ___both___", "*_both_* and *_both_*"),
        ("~~strike~~", "~strike~"),
        ("**Note:** read *this*.", "*Note:* read _this_."),
        ("**bold with _italic_ inside**", "*bold with _italic_ inside*"),
        ("_**nested**_ and ~~**nested**~~", "_*nested*_ and ~*nested*~"),
        ("(**in parentheses**)", "(*in parentheses*)"),
        ("\\*not italic\\*", "*not italic*"),
        # Links.
        ("[the docs](https://example.com/a_b)", "<https://example.com/a_b|the docs>"),
        ('[the docs](https://example.com "Title")', "<https://example.com|the docs>"),
        (
            "[wiki](https://en.wikipedia.org/wiki/Foo_(bar))",
            "<https://en.wikipedia.org/wiki/Foo_(bar)|wiki>",
        ),
        ("[https://example.com](https://example.com)", "<https://example.com>"),
        ("[write](mailto:ann@example.com)", "<mailto:ann@example.com|write>"),
        ("see <https://example.com/x>", "see <https://example.com/x>"),
        ("![a chart](https://example.com/chart.png)", "<https://example.com/chart.png|a chart>"),
        ("go to https://example.com/a_b*c*d_, now", "go to https://example.com/a_b*c*d_, now"),
        ("**https://example.com/a_b**", "*https://example.com/a_b*"),
        ("(see https://example.com/x)", "(see https://example.com/x)"),
        ("**[docs](https://example.com)**", "*<https://example.com|docs>*"),
        ("?a=1&b=2: [q](https://x.io/?a=1&b=2)", "?a=1&amp;b=2: <https://x.io/?a=1&amp;b=2|q>"),
        # Headings, lists, quotes, rules.
        ("# Title", "*Title*"),
        ("###### Small title ##", "*Small title*"),
        ("## The **big** _one_", "*The big _one_*"),
        ("#hashtag and # in text", "#hashtag and # in text"),
        (
            "- one\n  - nested\n    - deeper\n* star\n+ plus",
            "• one\n  • nested\n    • deeper\n• star\n• plus",
        ),
        ("- **bold** item", "• *bold* item"),
        ("1. first\n2. second\n10) tenth", "1. first\n2. second\n10) tenth"),
        ("- [ ] to do\n- [x] done\n  - [X] nested", "☐ to do\n☑ done\n  ☑ nested"),
        (
            "> a quote with **bold**\n>\n> > nested\n> - item",
            "> a quote with *bold*\n>\n> nested\n> • item",
        ),
        ("above\n\n---\n\nbelow", f"above\n\n{HORIZONTAL_RULE}\n\nbelow"),
        ("***\n* * *\n___", "\n".join([HORIZONTAL_RULE] * 3)),
        # Code is verbatim, escaped, and the fence's language dropped.
        (
            "use `**not bold**` and `a<b && c>d`",
            "use `**not bold**` and `a&lt;b &amp;&amp; c&gt;d`",
        ),
        ("`` a ` b ``", "`` a ` b ``"),
        (
            f"{FENCE}python\nif a < b & c:\n    print('<!channel>', my_var_name)\n{FENCE}",
            f"{FENCE}\nif a &lt; b &amp; c:\n    print('&lt;!channel&gt;', my_var_name)\n{FENCE}",
        ),
        (
            "~~~\n# not a heading\n- nor a list\n~~~",
            f"{FENCE}\n# not a heading\n- nor a list\n{FENCE}",
        ),
        (f"{FENCE}\nnever closed <b>", f"{FENCE}\nnever closed &lt;b&gt;\n{FENCE}"),
        ("run ```ls -la``` now", "run ```ls -la``` now"),
        # Tables become a code block with padded columns (right / centre alignment kept),
        # measured before escaping, as Slack shows "&amp;" as one character.
        (
            "| Name | Qty | Note |\n|---|--:|:-:|\n"
            "| apples & pears | 3 | **ok** |\n| kiwi | 12 | x |",
            f"{FENCE}\n"
            "| Name           | Qty |  Note  |\n"
            "|----------------|-----|--------|\n"
            "| apples &amp; pears |   3 | **ok** |\n"
            "| kiwi           |  12 |   x    |\n"
            f"{FENCE}",
        ),
        (
            "a | b\n--- | ---\n1 | 2\n\nafter",
            f"{FENCE}\n| a   | b   |\n|-----|-----|\n| 1   | 2   |\n{FENCE}\n\nafter",
        ),
        (
            "| 名前 | x |\n|---|---|\n| 山 | y |",
            f"{FENCE}\n| 名前 | x   |\n|------|-----|\n| 山   | y   |\n{FENCE}",
        ),
        ("a | b\n---", f"a | b\n{HORIZONTAL_RULE}"),
        # Escaping: nothing the model writes becomes a Slack control sequence.
        (
            "<!channel> <!here> <!everyone> <@U123> <#C1> <!subteam^S1>",
            "&lt;!channel&gt; &lt;!here&gt; &lt;!everyone&gt; &lt;@U123&gt; &lt;#C1&gt; "
            "&lt;!subteam^S1&gt;",
        ),
        ("Tom & Jerry, 1 < 2 > 0, &amp;", "Tom &amp; Jerry, 1 &lt; 2 &gt; 0, &amp;amp;"),
        ("[<!channel>](https://example.com)", "<https://example.com|&lt;!channel&gt;>"),
        ("[a|b](https://example.com)", "a|b (https://example.com)"),
        ("[x](https://example.com/a|<!here>)", "<https://example.com/a%7C%3C!here%3E|x>"),
        ("[x](<https://example.com/a b>)", "<https://example.com/a%20b|x>"),
        ("<https://example.com|<!here>>", "&lt;https://example.com|&lt;!here&gt;&gt;"),
        ("[click](javascript:alert(1))", "click (javascript:alert(1))"),
        ("[click](JavaScript:alert(document.cookie))", "click (JavaScript:alert(document.cookie))"),
        ("[relative](/docs/page)", "relative (/docs/page)"),
        ("[empty]()", "empty"),
        ("<javascript:alert(1)>", "&lt;javascript:alert(1)&gt;"),
        # Left alone.
        ("snake_case_words and _private_var", "snake_case_words and _private_var"),
        ("2*3*4 = 24, a * b * c, 5 * 2", "2*3*4 = 24, a * b * c, 5 * 2"),
        ("/usr/lib/my_long_file_name.py __init__.py", "/usr/lib/my_long_file_name.py __init__.py"),
        ("C:\\Users\\me\\.ssh and \\\\server\\share", "C:\\Users\\me\\.ssh and \\\\server\\share"),
        ("ship it :tada: :white_check_mark: :+1:", "ship it :tada: :white_check_mark: :+1:"),
        ("**kwargs and *args", "**kwargs and *args"),
        ("a\r\nb", "a\nb"),
    ],
)
def test_markdown_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert markdown_to_mrkdwn(markdown) == mrkdwn


# Every "<" in the output opens a link made by the converter: an http(s) or mailto URL without
# spaces or "|<>", then an optional label without "<>".
OUR_LINK = re.compile(r"<(?:https?://|mailto:)[^\s|<>]+(?:\|[^<>]*)?>", re.IGNORECASE)
CONTROL_SEQUENCE = re.compile(r"<[!@#]")

markdownish = st.lists(
    st.sampled_from(
        [
            "<",
            ">",
            "&",
            "|",
            "!",
            "@",
            "#",
            "^",
            "[",
            "]",
            "(",
            ")",
            "`",
            "```",
            "*",
            "**",
            "_",
            "__",
            "~~",
            "\\",
            "\n",
            " ",
            "> ",
            "- ",
            "# ",
            "http://",
            "https://",
            "mailto:",
            "javascript:",
            "<!channel>",
            "<@U123>",
            "<#C1|x>",
            "<!subteam^S1>",
            "x.y",
            "a",
            "&lt;",
            "| --- |",
            "\x00",
            "\x01",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, database=None)
@given(text=st.one_of(st.text(), markdownish))
def test_no_slack_control_sequence_can_come_out(text: str) -> None:
    mrkdwn = markdown_to_mrkdwn(text)

    assert not CONTROL_SEQUENCE.search(mrkdwn)
    assert "<" not in OUR_LINK.sub("", mrkdwn)
    assert not re.search("[\x00-\x03]", mrkdwn)


def test_a_me_message_is_a_person_writing() -> None:
    me = parse({**EVENTS["message.im"], "subtype": "me_message", "text": "waves"})

    assert me is not None
    assert (me.text, me.is_direct) == ("waves", True)
