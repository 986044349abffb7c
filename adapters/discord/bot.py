"""The Discord runtime: a discord.py Client with slash commands, mentions, threads and DMs.

Pure translation (payloads, keys, thread names, safe text) lives in translate.py; this module
owns the SDK objects. It only accepts messages (stores them, in arrival order per channel)
and, when the scheduler asks, builds the reply for a stored address. That address holds ids
only (channel, thread, the message answered, an interaction's webhook token), so any process
can deliver a reply after a restart without the discord.py objects the message came with:
replies go through discord.py's partial objects (`get_partial_messageable`,
`PartialMessage`, `Webhook.partial`).

Model output never pings anyone: every message goes out with mentions disabled, except that
a reply may notify the one person it answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.base import HOLD_RETRY_SECONDS, AcceptFailed, ChatAdapter
from adapters.discord.translate import (
    DISCORD_LIMIT,
    THREAD_NAME_FALLBACK,
    DiscordMessage,
    close_open_fence,
    conversation_key,
    event_id_for_interaction,
    event_id_for_message,
    parse_message,
    safe_text,
    thread_name,
)
from adapters.http import HttpServer
from adapters.reach import unreachable
from adapters.rendering import MessageSink, RateLimited, Rendering
from core.attachments import Attachment, TooLarge
from core.commands import ATTACHMENT_ONLY_COMMAND, COMMANDS
from core.config import Settings
from core.conversation import Engine
from core.errors import ConfigError
from core.events import ConversationKey, Inbound
from core.locks import KeyedLocks
from core.scheduler import DeliveryFailed, MessageGone, Scheduler
from core.storage.base import SessionStore
from core.storage.retry import DatabaseUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

PLATFORM = "discord"
QUIET = discord.AllowedMentions.none()
# A reply may notify the person it answers, and nobody else (never @everyone or roles).
ANSWERING = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
READY_TIMEOUT = 60.0
LOGIN_TIMEOUT = 30.0  # discord.py retries a 5xx for about 25 s
# The first gateway handshake: discord.py allows it 60 s, far too long to tell a user at start
# that the gateway cannot be reached (Discord's gateway answers in well under a second).
GATEWAY_TIMEOUT = 10.0
# The gateway's close code for a token it refuses (4014, a privileged intent not enabled,
# reaches us as discord.py's PrivilegedIntentsRequired).
AUTHENTICATION_FAILED = 4004
# The privileged intents, as the Developer Portal's switches name them.
PRIVILEGED_INTENTS = {
    "members": "Server Members Intent",
    "presences": "Presence Intent",
    "message_content": "Message Content Intent",
}
TOKEN_REFUSED = (
    "DISCORD_BOT_TOKEN: Discord refused it; copy the token from the Developer "
    "Portal (your application > Bot > Reset Token)"
)
INTERACTIONS_REMEMBERED = 1000
# Discord's error code for starting a thread from a message that has one already: a turn run
# again after a crash that came after the thread was started.
THREAD_EXISTS = 160004
# A 429 that says nothing about when to come back (Cloudflare's): wait this long.
DEFAULT_RETRY_AFTER = 5.0
# Discord's JSON error code for a message that does not exist (deleted).
UNKNOWN_MESSAGE = 10008
# A reply to an interaction waits at most this long for the interaction's defer to land
# (webhook calls before it fail); Discord's own 3-second rule bounds it anyway.
DEFER_WAIT = 3.0


# --- addresses: where a reply goes, as stored with its turn ----------------------------------


def channel_address(
    *,
    channel_id: str,
    guild_id: str,
    reply_to: str | None = None,
    thread_parent: str | None = None,
    thread_title: str | None = None,
) -> dict[str, Any]:
    """A reply in a channel, thread or DM.

    `thread_parent` asks for a new thread, started at the first post from the message whose
    id is `channel_id` in the channel `thread_parent` (a thread started from a message has
    that message's id, so the thread's id is known before it exists).
    """
    return {
        "kind": "channel",
        "channel": channel_id,
        "guild": guild_id,  # "" in a DM
        "reply_to": reply_to,
        "thread_parent": thread_parent,
        "thread_name": thread_title,
    }


def interaction_address(interaction: discord.Interaction[Any], *, private: bool) -> dict[str, Any]:
    """An answer through a slash command's webhook. The token is valid for 15 minutes after
    the interaction, which bounds how late such an answer can be delivered (a recovery after
    that finds the webhook gone: the turn ends undelivered). It is a credential for this one
    interaction only."""
    return {
        "kind": "interaction",
        "application": str(interaction.application_id),
        "token": interaction.token,
        "private": private,  # sent as ephemeral follow-ups (the defer made part 1 private)
    }


# --- error classification --------------------------------------------------------------------


async def _call(request: Awaitable[T]) -> T:
    """A Discord call, its errors sorted out for StreamingReply: a rate limit to wait out,
    refusals for good (`DeliveryFailed`), and the rest (5xx, network) left to be retried."""
    try:
        return await request
    except discord.RateLimited as exc:  # only with max_ratelimit_timeout; kept for safety
        raise RateLimited(exc.retry_after) from exc
    except discord.HTTPException as exc:
        raise _classified(exc) from exc


def _classified(exc: discord.HTTPException) -> Exception:
    if exc.status == 429:
        # discord.py waits out ordinary 429s itself; one reaches us only without the headers
        # it trusts (a Cloudflare ban), so its Retry-After is all there is to go by.
        header = exc.response.headers.get("Retry-After") if exc.response is not None else None
        try:
            retry_after = float(header) if header else DEFAULT_RETRY_AFTER
        except ValueError:
            retry_after = DEFAULT_RETRY_AFTER
        return RateLimited(retry_after)
    if exc.code == UNKNOWN_MESSAGE:
        return MessageGone(f"Discord answered {exc.status} ({exc.code}): {exc.text}")
    if 400 <= exc.status < 500:
        # Forbidden (no permission, the bot was removed), NotFound (a deleted channel or
        # message, an expired interaction token) and other client errors: retrying the same
        # request cannot help.
        return DeliveryFailed(f"Discord answered {exc.status} ({exc.code}): {exc.text}")
    return exc  # 5xx: Discord comes back; StreamingReply retries


def _message_ref(channel: int, message: int) -> str:
    return f"{channel}/{message}"


class ChannelSink:
    """Messages in a channel, thread or DM, for StreamingReply, from a stored address.

    A message's id is returned as is, or as "channel/message" when it went elsewhere than
    the address's channel (a thread that could not be started: the answer went to the
    channel), so that a later process edits it where it is.
    """

    def __init__(
        self, client: discord.Client, address: Mapping[str, Any], *, posted: Sequence[str]
    ) -> None:
        self._client = client
        self._channel_id = int(address["channel"])
        self._guild_id = int(address["guild"]) if address.get("guild") else None
        # A reply that has messages already neither quotes the question again nor starts a
        # thread: both happened at its first post.
        reply_to = address.get("reply_to")
        self._reply_to = int(reply_to) if reply_to and not posted else None
        parent = address.get("thread_parent")
        self._thread_parent = int(parent) if parent and not posted else None
        self._thread_name = address.get("thread_name") or THREAD_NAME_FALLBACK
        # Where new messages go once the first one is posted (the channel of the first id).
        self._target: int | None = self._split(posted[0])[0] if posted else None

    async def post(self, text: str) -> str:
        if self._target is None:
            self._target = await self._open()
        channel = self._messageable(self._target)
        reference = None
        if self._reply_to is not None:
            # fail_if_not_exists=False: a question deleted meanwhile still gets its answer.
            reference = discord.MessageReference(
                message_id=self._reply_to,
                channel_id=self._target,
                guild_id=self._guild_id,
                fail_if_not_exists=False,
            )
        message = await _call(
            channel.send(
                text,
                allowed_mentions=ANSWERING if reference else QUIET,
                reference=reference,  # type: ignore[arg-type]
                suppress_embeds=True,
            )
        )
        self._reply_to = None  # only the first part is a reply
        if self._target == self._channel_id:
            return str(message.id)
        return _message_ref(self._target, message.id)

    async def edit(self, message_id: str, text: str) -> None:
        channel, message = self._split(message_id)
        partial = self._messageable(channel).get_partial_message(message)
        await _call(partial.edit(content=text, allowed_mentions=QUIET))

    async def delete(self, message_id: str) -> None:
        channel, message = self._split(message_id)
        await _call(self._messageable(channel).get_partial_message(message).delete())

    async def _open(self) -> int:
        """The channel of the first post: the address's, or the thread started for it."""
        if self._thread_parent is None:
            return self._channel_id
        thread = self._channel_id  # the id of the message the thread starts from
        if self._client.get_channel(thread) is not None:
            return thread  # started already (a recovery; discord.py saw THREAD_CREATE)
        parent = self._messageable(self._thread_parent)
        try:
            await parent.get_partial_message(thread).create_thread(name=self._thread_name)
        except ValueError as exc:  # discord.py does not know the server (any more)
            raise DeliveryFailed(f"cannot start a thread: {exc}") from exc
        except discord.HTTPException as exc:
            if exc.code == THREAD_EXISTS:
                return thread  # started before a crash: answer in it
            failure = _classified(exc)
            if not isinstance(failure, DeliveryFailed):
                raise failure from exc
            # No permission to create threads, a channel without threads, the question
            # deleted: answer in the channel instead, quoting the question.
            log.warning("Discord: could not start a thread (%s); answering in place", exc)
            self._reply_to = thread
            return self._thread_parent
        return thread

    def _messageable(self, channel: int) -> discord.PartialMessageable:
        return self._client.get_partial_messageable(channel, guild_id=self._guild_id)

    def _split(self, message_id: str) -> tuple[int, int]:
        channel, _, message = message_id.rpartition("/")
        return (int(channel) if channel else self._channel_id), int(message)


