"""PARLEY_RETENTION_DAYS: each `parley run` process purges what is older, at start and hourly.

Several processes purging the same database at once is safe: the deletes are idempotent and
on PostgreSQL each takes rows the others have not locked (core/storage/privacy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from core.storage.privacy import Privacy, Purged
from core.storage.sql import SqlStore

log = logging.getLogger(__name__)

EVERY_SECONDS = 3600.0


class Retention:
    """Purges data older than `days` days while entered (`async with`)."""

    def __init__(
        self,
        store: SqlStore,
        *,
        days: int,
        every: float = EVERY_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._privacy = Privacy(store)
        self._age = timedelta(days=days)
        self._every = every
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Retention:
        self._task = asyncio.create_task(self._loop(), name="parley-retention")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def purge(self) -> Purged:
        """Delete what is older than the retention period, now."""
        purged = await self._privacy.purge(before=self._clock() - self._age)
        if purged.total:
            log.info(
                "retention: purged %d messages, %d attachments, %d turns, %d usage rows, "
                "%d flags, %d rate-limit records and %d idle conversations older than %d days",
                purged.messages,
                purged.attachments,
                purged.turns,
                purged.usage,
                purged.flags,
                purged.requests,
                purged.conversations,
                self._age.days,
            )
        return purged

    async def _loop(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception:
                # The next hour tries again; the batches before the failed one stay deleted.
                log.exception("retention: purging old data failed")
            await asyncio.sleep(self._every)
