"""The Slack runtime: slack-bolt's AsyncApp in Socket Mode or over HTTP, driving the engine.

Everything Slack-specific that is pure (payloads, keys, mrkdwn) lives in translate.py; this
module owns the SDK objects, decides whether a message is for the bot, and turns the engine's
reply events into a placeholder, throttled `chat.update`s and thread messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.http import HttpServer
from adapters.inflight import InFlight
from adapters.rendering import RateLimited, StreamingReply, deliver
from adapters.slack.translate import (
    SlackMessage,
    conversation_key,
    event_id_for,
    markdown_to_mrkdwn,
    parse_event,
    replace_user_mentions,
)
from core.commands import ADMIN_COMMANDS, COMMANDS
from core.config import Settings
from core.conversation import Engine
from core.errors import ConfigError
from core.events import (
    CommandResult,
    ConversationKey,
    Failed,
    Final,
    Inbound,
    Refused,
    Retracted,
)
from core.storage.base import ChannelSettings, SessionStore

log = logging.getLogger(__name__)

PLATFORM = "slack"
EVENTS_PATH = "/slack/events"
# chat.update rejects text past about 4,000 characters (msg_too_long); leave room for markup.
MESSAGE_LIMIT = 3_900
PLACEHOLDER = "…"
NAME_CACHE_SECONDS = 3600.0
NAME_CACHE_SIZE = 5000
KNOWN_COMMANDS = frozenset(COMMANDS) | frozenset(ADMIN_COMMANDS)


class _QuietBolt(logging.Filter):
    """Bolt reads SLACK_BOT_TOKEN from the environment itself and, since we pass a client
    (for SLACK_API_URL), warns at every start that the token is unused: not news to anyone."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`token` will be unused" not in record.getMessage()


bolt_log = logging.getLogger(f"{__name__}.bolt")
bolt_log.addFilter(_QuietBolt())


class SlackSink:
    """Messages in one thread, for StreamingReply: Slack's rate limits become RateLimited."""

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
        if response.status_code == 429 or response.get("error") == "ratelimited":
            raise RateLimited(float(response.headers.get("Retry-After", 1))) from exc
        raise


