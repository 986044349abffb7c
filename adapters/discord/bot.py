"""The Discord runtime: a discord.py Client with slash commands, mentions, threads and DMs.

Pure translation (payloads, keys, thread names, safe text) lives in translate.py; this module
owns the SDK objects. Model output never pings anyone: every message goes out with mentions
disabled, except that a reply may notify the one person it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import discord
import yarl
from discord import app_commands

from adapters.discord.translate import (
    DISCORD_LIMIT,
    DiscordMessage,
    conversation_key,
    event_id_for_interaction,
    event_id_for_message,
    parse_message,
    safe_text,
    thread_name,
)
from adapters.http import HttpServer
from adapters.inflight import InFlight
from adapters.rendering import StreamingReply, deliver
from core.commands import COMMANDS
from core.config import Settings
from core.conversation import Engine
from core.errors import ConfigError
from core.events import CommandResult, ConversationKey, Failed, Final, Inbound, Refused, Retracted
from core.locks import KeyedLocks
from core.storage.base import SessionStore

log = logging.getLogger(__name__)

PLATFORM = "discord"
QUIET = discord.AllowedMentions.none()
# A reply may notify the person it answers, and nobody else (never @everyone or roles).
ANSWERING = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
READY_TIMEOUT = 60.0


class ChannelSink:
    """Messages in a channel, thread or DM, for StreamingReply.

    `channel` may be a coroutine function that opens the channel at the first post: a new
    thread is only started once the engine has accepted the message, so a redelivered
    message never leaves an empty thread behind.
    """

    def __init__(
        self,
        channel: discord.abc.Messageable | Callable[[], Awaitable[discord.abc.Messageable]],
        *,
        answering: discord.Message | None = None,
    ) -> None:
        self._channel = channel
        self._answering = answering
        self._messages: dict[str, discord.Message] = {}

    async def post(self, text: str) -> str:
        if not isinstance(self._channel, discord.abc.Messageable):
            self._channel = await self._channel()
        reference, self._answering = self._answering, None  # only the first part is a reply
        message = await self._channel.send(
            text,
            allowed_mentions=ANSWERING if reference else QUIET,
            reference=reference,
            mention_author=True if reference else None,
            suppress_embeds=True,
        )
        self._messages[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        await self._messages[message_id].edit(content=text, allowed_mentions=QUIET)

    async def delete(self, message_id: str) -> None:
        await self._messages.pop(message_id).delete()


class InteractionSink:
    """A deferred interaction's answer: the original response, then follow-ups."""

    ORIGINAL = "@original"

    def __init__(self, interaction: discord.Interaction[Any], *, private: bool) -> None:
        self._interaction = interaction
        self._private = private
        self._started = False
        self._followups: dict[str, discord.WebhookMessage] = {}

    async def post(self, text: str) -> str:
        if not self._started:
            self._started = True
            await self._interaction.edit_original_response(content=text, allowed_mentions=QUIET)
            return self.ORIGINAL
        message = await self._interaction.followup.send(
            text, ephemeral=self._private, allowed_mentions=QUIET, wait=True
        )
        self._followups[str(message.id)] = message
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        if message_id == self.ORIGINAL:
            await self._interaction.edit_original_response(content=text, allowed_mentions=QUIET)
        else:
            await self._followups[message_id].edit(content=text, allowed_mentions=QUIET)

    async def delete(self, message_id: str) -> None:
        if message_id == self.ORIGINAL:
            await self._interaction.delete_original_response()
        else:
            await self._followups.pop(message_id).delete()


