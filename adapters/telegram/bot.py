"""The Telegram runtime: python-telegram-bot's Application, by long polling or webhook.

Pure translation (updates, keys, HTML) lives in translate.py; this module owns the SDK
objects, keeps each chat's messages in order, and turns reply events into a typing action,
then a message that grows through throttled `editMessageText` calls. Its first post waits
for whole words (`first_words`), so a phone's notification never reads "C". Answers that
need no model (`/start`, usage hints, "I cannot see stickers") are sent here directly.
Photos, voice notes and files are downloaded by `fetch` (getFile, then the file URL) when
the engine runs the turn.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from aiohttp import web
from telegram import Bot, BotCommand, LinkPreviewOptions, ReplyParameters, Update
from telegram.constants import ChatAction, ParseMode
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ContextTypes, ExtBot, TypeHandler
from telegram.request import HTTPXRequest

from adapters.base import HOLD_RETRY_SECONDS, AcceptFailed, ChatAdapter
from adapters.http import HttpServer
from adapters.rendering import MessageSink, RateLimited, Rendering, show_once
from adapters.telegram.translate import (
    TELEGRAM_DOWNLOAD_LIMIT,
    TELEGRAM_LIMIT,
    TelegramMessage,
    addressed_to_bot,
    album,
    conversation_key,
    event_id_for,
    html_to_plain,
    local_answer,
    markdown_to_html,
    model_text,
    parse_update,
    rendered_length,
)
from core.attachments import Attachment, TooLarge
from core.commands import COMMANDS
from core.config import Settings
from core.errors import ConfigError
from core.events import ConversationKey, Inbound
from core.locks import KeyedLocks
from core.scheduler import DeliveryFailed, MessageGone, Scheduler
from core.storage.base import SessionStore
from core.storage.retry import DatabaseUnavailable

log = logging.getLogger(__name__)

# PTB 22.2+ warns on every RetryAfter (its constructor reads the deprecated int form of
# retry_after) unless this opts in to the coming timedelta form, which _seconds reads.
os.environ.setdefault("PTB_TIMEDELTA", "true")

PLATFORM = "telegram"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# Telegram shows "typing…" for 5 seconds; renewed until the first words appear (not shown at
# all for an answer that comes within the turn's first-call hold, adapters/base.py).
TYPING_EVERY = 4.5
MENU = [
    BotCommand("ask", "ask a question (in groups: /ask@bot question)"),
    *(BotCommand(name, text[:256]) for name, text in COMMANDS.items()),
]


# The first message of an answer is what the phone's notification shows; later edits notify
# no one. So the first post waits for whole words: a first complete sentence or line, or
# FIRST_POST_CHARACTERS of complete words, while "typing…" shows; the rest streams in by
# edits, and `finish` delivers a short final text however short it is. A placeholder ("…")
# would make every notification read "…", and posting the first token made it read "C".
FIRST_POST_CHARACTERS = 20
_SENTENCE_END = re.compile(r"[.!?…:;]\s|\n")
# An album's items (a media group) arrive as separate updates, moments apart; they are
# answered as one message once none came for this long.
ALBUM_WAIT = 1.0
# Adapter answers (/start, usage hints) are not claimed in the store: the last event ids
# answered are remembered so that an update delivered twice is answered once.
REMEMBERED_LOCAL_ANSWERS = 1024


def first_words(markdown: str) -> str | None:
    """The beginning of streamed text worth a first message, or None to wait: the text up to
    its last whole word, once that holds a sentence or line end or FIRST_POST_CHARACTERS."""
    text = markdown.lstrip()
    cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
    if cut <= 0:
        return None
    head = text[:cut].rstrip()
    if len(head) >= FIRST_POST_CHARACTERS or _SENTENCE_END.search(text[: cut + 1]):
        return head
    return None


class LenientBot(ExtBot[None]):
    """An update this version of python-telegram-bot cannot read (a field it requires and
    Telegram left out, say) must not stop polling: `getUpdates` would fail on the whole batch
    and fetch it again forever. Only then is the batch read update by update, an unreadable
    one becoming a bare update with its id, so the offset moves past it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        with self._unfrozen():
            self._last_batch: list[list[Any]] = [[]]  # the raw result of the last getUpdates

    async def _post(self, endpoint: str, *args: Any, **kwargs: Any) -> Any:
        result = await super()._post(endpoint, *args, **kwargs)
        if endpoint == "getUpdates" and isinstance(result, list):
            self._last_batch[0] = result
        return result

    async def get_updates(self, *args: Any, **kwargs: Any) -> tuple[Update, ...]:
        try:
            return await super().get_updates(*args, **kwargs)
        except (KeyError, TypeError, ValueError):
            batch, self._last_batch[0] = self._last_batch[0], []
            if not batch:
                raise
            return tuple(self._readable(update) for update in batch)

    def _readable(self, data: Any) -> Update:
        try:
            update = Update.de_json(data, self)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("Telegram: update %s could not be read (%r); skipped", data["update_id"], exc)
            return Update(update_id=int(data["update_id"]))
        assert update is not None
        return update


