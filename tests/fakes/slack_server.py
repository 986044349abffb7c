"""A fake Slack platform on 127.0.0.1, driven through the real slack-sdk / slack-bolt.

`async with FakeSlack() as fake:` serves three things on one port:

- the Web API at `fake.api_url` (`http://127.0.0.1:PORT/api/`, the trailing slash matters):
  point `AsyncWebClient(token=..., base_url=fake.api_url)` at it. Every call is recorded in
  `fake.calls`; bot messages live in `fake.messages` (ts -> message), updated and deleted as
  Slack would. `fail_next` scripts errors (HTTP 429 with Retry-After, or `ok: false`);
  `outage` scripts an unhealthy Slack: 5xx answers with JSON, HTML, plain-text or empty
  bodies, connections dropped unanswered, and a window in which the port refuses
  connections, for a number of calls or a time.
- `response_url`s for slash commands (`fake.new_response_url()`), recorded in `fake.responses`.
- Files users shared: `fake.upload(name, data, mimetype)` hosts one at its `url_private` /
  `url_private_download` and returns the file object a `file_share` event carries. Downloads
  need `Authorization: Bearer <fake.bot_token>` (and `fake.files_read`, the app's scope);
  otherwise Slack's sign-in page is the answer, with HTTP 200. Recorded in `fake.downloads`.
- Socket Mode: `apps.connections.open` answers `ws://127.0.0.1:PORT/socket`; the fake says
  `hello`, `send_envelope` pushes `events_api` / `slash_commands` envelopes and `fake.acks`
  records what the app acknowledged.

For the Events API over HTTP, the module-level builders (`app_mention`, `channel_message`,
`dm_message`, `file_share`, `event_callback`, `slash_command`) make payloads, `sign` the
headers, and `post_event` delivers them signed to an app served with `serve` (e.g. Bolt's
`app.web_app()`).

slack-sdk sends `chat.postMessage` / `chat.update` / `chat.postEphemeral` as JSON bodies,
`auth.test` / `chat.delete` / `apps.connections.open` as POSTs with query-string parameters,
and `users.info` / `conversations.info` as GETs: `Call.args` merges query, form and JSON.
"""

# The wait_* helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import WSMsgType, web

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T1"
APP_ID = "A1"

# One counter for every ts this module makes (user messages and bot replies alike), so a
# reply's ts always sorts after the message it answers, as on Slack.
_ts_counter = itertools.count(1)
_event_counter = itertools.count(1)
_trigger_counter = itertools.count(1)
_file_counter = itertools.count(1)

# What files.slack.com answers a download without the bot token or the files:read scope: its
# sign-in page, with HTTP 200 (shortened).
SIGN_IN_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><meta charset="utf-8">'
    "<title>Slack</title></head><body><h1>Sign in to Slack</h1></body></html>"
)


def next_ts() -> str:
    """A fresh message timestamp: "1700000001.000100", "1700000002.000100", ..."""
    return f"{1_700_000_000 + next(_ts_counter)}.000100"


@dataclass
class Call:
    """One Web API request as the fake received it, and how it was answered."""

    method: str  # "chat.postMessage"
    args: dict[str, Any]  # query string, form fields and JSON body merged
    headers: dict[str, str]
    at: float  # time.monotonic()
    status: int = 200  # the HTTP status answered; 0: the connection was dropped unanswered
    ok: bool = True  # the answer said `ok: true` (the call took effect)

    @property
    def token(self) -> str | None:
        """The token sent as `Authorization: Bearer ...` (or, legacy, as a `token` field)."""
        for name, value in self.headers.items():
            if name.lower() == "authorization" and value.startswith("Bearer "):
                return value.removeprefix("Bearer ")
        token = self.args.get("token")
        return str(token) if token is not None else None


@dataclass
class Posted:
    """One POST to a `response_url` (what Bolt's `respond` sends)."""

    path: str  # "/respond/3"
    body: dict[str, Any]
    headers: dict[str, str]
    at: float


