"""The Telegram runtime: python-telegram-bot's Application, by long polling or webhook.

Pure translation (updates, keys, HTML) lives in translate.py; this module owns the SDK
objects, keeps each chat's messages in order, and turns reply events into a typing action,
then a message that grows through throttled `editMessageText` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from aiohttp import web
from telegram import Bot, BotCommand, LinkPreviewOptions, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, RetryAfter, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from adapters.http import HttpServer
from adapters.rendering import RateLimited, StreamingReply, deliver
from adapters.telegram.translate import (
    TELEGRAM_LIMIT,
    TelegramMessage,
    addressed_to_bot,
    conversation_key,
    event_id_for,
    html_to_plain,
    markdown_to_html,
    parse_update,
    rendered_length,
)
from core.commands import COMMANDS
from core.config import Settings
from core.conversation import Engine
from core.errors import ConfigError
from core.events import ConversationKey, Inbound
from core.locks import KeyedLocks
from core.storage.base import SessionStore

log = logging.getLogger(__name__)

# PTB 22.2+ warns on every RetryAfter (its constructor reads the deprecated int form of
# retry_after) unless this opts in to the coming timedelta form, which _seconds reads.
os.environ.setdefault("PTB_TIMEDELTA", "true")

PLATFORM = "telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram shows "typing…" for 5 seconds; renewed until the first words appear.
TYPING_EVERY = 4.5
MENU = [
    BotCommand("ask", "ask a question (in groups: /ask@bot question)"),
    *(BotCommand(name, text[:256]) for name, text in COMMANDS.items()),
]


class TelegramSink:
    """Messages in one chat (and forum topic) for StreamingReply, as Telegram HTML."""

    def __init__(self, bot: Bot, message: TelegramMessage) -> None:
        self._bot = bot
        self._chat = message.chat_id
        self._thread = message.thread_id
        # In a group the answer quotes the question, so it is clear whom it answers.
        self._reply_to = None if message.is_direct else message.message_id

    async def post(self, text: str) -> str:
        reply = ReplyParameters(self._reply_to, allow_sending_without_reply=True)
        sent = await self._send(
            lambda html, mode: self._bot.send_message(
                self._chat,
                html,
                parse_mode=mode,
                message_thread_id=self._thread,
                reply_parameters=reply if self._reply_to is not None else None,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
            ),
            text,
        )
        self._reply_to = None  # only the first part quotes the question
        return str(sent.message_id)

    async def edit(self, message_id: str, text: str) -> None:
        try:
            await self._send(
                lambda html, mode: self._bot.edit_message_text(
                    html,
                    chat_id=self._chat,
                    message_id=int(message_id),
                    parse_mode=mode,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                ),
                text,
            )
        except BadRequest as exc:
            if "not modified" not in exc.message:
                raise

    async def delete(self, message_id: str) -> None:
        await self._call(self._bot.delete_message(self._chat, int(message_id)))

    async def _send(self, send: Any, html: str) -> Any:
        try:
            return await self._call(send(html, ParseMode.HTML))
        except BadRequest as exc:
            if "can't parse entities" not in exc.message:
                raise
            # Our HTML should always parse; if Telegram disagrees, the words still arrive.
            log.warning("Telegram rejected the HTML (%s); sending plain text", exc.message)
            return await self._call(send(html_to_plain(html), None))

    @staticmethod
    async def _call(request: Any) -> Any:
        try:
            return await request
        except RetryAfter as exc:
            raise RateLimited(_seconds(exc)) from exc


def _seconds(exc: RetryAfter) -> float:
    wait = exc.retry_after
    return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)


class TelegramBot:
    """`async with TelegramBot(engine=..., store=..., settings=..., http=...) as bot:`.

    Long polling by default; a webhook at TELEGRAM_WEBHOOK_URL (served on the shared HTTP
    server, every request checked against TELEGRAM_WEBHOOK_SECRET) when that is set.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        store: SessionStore,
        settings: Settings,
        http: HttpServer | None = None,
    ) -> None:
        assert settings.telegram_bot_token is not None
        self._engine = engine
        self._store = store
        self._settings = settings
        api = str(settings.telegram_api_url).rstrip("/")
        webhook = settings.telegram_webhook_url
        builder = (
            Application.builder()
            .token(settings.telegram_bot_token.get_secret_value())
            .base_url(f"{api}/bot")
            .base_file_url(f"{api}/file/bot")
            # Chats never wait for each other; order within a chat is kept by self._chats.
            .concurrent_updates(True)
        )
        if webhook is not None:
            builder = builder.updater(None)  # updates arrive through our HTTP server
        self.application = builder.build()
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self._chats: KeyedLocks[tuple[int, int | None]] = KeyedLocks()
        self.bot_id = 0
        self.username = ""
        if webhook is not None:
            assert http is not None, "the webhook needs the shared HTTP server"
            http.add_post(webhook.path or "/telegram", self._on_webhook)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> TelegramBot:
        app = self.application
        try:
            await app.initialize()  # calls getMe
        except TelegramError as exc:
            await app.bot.shutdown()  # initialize() failing leaves the HTTP clients open
            raise ConfigError(
                f"TELEGRAM_BOT_TOKEN: Telegram refused it ({exc}); ask @BotFather for the "
                "token (/token)"
            ) from None
        self.bot_id, self.username = app.bot.id, app.bot.username
        await app.bot.set_my_commands(MENU)
        webhook = self._settings.telegram_webhook_url
        if webhook is not None:
            secret = self._settings.telegram_webhook_secret
            assert secret is not None
            await app.bot.set_webhook(
                str(webhook), secret_token=secret.get_secret_value(), allowed_updates=["message"]
            )
        await app.start()
        if app.updater is not None:
            await app.updater.start_polling(allowed_updates=["message"])
        mode = "webhook" if webhook else "polling"
        log.info("Telegram: @%s is running (%s)", self.username, mode)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        app = self.application
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        await app.shutdown()

    async def _on_webhook(self, request: web.Request) -> web.Response:
        secret = self._settings.telegram_webhook_secret
        assert secret is not None
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
            log.warning("Telegram webhook: a request with a wrong secret token was refused")
            return web.Response(status=403)
        try:
            update = Update.de_json(await request.json(), self.application.bot)
        except (ValueError, TypeError, KeyError):
            return web.Response(status=400)
        await self.application.update_queue.put(update)
        return web.Response()

    # --- updates --------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = parse_update(update.to_dict(), bot_id=self.bot_id, bot_username=self.username)
        if message is None or not addressed_to_bot(message):
            return
        # Updates are handled concurrently; within one chat (and topic) they take turns in
        # the order they arrived, so replies come in the order of the questions.
        async with self._chats.hold((message.chat_id, message.thread_id)):
            await self._answer(update.update_id, message)

    async def _answer(self, update_id: int, message: TelegramMessage) -> None:
        scope = None  # a private chat is one conversation: no setting to read
        if not message.is_direct:
            channel = ConversationKey(PLATFORM, "", str(message.chat_id))
            scope = (await self._store.channel(key=channel)).scope
        text = message.text
        if message.command == "start":
            text = "/help"  # Telegram's first contact with a bot
        elif message.command is None and not text.strip():
            text = "/help"  # a bare mention
        inbound = Inbound(
            key=conversation_key(message, scope=scope),
            event_id=event_id_for(update_id),
            user_id=str(message.user_id),
            user_name=message.user_name,
            text=text,
            is_direct=message.is_direct,
            mentions_bot=message.mentions_bot,
            received_at=datetime.fromtimestamp(message.date, UTC),
        )
        sink = TelegramSink(self.application.bot, message)
        reply = StreamingReply(
            sink,
            render=markdown_to_html,
            limit=TELEGRAM_LIMIT,
            measure=rendered_length,
            interval=self._settings.telegram_update_interval,
            placeholder=None,
        )
        typing: list[asyncio.Task[None]] = []

        async def start_typing() -> None:
            typing.append(asyncio.create_task(self._typing(message)))

        try:
            await deliver(self._engine.handle(inbound), reply, accepted=start_typing)
        except Exception:
            log.exception("Telegram: could not deliver the reply for %s", inbound.key)
        finally:
            for task in typing:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await reply.aclose()

    async def _typing(self, message: TelegramMessage) -> None:
        while True:
            try:
                await self.application.bot.send_chat_action(
                    message.chat_id, ChatAction.TYPING, message_thread_id=message.thread_id
                )
            except TelegramError as exc:
                log.debug("Telegram: typing action failed: %s", exc)
            await asyncio.sleep(TYPING_EVERY)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram: handling an update failed: %s", context.error, exc_info=context.error)
