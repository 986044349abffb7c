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
    channel_buffer_output: bool | None = None  # None: the persona's or the setting's choice


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
    at: datetime | None = None  # the engine's clock; None lets the database stamp it


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """A user's usage over a period."""

    tokens: int
    turns: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class FlagRecord:
    """A moderation finding to keep for review (the store adds the conversation)."""

    key: ConversationKey
    user_id: str
    direction: str
    action: str
    categories: list[str]
    scores: dict[str, float]
    excerpt: str
    at: datetime


@dataclass(frozen=True, slots=True)
class StoredFlag(FlagRecord):
    """A flag read back for `parley flags`, with its id."""

    id: int


@dataclass(frozen=True, slots=True)
class AccessRule:
    """An allow or block entry; `platform` "" applies on every platform."""

    platform: str
    kind: str  # user, channel or workspace
    value: str
    list: str  # allow or block


@dataclass(frozen=True, slots=True)
class ChannelSettings:
    """What an admin set for a channel; None everywhere means "the defaults"."""

    persona: str | None = None
    scope: str | None = None
    tools: list[str] | None = None
    buffer_output: bool | None = None
    user_rpm: int | None = None
    user_tokens_per_day: int | None = None
    require_mention: bool | None = None


@dataclass(frozen=True, slots=True)
class LimitCounts:
    """What a user has used, read atomically with the decision to admit one more request."""

    requests: int  # admitted in the last minute
    oldest_request: datetime | None  # the oldest of those
    tokens_today: int  # since midnight UTC
    channel: ChannelSettings


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
        flags: Sequence[FlagRecord] = (),
    ) -> tuple[ConversationState, int]:
        """Get or create the conversation and store the user's message; returns its id too.

        `count_tokens`, when given, sets the message's token count from the conversation's
        state (its persona decides the model, and so the tokenizer) in the same transaction.
        `flags` (moderation findings on the message) are stored in it too.
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
        flags: Sequence[FlagRecord] = (),
    ) -> None:
        """Store the reply (and any tool messages), each model call's usage and any moderation
        flags on the reply, at once."""
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

    async def set_persona(
        self, *, key: ConversationKey, persona: str, channel: bool = True
    ) -> None:
        """Use `persona` in this conversation and, unless `channel` is False, in its channel."""
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

    async def record_flag(self, *, flag: FlagRecord) -> None:
        """Store a flag on a message that is not stored (blocked input, unchecked input)."""
        ...

    async def flags(
        self, *, since: datetime | None = None, limit: int = 50, action: str | None = None
    ) -> Sequence[StoredFlag]:
        """Flags for review, newest first."""
        ...

    async def admit(
        self,
        *,
        key: ConversationKey,
        user_id: str,
        now: datetime,
        decide: Callable[[LimitCounts], bool],
    ) -> LimitCounts:
        """Read the user's usage and the channel's limits, and record one more request when
        `decide` says yes, in one transaction serialized per user across processes."""
        ...

    async def conversation_exists(self, *, key: ConversationKey) -> bool:
        """Whether the conversation was ever started (e.g. the bot answered in that thread)."""
        ...

    async def channel(self, *, key: ConversationKey) -> ChannelSettings:
        """The channel's settings (key's thread ignored)."""
        ...

    async def update_channel(self, *, key: ConversationKey, **values: object) -> None:
        """Set some of a channel's settings (the ChannelSettings field names)."""
        ...

    async def access_rules(self) -> Sequence[AccessRule]:
        """Every allow and block entry in the database."""
        ...

    async def add_access_rule(self, *, rule: AccessRule, added_by: str) -> None:
        """Add an entry; adding one that exists changes nothing."""
        ...

    async def remove_access_rule(self, *, rule: AccessRule) -> bool:
        """Remove an entry; False when there was none."""
        ...
