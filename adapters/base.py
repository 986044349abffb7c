"""What every chat adapter shares: accepting a message durably, showing replies, stopping.

An adapter parses platform input into an `Inbound` plus an address (where the answer goes,
in its own terms), calls `accept`, and acknowledges the platform only when that returned.
The scheduler then owns the turn and asks the adapter's `view` for a `ReplyView` built from
the stored address, in this process or, after a crash, in another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from adapters.inflight import InFlight
from adapters.rendering import (
    FinalOnly,
    MessageSink,
    Rendering,
    StreamingReply,
    TurnReply,
    show_once,
)
from core.attachments import Attachment
from core.config import Settings
from core.events import Inbound, Refused
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage.base import SessionStore, Turn
from core.storage.retry import DatabaseUnavailable

log = logging.getLogger(__name__)

# While the database is down, a message the platform will not send again (Telegram polling,
# the Discord gateway) is kept in memory and accepted again after this many seconds.
HOLD_RETRY_SECONDS = 5.0
# A turn's first platform call (the placeholder, Telegram's first words or its "typing…")
# waits this long: an answer complete by then goes out in one call instead of a post and an
# edit, which halves the platform calls of quick answers. Slower ones show their placeholder
# a moment later.
FIRST_CALL_AFTER = 0.5


class AcceptFailed(Exception):
    """The message could not be stored: do not acknowledge it, let the platform redeliver."""


class ChatAdapter:
    """The shared half of an adapter. Subclasses set `platform` and implement `sink`."""

    platform = ""

    def __init__(self, *, scheduler: Scheduler, store: SessionStore, settings: Settings) -> None:
        self._scheduler = scheduler
        self._store = store
        self._settings = settings
        self._inflight = InFlight()
        self._background_tasks: set[asyncio.Task[None]] = set()
        scheduler.add_outlet(self.platform, self._view)
        scheduler.engine.add_fetcher(self.platform, self.fetch)

    # --- for subclasses -------------------------------------------------------------------

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        """Downloads an attachment of this platform through its SDK, at most `limit` bytes.

        Raises:
            TooLarge: it is larger than `limit` (checked before downloading when the platform
                gives the size, and while reading).
        """
        raise NotImplementedError(f"{self.platform} does not download attachments")

    def sink(self, address: dict[str, Any], posted: Sequence[str]) -> tuple[MessageSink, Rendering]:
        """Where a reply to `address` goes, and how it is shown there. `posted`: ids of the
        messages already showing it (a reply delivered again after a crash)."""
        raise NotImplementedError

    def streams(self, address: dict[str, Any]) -> bool:
        """False where a reply cannot be edited (an ephemeral answer): then only the final
        text is sent, with no placeholder and no progress."""
        return True

    def typing(self, address: dict[str, Any]) -> Callable[[], Awaitable[None]] | None:
        """What to show while the model thinks, until the first words (Telegram: typing…)."""
        return None

    async def accept(self, inbound: Inbound, address: dict[str, Any]) -> bool:
        """Stores the message (or finds it stored already). True: acknowledge the platform.

        A refused user is shown the refusal (in the background) and True is returned.

        Raises:
            AcceptFailed: the database stayed down; make the platform redeliver.
        """
        with self._inflight.track():
            try:
                result = await self._scheduler.accept(inbound, address)
            except DatabaseUnavailable as exc:
                log.error("%s: could not store a message: %s", self.platform, exc)
                raise AcceptFailed(str(exc)) from exc
        if isinstance(result, Refused):
            self._background(self._refuse(address, result.text))
        return True

    async def accept_held(self, inbound: Inbound, address: dict[str, Any]) -> None:
        """`accept` for platforms that never redeliver: keeps the message in memory and
        tries again until it is stored (or the process stops)."""
        while True:
            try:
                await self.accept(inbound, address)
                return
            except AcceptFailed:
                log.warning(
                    "%s: holding event %s in memory; trying again in %.0f s",
                    self.platform,
                    inbound.event_id,
                    HOLD_RETRY_SECONDS,
                )
                await asyncio.sleep(HOLD_RETRY_SECONDS)

    def _background(self, work: Any) -> None:
        async def tracked() -> None:
            with self._inflight.track():
                try:
                    await work
                except Exception:
                    log.exception("%s: a background reply failed", self.platform)

        task = asyncio.create_task(tracked())
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def stop(self) -> None:
        """Waits for accepts and background replies in progress (the platform is closed to
        new input already)."""
        await self._inflight.finish()

    # --- the scheduler's side -------------------------------------------------------------

    def reply(
        self,
        address: dict[str, Any],
        *,
        posted: Sequence[str] = (),
        on_posted: PostedCallback | None = None,
    ) -> StreamingReply:
        """The StreamingReply for an address; its final text is retried until it lands (the
        scheduler bounds how long)."""
        sink, rendering = self.sink(address, posted)
        return StreamingReply(
            sink,
            render=rendering.render,
            limit=rendering.limit,
            measure=rendering.measure,
            interval=rendering.interval,
            placeholder=rendering.placeholder,
            max_attempts=None,
            existing=posted,
            on_posted=on_posted,
            first_post=rendering.first_post,
            hold=FIRST_CALL_AFTER,
        )

    def _view(self, turn: Turn, posted: PostedCallback) -> ReplyView:
        reply = self.reply(turn.address, posted=turn.posted, on_posted=posted)
        if not self.streams(turn.address):
            return FinalOnly(reply)
        return TurnReply(reply, accepted=self.typing(turn.address), hold=FIRST_CALL_AFTER)

    async def _refuse(self, address: dict[str, Any], text: str) -> None:
        await show_once(self.reply(address), text)
