"""`parley run PLATFORM` as real subprocesses, for crash tests and the multi-process benchmark.

Each process is started the way an operator starts it (`python -m bots run slack`), with its
settings in the environment pointing at fakes on 127.0.0.1, and is watched through its
stderr: it is ready once it printed "Parley is running" (everything is connected and the
HTTP server listens), and the port of that server is read from its "listening on" log line,
so `PARLEY_HTTP_PORT=0` lets the kernel pick a free port without a race.

`Processes` owns what it started: on exit every process still alive is killed (SIGKILL) and
reaped, and an `atexit` hook does the same if the test runner itself is torn down mid-test,
so no `parley run` outlives the test or benchmark that started it.
"""

# The wait helpers take `timeout=` (seconds) on purpose: one knob per wait, as in the fakes.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from core.storage.tables import turns
from tests.fakes.openai_server import FakeOpenAI, _chunk, _send, _usage
from tests.fakes.slack_server import (
    FakeSlack,
    app_mention,
    channel_message,
    event_callback,
    next_ts,
    post_event,
    sign,
)
from tests.fakes.telegram_server import FakeTelegram, free_port

READY = "Parley is running"
_LISTENING = re.compile(r"listening on http://[^\s:/]+:(\d+)/")
# Only what Python and the installed package need; nothing of the test runner's own
# environment (a developer's SLACK_BOT_TOKEN, DATABASE_URL...) may leak into the bot.
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR")
SLACK_SECRET = "signing-secret"
TELEGRAM_TOKEN = "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_live: dict[int, asyncio.subprocess.Process] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid, process in list(_live.items()):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def environment(**settings: object) -> dict[str, str]:
    """The environment of a `parley run`: a few system variables, then `settings` (None drops
    a setting). Logs at INFO so the HTTP port and takeovers show on stderr."""
    env = {name: os.environ[name] for name in _KEPT if name in os.environ}
    env.update({"PARLEY_LOG_LEVEL": "INFO", "PARLEY_HTTP_PORT": "0"})
    for name, value in settings.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def model_settings(model: FakeOpenAI) -> dict[str, object]:
    return {
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-test",
        "PARLEY_MODEL": "gpt-4o-mini",
        "PARLEY_MODEL_RETRIES": 0,
        "PARLEY_USER_RPM": 0,  # no limit: these tests send many messages from one user
    }


def slack_settings(slack: FakeSlack) -> dict[str, object]:
    """Slack over HTTP events (signed), its Web API on the fake."""
    return {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": SLACK_SECRET,
        "SLACK_API_URL": slack.api_url,
    }


def telegram_settings(telegram: FakeTelegram) -> dict[str, object]:
    """Telegram by long polling against the fake Bot API."""
    return {"TELEGRAM_BOT_TOKEN": TELEGRAM_TOKEN, "TELEGRAM_API_URL": telegram.url}


class EchoModel(FakeOpenAI):
    """A model that answers every request at once, naming the message it answers
    (`answer_to`), so that many concurrent conversations need no script and every reply
    shows which question it belongs to. Requests are recorded as FakeOpenAI records them."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        text = answer_to(str(body["messages"][-1]["content"]))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await _send(response, _chunk(body["model"], {"content": text}))
        await end_stream(response, body)
        return response


async def end_stream(response: web.StreamResponse, body: dict[str, Any]) -> None:
    """The end of a streamed answer: the finish reason, usage when asked for, [DONE]."""
    await _send(response, _chunk(body["model"], {}, finish_reason="stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        usage = _chunk(body["model"], None)
        usage["choices"] = []
        usage["usage"] = _usage(10, 5)
        await _send(response, usage)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


def answer_to(content: str) -> str:
    """EchoModel's answer to a user message ("alice: c7 m2" -> "Answer to c7 m2")."""
    return "Answer to " + content.split(": ", 1)[-1]


