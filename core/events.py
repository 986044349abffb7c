"""What flows into the engine (Inbound) and what comes out of a turn (reply events)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.attachments import Attachment


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """Where a conversation lives. Adapters fill it; the channel's scope decides `thread`.

    Empty strings stand for "none" (a platform without workspaces, a message outside a thread),
    so the key is always four comparable strings.
    """

    platform: str
    workspace: str
    channel: str
    thread: str = ""

    @property
    def channel_key(self) -> ConversationKey:
        """The key of the channel this conversation belongs to (the thread left out)."""
        return ConversationKey(self.platform, self.workspace, self.channel)


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message for the bot, already translated from the platform's payload.

    Attributes:
        key: The conversation the message belongs to.
        event_id: The platform's id of this delivery; a redelivery carries the same id.
        user_id: The author's id on the platform.
        user_name: The author's display name (reaches the model, so it can tell speakers apart).
        text: The message text; a leading `/name` is a command.
        is_direct: A direct message (always answered).
        mentions_bot: The bot was mentioned.
        received_at: When the platform says the message was sent.
        attachments: Images, audio and files sent with it (`text` is then their caption).
    """

    key: ConversationKey
    event_id: str
    user_id: str
    text: str
    user_name: str = ""
    is_direct: bool = False
    mentions_bot: bool = False
    received_at: datetime | None = None
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens one turn cost. `estimated` is set when the server did not report usage."""

    prompt_tokens: int
    completion_tokens: int
    model: str
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Accepted:
    """The message is new and allowed: an answer (or a refusal) follows. Chat adapters show
    their placeholder now; a redelivered event never gets this far."""


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of the reply as the model streams it."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    """The model called a tool and it is running; adapters show e.g. "using current_time…"."""

    name: str
    call_id: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    """A tool call ended; `ok` is False when it failed (the model is told why)."""

    name: str
    call_id: str
    ok: bool


@dataclass(frozen=True, slots=True)
class Final:
    """The complete reply, stored, with what it cost."""

    text: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to a command (/help, /reset ...). Adapters may show it privately."""

    text: str
    command: str


@dataclass(frozen=True, slots=True)
class Refused:
    """The turn was not sent to the model; `text` tells the user why and what to do."""

    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Retracted:
    """The reply was withheld by output moderation: adapters replace whatever they already
    showed of it with `text`, a short notice. Nothing of the reply is stored."""

    text: str
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The model could not answer; the user's message is kept. `text` is for the user."""

    text: str
    reason: str
    partial: str = field(default="", repr=False, compare=False)  # text already shown


ReplyEvent = (
    Accepted
    | Delta
    | ToolStarted
    | ToolFinished
    | Final
    | CommandResult
    | Refused
    | Retracted
    | Failed
)


TURN_ENDS = (Final, CommandResult, Refused, Retracted, Failed)  # a turn's last event is one


def shown_text(event: ReplyEvent) -> str:
    """The Markdown a chat shows in the end for a turn's last event.

    A failure after some text keeps that text, marked as cut off by the failure's sentence,
    so the user sees what came and why it stopped.
    """
    if isinstance(event, Failed) and event.partial:
        return f"{event.partial}\n\n_{event.text}_"
    if isinstance(event, TURN_ENDS):
        return event.text
    raise ValueError(f"{type(event).__name__} does not end a turn")
