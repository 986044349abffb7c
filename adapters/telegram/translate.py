"""Pure translation between Telegram and Parley: Bot API updates in, Telegram HTML out.

Nothing here imports python-telegram-bot, does I/O or talks to the network: it works on the
Bot API's own JSON (what `Update.to_dict()` returns), and the runtime module calls it between
receiving an update and sending the reply.

- `parse_update` turns a `message` update into a `TelegramMessage` (or None for what the bot
  must ignore), with the bot's mention and its `/ask` command cleaned from the text and its
  photo, voice note, audio file or document (and those of the message it replies to) as
  `Attachment`s; `addressed_to_bot` says whether the bot should answer it. `album` makes
  one message of an album's items, which Telegram sends as messages of their own.
- `model_text` is what the model reads of it: the message replied to (or the part quoted) as
  a `>` block, a note about an attachment it cannot see (a sticker, a video), then the text;
  `local_answer` is the answer the adapter gives by itself (`/start`, a bare `/ask`, a
  command we do not have, a sticker or video without caption), without the model.
- `event_id_for` and `conversation_key` say under which id the engine claims the message and
  which conversation it belongs to.
- `markdown_to_html` turns the model's Markdown into the HTML subset of `parse_mode="HTML"`,
  escaped so that model output can never produce a tag of its own; `html_to_plain` is the
  fallback when Telegram rejects it anyway, and `rendered_length` measures a part as Telegram
  counts it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from adapters.markdown import (
    BULLET,
    FENCE,
    HEADING,
    INLINE_TOKEN,
    QUOTE,
    RULE,
    TASK,
    aligned_table,
    fence_end,
    link_parts,
    table_end,
)
from core.attachments import AUDIO, IMAGE, Attachment, kind_of
from core.commands import ADMIN_COMMANDS, COMMANDS
from core.events import ConversationKey

PLATFORM = "telegram"

TELEGRAM_LIMIT = 4096
"""The most UTF-16 code units a message may hold once its entities are parsed."""

HORIZONTAL_RULE = "───"
"""What a Markdown rule (`---`) becomes: Telegram has none, and a short line keeps the break."""

ASK_COMMAND = "ask"
"""`/ask question` means "answer this": the command is dropped and the question kept."""

TELEGRAM_DOWNLOAD_LIMIT = 20_000_000
"""The largest file the Bot API lets a bot download (`getFile` answers "file is too big"
above it); python-telegram-bot's `FileSizeLimit.FILESIZE_DOWNLOAD`."""


# --- UTF-16 offsets -----------------------------------------------------------------------


