"""Pure translation between Discord and Parley: gateway messages in, safe Markdown out.

Nothing here imports discord.py, does I/O or talks to the network: it works on the gateway's
own JSON (a `MESSAGE_CREATE` payload) and plain values, and the runtime module calls it
between receiving a message and sending the reply.

- `parse_message` turns a message payload into a `DiscordMessage` (or None for what the bot
  must ignore), with the bot's mention removed, Discord's other mention syntax made
  readable and its attachments described (downloaded later by their CDN URL).
- `event_id_for_message`, `event_id_for_interaction` and `conversation_key` say under which
  id the engine claims a message or a slash command and which conversation it belongs to;
  `thread_name` titles the thread the bot starts for a question.
- `safe_text` prepares the model's Markdown for Discord, which renders Markdown itself: it
  only turns tables into code blocks and breaks every mention the text could make.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adapters.markdown import aligned_table, table_end
from adapters.rendering import _find_fences
from core.attachments import AUDIO, Attachment, kind_of
from core.events import ConversationKey

PLATFORM = "discord"

DISCORD_LIMIT = 2000
"""The most characters a message may hold."""

THREAD_NAME_LIMIT = 100
"""The most characters a thread's name may hold."""

THREAD_NAME_FALLBACK = "Conversation"
"""The name of a thread whose question leaves no words once its markup is gone."""

ZERO_WIDTH_SPACE = "\u200b"


# --- incoming messages --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscordMessage:
    """One user message, taken from a `MESSAGE_CREATE` payload.

    Attributes:
        guild_id: The server's id; "" in a direct message.
        channel_id: The channel the message was posted in: a thread's own id inside a thread.
        parent_id: Inside a thread, the channel the thread belongs to; else "".
        message_id: The message's id.
        author_id: The author's user id.
        author_name: The author's display name (`global_name`), else their username.
        text: The content without the bot's mentions; other mentions are readable (`<@123>`
            → "@name", `<@&123>` → "@role", `<#123>` → "#channel") and custom emoji are
            written `:name:`. Empty for a bare mention of the bot. A forwarded message has
            no content of its own: its text is the forwarded message's.
        is_direct: A direct message with the bot.
        mentions_bot: The bot is among the users the message mentions, which includes a reply
            to one of the bot's messages that pings it.
        in_thread: The message was posted in a thread.
        replies_to_bot: The message replies to one of the bot's messages.
        attachments: The files it carries (images, voice messages and audio, other files),
            a forwarded message's included; `text` is then their caption, possibly "".
        stickers_only: The message carries stickers and neither text nor attachments: the
            bot cannot see stickers, and says so when the message is for it.
    """

    guild_id: str
    channel_id: str
    parent_id: str
    message_id: str
    author_id: str
    author_name: str
    text: str
    is_direct: bool
    mentions_bot: bool
    in_thread: bool
    replies_to_bot: bool
    attachments: tuple[Attachment, ...] = ()
    stickers_only: bool = False


# DEFAULT and REPLY; every other type (joins, pins, boosts, thread created ...) is a system
# message the bot must not answer.
_USER_MESSAGE_TYPES = frozenset({0, 19})

# <@123> and <@!123> (the legacy nickname form) users, <@&123> roles, <#123> channels,
# <:name:123> and <a:name:123> (animated) custom emoji.
_MARKUP_TOKEN = re.compile(
    r"<(?:@!?(?P<user>\d+)|@&(?P<role>\d+)|#(?P<channel>\d+)|a?:(?P<emoji>\w+):\d+)>"
)