@dataclass
class HostedFile:
    """A file users shared, as the fake serves it."""

    id: str
    data: bytes
    mimetype: str
    chunked: bool  # sent without Content-Length, in pieces


@dataclass
class Download:
    """One GET of a file URL (`/files-pri/...`) as the fake received it."""

    path: str  # "/files-pri/T1-F0000000001/download/cat.png"
    headers: dict[str, str]
    at: float
    served: bool = False  # the file's bytes were sent (not the sign-in page, not a 404)

    @property
    def token(self) -> str | None:
        """The token sent as `Authorization: Bearer ...`."""
        for name, value in self.headers.items():
            if name.lower() == "authorization" and value.startswith("Bearer "):
                return value.removeprefix("Bearer ")
        return None


@dataclass
class Failure:
    error: str
    status: int
    retry_after: int | None


@dataclass
class Fault:
    """One step of an `outage`: how the Web API misbehaves, for `times` calls or `seconds`.

    kind "status": answer HTTP `status` with `body` (None: Slack's JSON `ok: false` with
    `error`) as `content_type`; "drop": close the connection without an answer (the call
    is recorded, not applied); "refuse": stop listening for `seconds` (connections are
    refused; nothing is recorded), then listen again on the same port.
    A step with `seconds` lasts that long from the first call it answers; otherwise it
    answers `times` calls.
    """

    kind: str = "status"
    status: int = 502
    body: str | None = None
    content_type: str = "application/json"
    error: str = "internal_error"
    times: int = 1
    seconds: float = 0.0
    started: float | None = None  # set when it first answers a call