class ParleyProcess:
    """One running `parley run`; its stderr is read into `lines` as it comes."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.lines: list[str] = []
        self.port: int | None = None
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read(), name=f"stderr-of-{name}")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @property
    def events_url(self) -> str:
        """Where this process receives Slack's HTTP events."""
        assert self.port is not None, f"{self.name} serves no HTTP"
        return f"http://127.0.0.1:{self.port}/slack/events"

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def tail(self, count: int = 30) -> str:
        return f"--- last stderr lines of {self.name} (pid {self.pid}) ---\n" + "\n".join(
            self.lines[-count:]
        )

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if self.port is None and (found := _LISTENING.search(line)):
                self.port = int(found.group(1))
            async with self._changed:
                self._changed.notify_all()
        await self.process.wait()
        async with self._changed:
            self._changed.notify_all()

    async def wait_line(
        self, predicate: Callable[[str], bool], *, timeout: float = 30, what: str = "a line"
    ) -> str:
        """The first stderr line (old or new) for which `predicate` holds."""

        def found() -> str | None:
            return next((line for line in self.lines if predicate(line)), None)

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None or not self.alive)
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {what} within {timeout} s\n{self.tail()}"
            ) from None
        line = found()
        if line is None:
            await self._reader
            raise AssertionError(
                f"{self.name} exited ({self.returncode}) before {what}\n{self.tail()}"
            )
        return line

    async def ready(self, timeout: float = 60) -> None:
        """Wait until the process serves its platforms (and its HTTP port is known)."""
        await self.wait_line(lambda line: READY in line, timeout=timeout, what="readiness")

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (Linux /proc; it must be alive)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime and stime are fields 14 and 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    async def kill(self) -> None:
        """`kill -9`: no cleanup, no lease released, sockets cut mid-request."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self._finish()

    async def terminate(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager stops a service; waits for the exit code (SIGKILL if
        it takes longer than `timeout`)."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()
                raise AssertionError(
                    f"{self.name} did not stop within {timeout} s of SIGTERM\n{self.tail()}"
                ) from None
        await self._finish()
        assert self.returncode is not None
        return self.returncode

    async def _finish(self) -> None:
        await self.process.wait()
        await self._reader
        _live.pop(self.pid, None)


class Processes:
    """`async with Processes(cwd) as processes:` then `await processes.start("slack", ...)`.

    `base` settings apply to every process started; `start` adds its own on top.
    """

    def __init__(self, cwd: Path, **base: object) -> None:
        self.cwd = cwd
        self.base = base
        self.started: list[ParleyProcess] = []

    async def start(
        self,
        platform: str,
        *,
        name: str | None = None,
        ready: float = 60,
        profile: Path | None = None,
        **settings: object,
    ) -> ParleyProcess:
        """Start `parley run PLATFORM` and wait until it is ready. With `profile`, it runs
        under cProfile, whose statistics are written there when it stops on SIGTERM."""
        name = name or f"{platform}-{len(self.started) + 1}"
        env = environment(**{**self.base, **settings})
        if env["PARLEY_LOG_LEVEL"] not in ("DEBUG", "INFO") and env["PARLEY_HTTP_PORT"] == "0":
            # The port is not logged at this level: pick one (a tiny race, only then).
            env["PARLEY_HTTP_PORT"] = str(free_port())
        profiling = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *profiling,
            "-m",
            "bots",
            "run",
            platform,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=self.cwd,
        )
        _live[process.pid] = process
        running = ParleyProcess(name, process)
        if env["PARLEY_HTTP_PORT"] != "0":
            running.port = int(env["PARLEY_HTTP_PORT"])
        self.started.append(running)
        await running.ready(ready)
        return running

    def tails(self) -> str:
        """The end of every process's stderr, for a failing assertion's message."""
        return "\n".join(process.tail() for process in self.started)

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.gather(*(process.kill() for process in self.started))
        if error is not None:
            # pytest shows captured output of a failed test: the processes' side of the story.
            print(self.tails(), file=sys.stderr)


async def send_slack_event(
    process: ParleyProcess,
    event: dict[str, Any],
    *,
    event_id: str | None = None,
    retries: int = 5,
    session: aiohttp.ClientSession | None = None,
) -> None:
    """Deliver one Events API event to a process as Slack does: signed, and sent again (with
    X-Slack-Retry-Num) while the answer is not a 200, as Slack redelivers until acknowledged.
    Returns once the event was acknowledged, i.e. stored. With a `session`, its connections
    are reused (the benchmark's load generator shares the CPU with the processes)."""
    body: Mapping[str, Any] = event_callback(event, event_id=event_id)
    raw = json.dumps(body).encode()
    statuses: list[int] = []
    for attempt in range(retries + 1):
        if session is None:
            status, _ = await post_event(
                process.events_url, body, secret=SLACK_SECRET, retry_num=attempt or None
            )
        else:
            headers = {"Content-Type": "application/json", **sign(SLACK_SECRET, raw)}
            if attempt:
                headers.update({"X-Slack-Retry-Num": str(attempt), "X-Slack-Retry-Reason": "x"})
            async with session.post(process.events_url, data=raw, headers=headers) as response:
                await response.read()
                status = response.status
        statuses.append(status)
        if status == 200:
            return
        await asyncio.sleep(0.5)  # Slack waits longer; the test need not
    raise AssertionError(f"{process.name} never acknowledged the event: {statuses}")


@dataclass
class Load:
    """What `converse` sent: each conversation's thread, and when each question went out."""

    threads: list[str]
    sent: dict[str, float]  # question ("c7 m2") -> time.monotonic() when its event was sent

    @property
    def questions(self) -> list[str]:
        return list(self.sent)


def question(conversation: int, message: int) -> str:
    return f"c{conversation} m{message}"


async def converse(
    targets: Sequence[ParleyProcess],
    conversations: int,
    messages: int,
    *,
    channel: str = "C1",
    session: aiohttp.ClientSession | None = None,
) -> Load:
    """Slack conversations as people hold them, spread over `targets`: each starts with a
    mention (its thread) and goes on in that thread without one. Message k+1 of a
    conversation is sent once message k was acknowledged, without waiting for answers;
    conversations go on at once, and their messages go round-robin over the processes, so
    the turns of one conversation are accepted by different processes."""
    load = Load(threads=[next_ts() for _ in range(conversations)], sent={})

    async def one(number: int) -> None:
        thread = load.threads[number]
        for k in range(1, messages + 1):
            text = question(number, k)
            if k == 1:
                event = app_mention(f"<@UBOT> {text}", channel=channel, ts=thread)
            else:
                event = channel_message(text, channel=channel, thread_ts=thread)
            load.sent[text] = time.monotonic()
            target = targets[(number + k) % len(targets)]
            await send_slack_event(target, event, session=session)

    await asyncio.gather(*(one(number) for number in range(conversations)))
    return load


async def eventually(
    check: Callable[[], Any],
    *,
    until: Callable[[Any], bool] = bool,
    timeout: float = 30,
    every: float = 0.1,
    what: str = "a condition",
) -> Any:
    """Poll `check` (sync or async) until `until(result)` holds; that result is returned.
    For what no fake can wait on (rows in the database); shows the last result on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout} s waiting for {what}; last: {result!r}"
            )
        await asyncio.sleep(every)


async def turn_states(database_url: str) -> list[tuple[str, int]]:
    """(state, attempts) of every turn in the database, oldest first: read from outside the
    processes, as an operator would look."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(turns.c.state, turns.c.attempts).order_by(turns.c.id)
            )
            return [(str(state), int(attempts)) for state, attempts in rows]
    finally:
        await engine.dispose()
