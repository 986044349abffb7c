"""The OpenAPI 3.1 description served at `/api/v1/openapi.json` (a test checks that every
route is in it and that it is a valid document)."""

from __future__ import annotations

from typing import Any


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _obj(required: list[str] | None = None, **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


STRING = {"type": "string"}
NULLABLE_STRING = {"type": ["string", "null"]}
INTEGER = {"type": "integer"}
ERRORS = {
    "400": {"$ref": "#/components/responses/BadRequest"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "404": {"$ref": "#/components/responses/NotFound"},
}
ADMIN_ERRORS = {**ERRORS, "403": {"$ref": "#/components/responses/Forbidden"}}
ID = {"name": "id", "in": "path", "required": True, "schema": STRING}
CHANNEL_PARAMETERS = [
    {"name": name, "in": "path", "required": True, "schema": STRING}
    for name in ("platform", "workspace", "channel")
]


def _operation(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **ERRORS}, **more}


def _admin(summary: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**responses, **ADMIN_ERRORS}, **more}


RULE = _obj(
    ["kind", "value", "list"],
    platform={"type": "string", "description": '"" for every platform'},
    kind={"enum": ["user", "channel", "workspace"]},
    value=STRING,
    list={"enum": ["allow", "block"]},
)

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Parley",
        "version": "1",
        "description": "Conversations with Parley's personas; see docs/API.md.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/me": {"get": _operation("Who the credential is", {"200": _json(_ref("Me"))})},
        "/api/v1/personas": {
            "get": _operation(
                "The personas",
                {
                    "200": _json(
                        _obj(
                            personas={"type": "array", "items": _ref("Persona")},
                            default=STRING,
                        )
                    )
                },
            )
        },
        "/api/v1/conversations": {
            "get": _operation(
                "The caller's conversations, most recently active first",
                {
                    "200": _json(
                        _obj(conversations={"type": "array", "items": _ref("Conversation")})
                    )
                },
            ),
            "post": _operation(
                "Start a conversation",
                {"201": _json(_ref("Conversation"), "Created")},
                requestBody={
                    "required": False,
                    "content": {"application/json": {"schema": _obj(persona=STRING)}},
                },
            ),
        },
        "/api/v1/conversations/{id}": {
            "get": _operation(
                "A conversation and its messages, oldest first",
                {"200": _json(_ref("ConversationWithMessages"))},
                parameters=[ID],
            )
        },
        "/api/v1/conversations/{id}/messages": {
            "post": _operation(
                "Send a message; the reply streams as server-sent events with "
                "Accept: text/event-stream, else comes as one JSON object",
                {
                    "200": {
                        "description": "The reply",
                        "content": {
                            "text/event-stream": {
                                "schema": {
                                    "type": "string",
                                    "description": "events delta, tool, then one of final, "
                                    "command, refused, retracted, failed",
                                }
                            },
                            "application/json": {"schema": _ref("Reply")},
                        },
                    },
                    "409": {"description": "The Idempotency-Key was already used"},
                    "429": {"description": "A limit; the message says when to retry"},
                },
                parameters=[
                    ID,
                    {"name": "Idempotency-Key", "in": "header", "schema": STRING},
                ],
                requestBody=_body(_obj(["text"], text=STRING)),
            )
        },
        "/api/v1/conversations/{id}/reset": {
            "post": _operation(
                "Start afresh (the history is kept, the model no longer sees it)",
                {"204": {"description": "Reset"}},
                parameters=[ID],
            )
        },
        "/api/v1/conversations/{id}/persona": {
            "put": _operation(
                "Change the conversation's persona",
                {"200": _json(_ref("Conversation"))},
                parameters=[ID],
                requestBody=_body(_obj(["persona"], persona=STRING)),
            )
        },
        "/api/v1/conversations/{id}/ws": {
            "get": _operation(
                "WebSocket: send {type: message, text}; receive the reply events as "
                "{type: delta | tool | final | command | refused | retracted | failed, ...}",
                {"101": {"description": "Switching protocols"}},
                parameters=[ID, {"name": "token", "in": "query", "schema": STRING}],
            )
        },
        "/api/v1/admin/flags": {
            "get": _admin(
                "Moderation flags, newest first",
                {"200": _json(_obj(flags={"type": "array", "items": _ref("Flag")}))},
                parameters=[
                    {"name": "review", "in": "query", "schema": {"enum": ["open", "all"]}},
                    {"name": "limit", "in": "query", "schema": INTEGER},
                ],
            )
        },
        "/api/v1/admin/flags/{id}/review": {
            "post": _admin(
                "A person's review of a flag",
                {"200": _json(_ref("Flag"))},
                parameters=[ID],
                requestBody=_body(_obj(["decision"], decision={"enum": ["dismiss", "confirm"]})),
            )
        },
        "/api/v1/admin/usage": {
            "get": _admin(
                "Model calls, tokens and cost per user and UTC day",
                {"200": _json(_obj(days={"type": "array", "items": _ref("DayUsage")}))},
                parameters=[{"name": "days", "in": "query", "schema": INTEGER}],
            )
        },
        "/api/v1/admin/access-rules": {
            "get": _admin(
                "Access rules stored by admins",
                {"200": _json(_obj(rules={"type": "array", "items": RULE}))},
            ),
            "post": _admin("Add a rule", {"201": _json(RULE, "Added")}, requestBody=_body(RULE)),
            "delete": _admin(
                "Remove a rule", {"204": {"description": "Removed"}}, requestBody=_body(RULE)
            ),
        },
        "/api/v1/admin/channels/{platform}/{workspace}/{channel}": {
            "get": _admin(
                "A channel's settings (workspace - for none)",
                {"200": _json(_ref("ChannelSettings"))},
                parameters=CHANNEL_PARAMETERS,
            ),
            "patch": _admin(
                "Change a channel's settings (null: the default)",
                {"200": _json(_ref("ChannelSettings"))},
                parameters=CHANNEL_PARAMETERS,
                requestBody=_body(_ref("ChannelSettings")),
            ),
        },
        "/api/v1/admin/search": {
            "get": _admin(
                "Messages of every conversation holding the text, newest first",
                {"200": _json(_obj(results={"type": "array", "items": _ref("Found")}))},
                parameters=[
                    {"name": "q", "in": "query", "required": True, "schema": STRING},
                    {"name": "limit", "in": "query", "schema": INTEGER},
                ],
            )
        },
        "/v1/models": {
            "get": _operation(
                "OpenAI-compatible: the personas as models",
                {"200": _json(_obj(object=STRING, data={"type": "array", "items": _obj()}))},
            )
        },
        "/v1/chat/completions": {
            "post": _operation(
                "OpenAI-compatible chat completions; `user` or X-Parley-Conversation names a "
                "conversation Parley keeps (only the newest user message is taken)",
                {
                    "200": {
                        "description": "A chat.completion, or chunks with stream: true",
                        "content": {
                            "application/json": {"schema": _obj()},
                            "text/event-stream": {"schema": STRING},
                        },
                    },
                    "502": {"description": "The model failed"},
                },
                parameters=[{"name": "X-Parley-Conversation", "in": "header", "schema": STRING}],
                requestBody=_body(
                    _obj(
                        ["model", "messages"],
                        model=STRING,
                        messages={"type": "array", "items": _obj()},
                        stream={"type": "boolean"},
                        user=STRING,
                    )
                ),
            )
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key (parley keys create) or a JWT",
            }
        },
        "responses": {
            name: _json(_ref("Error"), description)
            for name, description in (
                ("BadRequest", "The request is malformed"),
                ("Unauthorized", "No valid credentials"),
                ("Forbidden", "Not an admin credential"),
                ("NotFound", "No such conversation, persona or item"),
            )
        },
        "schemas": {
            "Error": _obj(["error"], error=_obj(["message", "type"], message=STRING, type=STRING)),
            "Me": _obj(
                ["user", "name", "admin"], user=STRING, name=STRING, admin={"type": "boolean"}
            ),
            "Persona": _obj(["name"], name=STRING, description=STRING, model=NULLABLE_STRING),
            "Conversation": _obj(
                ["id", "title", "persona"],
                id=STRING,
                title=STRING,
                persona=STRING,
                updated_at=NULLABLE_STRING,
            ),
            "Message": _obj(
                ["id", "role", "content", "created_at"],
                id=INTEGER,
                role={"enum": ["user", "assistant"]},
                content=STRING,
                created_at=STRING,
            ),
            "ConversationWithMessages": {
                "allOf": [
                    _ref("Conversation"),
                    _obj(["messages"], messages={"type": "array", "items": _ref("Message")}),
                ]
            },
            "Reply": _obj(
                ["kind", "text"],
                kind={"enum": ["final", "command", "refused", "retracted", "failed"]},
                text=STRING,
                reason=STRING,
                usage=_obj(prompt_tokens=INTEGER, completion_tokens=INTEGER, model=STRING),
            ),
            "Flag": _obj(
                ["id", "action", "direction", "excerpt"],
                id=INTEGER,
                created_at=STRING,
                platform=STRING,
                workspace=STRING,
                channel=STRING,
                user=STRING,
                direction={"enum": ["input", "output"]},
                action={"enum": ["block", "redact", "flag", "unchecked"]},
                categories={"type": "array", "items": STRING},
                excerpt=STRING,
                review={"enum": [None, "dismissed", "confirmed"]},
                reviewed_by=NULLABLE_STRING,
                reviewed_at=NULLABLE_STRING,
            ),
            "DayUsage": _obj(
                day=STRING,
                user=STRING,
                platform=STRING,
                calls=INTEGER,
                prompt_tokens=INTEGER,
                completion_tokens=INTEGER,
                cost_usd={"type": "number"},
            ),
            "ChannelSettings": _obj(
                persona=NULLABLE_STRING,
                scope=NULLABLE_STRING,
                tools={"type": ["array", "null"], "items": STRING},
                buffer_output={"type": ["boolean", "null"]},
                merge_queued={"type": ["boolean", "null"]},
                user_rpm={"type": ["integer", "null"]},
                user_tokens_per_day={"type": ["integer", "null"]},
                require_mention={"type": ["boolean", "null"]},
                knowledge={"type": ["array", "null"], "items": STRING},
            ),
            "Found": _obj(
                conversation=STRING,
                platform=STRING,
                user=STRING,
                role=STRING,
                content=STRING,
                created_at=STRING,
            ),
        },
    },
}
