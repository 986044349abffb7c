"""Several `parley run slack` processes on one PostgreSQL database, as a deployment scales out:
a process killed mid-answer is finished by another that keeps running, a process stopped
with SIGTERM hands its turn over at once, and four processes sharing 800 messages answer
each exactly once and every conversation in order.

Real subprocesses (HTTP events, each on its own port) against FakeSlack and the model fakes
in this process; PostgreSQL for real, since SQLite is for one process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.durability.processes import (
    EchoModel,
    ParleyProcess,
    Processes,
    answer_to,
    converse,
    eventually,
    model_settings,
    question,
    send_slack_event,
    slack_settings,
    turn_states,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, app_mention, next_ts

pytestmark = pytest.mark.postgres

CHANNEL = "C1"
QUESTION = "why is the sky blue?"
ANSWER = (
    "Sunlight scatters off the molecules of the air, and blue light, with its shorter "
    "wavelength, scatters far more than red, so blue reaches the eye from every direction."
)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users["U1"] = "alice"
        yield fake


def thread_texts(slack: FakeSlack, thread: str) -> list[str]:
    return [message["text"] for message in slack.messages_in(CHANNEL, thread)]


def partial_edit(slack: FakeSlack) -> bool:
    return any(call.ok and call.args.get("text") != "…" for call in slack.calls_to("chat.update"))


@asynccontextmanager
async def answering_on_a(
    processes: Processes, slack: FakeSlack
) -> AsyncIterator[tuple[ParleyProcess, ParleyProcess, str]]:
    """Processes a and b (started together: both migrate the empty database at once), and a
    question a is in the middle of answering: (a, b, its thread)."""
    a, b = await asyncio.gather(
        processes.start("slack", name="a"), processes.start("slack", name="b")
    )
    thread = next_ts()
    await send_slack_event(a, app_mention(f"<@UBOT> {QUESTION}", ts=thread))
    await slack.wait_for(lambda: partial_edit(slack), timeout=30, what="a partial answer")
    yield a, b, thread


async def answered_once_by_b(
    b: ParleyProcess,
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    thread: str,
    since: float,
    database_url: str,
) -> None:
    """One complete message (a's placeholder, edited), the answer generated again (it had not
    been stored), the turn delivered on its second take; b stops cleanly."""
    await slack.wait_for(
        lambda: thread_texts(slack, thread) == [ANSWER], timeout=30, what="the answer"
    )
    assert time.monotonic() - since < 30
    assert [call.args["text"] for call in slack.calls_to("chat.postMessage")] == ["…"]
    assert slack.deleted == {}
    assert len(fake_openai.chat_requests) == 2
    await eventually(
        lambda: turn_states(database_url),
        until=lambda states: states == [("delivered", 2)],
        what="the turn delivered by b",
    )
    assert await b.terminate() == 0


def two_processes(
    tmp_path: Path, postgres_url: str, fake_openai: FakeOpenAI, slack: FakeSlack, **settings: object
) -> Processes:
    fake_openai.reply(ANSWER, chunk_delay=0.15)  # long enough to stop a in the middle
    fake_openai.reply(ANSWER, chunk_delay=0.01)
    return Processes(
        tmp_path,
        DATABASE_URL=postgres_url,
        PARLEY_SLACK_UPDATE_INTERVAL=0.2,
        **model_settings(fake_openai),
        **slack_settings(slack),
        **settings,
    )


async def test_a_process_killed_mid_answer_is_finished_by_another_one(
    postgres_url: str, fake_openai: FakeOpenAI, slack: FakeSlack, tmp_path: Path
) -> None:
    settings = {"PARLEY_LEASE_SECONDS": 2}
    async with (
        two_processes(tmp_path, postgres_url, fake_openai, slack, **settings) as processes,
        answering_on_a(processes, slack) as (a, b, thread),
    ):
        await a.kill()
        # No restart: b takes the turn over once a's lease expired (2 s), by itself.
        await answered_once_by_b(
            b, slack, fake_openai, thread, since=time.monotonic(), database_url=postgres_url
        )


async def test_sigterm_hands_a_running_turn_to_another_process_at_once(
    postgres_url: str, fake_openai: FakeOpenAI, slack: FakeSlack, tmp_path: Path
) -> None:
    # A lease far longer than the test: only the release on SIGTERM lets b in quickly.
    settings = {"PARLEY_LEASE_SECONDS": 120, "PARLEY_SHUTDOWN_GRACE": 0.5}
    async with (
        two_processes(tmp_path, postgres_url, fake_openai, slack, **settings) as processes,
        answering_on_a(processes, slack) as (a, b, thread),
    ):
        stopped = time.monotonic()
        assert await a.terminate(timeout=30) == 0
        await answered_once_by_b(
            b, slack, fake_openai, thread, since=stopped, database_url=postgres_url
        )


CONVERSATIONS = 200
MESSAGES = 4
PROCESSES = 4
POOL_SIZE = 5


@pytest.mark.timeout(240)
async def test_four_processes_answer_every_message_once_and_in_order(
    postgres_url: str, slack: FakeSlack, tmp_path: Path
) -> None:
    total = CONVERSATIONS * MESSAGES
    async with (
        EchoModel() as model,
        Processes(
            tmp_path,
            DATABASE_URL=postgres_url,
            PARLEY_SLACK_UPDATE_INTERVAL=0.1,
            PARLEY_LOG_LEVEL="WARNING",
            # 5 + 10 overflow connections each: four processes stay under PostgreSQL's
            # default max_connections (100). With the default pool (20 + 40) they reach
            # 240 under this load and the server refuses ("too many clients").
            PARLEY_DB_POOL_SIZE=POOL_SIZE,
            **model_settings(model),
            **slack_settings(slack),
        ) as processes,
    ):
        started = await asyncio.gather(
            *(processes.start("slack", name=f"p{n}") for n in range(PROCESSES))
        )
        began = time.monotonic()
        load = await converse(started, CONVERSATIONS, MESSAGES, channel=CHANNEL)

        def answered() -> int:
            return sum(1 for m in slack.messages.values() if m["text"].startswith("Answer to "))

        await slack.wait_for(lambda: answered() >= total, timeout=120, what=f"{total} answers")
        elapsed = time.monotonic() - began
        await eventually(
            lambda: turn_states(postgres_url),
            until=lambda states: [state for state, _ in states] == ["delivered"] * total,
            what="every turn delivered",
        )
        for process in started:
            assert process.alive, process.tail()
            assert "Traceback" not in process.stderr, process.tail()

    # Answered once: one model request per message, one message per answer, and its text
    # sent once: posted whole (ready within FIRST_CALL_AFTER) or as its placeholder's final
    # edit.
    requests = model.chat_requests
    asked = Counter(str(request["messages"][-1]["content"]) for request in requests)
    assert asked == {f"alice: {text}": 1 for text in load.questions}
    posts = [call for call in slack.calls_to("chat.postMessage") if call.ok]
    assert len(posts) == total and slack.deleted == {}
    per_thread = Counter(str(call.args.get("thread_ts")) for call in posts)
    assert per_thread == {thread: MESSAGES for thread in load.threads}
    answers_sent = Counter(
        str(call.args["text"])
        for call in (*posts, *slack.calls_to("chat.update"))
        if call.ok and str(call.args.get("text", "")).startswith("Answer to ")
    )
    assert answers_sent == {answer_to(text): 1 for text in load.questions}

    # In order: each thread shows its answers in the order of its questions, and each
    # question reached the model after the whole exchange of the ones before it.
    for number, thread in enumerate(load.threads):
        expected = [answer_to(question(number, k)) for k in range(1, MESSAGES + 1)]
        assert thread_texts(slack, thread) == expected
    histories: dict[str, list[str]] = defaultdict(list)
    for request in requests:
        contents = [str(m["content"]) for m in request["messages"][1:]]
        histories[contents[-1]] = contents
    for number in range(CONVERSATIONS):
        expected_history: list[str] = []
        for k in range(1, MESSAGES + 1):
            asked_now = f"alice: {question(number, k)}"
            assert histories[asked_now] == [*expected_history, asked_now]
            expected_history += [asked_now, answer_to(asked_now)]
    print(f"{total} messages over {PROCESSES} processes answered in {elapsed:.1f} s")
