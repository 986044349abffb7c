"""The Slack runtime: slack-bolt's AsyncApp in Socket Mode or over HTTP, feeding the scheduler.

Everything Slack-specific that is pure (payloads, keys, mrkdwn) lives in translate.py. This
module owns the SDK objects, decides whether a message is for the bot, stores it (through
`ChatAdapter.accept`) before Slack is acknowledged, and builds the replies the scheduler
shows: a placeholder in the thread, throttled `chat.update`s and further thread messages, or,
for `/parley`, private (ephemeral) answers through the command's `response_url`. It also
downloads the files people share (`fetch`), when whichever process runs the turn asks.

Acknowledging only after the message is stored: Bolt normally acks an event (HTTP 200, or the
Socket Mode envelope ack) before its listener runs. With `process_before_response=True` the
listener runs first and Bolt answers with what it left behind, so our listeners do the short
part of the work only (parse, a settings read, the name from a cache, one transaction) and
an `AcceptFailed` becomes HTTP 503 / no envelope ack, which makes Slack deliver the event
again. The scheduler does the rest, in this process or, after a crash, in another.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.socket_mode.async_internals import (
    run_async_bolt_app,
    send_async_response,
)
from slack_bolt.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.base import AcceptFailed, ChatAdapter
from adapters.http import HttpServer
from adapters.inflight import InFlight
from adapters.reach import unreachable
from adapters.rendering import MessageSink, RateLimited, Rendering
from adapters.slack.translate import (
    SlackMessage,
    conversation_key,
    event_id_for,
    markdown_to_mrkdwn,
    parse_event,
    replace_user_mentions,
)
from core.attachments import Attachment, TooLarge
from core.commands import ADMIN_COMMANDS, COMMANDS
from core.config import Settings
from core.errors import ConfigError
from core.events import ConversationKey, Inbound
from core.locks import KeyedLocks
from core.scheduler import DeliveryFailed, MessageGone, Scheduler
from core.storage.base import ChannelSettings, SessionStore
from core.storage.retry import DatabaseUnavailable

log = logging.getLogger(__name__)

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
# chat.update rejects text past about 4,000 characters (msg_too_long); leave room for markup.
MESSAGE_LIMIT = 3_900
PLACEHOLDER = "…"
# auth.test's errors that mean the token itself is wrong (any other is Slack failing).
TOKEN_REFUSED = frozenset(
    {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
)
NAME_CACHE_SECONDS = 3600.0
NAME_CACHE_SIZE = 5000
# users.info runs before the ack (the name is stored with the message). Slack wants the ack
# within 3 seconds, so a lookup that takes longer than this is not waited for: the message
# goes in under the user's id and the lookup, left running, fills the cache for the next one.
NAME_LOOKUP_SECONDS = 1.0
# A failed lookup (unknown user, Slack down) is not tried again for every message meanwhile.
NAME_FAILURE_SECONDS = 60.0
KNOWN_COMMANDS = frozenset(COMMANDS) | frozenset(ADMIN_COMMANDS)
# Slack does not redeliver a slash command: when it cannot be stored, the user is told at once.
COMMAND_NOT_STORED = (
    "Sorry, I can't take that right now (my database is unavailable). Please try again in a minute."
)

# Where Slack serves files (files.slack.com, GovSlack's files.slack-gov.com): the bot token is
# sent to these hosts, and to SLACK_API_URL's own host (a proxy, the tests' fake), only.
FILE_DOMAINS = ("slack.com", "slack-gov.com")
DOWNLOAD_CHUNK = 64 * 1024

# Web API errors that no retry can fix: the reply is given up on (DeliveryFailed) instead of
# being tried again until the delivery deadline. Anything else (5xx, `internal_error`,
# `fatal_error`, bodies that are not JSON, network errors) is retried with backoff.
PERMANENT_ERRORS = frozenset(
    {
        "account_inactive",
        "as_user_not_supported",
        "cannot_reply_to_message",
        "cant_delete_message",
        "cant_update_message",
        "channel_not_found",
        "edit_window_closed",
        "ekm_access_denied",
        "invalid_arguments",
        "invalid_auth",
        "invalid_blocks",
        "is_archived",
        "missing_scope",
        "msg_too_long",
        "no_permission",
        "no_text",
        "not_allowed_token_type",
        "not_authed",
        "not_in_channel",
        "org_login_required",
        "restricted_action",
        "restricted_action_non_threadable_channel",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "team_access_not_granted",
        "token_expired",
        "token_revoked",
    }
)


class _QuietBolt(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment itself and, since we pass a client
    (for SLACK_API_URL) and an authorize function, warns at every start that the token is
    unused: not news to anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "`token` will be unused" not in message and "will be ignored" not in message


bolt_log = logging.getLogger(f"{__name__}.bolt")
bolt_log.addFilter(_QuietBolt())


def address_of(message: SlackMessage) -> dict[str, Any]:
    """Where the answer to `message` goes, as stored with its turn."""
    # In a DM the answer follows the message, unless the user wrote in a thread.
    thread = message.thread_ts if message.in_thread or not message.is_direct else ""
    return {"channel": message.channel, "thread_ts": thread}


def ordering_key(payload: Mapping[str, Any]) -> tuple[str, str] | None:
    """The thread a raw payload (event callback or slash command) belongs to, for ordering.

    Computed from the payload alone, before anything is awaited: messages of one thread are
    accepted one at a time in the order they arrived. A DM outside threads is one
    conversation, so it is one key. None: a payload that is not a message (nothing to order).
    """
    event = payload.get("event")
    if isinstance(event, Mapping):
        channel = str(event.get("channel") or "")
        if not channel:
            return None
        thread = str(event.get("thread_ts") or "")
        direct = event.get("channel_type") == "im" or channel.startswith("D")
        return channel, thread or ("" if direct else str(event.get("ts") or ""))
    if payload.get("command"):
        return str(payload.get("channel_id") or ""), f"command:{payload.get('user_id') or ''}"
    return None


class SlackSink:
    """Messages in one thread, for StreamingReply.

    Errors are sorted for StreamingReply: Slack's rate limit becomes RateLimited, an error no
    retry can fix becomes DeliveryFailed, and everything else (a 5xx with an HTML or empty
    body, a body that is not JSON, a refused or dropped connection) propagates as it is, so
    the final text is tried again with backoff until it lands.
    """

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str) -> None:
        self._client = client
        self._channel = channel
        self._thread_ts = thread_ts

    async def post(self, text: str) -> str:
        thread = {"thread_ts": self._thread_ts} if self._thread_ts else {}
        response = await _call(
            self._client.chat_postMessage,
            channel=self._channel,
            text=text,
            unfurl_links=False,
            unfurl_media=False,
            **thread,
        )
        return str(response["ts"])

    async def edit(self, message_id: str, text: str) -> None:
        await _call(self._client.chat_update, channel=self._channel, ts=message_id, text=text)

    async def delete(self, message_id: str) -> None:
        await _call(self._client.chat_delete, channel=self._channel, ts=message_id)


async def _call(method: Callable[..., Awaitable[Any]], **arguments: Any) -> Any:
    try:
        return await method(**arguments)
    except SlackApiError as exc:
        response = exc.response
        error = _api_error(exc)
        if _status(response) == 429 or error == "ratelimited":
            raise RateLimited(_retry_after(response)) from exc
        if error == "message_not_found":
            raise MessageGone(error) from exc
        if error in PERMANENT_ERRORS:
            raise DeliveryFailed(f"Slack refused the message: {error}") from exc
        raise


def _status(response: Any) -> int | None:
    """The HTTP status of a SlackApiError's response. slack_sdk puts its own response there,
    except for a body it could not parse as JSON, where it is aiohttp's (`status`)."""
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(response, "status", None)
    return status if isinstance(status, int) else None


