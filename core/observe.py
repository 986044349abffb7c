"""What a running bot tells its operator about itself: the Recorder port for metrics, and
the ids of the turn at hand for log lines.

core knows no metrics library. The Engine and the Scheduler call a `Recorder`; the bootstrap
picks one (bots/metrics.py, for Prometheus), and `NO_RECORDER` does nothing. Calls happen on
the hot path, so an implementation must only update counters in memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol, TypeVar

from core.events import TURN_ENDS, ReplyEvent

MESSAGES_LOGGER = "parley.messages"
"""Message and reply texts are logged here only, at INFO, and only when PARLEY_LOG_MESSAGES
is on (bots/logs.py): chats are the users' business, not the log's."""

messages_log = logging.getLogger(MESSAGES_LOGGER)
messages_log.setLevel(logging.CRITICAL + 1)  # silent wherever nobody asked for it

T = TypeVar("T")

# The metric's outcome label of each event that ends a turn: "final", "command", "refused"...
_OUTCOMES: dict[type[ReplyEvent], str] = {
    end: end.__name__.lower().removesuffix("result") for end in TURN_ENDS
}


def outcome_of(event: ReplyEvent | None) -> str | None:
    """How a turn ended, from its last event; None when it did not end (it was cut off)."""
    return None if event is None else _OUTCOMES.get(type(event))


class Recorder(Protocol):
    """Receives what happens to turns. Every method must be cheap and must not raise."""

    def turn_finished(self, *, platform: str, outcome: str, seconds: float) -> None:
        """A turn ended (`outcome_of` its last event) after `seconds` of work."""
        ...

    def queue_wait(self, *, platform: str, seconds: float) -> None:
        """A turn started `seconds` after its message was accepted."""
        ...

    def first_token(self, *, model: str, seconds: float) -> None:
        """A model call's first chunk arrived `seconds` after it was made."""
        ...

    def usage(
        self, *, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float | None
    ) -> None:
        """A model call's tokens, and their cost when the model's price is known."""
        ...

    def error(self, *, kind: str) -> None:
        """Something went wrong: a failed turn's reason, a database outage, a lost lease."""
        ...

    def delivery(self, *, platform: str, outcome: str, seconds: float) -> None:
        """A final reply was delivered (`delivered`) or given up on (`refused`, `timeout`)."""
        ...

    def delivery_retried(self, *, platform: str) -> None:
        """A platform call of a reply failed for a while (network, 5xx, 429) and is retried."""
        ...

    def lease_takeover(self) -> None:
        """This process took over a turn another process had leased (it died or stalled)."""
        ...

    def moderation(self, *, direction: str, action: str) -> None:
        """A moderator flagged a text (`block`, `redact`, `flag`, `unchecked`...)."""
        ...

    def watch_pending(self, count: Callable[[], int]) -> None:
        """`count()` says how many accepted messages wait for their turn; it is read when
        the metrics are read, not at every change."""
        ...


class NoRecorder:
    """A Recorder that records nothing."""

    def turn_finished(self, *, platform: str, outcome: str, seconds: float) -> None:
        pass

    def queue_wait(self, *, platform: str, seconds: float) -> None:
        pass

    def first_token(self, *, model: str, seconds: float) -> None:
        pass

    def usage(
        self, *, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float | None
    ) -> None:
        pass

    def error(self, *, kind: str) -> None:
        pass

    def delivery(self, *, platform: str, outcome: str, seconds: float) -> None:
        pass

    def delivery_retried(self, *, platform: str) -> None:
        pass

    def lease_takeover(self) -> None:
        pass

    def moderation(self, *, direction: str, action: str) -> None:
        pass

    def watch_pending(self, count: Callable[[], int]) -> None:
        pass


NO_RECORDER: Recorder = NoRecorder()


async def first_chunk_timed(
    chunks: AsyncIterator[T], recorder: Recorder, model: str
) -> AsyncIterator[T]:
    """A model's stream, reporting how long its first chunk took (the request is sent at the
    first read, so the clock starts there)."""
    started = time.perf_counter()
    async for chunk in chunks:
        recorder.first_token(model=model, seconds=time.perf_counter() - started)
        yield chunk
        break
    async for chunk in chunks:
        yield chunk


@dataclass(frozen=True, slots=True)
class TurnIds:
    """The turn a log line was written for, and the recorder of the process running it."""

    platform: str
    conversation_id: int
    turn_id: int
    recorder: Recorder = NO_RECORDER


_current: ContextVar[TurnIds | None] = ContextVar("parley_turn", default=None)


def current_turn() -> TurnIds | None:
    """The turn this task is working on, if any (for log lines and delivery retries)."""
    return _current.get()


@contextmanager
def working_on(ids: TurnIds) -> Iterator[None]:
    """Marks the current task (and the tasks it starts) as working on a turn."""
    token = _current.set(ids)
    try:
        yield
    finally:
        # ValueError: an async generator closed from another task (its consumer went away);
        # the value was set in the consumer's context, which ends with it.
        with suppress(ValueError):
            _current.reset(token)


def delivery_retried() -> None:
    """A platform call of the reply being delivered failed and will be retried. The turn's
    context (set by the scheduler) says which recorder and platform."""
    ids = _current.get()
    if ids is not None:
        ids.recorder.delivery_retried(platform=ids.platform)
