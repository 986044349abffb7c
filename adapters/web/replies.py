"""A turn's reply events as JSON objects: the one shape the SSE stream, the WebSocket and the
JSON answer share (docs/API.md, "Sending a message")."""

from __future__ import annotations

from typing import Any

from core.events import (
    Accepted,
    CommandResult,
    Delta,
    Failed,
    Final,
    Refused,
    ReplyEvent,
    Retracted,
    ToolFinished,
    ToolStarted,
)

CLOSING = frozenset({"final", "command", "refused", "retracted", "failed"})


def event_json(event: ReplyEvent) -> tuple[str, dict[str, Any]] | None:
    """(type, fields) of an event for the client; None for what it need not see."""
    match event:
        case Accepted():
            return None
        case Delta(text=text):
            return "delta", {"text": text}
        case ToolStarted(name=name, call_id=call_id):
            return "tool", {"name": name, "call_id": call_id, "state": "started", "ok": None}
        case ToolFinished(name=name, call_id=call_id, ok=ok):
            return "tool", {"name": name, "call_id": call_id, "state": "finished", "ok": ok}
        case Final(text=text, usage=usage):
            return "final", {
                "text": text,
                "usage": {
                    "prompt_tokens": usage.prompt_tokens,
                    "completion_tokens": usage.completion_tokens,
                    "model": usage.model,
                },
            }
        case CommandResult(text=text, command=command):
            return "command", {"text": text, "command": command}
        case Refused(text=text, reason=reason):
            return "refused", {"text": text, "reason": reason}
        case Retracted(text=text, reason=reason):
            return "retracted", {"text": text, "reason": reason}
        case Failed(text=text, reason=reason, partial=partial):
            return "failed", {"text": text, "reason": reason, "partial": partial}
    raise ValueError(f"unknown event {event!r}")