class InteractionSink:
    """A deferred interaction's answer, through its webhook: the original response (the
    "thinking…" message the defer showed), then follow-ups."""

    ORIGINAL = "@original"

    def __init__(
        self,
        client: discord.Client,
        address: Mapping[str, Any],
        *,
        posted: Sequence[str],
        deferred: asyncio.Event | None = None,
    ) -> None:
        self._webhook = discord.Webhook.partial(
            int(address["application"]), str(address["token"]), client=client
        )
        # Interaction webhooks are application webhooks; discord.py sends ephemeral
        # follow-ups only from those (a partial webhook is "incoming" until told).
        self._webhook.type = discord.WebhookType.application
        self._private = bool(address.get("private"))
        self._original_used = bool(posted)  # the original response shows part 1 already
        self._deferred = deferred

    async def post(self, text: str) -> str:
        await self._until_deferred()
        if not self._original_used:
            await self._edit(self.ORIGINAL, text)
            self._original_used = True
            return self.ORIGINAL
        message = await _call(
            self._webhook.send(text, ephemeral=self._private, allowed_mentions=QUIET, wait=True)
        )
        return str(message.id)

    async def edit(self, message_id: str, text: str) -> None:
        await self._until_deferred()
        await self._edit(message_id, text)

    async def delete(self, message_id: str) -> None:
        await self._until_deferred()
        target: Any = message_id if message_id == self.ORIGINAL else int(message_id)
        await _call(self._webhook.delete_message(target))

    async def _edit(self, message_id: str, text: str) -> None:
        # discord.py types message ids as int, but puts them in the URL as they are; that
        # is how `@original` (the interaction's own response) is addressed.
        target: Any = message_id if message_id == self.ORIGINAL else int(message_id)
        await _call(self._webhook.edit_message(target, content=text, allowed_mentions=QUIET))

    async def _until_deferred(self) -> None:
        """In the process that received the interaction, the turn can start before the
        defer (which follows the accept) has landed; webhook calls before it would fail."""
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            try:
                await asyncio.wait_for(deferred.wait(), DEFER_WAIT)
            except TimeoutError:
                log.warning("Discord: the interaction was not deferred in time; answering anyway")


