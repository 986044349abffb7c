"""The HTTP API over real connections: credentials, conversations, server-sent events, the
WebSocket, idempotency, a client that leaves mid-answer, CORS and the OpenAPI description."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa
from openapi_spec_validator import validate

from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import web_server
from tests.platforms.test_database_faults import terminate_backends
from tests.web.conftest import (
    ALLOWED_ORIGIN,
    JWT_SECRET,
    Serve,
    Served,
    parse_events,
    serving,
)


async def test_without_valid_credentials_every_call_is_401_and_nothing_is_stored(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    await served.keys.create_key(name="gone")
    revoked = await served.keys.create_key(name="gone2")
    await served.keys.revoke_key(name="gone2")
    expired = jwt.encode({"sub": "eve", "exp": int(time.time()) - 10}, JWT_SECRET)
    forged = jwt.encode(
        {"sub": "eve", "exp": int(time.time()) + 60}, "another-secret-32-bytes-long!!!!"
    )
    wrong = [None, "pk-not-a-key", revoked, expired, forged, "Basic abc"]
    calls = [
        ("GET", "/api/v1/me", None),
        ("GET", "/api/v1/conversations", None),
        ("POST", "/api/v1/conversations", {}),
        ("POST", "/api/v1/conversations/abc/messages", {"text": "hi"}),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]},
        ),
        ("GET", "/v1/models", None),
    ]
    for credential in wrong:
        headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
        if credential == "Basic abc":
            headers = {"Authorization": credential}
        for method, path, body in calls:
            async with served.http.request(
                method, served.url + path, headers=headers, json=body
            ) as response:
                assert response.status == 401, (credential, path)
                error = await response.json()
                assert error["error"]["type"] == "unauthorized"
    assert await served.rows() == (0, 0)
    assert fake_openai.chat_requests == []


async def test_a_conversation_streams_its_reply_and_keeps_its_history(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hello Alice, nice to meet you.")
    fake_openai.reply("You said your name is Alice.")
    conversation = await served.start()

    events = await served.events(conversation, "Hi, I am Alice")
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "final" and set(kinds[:-1]) == {"delta"} and len(kinds) > 3
    assert "".join(e["text"] for k, e in events if k == "delta") == "Hello Alice, nice to meet you."
    final = events[-1][1]
    assert final["text"] == "Hello Alice, nice to meet you."
    assert final["usage"]["model"] == "gpt-4o-mini"

    await served.events(conversation, "What is my name?")
    sent = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == [
        "alice: Hi, I am Alice",
        "Hello Alice, nice to meet you.",
        "alice: What is my name?",
    ]

    status, read = await served.call("GET", f"/api/v1/conversations/{conversation}")
    assert status == 200
    assert read["title"] == "Hi, I am Alice" and read["persona"] == "assistant"
    assert [(m["role"], m["content"]) for m in read["messages"]] == [
        ("user", "Hi, I am Alice"),
        ("assistant", "Hello Alice, nice to meet you."),
        ("user", "What is my name?"),
        ("assistant", "You said your name is Alice."),
    ]
    status, listed = await served.call("GET", "/api/v1/conversations")
    assert [c["id"] for c in listed["conversations"]] == [conversation]


async def test_reset_persona_and_ownership(served: Served, fake_openai: FakeOpenAI) -> None:
    for answer in ("one", "two", "three"):
        fake_openai.reply(answer)
    conversation = await served.start(persona="editor")
    await served.events(conversation, "first")
    editor_prompt = fake_openai.chat_requests[-1]["messages"][0]["content"]

    status, _ = await served.call("POST", f"/api/v1/conversations/{conversation}/reset")
    assert status == 204
    status, changed = await served.call(
        "PUT", f"/api/v1/conversations/{conversation}/persona", json={"persona": "translator"}
    )
    assert (status, changed["persona"]) == (200, "translator")
    await served.events(conversation, "second")
    sent = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == ["alice: second"]  # the reset holds
    assert sent[0]["content"] != editor_prompt

    # Another user (root) cannot see, read or write alice's conversation.
    for method, path, body in [
        ("GET", f"/api/v1/conversations/{conversation}", None),
        ("POST", f"/api/v1/conversations/{conversation}/messages", {"text": "hi"}),
        ("POST", f"/api/v1/conversations/{conversation}/reset", None),
        ("PUT", f"/api/v1/conversations/{conversation}/persona", {"persona": "editor"}),
    ]:
        status, error = await served.call(method, path, key=served.admin_key, json=body)
        assert (status, error["error"]["type"]) == (404, "not_found"), path
    status, listed = await served.call("GET", "/api/v1/conversations", key=served.admin_key)
    assert listed == {"conversations": []}
    status, error = await served.call(
        "PUT", f"/api/v1/conversations/{conversation}/persona", json={"persona": "nobody"}
    )
    assert status == 404 and "editor" in error["error"]["message"]
    assert len(fake_openai.chat_requests) == 2


async def test_a_json_reply_and_an_idempotency_key_answer_once(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Only once.")
    conversation = await served.start()
    path = f"/api/v1/conversations/{conversation}/messages"
    headers = {"Idempotency-Key": "retry-7"}
    status, reply = await served.call("POST", path, json={"text": "hi"}, headers=headers)
    assert (status, reply["kind"], reply["text"]) == (200, "final", "Only once.")
    status, again = await served.call("POST", path, json={"text": "hi"}, headers=headers)
    assert (status, again["error"]["type"]) == (409, "duplicate")
    assert len(fake_openai.chat_requests) == 1
    status, error = await served.call("POST", path, json={"text": "  "})
    assert (status, error["error"]["type"]) == (400, "invalid_request")
    status, error = await served.call("POST", path, data=b"not json")
    assert status == 400


async def test_a_failing_model_is_a_failed_event_and_the_message_is_kept(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(500)
    conversation = await served.start()
    events = await served.events(conversation, "are you there?")
    assert [kind for kind, _ in events] == ["failed"]
    assert "Traceback" not in events[0][1]["text"] and events[0][1]["reason"]
    _, read = await served.call("GET", f"/api/v1/conversations/{conversation}")
    assert [m["content"] for m in read["messages"]] == ["are you there?"]


async def test_a_client_that_leaves_mid_answer_still_gets_it_stored(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    answer = "This answer takes a while to write, and nobody waits for it. " * 2
    fake_openai.reply(answer, chunk_delay=0.02)
    conversation = await served.start()
    async with served.http.post(
        f"{served.url}/api/v1/conversations/{conversation}/messages",
        json={"text": "tell me"},
        headers={**served.auth(), "Accept": "text/event-stream"},
    ) as response:
        first = await response.content.readline()
        assert first == b"event: delta\n"
    # The connection is closed now, mid-answer.
    for _ in range(200):
        _, read = await served.call("GET", f"/api/v1/conversations/{conversation}")
        if len(read["messages"]) == 2:
            break
        await asyncio.sleep(0.05)
    assert [m["content"] for m in read["messages"]] == ["tell me", answer]


async def test_the_websocket_streams_reply_events_both_ways(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Over the socket.")
    fake_openai.reply("Second answer.")
    conversation = await served.start()
    url = f"{served.url}/api/v1/conversations/{conversation}/ws?token={served.user_key}"
    async with served.http.ws_connect(url) as socket:
        await socket.send_json({"type": "nonsense"})
        error = await socket.receive_json()
        assert (error["type"], error["error"]) == ("error", "invalid_request")
        for text, expected in (("hello", "Over the socket."), ("again", "Second answer.")):
            await socket.send_json({"type": "message", "text": text})
            received = []
            while not received or received[-1]["type"] != "final":
                received.append(await socket.receive_json(timeout=10))
            assert {m["type"] for m in received[:-1]} == {"delta"}
            assert "".join(m["text"] for m in received[:-1]) == expected
            assert received[-1]["text"] == expected
    assert fake_openai.chat_requests[-1]["messages"][-1]["content"] == "alice: again"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await served.http.ws_connect(
            f"{served.url}/api/v1/conversations/{conversation}/ws?token=pk-wrong"
        )
    assert refused.value.status == 401


async def test_jwt_bearer_tokens_name_their_user_and_admin_role(served: Served) -> None:
    token = jwt.encode({"sub": "u-42", "name": "Dana", "exp": int(time.time()) + 60}, JWT_SECRET)
    status, me = await served.call("GET", "/api/v1/me", key=token)
    assert (status, me) == (200, {"user": "jwt:u-42", "name": "Dana", "admin": False})
    admin = jwt.encode(
        {"sub": "ops", "roles": ["parley-admin"], "exp": int(time.time()) + 60}, JWT_SECRET
    )
    status, me = await served.call("GET", "/api/v1/me", key=admin)
    assert me["admin"] is True
    status, _ = await served.call("GET", "/api/v1/admin/flags", key=admin)
    assert status == 200
    no_expiry = jwt.encode({"sub": "u-42"}, JWT_SECRET)
    status, _ = await served.call("GET", "/api/v1/me", key=no_expiry)
    assert status == 401


async def test_cors_answers_allowed_origins_only(served: Served, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("cross-origin answer")
    preflight = {
        "Origin": ALLOWED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with served.http.options(
        served.url + "/api/v1/conversations", headers=preflight
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "Authorization" in response.headers["Access-Control-Allow-Headers"]
    async with served.http.options(
        served.url + "/api/v1/conversations",
        headers={**preflight, "Origin": "https://evil.example"},
    ) as response:
        assert response.status == 403
        assert "Access-Control-Allow-Origin" not in response.headers
    conversation = await served.start()
    async with served.http.post(
        f"{served.url}/api/v1/conversations/{conversation}/messages",
        json={"text": "hi"},
        headers={**served.auth(), "Accept": "text/event-stream", "Origin": ALLOWED_ORIGIN},
    ) as response:
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert parse_events(await response.text())[-1][0] == "final"
    async with served.http.get(
        served.url + "/api/v1/me", headers={"Origin": ALLOWED_ORIGIN}
    ) as response:
        assert response.status == 401  # an error carries the header too, so pages can read it
        assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


async def test_the_openapi_document_is_valid_and_describes_every_route(served: Served) -> None:
    async with served.http.get(served.url + "/api/v1/openapi.json") as response:
        assert response.status == 200  # no credentials needed
        document = await response.json()
    validate(document)
    documented = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    routes = set(served_routes(served.server.app))
    api = {r for r in routes if r.split()[1].startswith(("/api/v1/", "/v1/"))}
    assert api - {"GET /api/v1/openapi.json"} == documented
    assert {"GET /", "GET /admin"} <= routes


def served_routes(app: web.Application) -> Iterator[str]:
    """METHOD path of every route, sub-applications' included (their paths carry the
    prefix)."""
    for resource in app.router.resources():
        if isinstance(resource, web.PrefixedSubAppResource):
            yield from served_routes(resource._app)
            continue
        for route in resource:
            if route.method not in ("HEAD", "*"):
                yield f"{route.method} {resource.canonical}"


async def test_each_key_is_a_user_for_limits(serve: Serve, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("first answer")
    fake_openai.reply("bob's answer")
    async with serve(PARLEY_USER_RPM=1) as served:
        bob = await served.keys.create_key(name="bob")
        alice_chat = await served.start()
        await served.events(alice_chat, "one")
        path = f"/api/v1/conversations/{alice_chat}/messages"
        status, error = await served.call("POST", path, json={"text": "two"})
        assert (status, error["error"]["type"]) == (429, "rate_limited")
        assert "minute" in error["error"]["message"]  # the engine's words: when to retry
        bob_chat = await served.start(key=bob)  # another key, another user: not limited
        status, reply = await served.call(
            "POST", f"/api/v1/conversations/{bob_chat}/messages", key=bob, json={"text": "hi"}
        )
        assert (status, reply["text"]) == (200, "bob's answer")
    assert len(fake_openai.chat_requests) == 2


async def test_jwts_signed_with_a_key_from_a_jwks_url(serve: Serve) -> None:
    """An identity provider's keys, published as a JWK set (RS256), with audience and
    issuer checked."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwks = {"keys": [{**public, "kid": "key-1", "use": "sig", "alg": "RS256"}]}
    fetched = 0

    async def keys(request: web.Request) -> web.Response:
        nonlocal fetched
        fetched += 1
        return web.json_response(jwks)

    claims = {
        "sub": "idp-7",
        "aud": "parley",
        "iss": "https://idp.example",
        "exp": int(time.time()) + 60,
    }

    def token(**changes: object) -> str:
        return jwt.encode(
            {**claims, **changes}, private, algorithm="RS256", headers={"kid": "key-1"}
        )

    async with (
        web_server(web.get("/.well-known/jwks.json", keys)) as idp,
        serve(
            PARLEY_JWT_SECRET="",
            PARLEY_JWT_JWKS_URL=f"{idp}/.well-known/jwks.json",
            PARLEY_JWT_AUDIENCE="parley",
            PARLEY_JWT_ISSUER="https://idp.example",
        ) as served,
    ):
        status, me = await served.call("GET", "/api/v1/me", key=token())
        assert (status, me["user"]) == (200, "jwt:idp-7")
        for wrong in (token(aud="other"), token(iss="https://evil.example")):
            status, _ = await served.call("GET", "/api/v1/me", key=wrong)
            assert status == 401
        hs256 = jwt.encode(claims, JWT_SECRET)  # a shared secret is not accepted now
        status, _ = await served.call("GET", "/api/v1/me", key=hs256)
        assert status == 401
    assert fetched == 1  # the key set is cached


@pytest.mark.postgres
async def test_backends_terminated_between_requests_lose_nothing(
    postgres_url: str, fake_openai: FakeOpenAI
) -> None:
    """A failover or an administrator kills the server's connections between two messages
    and between a key's lookups: the next requests retry and succeed."""
    fake_openai.reply("first answer")
    fake_openai.reply("second answer")
    async with serving(postgres_url, fake_openai) as served:
        conversation = await served.start()
        await served.events(conversation, "one")
        assert await terminate_backends(postgres_url) >= 1
        status, me = await served.call("GET", "/api/v1/me")
        assert (status, me["name"]) == (200, "alice")
        assert await terminate_backends(postgres_url) >= 1
        events = await served.events(conversation, "two")
        assert (events[-1][0], events[-1][1]["text"]) == ("final", "second answer")
        _, read = await served.call("GET", f"/api/v1/conversations/{conversation}")
    assert [m["content"] for m in read["messages"]] == [
        "one",
        "first answer",
        "two",
        "second answer",
    ]
