"""Pure translation between Slack and Parley: event payloads in, mrkdwn out.

Nothing here imports the Slack SDK, does I/O or talks to the network: the runtime module
receives events and posts replies, and calls these functions in between.

- `parse_event` turns an `app_mention` / `message` event into a `SlackMessage` (or None for
  what the bot must ignore), with the text cleaned of Slack's markup and the files it carries
  described as attachments (`attachments_of`).
- `event_id_for` and `conversation_key` say under which id the engine claims the message and
  which conversation it belongs to.
- `markdown_to_mrkdwn` turns the model's Markdown into Slack's mrkdwn, escaped so that model
  output can never produce a Slack control sequence (`<!channel>`, `<@U…>`, `<#C…>`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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
from core.attachments import AUDIO, Attachment, kind_of
from core.events import ConversationKey

PLATFORM = "slack"

HORIZONTAL_RULE = "───"
"""What a Markdown rule (`---`) becomes: mrkdwn has none, and a short line keeps the break."""


# --- incoming events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlackMessage:
    """One user message for the bot, taken from a Slack event.

    Attributes:
        team: The workspace the app is installed in (the envelope's team id). Not the
            event's `team`: in a Slack Connect channel that is the author's own workspace,
            which would split one thread's speakers into separate conversations.
        channel: The channel id (`C…` public, `G…` private or group DM, `D…` direct message).
        user: The author's user id.
        text: The text cleaned of Slack's markup (see `clean_text`); user mentions stay as
            `<@U…>` for `replace_user_mentions`. Empty for a bare mention of the bot.
        ts: This message's timestamp, its id within the channel.
        thread_ts: The thread to answer in: the message's thread, or the message itself when it
            is not in a thread (answering there starts a thread under it).
        in_thread: The message was posted inside an existing thread.
        is_direct: A direct message with the bot.
        mentions_bot: The bot was mentioned.
        mentioned_users: The other users mentioned, in order of first mention, for name lookup.
        attachments: The files shared with the message that can be downloaded; `text` is
            then their caption.
    """

    team: str
    channel: str
    user: str
    text: str
    ts: str
    thread_ts: str
    in_thread: bool
    is_direct: bool
    mentions_bot: bool
    mentioned_users: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()


_HANDLED_EVENTS = frozenset({"app_mention", "message"})
# Subtypes that are still a person writing to the channel; every other one (edits, deletions,
# joins, topic changes ...) is housekeeping the bot must not answer.
_MESSAGE_SUBTYPES = frozenset({"thread_broadcast", "file_share", "me_message"})
_BOT_SUBTYPE = "bot_message"

_USER_MENTION = re.compile(r"<@([A-Z0-9]+)(?:\|([^<>]*))?>")
# Slack escapes the user's own `<`, `>` and `&`, so every `<…>` left in a text is markup.
_SLACK_TOKEN = re.compile(r"<([^<>]+)>")
_SLACK_ENTITY = re.compile(r"&(amp|lt|gt);")
_ENTITY_CHARS = {"amp": "&", "lt": "<", "gt": ">"}
_BROADCASTS = frozenset({"here", "channel", "everyone"})


def parse_event(
    event: dict[str, Any],
    *,
    team_id: str,
    bot_user_id: str,
    bot_id: str,
    ignore_bots: bool = True,
) -> SlackMessage | None:
    """Translate an `app_mention` or `message` event, or say it is not for the bot.

    Ignored (None): other event types; the bot's own messages; other bots' messages (a
    `bot_id`, or subtype `bot_message`) when `ignore_bots`; every subtype but
    `thread_broadcast`, `file_share` and `me_message` (a `/me` line): edits, deletions,
    joins and leaves ...; events without a channel, ts or author; and messages with neither
    cleaned text nor a file to download, unless they are addressed to the bot. A bare mention
    ("<@UBOT>") or an empty direct message is returned with text "" so the runtime can answer
    with a short hint instead of staying silent. A file shared without a caption is returned
    with text "" and its attachment.

    With `ignore_bots` False, another bot's message is kept; a legacy `bot_message` without a
    `user` is attributed to its `bot_id`.

    Args:
        event: The `event` object of the Events API envelope.
        team_id: The workspace the app is installed in (the envelope's `team_id`).
        bot_user_id: The bot's user id (`auth.test` → `user_id`).
        bot_id: The bot's bot id (`auth.test` → `bot_id`).
        ignore_bots: Drop messages written by other bots.

    Returns:
        The message, or None when the bot must not react to this event.
    """
    if event.get("type") not in _HANDLED_EVENTS:
        return None
    subtype = event.get("subtype")
    from_bot = bool(event.get("bot_id")) or subtype == _BOT_SUBTYPE
    if event.get("user") == bot_user_id or event.get("bot_id") == bot_id:
        return None
    if from_bot and ignore_bots:
        return None
    if subtype is not None and subtype not in _MESSAGE_SUBTYPES and subtype != _BOT_SUBTYPE:
        return None

    channel = str(event.get("channel") or "")
    ts = str(event.get("ts") or "")
    user = str(event.get("user") or event.get("bot_id") or "")
    if not (channel and ts and user):
        return None

    raw = str(event.get("text") or "")
    mentions_bot = event["type"] == "app_mention" or bool(_bot_mention(bot_user_id).search(raw))
    is_direct = event.get("channel_type") == "im" or channel.startswith("D")
    text = clean_text(raw, bot_user_id=bot_user_id)
    attachments = attachments_of(event)
    if not text and not attachments and not (mentions_bot or is_direct):
        return None

    thread_ts = str(event.get("thread_ts") or ts)
    mentioned = (m[1] for m in _USER_MENTION.finditer(raw) if m[1] != bot_user_id)
    return SlackMessage(
        team=team_id or str(event.get("team") or ""),
        channel=channel,
        user=user,
        text=text,
        ts=ts,
        thread_ts=thread_ts,
        in_thread=thread_ts != ts,
        is_direct=is_direct,
        mentions_bot=mentions_bot,
        mentioned_users=tuple(dict.fromkeys(mentioned)),
        attachments=attachments,
    )


# Files whose bytes Slack does not serve to the bot: a link to another service (Google Drive
# ...: its `url_private` is that service's page, never to be sent the bot token), a deleted
# file, a file past a free workspace's history limit.
_NOT_DOWNLOADABLE = frozenset({"external", "tombstone", "hidden_by_limit"})
# Slack's own voice clips; their type can read video/mp4, their words are what counts.
_VOICE_CLIP = "slack_audio"


def attachments_of(event: Mapping[str, Any]) -> tuple[Attachment, ...]:
    """The files of a message event (`files`, in `file_share` messages and in mentions) as
    attachments, in the order shown: `ref` is the URL the bot downloads the file from
    (`url_private_download`, else `url_private`), `size` the size Slack reports.

    Left out: external files, deleted ones, those hidden by a plan's limit, and file objects
    without a URL (Slack sends only `id` and `file_access: check_file_info` when the bot may
    not see a file).
    """
    files = event.get("files")
    if not isinstance(files, list):
        return ()
    found: list[Attachment] = []
    for file in files:
        if not isinstance(file, Mapping):
            continue
        if file.get("mode") in _NOT_DOWNLOADABLE or file.get("is_external"):
            continue
        url = str(file.get("url_private_download") or file.get("url_private") or "")
        if not url:
            continue
        name = str(file.get("name") or file.get("title") or file.get("id") or "file")
        mime = str(file.get("mimetype") or "")
        kind = AUDIO if file.get("subtype") == _VOICE_CLIP else kind_of(name, mime)
        size = file.get("size")
        found.append(
            Attachment(
                kind=kind,
                name=name,
                mime=mime,
                size=size if isinstance(size, int) and size > 0 else 0,
                ref=url,
            )
        )
    return tuple(found)


def clean_text(text: str, *, bot_user_id: str) -> str:
    """Turn a Slack message text into the plain text the model reads.

    - The bot's mention (`<@UBOT>`, `<@UBOT|name>`) is removed wherever it is, with the space
      around it, and a leading "<@UBOT>:" / "<@UBOT>," loses its punctuation too.
    - Links: `<https://x.y|label>` → "label (https://x.y)", `<https://x.y>` → "https://x.y";
      a label that is the URL itself, with or without its scheme (what Slack makes of a typed
      "x.y"), is shown alone. `<mailto:a@b.c|a@b.c>` → "a@b.c".
    - `<#C123|general>` → "#general" (`#C123` when Slack sends no name); `<!here>`,
      `<!channel>`, `<!everyone>` → "@here", "@channel", "@everyone"; other `<!…>` tokens
      (user groups, dates) → their label.
    - User mentions `<@U123>` stay for `replace_user_mentions`.
    - `&amp;`, `&lt;`, `&gt;` → `&`, `<`, `>` (last, so the user's own "&lt;" stays "&lt;").

    Args:
        text: The `text` of a Slack message event.
        bot_user_id: The bot's user id, whose mentions are removed.

    Returns:
        The cleaned text, stripped of surrounding whitespace.
    """
    mention = _bot_mention(bot_user_id).pattern
    # In "@bot: question" the colon only addressed the bot.
    text = re.sub(rf"^\s*{mention}[ \t]*[:,](?=\s|$)", "", text)
    text = re.sub(rf"[ \t]*{mention}[ \t]*", _mention_gap, text)
    text = _SLACK_TOKEN.sub(_readable_token, text)
    return _SLACK_ENTITY.sub(lambda m: _ENTITY_CHARS[m[1]], text).strip()


def replace_user_mentions(text: str, names: Mapping[str, str]) -> str:
    """Show user mentions as names: `<@U123>` → "@Name".

    Args:
        text: A cleaned text (`SlackMessage.text`).
        names: Display names by user id, as the runtime looked them up.

    Returns:
        The text with every mention replaced; an id without a name stays an id ("@U123"),
        or takes the name a legacy `<@U123|name>` mention carries.
    """

    def name(match: re.Match[str]) -> str:
        user_id, label = match[1], match[2]
        return "@" + (names.get(user_id) or (label or "").lstrip("@") or user_id)

    return _USER_MENTION.sub(name, text)


def event_id_for(message: SlackMessage) -> str:
    """The id under which the engine claims a message: `"{channel}:{ts}"`.

    Slack delivers a mention twice, as `app_mention` and as `message`, with different
    `event_id`s (and a retry may repeat either). Both carry the same channel and ts, so keyed
    on those they map to one claim and the bot answers once.
    """
    return f"{message.channel}:{message.ts}"


def _bot_mention(bot_user_id: str) -> re.Pattern[str]:
    return re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^<>]*)?>")


def _mention_gap(match: re.Match[str]) -> str:
    # A mention between two words leaves one space; at the start or end of a line, none.
    before, after = match.string[: match.start()], match.string[match.end() :]
    at_edge = not before or before.endswith("\n") or not after or after.startswith("\n")
    return "" if at_edge else " "


def _readable_token(match: re.Match[str]) -> str:
    body = match[1]
    target, _, label = body.partition("|")
    if body.startswith("@"):
        return match[0]
    if body.startswith("#"):
        return "#" + (label or target[1:])
    if body.startswith("!"):
        keyword, *arguments = target[1:].split("^")
        if keyword in _BROADCASTS:
            return f"@{keyword}"
        if label:
            return label
        return f"@{arguments[0]}" if keyword == "subteam" and arguments else match[0]
    if target.lower().startswith("mailto:"):
        address = target[len("mailto:") :]
        return address if label in ("", address) else f"{label} ({address})"
    if label in ("", target, target.split("://", 1)[-1]):
        return label or target
    return f"{label} ({target})"


# --- conversation keys --------------------------------------------------------------------


def conversation_key(message: SlackMessage, *, scope: str | None) -> ConversationKey:
    """The conversation a message belongs to, by the channel's scope.

    - "thread", or None (the default): the thread; a top-level message starts one, so its
      `thread_ts` is its own ts. By default a DM is one conversation (thread ""), except a
      message inside a DM thread, which belongs to that thread.
    - "channel": the whole channel (thread "").
    - "user": each user has their own conversation in the channel (thread "user:U…").

    Args:
        message: The parsed message.
        scope: The channel's scope ("thread", "channel", "user"), or None for the default.

    Returns:
        The key, with `platform` "slack" and `workspace` the team.

    Raises:
        ValueError: An unknown scope.
    """
    if scope is None:
        thread = message.thread_ts if message.in_thread or not message.is_direct else ""
    elif scope == "thread":
        thread = message.thread_ts
    elif scope == "channel":
        thread = ""
    elif scope == "user":
        thread = f"user:{message.user}"
    else:
        raise ValueError(f"unknown conversation scope {scope!r}")
    return ConversationKey(PLATFORM, message.team, message.channel, thread)


# --- Markdown → mrkdwn --------------------------------------------------------------------

# Inline conversion hides finished pieces (code, links, URLs) behind "\0<n>\0" and marks
# converted emphasis with \1 (bold), \2 (italic) and \3 (strike), so later rules neither see
# nor re-convert them. The input loses these four characters, which mean nothing in chat.
_SENTINELS = re.compile("[\x00-\x03]")
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")
_MARKERS = str.maketrans({"\x01": "*", "\x02": "_", "\x03": "~"})

_LINKABLE = re.compile(r"^(?:https?://|mailto:)\S", re.IGNORECASE)
_URL_UNSAFE = re.compile(r"[\s|<>\"]")

# Emphasis only opens after a space or opening punctuation and only closes before a space,
# closing punctuation or the end, so snake_case, 2*3*4, __init__.py and :white_check_mark:
# stay as written. Another emphasis marker may sit next to it (`_**x**_`), never its own
# (`**kwargs` holds no italic).
_OPENERS = "\\s(\\[{\"'\u201c\u2018\x01\x02\x03"
_CLOSERS = "\\s)\\]}\"'\u201d\u2019\x01\x02\x03"


def _emphasis(delimiter: str) -> re.Pattern[str]:
    char = delimiter[0]
    others = re.escape("*_~".replace(char, ""))
    mark, char = re.escape(delimiter), re.escape(char)
    return re.compile(
        rf"(?<![^{_OPENERS}{others}]){mark}(?=[^\s{char}])(.+?)(?<=[^\s{char}]){mark}"
        rf"(?=$|[{_CLOSERS}{others}]|[.,;:!?](?!\w))"
    )


_EMPHASIS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_emphasis("***"), "\x01\x02\\1\x02\x01"),
    (_emphasis("___"), "\x01\x02\\1\x02\x01"),
    (_emphasis("**"), "\x01\\1\x01"),
    (_emphasis("__"), "\x01\\1\x01"),
    (_emphasis("~~"), "\x03\\1\x03"),
    (_emphasis("*"), "\x02\\1\x02"),
    (_emphasis("_"), "\x02\\1\x02"),
)


def markdown_to_mrkdwn(text: str) -> str:
    """Turn the model's GitHub-flavoured Markdown into Slack mrkdwn.

    - `**b**`, `__b__` → `*b*`; `*i*`, `_i_` → `_i_`; `***bi***` → `*_bi_*`; `~~s~~` → `~s~`.
      Emphasis needs a word boundary on both sides, so snake_case, 2*3*4, file paths and
      `:emoji_codes:` are left alone. Markdown's escapes (`\\*`, `\\_` ...) show the bare
      character (mrkdwn has no escapes of its own).
    - `[label](url)` → `<url|label>`, `![alt](url)` → `<url|alt>`, `<url>` stays `<url>`, bare
      URLs stay as they are. Only http(s) and mailto URLs become links; `|`, `<`, `>`, spaces
      and quotes in them are percent-encoded. Any other link (another scheme such as
      `javascript:`, a relative URL, or a label holding `|`) is shown as inert text
      "label (url)".
    - `# Title` … `###### Title` → `*Title*`; `-`, `*`, `+` bullets → `•` (indentation kept),
      task items → `☐` / `☑`; numbered lists and `> quotes` stay (nested quotes flatten to
      one level, as Slack has only one); a rule (`---`) → `HORIZONTAL_RULE`.
    - Code spans and fenced blocks are kept verbatim (a fence's language tag is dropped);
      tables become a code block with their columns padded to line up.
    - `&`, `<`, `>` are escaped everywhere, code included, so nothing the model writes can
      become a Slack control sequence (`<!channel>`, `<@U123>`, `<#C1>`); the only `<` left
      open are the links made here. A quote's leading `>` is written as is.

    Args:
        text: Markdown.

    Returns:
        The same text in mrkdwn.
    """
    lines = _SENTINELS.sub("", text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if fence := FENCE.match(lines[i]):
            end = fence_end(lines, i + 1, fence[1])
            out.append(_code_block(lines[i + 1 : end]))
            i = end + 1
        elif end := table_end(lines, i):
            out.append(_code_block(aligned_table(lines[i:end])))
            i = end
        else:
            out.append(_convert_line(lines[i]))
            i += 1
    return "\n".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code_block(lines: list[str]) -> str:
    return "\n".join(["```", *(_escape(line) for line in lines), "```"])


def _convert_line(line: str) -> str:
    if RULE.match(line):
        return HORIZONTAL_RULE
    if quote_marks := QUOTE.match(line):
        inner = _convert_line(line[quote_marks.end() :])
        return f"> {inner}" if inner else ">"
    if heading := HEADING.match(line):
        title = _inline(heading[1] or "", in_bold=True)
        return f"*{title}*" if title else ""
    if task := TASK.match(line):
        box = "☐" if task[2] == " " else "☑"
        return f"{task[1]}{box} {_inline(task[3])}"
    if bullet := BULLET.match(line):
        return f"{bullet[1]}• {_inline(bullet[2])}"
    return _inline(line)


def _inline(text: str, *, in_bold: bool = False) -> str:
    """Convert one line's inline Markdown; `in_bold` drops bold that would nest in bold."""
    pieces: list[str] = []

    def hide(match: re.Match[str]) -> str:
        pieces.append(_render_token(match))
        return f"\x00{len(pieces) - 1}\x00"

    text = _escape(INLINE_TOKEN.sub(hide, text))
    for pattern, replacement in _EMPHASIS:
        text = pattern.sub(replacement, text)
    if in_bold:
        text = text.replace("\x01", "")
    text = text.translate(_MARKERS)
    return _PLACEHOLDER.sub(lambda m: pieces[int(m[1])], text)


def _render_token(match: re.Match[str]) -> str:
    groups = match.groupdict()
    if groups["code"] is not None:
        return _escape(match[0])
    if groups["escaped"] is not None:
        return _escape(groups["escaped"])
    if groups["autolink"] is not None:
        return _link("", groups["autolink"])
    if groups["url"] is not None:
        return _escape(groups["url"])
    return _link(*link_parts(match))


def _link(label: str, url: str) -> str:
    """A mrkdwn link to an http(s) or mailto URL, or inert text for anything else."""
    url, label = url.strip(), label.strip()
    if _LINKABLE.match(url):
        target = _escape(_URL_UNSAFE.sub(lambda m: quote(m[0], safe=""), url))
        if label in ("", url):
            return f"<{target}>"
        # Slack splits `<url|label>` at a "|", so a label holding one would be misread.
        if "|" not in label:
            return f"<{target}|{_escape(label)}>"
    if not label or label == url:
        return _escape(url)
    return _escape(f"{label} ({url})" if url else label)