def parse_message(
    payload: dict[str, Any],
    *,
    bot_id: str,
    thread_parent_id: str | None = None,
    bot_role_ids: frozenset[str] = frozenset(),
) -> DiscordMessage | None:
    """Translate a `MESSAGE_CREATE` payload, or say it is not for the bot.

    Ignored (None): messages written by a bot (the bot itself included) or a webhook; system
    messages (every type but DEFAULT and REPLY); and messages whose cleaned text is empty
    unless they mention the bot or carry attachments or stickers. A bare mention is returned
    with text "" so the runtime can answer with a hint instead of staying silent; a photo or
    voice message without caption with text "" and its `attachments`; a message of stickers
    only with `stickers_only` set, so it can say it cannot see them.

    Mentioning the bot's managed role (`<@&ROLE>`, listed in `mention_roles`) is mentioning
    the bot: Discord's member list offers that role next to the bot, and users pick either.

    The message is returned whether it addresses the bot or not: the runtime decides, by
    `is_direct`, `mentions_bot`, `replies_to_bot` and the threads it owns.

    Args:
        payload: The message in the gateway's JSON shape.
        bot_id: The bot's user id.
        thread_parent_id: For a message in a thread, the thread's parent channel; None
            outside threads. The caller tells, because the payload does not say whether its
            channel is a thread (the client's channel cache does).
        bot_role_ids: The ids of the bot's managed roles in the message's server (roles
            whose `tags.bot_id` is the bot).

    Returns:
        The message, or None when the bot must not react to it.
    """
    author = payload["author"]
    if author.get("bot") or payload.get("webhook_id"):
        return None
    if payload.get("type", 0) not in _USER_MESSAGE_TYPES:
        return None

    mentioned = {str(user["id"]): user for user in payload.get("mentions") or []}
    roles = {str(role) for role in payload.get("mention_roles") or []} & bot_role_ids
    mentions_bot = bot_id in mentioned or bool(roles)
    content = str(payload.get("content") or "") or _forwarded(payload)
    text = _clean_content(content, bot_id=bot_id, mentioned=mentioned, bot_roles=roles)
    attachments = _attachments(payload)
    stickers = bool(payload.get("sticker_items"))
    if not text and not mentions_bot and not attachments and not stickers:
        return None

    guild_id = str(payload.get("guild_id") or "")
    # A reply to a message that was deleted since has `referenced_message` null.
    referenced = payload.get("referenced_message") or {}
    return DiscordMessage(
        guild_id=guild_id,
        channel_id=str(payload["channel_id"]),
        parent_id=thread_parent_id or "",
        message_id=str(payload["id"]),
        author_id=str(author["id"]),
        author_name=_display_name(author),
        text=text,
        is_direct=not guild_id,
        mentions_bot=mentions_bot,
        in_thread=thread_parent_id is not None,
        replies_to_bot=str((referenced.get("author") or {}).get("id")) == bot_id,
        attachments=attachments,
        stickers_only=stickers and not text and not attachments,
    )


# MessageFlags.IS_VOICE_MESSAGE: the message is one recorded voice message.
IS_VOICE_MESSAGE = 1 << 13


def _attachments(payload: dict[str, Any]) -> tuple[Attachment, ...]:
    """The message's attachments, then a forwarded message's (a forward has none of its own).

    The reference to download one by is its CDN `url`: a plain string, so any process can
    fetch it later. Discord signs those URLs (`ex`, `is`, `hm`) and they expire (about a
    day), so a turn answered much later finds them gone and the user is asked to send the
    file again.
    """
    snapshots = payload.get("message_snapshots") or []
    messages = [payload, *(snapshot.get("message") or {} for snapshot in snapshots)]
    found: list[Attachment] = []
    for message in messages:
        voice = bool(int(message.get("flags") or 0) & IS_VOICE_MESSAGE)
        for data in message.get("attachments") or []:
            name = str(data.get("filename") or "")
            mime = str(data.get("content_type") or "")
            # A voice message is audio/ogg; its flag (or duration) says so without the type.
            spoken = voice or data.get("duration_secs") is not None
            found.append(
                Attachment(
                    kind=AUDIO if spoken else kind_of(name, mime),
                    name=name,
                    mime=mime,
                    size=int(data.get("size") or 0),
                    ref=str(data.get("url") or ""),
                )
            )
    return tuple(found)


def _forwarded(payload: dict[str, Any]) -> str:
    """The text of a forwarded message: Discord sends it with empty `content` and the
    original in `message_snapshots` (one today; joined if ever several)."""
    snapshots = payload.get("message_snapshots") or []
    texts = [str((s.get("message") or {}).get("content") or "").strip() for s in snapshots]
    return "\n\n".join(text for text in texts if text)