def _api_error(exc: BaseException | None) -> str | None:
    """Slack's `error` code, when the response was JSON (an HTML 5xx page has none)."""
    if not isinstance(exc, SlackApiError):
        return None
    data = getattr(exc.response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return str(error) if error else None


def _auth_test_failed(exc: SlackApiError) -> ConfigError:
    """The start-up line for auth.test's error: a refused token, or Slack failing."""
    error = _api_error(exc)
    if error in TOKEN_REFUSED:
        return ConfigError(
            f"SLACK_BOT_TOKEN: Slack refused it ({error}); copy the "
            "Bot User OAuth Token from the app's OAuth & Permissions page"
        )
    answer = error or f"HTTP {getattr(exc.response, 'status_code', '?')}"
    return ConfigError(
        f"SLACK_API_URL: Slack answered auth.test with {answer}; try again later, "
        "or check SLACK_API_URL"
    )


def _retry_after(response: Any) -> float:
    headers = getattr(response, "headers", None) or {}
    try:
        return max(float(headers.get("Retry-After", 1)), 0.0)
    except (TypeError, ValueError):
        return 1.0


class FileDownloadError(Exception):
    """Slack did not serve a file: the message says why, for the operator's log."""


class ResponseUrlError(Exception):
    """A response_url post failed in a way worth retrying (a 5xx)."""


class EphemeralSink:
    """Private answers to one `/parley` command, posted through its `response_url`.

    Slack keeps a response_url for 30 minutes and 5 posts. An ephemeral message can be
    neither edited nor deleted, so the scheduler only ever asks for the final text
    (`FinalOnly`), posted once per part; `edit` can only post the part again (after a crash
    between parts) and `delete` does nothing.
    """

    def __init__(self, response_url: str) -> None:
        self._webhook = AsyncWebhookClient(response_url)
        self._posted = 0

    async def post(self, text: str) -> str:
        await self._send(text)
        self._posted += 1
        return f"ephemeral:{self._posted}"

    async def edit(self, message_id: str, text: str) -> None:
        await self._send(text)

    async def delete(self, message_id: str) -> None:
        return None

    async def _send(self, text: str) -> None:
        response = await self._webhook.send(
            text=text, response_type="ephemeral", unfurl_links=False, unfurl_media=False
        )
        status = response.status_code
        if status == 429:
            raise RateLimited(_retry_after(response))
        if 400 <= status < 500:
            # expired_url, used_url (5 posts), invalid payload: no retry can fix these.
            raise DeliveryFailed(f"response_url refused the answer: {status} {response.body}")
        if status != 200:
            raise ResponseUrlError(f"response_url answered {status}: {response.body[:200]}")


class _OrderedSocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler, holding the thread's lock from before the first await.

    slack_sdk starts one task per envelope, in the order they arrived, and each reaches this
    method without suspending; the lock is taken right here, so a thread's envelopes are
    dispatched (and so stored) in arrival order. The ack goes out after the dispatch, and
    only for a 200: Bolt answers 503 when the message could not be stored, and an envelope
    without an ack is delivered again by Slack.
    """

    def __init__(
        self,
        app: AsyncApp,
        app_token: str,
        *,
        hold: Callable[[Mapping[str, Any]], AbstractAsyncContextManager[None]],
        inflight: InFlight,
    ) -> None:
        super().__init__(app, app_token)
        self._hold = hold
        self._inflight = inflight

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        started = time.time()
        with self._inflight.track():
            payload = req.payload if isinstance(req.payload, Mapping) else {}
            async with self._hold(payload):
                response = await run_async_bolt_app(self.app, req)
            await send_async_response(client, req, response, started)


class SlackBot(ChatAdapter):
    """`async with SlackBot(scheduler=..., store=..., settings=..., http=...) as bot:`.

    Socket Mode when SLACK_APP_TOKEN is set (no public URL needed), otherwise HTTP events at
    PARLEY_HTTP_HOST:PARLEY_HTTP_PORT/slack/events, verified with SLACK_SIGNING_SECRET.
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        store: SessionStore,
        settings: Settings,
        http: HttpServer | None = None,
        **_: object,
    ) -> None:
        super().__init__(scheduler=scheduler, store=store, settings=settings)
        assert settings.slack_bot_token is not None
        self._token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(token=self._token, base_url=str(settings.slack_api_url))
        secret = settings.slack_signing_secret

        # A plain function: Bolt passes arguments by the names it finds, `self` included.
        async def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            return self._identity(enterprise_id, team_id)

        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret.get_secret_value() if secret else None,
            # Socket Mode connections are authenticated by the app token instead.
            request_verification_enabled=secret is not None,
            # Listeners run before Bolt answers Slack, so the ack means "stored".
            process_before_response=True,
            # The identity comes from our auth.test at start. Bolt's own authorization calls
            # auth.test on the first event, and acks that event unhandled (HTTP 200) if the
            # Web API errs at that moment: the message would be lost.
            authorize=authorize,
            logger=bolt_log,
        )
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.command("/parley")(self._on_command)
        # Every other event and action the app may be subscribed to is acknowledged (200):
        # Bolt answers 404 to what no listener matches, and Slack retries those.
        self.app.event(re.compile(".*"))(_ignore)
        self.app.action(re.compile(".*"))(_acknowledge)
        self.app.error(self._on_error)
        self.bot_user_id = ""
        self._bot_id = ""
        self._team_id = ""
        self._threads: KeyedLocks[tuple[str, str]] = KeyedLocks()
        self._names: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (name, until)
        self._lookups: dict[str, asyncio.Task[str | None]] = {}
        self._socket: _OrderedSocketModeHandler | None = None
        self._handlers = InFlight()  # Socket Mode envelopes being handled
        if settings.slack_app_token is None:
            assert http is not None, "HTTP events need the shared HTTP server"
            http.add_post(EVENTS_PATH, self._on_http)

    @property
    def ready(self) -> bool:
        """Connected (for /readyz): the Socket Mode WebSocket is open (not stale); with HTTP
        events, the start checked the token, and Slack reaches us."""
        if self._socket is None:
            return bool(self.bot_user_id)
        client = self._socket.client
        session = client.current_session
        return not (client.closed or client.stale or session is None or session.closed)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SlackBot:
        # One connection pool for every Web API call: without a session, slack_sdk opens (and
        # TLS-handshakes) a new connection per call. Its timeout applies only to sessions it
        # makes itself, so this one carries it.
        self.client.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.client.timeout)
        )
        try:
            identity = await self.client.auth_test()
        except BaseException as exc:
            await self.client.session.close()
            if isinstance(exc, SlackApiError):
                raise _auth_test_failed(exc) from None
            if isinstance(exc, aiohttp.ClientError | TimeoutError):
                url = str(self._settings.slack_api_url)
                raise unreachable("Slack", "SLACK_API_URL", url, exc) from None
            raise
        self.bot_user_id = str(identity["user_id"])
        self._bot_id = str(identity.get("bot_id") or "")
        self._team_id = str(identity.get("team_id") or "")
        app_token = self._settings.slack_app_token
        if app_token is not None:
            # apps.connections.open goes through the app's client, so SLACK_API_URL applies.
            self._socket = _OrderedSocketModeHandler(
                self.app,
                app_token.get_secret_value(),
                hold=self._hold,
                inflight=self._handlers,
            )
            try:
                # slack_sdk retries a refused app token forever: ask for the first WebSocket
                # URL here (the socket then uses it), so that a wrong token stops the start.
                opened = await self.client.apps_connections_open(
                    app_token=app_token.get_secret_value()
                )
                self._socket.client.wss_uri = str(opened["url"])
            except SlackApiError as exc:
                if _api_error(exc) in TOKEN_REFUSED:
                    await self._socket.close_async()  # type: ignore[no-untyped-call]
                    await self.client.session.close()
                    raise ConfigError(
                        f"SLACK_APP_TOKEN: Slack refused it ({_api_error(exc)}); copy the "
                        "App-Level Token (connections:write) from the app's Basic Information page"
                    ) from None
                # Anything else (ratelimited, a 5xx) is slack_sdk's to retry, as after a start.
            await self._socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("Slack: connected in Socket Mode as %s", self.bot_user_id)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # The HTTP server has stopped already. Envelopes being handled get to send their ack
        # before the socket closes; any that arrive meanwhile are stored (for the next start)
        # or, unacknowledged, delivered again by Slack.
        await self._handlers.finish()
        if self._socket is not None:
            await self._socket.close_async()  # type: ignore[no-untyped-call]
            # close_async cancels the client's tasks without waiting for them to end.
            client = self._socket.client
            tasks = [
                client.message_processor,
                client.current_session_monitor,
                client.message_receiver,
            ]
            await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)
            await self._handlers.finish()
        await self.stop()  # background refusals
        lookups = list(self._lookups.values())
        for task in lookups:
            task.cancel()
        await asyncio.gather(*lookups, return_exceptions=True)
        if self.client.session is not None:
            await self.client.session.close()

    def _identity(self, enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
        return AuthorizeResult(
            enterprise_id=enterprise_id,
            team_id=team_id or self._team_id,
            bot_user_id=self.bot_user_id,
            bot_id=self._bot_id,
            bot_token=self._token,
        )

    # --- receiving --------------------------------------------------------------------------

    @asynccontextmanager
    async def _hold(self, payload: Mapping[str, Any]) -> AsyncIterator[None]:
        """The thread's lock, for the dispatch of one payload (no lock for other payloads).

        Held through the dispatch, which only parses, reads the channel's settings, finds
        the author's name (cached; a miss waits NAME_LOOKUP_SECONDS at most) and stores the
        message: milliseconds as a rule, so a busy thread still acks within Slack's 3 s.
        """
        key = ordering_key(payload)
        if key is None:
            yield
            return
        async with self._threads.hold(key):
            yield

    async def _on_http(self, request: web.Request) -> web.Response:
        """HTTP events and slash commands: Bolt verifies the signature, runs the listener,
        and answers 200 once the message is stored (503 when it could not be)."""
        body = await request.text()
        # From here on nothing is awaited before the thread's lock is asked for: requests
        # of one thread are dispatched in the order their bodies were read.
        bolt_request = AsyncBoltRequest(
            body=body,
            query=request.query_string,
            headers=request.headers,  # type: ignore[arg-type]
        )
        async with self._hold(_raw_payload(body, request.content_type)):
            response = await self.app.async_dispatch(bolt_request)
        return await to_aiohttp_response(response)

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        message = self._parse(event, body)
        if message is not None:
            await self._accept_message(message)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        message = self._parse(event, body)
        if message is None:
            return
        if message.is_direct:
            await self._accept_message(message)
            return
        # A mention in a channel also arrives as app_mention, which answers it; the claim
        # (keyed on channel and ts) would stop a second answer anyway.
        if message.mentions_bot or not message.in_thread:
            return
        # In a thread the bot has answered in, no mention is needed, unless the channel says
        # so. The thread's lock is held: a mention that started the thread just before this
        # message is stored already, so its conversation exists.
        thread = ConversationKey(PLATFORM, message.team, message.channel, message.thread_ts)
        try:
            settings = await self._store.channel(key=_channel(message))
            if settings.require_mention or not await self._store.conversation_exists(key=thread):
                return
        except DatabaseUnavailable as exc:
            raise AcceptFailed(str(exc)) from exc
        await self._accept_message(message, settings)

    def _parse(self, event: dict[str, Any], body: dict[str, Any]) -> SlackMessage | None:
        return parse_event(
            event,
            team_id=str(body.get("team_id") or self._team_id),
            bot_user_id=self.bot_user_id,
            bot_id=self._bot_id,
            ignore_bots=self._settings.slack_ignore_bots,
        )

    async def _accept_message(
        self, message: SlackMessage, settings: ChannelSettings | None = None
    ) -> None:
        """Stores the message for the scheduler to answer.

        Raises:
            AcceptFailed: the database stayed down; Slack must deliver the event again.
        """
        try:
            if settings is None:
                settings = await self._store.channel(key=_channel(message))
            if settings.scope not in (None, "thread"):
                # Remember the thread as the bot's, so follow-ups in it are recognized too.
                await self._store.conversation(
                    key=ConversationKey(PLATFORM, message.team, message.channel, message.thread_ts)
                )
        except DatabaseUnavailable as exc:
            raise AcceptFailed(str(exc)) from exc
        names = await self._names_of([message.user, *message.mentioned_users])
        text = replace_user_mentions(message.text, names).strip()
        if not text and not message.attachments:
            text = "/help"  # a bare mention or an empty DM: say what the bot does
        inbound = Inbound(
            key=conversation_key(message, scope=settings.scope),
            event_id=event_id_for(message),
            user_id=message.user,
            user_name=names[message.user],
            text=text,
            is_direct=message.is_direct,
            mentions_bot=message.mentions_bot,
            received_at=datetime.fromtimestamp(float(message.ts), UTC),
            attachments=message.attachments,
        )
        await self.accept(inbound, address_of(message))

    # --- files ----------------------------------------------------------------------------

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """A shared file's bytes: its URL with the bot token, as Slack serves files to apps,
        through the Web API client's connection pool (and its proxy and TLS settings).

        Raises:
            TooLarge: Slack reports it larger than `limit`, or sends more than that.
            FileDownloadError: the URL is not Slack's, Slack answered with an error, or with
                its sign-in page (the app lacks the `files:read` scope).
        """
        if attachment.size > limit:
            raise TooLarge(attachment.size)
        if not self._is_file_url(attachment.ref):
            raise FileDownloadError(f"{attachment.ref!r} is not a Slack file URL")
        session = self.client.session
        assert session is not None, "files are fetched while the bot runs"
        # A cross-origin redirect loses the Authorization header (aiohttp drops it), so the
        # token reaches the file's host only. Slow links are fine while bytes keep coming.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.client.timeout, sock_read=self.client.timeout
        )
        async with session.get(
            attachment.ref,
            headers={"Authorization": f"Bearer {self._token}"},
            proxy=self.client.proxy,
            ssl=self.client.ssl or True,
            timeout=timeout,
        ) as response:
            if response.status != 200:
                raise FileDownloadError(
                    f"Slack answered HTTP {response.status} for the file {attachment.name}"
                )
            if response.content_type == "text/html" and attachment.mime != "text/html":
                # Slack's answer to a request it does not authorize: a 200 with its sign-in
                # page, not an error.
                raise FileDownloadError(
                    f"Slack sent its sign-in page instead of the file {attachment.name}: add "
                    "the files:read scope to the app (OAuth & Permissions) and reinstall it"
                )
            if response.content_length is not None and response.content_length > limit:
                raise TooLarge(response.content_length)
            data = bytearray()
            async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                data += chunk
                if len(data) > limit:
                    raise TooLarge(max(len(data), attachment.size))
        return bytes(data)

    def _is_file_url(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme == "https" and any(
            host == domain or host.endswith(f".{domain}") for domain in FILE_DOMAINS
        ):
            return True
        api = urlsplit(str(self._settings.slack_api_url))
        return (parts.scheme, parts.netloc) == (api.scheme, api.netloc)

    # --- the /parley command --------------------------------------------------------------

    async def _on_command(
        self, ack: Callable[..., Awaitable[None]], command: dict[str, Any]
    ) -> None:
        words = str(command.get("text") or "").strip()
        first = words.split(maxsplit=1)[0].lower() if words else "help"
        team = str(command.get("team_id") or self._team_id)
        channel = str(command.get("channel_id") or "")
        user = str(command.get("user_id") or "")
        is_command = first in KNOWN_COMMANDS
        names = await self._names_of([user])
        inbound = Inbound(
            # A command acts on the channel; a question asked with /parley gets a private
            # conversation of its own in that channel, since the answer is only for the asker.
            key=ConversationKey(PLATFORM, team, channel, "" if is_command else f"private:{user}"),
            event_id=f"command:{command.get('trigger_id') or time.time_ns()}",
            user_id=user,
            user_name=names[user],
            text=f"/{words or 'help'}" if is_command else words,
            is_direct=channel.startswith("D"),
        )
        address = {"response_url": str(command.get("response_url") or ""), "channel": channel}
        try:
            await self.accept(inbound, address)
        except AcceptFailed:
            # Slack never sends a slash command again: say so now rather than fail silently.
            await ack(text=COMMAND_NOT_STORED, response_type="ephemeral")
            return
        await ack()  # the answer follows through response_url

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> BoltResponse | None:
        if isinstance(error, AcceptFailed):
            # Not acknowledged: Slack delivers the event again (HTTP: it retries after a
            # non-2xx; Socket Mode: an envelope without an ack).
            log.warning("Slack: event not stored, asking Slack to send it again: %s", error)
            return BoltResponse(status=503, body="")
        # Bolt answers 500, so Slack tries again (a few times at most); the claim makes a
        # redelivery of anything stored meanwhile harmless.
        log.error("Slack: a listener failed: %s", error, exc_info=error)
        return None

    # --- names ----------------------------------------------------------------------------

    async def _names_of(self, users: Iterable[str]) -> dict[str, str]:
        """Display names, from the cache or users.info, waiting `NAME_LOOKUP_SECONDS` at most.

        A name not found in time is the user's id for this message; the lookup goes on in
        the background and caches the name for the next message. Users are looked up
        concurrently, and one lookup per user at a time, however many messages ask.
        """
        names: dict[str, str] = {}
        missing: dict[str, asyncio.Task[str | None]] = {}
        now = time.monotonic()
        for user in dict.fromkeys(users):
            cached = self._names.get(user)
            if cached is not None and now < cached[1]:
                names[user] = cached[0]
            else:
                missing[user] = self._lookup(user)
        if missing:
            await asyncio.wait(missing.values(), timeout=NAME_LOOKUP_SECONDS)
            for user, task in missing.items():
                found = task.result() if task.done() and not task.cancelled() else None
                names[user] = found or user
        return names

    def _lookup(self, user: str) -> asyncio.Task[str | None]:
        task = self._lookups.get(user)
        if task is None:
            task = asyncio.create_task(self._look_up(user), name=f"parley-slack-name-{user}")
            self._lookups[user] = task
            task.add_done_callback(lambda _: self._lookups.pop(user, None))
        return task

    async def _look_up(self, user: str) -> str | None:
        """users.info (rate limited, Tier 4), caching the answer, a failure for a while."""
        try:
            name = _display_name((await self.client.users_info(user=user)).data)
        except Exception as exc:  # Slack down or the user unknown: the id will do
            log.warning("Slack: users.info for %s failed: %s", user, _api_error(exc) or exc)
            name = None
        if name is None:
            self._remember(user, user, NAME_FAILURE_SECONDS)
            return None
        self._remember(user, name, NAME_CACHE_SECONDS)
        return name

    def _remember(self, user: str, name: str, seconds: float) -> None:
        self._names[user] = (name, time.monotonic() + seconds)
        self._names.move_to_end(user)
        if len(self._names) > NAME_CACHE_SIZE:
            self._names.popitem(last=False)

    # --- replies --------------------------------------------------------------------------

    def sink(self, address: dict[str, Any], posted: Sequence[str]) -> tuple[MessageSink, Rendering]:
        rendering = Rendering(
            render=markdown_to_mrkdwn,
            limit=MESSAGE_LIMIT,
            interval=self._settings.slack_update_interval,
            placeholder=PLACEHOLDER,
        )
        if address.get("response_url"):
            return EphemeralSink(str(address["response_url"])), replace(rendering, placeholder=None)
        channel, thread = str(address["channel"]), str(address.get("thread_ts") or "")
        return SlackSink(self.client, channel, thread), rendering

    def streams(self, address: dict[str, Any]) -> bool:
        return not address.get("response_url")  # an ephemeral answer cannot be edited


async def _ignore() -> None:
    """The listener of events the bot does not act on (reactions, App Home ...)."""


async def _acknowledge(ack: Callable[[], Awaitable[None]]) -> None:
    """The listener of actions (buttons ...): the bot sends none, so there is nothing to do."""
    await ack()


def _display_name(data: Any) -> str | None:
    """The name in a users.info answer, or None when it holds none (a body without `user`,
    or with fields of other shapes: the answer is Slack's, not a promise)."""
    user = data.get("user") if isinstance(data, Mapping) else None
    if not isinstance(user, Mapping):
        return None
    profile = user.get("profile")
    display = profile.get("display_name") if isinstance(profile, Mapping) else None
    for name in (display, user.get("real_name"), user.get("name")):
        if isinstance(name, str) and name:
            return name
    return None


def _channel(message: SlackMessage) -> ConversationKey:
    return ConversationKey(PLATFORM, message.team, message.channel)


def _raw_payload(body: str, content_type: str) -> Mapping[str, Any]:
    """The payload of an HTTP request as Slack sent it, for `ordering_key` (no verification
    here: Bolt verifies the signature inside the lock, and refuses what does not match)."""
    if content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body))
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
