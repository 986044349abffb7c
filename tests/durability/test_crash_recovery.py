"""`kill -9` of a real `parley run` while an answer streams, then a restart: the chat ends
with one complete answer, edited into the message the dead process had posted, and the
conversation goes on with that exchange whole.

Two moments of death, on SQLite and on PostgreSQL, for Telegram (long polling) and Slack
(HTTP events):

- answer not stored yet (the model was still streaming): the turn is run again, so the
  model gets a second, identical request, and its new answer replaces the partial text;
- answer stored (the process died while the platform kept it waiting on the final edit, a
  429 with Retry-After 30 s): the stored answer is delivered, the model is not asked again.

Everything is real except the platforms and the model: the subprocesses run the real SDKs
against the fakes in this process, and the turns are read from the real database.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.durability.processes import (
    Processes,
    eventually,
    model_settings,
    send_slack_event,
    slack_settings,
    telegram_settings,
    turn_states,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, app_mention, channel_message, next_ts
from tests.fakes.telegram_server import FakeTelegram, private_message

QUESTION = "why are there two tides a day?"
FOLLOW_UP = "and how far apart are they?"
# The Markdown comes last, so every early partial text renders as a plain prefix.
ANSWER = (
    "Tides follow the Moon: its pull raises the water on the side of the Earth facing it, "
    "and the Earth itself is pulled away from the water on the far side, so most coasts "
    "see two high tides a **day**."
)
AS_TELEGRAM_HTML = ANSWER.replace("**day**", "<b>day</b>")
AS_SLACK_MRKDWN = ANSWER.replace("**day**", "*day*")
SECOND_ANSWER = "About twelve hours and twenty-five minutes."
CHANNEL = "C1"
STORED = pytest.mark.parametrize(
    "stored", [False, True], ids=["answer-not-stored", "answer-stored"]
)
# Seconds; a dead process's lease expires this long after its last renewal.
LEASE = 2


def script_model(model: FakeOpenAI, *, stored: bool) -> None:
    # Slow enough that the process is killed mid-stream; when the answer is to be stored
    # first, short enough that it is, while the platform holds the final edit back.
    model.reply(ANSWER, chunk_delay=0.05 if stored else 0.15)
    if not stored:
        model.reply(ANSWER, chunk_delay=0.01)  # the turn run again
    model.reply(SECOND_ANSWER)


def common(database_url: str, model: FakeOpenAI) -> dict[str, Any]:
    return {
        "DATABASE_URL": database_url,
        "PARLEY_LEASE_SECONDS": LEASE,
        "PARLEY_SHUTDOWN_GRACE": 5,
        **model_settings(model),
    }


def is_partial(shown: str, complete: str) -> bool:
    return len(shown) < len(complete) and complete.startswith(shown)


async def delivered_once(database_url: str) -> None:
    """The one turn ended delivered, on the second process's take (attempt 2)."""
    await eventually(
        lambda: turn_states(database_url),
        until=lambda states: states == [("delivered", 2)],
        what="the turn delivered on its second attempt",
    )


def assert_model_asked(model: FakeOpenAI, *, stored: bool) -> None:
    """The first answer came from one model request if it had been stored, else from two
    identical ones (the user's message was not stored twice by the second run)."""
    requests = model.chat_requests
    assert len(requests) == (1 if stored else 2)
    assert requests[0]["messages"][1:] == [{"role": "user", "content": f"alice: {QUESTION}"}]
    assert all(request["messages"] == requests[0]["messages"] for request in requests)