class DiscordBot(ChatAdapter):
    """`async with DiscordBot(scheduler=..., store=..., settings=..., engine=...) as bot:`.

    DISCORD_API_URL and DISCORD_GATEWAY_URL point discord.py elsewhere (Discord-compatible
    servers, tests); they are process-wide class attributes in discord.py, set at start.
    The gateway never delivers a message twice, so a message that cannot be stored (the
    database is down) is held in memory and stored when it can be. A slash command is
    acknowledged (deferred) only once stored: if that fails, the user sees Discord's "the
    application did not respond", which is the truth.
    """

    platform = PLATFORM

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        store: SessionStore,
        settings: Settings,
        engine: Engine,
        http: HttpServer | None = None,
        **_: object,
    ) -> None:
        super().__init__(scheduler=scheduler, store=store, settings=settings)
        assert settings.discord_bot_token is not None
        self._engine = engine
        # Parley has no voice; discord.py's warnings that voice libraries are missing would be
        # the only lines besides the error when a start fails.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
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
        _guard_parsers(self.client)
        # Interactions handled here lately: a delivery seen twice (a gateway replay) is
        # acknowledged and answered once.
        self._interactions_seen: OrderedDict[int, None] = OrderedDict()
        # Messages of one channel (or thread, or DM) are accepted in the order they came.
        self._channels: KeyedLocks[int] = KeyedLocks()
        # Interactions accepted here whose defer has not landed yet, by token.
        self._deferring: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """Connected (for /readyz): the gateway's WebSocket is open and discord.py is READY."""
        client = self.client
        ws = client.ws
        return client.is_ready() and not client.is_closed() and ws is not None and ws.open

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> DiscordBot:
        discord.http.Route.BASE = str(self._settings.discord_api_url).rstrip("/")
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
            self._settings.discord_gateway_url
        )
        token = self._settings.discord_bot_token
        assert token is not None
        try:
            # discord.py's session waits up to 5 minutes for an answer: too long at start.
            async with asyncio.timeout(LOGIN_TIMEOUT):
                await self.client.login(token.get_secret_value())
        except discord.LoginFailure:  # 401 on GET /users/@me
            await self.client.close()
            raise ConfigError(TOKEN_REFUSED) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.client.close()
            url = str(self._settings.discord_api_url)
            raise unreachable("Discord", "DISCORD_API_URL", url, exc) from None
        except discord.HTTPException as exc:  # 5xx after discord.py's retries, a proxy's page
            await self.client.close()
            raise ConfigError(
                f"DISCORD_API_URL: Discord answered the login with HTTP {exc.status}; "
                "try again later, or check DISCORD_API_URL"
            ) from None
        await self._sync_commands()
        _stop_first_connection_on_failure(self.client)
        self._task = asyncio.create_task(self.client.connect(reconnect=True))
        ready = asyncio.create_task(self.client.wait_until_ready())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            task = self._task
            failure = task.exception() if task.done() and not task.cancelled() else None
            await self.aclose()
            raise self._gateway_failure(failure) from None
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
        # Accepts and refusals in progress finish first: they need the client's session.
        await self.stop()
        await self.client.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _gateway_failure(self, exc: BaseException | None) -> ConfigError:
        """The one line for a first gateway connection that ended before READY (`None`: it
        did not get there in time)."""
        setting = "DISCORD_GATEWAY_URL"
        if isinstance(exc, _GatewayUnreachable):
            url = self._settings.discord_gateway_url
            return unreachable("Discord", setting, url, exc.cause)
        if isinstance(exc, discord.PrivilegedIntentsRequired):  # close code 4014
            intents = self.client.intents
            names = [name for flag, name in PRIVILEGED_INTENTS.items() if getattr(intents, flag)]
            return ConfigError(
                f"Discord refused the {' and '.join(names) or 'privileged intents'} this bot "
                "needs; turn it on in the Developer Portal (your application > Bot > "
                "Privileged Gateway Intents)"
            )
        if isinstance(exc, discord.ConnectionClosed) and exc.code == AUTHENTICATION_FAILED:
            return ConfigError(TOKEN_REFUSED)
        if isinstance(exc, discord.ConnectionClosed):  # an invalid shard, API version, ...
            what = f"closed the connection with code {exc.code}"
        elif exc is not None:  # e.g. the gateway went away between handshake and READY
            log.debug("Discord: the gateway connection failed at start", exc_info=exc)
            what = f"failed ({type(exc).__name__}: {str(exc).strip() or 'no details'})"
        else:
            what = f"was not ready within {READY_TIMEOUT:.0f} s"
        return ConfigError(
            f"{setting}: the connection to Discord's gateway {what}; check the network and "
            f"{setting}"
        )

    async def _sync_commands(self) -> None:
        """Uploads the slash commands only when they changed: Discord rate-limits the upload
        hard (a few a minute), and a process restarting in a loop would hit it."""
        local = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        try:
            remote = [command.to_dict() for command in await self.tree.fetch_commands()]
        except discord.HTTPException as exc:
            log.warning("Discord: could not read the registered commands (%s)", exc)
            remote = []
        if _command_shapes(local) != _command_shapes(remote):
            await self.tree.sync()
            log.info("Discord: slash commands updated")

    # --- messages -------------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        with self._inflight.track():  # stopping waits for a message being stored
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
            bot_role_ids=self._bot_roles(message.guild),
        )
        if parsed is None:
            return
        # Threads the bot started continue without a mention; elsewhere it needs one.
        owned = in_thread and channel.owner_id == user.id  # type: ignore[union-attr]
        if not (parsed.is_direct or parsed.mentions_bot or parsed.replies_to_bot or owned):
            return
        # Taken before the first await: discord.py starts handlers in the order messages
        # arrive, and the lock (fair) keeps that order through the accept.
        async with self._channels.hold(channel.id):
            while True:
                try:
                    inbound, address = await self._translate(parsed, message)
                    break
                except DatabaseUnavailable as exc:
                    # The gateway never sends a message again: keep it until it is stored.
                    log.warning("Discord: reading a channel's settings failed (%s)", exc)
                    await asyncio.sleep(HOLD_RETRY_SECONDS)
            await self.accept_held(inbound, address)

    def _bot_roles(self, guild: discord.Guild | None) -> frozenset[str]:
        """The bot's managed roles in a server: `tags.bot_id` is the bot's user id (Discord
        documents it as the bot's id; the application's id is accepted too)."""
        if guild is None or self.client.user is None:
            return frozenset()
        ours = {self.client.user.id, self.client.application_id}
        return frozenset(
            str(role.id)
            for role in guild.roles
            if role.tags is not None and role.tags.bot_id is not None and role.tags.bot_id in ours
        )

    async def _translate(
        self, parsed: DiscordMessage, message: discord.Message
    ) -> tuple[Inbound, dict[str, Any]]:
        """The message as the engine sees it and where its answer goes."""
        scope = None if parsed.is_direct else await self._scope(parsed)  # a DM: one conversation
        starts_thread = not parsed.is_direct and not parsed.in_thread and scope in (None, "thread")
        # A thread started from a message has that message's id, so the conversation's key is
        # known before the thread exists (it is started at the first post, once accepted).
        thread_id = parsed.message_id if starts_thread else None
        # A bare mention gets the help; stickers alone, a word that they cannot be seen; a
        # photo or voice message without caption is answered with an empty text.
        text = parsed.text.strip() or ("" if parsed.attachments else "/help")
        if parsed.stickers_only:
            text = f"/{ATTACHMENT_ONLY_COMMAND}"
        inbound = Inbound(
            key=conversation_key(parsed, scope=scope, thread_id=thread_id),
            event_id=event_id_for_message(parsed.message_id),
            user_id=parsed.author_id,
            user_name=parsed.author_name,
            text=text,
            is_direct=parsed.is_direct,
            mentions_bot=parsed.mentions_bot,
            received_at=message.created_at,
            attachments=parsed.attachments,
        )
        if starts_thread:
            # A photo without caption names its thread after the file.
            title = parsed.text or (parsed.attachments[0].name if parsed.attachments else "")
            address = channel_address(
                channel_id=parsed.message_id,
                guild_id=parsed.guild_id,
                thread_parent=parsed.channel_id,
                thread_title=thread_name(title),
            )
        else:
            # In a DM, a thread, or a channel answered in place: a reply to the message.
            address = channel_address(
                channel_id=parsed.channel_id, guild_id=parsed.guild_id, reply_to=parsed.message_id
            )
        return inbound, address

    async def _scope(self, parsed: DiscordMessage) -> str | None:
        channel = parsed.parent_id or parsed.channel_id
        key = ConversationKey(PLATFORM, parsed.guild_id, channel)
        return (await self._store.channel(key=key)).scope

    # --- attachments ----------------------------------------------------------------------

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """Downloads an attachment by its CDN URL, as discord.py's `Attachment.read()` does.

        Discord's reported size is checked first, so an oversized file is never downloaded.
        discord.py reads a CDN answer whole (no streaming), so a body larger than reported
        is refused only once read. The URL is signed and expires (about a day after the
        message): a turn answered much later gets a 404 (NotFound), and the user is asked to
        send the file again.
        """
        if attachment.size > limit:
            raise TooLarge(attachment.size)
        data = await self.client.http.get_from_cdn(attachment.ref)
        if len(data) > limit:
            raise TooLarge(len(data))
        return data

    # --- replies --------------------------------------------------------------------------

    def sink(self, address: dict[str, Any], posted: Sequence[str]) -> tuple[MessageSink, Rendering]:
        rendering = Rendering(
            render=_render, limit=DISCORD_LIMIT, interval=self._settings.discord_update_interval
        )
        if address.get("kind") == "interaction":
            deferred = self._deferring.get(str(address["token"]))
            sink = InteractionSink(self.client, address, posted=posted, deferred=deferred)
            # The defer shows "thinking…" in the original response: no placeholder of ours.
            return sink, replace(rendering, placeholder=None)
        return ChannelSink(self.client, address, posted=posted), rendering

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
            # /ask keeps a conversation per asker in a channel (the thread's, inside a
            # thread); in a DM it is the DM's conversation, like any message there.
            key = self._interaction_key(interaction, f"user:{interaction.user.id}")
            await self._interaction(
                interaction,
                key,
                prompt,
                private=private,
                persona=persona.value if persona else None,
            )

        for name, description in COMMANDS.items():
            self._register_core_command(name, description)

    def _register_core_command(self, name: str, description: str) -> None:
        if name == "persona":

            @self.tree.command(name="persona", description=description[:100])
            async def persona(interaction: discord.Interaction[Any], name: str = "") -> None:
                key = self._interaction_key(interaction, "")
                await self._interaction(interaction, key, f"/persona {name}".strip(), private=True)

            return
        if name == "forget":

            @self.tree.command(name="forget", description=description[:100])
            @app_commands.describe(confirm="True deletes everything Parley keeps about you")
            async def forget(interaction: discord.Interaction[Any], confirm: bool = False) -> None:
                key = self._interaction_key(interaction, "")
                text = "/forget confirm" if confirm else "/forget"
                await self._interaction(interaction, key, text, private=True)

            return

        async def command(interaction: discord.Interaction[Any]) -> None:
            key = self._interaction_key(interaction, "")
            # Command answers stay private.
            await self._interaction(interaction, key, f"/{name}", private=True)

        self.tree.command(name=name, description=description[:100])(command)

    def _interaction_key(
        self, interaction: discord.Interaction[Any], thread: str
    ) -> ConversationKey:
        if interaction.guild_id is None:  # a DM is one conversation, as for its messages
            return ConversationKey(PLATFORM, "", str(interaction.channel_id or ""))
        guild = str(interaction.guild_id)
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            return ConversationKey(PLATFORM, guild, str(channel.parent_id), str(channel.id))
        return ConversationKey(PLATFORM, guild, str(interaction.channel_id or ""), thread)

    async def _interaction(
        self,
        interaction: discord.Interaction[Any],
        key: ConversationKey,
        text: str,
        *,
        private: bool,
        persona: str | None = None,
    ) -> None:
        """Stores the command, then defers it (Discord wants that within 3 seconds); the
        scheduler answers through the interaction's webhook."""
        if interaction.id in self._interactions_seen:
            log.info("Discord: interaction %s delivered again; ignored", interaction.id)
            return
        self._interactions_seen[interaction.id] = None
        if len(self._interactions_seen) > INTERACTIONS_REMEMBERED:
            self._interactions_seen.popitem(last=False)
        user = interaction.user
        inbound = Inbound(
            key=key,
            event_id=event_id_for_interaction(str(interaction.id)),
            user_id=str(user.id),
            user_name=user.display_name,
            text=text,
            is_direct=interaction.guild_id is None,
            received_at=interaction.created_at,
        )
        token = interaction.token
        deferred = self._deferring[token] = asyncio.Event()
        try:
            # In order with the channel's messages (a DM's /ask follows its messages).
            async with self._channels.hold(interaction.channel_id or 0):
                if persona is not None:
                    await self._store.set_persona(key=key, persona=persona, channel=False)
                await self.accept(inbound, interaction_address(interaction, private=private))
        except (AcceptFailed, DatabaseUnavailable) as exc:
            # Not stored, so not acknowledged: Discord tells the user the application did
            # not respond, which is true; nothing would answer a deferred command.
            log.error("Discord: could not store /%s: %s", _command_name(interaction), exc)
            self._deferring.pop(token, None)
            self._interactions_seen.pop(interaction.id, None)  # not handled after all
            return
        try:
            await interaction.response.defer(ephemeral=private, thinking=True)
        except discord.HTTPException as exc:
            # Too late (over 3 seconds) or acknowledged already: the answer's webhook calls
            # will fail and the turn ends undelivered.
            log.warning("Discord: could not defer /%s: %s", _command_name(interaction), exc)
        finally:
            deferred.set()
            self._deferring.pop(token, None)


