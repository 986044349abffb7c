"""A fake Telegram Bot API on 127.0.0.1, driven through the real python-telegram-bot.

`async with FakeTelegram() as fake:` then build the real `Application` against it:

    Application.builder().token("123:ABC").base_url(fake.base_url)
        .base_file_url(fake.base_file_url).build()

Requests arrive at `/bot<TOKEN>/<method>`. PTB posts every parameter form-encoded
(urlencoded, or multipart when a file is uploaded): strings as they are, everything else
JSON-encoded, so `chat_id` arrives as "123" and `reply_markup` as a JSON string. `Call.args`
keeps scalars as the strings that arrived and parses JSON objects/arrays (`reply_markup`,
`commands`, `reply_parameters`, `entities`, ...); `Call.int_arg(name)` reads a number back.

- `getUpdates` long-polls for real: pending updates with `update_id >= offset` come back at
  once, otherwise the request is held until `push()` queues one or its `timeout` elapses.
  An offset confirms (forgets) every update below it, as on Telegram. `push(update,
  update_id=old)` redelivers an update even after it was confirmed.
- Bot messages live in `fake.messages[(chat_id, message_id)]`; `sendMessage` /
  `editMessageText` validate `parse_mode` HTML (tdlib's parser and error texts), MarkdownV2
  (simplified) and the 4,096-character limit, and edits to identical content fail with
  "message is not modified", all as 400 `BadRequest`s.
- `fail_next(method, status=429, retry_after=1)` scripts errors (429 becomes `RetryAfter`);
  `flood_interval` makes sends/edits to one chat faster than that answer 429 by themselves.
- `outage(*faults, methods=None)` scripts an unhealthy Bot API, for a number of calls or a
  time: `server_error(502)` (Telegram's JSON error body; PTB raises `NetworkError`),
  `not_json_error(503)` (an HTML page from the proxy in front of the API; PTB fails to parse
  it and raises `NetworkError`), `dropped()` (the connection closes unanswered, nothing is
  applied) and `refused(seconds)` (the port stops listening and open keep-alive connections
  are closed, so every request fails to connect; then it listens again on the same port).
  `outage_over()` waits for the end; `refusals` records each refusal window.
- `block(chat_id)`: the user blocked the bot; sends, edits, deletes and chat actions to that
  chat answer 403 "Forbidden: bot was blocked by the user" (PTB raises `Forbidden`).
- `add_file(data, kind)` stores a file a user sent: `getFile` answers its File (`file_id`,
  `file_unique_id`, `file_size`, `file_path`; 400 "file is too big" above 20 MB, 400
  "invalid file_id" for an unknown id) and `GET /file/bot<TOKEN>/<file_path>` serves its
  bytes; every download asked for is in `downloads`.

Module-level builders (`private_message`, `group_message`, `edited_message`) make updates as
Telegram sends them (entities with UTF-16 offsets, forum topics, reply chains);
`post_update` delivers one to an app in webhook mode, `free_port` finds a port to listen on.
"""

# The wait_* helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import itertools
import json
import math
import re
import socket
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from aiohttp import web