class DiscordBot:
    """`async with DiscordBot(engine=..., store=..., settings=...) as bot:` runs the client.

    DISCORD_API_URL and DISCORD_GATEWAY_URL point discord.py elsewhere (Discord-compatible
    servers, tests); they are process-wide class attributes in discord.py, set at start.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: SessionStore,
        settings: Settings,
        http: HttpServer | None = None,
    ) -> None:
        assert settings.discord_bot_token is not None
        self._engine = engine
        self._store = store
        self._settings = settings
        intents = discord.Intents.default()
        intents.message_content = True  # a privileged intent: enable it in the portal
        options: dict[str, Any] = {"intents": intents, "allowed_mentions": QUIET}
        if settings.discord_shard_count is not None:
            options["shard_count"] = settings.discord_shard_count
            if settings.discord_shard_ids:
                options["shard_ids"] = list(settings.discord_shard_ids)
            self.client: discord.Client = discord.AutoShardedClient(**options)
        else:
            self.client = discord.Client(**options)
        self.tree = app_commands.CommandTree(self.client)
        self._register_commands()
        self.client.event(self.on_message)
        self._conversations: KeyedLocks[str] = KeyedLocks()
        self._inflight = InFlight()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> DiscordBot:
        discord.http.Route.BASE = str(self._settings.discord_api_url).rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
            self._settings.discord_gateway_url
        )
        token = self._settings.discord_bot_token
        assert token is not None
        try:
            await self.client.login(token.get_secret_value())
        except discord.LoginFailure:
            await self.client.close()
            raise ConfigError(
                "DISCORD_BOT_TOKEN: Discord refused it; copy the token from the Developer "
                "Portal (your application > Bot > Reset Token)"
            ) from None
        await self.tree.sync()
        self._task = asyncio.create_task(self.client.connect(reconnect=True))
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            await self.aclose()
            raise ConfigError(
                "DISCORD_BOT_TOKEN: could not connect to the gateway; if the log says "
                "PrivilegedIntentsRequired, enable Message Content Intent in the portal"
            )
        assert self.client.user is not None
        log.info("Discord: logged in as %s", self.client.user)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._inflight.finish()
        await self.client.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- messages -------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        with self._inflight.track():
            await self._on_message(message)

    async def _on_message(self, message: discord.Message) -> None:
        user = self.client.user
        if user is None:
            return
        channel = message.channel
        in_thread = isinstance(channel, discord.Thread)
        parsed = parse_message(
            _payload(message),
            bot_id=str(user.id),
            thread_parent_id=str(channel.parent_id) if in_thread else None,  # type: ignore[union-attr]
        )
        if parsed is None:
            return
        if parsed.is_direct:
            await self._answer(parsed, channel, message, scope=None)  # a DM is one conversation
        elif in_thread:
            # Threads the bot started continue without a mention; others need one.
            owned = channel.owner_id == user.id  # type: ignore[union-attr]
            if owned or parsed.mentions_bot or parsed.replies_to_bot:
                scope = await self._scope(parsed)
                await self._answer(parsed, channel, message, thread_id=str(channel.id), scope=scope)
        elif parsed.mentions_bot or parsed.replies_to_bot:
            await self._start_thread(parsed, message)

    async def _start_thread(self, parsed: DiscordMessage, message: discord.Message) -> None:
        scope = await self._scope(parsed)
        if scope not in (None, "thread"):
            await self._answer(parsed, message.channel, message, scope=scope)
            return

        async def open_thread() -> discord.abc.Messageable:
            try:
                return await message.create_thread(name=thread_name(parsed.text))
            except discord.HTTPException as exc:
                # No permission to create threads: answer in the channel instead.
                log.warning("Discord: could not start a thread (%s); answering in place", exc)
                return message.channel

        # A thread started from a message has that message's id, so the conversation's key
        # is known before the thread exists, and follow-ups in the thread find it.
        await self._answer(parsed, open_thread, None, thread_id=parsed.message_id, scope=scope)

    async def _scope(self, parsed: DiscordMessage) -> str | None:
        channel = parsed.parent_id or parsed.channel_id
        key = ConversationKey(PLATFORM, parsed.guild_id, channel)
        return (await self._store.channel(key=key)).scope

    async def _answer(
        self,
        parsed: DiscordMessage,
        channel: discord.abc.Messageable | Callable[[], Awaitable[discord.abc.Messageable]],
        answering: discord.Message | None,
        *,
        thread_id: str | None = None,
        scope: str | None,
    ) -> None:
        key = conversation_key(parsed, scope=scope, thread_id=thread_id)
        inbound = Inbound(
            key=key,
            event_id=event_id_for_message(parsed.message_id),
            user_id=parsed.author_id,
            user_name=parsed.author_name,
            text=parsed.text.strip() or "/help",
            is_direct=parsed.is_direct,
            mentions_bot=parsed.mentions_bot,
        )
        reply = self._reply(ChannelSink(channel, answering=answering))

        async def typing() -> None:
            if isinstance(channel, discord.abc.Messageable):
                await channel.typing()  # shown for ten seconds, or until the first message

        # One conversation's messages are answered in the order they came.
        async with self._conversations.hold(str(key)):
            try:
                await deliver(self._engine.handle(inbound), reply, accepted=typing)
            except Exception:
                log.exception("Discord: could not deliver the reply for %s", key)
            finally:
                await reply.aclose()

    def _reply(self, sink: ChannelSink | InteractionSink) -> StreamingReply:
        return StreamingReply(
            sink,
            render=safe_text,
            limit=DISCORD_LIMIT,
            interval=self._settings.discord_update_interval,
            placeholder="…",
        )

    # --- slash commands -------------------------------------------------------------------

    def _register_commands(self) -> None:
        names = self._engine.personas.names()
        choices = [app_commands.Choice(name=n, value=n) for n in names[:25]]

        @self.tree.command(name="ask", description="Ask a question")
        @app_commands.describe(
            prompt="your question",
            persona="answer as this persona (kept for your next questions here)",
            private="only you see the answer",
        )
        @app_commands.choices(persona=choices)
        async def ask(
            interaction: discord.Interaction[Any],
            prompt: str,
            persona: app_commands.Choice[str] | None = None,
            private: bool = False,
        ) -> None:
            await self._ask(interaction, prompt, persona.value if persona else None, private)

        for name, description in COMMANDS.items():
            self._register_core_command(name, description)

    def _register_core_command(self, name: str, description: str) -> None:
        if name == "persona":

            @self.tree.command(name="persona", description=description[:100])
            async def persona(interaction: discord.Interaction[Any], name: str = "") -> None:
                await self._command(interaction, f"/persona {name}".strip())

            return

        async def command(interaction: discord.Interaction[Any]) -> None:
            await self._command(interaction, f"/{name}")

        self.tree.command(name=name, description=description[:100])(command)

    def _interaction_key(
        self, interaction: discord.Interaction[Any], thread: str
    ) -> ConversationKey:
        guild = str(interaction.guild_id or "")
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            return ConversationKey(PLATFORM, guild, str(channel.parent_id), str(channel.id))
        return ConversationKey(PLATFORM, guild, str(interaction.channel_id or ""), thread)

    async def _ask(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        persona: str | None,
        private: bool,
    ) -> None:
        await interaction.response.defer(ephemeral=private, thinking=True)  # the 3-second rule
        with self._inflight.track():
            await self._answer_ask(interaction, prompt, persona, private)

    async def _answer_ask(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        persona: str | None,
        private: bool,
    ) -> None:
        user = interaction.user
        # /ask keeps a conversation per asker in the channel (the thread's, inside a thread).
        key = self._interaction_key(interaction, f"user:{user.id}")
        if persona is not None:
            await self._store.set_persona(key=key, persona=persona, channel=False)
        inbound = Inbound(
            key=key,
            event_id=event_id_for_interaction(str(interaction.id)),
            user_id=str(user.id),
            user_name=user.display_name,
            text=prompt,
            is_direct=interaction.guild_id is None,
        )
        reply = self._reply(InteractionSink(interaction, private=private))
        try:
            await deliver(self._engine.handle(inbound), reply)
        except Exception:
            log.exception("Discord: could not deliver the answer to /ask for %s", key)
        finally:
            await reply.aclose()

    async def _command(self, interaction: discord.Interaction[Any], text: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        with self._inflight.track():
            await self._answer_command(interaction, text)

    async def _answer_command(self, interaction: discord.Interaction[Any], text: str) -> None:
        inbound = Inbound(
            key=self._interaction_key(interaction, ""),
            event_id=event_id_for_interaction(str(interaction.id)),
            user_id=str(interaction.user.id),
            user_name=interaction.user.display_name,
            text=text,
            is_direct=interaction.guild_id is None,
        )
        answer = ""
        async for event in self._engine.handle(inbound):
            if isinstance(event, CommandResult | Refused | Failed | Final | Retracted):
                answer = event.text
        if answer:
            await interaction.followup.send(
                safe_text(answer)[:DISCORD_LIMIT], ephemeral=True, allowed_mentions=QUIET
            )


def _payload(message: discord.Message) -> dict[str, Any]:
    """The fields translate.parse_message reads, from discord.py's Message."""
    reference = message.reference.resolved if message.reference else None
    referenced = (
        {"author": {"id": str(reference.author.id)}}
        if isinstance(reference, discord.Message)
        else None
    )
    return {
        "id": str(message.id),
        "channel_id": str(message.channel.id),
        "guild_id": str(message.guild.id) if message.guild else None,
        "content": message.content,
        "type": message.type.value,
        "webhook_id": str(message.webhook_id) if message.webhook_id else None,
        "author": {
            "id": str(message.author.id),
            "username": message.author.name,
            "global_name": message.author.global_name,
            "bot": message.author.bot,
        },
        "mentions": [
            {"id": str(m.id), "username": m.name, "global_name": m.global_name}
            for m in message.mentions
        ],
        "mention_roles": [str(role.id) for role in message.role_mentions],
        "referenced_message": referenced,
    }