def _clean_content(
    content: str,
    *,
    bot_id: str,
    mentioned: dict[str, dict[str, Any]],
    bot_roles: set[str] | frozenset[str] = frozenset(),
) -> str:
    """The content without the bot's mentions (its user's or its managed role's) and with
    the rest of Discord's markup readable."""
    targets = [rf"@!?{re.escape(bot_id)}", *(rf"@&{re.escape(role)}" for role in sorted(bot_roles))]
    mention = rf"<(?:{'|'.join(targets)})>"
    # In "@bot: question" the colon only addressed the bot.
    text = re.sub(rf"^\s*{mention}[ \t]*[:,](?=\s|$)", "", content)
    text = re.sub(rf"[ \t]*{mention}[ \t]*", _mention_gap, text)

    def readable(match: re.Match[str]) -> str:
        if (user_id := match["user"]) is not None:
            user = mentioned.get(user_id)
            # Discord lists every user the content mentions; an id without an entry stays.
            return "@" + (_display_name(user) if user else user_id)
        if match["role"] is not None:
            # The payload carries the ids of mentioned roles, never their names.
            return "@role"
        if match["channel"] is not None:
            return "#channel"
        return f":{match['emoji']}:"

    return _MARKUP_TOKEN.sub(readable, text).strip()


def _mention_gap(match: re.Match[str]) -> str:
    # A mention between two words leaves one space; at the start or end of a line, none.
    before, after = match.string[: match.start()], match.string[match.end() :]
    at_edge = not before or before.endswith("\n") or not after or after.startswith("\n")
    return "" if at_edge else " "


def _display_name(user: dict[str, Any]) -> str:
    return str(user.get("global_name") or user.get("username") or user["id"])


def event_id_for_message(message_id: str) -> str:
    """The id under which the engine claims a message: `"message:{id}"`.

    Snowflakes are unique across Discord, and the prefix keeps a message and an interaction
    apart all the same.
    """
    return f"message:{message_id}"


def event_id_for_interaction(interaction_id: str) -> str:
    """The id under which the engine claims a slash command: `"interaction:{id}"`."""
    return f"interaction:{interaction_id}"


# --- conversation keys --------------------------------------------------------------------

_SCOPES = frozenset({"thread", "channel", "user"})


def conversation_key(
    message: DiscordMessage, *, scope: str | None, thread_id: str | None = None
) -> ConversationKey:
    """The conversation a message belongs to, by the channel's scope.

    The key's channel is always the channel itself, the parent for a message in a thread, so
    the channel's settings apply inside its threads. A direct message channel is one
    conversation whatever the scope.

    - "thread", or None (the default): the thread the message was posted in; for a message
      in the channel itself, the thread the runtime starts for it (`thread_id`), or the
      whole channel (thread "") when it starts none.
    - "channel": the whole channel, its threads included (thread "").
    - "user": each user has their own conversation in the channel (thread "user:ID").

    Args:
        message: The parsed message.
        scope: The channel's scope ("thread", "channel", "user"), or None for the default.
        thread_id: The thread the runtime started for a message posted in the channel itself
            (a thread started from a message has that message's id). Ignored for a message
            already in a thread.

    Returns:
        The key, with `platform` "discord" and `workspace` the server ("" for a DM).

    Raises:
        ValueError: An unknown scope.
    """
    if scope is not None and scope not in _SCOPES:
        raise ValueError(f"unknown conversation scope {scope!r}")
    if message.is_direct:
        return ConversationKey(PLATFORM, "", message.channel_id)
    if scope == "channel":
        thread = ""
    elif scope == "user":
        thread = f"user:{message.author_id}"
    elif message.in_thread:
        thread = message.channel_id
    else:
        thread = thread_id or ""
    channel = message.parent_id if message.in_thread else message.channel_id
    return ConversationKey(PLATFORM, message.guild_id, channel, thread)


# --- thread names -------------------------------------------------------------------------

