"""`/api/v1`: conversations as resources, replies as server-sent events or over a WebSocket,
and the admin console's endpoints (docs/API.md)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import WSMsgType, web
from pydantic import BaseModel, ConfigDict, NonNegativeInt, ValidationError

from adapters.web.auth import Caller
from adapters.web.replies import CLOSING, event_json
from core.conversation import Engine
from core.events import ConversationKey, Inbound
from core.personas import PersonaCatalogue
from core.storage.api import ApiStore, ConversationSummary, Review
from core.storage.base import AccessRule, StoredFlag
from core.storage.sql import SqlStore

log = logging.getLogger(__name__)

PLATFORM = "api"
WORKSPACE = "api"
MAX_TEXT = 32_000  # characters in one message
# Refusals at the door, as HTTP statuses (the engine's reason -> status, error type).
REFUSED_STATUS = {"limit": (429, "rate_limited"), "access": (403, "forbidden")}
CALLER = web.RequestKey("caller", Caller)


class ApiError(web.HTTPException):
    """An error answered as `{"error": {"message", "type"}}`."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        self.status_code = status
        super().__init__(
            text=json.dumps({"error": {"message": message, "type": kind}}),
            content_type="application/json",
        )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request")


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "not_found")


def caller_of(request: web.Request) -> Caller:
    return request[CALLER]


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise bad_request("the body is not JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the body is not a JSON object")
    return body


