"""The handlers running now, so that stopping a bot lets them finish their replies.

A turn holds a database connection and owes the user an answer: cancelling it at shutdown
would leave a half-shown reply (and, on PostgreSQL, a connection closed under it). SDKs run
handlers as tasks they do not wait for, so each adapter tracks its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

# How long a stopping bot waits for replies in progress before cancelling them.
GRACE_SECONDS = 30.0


class InFlight:
    """`with inflight.track():` around a handler; `await inflight.finish()` when stopping."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    @contextmanager
    def track(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def finish(self, grace: float = GRACE_SECONDS) -> None:
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=grace)
        if late:
            log.warning("stopping: %d replies did not finish in %.0f s", len(late), grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
