"""A rolling restart loses nothing: docs/DEPLOY.md's procedure, run for real.

Two `parley run slack` processes on one PostgreSQL database behind a load balancer (this
test's `Balancer`: round robin over the processes in its pool, and a failed delivery goes to
the next one, as Slack redelivers an event it got no 200 for). The schema is migrated first
by `parley db upgrade`, and the processes start with PARLEY_AUTO_MIGRATE=false, as in
deploy/compose.yaml. While conversations go on without pause, each process in turn is
stopped with SIGTERM and replaced by a new one: the first taken out of the pool before (a
balancer checking /readyz), in the middle of writing an answer; the second while events
still reach it. Then every message has exactly one answer, in order in its thread, and the
cut-off answer was finished by the other process at once (the lease is far longer than the
test), not when a lease expired.

tests/durability/test_processes.py covers the parts one by one (SIGTERM hands a running turn
over; kill -9; four processes sharing a load); this is the whole procedure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from core.storage.tables import turns
from tests.durability.processes import (
    SLACK_SECRET,
    EchoModel,
    ParleyProcess,
    Processes,
    answer_to,
    end_stream,
    environment,
    eventually,
    model_settings,
    slack_settings,
    turn_states,
)
from tests.fakes.openai_server import _chunk, _send
from tests.fakes.slack_server import (
    FakeSlack,
    app_mention,
    channel_message,
    event_callback,
    next_ts,
    sign,
)

pytestmark = pytest.mark.postgres

CHANNEL = "C1"
CONVERSATIONS = 6
PAUSE = 0.25  # seconds between a conversation's messages (after each is acknowledged)
GRACE = 5.0  # PARLEY_SHUTDOWN_GRACE: short answers finish in it, the slow one cannot
SLOW = "slow question"
SLOW_CHARACTER = 0.5  # seconds per character of the slow answer's first take (~12 s in all)


class PacedModel(EchoModel):
    """EchoModel's answers, streamed in a few pieces; the first answer to SLOW comes one
    character at a time, so it is still being written when its process is stopped."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        content = str(body["messages"][-1]["content"])
        text = answer_to(content)
        takes = sum(1 for r in self.chat_requests if r["messages"][-1]["content"] == content)
        slow = content.endswith(SLOW) and takes == 1
        pieces = list(text) if slow else [word + " " for word in text.split(" ")]
        pieces[-1] = pieces[-1].rstrip(" ")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # its process was stopped
            for piece in pieces:
                await _send(response, _chunk(body["model"], {"content": piece}))
                await asyncio.sleep(SLOW_CHARACTER if slow else 0.02)
            await end_stream(response, body)
        return response


class Balancer:
    """A load balancer in front of the processes in `pool`, and Slack's redelivery behind it:
    events go round robin; an event not acknowledged (refused connection, cut connection, an
    error status) is sent again, same event id, to the next process."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.pool: list[ParleyProcess] = []
        self.redeliveries = 0
        self._turn = 0

    async def send(self, event: dict[str, Any], to: ParleyProcess | None = None) -> None:
        raw = json.dumps(event_callback(event)).encode()
        for attempt in range(40):
            target = to or self.pool[self._turn % len(self.pool)]
            self._turn += 1
            headers = {"Content-Type": "application/json", **sign(SLACK_SECRET, raw)}
            if attempt:
                headers.update({"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "x"})
                self.redeliveries += 1
            try:
                async with self.session.post(target.events_url, data=raw, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            to = None
            await asyncio.sleep(0.1)
        raise AssertionError(f"no process acknowledged {event['text']!r}")


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users["U1"] = "alice"
        yield fake


async def migrate(database_url: str, cwd: Path) -> None:
    """`parley db upgrade`, as the compose file's migrate service runs it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "db",
        "upgrade",
        env=environment(DATABASE_URL=database_url),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


def thread_texts(slack: FakeSlack, thread: str) -> list[str]:
    return [message["text"] for message in slack.messages_in(CHANNEL, thread)]


