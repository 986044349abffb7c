"""`/v1`: OpenAI's chat completions API in front of Parley, so any OpenAI client or chat front
end can talk to its personas (docs/API.md, "OpenAI-compatible").

Parley keeps conversations: with the request's `user` field (or `X-Parley-Conversation`) only
the newest user message is taken, the rest of the history being Parley's own. Without one the
request's messages are the history of a conversation of their own.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from adapters.web.api import (
    ApiError,
    ConversationsApi,
    bad_request,
    caller_of,
    conversation_key,
    inbound_for,
    json_body,
    last_event,
)
from core.events import ConversationKey
from core.personas import PersonaCatalogue
from core.storage.api import ApiStore
from core.storage.sql import SqlStore

STATELESS_WORKSPACE = "openai"  # one-request conversations: not listed with the user's


class OpenAICompatible:
    def __init__(
        self,
        *,
        conversations: ConversationsApi,
        store: SqlStore,
        api: ApiStore,
        personas: PersonaCatalogue,
    ) -> None:
        self._conversations = conversations
        self._store = store
        self._api = api
        self._personas = personas

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/models", self.models),
            web.post("/chat/completions", self.completions),
        ]

    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": p.name, "object": "model", "created": 0, "owned_by": "parley"}
            for p in self._personas
        ]
        return web.json_response({"object": "list", "data": data})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request)
        persona = body.get("model")
        if not isinstance(persona, str) or self._personas.get(persona) is None:
            known = ", ".join(p.name for p in self._personas)
            raise ApiError(404, f"model {persona!r}: use a persona's name ({known})", "not_found")
        messages = body.get("messages")
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
        ):
            raise bad_request("messages: a list of {role, content} objects")
        newest = next((m for m in reversed(messages) if m["role"] == "user"), None)
        text = _text(newest["content"]) if newest is not None else ""
        if not text.strip():
            raise bad_request("messages: a user message with text is needed")
        caller = caller_of(request)
        named = request.headers.get("X-Parley-Conversation") or body.get("user")
        if named:
            key = conversation_key(caller, str(named))
            await self._store.conversation(key=key)
        else:
            key = ConversationKey("api", STATELESS_WORKSPACE, caller.user_id, uuid.uuid4().hex[:16])
            earlier = [m for m in messages[: messages.index(newest)] if m["role"] != "system"]
            history = [(m["role"], _text(m.get("content"))) for m in earlier]
            await self._api.seed(key=key, history=history)
        await self._store.set_persona(key=key, persona=persona, channel=False)
        event_id = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        events = await self._conversations.reply(inbound_for(caller, key, text, event_id))
        completion = f"chatcmpl-{uuid.uuid4().hex}"
        if body.get("stream"):
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return await _stream(request, events, completion, persona, include_usage=include_usage)
        kind, fields = await last_event(events)
        if kind == "failed":
            raise ApiError(502, fields["text"], "model_failed")
        return web.json_response(
            {
                "id": completion,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": persona,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": fields["text"]},
                        "finish_reason": _finish_reason(kind),
                    }
                ],
                "usage": _usage(fields.get("usage")),
            }
        )


async def _stream(
    request: web.Request,
    events: AsyncIterator[tuple[str, dict[str, Any]]],
    completion: str,
    model: str,
    *,
    include_usage: bool,
) -> web.StreamResponse:
    """OpenAI's chunk stream: a role chunk, content deltas, a closing chunk, the usage when
    asked for (`stream_options.include_usage`), `[DONE]`. A client that leaves stops the
    writing, not the turn."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    created = int(time.time())
    writing = True

    async def write(data: dict[str, Any]) -> None:
        nonlocal writing
        if writing:
            try:
                await response.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
            except (ConnectionError, RuntimeError):
                writing = False

    async def send(delta: dict[str, Any], finish: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        chunk = {"id": completion, "object": "chat.completion.chunk", "created": created}
        await write({**chunk, "model": model, "choices": [choice]})

    await send({"role": "assistant", "content": ""})
    shown = ""
    async for kind, fields in events:
        if kind == "delta":
            shown += fields["text"]
            await send({"content": fields["text"]})
        elif kind == "failed":
            await write({"error": {"message": fields["text"], "type": "model_failed"}})
        elif kind in ("final", "command", "refused", "retracted"):
            # A streamed final repeats what the deltas said; anything else is new text.
            rest = fields["text"][len(shown) :] if fields["text"].startswith(shown) else ""
            if kind != "final" or rest:
                await send({"content": rest if kind == "final" else fields["text"]})
            await send({}, _finish_reason(kind))
            if include_usage:
                chunk = {"id": completion, "object": "chat.completion.chunk", "created": created}
                usage = _usage(fields.get("usage"))
                await write({**chunk, "model": model, "choices": [], "usage": usage})
    if writing:
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    return response


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    prompt = (usage or {}).get("prompt_tokens", 0)
    completion = (usage or {}).get("completion_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(kind: str) -> str:
    return "content_filter" if kind in ("refused", "retracted") else "stop"


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and "text" in part
        )
    return ""