BOT_ID = 999
BOT_USERNAME = "parley_bot"
BOT_NAME = "Parley"
BOT_USER: dict[str, Any] = {
    "id": BOT_ID,
    "is_bot": True,
    "first_name": BOT_NAME,
    "username": BOT_USERNAME,
}
GET_ME: dict[str, Any] = {
    **BOT_USER,
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}
GROUP_CHAT_ID = -100123
TEXT_LIMIT = 4096  # characters, after entity parsing
DOWNLOAD_LIMIT = 20_000_000  # bytes: getFile refuses larger files ("file is too big")
# Where Telegram keeps each kind of file (its file_path's folder and usual suffix), and how
# its file_ids start.
_FILE_FOLDERS = {
    "photo": ("photos", ".jpg"),
    "voice": ("voice", ".oga"),
    "audio": ("music", ".mp3"),
    "document": ("documents", ""),
    "video": ("videos", ".mp4"),
    "video_note": ("video_notes", ".mp4"),
    "sticker": ("stickers", ".webp"),
}
_FILE_ID_PREFIXES = {
    "photo": "AgACAgIAA",
    "voice": "AwACAgIAA",
    "audio": "CQACAgIAA",
    "document": "BQACAgIAA",
    "video": "BAACAgIAA",
    "video_note": "DQACAgIAA",
    "sticker": "CAACAgIAA",
}
CHAT_ACTIONS = {
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
}
# Update types Telegram leaves out unless `allowed_updates` names them.
OPT_IN_UPDATES = {"chat_member", "message_reaction", "message_reaction_count"}
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup "
    "are exactly the same as a current content and reply markup of the message"
)
_DESCRIPTIONS = {
    400: "Bad Request: scripted failure",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
# Parameters that are text even when they look like JSON.
_TEXT_ARGS = {"text", "caption", "parse_mode", "url", "secret_token", "query", "title", "name"}

# One message_id sequence per chat for every message this module makes (users' messages in the
# builders and the bot's in the fake), so ids in a chat never collide and always increase.
_message_ids: defaultdict[int, Iterator[int]] = defaultdict(lambda: itertools.count(1))


def next_message_id(chat_id: int) -> int:
    """The next message_id in a chat (shared by the builders and every FakeTelegram)."""
    return next(_message_ids[chat_id])


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's entity offsets and lengths."""
    return len(text.encode("utf-16-le")) // 2


@dataclass
class Call:
    """One Bot API request as the fake received it."""

    method: str  # "sendMessage", as spelled in the URL
    args: dict[str, Any]  # scalars as sent (strings from PTB), JSON objects/arrays parsed
    at: float  # time.monotonic()
    token: str = ""
    response: Any = None  # the `result` answered, or the error body {"ok": false, ...}
    status: int = 200  # the HTTP status answered; 0: the connection was dropped unanswered

    def int_arg(self, name: str) -> int | None:
        """A numeric parameter as an int (`call.int_arg("chat_id")`), None when absent."""
        value = self.args.get(name)
        return None if value is None or value == "" else int(value)

    @property
    def ok(self) -> bool:
        return not (isinstance(self.response, dict) and self.response.get("ok") is False)


@dataclass
class Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None


@dataclass
class Fault:
    """One step of an `outage`: how the Bot API misbehaves, for `times` calls or `seconds`.

    kind "status": answer HTTP `status` with `body` (None: Telegram's JSON error body) as
    `content_type`; "drop": close the connection without an answer (the call is recorded,
    not applied); "refuse": stop listening for `seconds` and close the open connections
    (connections are refused; nothing is recorded), then listen again on the same port.
    A step with `seconds` lasts that long from the first call it answers; otherwise it
    answers `times` calls.
    """

    kind: str = "status"
    status: int = 502
    body: str | None = None
    content_type: str = "application/json"
    times: int = 1
    seconds: float = 0.0
    started: float | None = None  # set when it first answers a call


def server_error(status: int = 502, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx with Telegram's JSON error body (`{"ok": false, "error_code": ..., ...}`)."""
    return Fault(status=status, times=times, seconds=seconds)


def not_json_error(status: int = 503, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx whose body is an HTML page, as the proxy in front of the Bot API sends it."""
    body = (
        f"<html>\r\n<head><title>{status} Service Temporarily Unavailable</title></head>\r\n"
        f"<body>\r\n<center><h1>{status} Service Temporarily Unavailable</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Fault(status=status, body=body, content_type="text/html", times=times, seconds=seconds)


def dropped(*, times: int = 1, seconds: float = 0.0) -> Fault:
    """The connection closes before any answer; the request is not applied."""
    return Fault(kind="drop", status=0, times=times, seconds=seconds)


def refused(seconds: float) -> Fault:
    """The port refuses connections for `seconds` (the Bot API unreachable)."""
    return Fault(kind="refuse", status=0, seconds=seconds)


# Methods that act on a chat, refused with 403 in a chat that blocked the bot.
_CHAT_METHODS = {"sendmessage", "editmessagetext", "deletemessage", "sendchataction"}


@dataclass
class _Pending:
    update: dict[str, Any]
    forced: bool  # a redelivery: sent even though its update_id is below the offset


class ApiError(Exception):
    """Raise from a `handle()` override to answer with an error."""

    def __init__(
        self, status: int, description: str, parameters: dict[str, Any] | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


def bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


Handler = Callable[[dict[str, Any]], Any]


class FakeTelegram:
    """`async with FakeTelegram() as fake:` then `.base_url(fake.base_url)` on the builder."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token  # when set, other tokens get 401 Unauthorized (InvalidToken)
        self.bot_username = BOT_USERNAME
        self.bot_id = BOT_ID
        self.me = dict(GET_ME)
        self.calls: list[Call] = []
        # (chat_id, message_id) -> {"chat_id", "message_id", "text" (as sent), "parse_mode",
        # "plain" (as displayed), "entities", "message_thread_id", "reply_markup",
        # "versions" (texts as sent, oldest first), "message" (the Message dict answered)}
        self.messages: dict[tuple[int, int], dict[str, Any]] = {}
        self.deleted: dict[tuple[int, int], dict[str, Any]] = {}
        self.chats: dict[int, dict[str, Any]] = {}  # learned from pushed updates
        self.user_messages: dict[tuple[int, int], dict[str, Any]] = {}  # from pushed updates
        self.pushed: list[dict[str, Any]] = []  # every update pushed, with its update_id
        self.delivered: list[int] = []  # update_ids answered to getUpdates, in order
        self.offset = 0  # the latest getUpdates offset (what the bot has confirmed)
        self.webhook: dict[str, Any] | None = None  # {"url", "secret_token", ...} once set
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (scope, lang) -> list
        self.files: dict[str, bytes] = {}  # file_path -> content, served under base_file_url
        self.file_infos: dict[str, dict[str, Any]] = {}  # file_id -> the File getFile answers
        self.file_sizes: dict[str, int] = {}  # file_id -> its size, reported or not
        self.downloads: list[str] = []  # file paths asked for under base_file_url, in order
        self.allowed_updates: list[str] | None = None
        self.flood_interval: float | None = None  # min seconds between sends/edits per chat
        self.blocked: set[int] = set()  # chats whose user blocked the bot (see `block`)
        self.refusals: list[tuple[float, float]] = []  # (start, end) of each refusal window
        self.port = 0
        self._faults: deque[Fault] = deque()
        self._fault_methods: frozenset[str] | None = None
        self._refusing: asyncio.Task[None] | None = None
        self._site: web.TCPSite | None = None
        self._pending: list[_Pending] = []
        self._next_update_id = 1
        self._failures: defaultdict[str, deque[Failure]] = defaultdict(deque)
        self._handlers: dict[str, Handler] = {}
        self._last_write: dict[int, float] = {}
        self._poll_generation = 0
        self._closing = False
        self._changed = asyncio.Event()  # set and replaced on every change
        self._runner: web.AppRunner | None = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For `ApplicationBuilder.base_url(...)`: PTB appends the token and the method."""
        return f"{self.url}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.url}/file/bot"

    # --- scripting -------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int = 1,
        description: str | None = None,
    ) -> None:
        """Make the next call to `method` fail; queued failures are used in order.

        429 answers `{"description": "Too Many Requests: retry after N", "parameters":
        {"retry_after": N}}` (PTB raises `RetryAfter`); other statuses a generic description
        for that status (400 BadRequest, 403 Forbidden, 401/404 InvalidToken, 409 Conflict,
        5xx NetworkError).
        """
        parameters = None
        if status == 429:
            parameters = {"retry_after": retry_after}
            default = f"Too Many Requests: retry after {retry_after}"
        else:
            default = _DESCRIPTIONS.get(status, f"Error {status}")
        self._failures[method.lower()].append(Failure(status, description or default, parameters))

    def handle(self, method: str, handler: Handler) -> None:
        """Answer `method` with `handler(args)` as the `result` (raise `ApiError` to fail)."""
        self._handlers[method.lower()] = handler

    def outage(self, *faults: Fault, methods: Iterable[str] | None = None) -> None:
        """Script an unhealthy Bot API: the faults apply in order to the next calls (of
        `methods`, case-insensitive, or of every method, getUpdates included), then the API
        is healthy again. A "refuse" step starts as soon as the step before it is used up (at
        once when it comes first). `outage_over()` waits for the end. Call from the test's
        event loop."""
        self._faults.extend(replace(fault) for fault in faults)
        self._fault_methods = (
            frozenset(method.lower() for method in methods) if methods is not None else None
        )
        self._maybe_refuse()

    @property
    def in_outage(self) -> bool:
        return bool(self._faults)

    async def outage_over(self, timeout: float = 30) -> None:
        """Wait until every scripted fault was used up."""
        await self.wait_for(lambda: not self._faults, timeout, what="the end of the outage")

    def block(self, chat_id: int) -> None:
        """The user of `chat_id` blocked the bot: sends, edits, deletes and chat actions there
        answer 403 "Forbidden: bot was blocked by the user" from now on."""
        self.blocked.add(int(chat_id))

    def add_file(
        self,
        data: bytes,
        kind: str = "document",
        *,
        suffix: str = "",
        size: int | None = None,
        report_size: bool = True,
    ) -> dict[str, Any]:
        """Store a file as if a user had sent it; returns the fields a message carries for it
        (`file_id`, `file_unique_id`, `file_size`), to merge into a PhotoSize, Voice, Audio or
        Document. Its path is Telegram's: "photos/file_3.jpg", "voice/file_4.oga" ...

        `size` is what Telegram says the file holds (default: `len(data)`), so a "25 MB" file
        needs no 25 MB in memory; `report_size=False` leaves `file_size` out of the message
        and of getFile's answer (both are optional in the Bot API)."""
        number = len(self.file_infos)
        folder, default_suffix = _FILE_FOLDERS[kind]
        path = f"{folder}/file_{number}{suffix or default_suffix}"
        file_id = f"{_FILE_ID_PREFIXES[kind]}AxkBAAIB{number:04d}"
        fields: dict[str, Any] = {"file_id": file_id, "file_unique_id": f"AgAD{number:04d}"}
        size = len(data) if size is None else size
        if report_size:
            fields["file_size"] = size
        self.files[path] = data
        self.file_sizes[file_id] = size
        self.file_infos[file_id] = {**fields, "file_path": path}
        return fields

    def push(self, update: Mapping[str, Any], *, update_id: int | None = None) -> int:
        """Queue an update for getUpdates (waking a held poll); returns its update_id.

        The id is `update_id`, else the update's own `update_id`, else the next one. An id the
        bot has already been sent or has confirmed is a redelivery: it is sent again once,
        ahead of the rest, whatever the offset.
        """
        body = copy.deepcopy(dict(update))
        if update_id is None:
            update_id = body.get("update_id")
        if update_id is None:
            update_id = self._next_update_id
        update_id = int(update_id)
        self._next_update_id = max(self._next_update_id, update_id + 1)
        body["update_id"] = update_id
        forced = update_id < self.offset or update_id in self.delivered
        self._pending.append(_Pending(body, forced))
        self.pushed.append(body)
        self._learn(body)
        self._notify()
        return update_id

    def remember(self, update: Mapping[str, Any]) -> None:
        """Learn the chats and messages of an update delivered some other way (webhooks)."""
        self._learn(dict(update))

    # --- reading the record ----------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls to one method (case-insensitive, as on Telegram), oldest first."""
        return [call for call in self.calls if call.method.lower() == method.lower()]

    def messages_in(self, chat_id: int, thread_id: int | None = None) -> list[dict[str, Any]]:
        """The bot's live messages in a chat (or one topic/thread of it), oldest first."""
        return [
            message
            for (chat, _), message in sorted(self.messages.items())
            if chat == chat_id and (thread_id is None or message["message_thread_id"] == thread_id)
        ]

    def texts_in(self, chat_id: int, thread_id: int | None = None) -> list[str]:
        """The current text (as sent) of the bot's messages in a chat, oldest first."""
        return [message["text"] for message in self.messages_in(chat_id, thread_id)]

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Updates queued and not yet confirmed by an offset (redeliveries: not yet sent)."""
        return [entry.update for entry in self._pending]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10, *, what: str = "a condition"
    ) -> None:
        """Wait until `predicate()` (no arguments) is true; re-checked on every call, answer
        and push. Fails the test with what the fake saw after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await self._until(predicate)
        except TimeoutError:
            seen = [call.method for call in self.calls if call.method != "getUpdates"]
            polls = len(self.calls_to("getUpdates"))
            raise AssertionError(
                f"FakeTelegram: timed out after {timeout}s waiting for {what}; calls so far: "
                f"{seen} (+{polls} getUpdates); offset {self.offset}, delivered "
                f"{self.delivered}, pending {[u['update_id'] for u in self.pending]}"
            ) from None

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 10) -> list[Call]:
        """Wait until `method` was called at least `count` times; returns those calls."""
        await self.wait_for(
            lambda: len(self.calls_to(method)) >= count,
            timeout,
            what=f"{count} call(s) to {method}",
        )
        return self.calls_to(method)

    async def wait_confirmed(self, update_id: int, timeout: float = 10) -> None:
        """Wait until the bot confirmed `update_id` (a getUpdates with a higher offset)."""
        await self.wait_for(
            lambda: self.offset > update_id, timeout, what=f"confirmation of update {update_id}"
        )

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> FakeTelegram:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._site = site
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Release held polls (they answer `[]`) and stop; stop the Application first."""
        self._closing = True
        self._notify()
        if self._refusing is not None:
            self._refusing.cancel()
            await asyncio.gather(self._refusing, return_exceptions=True)
        assert self._runner is not None
        await self._runner.cleanup()

    def _notify(self) -> None:
        """Wake everything waiting in `_until` to re-check its predicate."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    # --- the Bot API -----------------------------------------------------------------------
    async def _file(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.downloads.append(path)
        self._notify()
        content = self.files.get(path)
        wrong_token = self.token is not None and request.match_info["token"] != self.token
        if content is None or wrong_token:
            return web.json_response(_error_body(404, "Not Found"), status=404)
        return web.Response(body=content, content_type="application/octet-stream")

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        call = Call(
            method, await _request_args(request), time.monotonic(), request.match_info["token"]
        )
        self.calls.append(call)
        self._notify()
        fault = self._take_fault(method)
        if fault is not None:
            response = self._faulty_answer(call, request, fault)
            self._notify()
            return response
        status, body = await self._answer(call, request)
        call.response = body.get("result") if body.get("ok") else body
        call.status = status
        self._notify()
        return web.json_response(body, status=status)

    # --- outages ---------------------------------------------------------------------------
    @staticmethod
    def _faulty_answer(call: Call, request: web.Request, fault: Fault) -> web.Response:
        call.status = fault.status
        if fault.kind == "drop":
            call.response = {"ok": False, "dropped": True}
            assert request.transport is not None
            request.transport.close()  # the client sees the server disconnect
            return web.Response(status=500)  # never sent: the connection is closed
        if fault.body is None:
            body = _error_body(fault.status, _DESCRIPTIONS.get(fault.status, "Error"))
            call.response = body
            return web.json_response(body, status=fault.status)
        call.response = {"ok": False, "body": fault.body}
        return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)

    def _take_fault(self, method: str) -> Fault | None:
        """The fault answering this call, if an outage is on and covers the method."""
        if self._fault_methods is not None and method.lower() not in self._fault_methods:
            return None
        while self._faults and self._faults[0].kind != "refuse":
            fault = self._faults[0]
            now = time.monotonic()
            if fault.started is None:
                fault.started = now
            if fault.seconds and now - fault.started >= fault.seconds:
                self._next_fault()
                continue
            if not fault.seconds:
                fault.times -= 1
                if fault.times <= 0:
                    self._next_fault()
            return fault
        return None

    def _next_fault(self) -> None:
        self._faults.popleft()
        self._maybe_refuse()
        self._notify()

    def _maybe_refuse(self) -> None:
        if self._faults and self._faults[0].kind == "refuse" and self._refusing is None:
            self._refusing = asyncio.get_running_loop().create_task(self._refuse())

    async def _refuse(self) -> None:
        """Stop listening for the head fault's seconds, with every open connection closed
        (httpx keeps them alive, and the Bot API being unreachable closes them too), then
        listen on the same port again."""
        assert self._runner is not None and self._site is not None
        assert self._runner.server is not None
        fault = self._faults[0]
        started = time.monotonic()
        await self._site.stop()
        for connection in self._runner.server.connections:
            connection.force_close()
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()
            self.refusals.append((started, time.monotonic()))
            self._refusing = None
        self._next_fault()

    async def _answer(self, call: Call, request: web.Request) -> tuple[int, dict[str, Any]]:
        name = call.method.lower()
        try:
            if self.token is not None and call.token != self.token:
                raise ApiError(401, "Unauthorized")
            if self._failures[name]:
                failure = self._failures[name].popleft()
                raise ApiError(failure.status, failure.description, failure.parameters)
            if name in _CHAT_METHODS and self.blocked:
                chat = str(call.args.get("chat_id", ""))
                if re.fullmatch(r"-?\d+", chat) and int(chat) in self.blocked:
                    raise ApiError(403, _DESCRIPTIONS[403])
            if name in self._handlers:
                result = self._handlers[name](call.args)
            elif name == "getupdates":
                result = await self._get_updates(call, request)
            else:
                answer = self._methods().get(name)
                if answer is None:
                    raise ApiError(404, "Not Found")
                result = answer(call.args)
        except ApiError as error:
            body = _error_body(error.status, error.description)
            if error.parameters:
                body["parameters"] = error.parameters
            return error.status, body
        return 200, {"ok": True, "result": result}

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "getme": lambda args: dict(self.me),
            "logout": lambda args: True,
            "close": lambda args: True,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._webhook_info,
            "setmycommands": self._set_commands,
            "getmycommands": self._get_commands,
            "deletemycommands": self._delete_commands,
            "sendchataction": self._chat_action,
            "sendmessage": self._send_message,
            "editmessagetext": self._edit_message_text,
            "deletemessage": self._delete_message,
            "getchat": lambda args: self._chat(_chat_id(args)),
            "getfile": self._get_file,
            "setmessagereaction": lambda args: True,
            "answercallbackquery": lambda args: True,
        }

    # --- getUpdates ------------------------------------------------------------------------
    async def _get_updates(self, call: Call, request: web.Request) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = call.int_arg("offset") or 0
        limit = min(max(call.int_arg("limit") or 100, 1), 100)
        timeout = float(call.args.get("timeout") or 0)
        if isinstance(call.args.get("allowed_updates"), list) and call.args["allowed_updates"]:
            self.allowed_updates = list(call.args["allowed_updates"])
        self._confirm(offset)
        # A newer poll terminates an older one still held, as on Telegram.
        self._poll_generation += 1
        generation = self._poll_generation
        self._notify()
        try:
            async with asyncio.timeout(timeout):
                await self._until(
                    lambda: (
                        self._closing
                        or generation != self._poll_generation
                        or bool(self._deliverable(offset))
                    )
                )
        except TimeoutError:
            return []
        if generation != self._poll_generation and not self._closing:
            raise ApiError(409, _DESCRIPTIONS[409])
        transport = request.transport
        if self._closing or transport is None or transport.is_closing():
            return []  # nobody is listening: keep the updates for the next poll
        batch = self._deliverable(offset)[:limit]
        sent = {id(entry) for entry in batch}
        self._pending = [e for e in self._pending if not (e.forced and id(e) in sent)]
        self.delivered.extend(entry.update["update_id"] for entry in batch)
        return [entry.update for entry in batch]

    def _confirm(self, offset: int) -> None:
        if offset < 0:  # "-N": keep only the last N updates
            normal = [entry for entry in self._pending if not entry.forced]
            drop = {id(entry) for entry in normal[:offset]}
            self._pending = [entry for entry in self._pending if id(entry) not in drop]
            return
        self.offset = offset
        self._pending = [
            entry for entry in self._pending if entry.forced or entry.update["update_id"] >= offset
        ]

    def _deliverable(self, offset: int) -> list[_Pending]:
        allowed = set(self.allowed_updates or ())

        def wanted(entry: _Pending) -> bool:
            kind = next((key for key in entry.update if key != "update_id"), "")
            return kind in allowed if allowed else kind not in OPT_IN_UPDATES

        forced = [entry for entry in self._pending if entry.forced and wanted(entry)]
        normal = sorted(
            (
                entry
                for entry in self._pending
                if not entry.forced and entry.update["update_id"] >= offset and wanted(entry)
            ),
            key=lambda entry: entry.update["update_id"],
        )
        return forced + normal

    # --- files -----------------------------------------------------------------------------
    def _get_file(self, args: dict[str, Any]) -> dict[str, Any]:
        file_id = str(args.get("file_id") or "")
        if file_id not in self.file_infos:
            raise bad_request("invalid file_id")
        if self.file_sizes[file_id] > DOWNLOAD_LIMIT:
            raise bad_request("file is too big")
        return dict(self.file_infos[file_id])

    # --- webhooks and commands -------------------------------------------------------------
    def _delete_webhook(self, args: dict[str, Any]) -> bool:
        self.webhook = None
        if _flag(args.get("drop_pending_updates")):
            self._pending.clear()
        return True

    def _set_webhook(self, args: dict[str, Any]) -> bool:
        url = str(args.get("url") or "")
        if not url:
            return self._delete_webhook(args)
        if not url.startswith("https://"):
            raise bad_request("bad webhook: An HTTPS URL must be provided for webhook")
        secret = args.get("secret_token")
        if secret is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", str(secret)):
            raise bad_request("secret token contains unallowed characters")
        if _flag(args.get("drop_pending_updates")):
            self._pending.clear()
        self.webhook = {
            "url": url,
            "secret_token": secret,
            "allowed_updates": args.get("allowed_updates"),
            "max_connections": args.get("max_connections"),
            "ip_address": args.get("ip_address"),
            "drop_pending_updates": _flag(args.get("drop_pending_updates")),
        }
        return True

    def _webhook_info(self, args: dict[str, Any]) -> dict[str, Any]:
        info: dict[str, Any] = {
            "url": self.webhook["url"] if self.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }
        if self.webhook and self.webhook.get("max_connections"):
            info["max_connections"] = int(self.webhook["max_connections"])
        return info

    @staticmethod
    def _command_key(args: dict[str, Any]) -> tuple[str, str]:
        scope = args.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), str(args.get("language_code") or "")

    def _set_commands(self, args: dict[str, Any]) -> bool:
        commands = args.get("commands")
        if not isinstance(commands, list):
            raise bad_request('parameter "commands" is required')
        for command in commands:
            name = str(command.get("command", ""))
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(str(command.get("description", ""))) <= 256:
                raise bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[self._command_key(args)] = commands
        return True

    def _get_commands(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands.get(self._command_key(args), [])

    def _delete_commands(self, args: dict[str, Any]) -> bool:
        self.commands.pop(self._command_key(args), None)
        return True

    # --- messages --------------------------------------------------------------------------
    def _chat(self, chat_id: int) -> dict[str, Any]:
        if chat_id in self.chats:
            return dict(self.chats[chat_id])
        if chat_id > 0:
            return {"id": chat_id, "first_name": "User", "type": "private"}
        if str(chat_id).startswith("-100"):
            return {"id": chat_id, "title": "Group", "type": "supergroup"}
        return {"id": chat_id, "title": "Group", "type": "group"}

    def _chat_action(self, args: dict[str, Any]) -> bool:
        chat_id = _chat_id(args)
        if args.get("action") not in CHAT_ACTIONS:
            raise bad_request("wrong parameter action in request")
        self._check_thread(chat_id, args)
        return True

    def _check_thread(self, chat_id: int, args: dict[str, Any]) -> int | None:
        thread = args.get("message_thread_id")
        if thread in (None, ""):
            return None
        chat = self.chats.get(chat_id)
        if chat and chat["type"] in ("group", "supergroup") and not chat.get("is_forum"):
            # A reply chain's message_thread_id is not a topic: sending to it fails.
            raise bad_request("message thread not found")
        return int(thread)

    def _flood(self, chat_id: int) -> None:
        now = time.monotonic()
        last = self._last_write.get(chat_id)
        if self.flood_interval and last is not None and now - last < self.flood_interval:
            wait = math.ceil(self.flood_interval - (now - last))
            raise ApiError(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        self._last_write[chat_id] = now

    def _send_message(self, args: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(args)
        thread = self._check_thread(chat_id, args)
        plain, entities = _parse_text(args)
        reply = self._reply_to(chat_id, args)
        self._flood(chat_id)
        message_id = next_message_id(chat_id)
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": dict(BOT_USER),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
        }
        if thread is not None:
            message["message_thread_id"] = thread
            if message["chat"].get("is_forum"):
                message["is_topic_message"] = True
        if reply is not None:
            message["reply_to_message"] = reply
        message["text"] = plain
        if entities:
            message["entities"] = entities
        if isinstance(args.get("reply_markup"), dict) and "inline_keyboard" in args["reply_markup"]:
            message["reply_markup"] = args["reply_markup"]
        self.messages[(chat_id, message_id)] = {
            "chat_id": chat_id,
            "message_id": message_id,
            "text": args.get("text", ""),
            "parse_mode": args.get("parse_mode"),
            "plain": plain,
            "entities": entities,
            "message_thread_id": thread,
            "reply_markup": args.get("reply_markup"),
            "versions": [args.get("text", "")],
            "message": message,
        }
        return message

    def _reply_to(self, chat_id: int, args: dict[str, Any]) -> dict[str, Any] | None:
        parameters = args.get("reply_parameters")
        if isinstance(parameters, dict):
            target = parameters.get("message_id")
            chat_id = _chat_id(parameters) if "chat_id" in parameters else chat_id
        else:
            target = args.get("reply_to_message_id")
        if target in (None, ""):
            return None
        key = (chat_id, int(target))
        if key in self.messages:
            original = dict(self.messages[key]["message"])
        elif key in self.user_messages:
            original = dict(self.user_messages[key])
        else:
            original = {"message_id": key[1], "chat": self._chat(chat_id), "date": 0}
        original.pop("reply_to_message", None)  # Telegram does not nest replies
        return original

    def _edit_message_text(self, args: dict[str, Any]) -> dict[str, Any] | bool:
        if args.get("inline_message_id"):
            _parse_text(args)
            return True
        chat_id = _chat_id(args)
        key = (chat_id, int(args.get("message_id") or 0))
        stored = self.messages.get(key)
        if stored is None:
            if key in self.user_messages:
                raise bad_request("message can't be edited")
            raise bad_request("message to edit not found")
        plain, entities = _parse_text(args)
        markup = args.get("reply_markup")
        before = (stored["plain"], stored["entities"], stored["reply_markup"])
        if (plain, entities, markup) == before:
            raise ApiError(400, NOT_MODIFIED)
        self._flood(chat_id)
        message = dict(stored["message"])
        message["text"] = plain
        message.pop("entities", None)
        if entities:
            message["entities"] = entities
        message.pop("reply_markup", None)
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        stored.update(
            text=args.get("text", ""),
            parse_mode=args.get("parse_mode"),
            plain=plain,
            entities=entities,
            reply_markup=markup,
            message=message,
        )
        stored["versions"].append(stored["text"])
        return message

    def _delete_message(self, args: dict[str, Any]) -> bool:
        key = (_chat_id(args), int(args.get("message_id") or 0))
        if key in self.messages:
            self.deleted[key] = self.messages.pop(key)
        elif key in self.user_messages:
            self.user_messages.pop(key)
        else:
            raise bad_request("message to delete not found")
        return True

    # --- learning from updates -------------------------------------------------------------
    def _learn(self, update: dict[str, Any]) -> None:
        for kind in ("message", "edited_message", "channel_post", "edited_channel_post"):
            message = update.get(kind)
            if isinstance(message, dict) and isinstance(message.get("chat"), dict):
                chat = message["chat"]
                self.chats[int(chat["id"])] = {**self.chats.get(int(chat["id"]), {}), **chat}
                self.user_messages[(int(chat["id"]), int(message["message_id"]))] = message


# --- request decoding ----------------------------------------------------------------------


async def _request_args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if request.can_read_body:
        if request.content_type == "application/json":
            body = await request.json()
            if isinstance(body, dict):
                args.update(body)
            return args
        if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            for name, value in (await request.post()).items():
                args[name] = value.file.read() if isinstance(value, web.FileField) else value
    for name, value in list(args.items()):
        if isinstance(value, str) and name not in _TEXT_ARGS and value[:1] in ("{", "["):
            with contextlib.suppress(ValueError):
                args[name] = json.loads(value)
    return args


def _chat_id(args: Mapping[str, Any]) -> int:
    value = args.get("chat_id")
    if value in (None, ""):
        raise bad_request("chat_id is empty")
    if not re.fullmatch(r"-?\d+", str(value)):
        raise bad_request("chat not found")
    return int(value)


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _error_body(status: int, description: str) -> dict[str, Any]:
    return {"ok": False, "error_code": status, "description": description}


# --- text parsing ----------------------------------------------------------------------------


class ParseError(ValueError):
    """Text Telegram refuses to parse; the message is tdlib's."""


def _parse_text(args: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """(text as displayed, entities) for a sendMessage/editMessageText, or a 400."""
    text = str(args.get("text") or "")
    mode = str(args.get("parse_mode") or "").lower()
    try:
        if mode == "html":
            plain, entities = parse_html(text)
        elif mode == "markdownv2":
            plain, entities = parse_markdown_v2(text)
        elif mode == "markdown":
            plain, entities = parse_markdown(text)
        else:
            given = args.get("entities")
            plain, entities = text, list(given) if isinstance(given, list) else []
    except ParseError as error:
        raise bad_request(f"can't parse entities: {error}") from None
    plain, entities = _strip(plain, entities)
    if not plain:
        raise bad_request("message text is empty")
    if len(plain) > TEXT_LIMIT:
        raise bad_request("message is too long")
    return plain, entities


def _strip(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram trims leading/trailing whitespace and moves the entities with the text."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    shift = utf16_len(text[: len(text) - len(text.lstrip())])
    end = utf16_len(stripped)
    kept = []
    for entity in entities:
        start = max(entity["offset"] - shift, 0)
        stop = min(entity["offset"] + entity["length"] - shift, end)
        if stop > start:
            kept.append({**entity, "offset": start, "length": stop - start})
    return stripped, kept


_HTML_TAGS = {
    "a": "text_link",
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "tg-emoji": "custom_emoji",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
}
_HTML_ENTITY = re.compile(r"&(?:#x([0-9a-fA-F]+)|#([0-9]+)|([a-zA-Z]+));?")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _decode_entity(text: str, pos: int) -> tuple[str, int] | None:
    """tdlib's decode_html_entity: &lt; &gt; &amp; &quot; and numeric references (the `;` is
    optional); anything else leaves the `&` as a plain character."""
    match = _HTML_ENTITY.match(text, pos)
    if match is None:
        return None
    hexadecimal, decimal, name = match.groups()
    if name is not None:
        if name not in _NAMED_ENTITIES:
            return None
        return _NAMED_ENTITIES[name], match.end()
    code = int(hexadecimal, 16) if hexadecimal is not None else int(decimal)
    if code == 0 or code >= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
        return None
    return chr(code), match.end()


def parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Parse Telegram HTML as tdlib does; returns (plain text, entities) or raises ParseError
    with tdlib's message (byte offsets are UTF-8)."""
    out: list[str] = []
    utf16 = 0
    stack: list[tuple[str, dict[str, str], int]] = []  # (tag, attributes, start in UTF-16)
    entities: list[dict[str, Any]] = []
    n = len(text)
    i = 0

    def at(pos: int) -> int:
        return len(text[:pos].encode())

    while i < n:
        char = text[i]
        if char == "&" and (decoded := _decode_entity(text, i)) is not None:
            out.append(decoded[0])
            utf16 += utf16_len(decoded[0])
            i = decoded[1]
            continue
        if char != "<":
            out.append(char)
            utf16 += utf16_len(char)
            i += 1
            continue
        begin = i
        i += 1
        if i < n and text[i] == "/":  # an end tag
            if not stack:
                raise ParseError(f"Unexpected end tag at byte offset {at(begin)}")
            i += 1
            name_start = i
            while i < n and not text[i].isspace() and text[i] != ">":
                i += 1
            end_name = text[name_start:i].lower()
            while i < n and text[i].isspace():
                i += 1
            if i >= n or text[i] != ">":
                raise ParseError(f"Unclosed end tag at byte offset {at(begin)}")
            i += 1
            tag, attributes, start = stack.pop()
            if end_name and end_name != tag:
                raise ParseError(
                    f'Unmatched end tag at byte offset {at(begin)}, expected "</{tag}>", '
                    f'found "</{end_name}>"'
                )
            if tag == "code" and stack and stack[-1][0] == "pre":
                language = attributes.get("class", "")
                if language.startswith("language-"):
                    stack[-1][1]["language"] = language.removeprefix("language-")
                    continue
            if utf16 > start:
                entities.append(_html_entity(tag, attributes, start, utf16 - start))
            continue
        name_start = i
        while i < n and not text[i].isspace() and text[i] != ">":
            i += 1
        if i >= n:
            raise ParseError(f"Unclosed start tag at byte offset {at(begin)}")
        tag = text[name_start:i].lower()
        if tag not in _HTML_TAGS:
            raise ParseError(f'Unsupported start tag "{tag}" at byte offset {at(begin)}')
        attributes: dict[str, str] = {}
        while True:
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise ParseError(f'Unclosed start tag "{tag}" at byte offset {at(begin)}')
            if text[i] == ">":
                i += 1
                break
            attribute_start = i
            while i < n and not text[i].isspace() and text[i] not in "=>":
                i += 1
            attribute = text[attribute_start:i].lower()
            if not attribute:
                raise ParseError(
                    f'Empty attribute name in the tag "{tag}" at byte offset {at(begin)}'
                )
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise ParseError(f'Unclosed start tag "{tag}" at byte offset {at(begin)}')
            if text[i] != "=":
                attributes[attribute] = ""
                continue
            i += 1
            while i < n and text[i].isspace():
                i += 1
            if i >= n:
                raise ParseError(f'Unclosed start tag "{tag}" at byte offset {at(begin)}')
            if text[i] in "\"'":
                quote = text[i]
                end = text.find(quote, i + 1)
                end = n if end < 0 else end
                value = html.unescape(text[i + 1 : end])
                i = min(end + 1, n)
            else:
                token_start = i
                while i < n and (text[i].isalnum() or text[i] in ".-"):
                    i += 1
                value = text[token_start:i].lower()
                if i < n and not text[i].isspace() and text[i] != ">":
                    raise ParseError(f"Unexpected end of name token at byte offset {at(i)}")
            if i >= n:
                raise ParseError(f'Unclosed start tag "{tag}" at byte offset {at(begin)}')
            attributes[attribute] = value
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            raise ParseError(f'Tag "span" must have class "tg-spoiler" at byte offset {at(begin)}')
        stack.append((tag, attributes, utf16))
    if stack:
        raise ParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
    return "".join(out), entities


def _html_entity(tag: str, attributes: dict[str, str], offset: int, length: int) -> dict[str, Any]:
    kind = _HTML_TAGS[tag]
    entity: dict[str, Any] = {"offset": offset, "length": length, "type": kind}
    if tag == "a":
        entity["url"] = attributes.get("href", "")
    elif tag == "pre" and attributes.get("language"):
        entity["language"] = attributes["language"]
    elif tag == "blockquote" and "expandable" in attributes:
        entity["type"] = "expandable_blockquote"
    elif tag == "tg-emoji":
        entity["custom_emoji_id"] = attributes.get("emoji-id", "")
    return entity


_MD2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MD2_MARKERS = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
    "[": "TextUrl",
}
_MD2_TYPES = {
    "*": "bold",
    "_": "italic",
    "__": "underline",
    "~": "strikethrough",
    "||": "spoiler",
}


def parse_markdown_v2(text: str) -> tuple[str, list[dict[str, Any]]]:
    """A simplified MarkdownV2 parser with tdlib's error messages: every reserved character
    outside an entity must be escaped, entities must be closed, code/pre content only needs
    ` and \\ escaped. Returns (plain text, entities) or raises ParseError."""
    out: list[str] = []
    utf16 = 0
    stack: list[tuple[str, int, int]] = []  # (marker, start in UTF-16, byte offset)
    entities: list[dict[str, Any]] = []
    n = len(text)
    i = 0

    def at(pos: int) -> int:
        return len(text[:pos].encode())

    def emit(chars: str) -> None:
        nonlocal utf16
        out.append(chars)
        utf16 += utf16_len(chars)

    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and 0 < ord(text[i + 1]) < 127:
            emit(text[i + 1])
            i += 2
            continue
        if char not in _MD2_RESERVED:
            emit(char)
            i += 1
            continue
        if char == "`":  # code or pre: raw until the closing backtick(s)
            fence = "```" if text.startswith("```", i) else "`"
            begin = i
            i += len(fence)
            language = ""
            if fence == "```":
                newline = text.find("\n", i)
                first_line = text[i:newline] if newline >= 0 else ""
                if newline >= 0 and first_line and " " not in first_line:
                    language, i = first_line, newline + 1
            start = utf16
            while True:
                if i >= n:
                    kind = "Pre" if fence == "```" else "Code"
                    raise ParseError(f"Can't find end of {kind} entity at byte offset {at(begin)}")
                if text[i] == "\\" and i + 1 < n and text[i + 1] in "`\\":
                    emit(text[i + 1])
                    i += 2
                    continue
                if text.startswith(fence, i):
                    i += len(fence)
                    break
                emit(text[i])
                i += 1
            if utf16 > start:
                entity: dict[str, Any] = {
                    "offset": start,
                    "length": utf16 - start,
                    "type": "pre" if fence == "```" else "code",
                }
                if language:
                    entity["language"] = language
                entities.append(entity)
            continue
        if char == "]" and stack and stack[-1][0] == "[":
            _, start, _ = stack.pop()
            i += 1
            url = ""
            if i < n and text[i] == "(":
                i += 1
                chars: list[str] = []
                while i < n and text[i] != ")":
                    if text[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(text[i])
                    i += 1
                if i >= n:
                    raise ParseError(f"Can't find end of a URL at byte offset {at(i)}")
                i += 1
                url = "".join(chars)
            if url and utf16 > start:
                entities.append(
                    {"offset": start, "length": utf16 - start, "type": "text_link", "url": url}
                )
            continue
        if char == ">" and (i == 0 or text[i - 1] == "\n"):  # a blockquote line
            i += 1
            continue
        marker = None
        if char == "_":
            if stack and stack[-1][0] == "__" and text.startswith("__", i):
                marker = "__"
            elif stack and stack[-1][0] == "_":
                marker = "_"
            else:
                marker = "__" if text.startswith("__", i) else "_"
        elif char == "|" and text.startswith("||", i):
            marker = "||"
        elif char in "*~[":
            marker = char
        elif char == "!" and text.startswith("![", i):
            i += 1  # a custom emoji: ![👍](tg://emoji?id=...)
            marker = "["
        if marker is None:
            raise ParseError(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
            )
        if stack and stack[-1][0] == marker and marker != "[":
            _, start, _ = stack.pop()
            if utf16 > start:
                entities.append(
                    {"offset": start, "length": utf16 - start, "type": _MD2_TYPES[marker]}
                )
        else:
            stack.append((marker, utf16, at(i)))
        i += len(marker)
    if stack:
        marker, _, byte = stack[-1]
        raise ParseError(f"Can't find end of {_MD2_MARKERS[marker]} entity at byte offset {byte}")
    entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
    return "".join(out), entities


def parse_markdown(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Legacy Markdown: *bold*, _italic_, `code`, ```pre```, [text](url), no nesting; an
    unclosed one raises ParseError("Can't find end of the entity starting at byte offset N")."""
    out: list[str] = []
    utf16 = 0
    entities: list[dict[str, Any]] = []
    kinds = {"*": "bold", "_": "italic", "`": "code", "```": "pre"}
    n = len(text)
    i = 0
    while i < n:
        char = text[i]
        if char == "\\" and i + 1 < n and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            utf16 += 1
            i += 2
            continue
        if char not in "_*`[":
            out.append(char)
            utf16 += utf16_len(char)
            i += 1
            continue
        marker = "```" if text.startswith("```", i) else ("]" if char == "[" else char)
        end = text.find(marker, i + (len(marker) if marker == "```" else 1))
        if end < 0:
            raise ParseError(
                f"Can't find end of the entity starting at byte offset {len(text[:i].encode())}"
            )
        inner = text[i + (3 if marker == "```" else 1) : end]
        i = end + len(marker)
        entity: dict[str, Any] = {"offset": utf16, "length": utf16_len(inner)}
        if marker == "]":
            if i < n and text[i] == "(" and (close := text.find(")", i)) >= 0:
                entity.update(type="text_link", url=text[i + 1 : close])
                i = close + 1
            else:
                entity["type"] = ""
        else:
            entity["type"] = kinds[marker]
        out.append(inner)
        utf16 += entity["length"]
        if entity["type"] and entity["length"]:
            entities.append(entity)
    return "".join(out), entities


# --- update builders -------------------------------------------------------------------------

_COMMAND = re.compile(r"(?<![\w/<>])/[A-Za-z0-9_]{1,64}(?:@[A-Za-z0-9_]{3,32})?(?![\w/])")
_MENTION = re.compile(r"(?<![\w@])@[A-Za-z0-9_]{5,32}(?!\w)")


def auto_entities(text: str) -> list[dict[str, Any]]:
    """The entities Telegram detects by itself: `/command[@bot]` ("bot_command") and
    `@username` ("mention"), with offsets and lengths in UTF-16 code units."""
    found: list[dict[str, Any]] = []
    taken: list[range] = []
    for match in _COMMAND.finditer(text):
        taken.append(range(match.start(), match.end()))
        found.append(_entity("bot_command", text, match.start(), match.end()))
    for match in _MENTION.finditer(text):
        if not any(match.start() in span for span in taken):
            found.append(_entity("mention", text, match.start(), match.end()))
    found.sort(key=lambda entity: entity["offset"])
    return found


def _entity(kind: str, text: str, start: int, end: int) -> dict[str, Any]:
    return {
        "offset": utf16_len(text[:start]),
        "length": utf16_len(text[start:end]),
        "type": kind,
    }


def user(
    user_id: int = 1, first_name: str = "Alice", username: str | None = "alice"
) -> dict[str, Any]:
    """A (human) User as it appears in `from`."""
    person: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
    if username:
        person["username"] = username
    person["language_code"] = "en"
    return person


def _unwrap(message: Any) -> dict[str, Any]:
    """A Message dict from a Message or an update (dicts, or PTB objects), or a
    `fake.messages` entry."""
    if hasattr(message, "to_dict"):  # a telegram.Message / telegram.Update
        message = message.to_dict()
    for key in ("message", "edited_message"):
        if isinstance(message.get(key), Mapping):
            return dict(message[key])
    return dict(message)


def _message(
    text: str,
    chat: dict[str, Any],
    sender: dict[str, Any],
    *,
    message_id: int | None,
    entities: list[dict[str, Any]] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": message_id or next_message_id(int(chat["id"])),
        "from": sender,
        "chat": chat,
        "date": int(time.time()),
    }
    message.update(extra or {})
    message["text"] = text
    found = auto_entities(text) if entities is None else entities
    if found:
        message["entities"] = found
    return message


def private_message(
    text: str,
    *,
    user_id: int = 1,
    first_name: str = "Alice",
    username: str | None = "alice",
    message_id: int | None = None,
    entities: list[dict[str, Any]] | None = None,
    reply_to: Any = None,
) -> dict[str, Any]:
    """An update with a direct message to the bot (chat id = user id); no update_id."""
    chat: dict[str, Any] = {"id": user_id, "first_name": first_name, "type": "private"}
    if username:
        chat["username"] = username
    extra = {}
    if reply_to is not None:
        replied = _unwrap(reply_to)
        replied.pop("reply_to_message", None)
        extra["reply_to_message"] = replied
    sender = user(user_id, first_name, username)
    return {
        "message": _message(
            text, chat, sender, message_id=message_id, entities=entities, extra=extra
        )
    }


def group_message(
    text: str,
    *,
    chat_id: int = GROUP_CHAT_ID,
    user_id: int = 1,
    first_name: str = "Alice",
    username: str | None = "alice",
    message_id: int | None = None,
    entities: list[dict[str, Any]] | None = None,
    reply_to: Any = None,
    message_thread_id: int | None = None,
    is_topic_message: bool = False,
    is_forum: bool | None = None,
    chat_type: str = "supergroup",
    title: str = "Test group",
) -> dict[str, Any]:
    """An update with a message in a group; no update_id.

    As on Telegram: a message in a forum topic (`is_topic_message=True` with
    `message_thread_id`) comes from a chat with `is_forum` and, unless it answers something
    else, replies to the topic's creation message (message_id == message_thread_id, sent by
    the user, not the bot). A reply in a supergroup WITHOUT topics carries a
    `message_thread_id` too (the reply chain's first message) but no `is_topic_message`.
    `reply_to` is a Message, an update, or a `fake.messages` entry.
    """
    if is_forum is None:
        is_forum = is_topic_message
    if is_topic_message and message_thread_id is None:
        raise ValueError("a topic message needs its message_thread_id")
    if message_id is None and message_thread_id is not None:
        message_id = next_message_id(chat_id)
        while message_id <= message_thread_id:  # a thread's messages come after its first
            message_id = next_message_id(chat_id)
    chat: dict[str, Any] = {"id": chat_id, "title": title, "type": chat_type}
    if is_forum:
        chat["is_forum"] = True
    sender = user(user_id, first_name, username)
    extra: dict[str, Any] = {}
    replied = None
    if reply_to is not None:
        replied = _unwrap(reply_to)
        replied.pop("reply_to_message", None)
        if message_thread_id is None and chat_type == "supergroup" and not is_forum:
            message_thread_id = replied.get("message_thread_id") or replied["message_id"]
    elif is_topic_message:
        replied = {
            "message_id": message_thread_id,
            "from": sender,
            "chat": chat,
            "date": int(time.time()),
            "message_thread_id": message_thread_id,
            "forum_topic_created": {"name": "Topic", "icon_color": 7322096},
            "is_topic_message": True,
        }
    if message_thread_id is not None:
        extra["message_thread_id"] = message_thread_id
    if is_topic_message:
        extra["is_topic_message"] = True
    if replied is not None:
        extra["reply_to_message"] = replied
    return {
        "message": _message(
            text, chat, sender, message_id=message_id, entities=entities, extra=extra
        )
    }


def edited_message(
    original: Any,
    text: str,
    *,
    entities: list[dict[str, Any]] | None = None,
    edit_date: int | None = None,
) -> dict[str, Any]:
    """An `edited_message` update: `original` (an update or a Message) with new text."""
    message = _unwrap(original)
    message.pop("entities", None)
    message["text"] = text
    found = auto_entities(text) if entities is None else entities
    if found:
        message["entities"] = found
    message["edit_date"] = edit_date or int(time.time()) + 1
    return {"edited_message": message}


# Telegram's own accounts, as they appear in `from` (see PLATFORMS.md, field notes).
TELEGRAM_SERVICE_USER: dict[str, Any] = {"id": 777000, "is_bot": False, "first_name": "Telegram"}
GROUP_ANONYMOUS_BOT: dict[str, Any] = {
    "id": 1087968824,
    "is_bot": True,
    "first_name": "Group",
    "username": "GroupAnonymousBot",
}
CHANNEL_BOT: dict[str, Any] = {
    "id": 136817688,
    "is_bot": True,
    "first_name": "Channel",
    "username": "Channel_Bot",
}
CHANNEL_ID = -1005555555555


def channel(chat_id: int = CHANNEL_ID, title: str = "News") -> dict[str, Any]:
    """A channel Chat, as in `sender_chat` or a `channel_post`'s `chat`."""
    return {"id": chat_id, "title": title, "username": "news_channel", "type": "channel"}


def group_chat(chat_id: int = GROUP_CHAT_ID, title: str = "Test group") -> dict[str, Any]:
    """A supergroup Chat."""
    return {"id": chat_id, "title": title, "type": "supergroup"}


def with_fields(update: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The update with fields added to (or, given None, removed from) its message."""
    body = copy.deepcopy(update)
    key = next(k for k in ("message", "edited_message", "channel_post") if k in body)
    for name, value in fields.items():
        if value is None:
            body[key].pop(name, None)
        else:
            body[key][name] = value
    return body


def channel_post(text: str, *, chat: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `channel_post` update: a post in a channel the bot administers (no `from`)."""
    chat = chat or channel()
    message = {
        "message_id": next_message_id(int(chat["id"])),
        "sender_chat": chat,
        "chat": chat,
        "date": int(time.time()),
        "text": text,
    }
    if found := auto_entities(text):
        message["entities"] = found
    return {"channel_post": message}


def automatic_forward(text: str, *, chat_id: int = GROUP_CHAT_ID) -> dict[str, Any]:
    """A linked channel's post as Telegram copies it into the discussion group: `from` is
    777000 "Telegram", `sender_chat` the channel, `is_automatic_forward` true."""
    source = channel()
    update = group_message(text, chat_id=chat_id)
    return with_fields(
        update,
        **{"from": TELEGRAM_SERVICE_USER},
        sender_chat=source,
        is_automatic_forward=True,
        forward_origin={
            "type": "channel",
            "chat": source,
            "message_id": next_message_id(int(source["id"])),
            "date": int(time.time()) - 2,
        },
    )


def anonymous_admin_message(text: str, **options: Any) -> dict[str, Any]:
    """A group message by an anonymous admin: `sender_chat` is the group itself and `from`
    is GroupAnonymousBot."""
    update = group_message(text, **options)
    chat = update["message"]["chat"]
    return with_fields(update, **{"from": GROUP_ANONYMOUS_BOT}, sender_chat=chat)


def as_channel_message(text: str, **options: Any) -> dict[str, Any]:
    """A group message someone posted as their channel: `sender_chat` the channel, `from`
    Channel_Bot."""
    update = group_message(text, **options)
    return with_fields(update, **{"from": CHANNEL_BOT}, sender_chat=channel())


_MEDIA: dict[str, Any] = {
    "photo": [
        {
            "file_id": "AgACAgIAAxkBAAIBb2",
            "file_unique_id": "AQADs",
            "width": 90,
            "height": 67,
            "file_size": 1312,
        },
        {
            "file_id": "AgACAgIAAxkBAAIBb3",
            "file_unique_id": "AQADm",
            "width": 1280,
            "height": 960,
            "file_size": 93814,
        },
    ],
    "voice": {
        "file_id": "AwACAgIAAxkBAAIBc",
        "file_unique_id": "AgADv",
        "duration": 4,
        "mime_type": "audio/ogg",
        "file_size": 11422,
    },
    "video": {
        "file_id": "BAACAgIAAxkBAAIBd",
        "file_unique_id": "AgADw",
        "width": 640,
        "height": 360,
        "duration": 12,
        "mime_type": "video/mp4",
        "file_size": 802133,
    },
    "document": {
        "file_name": "report.pdf",
        "mime_type": "application/pdf",
        "file_id": "BQACAgIAAxkBAAIBe",
        "file_unique_id": "AgADx",
        "file_size": 48213,
    },
    "sticker": {
        "file_id": "CAACAgIAAxkBAAIBf",
        "file_unique_id": "AgADy",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": "👍",
        "set_name": "HotCherry",
        "file_size": 23410,
    },
}


def media_message(
    kind: str,
    caption: str | None = None,
    *,
    group: bool = False,
    media: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """A message with an attachment ("photo", "voice", "video", "document", "sticker", or
    any other with `media`, its object) and an optional caption (with its entities), in a
    private chat or (`group=True`) a group."""
    build = group_message if group else private_message
    update = build("", **options)
    message = update["message"]
    del message["text"]
    message.pop("entities", None)
    message[kind] = copy.deepcopy(_MEDIA[kind] if media is None else media)
    if caption is not None:
        message["caption"] = caption
        if found := auto_entities(caption):
            message["caption_entities"] = found
    return update


def service_message(**fields: Any) -> dict[str, Any]:
    """A group service message: no text, one of `new_chat_members`, `pinned_message`,
    `left_chat_member`, `forum_topic_created` ... given as `fields`."""
    update = group_message("")
    message = update["message"]
    del message["text"]
    message.update(fields)
    return update


def poll_message(question: str, *, group: bool = False) -> dict[str, Any]:
    """A message holding a poll."""
    update = (group_message if group else private_message)("")
    message = update["message"]
    del message["text"]
    message["poll"] = {
        "id": "5467123456789012345",
        "question": question,
        "options": [
            {"text": "Yes", "voter_count": 0, "persistent_id": "1"},
            {"text": "No", "voter_count": 0, "persistent_id": "2"},
        ],
        "total_voter_count": 0,
        "is_closed": False,
        "is_anonymous": True,
        "type": "regular",
        "allows_multiple_answers": False,
        # Required by python-telegram-bot 22.8 (Bot API 9.6 and 10.0).
        "allows_revoting": False,
        "members_only": False,
    }
    return update


def my_chat_member_update(*, chat: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `my_chat_member` update: someone added the bot to a group."""
    return {
        "my_chat_member": {
            "chat": chat or group_chat(),
            "from": user(),
            "date": int(time.time()),
            "old_chat_member": {"status": "left", "user": BOT_USER},
            "new_chat_member": {"status": "member", "user": BOT_USER},
        }
    }


def callback_query_update(data: str, *, message: Mapping[str, Any]) -> dict[str, Any]:
    """A `callback_query` update: a button under one of the bot's messages was pressed."""
    return {
        "callback_query": {
            "id": "4382176251762893",
            "from": user(),
            "message": _unwrap(message),
            "chat_instance": "-5187193629347825311",
            "data": data,
        }
    }


# --- webhook mode ----------------------------------------------------------------------------


async def post_update(
    url: str, update: Mapping[str, Any], *, secret: str | None = None, update_id: int = 0
) -> int:
    """POST an update to a webhook as Telegram does (JSON, `X-Telegram-Bot-Api-Secret-Token`
    when `secret` is given); returns the HTTP status. The update gets `update_id` (default:
    the next from a module counter) unless it has one."""
    body = dict(update)
    body.setdefault("update_id", update_id or next(_webhook_update_ids))
    headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


_webhook_update_ids = itertools.count(500_000)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bind to 0, read it, close), for start_webhook."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


__all__ = [
    "BOT_ID",
    "BOT_USERNAME",
    "CHANNEL_BOT",
    "CHANNEL_ID",
    "GROUP_ANONYMOUS_BOT",
    "GROUP_CHAT_ID",
    "TELEGRAM_SERVICE_USER",
    "ApiError",
    "Call",
    "FakeTelegram",
    "Fault",
    "ParseError",
    "anonymous_admin_message",
    "as_channel_message",
    "auto_entities",
    "automatic_forward",
    "callback_query_update",
    "channel",
    "channel_post",
    "dropped",
    "edited_message",
    "free_port",
    "group_chat",
    "group_message",
    "media_message",
    "my_chat_member_update",
    "next_message_id",
    "not_json_error",
    "parse_html",
    "parse_markdown",
    "parse_markdown_v2",
    "poll_message",
    "post_update",
    "private_message",
    "refused",
    "server_error",
    "service_message",
    "user",
    "utf16_len",
    "with_fields",
]
