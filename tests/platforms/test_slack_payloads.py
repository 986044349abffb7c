"""Real-shaped Slack payloads through slack-bolt against the fake Slack, one table of cases.

Each case is an Events API payload (or slash command, url_verification ...) shaped like
Slack's API docs and slack-bolt's / python-slack-sdk's own test data. For each: the HTTP
status Bolt answers, whether the bot answers, the exact text the model read, and which
conversation stored it. A case the bot must not answer is followed by a DM ("ping"); once
that is answered, the model must have seen the ping alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.http import HttpServer
from adapters.slack.bot import SlackBot
from core.events import ConversationKey
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import (
    APP_ID,
    BOT_ID,
    TEAM_ID,
    FakeSlack,
    event_callback,
    next_ts,
    post_event,
    sign,
)
from tests.helpers import stored_messages
from tests.platforms.running import Running, platform_settings
from tests.platforms.running import running as running_platform

SECRET = "signing-secret"
ANSWER = "Answer."
PONG = "Pong."
PING_CHANNEL = "D9"


@dataclass(frozen=True)
class Case:
    """One payload: `event` goes into an event_callback envelope unless `raw` is set."""

    name: str
    event: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] | None = None  # a whole body (url_verification, block_actions ...)
    form: bool = False
    seen: str | None = None  # what the model read (its last message), None: not answered
    key: ConversationKey | None = None  # the conversation that stored it
    reply_in: tuple[str, str | None] | None = None  # (channel, thread_ts; None: a DM's main
    # conversation) the answer is posted in
    status: int = 200
    body: str | None = None  # Bolt's exact answer body, when it matters
    prior: tuple[dict[str, Any], ...] = ()  # events delivered (and answered) first
    reply: str | None = None  # the exact answer, when it is neither ANSWER nor the help


_TS: dict[str, str] = {}


def T(name: str) -> str:
    """A ts from the fake's own sequence, one per name (the fake keys messages by ts, so a
    case's ts must never collide with the ts of a reply)."""
    return _TS.setdefault(name, next_ts())


def key(channel: str, thread: str = "", team: str = TEAM_ID) -> ConversationKey:
    return ConversationKey("slack", team, channel, thread)


