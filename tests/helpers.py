"""Small helpers shared by the engine and CLI tests."""

from __future__ import annotations

import itertools
from typing import Any

from core.conversation import Engine
from core.events import Accepted, ConversationKey, Inbound, ReplyEvent

KEY = ConversationKey("test", "team", "general", "thread-1")
_ids = itertools.count(1)


def inbound(
    text: str, *, key: ConversationKey = KEY, event_id: str | None = None, **extra: Any
) -> Inbound:
    values: dict[str, Any] = {"user_id": "U1", "user_name": "alice", **extra}
    return Inbound(key=key, event_id=event_id or f"ev-{next(_ids)}", text=text, **values)


async def turn(engine: Engine, text: str, **options: Any) -> list[ReplyEvent]:
    """The turn's events after Accepted (which every answered or refused-later turn starts with)."""
    events = [event async for event in engine.handle(inbound(text, **options))]
    return events[1:] if events and isinstance(events[0], Accepted) else events