# Fields discord.py requires in an INTERACTION_CREATE that Discord's documented examples (and
# some Discord-compatible servers) leave out, with Discord's defaults.
_INTERACTION_DEFAULTS: dict[str, Any] = {
    "version": 1,
    "attachment_size_limit": 10 * 1024 * 1024,
    "entitlements": [],
}


def _render(markdown: str) -> str:
    """A part of the answer as posted: a code block the model left open is closed first
    (a part cut inside a block is closed by the split already)."""
    return safe_text(close_open_fence(markdown))


class _GatewayUnreachable(BaseException):
    """The first gateway handshake failed (`cause`: refused, timed out, not a gateway).

    A BaseException on purpose: discord.py retries every Exception its connect loops catch,
    logging a traceback each time (`Client.connect` then fails on its `ws` still being None,
    the sharded client retries forever), where a start should stop with one line; this
    passes through those loops and ends `Client.connect` (or the sharded one) at once.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _stop_first_connection_on_failure(client: discord.Client) -> None:
    """Until the client is first ready, a gateway handshake that fails (or takes over
    GATEWAY_TIMEOUT) ends `connect` with `_GatewayUnreachable`; afterwards discord.py's
    own reconnects are untouched, so a later outage never stops the bot.

    discord.py opens every gateway socket through `client.http.ws_connect`, this client's
    own object: wrapping it there changes no other client and nothing process-wide.
    """
    http = client.http
    connect = http.ws_connect

    async def ws_connect(url: str, **options: Any) -> aiohttp.ClientWebSocketResponse:
        if client.is_ready():
            return await connect(url, **options)
        try:
            async with asyncio.timeout(GATEWAY_TIMEOUT):
                return await connect(url, **options)
        except (OSError, aiohttp.ClientError, TimeoutError) as exc:
            raise _GatewayUnreachable(exc) from exc

    http.ws_connect = ws_connect  # type: ignore[method-assign]


def _guard_parsers(client: discord.Client) -> None:
    """Makes one unexpected gateway payload cost only itself.

    discord.py runs its parser for a dispatch inside the gateway's read loop, so a parser
    raising (a KeyError on a field a payload lacks) ends `Client.connect` and every later
    event is lost, without a line in the log until shutdown. Each parser is wrapped: a
    failure is logged in one line and the next event is read. INTERACTION_CREATE first gets
    the fields discord.py needs and documented payloads may lack.
    """
    parsers: dict[str, Any] = client._connection.parsers

    def guarded(event: str, parse: Any) -> Any:
        def parse_safely(data: Any) -> None:
            try:
                if event == "INTERACTION_CREATE" and isinstance(data, dict):
                    for field, value in _INTERACTION_DEFAULTS.items():
                        data.setdefault(field, value)
                parse(data)
            except Exception as exc:
                log.error(
                    "Discord: could not read a %s event (%s: %s); it is skipped",
                    event,
                    type(exc).__name__,
                    exc,
                )

        return parse_safely

    for event, parse in list(parsers.items()):
        parsers[event] = guarded(event, parse)


def _command_name(interaction: discord.Interaction[Any]) -> str:
    command = interaction.command
    return command.name if command is not None else "?"


def _command_shapes(commands: Sequence[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    """What users see of each command (name, description, options), to compare the commands
    defined here with those registered, whatever extra fields either side carries."""

    def option(data: Mapping[str, Any]) -> tuple[Any, ...]:
        return (
            data["name"],
            data.get("description") or "",
            data.get("type"),
            bool(data.get("required")),
            tuple((c["name"], c["value"]) for c in data.get("choices") or ()),
            tuple(option(o) for o in data.get("options") or ()),
        )

    return {
        (
            c["name"],
            c.get("description") or "",
            c.get("type", 1),
            tuple(option(o) for o in c.get("options") or ()),
        )
        for c in commands
    }


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
        "flags": message.flags.value,
        "attachments": [_attachment_payload(a) for a in message.attachments],
        "sticker_items": [{"id": str(s.id), "name": s.name} for s in message.stickers],
        "message_snapshots": [
            {
                "message": {
                    "content": snapshot.content,
                    "flags": snapshot.flags.value,
                    "attachments": [_attachment_payload(a) for a in snapshot.attachments],
                }
            }
            for snapshot in message.message_snapshots
        ],
    }


def _attachment_payload(attachment: discord.Attachment) -> dict[str, Any]:
    """The fields translate reads of an attachment, from discord.py's Attachment."""
    return {
        "id": str(attachment.id),
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
        "url": attachment.url,
        "duration_secs": attachment.duration,
    }
