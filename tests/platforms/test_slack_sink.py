"""How the Slack sinks sort Slack's failures for StreamingReply: wait (RateLimited), give up
(DeliveryFailed), or let it propagate so the final text is tried again. The real slack_sdk
clients against FakeSlack."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.rendering import RateLimited
from adapters.slack.bot import EphemeralSink, ResponseUrlError, SlackSink, ordering_key
from core.scheduler import DeliveryFailed, MessageGone
from tests.fakes.slack_server import (
    FakeSlack,
    Fault,
    app_mention,
    dm_message,
    dropped,
    empty_error,
    event_callback,
    html_error,
    not_json_error,
    refused,
    server_error,
    slash_command,
)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
def sink(fake: FakeSlack) -> SlackSink:
    return SlackSink(AsyncWebClient(token="xoxb-test", base_url=fake.api_url), "C1", "1.0")


async def test_posts_and_edits_land_in_the_thread(fake: FakeSlack, sink: SlackSink) -> None:
    ts = await sink.post("first")
    await sink.edit(ts, "second")
    assert fake.messages[ts]["thread_ts"] == "1.0"
    assert fake.messages[ts]["versions"] == ["first", "second"]
    [post] = fake.calls_to("chat.postMessage")
    assert post.args["unfurl_links"] is False and post.args["unfurl_media"] is False
    await sink.delete(ts)
    assert ts in fake.deleted
    # Gone (deleted by someone, or a retry after a lost answer): StreamingReply counts a
    # delete as done and posts the text of an edit anew.
    with pytest.raises(MessageGone):
        await sink.delete(ts)
    with pytest.raises(MessageGone):
        await sink.edit(ts, "third")


async def test_rate_limits_become_rate_limited(fake: FakeSlack, sink: SlackSink) -> None:
    fake.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=3)
    with pytest.raises(RateLimited) as limited:
        await sink.post("x")
    assert limited.value.retry_after == 3
    # `ok: false, error: ratelimited` without the 429 or a Retry-After: a second.
    fake.fail_next("chat.postMessage", "ratelimited", status=200)
    with pytest.raises(RateLimited) as unsaid:
        await sink.post("x")
    assert unsaid.value.retry_after == 1


@pytest.mark.parametrize(
    "error",
    [
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "account_inactive",
        "invalid_auth",
        "token_revoked",
        "msg_too_long",
        "no_text",
    ],
)
async def test_errors_no_retry_can_fix_become_delivery_failed(
    fake: FakeSlack, sink: SlackSink, error: str
) -> None:
    fake.fail_next("chat.postMessage", error)
    with pytest.raises(DeliveryFailed, match=error):
        await sink.post("x")


@pytest.mark.parametrize(
    "fault",
    [
        server_error(502),
        server_error(500),
        html_error(502),
        not_json_error(503),
        empty_error(503),
        Fault(status=200, error="internal_error"),
        Fault(status=200, error="fatal_error"),
    ],
    ids=["json-502", "json-500", "html-502", "not-json-503", "empty-503", "internal", "fatal"],
)
async def test_server_trouble_propagates_to_be_retried(
    fake: FakeSlack, sink: SlackSink, fault: Fault
) -> None:
    fake.outage(fault)
    with pytest.raises(SlackApiError) as caught:
        await sink.post("x")
    assert caught.type is SlackApiError  # as it is: not RateLimited, not DeliveryFailed
    assert await sink.post("back")  # and then it works


async def test_network_trouble_propagates_to_be_retried(fake: FakeSlack, sink: SlackSink) -> None:
    fake.outage(dropped(times=2))
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sink.post("x")
    fake.outage(refused(2.0))
    with pytest.raises(aiohttp.ClientConnectorError):
        await sink.post("x")
    await fake.outage_over()
    assert await sink.post("back")


async def test_the_ephemeral_sink_posts_through_response_url(fake: FakeSlack) -> None:
    sink = EphemeralSink(fake.new_response_url())
    first = await sink.post("*private*")
    await sink.edit(first, "again")  # cannot edit: the part is posted again
    await sink.delete(first)  # cannot delete: nothing happens
    assert [(p.body["text"], p.body["response_type"]) for p in fake.responses] == [
        ("*private*", "ephemeral"),
        ("again", "ephemeral"),
    ]

    fake.outage(
        Fault(status=404, body="expired_url", content_type="text/plain"),
        server_error(500),
        methods={"response_url"},
    )
    with pytest.raises(DeliveryFailed, match="expired_url"):
        await sink.post("late")
    with pytest.raises(ResponseUrlError):
        await sink.post("later")
    assert await sink.post("now")
    assert fake.responses[-1].body["text"] == "now"


def test_the_ordering_key_is_the_thread_or_the_dm() -> None:
    top = app_mention("<@UBOT> hi", ts="5.0")
    assert ordering_key(event_callback(top)) == ("C1", "5.0")
    reply = app_mention("<@UBOT> more", ts="6.0", thread_ts="5.0")
    assert ordering_key(event_callback(reply)) == ("C1", "5.0")
    # A DM outside threads is one conversation: one key for all its messages.
    assert ordering_key(event_callback(dm_message("a", ts="7.0"))) == ("D1", "")
    assert ordering_key(event_callback(dm_message("b", ts="8.0", thread_ts="7.0"))) == (
        "D1",
        "7.0",
    )
    assert ordering_key(slash_command(text="hi", user_id="U2")) == ("C1", "command:U2")
    assert ordering_key({"type": "url_verification", "challenge": "x"}) is None