class ConversationsApi:
    """The conversation endpoints. A conversation is the key
    (api, api, the caller's user id, its id): a user sees only their own."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: SqlStore,
        api: ApiStore,
        personas: PersonaCatalogue,
        default_persona: str,
    ) -> None:
        self._engine = engine
        self._store = store
        self._api = api
        self._personas = personas
        self._default = default_persona

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/me", self.me),
            web.get("/personas", self.personas),
            web.get("/conversations", self.list),
            web.post("/conversations", self.create),
            web.get("/conversations/{id}", self.read),
            web.post("/conversations/{id}/messages", self.send),
            web.post("/conversations/{id}/reset", self.reset),
            web.put("/conversations/{id}/persona", self.set_persona),
        ]

    async def me(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        return web.json_response(
            {"user": caller.user_id, "name": caller.name, "admin": caller.admin}
        )

    async def personas(self, request: web.Request) -> web.Response:
        listed = [
            {"name": p.name, "description": p.description, "model": p.model or None}
            for p in self._personas
        ]
        return web.json_response({"personas": listed, "default": self._default})

    async def list(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        found = await self._api.conversations(channel=user_channel(caller))
        return web.json_response({"conversations": [self._summary(c) for c in found]})

    async def create(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        body = await json_body(request) if request.can_read_body else {}
        persona = self._persona_named(body.get("persona"))
        key = conversation_key(caller, uuid.uuid4().hex[:16])
        await self._store.conversation(key=key)
        if persona is not None:
            await self._store.set_persona(key=key, persona=persona, channel=False)
        summary = ConversationSummary(key.thread, "", persona, datetime.now(UTC))
        return web.json_response(self._summary(summary), status=201)

    async def read(self, request: web.Request) -> web.Response:
        key = await self._own(request)
        state = await self._store.conversation(key=key)
        history = await self._api.history(key=key)
        title = next((m.content for m in history if m.role == "user"), "")
        updated = history[-1].created_at if history else None
        return web.json_response(
            {
                "id": key.thread,
                "title": _title(title),
                "persona": state.persona or state.channel_persona or self._default,
                "updated_at": iso(updated),
                "messages": [
                    {
                        "id": m.id,
                        "role": m.role,
                        "content": m.content,
                        "created_at": iso(m.created_at),
                    }
                    for m in history
                ],
            }
        )

    async def send(self, request: web.Request) -> web.StreamResponse:
        key = await self._own(request)
        body = await json_body(request)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise bad_request("text: a non-empty string is needed")
        if len(text) > MAX_TEXT:
            raise bad_request(f"text: at most {MAX_TEXT} characters")
        event_id = request.headers.get("Idempotency-Key") or uuid.uuid4().hex
        inbound = inbound_for(caller_of(request), key, text, event_id)
        events = await self.reply(inbound)
        if "text/event-stream" in request.headers.get("Accept", ""):
            return await stream_events(request, events)
        kind, fields = await last_event(events)
        return web.json_response({"kind": kind, **fields})

    async def reply(self, inbound: Inbound) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """The turn's events for the client, once it is under way. A message already sent
        (its Idempotency-Key again) is a 409, one over a limit a 429, one the access rules
        keep out a 403: HTTP's own answers, before any body. The turn then runs to its end
        even when the client goes (the answer is stored; the next read shows it)."""
        events = self._events(inbound)
        first = await anext(events, None)
        if first is None:
            raise ApiError(409, "that message was already sent", "duplicate")
        kind, fields = first
        if kind == "refused" and fields["reason"] in REFUSED_STATUS:
            await events.aclose()  # the refusal was the turn's end
            status, error = REFUSED_STATUS[fields["reason"]]
            raise ApiError(status, fields["text"], error)

        async def chained() -> AsyncIterator[tuple[str, dict[str, Any]]]:
            yield first
            async for event in events:
                yield event

        return chained()

    async def _events(self, inbound: Inbound) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        async for event in self._engine.handle(inbound):
            shown = event_json(event)
            if shown is not None:
                yield shown

    async def reset(self, request: web.Request) -> web.Response:
        key = await self._own(request)
        await self._store.reset(key=key)
        return web.Response(status=204)

    async def set_persona(self, request: web.Request) -> web.Response:
        key = await self._own(request)
        body = await json_body(request)
        persona = self._persona_named(body.get("persona"))
        if persona is None:
            raise bad_request("persona: a persona's name is needed")
        await self._store.set_persona(key=key, persona=persona, channel=False)
        [summary] = await self._api.conversations(channel=key.channel_key, thread=key.thread)
        return web.json_response(self._summary(summary))

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        key = await self._own(request)
        caller = caller_of(request)
        socket = web.WebSocketResponse(heartbeat=30)
        await socket.prepare(request)
        async for message in socket:
            if message.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(message.data)
            except ValueError:
                data = None
            text = data.get("text") if isinstance(data, dict) else None
            if not isinstance(data, dict) or data.get("type") != "message":
                await socket.send_json(
                    {
                        "type": "error",
                        "message": 'send {"type": "message", "text": ...}',
                        "error": "invalid_request",
                    }
                )
                continue
            if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
                await socket.send_json(
                    {
                        "type": "error",
                        "message": f"text: 1 to {MAX_TEXT} characters",
                        "error": "invalid_request",
                    }
                )
                continue
            event_id = str(data.get("id") or uuid.uuid4().hex)
            try:
                events = await self.reply(inbound_for(caller, key, text, event_id))
            except ApiError as refused:
                error = json.loads(refused.text or "{}")["error"]
                await socket.send_json(
                    {"type": "error", "message": error["message"], "error": error["type"]}
                )
                continue
            async for kind, fields in events:
                if not socket.closed:
                    await socket.send_json({"type": kind, **fields})
        return socket

    async def _own(self, request: web.Request) -> ConversationKey:
        """The caller's conversation named in the path; 404 for anyone else's or none."""
        key = conversation_key(caller_of(request), request.match_info["id"])
        if not await self._store.conversation_exists(key=key):
            raise not_found(f"no conversation {key.thread}")
        return key

    def _persona_named(self, name: object) -> str | None:
        if name is None or name == "":
            return None
        if not isinstance(name, str) or self._personas.get(name) is None:
            known = ", ".join(p.name for p in self._personas)
            raise not_found(f"no persona {name!r}; the personas are {known}")
        return name

    def _summary(self, conversation: ConversationSummary) -> dict[str, Any]:
        return {
            "id": conversation.thread,
            "title": _title(conversation.title),
            "persona": conversation.persona or self._default,
            "updated_at": iso(conversation.updated_at),
        }


class ChannelChange(BaseModel):
    """A PATCH of a channel's settings (ChannelSettings' fields; null: the default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    persona: str | None = None
    scope: Literal["thread", "channel", "user"] | None = None
    tools: list[str] | None = None
    buffer_output: bool | None = None
    merge_queued: bool | None = None
    user_rpm: NonNegativeInt | None = None
    user_tokens_per_day: NonNegativeInt | None = None
    require_mention: bool | None = None
    knowledge: list[str] | None = None