def assert_exchange_whole(model: FakeOpenAI) -> None:
    """The follow-up reached the model after the whole first exchange, nothing twice."""
    assert model.chat_requests[-1]["messages"][1:] == [
        {"role": "user", "content": f"alice: {QUESTION}"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": f"alice: {FOLLOW_UP}"},
    ]


# --- Telegram, long polling ---------------------------------------------------------------


@STORED
async def test_telegram_answer_killed_mid_stream_is_completed_after_a_restart(
    database_url: str, fake_openai: FakeOpenAI, tmp_path: Path, stored: bool
) -> None:
    script_model(fake_openai, stored=stored)
    chat = 1  # a private chat's id is the user's
    async with (
        FakeTelegram() as telegram,
        Processes(
            tmp_path,
            PARLEY_TELEGRAM_UPDATE_INTERVAL=0.2,
            **common(database_url, fake_openai),
            **telegram_settings(telegram),
        ) as processes,
    ):
        first = await processes.start("telegram", name="first")
        telegram.push(private_message(QUESTION, first_name="alice"))
        # An edit, not just the first post: the post's message id is recorded in the turn
        # before the next call, so the restarted process knows which message to edit.
        await telegram.wait_for(
            lambda: any(call.ok for call in telegram.calls_to("editMessageText")),
            timeout=30,
            what="a partial answer edited in",
        )
        if stored:
            # Every call after this one waits 30 s: the answer is stored but not shown.
            telegram.fail_next("editMessageText", status=429, retry_after=30)
            await eventually(
                lambda: turn_states(database_url),
                until=lambda states: states == [("replied", 1)],
                what="the stored answer",
            )
        [shown] = telegram.texts_in(chat)
        assert is_partial(shown, AS_TELEGRAM_HTML), shown
        await first.kill()
        killed = time.monotonic()

        second = await processes.start("telegram", name="second")
        await telegram.wait_for(
            lambda: telegram.texts_in(chat) == [AS_TELEGRAM_HTML],
            timeout=30,
            what="the complete answer",
        )
        assert time.monotonic() - killed < 30
        [message] = telegram.messages_in(chat)
        assert message["plain"] == ANSWER.replace("**", "")
        assert len(telegram.calls_to("sendMessage")) == 1  # edited, never posted again
        assert telegram.deleted == {}
        assert_model_asked(fake_openai, stored=stored)
        await delivered_once(database_url)

        telegram.push(private_message(FOLLOW_UP, first_name="alice"))
        await telegram.wait_for(
            lambda: telegram.texts_in(chat) == [AS_TELEGRAM_HTML, SECOND_ANSWER],
            timeout=30,
            what="the answer to the follow-up",
        )
        assert_exchange_whole(fake_openai)
        assert await second.terminate() == 0
        assert "Traceback" not in second.stderr, second.tail()


# --- Slack, HTTP events -------------------------------------------------------------------


def thread_texts(slack: FakeSlack, thread: str) -> list[str]:
    return [message["text"] for message in slack.messages_in(CHANNEL, thread)]


@STORED
async def test_slack_answer_killed_mid_stream_is_completed_after_a_restart(
    database_url: str, fake_openai: FakeOpenAI, tmp_path: Path, stored: bool
) -> None:
    script_model(fake_openai, stored=stored)
    async with (
        FakeSlack() as slack,
        Processes(
            tmp_path,
            PARLEY_SLACK_UPDATE_INTERVAL=0.2,
            **common(database_url, fake_openai),
            **slack_settings(slack),
        ) as processes,
    ):
        slack.users["U1"] = "alice"
        first = await processes.start("slack", name="first")
        thread = next_ts()
        await send_slack_event(first, app_mention(f"<@UBOT> {QUESTION}", ts=thread))
        await slack.wait_for(
            lambda: any(
                call.ok and call.args.get("text") != "…" for call in slack.calls_to("chat.update")
            ),
            timeout=30,
            what="a partial answer edited in",
        )
        if stored:
            slack.fail_next("chat.update", retry_after=30)  # 429: every later call waits
            await eventually(
                lambda: turn_states(database_url),
                until=lambda states: states == [("replied", 1)],
                what="the stored answer",
            )
        [shown] = thread_texts(slack, thread)
        assert is_partial(shown, AS_SLACK_MRKDWN), shown
        await first.kill()
        killed = time.monotonic()

        second = await processes.start("slack", name="second")
        await slack.wait_for(
            lambda: thread_texts(slack, thread) == [AS_SLACK_MRKDWN],
            timeout=30,
            what="the complete answer",
        )
        assert time.monotonic() - killed < 30
        [message] = slack.messages_in(CHANNEL, thread)
        assert message["versions"][0] == "…"  # the placeholder the first process posted
        assert [call.args["text"] for call in slack.calls_to("chat.postMessage")] == ["…"]
        assert slack.deleted == {}
        assert_model_asked(fake_openai, stored=stored)
        await delivered_once(database_url)

        # In the thread, no mention needed; sent to the process that is alive now.
        await send_slack_event(second, channel_message(FOLLOW_UP, thread_ts=thread))
        await slack.wait_for(
            lambda: thread_texts(slack, thread) == [AS_SLACK_MRKDWN, SECOND_ANSWER],
            timeout=30,
            what="the answer to the follow-up",
        )
        assert_exchange_whole(fake_openai)
        assert await second.terminate() == 0
        assert "Traceback" not in second.stderr, second.tail()
