"""The storage port: what the engine needs from a session store, and the records it trades in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from core.events import ConversationKey


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store. `token_count` is computed once, by the caller, before storing."""

    role: str
    content: str
    token_count: int
    author_id: str = ""
    author_name: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back for a context window."""

    id: int
    role: str
    content: str
    token_count: int
    author_name: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation's row plus its channel's persona, as a turn starts."""

    id: int
    persona: str | None
    channel_persona: str | None
    window_start_id: int
    summary: str
    summary_through_id: int
    channel_tools: list[str] | None = None  # None: the persona's tools; a list narrows them


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one model call cost, for the usage table."""

    platform: str
    user_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """A user's usage over a period."""

    tokens: int
    turns: int
    cost_usd: float


class SessionStore(Protocol):
    """Durable conversations. Every method is one short transaction."""

    async def claim_event(self, *, platform: str, event_id: str) -> bool:
        """Record an inbound event id; False when it was already claimed (a redelivery)."""
        ...

    def turn_lock(self, key: ConversationKey) -> AbstractAsyncContextManager[None]:
        """Held for a whole turn so one conversation's messages are answered one at a time."""
        ...

    async def begin_turn(
        self,
        *,
        key: ConversationKey,
        message: NewMessage,
        count_tokens: Callable[[ConversationState], int] | None = None,
    ) -> tuple[ConversationState, int]:
        """Get or create the conversation and store the user's message; returns its id too.

        `count_tokens`, when given, sets the message's token count from the conversation's
        state (its persona decides the model, and so the tokenizer) in the same transaction.
        """
        ...

    async def conversation(self, *, key: ConversationKey) -> ConversationState:
        """Get or create the conversation (for commands)."""
        ...

    async def recent_messages(
        self, *, conversation_id: int, after_id: int, before_id: int | None, limit: int
    ) -> Sequence[StoredMessage]:
        """Messages with after_id < id < before_id, newest first, at most `limit`."""
        ...

    async def finish_turn(
        self,
        *,
        conversation_id: int,
        messages: Sequence[NewMessage],
        usage: Sequence[UsageRecord],
    ) -> None:
        """Store the reply (and any tool messages) and each model call's usage, at once."""
        ...

    async def search_messages(
        self, *, conversation_id: int, query: str, limit: int
    ) -> Sequence[StoredMessage]:
        """Messages of one conversation containing `query` (any case), newest first."""
        ...

    async def record_usage(self, *, conversation_id: int, usage: UsageRecord) -> None:
        """Store the cost of a model call that produced no stored message (e.g. a summary)."""
        ...

    async def reset(self, *, key: ConversationKey) -> None:
        """Start a fresh window: later turns see no earlier message. Deletes nothing."""
        ...

    async def set_persona(self, *, key: ConversationKey, persona: str) -> None:
        """Use `persona` in this conversation and, by default, in its whole channel."""
        ...

    async def save_summary(self, *, conversation_id: int, summary: str, through_id: int) -> None:
        """Store the summary of the messages up to `through_id`."""
        ...

    async def usage_since(self, *, platform: str, user_id: str, since: datetime) -> UsageTotals:
        """A user's usage on one platform since a moment."""
        ...

    async def conversation_tokens(self, *, conversation_id: int) -> int:
        """Tokens spent in one conversation."""
        ...

    async def latest_thread(self, *, platform: str, workspace: str, channel: str) -> str | None:
        """The thread of the most recently started conversation in a channel."""
        ...
