"""A fake Discord (REST API + gateway) on 127.0.0.1, driven through the real discord.py.

`async with FakeDiscord() as fake:` serves both on one port:

- REST at `fake.api_url` (`http://127.0.0.1:PORT/api/v10`) for `discord.http.Route.BASE`.
  Interaction callbacks and webhook follow-ups go through the same base. Every request is
  recorded in `fake.calls` (`Call.body` is the JSON sent, or `payload_json` of a multipart
  upload); bot messages live in `fake.messages[(channel_id, message_id)]` (ids are strings).
  Responses carry `Content-Type: application/json` exactly (discord.py treats anything else,
  even with `; charset=utf-8`, as text) and realistic `X-RateLimit-*` headers.
  `fail_next(method, path_prefix, ...)` scripts errors; a 429 has the JSON body, the
  `Retry-After` / `X-RateLimit-*` headers and the `Via` header that discord.py insists on
  (without `Via` it assumes a Cloudflare ban and raises `HTTPException` instead of retrying).
  `fail_for(seconds, path_prefix, responses=[502, (503, "<html>")])` is an outage: every
  matching request fails for a while (JSON errors, or HTML pages as a proxy sends them).
  `add_message` and `add_thread` put in what an earlier process left (a placeholder, a
  thread); starting a thread from a message that has one answers 400 (code 160004).
- The gateway at `fake.gateway_url` (`ws://127.0.0.1:PORT/gateway`) for
  `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`: HELLO, heartbeat ACKs, IDENTIFY ->
  READY (+ GUILD_CREATE per guild), RESUME -> replay of missed dispatches + RESUMED, op 8 ->
  empty GUILD_MEMBERS_CHUNK; with `fake.identify_close_code` set, IDENTIFY is answered by
  closing the socket with that code instead (4004 a refused token, 4014 an intent not
  enabled in the Developer Portal); `fake.gateway_refusals = N` answers the next N gateway
  handshakes with HTTP 503, as an outage does. READY's `resume_gateway_url` is
  `fake.resume_gateway_url` (`ws://127.0.0.1:PORT/resume`, a different path so tests can
  tell a resume happened there).
  discord.py 2.7.1 asks for `compress=zlib-stream` in the URL query (or `zstd-stream` when
  `zstandard` is installed); by default the fake honours zlib-stream (binary frames, one
  zlib context per connection, every message ending in Z_SYNC_FLUSH) and sends text frames
  otherwise, which discord.py also accepts (it only decompresses binary frames).

- A CDN for attachments: `fake.add_attachment(data, filename, content_type)` stores a
  file and returns its attachment object as MESSAGE_CREATE carries it (`url` under
  `/attachments/{channel}/{id}/{filename}`, `proxy_url` under `/media/attachments/...`, both
  on 127.0.0.1 and signed like Discord's: `?ex=<expiry>&is=<issued>&hm=<hmac>&`, hex epoch
  seconds). Every download is recorded in `fake.downloads`. A URL whose signature does not
  match or whose `ex` has passed (`fake.cdn_clock` moves the CDN's clock) gets Discord's 404
  "This content is no longer available."

`patched(fake)` points discord.py at the fake (both class attributes) and restores them.
Module-level builders (`message_create`, `dm_message_create`, `interaction_create`,
`thread_create`, `guild_text_channel`) make gateway payloads; send them with
`await fake.dispatch("MESSAGE_CREATE", payload)`.
"""

# The wait_* helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import re
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

BOT_ID = "1000"
BOT_USERNAME = "parley"
APPLICATION_ID = "2000"
GUILD_ID = "3000"
CHANNEL_ID = "4000"
DM_CHANNEL_ID = "5000"
USER_ID = "1"
BOT_ROLE_ID = "7000"  # the bot's managed role in the default guild (`tags.bot_id` = BOT_ID)
USERNAME = "alice"
OWNER_ID = "6000"
API_VERSION = 10
HEARTBEAT_INTERVAL = 41250  # milliseconds, as Discord sends
# Permissions: administrator would hide permission bugs; this is "send/read/threads/embeds".
DEFAULT_PERMISSIONS = str(
    (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 35) | (1 << 38)
)

BOT_USER: dict[str, Any] = {
    "id": BOT_ID,
    "username": BOT_USERNAME,
    "global_name": None,
    "discriminator": "0",
    "avatar": None,
    "bot": True,
    "flags": 0,
    "public_flags": 0,
}

# MessageFlags.IS_VOICE_MESSAGE, set on a message that is one recorded voice message.
IS_VOICE_MESSAGE = 1 << 13
# How long a signed attachment URL is valid (Discord's are, today, about a day).
ATTACHMENT_URL_LIFETIME = 24 * 3600
CDN_GONE = "This content is no longer available."

# One snowflake sequence for every id this module makes (messages, threads, interactions),
# so later objects always have larger ids, as on Discord.
_snowflakes: Iterator[int] = itertools.count(1_100_000_000_000_000_000)


def next_snowflake() -> str:
    return str(next(_snowflakes))


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def user_payload(
    user_id: str = USER_ID, username: str = USERNAME, *, bot: bool = False
) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "username": username,
        "global_name": username.title(),
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def member_payload(user: Mapping[str, Any], *, permissions: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "user": dict(user),
        "roles": [],
        "nick": None,
        "joined_at": "2024-01-01T00:00:00+00:00",
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
    }
    if permissions is not None:
        data["permissions"] = permissions
    return data


def guild_text_channel(
    channel_id: str = CHANNEL_ID, *, guild_id: str = GUILD_ID, name: str = "general"
) -> dict[str, Any]:
    """A guild text channel (type 0) as Discord sends it."""
    return {
        "id": str(channel_id),
        "type": 0,
        "guild_id": str(guild_id),
        "name": name,
        "position": 0,
        "permission_overwrites": [],
        "nsfw": False,
        "topic": None,
        "parent_id": None,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "flags": 0,
    }


def dm_channel(
    channel_id: str = DM_CHANNEL_ID, *, user_id: str = USER_ID, username: str = USERNAME
) -> dict[str, Any]:
    """A DM channel (type 1) as GET /channels/{id} and POST /users/@me/channels answer."""
    return {
        "id": str(channel_id),
        "type": 1,
        "last_message_id": None,
        "flags": 0,
        "recipients": [user_payload(user_id, username)],
    }