async def story(slack: FakeSlack, database_url: str, thread: str, questions: list[str]) -> str:
    """For a failed assertion: the Slack calls in a thread, and the turns of its questions."""
    calls = [
        f"{call.method} ok={call.ok} ts={call.args.get('ts')} {call.args.get('text')!r}"
        for call in slack.calls
        if call.args.get("thread_ts") == thread
        or call.args.get("ts") in {m["ts"] for m in slack.messages_in(CHANNEL, thread)}
    ]
    shown = [(m["ts"], m["text"]) for m in slack.messages_in(CHANNEL, thread)]
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(
                    turns.c.id,
                    turns.c.conversation_id,
                    turns.c.event_id,
                    turns.c.text,
                    turns.c.state,
                    turns.c.attempts,
                    turns.c.posted,
                ).order_by(turns.c.id)
            )
            table = [str(tuple(row)) for row in rows if any(q in row.text for q in questions)]
    finally:
        await engine.dispose()
    return "\n".join(["calls:", *calls, f"shown: {shown}", "turns:", *table])


async def test_a_rolling_restart_answers_every_message_once(
    postgres_url: str, slack: FakeSlack, tmp_path: Path
) -> None:
    await migrate(postgres_url, tmp_path)
    async with (
        PacedModel() as model,
        aiohttp.ClientSession() as session,
        Processes(
            tmp_path,
            DATABASE_URL=postgres_url,
            PARLEY_AUTO_MIGRATE="false",
            PARLEY_SHUTDOWN_GRACE=GRACE,
            # Far longer than the test: a turn only moves to another process this quickly
            # because the stopping one released it.
            PARLEY_LEASE_SECONDS=300,
            PARLEY_SLACK_UPDATE_INTERVAL=0.2,
            PARLEY_DB_POOL_SIZE=5,
            **model_settings(model),
            **slack_settings(slack),
        ) as processes,
    ):
        balancer = Balancer(session)
        a, b = await asyncio.gather(
            processes.start("slack", name="a"), processes.start("slack", name="b")
        )
        balancer.pool += [a, b]

        # People keep talking during the whole restart.
        restarted = asyncio.Event()
        threads = [next_ts() for _ in range(CONVERSATIONS)]
        asked: dict[str, list[str]] = {thread: [] for thread in threads}

        async def conversation(number: int) -> None:
            thread = threads[number]
            k = 0
            while not restarted.is_set() or k < 2:
                k += 1
                text = f"c{number} m{k}"
                if k == 1:
                    event = app_mention(f"<@UBOT> {text}", channel=CHANNEL, ts=thread)
                else:
                    event = channel_message(text, channel=CHANNEL, thread_ts=thread)
                await balancer.send(event)
                asked[thread].append(text)
                await asyncio.sleep(PAUSE)

        load = [asyncio.create_task(conversation(n)) for n in range(CONVERSATIONS)]

        # An answer a is in the middle of writing when it is stopped.
        slow_thread = next_ts()
        await balancer.send(app_mention(f"<@UBOT> {SLOW}", channel=CHANNEL, ts=slow_thread), a)
        slow_answer = answer_to(SLOW)

        def slow_partly_shown() -> bool:
            return any(
                text.startswith("Ans") and text != slow_answer
                for text in thread_texts(slack, slow_thread)
            )

        await slack.wait_for(slow_partly_shown, timeout=15, what="the slow answer's first words")

        # The rolling restart: out of the pool, SIGTERM, a new process in; then the next.
        began = time.monotonic()
        balancer.pool.remove(a)
        assert await a.terminate(timeout=GRACE + 15) == 0, a.tail()
        assert "unfinished turns left for another process" in a.stderr, a.tail()
        # b finished the cut-off answer at once, far sooner than a's lease would expire.
        await slack.wait_for(
            lambda: thread_texts(slack, slow_thread) == [slow_answer],
            timeout=60,
            what="the slow answer, finished by another process",
        )
        handed_over = time.monotonic() - began
        a2 = await processes.start("slack", name="a2")
        balancer.pool.append(a2)
        # b is stopped without being drained first, as when no health check tells the
        # balancer: events sent to it while it closes its port are refused, and delivered
        # again to a2.
        assert await b.terminate(timeout=GRACE + 15) == 0, b.tail()
        balancer.pool.remove(b)
        b2 = await processes.start("slack", name="b2")
        balancer.pool.append(b2)
        restarted.set()
        await asyncio.gather(*load)
        restart = time.monotonic() - began

        total = sum(len(texts) for texts in asked.values()) + 1
        await eventually(
            lambda: turn_states(postgres_url),
            until=lambda states: (
                len(states) == total and all(state == "delivered" for state, _ in states)
            ),
            timeout=30,
            what=f"all {total} turns delivered",
        )
        for process in (a2, b2):
            assert process.alive, process.tail()
        for process in (a, b, a2, b2):
            assert "Traceback" not in process.stderr, process.tail()

    # Every message answered exactly once: one message per answer in its thread, in the order
    # of the questions, nothing deleted; the model was asked each question once, except the
    # slow one, whose cut-off first take was written again by the process that took it over.
    for thread, texts in asked.items():
        expected_texts = [answer_to(f"alice: {text}") for text in texts]
        if thread_texts(slack, thread) != expected_texts:
            pytest.fail(await story(slack, postgres_url, thread, texts))
    posts = [call for call in slack.calls_to("chat.postMessage") if call.ok]
    assert len(posts) == total
    assert slack.deleted == {}
    # The model was asked every question, and the slow one again by the process that took
    # it over (a short answer cut by the grace period, on a busy machine, is asked again too).
    requested = Counter(str(r["messages"][-1]["content"]) for r in model.chat_requests)
    expected = {f"alice: {text}" for texts in asked.values() for text in texts}
    assert set(requested) == {*expected, f"alice: {SLOW}"}
    assert requested[f"alice: {SLOW}"] >= 2
    print(
        f"{total} messages answered once each across a rolling restart of 2 processes "
        f"({restart:.1f} s; the cut-off answer finished {handed_over:.1f} s after SIGTERM; "
        f"{balancer.redeliveries} redeliveries; {sum(requested.values()) - total} answers "
        "written again)"
    )


