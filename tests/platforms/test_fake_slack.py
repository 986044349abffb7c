"""FakeSlack against the real slack-sdk and slack-bolt, without Parley's code."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack_server import (
    FakeSlack,
    app_mention,
    dm_message,
    dropped,
    empty_error,
    event_callback,
    html_error,
    not_json_error,
    post_event,
    refused,
    serve,
    server_error,
    sign,
)

SECRET = "s"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


def bolt_app(fake: FakeSlack, seen: list[dict[str, Any]]) -> AsyncApp:
    """A minimal Bolt app: answers mentions in their thread, and /parley."""
    app = AsyncApp(
        client=AsyncWebClient(token="xoxb-test", base_url=fake.api_url), signing_secret=SECRET
    )

    @app.event("app_mention")
    async def mention(event: dict[str, Any], say: Any, request: Any) -> None:
        seen.append({"event": event, "retry_num": request.headers.get("x-slack-retry-num")})
        await say("hi", thread_ts=event.get("thread_ts") or event["ts"])

    @app.command("/parley")
    async def command(ack: Any, respond: Any, command: dict[str, Any]) -> None:
        await ack("working on it")
        await respond(f"done: {command['text']}")

    return app


# --- (a) the Web API with the real AsyncWebClient ----------------------------------------


async def test_web_client_calls_are_recorded(fake: FakeSlack) -> None:
    fake.users["U1"] = "Alice Example"
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)

    auth = await client.auth_test()
    assert (auth["user_id"], auth["bot_id"], auth["team_id"]) == ("UBOT", "BBOT", "T1")

    posted = await client.chat_postMessage(channel="C1", text="first", thread_ts="1.0")
    ts = posted["ts"]
    assert posted["message"]["thread_ts"] == "1.0"
    assert fake.messages[ts]["text"] == "first"
    await client.chat_update(channel="C1", ts=ts, text="second")
    assert fake.messages[ts]["text"] == "second"
    assert fake.messages[ts]["versions"] == ["first", "second"]
    later = await client.chat_postMessage(channel="C1", text="later")
    assert later["ts"] > ts  # monotonic, as Slack's are
    assert [m["ts"] for m in fake.messages_in("C1", thread_ts="1.0")] == [ts]

    user = await client.users_info(user="U1")
    assert user["user"]["profile"]["display_name"] == "Alice Example"
    with pytest.raises(SlackApiError) as unknown:
        await client.users_info(user="U404")
    assert unknown.value.response["error"] == "user_not_found"
    info = await client.conversations_info(channel="D9")
    assert info["channel"]["is_im"] is True

    await client.chat_delete(channel="C1", ts=ts)
    assert ts not in fake.messages and ts in fake.deleted

    # chat.postMessage / chat.update go as JSON; auth.test and chat.delete as query-string
    # POSTs; users.info as a GET. The token always travels as a Bearer header.
    calls = fake.calls
    assert [c.method for c in calls] == [
        "auth.test",
        "chat.postMessage",
        "chat.update",
        "chat.postMessage",
        "users.info",
        "users.info",
        "conversations.info",
        "chat.delete",
    ]
    assert all(c.headers["Authorization"] == "Bearer xoxb-test" for c in calls)
    assert all(c.token == "xoxb-test" for c in calls)
    assert "token" not in calls[0].args
    assert calls[1].args == {"channel": "C1", "text": "first", "thread_ts": "1.0"}
    assert calls[1].headers["Content-Type"].startswith("application/json")
    assert fake.calls_to("chat.update")[0].args == {"channel": "C1", "ts": ts, "text": "second"}
    assert fake.calls_to("users.info")[0].args == {"user": "U1"}
    assert fake.calls_to("chat.delete")[0].headers["Content-Type"] == (
        "application/x-www-form-urlencoded"
    )


async def test_unknown_methods_and_scripted_errors(fake: FakeSlack) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    with pytest.raises(SlackApiError) as unknown:
        await client.api_call("nothing.here")
    assert unknown.value.response["error"] == "unknown_method"
    assert fake.calls_to("nothing.here")

    fake.fail_next("chat.update", error="msg_too_long")
    fake.fail_next("chat.update", error="ratelimited")
    posted = await client.chat_postMessage(channel="C1", text="x")
    with pytest.raises(SlackApiError) as too_long:
        await client.chat_update(channel="C1", ts=posted["ts"], text="y" * 5000)
    assert too_long.value.response.status_code == 200
    assert too_long.value.response["error"] == "msg_too_long"
    with pytest.raises(SlackApiError) as limited:
        await client.chat_update(channel="C1", ts=posted["ts"], text="y")
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "1"
    assert limited.value.response["error"] == "ratelimited"
    await client.chat_update(channel="C1", ts=posted["ts"], text="z")  # the queue is used up
    assert fake.messages[posted["ts"]]["text"] == "z"
    assert len(fake.calls_to("chat.update")) == 3

    fake.text_limit = 4000
    with pytest.raises(SlackApiError) as over:
        await client.chat_update(channel="C1", ts=posted["ts"], text="y" * 4001)
    assert over.value.response["error"] == "msg_too_long"


async def test_an_outage_fails_calls_as_an_unhealthy_slack_would(fake: FakeSlack) -> None:
    """What slack_sdk surfaces for each fault, in order, and that the API then recovers."""
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    fake.outage(
        server_error(502),
        html_error(502),
        not_json_error(503),
        empty_error(503),
        dropped(times=2),  # slack_sdk retries a dropped connection once by itself
        refused(2.0),
        methods={"chat.postMessage"},
    )
    errors: list[BaseException] = []
    for _ in range(5):
        with pytest.raises(Exception) as caught:
            await client.chat_postMessage(channel="C1", text="x")
        errors.append(caught.value)
    json_502, html_502, not_json_503, empty_503, dropped_twice = errors
    assert isinstance(json_502, SlackApiError) and json_502.response.status_code == 502
    assert json_502.response["error"] == "internal_error"
    # An HTML page: slack_sdk keeps its response, with no data to read an error from.
    assert isinstance(html_502, SlackApiError) and html_502.response.status_code == 502
    assert html_502.response.data == {}
    # "JSON" that is not: the response in the error is aiohttp's, with `status`.
    assert isinstance(not_json_503, SlackApiError)
    assert isinstance(not_json_503.response, aiohttp.ClientResponse)
    assert not_json_503.response.status == 503
    assert isinstance(empty_503, SlackApiError) and empty_503.response.status_code == 503
    assert isinstance(dropped_twice, aiohttp.ServerDisconnectedError)
    # The port refuses connections for 2 s: a call (and slack_sdk's one retry) fails.
    with pytest.raises(aiohttp.ClientConnectorError):
        await client.chat_postMessage(channel="C1", text="x")
    await fake.outage_over()
    posted = await client.chat_postMessage(channel="C1", text="back")
    assert posted["ok"] and fake.messages[posted["ts"]]["text"] == "back"
    assert [(c.status, c.ok) for c in fake.calls_to("chat.postMessage")] == [
        (502, False),
        (502, False),
        (503, False),
        (503, False),
        (0, False),
        (0, False),
        (200, True),
    ]
    [(start, end)] = fake.refusals
    assert end - start >= 2.0
    # Other methods were never affected.
    assert (await client.auth_test())["ok"]


async def test_an_outage_for_a_time_window_and_on_response_urls(fake: FakeSlack) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    fake.outage(server_error(503, seconds=0.3))
    started = time.monotonic()
    failures = 0
    while True:
        try:
            await client.auth_test()
            break
        except SlackApiError:
            failures += 1
            await asyncio.sleep(0.05)
    assert failures >= 2 and time.monotonic() - started >= 0.3

    url = fake.new_response_url()
    fake.outage(server_error(502), methods={"response_url"})
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"text": "first"}) as failed:
            assert failed.status == 502
        async with session.post(url, json={"text": "second"}) as landed:
            assert landed.status == 200
    assert [p.body["text"] for p in fake.failed_responses] == ["first"]
    assert [p.body["text"] for p in fake.responses] == ["second"]


async def test_rate_limits_are_not_retried_unless_asked(fake: FakeSlack) -> None:
    # slack_sdk's default retry handlers: only one retry of connection errors.
    default = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    assert [type(h) for h in default.retry_handlers] == [AsyncConnectionErrorRetryHandler]

    # Opting in: the rate-limit handler sleeps Retry-After + random() seconds, then retries.
    retrying = AsyncWebClient(
        token="xoxb-test",
        base_url=fake.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.fail_next("chat.postMessage", retry_after=0)
    posted = await retrying.chat_postMessage(channel="C1", text="after a wait")
    assert posted["ok"]
    assert len(fake.calls_to("chat.postMessage")) == 2


async def test_apps_connections_open_wants_an_app_token(fake: FakeSlack) -> None:
    client = AsyncWebClient(token="xoxb-test", base_url=fake.api_url)
    opened = await client.apps_connections_open(app_token="xapp-test")
    assert opened["url"] == fake.socket_url
    with pytest.raises(SlackApiError) as wrong:
        await client.apps_connections_open(app_token="xoxb-test")
    assert wrong.value.response["error"] == "not_allowed_token_type"


# --- (b) Bolt over signed HTTP events ------------------------------------------------------


async def test_bolt_http_events(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    app = bolt_app(fake, seen)
    async with serve(app.web_app(path="/slack/events")) as base:
        url = f"{base}/slack/events"
        body = event_callback(app_mention("<@UBOT> hello", ts="1700000000.000001"))
        status, _ = await post_event(url, body, secret=SECRET)
        assert status == 200
        (reply,) = await fake.wait_calls("chat.postMessage")
        assert reply.args["channel"] == "C1"
        assert reply.args["text"] == "hi"
        assert reply.args["thread_ts"] == "1700000000.000001"
        assert reply.args["team_id"] == "T1"  # Bolt's per-request client adds it
        assert fake.calls[0].method == "auth.test"  # Bolt authorizes on the first event
        assert seen[0]["retry_num"] is None

        status, _ = await post_event(url, body, secret=SECRET, retry_num=1)
        assert status == 200
        await fake.wait_calls("chat.postMessage", 2)
        assert seen[1]["retry_num"] == ["1"]  # Bolt's request.headers hold lists

        status, _ = await post_event(url, body, secret="wrong")
        assert status == 401
        stale = int(time.time()) - 6 * 60
        status, _ = await post_event(url, body, secret=SECRET, timestamp=stale)
        assert status == 401

        status, text = await post_event(url, fake.slash_command(text="ping"), secret=SECRET)
        assert status == 200
        assert "working on it" in text
        (posted,) = await fake.wait_responses(1)
        assert posted.body["text"] == "done: ping"
        assert posted.path.startswith("/respond/")
    assert len(fake.calls_to("chat.postMessage")) == 2


def test_sign_matches_slack_sdk_verifier() -> None:
    from slack_sdk.signature import SignatureVerifier

    body = b'{"type":"event_callback"}'
    headers = sign(SECRET, body)
    assert SignatureVerifier(SECRET).is_valid_request(body, headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)


# --- (c) Bolt over Socket Mode --------------------------------------------------------------


async def close_handler(handler: AsyncSocketModeHandler) -> None:
    """close_async() cancels the client's tasks without awaiting them: await them here."""
    await handler.close_async()
    client = handler.client
    tasks = [client.message_processor, client.current_session_monitor, client.message_receiver]
    await asyncio.gather(*(t for t in tasks if t is not None), return_exceptions=True)