def server_error(status: int = 502, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx with Slack's JSON error body."""
    return Fault(status=status, times=times, seconds=seconds)


def html_error(status: int = 502, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx with an HTML page, as a load balancer in front of Slack sends it."""
    body = f"<html><head><title>{status}</title></head><body>Bad Gateway</body></html>"
    return Fault(status=status, body=body, content_type="text/html", times=times, seconds=seconds)


def not_json_error(status: int = 503, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx that claims to be JSON but is not (slack_sdk fails to parse it)."""
    return Fault(
        status=status, body="<html>Service Unavailable</html>", times=times, seconds=seconds
    )


def empty_error(status: int = 503, *, times: int = 1, seconds: float = 0.0) -> Fault:
    """A 5xx with no body at all."""
    return Fault(status=status, body="", content_type="text/plain", times=times, seconds=seconds)


def dropped(*, times: int = 1, seconds: float = 0.0) -> Fault:
    """The connection closes before any answer."""
    return Fault(kind="drop", status=0, times=times, seconds=seconds)


def refused(seconds: float) -> Fault:
    """The port refuses connections for `seconds` (Slack unreachable)."""
    return Fault(kind="refuse", status=0, seconds=seconds)


Handler = Callable[[dict[str, Any]], Mapping[str, Any]]


class FakeSlack:
    """`async with FakeSlack() as fake:` then `AsyncWebClient(base_url=fake.api_url)`."""

    def __init__(self, *, team_id: str = TEAM_ID, bot_user_id: str = BOT_USER_ID) -> None:
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = BOT_ID
        self.app_id = APP_ID
        self.calls: list[Call] = []
        # ts -> {"ts", "channel", "text", "thread_ts", "user", "bot_id", "blocks", "versions"}
        self.messages: dict[str, dict[str, Any]] = {}
        self.deleted: dict[str, dict[str, Any]] = {}
        self.users: dict[str, str] = {}  # user id -> display name, for users.info
        self.channels: dict[str, dict[str, Any]] = {}  # extra fields for conversations.info
        self.text_limit: int | None = None  # longer chat.postMessage/update text: msg_too_long
        self.responses: list[Posted] = []  # posts to response_urls that were answered 200
        self.failed_responses: list[Posted] = []  # posts an outage answered with a fault
        self.envelopes: list[dict[str, Any]] = []  # sent over Socket Mode
        self.acks: list[dict[str, Any]] = []  # {"envelope_id": ..., "payload"?: ...}
        self.connection_count = 0  # Socket Mode connections accepted so far
        self.refusals: list[tuple[float, float]] = []  # (start, end) of each refusal window
        self.bot_token = "xoxb-test"  # what file downloads must carry
        self.files_read = True  # the app has the files:read scope
        self.files: dict[str, HostedFile] = {}  # by file id, from `upload`
        self.downloads: list[Download] = []
        self.port = 0
        self._failures: defaultdict[str, deque[Failure]] = defaultdict(deque)
        self._faults: deque[Fault] = deque()
        self._fault_methods: frozenset[str] | None = None
        self._refusing: asyncio.Task[None] | None = None
        self._site: web.TCPSite | None = None
        self._handlers: dict[str, Handler] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._response_urls = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL for `AsyncWebClient(base_url=...)`, with its trailing slash."""
        return f"{self.base_url}/api/"

    @property
    def socket_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/socket"

    def new_response_url(self) -> str:
        """A fresh `response_url` on the fake; what is POSTed there lands in `responses`."""
        return f"{self.base_url}/respond/{next(self._response_urls)}"

    @property
    def response_url(self) -> str:
        """Same as `new_response_url()`: each read gives a new URL."""
        return self.new_response_url()

    # --- scripting -------------------------------------------------------------------------
    def fail_next(
        self,
        method: str,
        error: str = "ratelimited",
        *,
        status: int | None = None,
        retry_after: int | None = None,
    ) -> None:
        """Make the next call to `method` fail; queued failures are used in order.

        `ratelimited` answers HTTP 429 with `Retry-After` (default 1 s) unless `status` says
        otherwise; any other error answers HTTP 200 `{"ok": false, "error": error}`.
        """
        if status is None:
            status = 429 if error == "ratelimited" else 200
        if status == 429 and retry_after is None:
            retry_after = 1
        self._failures[method].append(Failure(error, status, retry_after))

    def outage(self, *faults: Fault, methods: Iterable[str] | None = None) -> None:
        """Script an unhealthy Slack: the faults apply in order to the next Web API calls (of
        `methods`, or of every method; "response_url" names posts to response_urls), then
        the API is healthy again. A "refuse" step
        starts as soon as the step before it is used up (at once when it comes first).
        `outage_over()` waits for the end. Call from the test's event loop."""
        self._faults.extend(replace(fault) for fault in faults)
        self._fault_methods = frozenset(methods) if methods is not None else None
        self._maybe_refuse()

    @property
    def in_outage(self) -> bool:
        return bool(self._faults)

    async def outage_over(self, timeout: float = 30) -> None:
        """Wait until every scripted fault was used up."""
        await self.wait_for(lambda: not self._faults, timeout, what="the end of the outage")

    def handle(self, method: str, handler: Handler) -> None:
        """Answer `method` with `handler(args)` (`ok: true` is added unless it says `ok`)."""
        self._handlers[method] = handler

    def slash_command(
        self, command: str = "/parley", text: str = "", **options: Any
    ) -> dict[str, str]:
        """`slash_command(...)` with a `response_url` pointing at this fake."""
        options.setdefault("response_url", self.new_response_url())
        options.setdefault("team_id", self.team_id)
        return slash_command(command, text, **options)

    def upload(
        self,
        name: str,
        data: bytes,
        mimetype: str,
        *,
        size: int | None = None,
        user: str = "U1",
        chunked: bool = False,
        **fields: Any,
    ) -> dict[str, Any]:
        """Host a file as if `user` had uploaded it; returns its file object, as the `files`
        of a message event carry it (https://api.slack.com/types/file).

        `size` is the size the object reports (default: the data's); `chunked` serves the
        data without Content-Length; `fields` add to or replace the object's (`mode`,
        `subtype` "slack_audio" for a voice clip ...).
        """
        file_id = f"F{next(_file_counter):010d}"
        self.files[file_id] = HostedFile(file_id, data, mimetype, chunked)
        slug = name.lower().replace(" ", "_")
        where = f"{self.base_url}/files-pri/{self.team_id}-{file_id}"
        filetype = PurePosixPath(slug).suffix.lstrip(".") or "binary"
        created = int(time.time())
        file: dict[str, Any] = {
            "id": file_id,
            "created": created,
            "timestamp": created,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": filetype,
            "pretty_type": filetype.upper(),
            "user": user,
            "user_team": self.team_id,
            "editable": False,
            "size": len(data) if size is None else size,
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": False,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{where}/{slug}",
            "url_private_download": f"{where}/download/{slug}",
            "media_display_type": mimetype.split("/")[0]
            if mimetype.startswith(("image/", "audio/", "video/"))
            else "unknown",
            "permalink": f"https://test.slack.com/files/{user}/{file_id}/{slug}",
            "permalink_public": f"https://slack-files.com/{self.team_id}-{file_id}-0a1b2c3d4e",
            "comments_count": 0,
            "is_starred": False,
            "has_rich_preview": False,
            "file_access": "visible",
        }
        file.update(fields)
        return file

    # --- reading the record ----------------------------------------------------------------
    def calls_to(self, method: str) -> list[Call]:
        """The recorded calls to one Web API method, oldest first."""
        return [call for call in self.calls if call.method == method]

    def messages_in(self, channel: str, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """The bot's live messages in a channel (or one thread of it), oldest first."""
        return [
            message
            for ts, message in sorted(self.messages.items())
            if message["channel"] == channel
            and (thread_ts is None or message.get("thread_ts") == thread_ts)
        ]

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float = 10, *, what: str = "a condition"
    ) -> None:
        """Wait until `predicate()` (no arguments) is true; re-checked on every recorded call,
        response_url post, ack and socket (dis)connection. Fails the test after `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            seen = [call.method for call in self.calls]
            raise AssertionError(
                f"FakeSlack: timed out after {timeout}s waiting for {what}; calls so far: {seen}"
            ) from None

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 10) -> list[Call]:
        """Wait until `method` was called at least `count` times; returns those calls."""
        await self.wait_for(
            lambda: len(self.calls_to(method)) >= count,
            timeout,
            what=f"{count} call(s) to {method}",
        )
        return self.calls_to(method)

    async def wait_responses(self, count: int = 1, timeout: float = 10) -> list[Posted]:
        """Wait until `count` posts to response_urls arrived; returns them all."""
        await self.wait_for(
            lambda: len(self.responses) >= count, timeout, what=f"{count} response_url post(s)"
        )
        return self.responses

    # --- Socket Mode -----------------------------------------------------------------------
    async def socket_connected(self, count: int = 1, timeout: float = 10) -> None:
        """Wait until `count` Socket Mode connections were made in all and one is open."""
        await self.wait_for(
            lambda: self.connection_count >= count and self._open_socket() is not None,
            timeout,
            what=f"Socket Mode connection #{count}",
        )

    async def send_envelope(
        self,
        payload: dict[str, Any],
        type: str = "events_api",
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        accepts_response_payload: bool | None = None,
    ) -> str:
        """Send an envelope to the newest open Socket Mode connection; returns its envelope_id.

        `events_api` takes an `event_callback(...)` body; `slash_commands` takes the command's
        fields as a dict (`slash_command(...)`), and accepts a response payload by default.
        Waits (10 s at most) for a connection first.
        """
        await self.socket_connected()
        socket = self._open_socket()
        assert socket is not None
        if accepts_response_payload is None:
            accepts_response_payload = type != "events_api"
        envelope: dict[str, Any] = {
            "envelope_id": str(uuid.uuid4()),
            "type": type,
            "accepts_response_payload": accepts_response_payload,
            "payload": payload,
        }
        if type == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        self.envelopes.append(envelope)
        await socket.send_json(envelope)
        return str(envelope["envelope_id"])

    async def wait_ack(self, envelope_id: str, timeout: float = 10) -> dict[str, Any]:
        """Wait for the app's ack of one envelope; returns it (with `payload` if any)."""
        await self.wait_for(
            lambda: self._ack(envelope_id) is not None, timeout, what=f"ack of {envelope_id}"
        )
        ack = self._ack(envelope_id)
        assert ack is not None
        return ack

    async def disconnect_socket(self, reason: str | None = None) -> None:
        """Drop the open Socket Mode connection(s); the client reconnects through
        `apps.connections.open`. With `reason` (e.g. "refresh_requested") the fake first sends
        Slack's `{"type": "disconnect"}` message and leaves the closing to the client."""
        for socket in list(self._sockets):
            if reason is not None:
                await socket.send_json(
                    {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake"}}
                )
            else:
                await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY)

    def _open_socket(self) -> web.WebSocketResponse | None:
        open_sockets = [socket for socket in self._sockets if not socket.closed]
        return open_sockets[-1] if open_sockets else None

    def _ack(self, envelope_id: str) -> dict[str, Any] | None:
        return next((ack for ack in self.acks if ack.get("envelope_id") == envelope_id), None)

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_post("/respond/{n}", self._respond)
        app.router.add_get("/socket", self._socket)
        app.router.add_get("/files-pri/{key}/{name}", self._file)
        app.router.add_get("/files-pri/{key}/download/{name}", self._file)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._site = site
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close Socket Mode connections and stop; close Socket Mode handlers before this."""
        if self._refusing is not None:
            self._refusing.cancel()
            await asyncio.gather(self._refusing, return_exceptions=True)
        for socket in list(self._sockets):
            await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY)
        assert self._runner is not None
        await self._runner.cleanup()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- Web API ---------------------------------------------------------------------------
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args = await _request_args(request)
        call = Call(method, args, dict(request.headers), time.monotonic())
        self.calls.append(call)
        try:
            fault = self._take_fault(method)
            if fault is not None:
                call.ok, call.status = False, fault.status
                return self._faulty_answer(request, fault)
            if self._failures[method]:
                failure = self._failures[method].popleft()
                call.ok, call.status = False, failure.status
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = str(failure.retry_after)
                return web.json_response(
                    {"ok": False, "error": failure.error}, status=failure.status, headers=headers
                )
            answer = self._answer(call)
            call.ok = bool(answer.get("ok"))
            return web.json_response(answer)
        finally:
            await self._notify()

    @staticmethod
    def _faulty_answer(request: web.Request, fault: Fault) -> web.Response:
        if fault.kind == "drop":
            assert request.transport is not None
            request.transport.close()  # the client sees the server disconnect
            return web.Response(status=500)  # never sent: the connection is closed
        if fault.body is None:
            return web.json_response({"ok": False, "error": fault.error}, status=fault.status)
        return web.Response(status=fault.status, text=fault.body, content_type=fault.content_type)

    def _take_fault(self, method: str) -> Fault | None:
        """The fault answering this call, if an outage is on and covers the method."""
        if self._fault_methods is not None and method not in self._fault_methods:
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

    def _maybe_refuse(self) -> None:
        if self._faults and self._faults[0].kind == "refuse" and self._refusing is None:
            self._refusing = asyncio.get_running_loop().create_task(self._refuse())

    async def _refuse(self) -> None:
        """Stop listening for the head fault's seconds, with every open connection closed
        (clients keep them alive, and Slack being unreachable closes them too), then listen on
        the same port again."""
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
        await self._notify()

    def _answer(self, call: Call) -> dict[str, Any]:
        if call.method in self._handlers:
            return {"ok": True, **self._handlers[call.method](call.args)}
        if not call.token:
            return {"ok": False, "error": "not_authed"}
        answers: dict[str, Callable[[Call], dict[str, Any]]] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.update": self._update,
            "chat.delete": self._delete,
            "chat.postEphemeral": self._post_ephemeral,
            "users.info": self._user_info,
            "conversations.info": self._conversation_info,
            "apps.connections.open": self._connections_open,
            "reactions.add": self._nothing,
            "reactions.remove": self._nothing,
        }
        answer = answers.get(call.method)
        if answer is None:
            return {"ok": False, "error": "unknown_method"}
        result = answer(call)
        return result if "ok" in result else {"ok": True, **result}

    def _nothing(self, call: Call) -> dict[str, Any]:
        return {}

    def _auth_test(self, call: Call) -> dict[str, Any]:
        return {
            "url": "https://test.slack.com/",
            "team": "Test Team",
            "user": "parley",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _text_error(self, args: dict[str, Any]) -> dict[str, Any] | None:
        text = args.get("text")
        if not text and not args.get("blocks") and not args.get("attachments"):
            return {"ok": False, "error": "no_text"}
        if self.text_limit is not None and len(str(text or "")) > self.text_limit:
            return {"ok": False, "error": "msg_too_long"}
        return None

    def _post_message(self, call: Call) -> dict[str, Any]:
        args = call.args
        channel = args.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if error := self._text_error(args):
            return error
        ts = next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "ts": ts,
            "channel": channel,
            "text": args.get("text", ""),
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
        }
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        if args.get("blocks"):
            message["blocks"] = args["blocks"]
        stored = {**message, "thread_ts": args.get("thread_ts"), "versions": [message["text"]]}
        self.messages[ts] = stored
        public = {key: value for key, value in message.items() if key != "channel"}
        return {"channel": channel, "ts": ts, "message": public}

    def _find(self, call: Call) -> dict[str, Any] | None:
        message = self.messages.get(str(call.args.get("ts")))
        if message is None or message["channel"] != call.args.get("channel"):
            return None
        return message

    def _update(self, call: Call) -> dict[str, Any]:
        message = self._find(call)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        if error := self._text_error(call.args):
            return error
        message["text"] = call.args.get("text", "")
        message["versions"].append(message["text"])
        if "blocks" in call.args:
            message["blocks"] = call.args["blocks"]
        return {
            "channel": message["channel"],
            "ts": message["ts"],
            "text": message["text"],
            "message": {"text": message["text"], "user": self.bot_user_id, "bot_id": self.bot_id},
        }

    def _delete(self, call: Call) -> dict[str, Any]:
        message = self._find(call)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self.deleted[message["ts"]] = self.messages.pop(message["ts"])
        return {"channel": message["channel"], "ts": message["ts"]}

    def _post_ephemeral(self, call: Call) -> dict[str, Any]:
        if not call.args.get("channel") or not call.args.get("user"):
            return {"ok": False, "error": "channel_not_found"}
        if error := self._text_error(call.args):
            return error
        return {"message_ts": next_ts()}

    def _user_info(self, call: Call) -> dict[str, Any]:
        user_id = str(call.args.get("user"))
        if user_id not in self.users:
            return {"ok": False, "error": "user_not_found"}
        display = self.users[user_id]
        return {
            "user": {
                "id": user_id,
                "team_id": self.team_id,
                "name": display.lower().replace(" ", "."),
                "real_name": display,
                "is_bot": False,
                "deleted": False,
                "tz": "Europe/London",
                "profile": {"display_name": display, "real_name": display},
            }
        }

    def _conversation_info(self, call: Call) -> dict[str, Any]:
        channel_id = str(call.args.get("channel"))
        is_im = channel_id.startswith("D")
        channel: dict[str, Any] = {
            "id": channel_id,
            "is_channel": not is_im and not channel_id.startswith("G"),
            "is_group": channel_id.startswith("G"),
            "is_im": is_im,
            "is_mpim": False,
            "is_private": not channel_id.startswith("C"),
            "is_member": True,
            "is_archived": False,
        }
        if is_im:
            channel["user"] = "U1"
        else:
            channel["name"] = f"channel-{channel_id.lower()}"
        channel.update(self.channels.get(channel_id, {}))
        return {"channel": channel}

    def _connections_open(self, call: Call) -> dict[str, Any]:
        if not (call.token or "").startswith("xapp-"):
            return {"ok": False, "error": "not_allowed_token_type"}
        return {"url": self.socket_url}

    # --- response_url ----------------------------------------------------------------------
    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else {}
        posted = Posted(request.path, body, dict(request.headers), time.monotonic())
        try:
            # An outage covers response_urls too when its methods include "response_url".
            fault = self._take_fault("response_url")
            if fault is not None:
                self.failed_responses.append(posted)
                return self._faulty_answer(request, fault)
            self.responses.append(posted)
            return web.Response(text="ok")
        finally:
            await self._notify()

    # --- files -----------------------------------------------------------------------------
    async def _file(self, request: web.Request) -> web.StreamResponse:
        download = Download(request.path, dict(request.headers), time.monotonic())
        self.downloads.append(download)
        try:
            team, _, file_id = request.match_info["key"].partition("-")
            if download.token != self.bot_token or not self.files_read:
                return web.Response(text=SIGN_IN_PAGE, content_type="text/html")
            hosted = self.files.get(file_id)
            if hosted is None or team != self.team_id:
                return web.Response(
                    status=404,
                    text="<html><body>File not found</body></html>",
                    content_type="text/html",
                )
            download.served = True
            if not hosted.chunked:
                return web.Response(body=hosted.data, content_type=hosted.mimetype)
            response = web.StreamResponse(headers={"Content-Type": hosted.mimetype})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(hosted.data), 8192):
                await response.write(hosted.data[start : start + 8192])
            await response.write_eof()
            return response
        finally:
            await self._notify()

    # --- Socket Mode -----------------------------------------------------------------------
    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()  # answers the SDK's pings itself
        await socket.prepare(request)
        self.connection_count += 1
        await socket.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {
                    "host": "applink-fake",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": self.app_id},
            }
        )
        self._sockets.append(socket)
        await self._notify()
        try:
            async for frame in socket:
                if frame.type != WSMsgType.TEXT:
                    continue
                data = json.loads(frame.data)
                if isinstance(data, dict) and "envelope_id" in data:
                    self.acks.append(data)
                    await self._notify()
        finally:
            self._sockets.remove(socket)
            await self._notify()
        return socket


async def _request_args(request: web.Request) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return args
    if request.content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            args.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for name, value in (await request.post()).items():
            args[name] = value.filename if isinstance(value, web.FileField) else value
    return args


# --- signed HTTP events ------------------------------------------------------------------


def sign(secret: str, body: bytes | str, timestamp: int | None = None) -> dict[str, str]:
    """The `X-Slack-Signature` / `X-Slack-Request-Timestamp` headers Slack sends with `body`."""
    if timestamp is None:
        timestamp = int(time.time())
    raw = body.encode() if isinstance(body, str) else body
    base = f"v0:{timestamp}:".encode() + raw
    digest = hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Signature": f"v0={digest}", "X-Slack-Request-Timestamp": str(timestamp)}


async def post_event(
    url: str,
    body: Mapping[str, Any] | bytes | str,
    *,
    secret: str,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
    timestamp: int | None = None,
    form: bool | None = None,
) -> tuple[int, str]:
    """POST a payload to the app as Slack would, signed with `secret`; returns (status, text).

    A dict is sent as JSON, or form-encoded when `form` is true (by default: when it has a
    `command` field, i.e. a slash command). Bytes/str are sent as they are (as JSON).
    `retry_num` adds `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`, as Slack's redeliveries do.
    """
    if isinstance(body, Mapping):
        if form is None:
            form = "command" in body
        if form:
            raw = urlencode({key: str(value) for key, value in body.items()}).encode()
        else:
            raw = json.dumps(body).encode()
    else:
        raw = body.encode() if isinstance(body, str) else body
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    headers = {"Content-Type": content_type, **sign(secret, raw, timestamp)}
    if retry_num is not None:
        headers["X-Slack-Retry-Num"] = str(retry_num)
        headers["X-Slack-Retry-Reason"] = retry_reason
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=raw, headers=headers) as response,
    ):
        return response.status, await response.text()


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Serve an aiohttp app (e.g. Bolt's `app.web_app(path=...)`) on 127.0.0.1, a free port;
    yields its base URL "http://127.0.0.1:PORT"."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# --- payload builders ----------------------------------------------------------------------


def event_callback(
    event: dict[str, Any], *, event_id: str | None = None, team_id: str = TEAM_ID
) -> dict[str, Any]:
    """The Events API envelope around `event`, as delivered over HTTP or in `events_api`."""
    return {
        "token": "verification-token",
        "team_id": team_id,
        "context_team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{next(_event_counter):08d}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def _message_event(
    type_: str,
    text: str,
    *,
    user: str,
    channel: str,
    ts: str | None,
    thread_ts: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    ts = ts or next_ts()
    event: dict[str, Any] = {
        "type": type_,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel": channel,
        "team": TEAM_ID,
        "client_msg_id": str(uuid.uuid4()),
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    event.update(extra)
    return event


def app_mention(
    text: str,
    *,
    user: str = "U1",
    channel: str = "C1",
    ts: str | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An `app_mention` event; `text` is verbatim, so include "<@UBOT>" yourself."""
    return _message_event(
        "app_mention", text, user=user, channel=channel, ts=ts, thread_ts=thread_ts, extra=extra
    )


def channel_message(
    text: str,
    *,
    user: str = "U1",
    channel: str = "C1",
    ts: str | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `message` event in a public channel (`channel_type` "channel")."""
    return _message_event(
        "message",
        text,
        user=user,
        channel=channel,
        ts=ts,
        thread_ts=thread_ts,
        extra={"channel_type": "channel", **extra},
    )


def dm_message(
    text: str,
    *,
    user: str = "U1",
    channel: str = "D1",
    ts: str | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `message` event in a direct message with the bot (`channel_type` "im")."""
    return _message_event(
        "message",
        text,
        user=user,
        channel=channel,
        ts=ts,
        thread_ts=thread_ts,
        extra={"channel_type": "im", **extra},
    )


def file_share(
    files: list[dict[str, Any]],
    text: str = "",
    *,
    user: str = "U1",
    channel: str = "D1",
    ts: str | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `message` event of subtype `file_share`: `files` (from `FakeSlack.upload`) shared
    with `text` as their caption, by default in a DM (`channel_type` from the channel id)."""
    channel_type = "im" if channel.startswith("D") else "channel"
    return _message_event(
        "message",
        text,
        user=user,
        channel=channel,
        ts=ts,
        thread_ts=thread_ts,
        extra={
            "subtype": "file_share",
            "files": files,
            "upload": False,
            "display_as_bot": False,
            "channel_type": channel_type,
            **extra,
        },
    )


def slash_command(
    command: str = "/parley",
    text: str = "",
    user_id: str = "U1",
    channel_id: str = "C1",
    *,
    response_url: str = "",
    user_name: str = "alice",
    channel_name: str | None = None,
    team_id: str = TEAM_ID,
    trigger_id: str | None = None,
) -> dict[str, str]:
    """A slash command's form fields (also the `slash_commands` envelope's payload).

    `FakeSlack.slash_command(...)` fills `response_url` with one on the fake.
    """
    if channel_name is None:
        channel_name = "directmessage" if channel_id.startswith("D") else f"channel-{channel_id}"
    return {
        "token": "verification-token",
        "team_id": team_id,
        "team_domain": "test",
        "channel_id": channel_id,
        "channel_name": channel_name,
        "user_id": user_id,
        "user_name": user_name,
        "command": command,
        "text": text,
        "api_app_id": APP_ID,
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger_id or f"{next(_trigger_counter)}.1.fake-trigger",
    }
