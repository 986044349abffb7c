"""The storage port: what the engine needs from a session store, and the records it trades in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from core.attachments import Kept
from core.events import ConversationKey, Inbound


class TurnState:
    """Where an accepted message stands. Within a conversation, a turn starts only when every
    earlier one is finished (delivered, or given up on), so answers are written, and shown,
    in the order messages arrived in, whichever processes answer them.

    - PENDING: accepted (claimed and stored), waiting for its turn.
    - RUNNING: being answered under a lease; taken over by anyone once the lease expires.
    - REPLIED: the answer is stored; it is being delivered (under a lease, as above).
    - DELIVERED / UNDELIVERED: finished; undelivered means the platform refused it for good
      or stayed down past the delivery deadline.
    """

    PENDING = "pending"
    RUNNING = "running"
    REPLIED = "replied"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"

    # A later turn of the conversation waits for these. REPLIED too: another process must not
    # post the next answer while this one is still being delivered.
    UNFINISHED = (PENDING, RUNNING, REPLIED)
    LEASED = (RUNNING, REPLIED)


@dataclass(frozen=True, slots=True)
class Turn:
    """An accepted message as stored: enough to answer and deliver it in any process.

    Attributes:
        id: Arrival order (within a conversation, turns run in id order).
        conversation_id: The conversation's row.
        inbound: The message as the adapter translated it.
        address: Where the answer goes, in the adapter's own terms (channel, thread, ids).
        state: A TurnState value.
        attempts: How many times a process took this turn (a crash loop stops at a limit).
        message_id: The user's message in `messages`, once stored (a re-run does not store it
            twice).
        reply: The text the user is shown in the end, once the turn has run; set from the
            start when admission refused the message at the door (rate limit, budget).
        posted: The platform ids of the messages that show (part of) the reply so far.
        merged: Earlier messages of the conversation answered together with this one, in
            arrival order (a channel that merges messages queued during a turn). They share
            this turn's lease, reply and delivery.
    """

    id: int
    conversation_id: int
    inbound: Inbound
    address: dict[str, Any]
    state: str
    attempts: int = 0
    message_id: int | None = None
    reply: str | None = None
    posted: tuple[str, ...] = ()
    merged: tuple[Turn, ...] = ()


@dataclass(frozen=True, slots=True)
class Delivery:
    """How a turn's delivery ended. A process stores these in batches, with its next
    transaction: a crash before that only means the reply is delivered again (an edit to the
    same text), so a separate commit per turn would buy nothing."""

    turn_id: int
    delivered: bool  # False: given up on (refused for good, or past the deadline)
    at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Admission:
    """The rate limit and budget check of a message, made in the transaction that accepts
    it, so a message is counted once however often its turn is run."""

    now: datetime
    refuse: Callable[[LimitCounts], str | None]  # the refusal's text; None admits (counted)


class LeaseLost(Exception):
    """Another process took this turn over (our lease expired): stop working on it."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to store. `token_count`, an upper bound of its prompt tokens (see
    `core.tokens`), is computed once, by the caller, before storing."""

    role: str
    content: str
    token_count: int
    author_id: str = ""
    author_name: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    attachments: Sequence[Kept] = ()  # stored in `attachments`; images keep their data


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message read back for a context window.

    `token_count` is the stored upper bound (see `core.tokens`) unless `counted`: the window
    recounts a message exactly when bounds do not fit, and caches it so.
    """

    id: int
    role: str
    content: str
    token_count: int
    author_name: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    images: list[dict[str, Any]] | None = None  # [{"id", "tokens", "name"}], see tables.py
    counted: bool = False


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
    channel_knowledge: list[str] | None = None  # None: the persona's knowledge bases


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
    merge_queued: bool | None = None
    user_rpm: int | None = None
    user_tokens_per_day: int | None = None
    require_mention: bool | None = None
    knowledge: list[str] | None = None  # knowledge bases; None: the persona's


@dataclass(frozen=True, slots=True)
class LimitCounts:
    """What a user has used, read atomically with the decision to admit one more request."""

    requests: int  # admitted in the last minute
    oldest_request: datetime | None  # the oldest of those
    tokens_today: int  # since midnight UTC
    channel: ChannelSettings