async def test_bolt_socket_mode(fake: FakeSlack) -> None:
    seen: list[dict[str, Any]] = []
    app = bolt_app(fake, seen)
    # The handler's SocketModeClient uses app.client (or web_client=...) for
    # apps.connections.open, so the app's base_url leads it to the fake.
    handler = AsyncSocketModeHandler(app, app_token="xapp-test")
    try:
        await handler.connect_async()
        await fake.socket_connected()
        (opened,) = fake.calls_to("apps.connections.open")
        assert opened.token == "xapp-test"

        envelope_id = await fake.send_envelope(event_callback(app_mention("<@UBOT> hi")))
        assert await fake.wait_ack(envelope_id) == {"envelope_id": envelope_id}
        (reply,) = await fake.wait_calls("chat.postMessage")
        assert reply.args["text"] == "hi"
        assert reply.token == "xoxb-test"
        assert seen[0]["retry_num"] == ["0"]  # retry_attempt 0 still becomes a header

        command_id = await fake.send_envelope(fake.slash_command(text="x"), "slash_commands")
        ack = await fake.wait_ack(command_id)
        assert ack["payload"] == {"text": "working on it"}
        assert (await fake.wait_responses(1))[0].body["text"] == "done: x"

        # A dropped connection: the client asks apps.connections.open again and reconnects.
        await fake.disconnect_socket()
        await fake.socket_connected(count=2)
        assert len(fake.calls_to("apps.connections.open")) == 2
        # Bolt acks only what a listener handled: no listener takes DMs here (404 inside).
        unhandled = await fake.send_envelope(event_callback(dm_message("hello", user="U2")))
        again = await fake.send_envelope(event_callback(app_mention("<@UBOT> back?")))
        await fake.wait_ack(again)
        await fake.wait_calls("chat.postMessage", 2)
        assert unhandled not in {ack["envelope_id"] for ack in fake.acks}

        # Slack's own "disconnect" message (refresh_requested): the client reconnects itself.
        await fake.disconnect_socket(reason="refresh_requested")
        await fake.socket_connected(count=3)
        last = await fake.send_envelope(event_callback(app_mention("<@UBOT> still there?")))
        await fake.wait_ack(last)
        await fake.wait_calls("chat.postMessage", 3)
    finally:
        await close_handler(handler)