def utf16_length(text: str) -> int:
    """The length of `text` in UTF-16 code units, the unit Telegram counts in."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf16_slice(text: str, start: int, end: int | None = None) -> str:
    """`text[start:end]` with `start` and `end` counted in UTF-16 code units.

    Telegram gives entity offsets and lengths in UTF-16 code units, where an emoji or another
    character outside the Basic Multilingual Plane counts two; Python indexes code points.

    Args:
        text: Any text.
        start: The first code unit to keep.
        end: The code unit to stop before; None for the end of the text.

    Returns:
        The slice. A bound that splits a surrogate pair (which Telegram never sends) leaves
        half of the pair in the result rather than failing.
    """
    units = text.encode("utf-16-le", "surrogatepass")
    stop = None if end is None else 2 * end
    return units[2 * start : stop].decode("utf-16-le", "surrogatepass")


# --- incoming updates ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TelegramMessage:
    """One user message, taken from a `message` update.

    Attributes:
        chat_id: The chat's id (negative for groups).
        chat_type: "private", "group", "supergroup" or "channel".
        message_id: The message's id within the chat, to reply to.
        thread_id: The forum topic the message was posted in, or None outside a topic (the
            General topic included).
        user_id: The author's id.
        user_name: The author's first and last name, else their username, else their id.
        text: The text (or a media caption) without the bot's mentions, and without a leading
            `/ask` command; any other command of ours is kept as `/name argument` with its
            `@botname` suffix removed. Empty for a bare mention of the bot, or an attachment
            without caption.
        is_direct: A private chat with the bot.
        mentions_bot: The bot was mentioned (`@botname`, or a text mention of its account).
        replies_to_bot: The message replies to one of the bot's messages.
        command: The lower-case name of a command the message starts with ("reset" for
            `/reset` and `/reset@botname`), else None.
        command_for_other_bot: The command names another bot (`/reset@otherbot`).
        date: When the message was sent, in Unix time.
        quoted: The text replied to (see `_quoted`).
        media: The kind of attachment the message carries ("photo", "sticker" ...), if any.
        known_command: The command is one of ours, or addressed to the bot by name.
        attachments: What the engine downloads and reads: the photo, voice note, audio file
            or document of the message replied to, then the message's own (a Telegram
            message holds one; see `album` for several). Empty with a command of ours other
            than `/ask`: the engine reads those as written.
        media_group: The album the message is an item of (`media_group_id`), if any.
    """

    chat_id: int
    chat_type: str
    message_id: int
    thread_id: int | None
    user_id: int
    user_name: str
    text: str
    is_direct: bool
    mentions_bot: bool
    replies_to_bot: bool
    command: str | None
    command_for_other_bot: bool
    date: int
    quoted: str | None = None
    media: str | None = None
    known_command: bool = True
    attachments: tuple[Attachment, ...] = ()
    media_group: str | None = None


# Telegram's own accounts: 777000 ("Telegram") forwards a linked channel's posts into its
# discussion group; GroupAnonymousBot and Channel_Bot stand in `from` for anonymous admins and
# for people posting as a channel, whose real identity is `sender_chat`.
TELEGRAM_SERVICE_ID = 777000

QUOTE_LIMIT = 2000
"""The most characters of a replied-to message (or its quoted part) the model is shown."""

# The attachments a message can carry instead of text, in the order they are looked for: an
# animation also carries a `document`, so it comes first.
MEDIA_KINDS: dict[str, str] = {
    "animation": "an animation",
    "photo": "a photo",
    "video": "a video",
    "video_note": "a video message",
    "voice": "a voice message",
    "audio": "an audio file",
    "document": "a document",
    "sticker": "a sticker",
}

# The attachments the engine can read (images, audio, files); the others are only described.
ATTACHABLE = frozenset({"photo", "voice", "audio", "document"})

# Photos are always JPEG on Telegram and come without a name.
PHOTO_NAME = "photo.jpg"
# A voice note's name tells the transcription service its format; Telegram's own voice notes
# are OGG/Opus, but a bot's sendVoice also takes MP3 and M4A.
_VOICE_SUFFIXES = {"audio/mpeg": ".mp3", "audio/mp4": ".m4a", "audio/x-m4a": ".m4a"}

OUR_COMMANDS = frozenset({ASK_COMMAND, "start", *COMMANDS, *ADMIN_COMMANDS})
"""Every command the bot answers; in a group, any other unqualified `/command` is for
another bot and ignored."""


def parse_update(
    update: dict[str, Any],
    *,
    bot_id: int,
    bot_username: str,
    max_bytes: int = TELEGRAM_DOWNLOAD_LIMIT,
) -> TelegramMessage | None:
    """Translate a `message` update, or say it is not for the bot.

    Ignored (None): every other update (`edited_message`, `channel_post`, callbacks ...);
    posts of a linked channel forwarded automatically into its discussion group (`from`
    777000, `is_automatic_forward`); messages from other bots; messages without `from`; and
    messages with neither text, caption nor a known attachment (service messages: members
    joining, pins, topics created ..., and polls, locations, contacts).

    People who do not write as themselves are people all the same: an anonymous group admin
    (`sender_chat` is the group, `from` GroupAnonymousBot) and someone posting as a channel
    (`sender_chat` is the channel) are named after that chat's title and identified by its id.

    The message is returned whether it addresses the bot or not (see `addressed_to_bot`).

    Args:
        update: An update in the Bot API's JSON shape.
        bot_id: The bot's user id (`getMe` → `id`).
        bot_username: The bot's username (`getMe` → `username`), with or without "@";
            compared without regard to case.
        max_bytes: The largest attachment the bot downloads: of a photo's sizes, the largest
            within it is taken.

    Returns:
        The message, or None when the bot must not react to this update.
    """
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    sender = message.get("from")
    if not isinstance(sender, dict):
        return None
    if message.get("is_automatic_forward") or sender.get("id") == TELEGRAM_SERVICE_ID:
        return None  # a channel's post, copied into its discussion group: no one asked
    sender_chat = message.get("sender_chat")
    if isinstance(sender_chat, dict):
        author_id, author_name = sender_chat["id"], _chat_title(sender_chat)
    elif sender.get("is_bot"):
        return None
    else:
        author_id, author_name = sender["id"], _display_name(sender)
    media = next((kind for kind in MEDIA_KINDS if message.get(kind)), None)
    if (raw := message.get("text")) is not None:
        entities = message.get("entities") or []
    elif (raw := message.get("caption")) is not None:
        entities = message.get("caption_entities") or []
    elif media is not None:
        raw, entities = "", []
    else:
        return None

    username = bot_username.removeprefix("@").lower()
    cut: list[tuple[int, int]] = []  # UTF-16 spans removed from the text
    mentions_bot = False
    command: str | None = None
    command_for_other_bot = False
    qualified = False
    for entity in entities:
        kind, start = entity.get("type"), entity["offset"]
        end = start + entity["length"]
        if (kind == "mention" and utf16_slice(raw, start + 1, end).lower() == username) or (
            kind == "text_mention" and (entity.get("user") or {}).get("id") == bot_id
        ):
            mentions_bot = True
            cut.append((start, end))
        elif kind == "bot_command" and start == 0:
            name, _, target = utf16_slice(raw, 1, end).partition("@")
            command = name.lower()
            qualified = bool(target)
            command_for_other_bot = bool(target) and target.lower() != username
            if not command_for_other_bot:
                cut.append((start, end))

    text = _remove_spans(raw, cut)
    if command is not None and not command_for_other_bot and command != ASK_COMMAND:
        text = f"/{command} {text}" if text else f"/{command}"

    chat = message["chat"]
    reply = message.get("reply_to_message") or {}
    ours = command is not None and not command_for_other_bot and command != ASK_COMMAND
    attachments = () if ours else _attachments(message, bot_id, max_bytes)
    return TelegramMessage(
        chat_id=chat["id"],
        chat_type=chat["type"],
        message_id=message["message_id"],
        thread_id=message.get("message_thread_id") if message.get("is_topic_message") else None,
        user_id=author_id,
        user_name=author_name,
        text=text,
        is_direct=chat["type"] == "private",
        mentions_bot=mentions_bot,
        # Every message in a forum topic "replies" to the topic's creation message, whoever
        # created the topic: only a reply to anything else is a reply to the bot.
        replies_to_bot=(reply.get("from") or {}).get("id") == bot_id
        and not reply.get("forum_topic_created"),
        command=command,
        command_for_other_bot=command_for_other_bot,
        date=message["date"],
        quoted=_quoted(message, bot_id),
        media=media,
        # "/foo@ourbot" is meant for us even when we have no /foo: it gets the list.
        known_command=command is None
        or command in OUR_COMMANDS
        or (qualified and not command_for_other_bot),
        attachments=attachments,
        media_group=message.get("media_group_id"),
    )


def album(items: Sequence[TelegramMessage]) -> TelegramMessage:
    """One message for an album's items (Telegram sends each photo, video or file of a media
    group as a message of its own, the caption on one of them, usually the first): the first
    item's ids, the captioned item's text, mention and command, and every item's attachments
    in order (the message replied to, which each item carries, once).

    Args:
        items: Messages of one media group, in any order.

    Returns:
        The album as one message, answered (and claimed) under its first item's id.
    """
    ordered = sorted(items, key=lambda item: item.message_id)
    first = ordered[0]
    captioned = next((item for item in ordered if item.text or item.command), first)
    unseen = (item.media for item in ordered if item.media and item.media not in ATTACHABLE)
    ours = captioned.command not in (None, ASK_COMMAND) and not captioned.command_for_other_bot
    attachments = () if ours else (a for item in ordered for a in item.attachments)
    return replace(
        captioned,
        message_id=first.message_id,
        date=first.date,
        mentions_bot=any(item.mentions_bot for item in ordered),
        replies_to_bot=any(item.replies_to_bot for item in ordered),
        media=next(unseen, first.media),
        attachments=tuple(dict.fromkeys(attachments)),
    )


def _attachments(message: dict[str, Any], bot_id: int, max_bytes: int) -> tuple[Attachment, ...]:
    """The attachments of the message replied to (someone's photo, asked about in a reply),
    then the message's own."""
    found: list[Attachment] = []
    reply = message.get("reply_to_message")
    if (
        isinstance(reply, dict)
        and not reply.get("forum_topic_created")
        and (reply.get("from") or {}).get("id") != bot_id
    ):
        found.extend(attachments_of(reply, max_bytes=max_bytes))
    found.extend(attachments_of(message, max_bytes=max_bytes))
    return tuple(found)


def attachments_of(
    message: dict[str, Any], *, max_bytes: int = TELEGRAM_DOWNLOAD_LIMIT
) -> tuple[Attachment, ...]:
    """A Message's photo, voice note, audio file or document as an `Attachment` whose `ref` is
    the `file_id` (valid for this bot for good, so a turn resumed after a restart can still
    download it). Stickers, animations, videos and video notes are not taken.

    Args:
        message: A Message in the Bot API's JSON shape.
        max_bytes: Of a photo's sizes, the largest within this many bytes is taken (the
            largest of all when none is).

    Returns:
        No attachment or one.
    """
    media = next((kind for kind in MEDIA_KINDS if message.get(kind)), None)
    if media not in ATTACHABLE:
        return ()
    item = message[media]
    if media == "photo":
        item = _photo_size(item, max_bytes)
        name, mime, kind = PHOTO_NAME, "image/jpeg", IMAGE
    elif media == "voice":
        mime = item.get("mime_type") or "audio/ogg"
        name, kind = "voice" + _VOICE_SUFFIXES.get(mime, ".ogg"), AUDIO
    elif media == "audio":
        mime = item.get("mime_type") or "audio/mpeg"
        name, kind = item.get("file_name") or item.get("title") or "audio.mp3", AUDIO
    else:
        mime = item.get("mime_type") or ""
        name = item.get("file_name") or "document"
        kind = kind_of(name, mime)
    return (Attachment(kind, name, mime, int(item.get("file_size") or 0), str(item["file_id"])),)


def _photo_size(sizes: list[dict[str, Any]], max_bytes: int) -> dict[str, Any]:
    """The largest of a photo's sizes within `max_bytes`, else the largest (which the engine
    then reports as too large)."""
    fitting = [size for size in sizes if int(size.get("file_size") or 0) <= max_bytes]
    return max(
        fitting or sizes,
        key=lambda size: (size.get("width", 0) * size.get("height", 0), size.get("file_size", 0)),
    )


def _quoted(message: dict[str, Any], bot_id: int) -> str | None:
    """The text the message replies to: the part the user quoted (`quote`, Bot API 7.0),
    else the whole text or caption of `reply_to_message`. None for no reply, a reply to a
    forum topic's creation (every topic message is one), to a message without text, or to a
    whole message of the bot's own: that answer is in the conversation already, and quoting
    it again would only repeat it (a quoted part of it says which part is meant)."""
    quote = message.get("quote")
    if isinstance(quote, dict) and quote.get("text"):
        text = str(quote["text"])
    else:
        reply = message.get("reply_to_message")
        if not isinstance(reply, dict) or reply.get("forum_topic_created"):
            return None
        if (reply.get("from") or {}).get("id") == bot_id:
            return None
        text = reply.get("text") or reply.get("caption") or ""
    text = text.strip()
    if not text:
        return None
    return text if len(text) <= QUOTE_LIMIT else text[: QUOTE_LIMIT - 1].rstrip() + "…"


def _chat_title(chat: dict[str, Any]) -> str:
    return chat.get("title") or chat.get("username") or str(chat["id"])


def addressed_to_bot(message: TelegramMessage) -> bool:
    """Whether the bot should answer: in a private chat always; in a group when mentioned,
    replied to, or given one of our commands (`/reset`, `/reset@ourbot`, `/anything@ourbot`);
    a command of another bot (`/x@otherbot`, or an unqualified `/x` we do not have) is
    ignored silently, since groups see every bot's commands.

    Args:
        message: The parsed message.

    Returns:
        True when the message is meant for the bot.
    """
    if message.is_direct:
        return True
    if message.command_for_other_bot:
        return False
    if message.command is not None:
        return message.known_command
    return message.mentions_bot or message.replies_to_bot


def model_text(message: TelegramMessage) -> str:
    """What the model reads of a message: the text replied to as a quoted block first (the
    part quoted, if any), a note that an attachment could not be seen (a sticker, a video:
    photos, voice notes and files go to the engine as attachments), then the text.

    Args:
        message: The parsed message.

    Returns:
        The text for the engine; may be empty (a bare mention, an uncaptioned photo).
    """
    if message.command not in (None, ASK_COMMAND) and not message.command_for_other_bot:
        return message.text  # a command of ours: the engine reads it as written
    parts: list[str] = []
    if message.quoted:
        parts.append("\n".join(f"> {line}" for line in message.quoted.splitlines()))
    if message.media is not None and message.media not in ATTACHABLE:
        parts.append(f"[{MEDIA_KINDS[message.media]} was attached, which you cannot see]")
    if message.text:
        parts.append(message.text)
    return "\n\n".join(parts)


# --- answers the adapter gives by itself -----------------------------------------------------

GREETING = (
    "Hi, I'm {name}, an AI assistant. Ask me anything: I answer questions, explain, "
    "translate, summarize and help with writing and code.\n\n"
    "Here, just write to me. In a group, mention me (@{username}) or reply to one of my "
    "messages, or use /ask QUESTION; replying to a message with a mention lets me read it "
    "too.\n\n"
    "Commands: {commands}"
)
"""The answer to `/start`, Telegram's first contact with a bot."""

ASK_USAGE = "Usage: /ask QUESTION (for example: /ask what is a monad?)"
"""The answer to a bare `/ask`."""

UNKNOWN_COMMAND = "I don't know /{name}. My commands: {commands}"
"""The answer to a command we do not have, in a private chat or addressed as /name@ourbot."""

CANNOT_SEE = (
    "I can read text, photos, voice messages and files, but not {media}. Please describe it, "
    "and I'll help."
)
"""The answer to a sticker, animation or video without a caption: no model call, since it
would see nothing."""

MENU_COMMANDS = ("ask", "help", *(name for name in COMMANDS if name != "help"))


def command_list() -> str:
    """Our commands as a user reads them: "/ask, /help, /reset, ..."."""
    return ", ".join(f"/{name}" for name in MENU_COMMANDS)


def local_answer(message: TelegramMessage, *, bot_name: str, bot_username: str) -> str | None:
    """The answer the adapter gives without the engine, or None to pass the message on.

    - `/start`: a greeting (who the bot is, how to reach it in groups, the commands).
    - A bare `/ask` (no question, no message replied to): its usage.
    - A command we do not have: the list of ours (in groups only when addressed to us,
      see `addressed_to_bot`).
    - A sticker, animation or video without caption: that it cannot be seen.

    Args:
        message: A message `addressed_to_bot` accepted.
        bot_name: The bot's first name, for the greeting.
        bot_username: The bot's username, without "@".

    Returns:
        The text to send, or None.
    """
    if message.command == "start":
        return GREETING.format(name=bot_name, username=bot_username, commands=command_list())
    nothing_to_read = not (message.text or message.quoted or message.attachments)
    if message.command == ASK_COMMAND and nothing_to_read:
        return (
            ASK_USAGE
            if message.media is None
            else CANNOT_SEE.format(media=MEDIA_KINDS[message.media])
        )
    if message.command is not None and message.command not in OUR_COMMANDS:
        return UNKNOWN_COMMAND.format(name=message.command, commands=command_list())
    if message.media is not None and nothing_to_read:
        return CANNOT_SEE.format(media=MEDIA_KINDS[message.media])
    return None


def event_id_for(message: TelegramMessage) -> str:
    """The id under which a message is claimed: its chat and message ids, which Telegram
    never reuses and keeps when it delivers the update again. Not the `update_id`: after a
    week without updates Telegram starts those afresh at random, so an old claim could
    swallow a new message."""
    return f"{message.chat_id}:{message.message_id}"


# In "@bot, question" the comma only addressed the bot.
_ADDRESSING = re.compile(r"^[:,](?=\s|$)")


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """The text without the UTF-16 `spans`, spaced as if they had never been typed."""
    pieces: list[str] = []
    position = 0
    for start, end in sorted(spans):
        pieces.append(utf16_slice(text, position, start))
        position = end
    pieces.append(utf16_slice(text, position))

    cleaned = pieces[0]
    for piece in pieces[1:]:
        if not cleaned.strip():
            piece = _ADDRESSING.sub("", piece)
        left, right = cleaned.rstrip(" \t"), piece.lstrip(" \t")
        # A span between two words leaves one space; at the start or end of a line, none.
        between_words = left and right and not left.endswith("\n") and not right.startswith("\n")
        cleaned = f"{left} {right}" if between_words else left + right
    return cleaned.strip()


def _display_name(user: dict[str, Any]) -> str:
    full_name = " ".join(part for part in (user.get("first_name"), user.get("last_name")) if part)
    return full_name or user.get("username") or str(user["id"])


# --- conversation keys --------------------------------------------------------------------

# "thread" and "channel" are the engine's names (`/scope`); "chat" is Telegram's word.
_TOPIC_SCOPES = frozenset({"thread", "channel", "chat"})


def conversation_key(message: TelegramMessage, *, scope: str | None) -> ConversationKey:
    """The conversation a message belongs to, by the chat's scope.

    A private chat is one conversation. In a group, each forum topic is a conversation of its
    own (the chat itself outside topics), whatever the scope; scope "user" gives each user
    their own conversation in it (thread "user:ID", or "TOPIC:user:ID" in a topic).

    Args:
        message: The parsed message.
        scope: The chat's scope: None (the default), "thread", "channel", "chat" or "user".

    Returns:
        The key, with `platform` "telegram", no workspace and the chat id as the channel.

    Raises:
        ValueError: An unknown scope.
    """
    if scope is not None and scope not in _TOPIC_SCOPES and scope != "user":
        raise ValueError(f"unknown conversation scope {scope!r}")
    topic = "" if message.thread_id is None else str(message.thread_id)
    if message.is_direct:
        thread = ""
    elif scope == "user":
        thread = f"{topic}:user:{message.user_id}" if topic else f"user:{message.user_id}"
    else:
        thread = topic
    return ConversationKey(PLATFORM, "", str(message.chat_id), thread)


# --- Markdown → Telegram HTML -------------------------------------------------------------

_LINKABLE = re.compile(r"^(?:https?://|mailto:|tg://)\S", re.IGNORECASE)
_URL_UNSAFE = re.compile(r"[\s<>\"]")
_DELIMITER_RUN = re.compile(r"\*+|_+|~+")
_SENTENCE_PUNCTUATION = re.compile(r"[.,;:!?](?!\w)")

# Emphasis only opens after a space or opening punctuation and only closes before a space,
# closing punctuation or the end, so snake_case, 2*3*4, __init__.py and my_var_name stay as
# written. Another emphasis marker may sit next to it (`_**x**_`), never its own.
_OPENING_PUNCTUATION = "([{\"'\u201c\u2018"
_CLOSING_PUNCTUATION = ")]}\"'\u201d\u2019"
_MARKERS = "*_~"
_EMPHASIS_TAGS = {("*", 1): "i", ("_", 1): "i", ("*", 2): "b", ("_", 2): "b", ("~", 2): "s"}


def markdown_to_html(text: str) -> str:
    """Turn the model's GitHub-flavoured Markdown into Telegram's HTML (`parse_mode="HTML"`).

    - `**b**`, `__b__` → `<b>`; `*i*`, `_i_` → `<i>`; `~~s~~` → `<s>`; they nest
      (`***bi***` → `<i><b>bi</b></i>`). Emphasis needs a word boundary on both sides, so
      snake_case, 2*3*4 and file paths are left alone; markers that do not pair up, or
      whose pairs would overlap, stay as literal characters. Markdown's escapes (`\\*` ...)
      show the bare character.
    - `` `code` `` → `<code>`; fenced blocks → `<pre><code class="language-x">` (no class
      without an info string; an empty block disappears, an unclosed one runs to the end).
    - `[label](url)` and `![alt](url)` → `<a href="url">label</a>` for http(s), mailto and tg
      URLs (spaces, quotes and angle brackets in them percent-encoded); any other link is
      inert text "label (url)". Bare URLs and `<url>` are left as text: Telegram links them.
      A label keeps its emphasis; code in it loses its markup, as Telegram nests no code in
      a link.
    - `# Title` … `###### Title` → `<b>Title</b>`; `-`, `*`, `+` bullets → `•` (indentation
      kept), task items → `☐` / `☑`; numbered lists stay; consecutive `>` lines become one
      `<blockquote>` (nested quotes flatten, as Telegram nests none); a rule (`---`) →
      `HORIZONTAL_RULE`; tables → `<pre>` with the cells as plain text, padded to line up.
    - Every piece of text is escaped (`&`, `<`, `>`, and `"` in attributes): the only tags
      in the result are the ones made here, properly nested and closed.

    Args:
        text: Markdown.

    Returns:
        The same text in Telegram's HTML.
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if fence := FENCE.match(lines[i]):
            end = fence_end(lines, i + 1, fence[1])
            language = next(iter(lines[i][fence.end() :].split()), "")
            out.append(_code_block(lines[i + 1 : end], language))
            i = end + 1
        elif end := table_end(lines, i):
            out.append(_table(lines[i:end]))
            i = end
        elif QUOTE.match(lines[i]):
            quoted = list(_quoted_lines(lines, i))
            inner = "\n".join(_convert_line(line) for line in quoted)
            out.append(f"<blockquote>{inner}</blockquote>")
            i += len(quoted)
        else:
            out.append(_convert_line(lines[i]))
            i += 1
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_attribute(text: str) -> str:
    return _escape(text).replace('"', "&quot;")


def _code_block(lines: list[str], language: str) -> str:
    # A block with nothing in it (a reply streamed up to "```python") would be an empty
    # message, which Telegram refuses.
    if not any(line.strip() for line in lines):
        return ""
    opening = f'<code class="language-{_escape_attribute(language)}">' if language else "<code>"
    code = _escape("\n".join(lines))
    return f"<pre>{opening}{code}</code></pre>"


def _quoted_lines(lines: list[str], start: int) -> Iterator[str]:
    """The quote's lines from `start` on, without their `>` markers."""
    for line in lines[start:]:
        if not (marks := QUOTE.match(line)):
            return
        yield line[marks.end() :]


def _convert_line(line: str) -> str:
    if RULE.match(line):
        return HORIZONTAL_RULE
    if heading := HEADING.match(line):
        # The title is bold already; bold inside it would only nest <b> in <b>.
        title = _inline(heading[1] or "").replace("<b>", "").replace("</b>", "")
        return f"<b>{title}</b>" if title else ""
    if task := TASK.match(line):
        box = "☐" if task[2] == " " else "☑"
        return f"{task[1]}{box} {_inline(task[3])}"
    if bullet := BULLET.match(line):
        return f"{bullet[1]}• {_inline(bullet[2])}"
    return _inline(line)


# --- inline Markdown ----------------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    """A run of `*`, `_` or `~~` that may open or close emphasis.

    Pairing uses up its characters from the inside: a closer from its left end (`closes`,
    innermost first), an opener from its right end (`opens`, outermost first). What is left
    over shows as literal characters.
    """

    char: str
    length: int
    can_open: bool
    can_close: bool
    closes: list[str] = field(default_factory=list)
    opens: list[str] = field(default_factory=list)

    def html(self) -> str:
        return (
            "".join(f"</{tag}>" for tag in self.closes)
            + self.char * self.length
            + "".join(f"<{tag}>" for tag in self.opens)
        )


def _inline(text: str, *, in_link: bool = False) -> str:
    """Convert one line's inline Markdown.

    Code spans, links and URLs are cut out first and rendered whole; the delimiter runs
    between them are then paired like CommonMark's emphasis, but with stricter flanking rules
    (see `_delimiter`). `in_link` renders a link's label: emphasis only, as Telegram puts no
    code or link inside a link.
    """
    parts: list[str | _Run] = []
    position = 0
    for token in INLINE_TOKEN.finditer(text):
        parts.extend(_text_and_delimiters(text, position, token.start()))
        parts.append(_render_token(token, in_link=in_link))
        position = token.end()
    parts.extend(_text_and_delimiters(text, position, len(text)))
    _pair(part for part in parts if isinstance(part, _Run))
    return "".join(part if isinstance(part, str) else part.html() for part in parts)


def _text_and_delimiters(text: str, start: int, end: int) -> Iterator[str | _Run]:
    """`text[start:end]` as escaped text and the delimiter runs in it."""
    for run in _DELIMITER_RUN.finditer(text, start, end):
        yield _escape(text[start : run.start()])
        yield _delimiter(text, run.start(), run.end())
        start = run.end()
    yield _escape(text[start:end])


def _delimiter(text: str, start: int, end: int) -> str | _Run:
    char = text[start]
    if char == "~" and end - start != 2:
        return char * (end - start)  # "~5 min", "~~~": only a double tilde strikes through
    before = text[start - 1] if start else ""
    after = text[end] if end < len(text) else ""
    other_marker = _MARKERS.replace(char, "")
    can_open = (
        (not before or before.isspace() or before in _OPENING_PUNCTUATION + other_marker)
        and bool(after)
        and not after.isspace()
    )
    can_close = (
        bool(before)
        and not before.isspace()
        and before != char
        and (
            not after
            or after.isspace()
            or after in _CLOSING_PUNCTUATION + other_marker
            or bool(_SENTENCE_PUNCTUATION.match(text, end))
        )
    )
    return _Run(char, end - start, can_open, can_close)


def _pair(runs: Iterable[_Run]) -> None:
    """Pair openers with closers, left to right, each closer with the nearest opener.

    The openers between a pair are dropped from the stack, so no later pair can straddle
    it: tags always nest. A closer and an opener of two characters or more make bold, else
    italic; `~~` makes strikethrough.
    """
    openers: list[_Run] = []
    # Counted so that a closer with no opener of its kind does not scan the whole stack,
    # which would make a long line of unpaired markers quadratic.
    waiting: Counter[str] = Counter()
    for run in runs:
        while run.can_close and run.length and waiting[run.char]:
            index = next(i for i in reversed(range(len(openers))) if openers[i].char == run.char)
            opener = openers[index]
            used = 2 if opener.length >= 2 and run.length >= 2 else 1
            tag = _EMPHASIS_TAGS[run.char, used]
            opener.length -= used
            run.length -= used
            opener.opens.insert(0, tag)
            run.closes.append(tag)
            dropped = index + 1 if opener.length else index
            waiting.subtract(other.char for other in openers[dropped:])
            del openers[dropped:]
        if run.can_open and run.length:
            openers.append(run)
            waiting[run.char] += 1


def _render_token(match: re.Match[str], *, in_link: bool) -> str:
    groups = match.groupdict()
    if groups["code"] is not None:
        code = _escape(_code_span_text(groups["code_text"]))
        return code if in_link else f"<code>{code}</code>"
    if groups["escaped"] is not None:
        return _escape(groups["escaped"])
    if groups["autolink"] is not None:
        return _escape(groups["autolink"])
    if groups["url"] is not None or in_link:
        return _escape(match[0])
    return _link(*link_parts(match))


def _code_span_text(text: str) -> str:
    # CommonMark: "`` `x` ``" shows "`x`"; one space on each side is padding.
    if text.startswith(" ") and text.endswith(" ") and text.strip():
        return text[1:-1]
    return text


def _link(label: str, url: str) -> str:
    """An `<a>` to an http(s), mailto or tg URL, or inert text for anything else."""
    url, label = url.strip(), label.strip()
    shown = _inline(label, in_link=True)
    if _LINKABLE.match(url):
        href = _escape_attribute(_URL_UNSAFE.sub(lambda m: quote(m[0], safe=""), url))
        return f'<a href="{href}">{shown or _escape(url)}</a>'
    if not url or label == url:
        return shown
    return f"{shown} ({_escape(url)})" if shown else _escape(url)


# --- tables -------------------------------------------------------------------------------


def _table(lines: list[str]) -> str:
    """A `<pre>` block with every column padded to one width, aligned as the table says.

    A `<pre>` holds no formatting, so cells show their plain text (`**ok**` → "ok", a link
    → "label (url)").
    """
    table = "\n".join(aligned_table(lines, lambda cell: html_to_plain(_inline(cell))))
    return f"<pre>{_escape(table)}</pre>"


# --- HTML → plain text --------------------------------------------------------------------

_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}
# Text is always escaped here, so every "<" in our HTML starts a tag.
_TAG_OR_ENTITY = re.compile(r"<[^<>]*>|&(?P<entity>lt|gt|amp|quot);")
_LINK_TAG_OR_ENTITY = re.compile(
    rf'<a href="(?P<href>[^"]*)">(?P<label>.*?)</a>|{_TAG_OR_ENTITY.pattern}', re.DOTALL
)


def html_to_plain(html: str) -> str:
    """The text of `markdown_to_html`'s output without markup, for when Telegram rejects it.

    Tags are dropped and entities unescaped, in one pass so that an escaped "&amp;lt;"
    becomes "&lt;", not "<". A link shows as "label (url)", or as the URL alone when that is
    its label.

    Args:
        html: HTML as `markdown_to_html` makes it.

    Returns:
        Plain text to send without `parse_mode`.
    """

    def plain(match: re.Match[str]) -> str:
        if match["href"] is None:
            return _ENTITIES[match["entity"]] if match["entity"] else ""
        label, url = _text(match["label"]), _text(match["href"])
        return label if label == url else f"{label} ({url})"

    return _LINK_TAG_OR_ENTITY.sub(plain, html)


def rendered_length(html: str) -> int:
    """The length Telegram counts for `html`: its text after entity parsing (tags removed,
    entities unescaped), in UTF-16 code units. Compare it with `TELEGRAM_LIMIT`.

    Args:
        html: HTML as `markdown_to_html` makes it.

    Returns:
        The message length as Telegram measures it.
    """
    return utf16_length(_text(html))


def _text(html: str) -> str:
    return _TAG_OR_ENTITY.sub(lambda m: _ENTITIES[m["entity"]] if m["entity"] else "", html)