class SessionStore(Protocol):
    """Durable conversations. Every method is one short transaction."""

    async def accept(
        self,
        *,
        inbound: Inbound,
        address: dict[str, Any],
        owner: str | None = None,
        lease_until: float = 0.0,
        admission: Admission | None = None,
        done: Sequence[Delivery] = (),
    ) -> Turn | None:
        """Claim the event and store the message, in one transaction; None for a redelivery.

        With `owner`, the turn is leased to it at once when no earlier turn of the
        conversation is unfinished (state RUNNING), saving the scheduler a claim. With
        `admission`, the message is checked against the limits (a refusal becomes the turn's
        `reply`). `done`: `owner`'s finished deliveries, stored first (see `Delivery`).
        """
        ...

    async def claim_turns(
        self,
        *,
        owner: str,
        now: float,
        lease_until: float,
        limit: int,
        platforms: Sequence[str],
        conversation_id: int | None = None,
        exclude: Sequence[int] = (),
        done: Sequence[Delivery] = (),
        merge: bool = False,
    ) -> Sequence[Turn]:
        """Lease up to `limit` turns that are due: the first unfinished turn of a conversation,
        pending or with an expired lease, and replies whose delivery lease expired, on the
        given platforms. Safe across processes (each turn goes to one owner). `exclude`:
        conversations to skip. `done`: `owner`'s finished deliveries, stored first.

        With `conversation_id` and `merge` (the default for channels that did not choose),
        when the due turn is pending and its channel merges queued messages, every pending
        turn of the conversation is leased as one: the newest, with the others `merged`."""
        ...

    async def renew_leases(self, *, owner: str, lease_until: float) -> int:
        """Extend every lease `owner` holds (one statement: the process's heartbeat)."""
        ...

    async def release_leases(self, *, owner: str) -> int:
        """Let any process take over `owner`'s turns at once (a process stopping)."""
        ...

    async def record_posted(self, *, turn_id: int, owner: str, posted: Sequence[str]) -> None:
        """Remember which platform messages show the reply, so a recovery edits them."""
        ...

    async def finish_deliveries(self, *, owner: str, done: Sequence[Delivery]) -> None:
        """Replies that landed (or were given up on): their turns are finished."""
        ...

    async def prune_turns(self, *, finished_before: float) -> int:
        """Delete turns finished before that moment (their event ids with them)."""
        ...

    def listen(self, heard: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """While inside, `heard(message)` gets every `signal` any process sends (PostgreSQL's
        LISTEN, reconnected when the connection drops). A hint only, never a guarantee: a
        signal sent while the connection was down is lost, and on SQLite nothing is heard, so
        the scheduler's poll stays the rule and signals only make it act sooner."""
        ...

    async def signal(self, message: str) -> None:
        """Send `message` to every process listening (NOTIFY; nothing on SQLite)."""
        ...

    async def begin_turn(
        self,
        *,
        turn: Turn,
        owner: str,
        message: NewMessage,
        count_tokens: Callable[[ConversationState, NewMessage], int] | None = None,
        flags: Sequence[FlagRecord] = (),
        merged: Sequence[NewMessage] = (),
    ) -> tuple[ConversationState, int]:
        """Read the conversation and store the turn's user message; returns its id too.

        A turn re-run after a crash finds its message stored and does not store it again.
        `count_tokens`, when given, sets each message's token count from the conversation's
        state (its persona decides the model, and so the tokenizer) in the same transaction.
        `flags` (moderation findings on the message) are stored in it too. `merged`: the
        messages of `turn.merged`, in that order, stored before the turn's own.

        Raises:
            LeaseLost: `owner` no longer holds the turn.
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

    async def images(self, *, ids: Sequence[int]) -> dict[int, tuple[str, bytes]]:
        """Stored images by attachment id: (mime type, data). Deleted ones are missing."""
        ...

    async def finish_turn(
        self,
        *,
        turn: Turn,
        owner: str,
        reply: str,
        messages: Sequence[NewMessage] = (),
        usage: Sequence[UsageRecord] = (),
        flags: Sequence[FlagRecord] = (),
    ) -> None:
        """End the turn at once: the reply to show (state REPLIED), the messages to keep (tool
        exchange, answer), each model call's usage and any moderation flags.

        Raises:
            LeaseLost: `owner` no longer holds the turn; nothing was stored.
        """
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