def thread_channel(
    name: str,
    *,
    thread_id: str | None = None,
    parent_id: str = CHANNEL_ID,
    guild_id: str = GUILD_ID,
    owner_id: str = BOT_ID,
    auto_archive_duration: int = 1440,
    type: int = 11,
) -> dict[str, Any]:
    """A thread channel (11 public, 12 private) as Discord sends it."""
    return {
        "id": thread_id or next_snowflake(),
        "type": type,
        "guild_id": str(guild_id),
        "parent_id": str(parent_id),
        "owner_id": str(owner_id),
        "name": name,
        "last_message_id": None,
        "rate_limit_per_user": 0,
        "message_count": 0,
        "member_count": 1,
        "total_message_sent": 0,
        "flags": 0,
        "thread_metadata": {
            "archived": False,
            "auto_archive_duration": auto_archive_duration,
            "archive_timestamp": now_iso(),
            "locked": False,
            "create_timestamp": now_iso(),
        },
    }


def default_guild(guild_id: str = GUILD_ID, *, name: str = "Parley Test") -> dict[str, Any]:
    """A GUILD_CREATE payload: one text channel, @everyone, the bot as a member."""
    return {
        "id": str(guild_id),
        "name": name,
        "icon": None,
        "owner_id": OWNER_ID,
        "unavailable": False,
        "large": False,
        "member_count": 2,
        "joined_at": "2024-01-01T00:00:00+00:00",
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "afk_timeout": 300,
        "features": [],
        "premium_tier": 0,
        "preferred_locale": "en-US",
        "system_channel_flags": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "roles": [
            {
                "id": str(guild_id),
                "name": "@everyone",
                "permissions": DEFAULT_PERMISSIONS,
                "position": 0,
                "color": 0,
                "hoist": False,
                "managed": False,
                "mentionable": False,
                "flags": 0,
            },
            {
                # The role Discord creates for a bot when it joins, offered next to the bot
                # in the mention list.
                "id": BOT_ROLE_ID,
                "name": "Parley",
                "permissions": DEFAULT_PERMISSIONS,
                "position": 1,
                "color": 0,
                "hoist": False,
                "managed": True,
                "mentionable": True,
                "flags": 0,
                "tags": {"bot_id": BOT_ID},
            },
        ],
        "emojis": [],
        "stickers": [],
        "channels": [guild_text_channel(CHANNEL_ID, guild_id=guild_id)],
        "threads": [],
        "members": [member_payload(BOT_USER)],
        "voice_states": [],
        "presences": [],
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def message_create(
    content: str,
    *,
    channel_id: str = CHANNEL_ID,
    guild_id: str | None = GUILD_ID,
    author_id: str = USER_ID,
    username: str = USERNAME,
    mentions: tuple[Mapping[str, Any], ...] | list[Mapping[str, Any]] = (),
    message_id: str | None = None,
    thread: Mapping[str, Any] | None = None,
    reply_to: str | None = None,
    bot: bool = False,
    forwarded: str | None = None,
) -> dict[str, Any]:
    """A MESSAGE_CREATE payload from a user in a guild channel (or thread: pass its id as
    `channel_id`; `thread` attaches a thread object started from this message).
    `mentions` are user payloads, e.g. `[BOT_USER]`; put `<@1000>` in the content too.
    `forwarded`: the message forwards one with that text (Discord sends empty `content`, the
    original in `message_snapshots` and a `message_reference` of type 1)."""
    author = user_payload(author_id, username, bot=bot)
    data: dict[str, Any] = {
        "id": message_id or next_snowflake(),
        "channel_id": str(channel_id),
        "author": author,
        "content": content,
        "timestamp": now_iso(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [dict(m) for m in mentions],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 19 if reply_to else 0,
        "flags": 0,
        "components": [],
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
        data["member"] = {k: v for k, v in member_payload(author).items() if k != "user"}
    if thread is not None:
        data["thread"] = dict(thread)
    if forwarded is not None:
        data["message_snapshots"] = [
            {
                "message": {
                    "type": 0,
                    "content": forwarded,
                    "embeds": [],
                    "attachments": [],
                    "timestamp": now_iso(),
                    "edited_timestamp": None,
                    "flags": 0,
                    "mentions": [],
                    "mention_roles": [],
                }
            }
        ]
        data["message_reference"] = {
            "type": 1,
            "message_id": next_snowflake(),
            "channel_id": next_snowflake(),
        }
    if reply_to is not None:
        data["message_reference"] = {
            "type": 0,
            "message_id": str(reply_to),
            "channel_id": str(channel_id),
            **({"guild_id": str(guild_id)} if guild_id else {}),
        }
    return data


def dm_message_create(
    content: str,
    *,
    channel_id: str = DM_CHANNEL_ID,
    author_id: str = USER_ID,
    username: str = USERNAME,
    message_id: str | None = None,
    forwarded: str | None = None,
) -> dict[str, Any]:
    """A MESSAGE_CREATE in a DM: no guild_id, so discord.py makes a `DMChannel` from the
    channel id alone (no REST call; recipient unknown until someone fetches the channel)."""
    return message_create(
        content,
        channel_id=channel_id,
        guild_id=None,
        author_id=author_id,
        username=username,
        message_id=message_id,
        forwarded=forwarded,
    )


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


def interaction_create(
    name: str = "ask",
    options: Mapping[str, Any] | None = None,
    *,
    channel_id: str = CHANNEL_ID,
    guild_id: str | None = GUILD_ID,
    user_id: str = USER_ID,
    username: str = USERNAME,
    interaction_id: str | None = None,
    token: str | None = None,
    command_id: str | None = None,
    channel: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An INTERACTION_CREATE for a chat-input (slash) command; `options` maps option names
    to values (str -> type 3, int -> 4, bool -> 5, float -> 10). `guild_id=None` makes it a
    DM interaction (`user` instead of `member`, a type-1 channel)."""
    user = user_payload(user_id, username)
    opts = [
        {"name": key, "type": _option_type(value), "value": value}
        for key, value in (options or {}).items()
    ]
    data: dict[str, Any] = {
        "id": interaction_id or next_snowflake(),
        "application_id": APPLICATION_ID,
        "type": 2,
        "data": {"id": command_id or next_snowflake(), "name": name, "type": 1, "options": opts},
        "channel_id": str(channel_id),
        "token": token or f"itoken-{uuid.uuid4().hex}",
        "version": 1,
        "app_permissions": DEFAULT_PERMISSIONS,
        "locale": "en-US",
        "entitlements": [],
        "attachment_size_limit": 10 * 1024 * 1024,
    }
    if guild_id is not None:
        data["guild_id"] = str(guild_id)
        data["guild_locale"] = "en-US"
        data["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
        data["member"] = member_payload(user, permissions=DEFAULT_PERMISSIONS)
        data["channel"] = dict(channel or guild_text_channel(channel_id, guild_id=guild_id))
        data["context"] = 0
        data["authorizing_integration_owners"] = {"0": str(guild_id)}
    else:
        data["user"] = user
        data["channel"] = dict(
            channel or dm_channel(channel_id, user_id=user_id, username=username)
        )
        data["context"] = 1
        data["authorizing_integration_owners"] = {"0": "0"}
    return data


def thread_create(
    name: str,
    *,
    thread_id: str | None = None,
    parent_id: str = CHANNEL_ID,
    guild_id: str = GUILD_ID,
    owner_id: str = BOT_ID,
    newly_created: bool = True,
) -> dict[str, Any]:
    """A THREAD_CREATE payload (a public thread)."""
    data = thread_channel(
        name, thread_id=thread_id, parent_id=parent_id, guild_id=guild_id, owner_id=owner_id
    )
    data["newly_created"] = newly_created
    return data


@dataclass
class Call:
    """One REST request as the fake received it."""

    method: str  # "POST"
    path: str  # "/channels/4000/messages" (after /api/v10)
    query: dict[str, str]
    body: Any  # parsed JSON (multipart: payload_json), None when empty
    headers: dict[str, str]
    at: float  # time.monotonic()
    status: int = 0
    response: Any = None
    files: list[str] = field(default_factory=list)  # multipart file names


@dataclass
class Download:
    """One GET of an attachment from the fake CDN, as received."""

    path: str  # "/attachments/4000/1100.../photo.png" or "/media/attachments/..."
    query: dict[str, str]
    headers: dict[str, str]
    status: int = 0


@dataclass
class Failure:
    method: str  # "" matches every method
    path_prefix: str
    status: int
    retry_after: float
    is_global: bool
    body: dict[str, Any] | None
    text: str | None = None  # a body that is not JSON (a proxy's HTML error page)


@dataclass
class Outage:
    """Every matching request fails until `until` (time.monotonic()): the first ones get
    `responses` in order, the rest the last of them."""

    method: str  # "" matches every method
    path_prefix: str
    until: float
    responses: list[tuple[int, str | None]]  # (status, non-JSON body or None for JSON)
    used: int = 0


class _Patched:
    """Sets `Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY`; usable as `with` or
    `async with`; restores the previous values on exit."""

    def __init__(self, fake: FakeDiscord) -> None:
        self.fake = fake
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> FakeDiscord:
        import discord.gateway
        import discord.http
        import yarl

        self._saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
        discord.http.Route.BASE = self.fake.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.fake.gateway_url)
        return self.fake

    def __exit__(self, *exc: object) -> None:
        import discord.gateway
        import discord.http

        assert self._saved is not None
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = self._saved

    async def __aenter__(self) -> FakeDiscord:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()


def patched(fake: FakeDiscord) -> _Patched:
    """`async with patched(fake):` (or `with`) points discord.py at the fake."""
    return _Patched(fake)


@dataclass
class _Connection:
    socket: web.WebSocketResponse
    path: str
    query: dict[str, str]
    compressor: Any = None  # a zlib compressobj for zlib-stream
    session_id: str | None = None  # set once IDENTIFY/RESUME succeeded
    frames: list[dict[str, Any]] = field(default_factory=list)  # everything sent


class FakeDiscord:
    """`async with FakeDiscord() as fake, patched(fake):` then start a discord.Client."""

    def __init__(
        self,
        *,
        guilds: list[dict[str, Any]] | None = None,
        zlib_stream: bool = True,
        heartbeat_interval: int = HEARTBEAT_INTERVAL,
        ratelimit_headers: bool = True,
    ) -> None:
        self.bot_user = dict(BOT_USER)
        self.application_id = APPLICATION_ID
        self.guilds: list[dict[str, Any]] = guilds if guilds is not None else [default_guild()]
        self.zlib_stream = zlib_stream  # honour ?compress=zlib-stream (False: text frames)
        self.heartbeat_interval = heartbeat_interval
        self.ratelimit_headers = ratelimit_headers
        self.port = 0
        self.calls: list[Call] = []
        # (channel_id, message_id) -> {"id", "channel_id", "content", "versions" (contents,
        # oldest first), "body" (last JSON sent), "message" (the object answered), "deleted",
        # "interaction_token" (follow-ups and @original)}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # for GET /channels/{id}
        for guild in self.guilds:
            for channel in guild.get("channels", []):
                self.channels[channel["id"]] = {**channel, "guild_id": guild["id"]}
        self.dm_channels: dict[str, str] = {USER_ID: DM_CHANNEL_ID}  # user id -> DM channel id
        self.threads: list[dict[str, Any]] = []  # threads started through REST
        self.commands: dict[str | None, list[dict[str, Any]]] = {}  # guild id (None: global)
        # {"kind": "callback" | "followup" | "edit_original" | "delete_original" |
        #  "edit_followup", "interaction_id", "token", "type" (callbacks), "body", "message"}
        self.interaction_responses: list[dict[str, Any]] = []
        self.interactions: dict[str, dict[str, Any]] = {}  # token -> dispatched payload
        self.typing: list[str] = []  # channel ids
        self.identify_payloads: list[dict[str, Any]] = []
        self.identify_close_code: int | None = None  # close IDENTIFY's socket with this code
        self.gateway_refusals = 0  # handshakes still to answer with 503
        self.resume_payloads: list[dict[str, Any]] = []
        self.gateway_connections: list[dict[str, Any]] = []  # {"path", "query"} per connect
        self.gateway_received: list[dict[str, Any]] = []  # every frame the client sent
        self.heartbeats = 0
        self.session_id: str | None = None
        self.sequence = 0
        self._log: list[dict[str, Any]] = []  # dispatches of this session (for RESUME)
        self._conn: _Connection | None = None
        self._connections: list[_Connection] = []
        self._failures: deque[Failure] = deque()
        self._outages: list[Outage] = []
        self._observers: list[Callable[[Call], None]] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.attachments: dict[str, tuple[bytes, str]] = {}  # id -> (data, content type)
        self.downloads: list[Download] = []
        self.cdn_clock: Callable[[], float] = time.time  # the CDN's now, for expiry
        self._cdn_key = uuid.uuid4().bytes

    # --- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """For `discord.http.Route.BASE`."""
        return f"{self.url}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        """For `DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(...)` (and GET /gateway)."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """READY's `resume_gateway_url`: discord.py resumes here."""
        return f"ws://127.0.0.1:{self.port}/resume"

    def patch_discord(self) -> _Patched:
        return patched(self)

    # --- scripting -------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        path_prefix: str,
        *,
        status: int = 429,
        retry_after: float = 0.5,
        is_global: bool = False,
        body: dict[str, Any] | None = None,
    ) -> None:
        """Fail the next request whose method matches and whose path (after /api/v10)
        starts with `path_prefix`; queued failures are used in order. 429 answers
        `{"message": "You are being rate limited.", "retry_after": ..., "global": ...}` with
        Retry-After / X-RateLimit-* / Via headers (discord.py sleeps and retries by itself);
        other statuses `{"message": ..., "code": 0}` or `body`."""
        self._failures.append(
            Failure(method.upper(), path_prefix, status, retry_after, is_global, body)
        )

    def fail_for(
        self,
        seconds: float,
        path_prefix: str = "",
        *,
        method: str = "",
        responses: Sequence[int | tuple[int, str]] = (502,),
    ) -> None:
        """An outage: every request whose path starts with `path_prefix` (and whose method
        is `method`, any if "") fails for `seconds` from now. The first failures answer
        `responses` in order, the rest repeat the last one; an int is a JSON error
        (`{"message": ..., "code": 0}`), a `(status, text)` pair answers `text` as
        `text/html`, as a proxy in front of Discord does. `fail_next` failures come first."""
        self._outages.append(
            Outage(
                method.upper(),
                path_prefix,
                time.monotonic() + seconds,
                [(r, None) if isinstance(r, int) else (r[0], r[1]) for r in responses],
            )
        )

    def observe(self, observer: Callable[[Call], None]) -> None:
        """Call `observer(call)` for every REST request as it arrives, before it is answered
        (to see what the client had done by then)."""
        self._observers.append(observer)

    def add_message(
        self, channel_id: str, content: str, *, message_id: str | None = None
    ) -> dict[str, Any]:
        """A message the bot posted earlier (before a restart, say); returns its record."""
        body = {"content": content, "allowed_mentions": {"parse": []}}
        message = self._message_object(str(channel_id), body, message_id=message_id)
        return self._store(str(channel_id), body, message)

    def add_thread(self, thread: Mapping[str, Any]) -> None:
        """A thread that exists already (e.g. a `thread_channel(...)` started before a
        restart): starting it again from its message fails as on Discord."""
        self.threads.append(dict(thread))
        self.channels[thread["id"]] = dict(thread)

    def add_attachment(
        self,
        data: bytes,
        filename: str,
        content_type: str | None,
        *,
        channel_id: str = CHANNEL_ID,
        size: int | None = None,
        duration_secs: float | None = None,
        flags: int = 0,
    ) -> dict[str, Any]:
        """A file uploaded to a channel: served by the fake CDN, returned as the attachment
        object of a MESSAGE_CREATE (images get their width and height; `duration_secs` makes
        it a voice message's, with a waveform: put it in a message with `flags`
        IS_VOICE_MESSAGE). `size` is what Discord reports, the length of `data` unless
        given (a file larger than a limit without serving that many bytes)."""
        attachment_id = next_snowflake()
        self.attachments[attachment_id] = (data, content_type or "application/octet-stream")
        path = f"/attachments/{channel_id}/{attachment_id}/{filename}"
        issued = int(self.cdn_clock())
        ex, is_ = f"{issued + ATTACHMENT_URL_LIFETIME:08x}", f"{issued:08x}"
        query = f"ex={ex}&is={is_}&hm={self._signature(path, ex, is_)}&"  # Discord's own "&"
        payload: dict[str, Any] = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data) if size is None else size,
            "url": f"{self.url}{path}?{query}",
            "proxy_url": f"{self.url}/media{path}?{query}",
        }
        if content_type is not None:
            payload["content_type"] = content_type
        if content_type is not None and content_type.startswith("image/"):
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                payload["width"], payload["height"] = image.size
            payload["placeholder"] = base64.b64encode(hashlib.sha1(data).digest()[:16]).decode()
            payload["placeholder_version"] = 1
        if duration_secs is not None:
            payload["duration_secs"] = duration_secs
            # Discord samples the loudness at most every 100 ms, 256 values at most.
            samples = min(256, max(1, round(duration_secs * 10)))
            payload["waveform"] = base64.b64encode(bytes(range(samples))).decode()
        if flags:
            payload["flags"] = flags
        return payload

    def _signature(self, path: str, ex: str, is_: str) -> str:
        """The `hm` of a CDN URL: `ex` (expiry) and `is` (issued) are hex epoch seconds."""
        message = f"{path}?ex={ex}&is={is_}".encode()
        return hmac.new(self._cdn_key, message, hashlib.sha256).hexdigest()

    # --- queries ---------------------------------------------------------------------------
    def calls_to(self, method: str, path_prefix: str = "") -> list[Call]:
        return [
            c for c in self.calls if c.method == method.upper() and c.path.startswith(path_prefix)
        ]

    def messages_in(self, channel_id: str, *, deleted: bool = False) -> list[dict[str, Any]]:
        """Bot messages in a channel, oldest first (without deleted ones unless asked)."""
        found = [
            m
            for (cid, _), m in self.messages.items()
            if cid == str(channel_id) and (deleted or not m["deleted"])
        ]
        return sorted(found, key=lambda m: int(m["id"]))

    @property
    def resumes(self) -> int:
        """How many RESUMEs the fake accepted."""
        return len(self.resume_payloads)

    # --- waiting ---------------------------------------------------------------------------
    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10, *, what: str = "a condition"
    ) -> None:
        """Wait until `predicate()` (no arguments) is true; re-checked on every request,
        gateway frame and (dis)connection, and every 20 ms for state outside the fake (what
        the client's event handlers recorded). Fails the test after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    async with self._changed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), 0.02)
        except TimeoutError:
            seen = [f"{c.method} {c.path} -> {c.status}" for c in self.calls]
            ops = [f.get("op") for f in self.gateway_received]
            raise AssertionError(
                f"FakeDiscord: timed out after {timeout}s waiting for {what}; "
                f"REST calls so far: {seen}; gateway ops received: {ops}; "
                f"connected: {self._conn is not None}"
            ) from None

    async def wait_calls(
        self, method: str, path_prefix: str = "", count: int = 1, timeout: float = 10
    ) -> list[Call]:
        await self.wait_for(
            lambda: len(self.calls_to(method, path_prefix)) >= count,
            timeout,
            what=f"{count} {method} request(s) to {path_prefix or '/'}",
        )
        return self.calls_to(method, path_prefix)

    async def wait_messages(
        self, channel_id: str, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        await self.wait_for(
            lambda: len(self.messages_in(channel_id)) >= count,
            timeout,
            what=f"{count} bot message(s) in channel {channel_id}",
        )
        return self.messages_in(channel_id)

    async def wait_interaction_responses(
        self, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        await self.wait_for(
            lambda: len(self.interaction_responses) >= count,
            timeout,
            what=f"{count} interaction response(s)",
        )
        return self.interaction_responses

    async def connected(self, timeout: float = 10) -> None:
        """Wait until a client holds an identified (or resumed) gateway session."""
        await self.wait_for(
            lambda: self._conn is not None and self._conn.session_id is not None,
            timeout,
            what="a gateway session (IDENTIFY or RESUME)",
        )

    async def identified(self, count: int = 1, timeout: float = 10) -> None:
        await self.wait_for(
            lambda: len(self.identify_payloads) >= count, timeout, what=f"{count} IDENTIFY(s)"
        )

    async def resumed(self, count: int = 1, timeout: float = 10) -> None:
        await self.wait_for(lambda: self.resumes >= count, timeout, what=f"{count} RESUME(s)")

    # --- gateway scripting -----------------------------------------------------------------
    async def dispatch(self, event: str, data: Mapping[str, Any]) -> int:
        """Send a dispatch (op 0) with the next sequence number; returns it. With no client
        connected it is kept for the replay after a RESUME (as Discord does)."""
        if self.session_id is None:
            raise AssertionError("FakeDiscord.dispatch: no gateway session yet (no IDENTIFY)")
        if event == "INTERACTION_CREATE":
            self.interactions[data["token"]] = dict(data)
        self.sequence += 1
        frame = {"op": 0, "t": event, "s": self.sequence, "d": dict(data)}
        self._log.append(frame)
        if self._conn is not None and self._conn.session_id is not None:
            await self._send(self._conn, frame)
        return self.sequence

    async def send_reconnect(self) -> None:
        """op 7 RECONNECT: discord.py closes the socket and RESUMEs at resume_gateway_url."""
        conn = self._require_conn()
        await self._send(conn, {"op": 7, "d": None, "s": None, "t": None})

    async def send_invalid_session(self, resumable: bool = False) -> None:
        """op 9 INVALID_SESSION; with `resumable=False` the client IDENTIFYs afresh."""
        conn = self._require_conn()
        await self._send(conn, {"op": 9, "d": resumable, "s": None, "t": None})

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway socket from the server side (4000: resumable unknown error)."""
        conn = self._require_conn()
        await conn.socket.close(code=code)

    def _require_conn(self) -> _Connection:
        if self._conn is None:
            raise AssertionError("FakeDiscord: no client is connected to the gateway")
        return self._conn

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> FakeDiscord:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/resume", self._gateway)
        app.router.add_route("*", f"/api/v{API_VERSION}/{{tail:.*}}", self._rest)
        app.router.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn)
        app.router.add_get("/media/attachments/{channel}/{attachment}/{filename}", self._cdn)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close gateway sockets and stop; `await client.close()` before this."""
        for conn in list(self._connections):
            await conn.socket.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        assert self._runner is not None
        await self._runner.cleanup()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- gateway ---------------------------------------------------------------------------
    async def _send(self, conn: _Connection, frame: dict[str, Any]) -> None:
        text = json.dumps(frame)
        conn.frames.append(frame)
        if conn.socket.closed:
            return
        try:
            if conn.compressor is not None:
                data = conn.compressor.compress(text.encode()) + conn.compressor.flush(
                    zlib.Z_SYNC_FLUSH
                )
                await conn.socket.send_bytes(data)
            else:
                await conn.socket.send_str(text)
        except ConnectionError:
            pass

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        if self.gateway_refusals > 0:
            self.gateway_refusals -= 1
            await self._notify()
            return web.Response(status=503, text="gateway unavailable")
        socket = web.WebSocketResponse(max_msg_size=0)
        await socket.prepare(request)
        query = dict(request.query)
        conn = _Connection(socket, request.path, query)
        if self.zlib_stream and query.get("compress") == "zlib-stream":
            conn.compressor = zlib.compressobj()
        self.gateway_connections.append({"path": request.path, "query": query})
        self._connections.append(conn)
        try:
            await self._send(
                conn,
                {
                    "op": 10,
                    "d": {"heartbeat_interval": self.heartbeat_interval},
                    "s": None,
                    "t": None,
                },
            )
            await self._notify()
            async for frame in socket:
                if frame.type == WSMsgType.TEXT:
                    payload = json.loads(frame.data)
                elif frame.type == WSMsgType.BINARY:
                    payload = json.loads(frame.data.decode())
                else:
                    continue
                self.gateway_received.append(payload)
                await self._gateway_op(conn, payload)
                await self._notify()
        finally:
            self._connections.remove(conn)
            if self._conn is conn:
                self._conn = None
            await self._notify()
        return socket

    async def _gateway_op(self, conn: _Connection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data: Any = payload.get("d") or {}
        if op == 1:  # heartbeat
            self.heartbeats += 1
            await self._send(conn, {"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # identify
            self.identify_payloads.append(data)
            if self.identify_close_code is not None:  # as Discord refuses a session
                await conn.socket.close(code=self.identify_close_code)
                return
            self.session_id = uuid.uuid4().hex
            self.sequence = 0
            self._log = []
            conn.session_id = self.session_id
            self._conn = conn
            await self.dispatch("READY", self._ready_payload(data))
            for guild in self.guilds:
                await self.dispatch("GUILD_CREATE", guild)
        elif op == 6:  # resume
            if data.get("session_id") != self.session_id or self.session_id is None:
                await self._send(conn, {"op": 9, "d": False, "s": None, "t": None})
                return
            self.resume_payloads.append(data)
            conn.session_id = self.session_id
            self._conn = conn
            seq = data.get("seq") or 0
            for frame in self._log:
                if frame["s"] > seq:
                    await self._send(conn, frame)
            self.sequence += 1  # RESUMED itself is not replayed by a later RESUME
            await self._send(conn, {"op": 0, "t": "RESUMED", "s": self.sequence, "d": {}})
        elif op == 8:  # request guild members
            await self.dispatch(
                "GUILD_MEMBERS_CHUNK",
                {
                    "guild_id": data["guild_id"],
                    "members": [],
                    "chunk_index": 0,
                    "chunk_count": 1,
                    "not_found": [],
                    **({"nonce": data["nonce"]} if data.get("nonce") else {}),
                },
            )

    def _ready_payload(self, identify: Mapping[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": API_VERSION,
            "user": self.bot_user,
            "guilds": [{"id": g["id"], "unavailable": True} for g in self.guilds],
            "session_id": self.session_id,
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
            "user_settings": {},
            "presences": [],
            "_trace": ["fake-discord"],
        }
        if "shard" in identify:
            data["shard"] = identify["shard"]
        return data

    # --- REST ------------------------------------------------------------------------------
    def _headers(self, call: Call, *, remaining: int = 4) -> dict[str, str]:
        if not self.ratelimit_headers:
            return {}
        route = re.sub(r"\d{2,}", "{id}", call.path)
        bucket = hashlib.sha1(f"{call.method} {route}".encode()).hexdigest()[:32]
        return {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": bucket,
        }

    def _json(self, call: Call, data: Any, status: int = 200, **headers: str) -> web.Response:
        call.status = status
        call.response = data
        return web.Response(
            body=json.dumps(data).encode(),
            status=status,
            headers={"Content-Type": "application/json", **self._headers(call), **headers},
        )

    def _empty(self, call: Call) -> web.Response:
        call.status = 204
        return web.Response(status=204, headers=self._headers(call))

    def _error(self, call: Call, status: int, message: str, code: int = 0) -> web.Response:
        return self._json(call, {"message": message, "code": code}, status)

    async def _cdn(self, request: web.Request) -> web.Response:
        """cdn.discordapp.com (and media.discordapp.net under /media): an attachment's bytes
        for a valid, unexpired signature; Discord's 404 page otherwise."""
        download = Download(request.path, dict(request.query), dict(request.headers))
        self.downloads.append(download)
        try:
            path = request.path.removeprefix("/media")
            ex, is_ = request.query.get("ex", ""), request.query.get("is", "")
            stored = self.attachments.get(request.match_info["attachment"])
            valid = (
                request.query.get("hm") == self._signature(path, ex, is_)
                and int(ex, 16) >= self.cdn_clock()  # a signed `ex` is hex
            )
            if stored is None or not valid:
                download.status = 404
                return web.Response(status=404, text=CDN_GONE)
            data, content_type = stored
            download.status = 200
            return web.Response(body=data, headers={"Content-Type": content_type})
        finally:
            await self._notify()

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        body: Any = None
        files: list[str] = []
        if request.content_type.startswith("multipart/"):
            form = await request.post()
            for key, value in form.items():
                if key == "payload_json":
                    raw_json = value.file.read() if isinstance(value, web.FileField) else value
                    body = json.loads(raw_json)
                elif isinstance(value, web.FileField):
                    files.append(value.filename)
        else:
            raw = await request.read()
            if raw:
                body = json.loads(raw)
        call = Call(
            request.method,
            path,
            dict(request.query),
            body,
            dict(request.headers),
            time.monotonic(),
            files=files,
        )
        self.calls.append(call)
        for observer in self._observers:
            observer(call)
        try:
            return self._answer(call)
        finally:
            await self._notify()

    def _answer(self, call: Call) -> web.Response:
        for failure in self._failures:
            if failure.method == call.method and call.path.startswith(failure.path_prefix):
                self._failures.remove(failure)
                return self._failure(call, failure)
        for outage in self._outages:
            if (
                outage.method in ("", call.method)
                and call.path.startswith(outage.path_prefix)
                and time.monotonic() < outage.until
            ):
                status, text = outage.responses[min(outage.used, len(outage.responses) - 1)]
                outage.used += 1
                return self._failure(call, Failure(call.method, "", status, 0, False, None, text))
        m, p = call.method, call.path
        routes: list[tuple[str, str, Callable[..., web.Response]]] = [
            ("GET", r"/users/@me", self._get_me),
            ("GET", r"/oauth2/applications/@me", self._get_application),
            ("GET", r"/gateway", self._get_gateway),
            ("GET", r"/gateway/bot", self._get_gateway_bot),
            ("PUT", r"/applications/(\d+)/commands", self._put_commands),
            ("PUT", r"/applications/(\d+)/guilds/(\d+)/commands", self._put_commands),
            ("GET", r"/applications/(\d+)/commands", self._get_commands),
            ("GET", r"/applications/(\d+)/guilds/(\d+)/commands", self._get_commands),
            ("POST", r"/channels/(\d+)/messages", self._create_message),
            ("PATCH", r"/channels/(\d+)/messages/(\d+)", self._edit_message),
            ("DELETE", r"/channels/(\d+)/messages/(\d+)", self._delete_message),
            ("GET", r"/channels/(\d+)/messages/(\d+)", self._get_message),
            ("POST", r"/channels/(\d+)/messages/(\d+)/threads", self._start_thread),
            ("POST", r"/channels/(\d+)/threads", self._start_thread_without_message),
            ("POST", r"/channels/(\d+)/typing", self._typing),
            ("GET", r"/channels/(\d+)", self._get_channel),
            ("POST", r"/users/@me/channels", self._create_dm),
            ("POST", r"/interactions/(\d+)/([^/]+)/callback", self._interaction_callback),
            ("POST", r"/webhooks/(\d+)/([^/]+)", self._followup),
            ("GET", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", self._get_webhook_message),
            ("PATCH", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", self._edit_webhook_message),
            ("DELETE", r"/webhooks/(\d+)/([^/]+)/messages/([^/]+)", self._delete_webhook_message),
        ]
        for method, pattern, handler in routes:
            if method == m and (match := re.fullmatch(pattern, p)):
                return handler(call, *match.groups())
        return self._error(call, 404, "404: Not Found")

    def _failure(self, call: Call, failure: Failure) -> web.Response:
        if failure.status == 429:
            data = failure.body or {
                "message": "You are being rate limited.",
                "retry_after": failure.retry_after,
                "global": failure.is_global,
            }
            headers = {
                **self._headers(call, remaining=0),
                "Retry-After": str(max(1, round(failure.retry_after))),
                "X-RateLimit-Reset-After": f"{failure.retry_after:.3f}",
                "X-RateLimit-Scope": "global" if failure.is_global else "user",
                "Via": "1.1 google",  # discord.py treats a 429 without Via as a Cloudflare ban
            }
            if failure.is_global:
                headers["X-RateLimit-Global"] = "true"
            call.status, call.response = 429, data
            return web.Response(
                body=json.dumps(data).encode(),
                status=429,
                headers={"Content-Type": "application/json", **headers},
            )
        if failure.text is not None:
            call.status, call.response = failure.status, failure.text
            return web.Response(text=failure.text, status=failure.status, content_type="text/html")
        data = failure.body or {"message": f"Scripted failure {failure.status}", "code": 0}
        return self._json(call, data, failure.status)

    def _get_me(self, call: Call) -> web.Response:
        return self._json(call, self.bot_user)

    def _get_application(self, call: Call) -> web.Response:
        return self._json(
            call,
            {
                "id": self.application_id,
                "name": "Parley",
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": self.bot_user,
                "owner": user_payload(OWNER_ID, "owner"),
                "team": None,
                "tags": [],
                "redirect_uris": [],
                "interactions_endpoint_url": None,
            },
        )

    def _get_gateway(self, call: Call) -> web.Response:
        return self._json(call, {"url": self.gateway_url})

    def _get_gateway_bot(self, call: Call) -> web.Response:
        return self._json(
            call,
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14400000,
                    "max_concurrency": 1,
                },
            },
        )

    def _put_commands(self, call: Call, app_id: str, guild_id: str | None = None) -> web.Response:
        echoed = []
        for command in call.body or []:
            item = {
                "id": next_snowflake(),
                "application_id": app_id,
                "version": next_snowflake(),
                "type": 1,
                "default_member_permissions": None,
                "nsfw": False,
                "options": [],
                **command,
            }
            if guild_id is not None:
                item["guild_id"] = guild_id
            echoed.append(item)
        self.commands[guild_id] = echoed
        return self._json(call, echoed)

    def _get_commands(self, call: Call, app_id: str, guild_id: str | None = None) -> web.Response:
        return self._json(call, self.commands.get(guild_id, []))

    def _message_object(
        self,
        channel_id: str,
        body: Mapping[str, Any],
        *,
        message_id: str | None = None,
        webhook_id: str | None = None,
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "id": message_id or next_snowflake(),
            "channel_id": channel_id,
            "author": self.bot_user,
            "content": body.get("content") or "",
            "timestamp": now_iso(),
            "edited_timestamp": None,
            "tts": bool(body.get("tts", False)),
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": list(body.get("embeds") or []),
            "components": list(body.get("components") or []),
            "pinned": False,
            "type": 19 if body.get("message_reference") else 0,
            "flags": int(body.get("flags") or 0),
        }
        if body.get("nonce") is not None:
            message["nonce"] = body["nonce"]
        if body.get("message_reference"):
            message["message_reference"] = {
                "type": 0,
                "channel_id": channel_id,
                **body["message_reference"],
            }
        if webhook_id is not None:
            message["webhook_id"] = webhook_id
            message["application_id"] = self.application_id
        return message

    def _store(
        self, channel_id: str, body: Mapping[str, Any], message: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        record = {
            "id": message["id"],
            "channel_id": channel_id,
            "content": message["content"],
            "versions": [message["content"]],
            "body": dict(body),
            "allowed_mentions": body.get("allowed_mentions"),
            "message_reference": body.get("message_reference"),
            "message": message,
            "deleted": False,
            **extra,
        }
        self.messages[(channel_id, message["id"])] = record
        return record

    def _apply_edit(self, record: dict[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = record["message"]
        if "content" in body:
            message["content"] = body["content"] or ""
            record["content"] = message["content"]
            record["versions"].append(message["content"])
        if "embeds" in body:
            message["embeds"] = list(body["embeds"] or [])
        if "allowed_mentions" in body:
            record["allowed_mentions"] = body["allowed_mentions"]
        record["body"] = dict(body)
        message["edited_timestamp"] = now_iso()
        return message

    def _create_message(self, call: Call, channel_id: str) -> web.Response:
        body = call.body or {}
        content = body.get("content") or ""
        if len(content) > 2000:
            return self._json(
                call,
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {
                        "content": {
                            "_errors": [
                                {
                                    "code": "BASE_TYPE_MAX_LENGTH",
                                    "message": "Must be 2000 or fewer in length.",
                                }
                            ]
                        }
                    },
                },
                400,
            )
        message = self._message_object(channel_id, body)
        self._store(channel_id, body, message)
        return self._json(call, message)

    def _find(self, channel_id: str, message_id: str) -> dict[str, Any] | None:
        record = self.messages.get((channel_id, message_id))
        return None if record is None or record["deleted"] else record

    def _unknown_message(self, call: Call) -> web.Response:
        return self._error(call, 404, "Unknown Message", 10008)

    def _edit_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        record = self._find(channel_id, message_id)
        if record is None:
            return self._unknown_message(call)
        return self._json(call, self._apply_edit(record, call.body or {}))

    def _delete_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        record = self._find(channel_id, message_id)
        if record is None:
            return self._unknown_message(call)
        record["deleted"] = True
        return self._empty(call)

    def _get_message(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        record = self._find(channel_id, message_id)
        if record is None:
            return self._unknown_message(call)
        return self._json(call, record["message"])

    def _new_thread(self, call: Call, channel_id: str, thread_id: str | None) -> web.Response:
        body = call.body or {}
        name = body.get("name") or ""
        if not 1 <= len(name) <= 100:
            return self._json(
                call,
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {
                        "name": {
                            "_errors": [
                                {
                                    "code": "BASE_TYPE_BAD_LENGTH",
                                    "message": "Must be between 1 and 100 in length.",
                                }
                            ]
                        }
                    },
                },
                400,
            )
        parent = self.channels.get(channel_id, {})
        thread = thread_channel(
            name,
            thread_id=thread_id,
            parent_id=channel_id,
            guild_id=parent.get("guild_id", GUILD_ID),
            owner_id=self.bot_user["id"],
            auto_archive_duration=body.get("auto_archive_duration") or 1440,
            type=body.get("type") or 11,
        )
        self.threads.append(thread)
        self.channels[thread["id"]] = thread
        return self._json(call, thread, 201)

    def _start_thread(self, call: Call, channel_id: str, message_id: str) -> web.Response:
        if message_id in self.channels:
            return self._error(
                call, 400, "A thread has already been created for this message", 160004
            )
        # A thread started from a message has the message's id.
        return self._new_thread(call, channel_id, message_id)

    def _start_thread_without_message(self, call: Call, channel_id: str) -> web.Response:
        return self._new_thread(call, channel_id, None)

    def _typing(self, call: Call, channel_id: str) -> web.Response:
        self.typing.append(channel_id)
        return self._empty(call)

    def _get_channel(self, call: Call, channel_id: str) -> web.Response:
        channel = self.channels.get(channel_id)
        if channel is None:
            for user_id, dm_id in self.dm_channels.items():
                if dm_id == channel_id:
                    channel = dm_channel(dm_id, user_id=user_id)
        return self._json(call, channel or guild_text_channel(channel_id))

    def _create_dm(self, call: Call) -> web.Response:
        user_id = str((call.body or {}).get("recipient_id"))
        channel_id = self.dm_channels.setdefault(user_id, next_snowflake())
        return self._json(call, dm_channel(channel_id, user_id=user_id))

    # --- interactions ----------------------------------------------------------------------
    def _interaction_channel(self, token: str) -> str:
        interaction = self.interactions.get(token, {})
        return str(interaction.get("channel_id") or CHANNEL_ID)

    def _interaction_callback(self, call: Call, interaction_id: str, token: str) -> web.Response:
        body = call.body or {}
        kind = body.get("type")
        data = body.get("data") or {}
        entry: dict[str, Any] = {
            "kind": "callback",
            "interaction_id": interaction_id,
            "token": token,
            "type": kind,
            "body": body,
            "message": None,
        }
        message = None
        if kind in (4, 5):  # channel message / deferred channel message ("thinking")
            channel_id = self._interaction_channel(token)
            message = self._message_object(
                channel_id,
                data if kind == 4 else {"flags": 128 | int(data.get("flags") or 0)},
                webhook_id=self.application_id,
            )
            self._store(channel_id, data, message, interaction_token=token, original=True)
            entry["message"] = message
        self.interaction_responses.append(entry)
        if call.query.get("with_response") not in ("1", "true", "True"):
            return self._empty(call)
        interaction = self.interactions.get(token, {})
        answer: dict[str, Any] = {
            "interaction": {
                "id": interaction_id,
                "type": interaction.get("type", 2),
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(int(data.get("flags") or 0) & 64),
            }
        }
        if message is not None:
            answer["interaction"]["response_message_id"] = message["id"]
            answer["resource"] = {"type": kind, "message": message}
        elif kind is not None:
            answer["resource"] = {"type": kind}
        return self._json(call, answer)

    def _original(self, token: str) -> dict[str, Any] | None:
        for record in self.messages.values():
            if record.get("interaction_token") == token and record.get("original"):
                return None if record["deleted"] else record
        return None

    def _webhook_record(self, token: str, message_id: str) -> dict[str, Any] | None:
        if message_id == "@original":
            return self._original(token)
        for record in self.messages.values():
            if record.get("interaction_token") == token and record["id"] == message_id:
                return None if record["deleted"] else record
        return None

    def _followup(self, call: Call, app_id: str, token: str) -> web.Response:
        body = call.body or {}
        channel_id = self._interaction_channel(token)
        message = self._message_object(channel_id, body, webhook_id=app_id)
        self._store(channel_id, body, message, interaction_token=token, original=False)
        self.interaction_responses.append(
            {"kind": "followup", "token": token, "type": None, "body": body, "message": message}
        )
        if call.query.get("wait") in ("0", "false"):
            return self._empty(call)
        return self._json(call, message)

    def _get_webhook_message(
        self, call: Call, app_id: str, token: str, message_id: str
    ) -> web.Response:
        record = self._webhook_record(token, message_id)
        if record is None:
            return self._unknown_message(call)
        return self._json(call, record["message"])

    def _edit_webhook_message(
        self, call: Call, app_id: str, token: str, message_id: str
    ) -> web.Response:
        body = call.body or {}
        record = self._webhook_record(token, message_id)
        if record is None:
            return self._unknown_message(call)
        if record["message"]["flags"] & 128 and "content" in body:
            record["message"]["flags"] &= ~128  # the "thinking" placeholder is answered
        message = self._apply_edit(record, body)
        kind = "edit_original" if message_id == "@original" else "edit_followup"
        self.interaction_responses.append(
            {"kind": kind, "token": token, "type": None, "body": body, "message": message}
        )
        return self._json(call, message)

    def _delete_webhook_message(
        self, call: Call, app_id: str, token: str, message_id: str
    ) -> web.Response:
        record = self._webhook_record(token, message_id)
        if record is None:
            return self._unknown_message(call)
        record["deleted"] = True
        kind = "delete_original" if message_id == "@original" else "delete_followup"
        self.interaction_responses.append(
            {"kind": kind, "token": token, "type": None, "body": None, "message": None}
        )
        return self._empty(call)