# A fence line alone, with its language tag: the tag means nothing in a title.
_FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[\w+#.-]*[ \t]*$", re.MULTILINE)
# Quote and heading markers; only at the start of a line, so "C#" and "a > b" keep theirs.
_LINE_MARKERS = re.compile(r"^[ \t]*(?:[>#]+[ \t]*)+", re.MULTILINE)
# Emphasis, code, strike and spoiler markers; an underscore only at the edge of a word, so
# snake_case keeps its own.
_INLINE_MARKERS = re.compile(r"[*~`|]|(?<!\w)_+|_+(?!\w)")


def thread_name(question: str) -> str:
    """A title for the thread the bot starts to answer a question.

    The question (a cleaned `DiscordMessage.text`) loses its Markdown markers (`*`, `~`,
    backticks, `|`, `_` at a word's edge, `>` quotes and `#` headings at the start of a line,
    fence lines), and its whitespace is collapsed to single spaces. A title longer than
    `THREAD_NAME_LIMIT` is cut after its last whole word that fits and ends with "…"; a
    single word too long for the limit is cut inside.

    Args:
        question: The text of the message the thread is started from.

    Returns:
        At most `THREAD_NAME_LIMIT` characters, never empty: `THREAD_NAME_FALLBACK` for a
        question without words.
    """
    text = _INLINE_MARKERS.sub("", _FENCE_LINE.sub(" ", question))
    text = " ".join(_LINE_MARKERS.sub("", text).split())
    if len(text) > THREAD_NAME_LIMIT:
        head = text[: THREAD_NAME_LIMIT - 1]  # room for the "…"
        if text[len(head)] != " " and " " in head:  # the cut falls inside a word: drop it
            head = head.rsplit(" ", 1)[0]
        text = head.rstrip(" ,;:") + "…"
    return text or THREAD_NAME_FALLBACK


# --- Markdown → Discord -------------------------------------------------------------------

# Code as Discord reads it: ``` blocks (which need not sit on lines of their own), then
# `` and ` spans. A backslash escapes the character after it outside code, so "\`" opens
# nothing; the escape is matched (and skipped) so that scanning steps over it.
_CODE = re.compile(r"\\[\s\S]|(?P<code>```[\s\S]+?```|``[\s\S]+?``|`[^`]+`)")
_CODE_BLOCK = re.compile(r"\\[\s\S]|(?P<code>```[\s\S]+?```)")
# Where a zero-width space goes so that no mention survives: `<@…>` (users, `<@!…>`,
# `<@&…>` roles) and `<#…>` channels render as text once "<" is no longer followed by "@" or
# "#"; "@everyone" and "@here" once "@" is not followed by the word. Case is ignored, as
# whether Discord does is not worth betting a mass ping on.
_MENTION_BREAK = re.compile(r"(?<=<)(?=[@#])|(?<=@)(?=everyone|here)", re.IGNORECASE)


def safe_text(markdown: str) -> str:
    """Prepare the model's Markdown for a Discord message.

    Discord renders Markdown itself (emphasis, headings, lists, quotes, links, code), so the
    text mostly passes through. Two things change outside code:

    - Tables, which Discord does not render, become a code block with their columns padded
      to line up (inline code markers in cells dropped, as the block is all code).
    - No mention survives: a zero-width space goes into `@everyone`, `@here` and every `<@`
      and `<#`, so users, roles and channels show as text. The runtime also sends with
      mentions disallowed; this holds if it ever does not.

    Code spans and blocks are left untouched: Discord shows mentions in them literally.

    Args:
        markdown: The model's Markdown.

    Returns:
        The text to send.
    """
    with_tables = _outside_code(markdown, _CODE_BLOCK, _tables_to_code)
    # Mentions are broken last, in the final text, so that no code the tables introduced or
    # moved can shelter one.
    return _outside_code(with_tables, _CODE, _break_mentions)


def close_open_fence(markdown: str) -> str:
    """The text with a code block the model left open at the end closed.

    Discord shows an unclosed fence as literal backticks and the code after it as text.
    Only a fence line with code after it and no fence characters anywhere after it is
    closed: Discord also closes a block with "```" at the end of a code line, which Markdown
    does not.
    """
    fences = _find_fences(markdown)
    if not fences:
        return markdown
    last = fences[-1]
    if not last.close_start == last.close_end == len(markdown):
        return markdown
    code = markdown[last.open_end :]
    if not code.strip() or last.marks[0] in code:
        return markdown
    return markdown.rstrip("\n") + "\n" + last.indent + last.marks


def _outside_code(text: str, code: re.Pattern[str], convert: Callable[[str], str]) -> str:
    """The text with `convert` applied to each stretch between the matches of `code`."""
    pieces: list[str] = []
    position = 0
    for match in code.finditer(text):
        if match["code"] is not None:
            pieces += [convert(text[position : match.start()]), match[0]]
            position = match.end()
    pieces.append(convert(text[position:]))
    return "".join(pieces)


def _break_mentions(text: str) -> str:
    return _MENTION_BREAK.sub(ZERO_WIDTH_SPACE, text)


def _tables_to_code(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if end := table_end(lines, i):
            # The block is all code: a cell's code markers would show, or close it early.
            table = aligned_table(lines[i:end], lambda cell: cell.replace("`", ""))
            out += ["```", *table, "```"]
            i = end
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)