class AdminApi:
    """`/api/v1/admin`: for admin credentials only (the middleware checks)."""

    def __init__(
        self, *, engine: Engine, store: SqlStore, api: ApiStore, personas: PersonaCatalogue
    ) -> None:
        self._engine = engine
        self._store = store
        self._api = api
        self._personas = personas

    def routes(self) -> list[web.RouteDef]:
        channel = "/admin/channels/{platform}/{workspace}/{channel}"
        return [
            web.get("/admin/flags", self.flags),
            web.post("/admin/flags/{id}/review", self.review),
            web.get("/admin/usage", self.usage),
            web.get("/admin/access-rules", self.rules),
            web.post("/admin/access-rules", self.add_rule),
            web.delete("/admin/access-rules", self.remove_rule),
            web.get(channel, self.channel),
            web.patch(channel, self.update_channel),
            web.get("/admin/search", self.search),
        ]

    async def flags(self, request: web.Request) -> web.Response:
        review = request.query.get("review", "open")
        if review not in ("open", "all"):
            raise bad_request("review: open or all")
        limit = _int_query(request, "limit", 50, 1, 500)
        found = await self._api.flags(unreviewed=review == "open", limit=limit)
        return web.json_response({"flags": [_flag_json(f, r) for f, r in found]})

    async def review(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        decision = body.get("decision")
        if decision not in ("dismiss", "confirm"):
            raise bad_request("decision: dismiss or confirm")
        try:
            flag_id = int(request.match_info["id"])
        except ValueError:
            raise not_found("no such flag") from None
        caller = caller_of(request)
        found = await self._api.review_flag(flag_id=flag_id, decision=decision, by=caller.user_id)
        if found is None:
            raise not_found(f"no flag {flag_id}")
        return web.json_response(_flag_json(*found))

    async def usage(self, request: web.Request) -> web.Response:
        days = _int_query(request, "days", 30, 1, 366)
        rows = await self._api.usage_by_day(days=days)
        return web.json_response(
            {
                "days": [
                    {
                        "day": r.day,
                        "user": r.user_id,
                        "platform": r.platform,
                        "calls": r.calls,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                        "cost_usd": round(r.cost_usd, 6),
                    }
                    for r in rows
                ]
            }
        )

    async def rules(self, request: web.Request) -> web.Response:
        rules = await self._store.access_rules()
        return web.json_response({"rules": [asdict(rule) for rule in rules]})

    async def add_rule(self, request: web.Request) -> web.Response:
        rule = _rule(await json_body(request))
        await self._store.add_access_rule(rule=rule, added_by=caller_of(request).user_id)
        self._engine.access_rules_changed()
        return web.json_response(asdict(rule), status=201)

    async def remove_rule(self, request: web.Request) -> web.Response:
        rule = _rule(await json_body(request))
        if not await self._store.remove_access_rule(rule=rule):
            raise not_found("no such rule")
        self._engine.access_rules_changed()
        return web.Response(status=204)

    async def channel(self, request: web.Request) -> web.Response:
        settings = await self._store.channel(key=_channel_key(request))
        return web.json_response(asdict(settings))

    async def update_channel(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        unknown = set(body) - set(ChannelChange.model_fields)
        if unknown:
            raise bad_request(f"not channel settings: {', '.join(sorted(unknown))}")
        try:
            change = ChannelChange.model_validate(body).model_dump(exclude_unset=True)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise bad_request(f"{first['loc'][0]}: {first['msg']}") from None
        persona = change.get("persona")
        if persona is not None and self._personas.get(persona) is None:
            names = ", ".join(p.name for p in self._personas)
            raise not_found(f"no persona {persona!r}; the personas are {names}")
        key = _channel_key(request)
        if change:
            await self._store.update_channel(key=key, **change)
        return web.json_response(asdict(await self._store.channel(key=key)))

    async def search(self, request: web.Request) -> web.Response:
        query = request.query.get("q", "").strip()
        if not query:
            raise bad_request("q: the text to look for")
        limit = _int_query(request, "limit", 50, 1, 500)
        found = await self._api.search(query=query, limit=limit)
        return web.json_response(
            {
                "results": [
                    {
                        "conversation": "/".join(
                            (f.key.platform, f.key.workspace, f.key.channel, f.key.thread)
                        ),
                        "platform": f.key.platform,
                        "user": f.user_id,
                        "role": f.role,
                        "content": f.content,
                        "created_at": iso(f.created_at),
                    }
                    for f in found
                ]
            }
        )


async def last_event(
    events: AsyncIterator[tuple[str, dict[str, Any]]],
) -> tuple[str, dict[str, Any]]:
    """The event that closes the turn (every turn ends with exactly one)."""
    async for kind, fields in events:
        if kind in CLOSING:
            return kind, fields
    raise RuntimeError("a turn ended without its closing event")


async def stream_events(
    request: web.Request, events: AsyncIterator[tuple[str, dict[str, Any]]]
) -> web.StreamResponse:
    """Server-sent events; a client that leaves stops the writing, not the turn."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
        }
    )
    await response.prepare(request)
    writing = True
    async for kind, fields in events:
        if not writing:
            continue
        payload = json.dumps(fields, ensure_ascii=False)
        try:
            await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
        except (ConnectionError, RuntimeError):
            writing = False  # gone; the turn still ends and is stored
    if writing:
        await response.write_eof()
    return response


def user_channel(caller: Caller) -> ConversationKey:
    return ConversationKey(PLATFORM, WORKSPACE, caller.user_id)


def conversation_key(caller: Caller, conversation: str) -> ConversationKey:
    if not conversation or len(conversation) > 128:
        raise not_found("no such conversation")
    return ConversationKey(PLATFORM, WORKSPACE, caller.user_id, conversation)


def inbound_for(caller: Caller, key: ConversationKey, text: str, event_id: str) -> Inbound:
    return Inbound(
        key=key,
        event_id=f"{caller.user_id}:{event_id}"[:255],
        user_id=caller.user_id,
        user_name=caller.name,
        text=text,
        is_direct=True,
    )


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 80 else line[:79] + "…"


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.query.get(name, default))
    except ValueError:
        raise bad_request(f"{name}: a whole number") from None
    if not low <= value <= high:
        raise bad_request(f"{name}: from {low} to {high}")
    return value


def _flag_json(flag: StoredFlag, review: Review) -> dict[str, Any]:
    return {
        "id": flag.id,
        "created_at": iso(flag.at),
        "platform": flag.key.platform,
        "workspace": flag.key.workspace,
        "channel": flag.key.channel,
        "user": flag.user_id,
        "direction": flag.direction,
        "action": flag.action,
        "categories": flag.categories,
        "excerpt": flag.excerpt,
        "review": review.review,
        "reviewed_by": review.reviewed_by or None,
        "reviewed_at": iso(review.reviewed_at),
    }


def _rule(body: dict[str, Any]) -> AccessRule:
    platform = body.get("platform", "")
    kind, value, listed = body.get("kind"), body.get("value"), body.get("list")
    if not isinstance(platform, str) or kind not in ("user", "channel", "workspace"):
        raise bad_request('a rule: platform ("" for all), kind (user, channel or workspace)')
    if not isinstance(value, str) or not value or listed not in ("allow", "block"):
        raise bad_request("a rule: value (an id) and list (allow or block)")
    return AccessRule(platform=platform, kind=kind, value=value, list=listed)


def _channel_key(request: web.Request) -> ConversationKey:
    info = request.match_info
    workspace = "" if info["workspace"] == "-" else info["workspace"]
    return ConversationKey(info["platform"], workspace, info["channel"])
