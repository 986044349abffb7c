"""The Slack bot as users meet it: the real slack-bolt app against a fake Slack on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from adapters.slack.bot import SlackBot
from core import wording
from core.errors import ModelFailure
from core.events import ConversationKey
from core.storage.tables import messages
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.slack_server import (
    FakeSlack,
    app_mention,
    channel_message,
    dm_message,
    event_callback,
    next_ts,
    post_event,
    sign,
)
from tests.platforms.running import Running, platform_settings, run_error
from tests.platforms.running import running as running_platform

SECRET = "signing-secret"


class SlackRunning(Running):
    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/slack/events"

    async def deliver(self, event: dict[str, Any], **options: Any) -> tuple[int, str]:
        body = event_callback(event, event_id=options.pop("event_id", None))
        return await post_event(self.events_url, body, secret=SECRET, **options)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users.update({"U1": "alice", "U2": "bob"})
        yield fake


def slack_settings(slack: FakeSlack, fake_openai: FakeOpenAI, database: str, **extra: Any) -> Any:
    return platform_settings(
        fake_openai,
        database,
        **{
            "SLACK_BOT_TOKEN": "xoxb-test",
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": slack.api_url,
            "PARLEY_SLACK_UPDATE_INTERVAL": 0.05,
            **extra,
        },
    )


@asynccontextmanager
async def running(settings: Any) -> AsyncIterator[SlackRunning]:
    async with running_platform(settings, "slack") as started:
        assert isinstance(started.bot, SlackBot)
        yield SlackRunning(started.bot, started.runtime, started.port)


@pytest.fixture
def bot_factory(slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str) -> Callable[..., Any]:
    def factory(**extra: Any) -> Any:
        return running(slack_settings(slack, fake_openai, sqlite_url, **extra))

    return factory


def thread_texts(slack: FakeSlack, channel: str, thread_ts: str) -> list[str]:
    return [m["text"] for m in slack.messages_in(channel, thread_ts)]


async def final_texts(slack: FakeSlack, channel: str, thread: str, expected: list[str]) -> None:
    await slack.wait_for(
        lambda: thread_texts(slack, channel, thread) == expected,
        what=f"thread {thread} to read {expected!r}",
    )


async def test_a_mention_is_answered_in_its_thread(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    # The model takes a moment to start: the placeholder shows meanwhile.
    answer = "**Four.** See [the docs](https://example.com/math)."
    fake_openai.reply(answer, delay=0.8, chunk_delay=0.01)
    async with bot_factory() as running:
        ts = next_ts()
        started = time.monotonic()
        status, _ = await running.deliver(app_mention("<@UBOT> what is 2+2?", ts=ts))
        assert status == 200 and time.monotonic() - started < 1  # acknowledged at once

        await final_texts(slack, "C1", ts, ["*Four.* See <https://example.com/math|the docs>."])
        [placeholder] = slack.calls_to("chat.postMessage")
        assert placeholder.args["text"] == "…" and placeholder.args["thread_ts"] == ts
        sent = fake_openai.chat_requests[0]["messages"]
        assert sent[-1] == {"role": "user", "content": "alice: what is 2+2?"}
        # It grew through edits, not one per token: the reply had 13 chunks.
        assert 1 <= len(slack.calls_to("chat.update")) < 13


async def test_a_quick_answer_goes_up_in_one_call(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Four.")
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> what is 2+2?", ts=ts))
        await final_texts(slack, "C1", ts, ["Four."])
        await asyncio.sleep(0.7)  # past the moment the placeholder would have gone up
    [posted] = slack.calls_to("chat.postMessage")
    assert posted.args["text"] == "Four."
    assert slack.calls_to("chat.update") == []


async def test_a_thread_follow_up_needs_no_mention_and_speakers_are_named(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Four.")
    fake_openai.reply("Twelve.")
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> what is 2+2?", ts=ts))
        await final_texts(slack, "C1", ts, ["Four."])

        await running.deliver(channel_message("and times 3?", user="U2", thread_ts=ts))
        await final_texts(slack, "C1", ts, ["Four.", "Twelve."])
        assert [m["content"] for m in fake_openai.chat_requests[1]["messages"][1:]] == [
            "alice: what is 2+2?",
            "Four.",
            "bob: and times 3?",
        ]

        # A thread the bot never joined, and a plain channel message: not for the bot.
        other = next_ts()
        await running.deliver(channel_message("unrelated", thread_ts=other))
        await running.deliver(channel_message("hello all"))
        await asyncio.sleep(0.3)
        assert len(fake_openai.chat_requests) == 2


async def test_a_channel_can_require_mentions_in_threads(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("ok")
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> /mentions required", ts=ts))
        await final_texts(slack, "C1", ts, [wording.MENTIONS_SET[True]])
        await running.deliver(channel_message("still there?", thread_ts=ts))
        await asyncio.sleep(0.3)
        assert fake_openai.chat_requests == []


async def test_a_direct_message_is_answered_in_the_conversation(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hello Alice.")
    async with bot_factory() as running:
        await running.deliver(dm_message("hi there"))
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("D1")] == ["Hello Alice."]
        )
        [post] = slack.calls_to("chat.postMessage")
        assert "thread_ts" not in post.args


async def test_the_same_event_delivered_three_times_is_answered_once(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("Once.", delay=0.2)
    async with bot_factory() as running:
        ts = next_ts()
        event = app_mention("<@UBOT> hello", ts=ts)
        statuses = await asyncio.gather(
            running.deliver(event, event_id="Ev1"),
            running.deliver(event, event_id="Ev1", retry_num=1),
            running.deliver(event, event_id="Ev1", retry_num=2),
        )
        # Slack also sends the same mention as a `message` event, with another event id.
        await running.deliver(channel_message("<@UBOT> hello", ts=ts), event_id="Ev2")
        await final_texts(slack, "C1", ts, ["Once."])
        await asyncio.sleep(0.3)

        assert [status for status, _ in statuses] == [200, 200, 200]
        assert len(slack.calls_to("chat.postMessage")) == 1
        assert len(fake_openai.chat_requests) == 1


async def test_redelivery_after_a_restart_and_to_a_second_process_is_not_answered(
    slack: FakeSlack, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    fake_openai.default = Reply("Once.", delay=0.2)
    settings = slack_settings(slack, fake_openai, postgres_url)
    ts = next_ts()
    event = app_mention("<@UBOT> hello", ts=ts)
    async with running(settings) as first, running(settings) as second:
        await asyncio.gather(first.deliver(event), second.deliver(event, retry_num=1))
        await final_texts(slack, "C1", ts, ["Once."])
    async with running(settings) as restarted:
        await restarted.deliver(event, retry_num=2)
        await asyncio.sleep(0.3)
    assert len(slack.calls_to("chat.postMessage")) == 1
    assert len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize(
    ("signature", "age"), [("v0=" + "0" * 64, 0), (None, 6 * 60)], ids=["bad", "stale"]
)
async def test_a_bad_or_stale_signature_is_refused_and_nothing_is_stored(
    bot_factory: Callable[..., Any],
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    signature: str | None,
    age: int,
) -> None:
    async with bot_factory() as running:
        body = json.dumps(event_callback(app_mention("<@UBOT> hi"))).encode()
        headers = sign(SECRET, body, int(time.time()) - age)
        if signature is not None:
            headers["X-Slack-Signature"] = signature
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                running.events_url,
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            ) as response,
        ):
            assert response.status == 401
        await asyncio.sleep(0.2)
        assert await running.count(messages) == 0
    assert slack.calls_to("chat.postMessage") == []
    assert fake_openai.chat_requests == []


async def test_a_long_answer_is_split_into_thread_messages_with_code_blocks_intact(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    code = "\n".join(f"print({n})  # line {n} of the example" for n in range(200))
    prose = " ".join(["This sentence explains the code in some detail."] * 40)
    fake_openai.reply(f"{prose}\n\n```python\n{code}\n```\n\n{prose}", chunk_size=400)
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> write a long program", ts=ts))
        await slack.wait_for(
            lambda: (
                len(thread_texts(slack, "C1", ts)) >= 3
                and thread_texts(slack, "C1", ts)[-1].endswith("detail.")
            ),
            what="the whole answer",
        )
        parts = thread_texts(slack, "C1", ts)
        assert all(len(part) <= 3900 for part in parts)
        assert all(part.count("```") % 2 == 0 for part in parts)
        body = "".join(parts)
        assert all(f"print({n})  # line {n} of the example" in body for n in range(200))


async def test_model_output_cannot_ping_the_channel_or_forge_mentions(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hey <!channel> and <@U2>, 1 < 2 & 3 > 2. *Done*")
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> ping everyone", ts=ts))
        await final_texts(
            slack,
            "C1",
            ts,
            ["Hey &lt;!channel&gt; and &lt;@U2&gt;, 1 &lt; 2 &amp; 3 &gt; 2. _Done_"],
        )


async def test_a_rate_limited_update_is_retried_after_retry_after(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("The complete answer, delivered in the end.", delay=0.8)
    slack.fail_next("chat.update", "ratelimited", status=429, retry_after=1)
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> hi", ts=ts))
        await final_texts(slack, "C1", ts, ["The complete answer, delivered in the end."])
        updates = slack.calls_to("chat.update")
        assert len(updates) >= 2
        assert updates[1].at - updates[0].at >= 0.95  # waited as told


async def test_a_failing_model_gives_a_clear_message_in_the_thread(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(500)
    async with bot_factory() as running:
        ts = next_ts()
        await running.deliver(app_mention("<@UBOT> hi", ts=ts))
        await final_texts(slack, "C1", ts, [wording.MODEL_FAILURE[ModelFailure.SERVER_ERROR]])
        assert await running.count(messages) == 1  # the user's message is kept


async def test_slash_parley_persona_changes_the_channels_persona(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    async with bot_factory() as running:
        status, _ = await post_event(
            running.events_url, slack.slash_command(text="persona coder"), secret=SECRET
        )
        assert status == 200
        [response] = await slack.wait_responses(1)
        assert response.body["response_type"] == "ephemeral"
        assert response.body["text"].startswith("This channel now uses the persona _coder_")
        channel = await running.runtime.store.channel(key=ConversationKey("slack", "T1", "C1"))
        assert channel.persona == "coder"
    assert fake_openai.chat_requests == []


async def test_socket_mode_answers_and_acknowledges(
    slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("Over the socket.")
    settings = slack_settings(
        slack, fake_openai, sqlite_url, SLACK_APP_TOKEN="xapp-test", SLACK_SIGNING_SECRET=None
    )
    async with running(settings):
        await slack.socket_connected()
        ts = next_ts()
        envelope = await slack.send_envelope(event_callback(app_mention("<@UBOT> hi", ts=ts)))
        await slack.wait_ack(envelope)
        await final_texts(slack, "C1", ts, ["Over the socket."])
        await slack.disconnect_socket()
        await slack.socket_connected(count=2)
        fake_openai.reply("Still here.")
        later = next_ts()
        await slack.send_envelope(event_callback(app_mention("<@UBOT> again", ts=later)))
        await final_texts(slack, "C1", later, ["Still here."])


async def test_own_and_other_bots_messages_are_ignored(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("no")
    async with bot_factory() as running:
        await running.deliver(dm_message("from another bot", bot_id="B2", subtype="bot_message"))
        await running.deliver(dm_message("from myself", user="UBOT"))
        await running.deliver(dm_message("edited", subtype="message_changed"))
        await asyncio.sleep(0.3)
    assert fake_openai.chat_requests == []
    assert slack.calls_to("chat.postMessage") == []


async def test_parley_run_starts_slack_and_stops_on_sigterm(
    slack: FakeSlack, fake_openai: FakeOpenAI, tmp_path: Any
) -> None:
    fake_openai.reply("From the command line.")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env = {
        **keep,
        "DATABASE_URL": f"sqlite:///{tmp_path}/run.db",
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_API_KEY": "sk-test",
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_APP_TOKEN": "xapp-test",
        "SLACK_API_URL": slack.api_url,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await slack.socket_connected()
        ts = next_ts()
        await slack.send_envelope(event_callback(app_mention("<@UBOT> hi", ts=ts)))
        await final_texts(slack, "C1", ts, ["From the command line."])
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()


@pytest.mark.parametrize(
    ("arguments", "settings", "message"),
    [
        ((), {}, "no chat platform is configured: set one of SLACK_BOT_TOKEN"),
        (("irc",), {}, "parley run: unknown platform 'irc'; use slack"),
        (("slack",), {}, "parley run slack: SLACK_BOT_TOKEN is not set"),
        (
            ("slack",),
            {"SLACK_BOT_TOKEN": "xoxb-1"},
            "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
            "SLACK_SIGNING_SECRET (HTTP events) is",
        ),
        (
            ("slack",),
            {"SLACK_BOT_TOKEN": "xoxp-1"},
            "SLACK_BOT_TOKEN: a bot token starts with xoxb-",
        ),
        (
            ("slack",),
            {"SLACK_BOT_TOKEN": "xoxb-bad", "SLACK_APP_TOKEN": "xapp-1"},
            "SLACK_BOT_TOKEN: Slack refused it (invalid_auth)",
        ),
    ],
)
async def test_parley_run_explains_a_missing_or_wrong_setting_in_one_line(
    slack: FakeSlack,
    tmp_path: Any,
    arguments: tuple[str, ...],
    settings: dict[str, str],
    message: str,
) -> None:
    slack.handle("auth.test", lambda args: {"ok": False, "error": "invalid_auth"})
    line = await run_error(list(arguments), tmp_path, SLACK_API_URL=slack.api_url, **settings)
    assert message in line


async def test_a_channel_scope_makes_two_threads_one_conversation(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Noted: blue.")
    fake_openai.reply("You said blue.")
    async with bot_factory() as running:
        setting = next_ts()
        await running.deliver(app_mention("<@UBOT> /scope channel", ts=setting))
        await final_texts(slack, "C1", setting, [wording.SCOPE_SET.format(scope="channel")])
        first, second = next_ts(), next_ts()
        await running.deliver(app_mention("<@UBOT> my colour is blue", ts=first))
        await final_texts(slack, "C1", first, ["Noted: blue."])
        await running.deliver(app_mention("<@UBOT> what is my colour?", ts=second, user="U2"))
        await final_texts(slack, "C1", second, ["You said blue."])
        # Another thread, the same conversation: the second request carries the first turn.
        assert [m["content"] for m in fake_openai.chat_requests[1]["messages"][1:]] == [
            "alice: my colour is blue",
            "Noted: blue.",
            "bob: what is my colour?",
        ]