def message(text: str, *, channel: str = "C1", ts: str, **extra: Any) -> dict[str, Any]:
    """A `message` event as Slack's docs show it (channel_type "channel" unless set)."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": "U1",
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": "im" if channel.startswith("D") else "channel",
        "team": TEAM_ID,
        "client_msg_id": f"msg-{ts}",
        "blocks": [
            {
                "type": "rich_text",
                "block_id": "b1",
                "elements": [
                    {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
                ],
            }
        ],
    }
    event.update(extra)
    return event


def mention(text: str, *, ts: str, **extra: Any) -> dict[str, Any]:
    event = message(text, ts=ts, **extra)
    event["type"] = "app_mention"
    event.pop("channel_type")
    return event


def file_object(name: str = "report.pdf") -> dict[str, Any]:
    return {
        "id": "F1",
        "created": 1700000000,
        "name": name,
        "title": name,
        "mimetype": "application/pdf",
        "filetype": "pdf",
        "user": "U1",
        "size": 1024,
        "url_private": f"https://files.slack.com/files-pri/T1-F1/{name}",
    }


CASES = [
    Case(
        "app_mention",
        mention("<@UBOT> what is 2+2?", ts=T("1700000001.000100")),
        seen="alice: what is 2+2?",
        key=key("C1", T("1700000001.000100")),
        reply_in=("C1", T("1700000001.000100")),
    ),
    Case(
        "dm_message",
        message("hello there", channel="D1", ts=T("1700000002.000100")),
        seen="alice: hello there",
        key=key("D1"),
        reply_in=("D1", None),
    ),
    Case(
        "thread_reply_after_the_bot_answered",
        message("and times 3?", ts=T("1700000003.000200"), thread_ts=T("1700000003.000100")),
        prior=(mention("<@UBOT> 2+2?", ts=T("1700000003.000100")),),
        seen="alice: and times 3?",
        key=key("C1", T("1700000003.000100")),
        reply_in=("C1", T("1700000003.000100")),
    ),
    Case(
        "me_message_in_a_dm",
        message("waves hello", channel="D1", ts=T("1700000004.000100"), subtype="me_message"),
        seen="alice: waves hello",
        key=key("D1"),
        reply_in=("D1", None),
    ),
    Case(
        "message_changed",
        {
            "type": "message",
            "subtype": "message_changed",
            "hidden": True,
            "channel": "D1",
            "channel_type": "im",
            "ts": T("1700000005.000200"),
            "event_ts": T("1700000005.000200"),
            "message": {
                "type": "message",
                "user": "U1",
                "text": "edited text",
                "ts": T("1700000005.000100"),
                "edited": {"user": "U1", "ts": T("1700000005.000200")},
            },
            "previous_message": {"type": "message", "user": "U1", "text": "old text"},
        },
    ),
    Case(
        "message_deleted",
        {
            "type": "message",
            "subtype": "message_deleted",
            "hidden": True,
            "channel": "D1",
            "channel_type": "im",
            "ts": T("1700000006.000200"),
            "deleted_ts": T("1700000006.000100"),
            "event_ts": T("1700000006.000200"),
            "previous_message": {"type": "message", "user": "U1", "text": "gone"},
        },
    ),
    Case(
        "bot_message",
        {
            "type": "message",
            "subtype": "bot_message",
            "text": "Build finished",
            "ts": T("1700000007.000100"),
            "event_ts": T("1700000007.000100"),
            "username": "ci",
            "bot_id": "BOTHER",
            "channel": "D1",
            "channel_type": "im",
        },
    ),
    Case(
        "file_share_with_text",
        message(
            "what does this say?",
            channel="D1",
            ts=T("1700000008.000100"),
            subtype="file_share",
            files=[file_object()],
            upload=False,
        ),
        seen="alice: what does this say?",
        key=key("D1"),
        reply_in=("D1", None),
        # The file is downloaded from files.slack.com, which no test reaches.
        reply="_I could not download report.pdf; please send it again._\n\nAnswer.",
    ),
    Case(
        # A file alone is a message too (here one that cannot be downloaded).
        "file_share_without_text",
        message(
            "",
            channel="D1",
            ts=T("1700000009.000100"),
            subtype="file_share",
            files=[file_object()],
            upload=False,
        ),
        key=key("D1"),
        reply_in=("D1", None),
        seen="",  # answered without the model
        reply="I could not download report.pdf; please send it again.",
    ),
    Case(
        "channel_join",
        message(
            "<@U1> has joined the channel",
            ts=T("1700000010.000100"),
            subtype="channel_join",
            inviter="U2",
        ),
    ),
    Case(
        "thread_broadcast_mentioning_the_bot",
        mention(
            "<@UBOT> also posted to the channel",
            ts=T("1700000011.000200"),
            thread_ts=T("1700000011.000100"),
            subtype="thread_broadcast",
            root={"type": "message", "user": "U1", "text": "root", "ts": T("1700000011.000100")},
        ),
        seen="alice: also posted to the channel",
        key=key("C1", T("1700000011.000100")),
        reply_in=("C1", T("1700000011.000100")),
    ),
    Case(
        # Slack Connect: the author's workspace is T2, the install's is T1: one conversation
        # per thread, under the install's team.
        "slack_connect_mention_from_another_workspace",
        mention(
            "<@UBOT> hello from a partner",
            ts=T("1700000012.000100"),
            user="U1",
            team="T2",
            user_team="T2",
            source_team="T2",
        ),
        seen="alice: hello from a partner",
        key=key("C1", T("1700000012.000100")),
        reply_in=("C1", T("1700000012.000100")),
    ),
    Case(
        "url_verification",
        raw={
            "token": "verification-token",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        },
        body='{"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}',
    ),
    Case(
        "app_home_opened",
        {
            "type": "app_home_opened",
            "user": "U1",
            "channel": "D1",
            "tab": "home",
            "event_ts": T("1700000014.000100"),
        },
    ),
    Case(
        "reaction_added",
        {
            "type": "reaction_added",
            "user": "U1",
            "reaction": "thumbsup",
            "item_user": "UBOT",
            "item": {"type": "message", "channel": "C1", "ts": T("1700000015.000100")},
            "event_ts": T("1700000015.000200"),
        },
    ),
    Case(
        "block_actions",
        raw={
            "type": "block_actions",
            "user": {"id": "U1", "username": "alice", "name": "alice", "team_id": TEAM_ID},
            "api_app_id": APP_ID,
            "token": "verification-token",
            "container": {
                "type": "message",
                "message_ts": T("1700000016.000100"),
                "channel_id": "C1",
            },
            "trigger_id": "16.1.trigger",
            "team": {"id": TEAM_ID, "domain": "test"},
            "channel": {"id": "C1", "name": "general"},
            "response_url": "https://hooks.slack.com/actions/T1/1/x",
            "actions": [
                {
                    "action_id": "approve",
                    "block_id": "b1",
                    "type": "button",
                    "value": "yes",
                    "action_ts": T("1700000016.000200"),
                }
            ],
        },
        form=True,
    ),
    Case(
        # An edit of a message the bot answered: Slack sends message_changed with the new
        # text; the bot does not answer edits.
        "edited_mention",
        {
            "type": "message",
            "subtype": "message_changed",
            "hidden": True,
            "channel": "C1",
            "channel_type": "channel",
            "ts": T("1700000017.000200"),
            "event_ts": T("1700000017.000200"),
            "message": {
                "type": "message",
                "user": "U1",
                "text": "<@UBOT> what is 3+3?",
                "ts": T("1700000017.000100"),
                "edited": {"user": "U1", "ts": T("1700000017.000200")},
            },
            "previous_message": {
                "type": "message",
                "user": "U1",
                "text": "<@UBOT> what is 2+2?",
                "ts": T("1700000017.000100"),
            },
        },
    ),
    Case(
        "channel_message_without_a_mention",
        message("just chatting", ts=T("1700000018.000100")),
    ),
    Case(
        "own_message",
        message("Answer.", channel="D1", ts=T("1700000019.000100"), user="UBOT", bot_id=BOT_ID),
    ),
]


@asynccontextmanager
async def running(
    slack: FakeSlack, fake_openai: FakeOpenAI, database: str
) -> AsyncIterator[Running]:
    settings = platform_settings(
        fake_openai,
        database,
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_API_URL=slack.api_url,
        PARLEY_SLACK_UPDATE_INTERVAL=0.05,
    )
    async with running_platform(settings, "slack") as started:
        assert isinstance(started.bot, SlackBot)
        yield started


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users.update({"U1": "alice", "U2": "bob"})
        yield fake


def texts(slack: FakeSlack, channel: str, thread_ts: str | None = None) -> list[str]:
    return [m["text"] for m in slack.messages_in(channel, thread_ts)]


def seen(fake_openai: FakeOpenAI) -> list[str]:
    return [r["messages"][-1]["content"] for r in fake_openai.chat_requests]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_payload(
    case: Case, slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    assert len(CASES) >= 18
    for _ in case.prior:
        fake_openai.reply("Prior.")
    if case.seen:
        fake_openai.reply(ANSWER)
    fake_openai.reply(PONG)
    async with running(slack, fake_openai, sqlite_url) as started:
        url = f"http://127.0.0.1:{started.port}/slack/events"
        for prior in case.prior:
            assert (await post_event(url, event_callback(prior), secret=SECRET))[0] == 200
            channel, thread = prior["channel"], prior["ts"]
            await slack.wait_for(
                lambda: texts(slack, channel, thread) == ["Prior."],  # noqa: B023
                what="the earlier answer",
            )
        if case.raw is not None:
            body: Any = case.raw
            if case.form:
                body = {"payload": json.dumps(case.raw)}
            status, answer = await post_event(url, body, secret=SECRET, form=case.form)
        else:
            status, answer = await post_event(url, event_callback(case.event), secret=SECRET)
        assert status == case.status
        if case.body is not None:
            assert answer == case.body
        if case.reply_in is not None:
            channel, thread = case.reply_in
            await slack.wait_for(
                lambda: (
                    len(slack.messages_in(channel, thread)) > len(case.prior)
                    and texts(slack, channel, thread)[-1] != "…"
                ),
                what="the answer",
            )
        # A DM that is always answered: once it is, anything the case started is done.
        ping = message("ping", channel=PING_CHANNEL, ts=T("1800000000.000100"))
        await post_event(url, event_callback(ping), secret=SECRET)
        await slack.wait_for(lambda: texts(slack, PING_CHANNEL) == [PONG], what="the ping")

        expected_seen = [f"alice: {p['text'].replace('<@UBOT> ', '')}" for p in case.prior]
        if case.seen:
            expected_seen.append(case.seen)
        assert seen(fake_openai) == [*expected_seen, "alice: ping"]
        if case.reply_in is not None:
            channel, thread = case.reply_in
            reply = texts(slack, channel, thread)[-1]
            if case.reply is not None:
                assert reply == case.reply
            else:
                assert reply == ANSWER if case.seen else reply.startswith("Commands:\n/help: ")
        if case.key is not None:
            assert await started.runtime.store.conversation_exists(key=case.key)
            stored = await stored_messages(started.database)
            # Stored as written; the model reads it prefixed with the speaker's name. A
            # command's answer (here /help) is not part of the conversation.
            if case.seen:
                assert ("user", case.seen.removeprefix("alice: ")) in stored
            else:
                assert not any(text == "/help" for _, text in stored)


async def test_parley_slash_command_asks_in_a_private_conversation(
    slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply(ANSWER)
    async with running(slack, fake_openai, sqlite_url) as started:
        url = f"http://127.0.0.1:{started.port}/slack/events"
        form = slack.slash_command(text="what is 2+2?")
        assert (await post_event(url, form, secret=SECRET))[0] == 200
        responses = await slack.wait_responses(1)
        await slack.wait_for(
            lambda: any(r.body.get("text") == ANSWER for r in slack.responses), what="answer"
        )
        assert responses[0].body["response_type"] == "ephemeral"
        assert seen(fake_openai) == ["alice: what is 2+2?"]
        assert await started.runtime.store.conversation_exists(key=key("C1", "private:U1"))
        assert slack.calls_to("chat.postMessage") == []  # nothing public


@pytest.mark.parametrize(
    "answer",
    [
        {"ok": True},  # no `user`
        {"ok": True, "user": None},
        {"ok": True, "user": {"id": "U7", "profile": None}},
        {"ok": False, "error": "user_not_found"},
    ],
    ids=["no_user", "null_user", "null_profile", "error"],
)
async def test_a_users_info_without_a_user_never_drops_the_message(
    answer: dict[str, Any], slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    slack.handle("users.info", lambda args: answer)
    fake_openai.reply(ANSWER)
    async with running(slack, fake_openai, sqlite_url) as started:
        url = f"http://127.0.0.1:{started.port}/slack/events"
        event = message("hello", channel="D7", ts=next_ts(), user="U7")
        assert (await post_event(url, event_callback(event), secret=SECRET))[0] == 200
        await slack.wait_for(lambda: texts(slack, "D7") == [ANSWER], what="the answer")
        assert seen(fake_openai) == ["U7: hello"]  # the id stands in for the name
        assert await started.runtime.store.conversation_exists(key=key("D7"))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[1, 2, 3]", "application/json"),
        (b'"a string"', "application/json"),
        (b"{not json", "application/json"),
        (b'{"type": "event_callback", "text": "caf\xe9"}', "application/json"),
        (b"payload=%5B1%5D", "application/x-www-form-urlencoded"),
        (b"payload=%7Bnope", "application/x-www-form-urlencoded"),
        (b"command=%2Fparley&text=caf%E9\xff", "application/x-www-form-urlencoded"),
    ],
    ids=[
        "array",
        "string",
        "broken_json",
        "latin1",
        "payload_array",
        "payload_broken",
        "form_bytes",
    ],
)
async def test_a_body_that_is_not_a_json_object_or_not_utf8_gets_400(
    body: bytes, content_type: str, slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(slack, fake_openai, sqlite_url) as started:
        url = f"http://127.0.0.1:{started.port}/slack/events"
        headers = {"Content-Type": content_type, **sign(SECRET, body)}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            assert response.status == 400
        # The server goes on: a DM after it is answered.
        fake_openai.reply(PONG)
        ping = message("ping", channel=PING_CHANNEL, ts=next_ts())
        assert (await post_event(url, event_callback(ping), secret=SECRET))[0] == 200
        await slack.wait_for(lambda: texts(slack, PING_CHANNEL) == [PONG], what="the ping")


async def test_the_shared_http_server_answers_400_to_bodies_no_platform_sends() -> None:
    """The check sits in HttpServer.add_post, so it also guards the Telegram webhook path."""
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200)

    server = HttpServer("127.0.0.1", 0)
    server.add_post("/telegram", handler)
    bad = [
        (b"[]", "application/json"),
        (b"null", "application/json"),
        (b"\xff\xfe{}", "application/json"),
        (b"{", "application/json"),
        (b"\xc3\x28", "text/plain"),
    ]
    async with server, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{server.port}/telegram"
        statuses = []
        for body, content_type in bad:
            async with session.post(
                url, data=body, headers={"Content-Type": content_type}
            ) as response:
                statuses.append(response.status)
        async with session.post(
            url, data=b'{"update_id": 1}', headers={"Content-Type": "application/json"}
        ) as response:
            good = response.status
    assert statuses == [400] * len(bad)
    assert (good, received) == (200, [b'{"update_id": 1}'])