class SlackBot:
    """`async with SlackBot(engine=..., store=..., settings=...) as bot:` serves until exit.

    Socket Mode when SLACK_APP_TOKEN is set (no public URL needed), otherwise HTTP events at
    PARLEY_HTTP_HOST:PARLEY_HTTP_PORT/slack/events, verified with SLACK_SIGNING_SECRET.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: SessionStore,
        settings: Settings,
        http: HttpServer | None = None,
    ) -> None:
        assert settings.slack_bot_token is not None
        self._engine = engine
        self._store = store
        self._settings = settings
        self.client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
            base_url=str(settings.slack_api_url),
        )
        secret = settings.slack_signing_secret
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret.get_secret_value() if secret else None,
            # Socket Mode connections are authenticated by the app token instead.
            request_verification_enabled=secret is not None,
            logger=bolt_log,
        )
        self.app.event("app_mention")(self._on_mention)
        self.app.event("message")(self._on_message)
        self.app.command("/parley")(self._on_command)
        self.app.error(self._on_error)
        self.bot_user_id = ""
        self._bot_id = ""
        self._team_id = ""
        self._names: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._socket: AsyncSocketModeHandler | None = None
        self._inflight = InFlight()
        if settings.slack_app_token is None:
            assert http is not None, "HTTP events need the shared HTTP server"
            http.add_post(EVENTS_PATH, self._on_http)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> SlackBot:
        try:
            identity = await self.client.auth_test()
        except SlackApiError as exc:
            raise ConfigError(
                f"SLACK_BOT_TOKEN: Slack refused it ({exc.response.get('error')}); copy the "
                "Bot User OAuth Token from the app's OAuth & Permissions page"
            ) from None
        self.bot_user_id = str(identity["user_id"])
        self._bot_id = str(identity.get("bot_id") or "")
        self._team_id = str(identity.get("team_id") or "")
        app_token = self._settings.slack_app_token
        if app_token is not None:
            # apps.connections.open goes through the app's client, so SLACK_API_URL applies.
            self._socket = AsyncSocketModeHandler(self.app, app_token.get_secret_value())
            await self._socket.connect_async()
            log.info("Slack: connected in Socket Mode as %s", self.bot_user_id)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._inflight.finish()  # the HTTP server has stopped already: nothing new
        if self._socket is not None:
            await self._socket.close_async()
            # close_async cancels the client's tasks without waiting for them to end.
            client = self._socket.client
            tasks = [
                client.message_processor,
                client.current_session_monitor,
                client.message_receiver,
            ]
            await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)

    # --- events ---------------------------------------------------------------------------

    async def _on_http(self, request: web.Request) -> web.Response:
        """HTTP events and slash commands: Bolt verifies the signature and acks at once."""
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        message = self._parse(event, body)
        if message is not None:
            with self._inflight.track():
                await self._answer(message)

    async def _on_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        with self._inflight.track():
            await self._on_channel_message(event, body)

    async def _on_channel_message(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        message = self._parse(event, body)
        if message is None:
            return
        if message.is_direct:
            await self._answer(message)
            return
        # A mention in a channel also arrives as app_mention, which answers it; the engine's
        # claim (keyed on channel and ts) would stop a second answer anyway.
        if message.mentions_bot or not message.in_thread:
            return
        # In a thread the bot has answered in, no mention is needed, unless the channel says so.
        settings = await self._store.channel(key=_channel(message))
        if settings.require_mention:
            return
        thread = ConversationKey(PLATFORM, message.team, message.channel, message.thread_ts)
        if await self._store.conversation_exists(key=thread):
            await self._answer(message, settings)

    def _parse(self, event: dict[str, Any], body: dict[str, Any]) -> SlackMessage | None:
        return parse_event(
            event,
            team_id=str(body.get("team_id") or self._team_id),
            bot_user_id=self.bot_user_id,
            bot_id=self._bot_id,
            ignore_bots=self._settings.slack_ignore_bots,
        )

    async def _answer(self, message: SlackMessage, settings: ChannelSettings | None = None) -> None:
        if settings is None:
            settings = await self._store.channel(key=_channel(message))
        scope = settings.scope
        names = {user: await self._name(user) for user in {message.user, *message.mentioned_users}}
        text = replace_user_mentions(message.text, names).strip() or "/help"
        inbound = Inbound(
            key=conversation_key(message, scope=scope),
            event_id=event_id_for(message),
            user_id=message.user,
            user_name=names[message.user],
            text=text,
            is_direct=message.is_direct,
            mentions_bot=message.mentions_bot,
            received_at=datetime.fromtimestamp(float(message.ts), UTC),
        )
        if scope not in (None, "thread"):
            # Remember the thread as the bot's, so follow-ups in it are recognized too.
            await self._store.conversation(
                key=ConversationKey(PLATFORM, message.team, message.channel, message.thread_ts)
            )
        # In a DM the answer follows the message, unless the user wrote in a thread.
        thread = message.thread_ts if message.in_thread or not message.is_direct else ""
        await self._reply(inbound, SlackSink(self.client, message.channel, thread))

    async def _reply(self, inbound: Inbound, sink: SlackSink) -> None:
        reply = StreamingReply(
            sink,
            render=markdown_to_mrkdwn,
            limit=MESSAGE_LIMIT,
            interval=self._settings.slack_update_interval,
            placeholder=PLACEHOLDER,
        )
        try:
            await deliver(self._engine.handle(inbound), reply)
        except Exception:
            # Slack being down or refusing a call must not take the bot down; the engine
            # has stored the user's message and its own failures come as Failed events.
            log.exception("Slack: could not deliver the reply for %s", inbound.key)
        finally:
            await reply.aclose()

    async def _name(self, user: str) -> str:
        """The user's display name, cached (users.info is rate limited, Tier 4)."""
        cached = self._names.get(user)
        now = time.monotonic()
        if cached is not None and now - cached[1] < NAME_CACHE_SECONDS:
            return cached[0]
        try:
            profile = (await self.client.users_info(user=user))["user"]
            name = (
                profile.get("profile", {}).get("display_name")
                or profile.get("real_name")
                or profile.get("name")
                or user
            )
        except SlackApiError as exc:
            log.warning("Slack: users.info for %s failed: %s", user, exc.response.get("error"))
            return user
        self._names[user] = (str(name), now)
        self._names.move_to_end(user)
        if len(self._names) > NAME_CACHE_SIZE:
            self._names.popitem(last=False)
        return str(name)

    # --- the /parley command --------------------------------------------------------------

    async def _on_command(
        self,
        ack: Callable[..., Awaitable[None]],
        command: dict[str, Any],
        respond: Callable[..., Awaitable[Any]],
    ) -> None:
        await ack()  # within Slack's 3 seconds; the answer follows through response_url
        with self._inflight.track():
            await self._answer_command(command, respond)

    async def _answer_command(
        self, command: dict[str, Any], respond: Callable[..., Awaitable[Any]]
    ) -> None:
        words = str(command.get("text") or "").strip()
        first = words.split(maxsplit=1)[0].lower() if words else "help"
        team = str(command.get("team_id") or self._team_id)
        channel = str(command.get("channel_id") or "")
        user = str(command.get("user_id") or "")
        is_command = first in KNOWN_COMMANDS
        inbound = Inbound(
            # A command acts on the channel; a question asked with /parley gets a private
            # conversation of its own in that channel, since the answer is only for the asker.
            key=ConversationKey(PLATFORM, team, channel, "" if is_command else f"private:{user}"),
            event_id=f"command:{command.get('trigger_id') or time.time_ns()}",
            user_id=user,
            user_name=await self._name(user),
            text=f"/{words or 'help'}" if is_command else words,
            is_direct=channel.startswith("D"),
        )
        answer = ""
        async for event in self._engine.handle(inbound):
            if isinstance(event, Final | CommandResult | Refused | Retracted | Failed):
                answer = event.text
        if answer:
            await respond(text=markdown_to_mrkdwn(answer), response_type="ephemeral")

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        log.error("Slack: a listener failed: %s", error, exc_info=error)


def _channel(message: SlackMessage) -> ConversationKey:
    return ConversationKey(PLATFORM, message.team, message.channel)