@dataclass
class _Album:
    """An album's items as they arrive (see `TelegramBot._gather`)."""

    items: list[TelegramMessage]
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # another item came
    done: asyncio.Event = field(default_factory=asyncio.Event)  # gathered and stored, or not
    failed: str | None = None  # why it could not be stored


def address_of(message: TelegramMessage) -> dict[str, Any]:
    """Where the answer to `message` goes, as stored with its turn."""
    return {
        "chat_id": message.chat_id,
        "thread_id": message.thread_id,
        # In a group the answer quotes the question, so it is clear whom it answers.
        "reply_to": None if message.is_direct else message.message_id,
    }


class TelegramSink:
    """Messages in one chat (and forum topic) for StreamingReply, as Telegram HTML."""

    def __init__(self, bot: Bot, address: dict[str, Any], *, quote: bool = True) -> None:
        self._bot = bot
        self._chat = int(address["chat_id"])
        self._thread = address.get("thread_id")
        self._reply_to = address.get("reply_to") if quote else None

    async def post(self, text: str) -> str:
        reply = (
            None
            if self._reply_to is None
            else ReplyParameters(int(self._reply_to), allow_sending_without_reply=True)
        )
        sent = await self._send(
            lambda html, mode: self._bot.send_message(
                self._chat,
                html,
                parse_mode=mode,
                message_thread_id=self._thread,
                reply_parameters=reply,
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
            if not _says(exc, "not modified"):
                raise

    async def delete(self, message_id: str) -> None:
        await self._call(self._bot.delete_message(self._chat, int(message_id)))

    async def _send(self, send: Any, html: str) -> Any:
        try:
            return await self._call(send(html, ParseMode.HTML))
        except BadRequest as exc:
            if not _says(exc, "can't parse entities"):
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
        except Forbidden as exc:  # the bot was blocked or removed: no retry will help
            raise DeliveryFailed(exc.message) from exc
        except BadRequest as exc:
            if _says(exc, "can't parse entities", "not modified"):
                raise  # handled by the callers
            if _says(exc, "message to edit not found", "message to delete not found"):
                raise MessageGone(exc.message) from exc
            raise DeliveryFailed(exc.message) from exc


def _says(exc: TelegramError, *phrases: str) -> bool:
    """Whether Telegram's error description holds one of `phrases`. python-telegram-bot
    capitalizes descriptions ("Bad Request: can't parse…" becomes "Can't parse…")."""
    description = exc.message.lower()
    return any(phrase in description for phrase in phrases)


def _seconds(exc: RetryAfter) -> float:
    wait = exc.retry_after
    return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)


class TelegramBot(ChatAdapter):
    """`async with TelegramBot(scheduler=..., store=..., settings=..., http=...) as bot:`.

    Long polling by default; a webhook at TELEGRAM_WEBHOOK_URL (served on the shared HTTP
    server, every request checked against TELEGRAM_WEBHOOK_SECRET) when that is set. Each
    message is stored before Telegram is told it arrived: a webhook request gets a 5xx while
    the database is down (Telegram sends it again); by polling, where Telegram has already
    moved on, the message is held in memory until it is stored.
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
        assert settings.telegram_bot_token is not None
        api = str(settings.telegram_api_url).rstrip("/")
        webhook = settings.telegram_webhook_url
        bot = LenientBot(
            settings.telegram_bot_token.get_secret_value(),
            base_url=f"{api}/bot",
            base_file_url=f"{api}/file/bot",
            # What Application.builder() gives: a pool for the bot's calls, one for polling.
            request=HTTPXRequest(connection_pool_size=256),
            get_updates_request=HTTPXRequest(connection_pool_size=1),
        )
        builder = (
            Application.builder()
            .bot(bot)
            # Chats never wait for each other; order within a chat is kept by self._chats.
            .concurrent_updates(True)
        )
        if webhook is not None:
            builder = builder.updater(None)  # updates arrive through our HTTP server
        self.application = builder.build()
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self._chats: KeyedLocks[int] = KeyedLocks()
        self._albums: dict[tuple[int, str], _Album] = {}  # albums being gathered, by chat
        self._answered_here: OrderedDict[str, None] = OrderedDict()
        self.bot_id = 0
        self.username = ""
        if webhook is not None:
            assert http is not None, "the webhook needs the shared HTTP server"
            http.add_post(webhook.path or "/telegram", self._on_webhook)

    @property
    def ready(self) -> bool:
        """Started (for /readyz): updates are processed, and by polling the poll runs."""
        app = self.application
        return app.running and (app.updater is None or app.updater.running)

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> TelegramBot:
        app = self.application
        try:
            await app.initialize()  # calls getMe
        except TelegramError as exc:
            await app.bot.shutdown()  # initialize() failing leaves the HTTP clients open
            if isinstance(exc, InvalidToken):
                raise ConfigError(
                    "TELEGRAM_BOT_TOKEN: Telegram refused it; ask @BotFather for the token (/token)"
                ) from None
            if isinstance(exc, NetworkError):  # TimedOut too
                raise ConfigError(
                    f"TELEGRAM_API_URL: cannot reach {self._settings.telegram_api_url} ({exc}); "
                    "check the network, a proxy (HTTPS_PROXY) or the URL"
                ) from None
            raise ConfigError(f"TELEGRAM_BOT_TOKEN: Telegram answered getMe with {exc}") from None
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
        # Only "message": edits (`edited_message`) are not asked for and, if they come anyway,
        # ignored (translate.parse_update). An edit usually arrives after the answer began;
        # replacing a stored turn's text, or answering twice, would both surprise more than
        # asking again does.
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
        await self.stop()
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
        except Exception as exc:  # a body Telegram would not send: the sender's error, not ours
            log.warning("Telegram webhook: refused an update that could not be read (400): %s", exc)
            return web.Response(status=400)
        try:
            await self._accept(update, hold=False)
        except AcceptFailed:
            return web.Response(status=503)  # Telegram sends the update again later
        return web.Response()

    # --- updates --------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self._accept(update, hold=True)  # polling: Telegram will not send it again

    async def _accept(self, update: Update, *, hold: bool) -> None:
        message = parse_update(
            update.to_dict(),
            bot_id=self.bot_id,
            bot_username=self.username,
            max_bytes=self._download_limit(),
        )
        if message is None:
            return
        if message.media_group is not None:
            await self._gather(message, hold=hold)
            return
        if not addressed_to_bot(message) or self._answered_locally(message):
            return
        # Updates are handled concurrently; within one chat they are accepted (and so
        # answered) in the order they arrived.
        async with self._chats.hold(message.chat_id):
            await self._store_message(message, hold=hold)

    def _answered_locally(self, message: TelegramMessage) -> bool:
        local = local_answer(
            message, bot_name=self.application.bot.first_name, bot_username=self.username
        )
        if local is not None:
            self._answer_here(message, local)
        return local is not None

    async def _store_message(self, message: TelegramMessage, *, hold: bool) -> None:
        """Accepts the message for the engine; the caller holds its chat's lock."""
        if hold:
            while True:
                try:
                    inbound = await self._inbound(message)
                    break
                except DatabaseUnavailable:
                    await asyncio.sleep(HOLD_RETRY_SECONDS)
            await self.accept_held(inbound, address_of(message))
            return
        try:
            inbound = await self._inbound(message)
        except DatabaseUnavailable as exc:
            raise AcceptFailed(str(exc)) from exc
        await self.accept(inbound, address_of(message))

    async def _gather(self, item: TelegramMessage, *, hold: bool) -> None:
        """Answers an album's items as one message (`album`). Telegram sends them as
        messages of their own, moments apart: the first item's handler waits until none came
        for ALBUM_WAIT, holding its chat's lock so that what is sent after the album is
        answered after it; the other items' handlers wait until it is stored (a webhook
        request is answered only then, and with a 503 when it could not be)."""
        key = (item.chat_id, str(item.media_group))
        gathering = self._albums.get(key)
        if gathering is not None:
            gathering.items.append(item)
            gathering.arrived.set()
            await gathering.done.wait()
            if gathering.failed is not None:
                raise AcceptFailed(gathering.failed)
            return
        gathering = self._albums[key] = _Album([item])
        try:
            async with self._chats.hold(item.chat_id):
                while True:
                    try:
                        async with asyncio.timeout(ALBUM_WAIT):
                            await gathering.arrived.wait()
                    except TimeoutError:
                        break
                    gathering.arrived.clear()
                del self._albums[key]  # an item later still starts an album of its own
                message = album(gathering.items)
                if addressed_to_bot(message) and not self._answered_locally(message):
                    await self._store_message(message, hold=hold)
        except AcceptFailed as exc:
            gathering.failed = str(exc)
            raise
        finally:
            if self._albums.get(key) is gathering:  # cancelled while gathering
                del self._albums[key]
            gathering.done.set()

    def _answer_here(self, message: TelegramMessage, text: str) -> None:
        """Sends an answer the engine has no part in (once per message, in the background)."""
        event = event_id_for(message)
        if event in self._answered_here:
            return
        self._answered_here[event] = None
        while len(self._answered_here) > REMEMBERED_LOCAL_ANSWERS:
            self._answered_here.popitem(last=False)
        self._background(show_once(self.reply(address_of(message)), text))

    async def _inbound(self, message: TelegramMessage) -> Inbound:
        scope = None  # a private chat is one conversation: no setting to read
        if not message.is_direct:
            channel = ConversationKey(PLATFORM, "", str(message.chat_id))
            scope = (await self._store.channel(key=channel)).scope
        text = model_text(message)
        if not text.strip() and not message.attachments:
            text = "/help"  # a bare mention
        return Inbound(
            key=conversation_key(message, scope=scope),
            event_id=event_id_for(message),
            user_id=str(message.user_id),
            user_name=message.user_name,
            text=text,
            is_direct=message.is_direct,
            mentions_bot=message.mentions_bot,
            received_at=datetime.fromtimestamp(message.date, UTC),
            attachments=message.attachments,
        )

    # --- attachments ----------------------------------------------------------------------

    def _download_limit(self) -> int:
        return min(int(self._settings.max_attachment_mb * 1_000_000), TELEGRAM_DOWNLOAD_LIMIT)

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """Downloads a file by its `file_id`: `getFile`, then the file's URL.

        The size is checked before each step: the message's `file_size`, then the File's.
        Telegram serves bots files up to 20 MB; above that `getFile` answers "file is too
        big", which is TooLarge too (with the size the message gave, if it gave one).
        """
        most = min(limit, TELEGRAM_DOWNLOAD_LIMIT)
        if attachment.size > most:
            raise TooLarge(attachment.size, most)
        try:
            file = await self.application.bot.get_file(attachment.ref)
        except BadRequest as exc:
            if _says(exc, "file is too big"):
                size = max(attachment.size, TELEGRAM_DOWNLOAD_LIMIT + 1)
                raise TooLarge(size, TELEGRAM_DOWNLOAD_LIMIT) from exc
            raise
        if file.file_size is not None and file.file_size > most:
            raise TooLarge(file.file_size, most)
        # python-telegram-bot reads a download whole; Telegram's 20 MB cap bounds it.
        data = await file.download_as_bytearray()
        if len(data) > limit:
            raise TooLarge(len(data))
        return bytes(data)

    # --- replies --------------------------------------------------------------------------

    def sink(self, address: dict[str, Any], posted: Sequence[str]) -> tuple[MessageSink, Rendering]:
        # A reply that has messages already does not quote the question again.
        sink = TelegramSink(self.application.bot, address, quote=not posted)
        rendering = Rendering(
            render=markdown_to_html,
            limit=TELEGRAM_LIMIT,
            measure=rendered_length,
            interval=self._settings.telegram_update_interval,
            placeholder=None,
            first_post=first_words,
        )
        return sink, rendering

    def typing(self, address: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        async def typing() -> None:
            while True:
                try:
                    await self.application.bot.send_chat_action(
                        int(address["chat_id"]),
                        ChatAction.TYPING,
                        message_thread_id=address.get("thread_id"),
                    )
                except TelegramError as exc:
                    log.debug("Telegram: typing action failed: %s", exc)
                await asyncio.sleep(TYPING_EVERY)

        return typing

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("Telegram: handling an update failed: %s", context.error, exc_info=context.error)