async def test_a_grace_longer_than_the_lease_keeps_the_turn_until_it_is_handed_over(
    postgres_url: str, slack: FakeSlack, tmp_path: Path
) -> None:
    """While a stopping process finishes a turn, its heartbeat keeps the turn's lease: the
    other process must not answer it meanwhile (its complete answer would then be overwritten
    by the stopping process's later edits). Once the grace ends, the turn is handed over and
    its complete answer stays."""
    await migrate(postgres_url, tmp_path)
    grace, lease = 6.0, 2.0
    async with (
        PacedModel() as model,
        aiohttp.ClientSession() as session,
        Processes(
            tmp_path,
            DATABASE_URL=postgres_url,
            PARLEY_AUTO_MIGRATE="false",
            PARLEY_SHUTDOWN_GRACE=grace,
            PARLEY_LEASE_SECONDS=lease,
            PARLEY_SLACK_UPDATE_INTERVAL=0.2,
            **model_settings(model),
            **slack_settings(slack),
        ) as processes,
    ):
        first, second = await asyncio.gather(
            processes.start("slack", name="first"), processes.start("slack", name="second")
        )
        thread = next_ts()
        await Balancer(session).send(
            app_mention(f"<@UBOT> {SLOW}", channel=CHANNEL, ts=thread), first
        )
        await slack.wait_for(
            lambda: any(text.startswith("Ans") for text in thread_texts(slack, thread)),
            what="the slow answer streaming",
        )

        def takes() -> int:
            return sum(
                1 for r in model.chat_requests if r["messages"][-1]["content"].endswith(SLOW)
            )

        # Handed over when the grace ends (the released turn is taken at once, through a
        # signal), not a moment earlier.
        sigterm = time.monotonic()
        stopped = asyncio.create_task(first.terminate(timeout=30))
        while time.monotonic() - sigterm < grace:
            assert takes() == 1, "another process answered a turn still held in the grace"
            await asyncio.sleep(0.05)
        assert await stopped == 0
        await slack.wait_for(
            lambda: thread_texts(slack, thread) == [answer_to(SLOW)], what="the complete answer"
        )
        await asyncio.sleep(3 * 0.2)  # a late edit of the stopped process would land by now
        assert thread_texts(slack, thread) == [answer_to(SLOW)]
        assert takes() == 2
        await second.terminate()
