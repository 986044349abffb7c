"""N chats x M messages end to end: a real `parley run PLATFORM` against a fake platform.

Parley runs as a subprocess (`python -m bots run telegram|slack|discord`, settings in the
environment), its SDK pointed at the fake platform of tests/fakes (the settings the tests
use) and at a fake model that streams a 62-token answer at once. Every chat is a direct
message conversation with its own user; each sends its M messages one after the other (the
next once the previous answer is complete on the fake platform, as a person would), all N
chats at once. See bench/README.md ("End to end through the platform SDKs").

    python -m bench.load --platform telegram --database sqlite --chats 50 --messages 4
    python -m bench.load --platform telegram --chats 1 --messages 10     # one-chat mode
"""

# The wait helpers take `timeout=` (seconds), as the fakes' do.
# ruff: noqa: ASYNC109

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import pstats
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.engine_overhead import yardstick_ms
from bench.processes import DEFAULT_POSTGRES_URL, report_logs
from core.tokens import ExactCounter
from tests.durability.processes import (
    ParleyProcess,
    Processes,
    model_settings,
    send_slack_event,
    slack_settings,
    telegram_settings,
)
from tests.fakes.databases import throwaway_postgres_database
from tests.fakes.discord_server import FakeDiscord, dm_message_create
from tests.fakes.openai_server import FakeOpenAI, _chunk, _send, _usage
from tests.fakes.slack_server import FakeSlack, dm_message
from tests.fakes.telegram_server import FakeTelegram, private_message

ANSWER_TOKENS = 62
QUESTION = re.compile(r"\b([cw]\d+) m(\d+)\b")  # "c7 m2": chat 7's message 2 ("w": warm-up)
FILLER = (
    " This is a plain answer from the benchmark model with ordinary words only so that"
    " every platform shows it exactly as it was written and the harness can find it again"
    " in what the fake platform received from the bot during the whole run of the benchmark"
    " and then compare it with the text the model sent."
)
UPDATE_INTERVAL = {
    "telegram": "PARLEY_TELEGRAM_UPDATE_INTERVAL",
    "slack": "PARLEY_SLACK_UPDATE_INTERVAL",
    "discord": "PARLEY_DISCORD_UPDATE_INTERVAL",
}


def question(chat: str, k: int) -> str:
    return f"{chat} m{k}"


_answers: dict[tuple[str, int], list[str]] = {}


def answer_tokens(chat: str, k: int) -> list[str]:
    """The model's answer to message k of `chat`, as its 62 tokens (o200k_base, the
    encoding of PARLEY_MODEL=gpt-4o-mini), one streamed chunk each."""
    key = (chat, k)
    if key not in _answers:
        counter = ExactCounter("o200k_base")
        text = f"Reply to {question(chat, k)}." + FILLER
        heads = [counter.truncate(text, n) for n in range(ANSWER_TOKENS + 1)]
        pieces = [heads[n][len(heads[n - 1]) :] for n in range(1, ANSWER_TOKENS + 1)]
        whole = "".join(pieces)
        assert all(pieces) and counter.count(whole) == ANSWER_TOKENS and whole == whole.strip()
        _answers[key] = pieces
    return _answers[key]


def answer(chat: str, k: int) -> str:
    return "".join(answer_tokens(chat, k))


class StreamingModel(FakeOpenAI):
    """Answers every chat request at once with the 62-token answer to the question in its
    last message, one SSE chunk per token, and records (as FakeOpenAI does) the requests,
    plus when it wrote the last token of each answer (`last_token`, time.monotonic())."""

    def __init__(self) -> None:
        super().__init__()
        self.last_token: dict[tuple[str, int], float] = {}
        self.unknown = 0  # requests naming no question (they get an error)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        found = QUESTION.search(str(body["messages"][-1].get("content") or ""))
        if found is None:
            self.unknown += 1
            return web.json_response({"error": {"message": "no question"}}, status=500)
        chat, k = found.group(1), int(found.group(2))
        model = body["model"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in answer_tokens(chat, k):
            await _send(response, _chunk(model, {"content": piece}))
        self.last_token[(chat, k)] = time.monotonic()
        await _send(response, _chunk(model, {}, finish_reason="stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = _chunk(model, None)
            usage["choices"] = []
            usage["usage"] = _usage(100, ANSWER_TOKENS)
            await _send(response, usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


class Watch:
    """What the fake platform received that matters here: when each expected answer's whole
    text first arrived (a post or an edit the fake accepted), and an event per answer so a
    chat can send its next message once its answer is complete."""

    def __init__(self) -> None:
        self.expected: dict[str, tuple[str, int]] = {}  # answer text -> (chat, k)
        self.landed: dict[tuple[str, int], float] = {}  # first call that carried it
        self.events: dict[tuple[str, int], asyncio.Event] = {}
        # Requests whose connection the bot closed before the fake could read them:
        # (what was called, when), e.g. ("sendChatAction", 12.3).
        self.aborted: list[tuple[str, float]] = []

    async def guard(self, what: str, handler: Any, request: web.Request) -> web.StreamResponse:
        """Run a fake's handler; a request the client gave up on is recorded, not logged
        with a traceback by aiohttp."""
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ConnectionResetError:
            self.aborted.append((what, time.monotonic()))
            return web.Response(status=499)  # nobody reads it: the connection is gone

    def expect(self, chat: str, k: int) -> asyncio.Event:
        self.expected[answer(chat, k)] = (chat, k)
        return self.events.setdefault((chat, k), asyncio.Event())

    def saw(self, text: Any, at: float) -> None:
        key = self.expected.get(str(text or "").strip())
        if key is not None and key not in self.landed:
            self.landed[key] = at
            self.events[key].set()


# --- the fakes, watched (tests/fakes is not changed: each is subclassed here) -------------


class WatchedTelegram(FakeTelegram):
    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        return await self.watch.guard(method, super()._api, request)  # type: ignore[return-value]

    async def _answer(self, call: Any, request: web.Request) -> tuple[int, dict[str, Any]]:
        status, body = await super()._answer(call, request)
        if body.get("ok") and call.method.lower() in ("sendmessage", "editmessagetext"):
            self.watch.saw(call.args.get("text"), call.at)
        return status, body


class WatchedSlack(FakeSlack):
    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        return await self.watch.guard(method, super()._api, request)  # type: ignore[return-value]

    def _answer(self, call: Any) -> dict[str, Any]:
        result = super()._answer(call)
        if result.get("ok") and call.method in ("chat.postMessage", "chat.update"):
            self.watch.saw(call.args.get("text"), call.at)
        return result


class WatchedDiscord(FakeDiscord):
    def __init__(self, watch: Watch) -> None:
        super().__init__()
        self.watch = watch

    async def _rest(self, request: web.Request) -> web.Response:
        what = f"{request.method} {request.match_info['tail']}"
        return await self.watch.guard(what, super()._rest, request)  # type: ignore[return-value]

    def _answer(self, call: Any) -> web.Response:
        response = super()._answer(call)
        if (
            call.status == 200
            and call.method in ("POST", "PATCH")
            and "/messages" in call.path
            and isinstance(call.body, dict)
        ):
            self.watch.saw(call.body.get("content"), call.at)
        return response


# --- the platforms: how a chat sends, what the bot left in each chat -----------------------


class Platform:
    name = ""

    def __init__(self, watch: Watch, session: aiohttp.ClientSession) -> None:
        self.watch = watch
        self.session = session
        self.process: ParleyProcess | None = None

    def fake(self) -> Any:
        raise NotImplementedError

    def settings(self) -> dict[str, object]:
        raise NotImplementedError

    async def send(self, chat: str, k: int) -> None:
        """Deliver message k of `chat` to the bot as the platform does."""
        raise NotImplementedError

    def shown(self) -> list[tuple[str, str]]:
        """(chat, current text) of every live message the bot has in the chats."""
        raise NotImplementedError

    def chat_key(self, chat: str) -> str:
        """The platform's id of the chat, as `shown` names it."""
        raise NotImplementedError

    def calls_since(self, since: float) -> Counter[str]:
        """The API calls the bot made from `since` on, by method."""
        calls = self.fake_server.calls  # type: ignore[attr-defined]
        return Counter(self.describe(call) for call in calls if call.at >= since)

    @staticmethod
    def describe(call: Any) -> str:
        return str(call.method)


def chat_number(chat: str) -> int:
    return int(chat[1:]) + (0 if chat[0] == "c" else 100_000)


class Telegram(Platform):
    """Private chats (chat id = user id) by long polling."""

    name = "telegram"

    def fake(self) -> WatchedTelegram:
        self.telegram = self.fake_server = WatchedTelegram(self.watch)
        return self.telegram

    def settings(self) -> dict[str, object]:
        return telegram_settings(self.telegram)

    def _id(self, chat: str) -> int:
        return 1_000_000 + chat_number(chat)

    async def send(self, chat: str, k: int) -> None:
        user = self._id(chat)
        update = private_message(
            question(chat, k), user_id=user, first_name=f"User{chat}", username=f"user{user}"
        )
        self.telegram.push(update)

    def shown(self) -> list[tuple[str, str]]:
        return [(str(m["chat_id"]), str(m["text"])) for m in self.telegram.messages.values()]

    def chat_key(self, chat: str) -> str:
        return str(self._id(chat))


class Slack(Platform):
    """Direct messages (channel D..., one user each), as signed HTTP events."""

    name = "slack"

    def fake(self) -> WatchedSlack:
        self.slack = self.fake_server = WatchedSlack(self.watch)
        return self.slack

    def settings(self) -> dict[str, object]:
        return slack_settings(self.slack)

    async def send(self, chat: str, k: int) -> None:
        user = f"U{chat_number(chat)}"
        self.slack.users.setdefault(user, f"user{chat}")
        event = dm_message(question(chat, k), user=user, channel=self.chat_key(chat))
        assert self.process is not None
        await send_slack_event(self.process, event, session=self.session)

    def shown(self) -> list[tuple[str, str]]:
        return [(str(m["channel"]), str(m["text"])) for m in self.slack.messages.values()]

    def chat_key(self, chat: str) -> str:
        return f"D{chat_number(chat)}"


class Discord(Platform):
    """Direct messages (one DM channel per user) over the gateway."""

    name = "discord"

    def fake(self) -> WatchedDiscord:
        self.discord = self.fake_server = WatchedDiscord(self.watch)
        return self.discord

    def settings(self) -> dict[str, object]:
        return {
            "DISCORD_BOT_TOKEN": "discord-bot-token",
            "DISCORD_API_URL": self.discord.api_url,
            "DISCORD_GATEWAY_URL": self.discord.gateway_url,
        }

    async def send(self, chat: str, k: int) -> None:
        number = chat_number(chat)
        payload = dm_message_create(
            question(chat, k),
            channel_id=self.chat_key(chat),
            author_id=str(20_000_000 + number),
            username=f"user{chat}",
        )
        await self.discord.dispatch("MESSAGE_CREATE", payload)

    @staticmethod
    def describe(call: Any) -> str:
        return f"{call.method} " + re.sub(r"/\d+", "/{id}", str(call.path))

    def shown(self) -> list[tuple[str, str]]:
        return [
            (str(m["channel_id"]), str(m["content"]))
            for m in self.discord.messages.values()
            if not m["deleted"]
        ]

    def chat_key(self, chat: str) -> str:
        return str(30_000_000 + chat_number(chat))


PLATFORMS: dict[str, type[Platform]] = {"telegram": Telegram, "slack": Slack, "discord": Discord}


# --- the run -------------------------------------------------------------------------------


@dataclass
class Result:
    platform: str
    database: str
    chats: int
    messages: int
    sent: dict[tuple[str, int], float] = field(default_factory=dict)  # event sent at
    landed: dict[tuple[str, int], float] = field(default_factory=dict)
    last_token: dict[tuple[str, int], float] = field(default_factory=dict)
    cpu: float = 0.0  # seconds, the parley process, over the timed load
    harness_cpu: float = 0.0  # this process: the fakes, the model and the load
    peak_rss_kb: int = 0
    once: int = 0
    duplicated: int = 0
    missing: int = 0
    other_messages: list[str] = field(default_factory=list)  # bot texts no answer matches
    requests: int = 0
    whole_context: int = 0
    context_faults: list[str] = field(default_factory=list)
    repeated_requests: int = 0  # model requests beyond one per message
    calls: Counter[str] = field(default_factory=Counter)  # platform API calls in the load
    aborted_load: Counter[str] = field(default_factory=Counter)  # during the timed load
    aborted_stop: Counter[str] = field(default_factory=Counter)  # while the process stopped
    profile: list[tuple[str, float]] = field(default_factory=list)  # (package, share of self)
    logs: Counter[str] = field(default_factory=Counter)
    log_lines: list[str] = field(default_factory=list)
    died: str | None = None

    @property
    def total(self) -> int:
        return self.chats * self.messages

    @property
    def answered(self) -> int:
        return len(self.landed)

    @property
    def seconds(self) -> float:
        if not self.landed or not self.sent:
            return math.nan
        return max(self.landed.values()) - min(self.sent.values())

    def latencies(self) -> list[float]:
        return [self.landed[key] - self.sent[key] for key in self.landed if key in self.sent]

    def after_last_token(self) -> list[float]:
        return [
            self.landed[key] - self.last_token[key] for key in self.landed if key in self.last_token
        ]


def percentile(values: Sequence[float], q: int) -> float:
    """The q-th percentile of `values`, in ms."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the most resident memory the process has had (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@contextlib.asynccontextmanager
async def database(args: argparse.Namespace, folder: Path) -> AsyncIterator[str]:
    if args.database == "sqlite":
        yield f"sqlite:///{folder}/parley.db"
    else:
        async with throwaway_postgres_database(args.postgres_url, "parley_load") as url:
            yield url


async def run_chats(
    platform: Platform,
    watch: Watch,
    chats: Sequence[str],
    messages: int,
    result: Result | None,
    timeout: float,
) -> None:
    """Every chat at once, each sending its messages one after the other, the next once the
    answer to the one before it is complete on the fake platform."""
    deadline = time.monotonic() + timeout

    async def one(chat: str) -> None:
        for k in range(1, messages + 1):
            landed = watch.expect(chat, k)
            at = time.monotonic()
            await platform.send(chat, k)
            if result is not None:
                result.sent[(chat, k)] = at
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                    await landed.wait()
            except TimeoutError:
                return  # its later messages are never sent: counted as missing

    await asyncio.gather(*(one(chat) for chat in chats))


def check_context(model: StreamingModel, result: Result, chats: set[str]) -> None:
    """Each request for message k of a chat must carry, in order, that chat's k-1 earlier
    exchanges (the user's message and the whole answer) and then message k, nothing else
    but system messages."""
    seen: Counter[tuple[str, int]] = Counter()
    for body in model.chat_requests:
        last = QUESTION.search(str(body["messages"][-1].get("content") or ""))
        if last is None or last.group(1) not in chats:
            continue
        chat, k = last.group(1), int(last.group(2))
        seen[(chat, k)] += 1
        result.requests += 1
        got: list[tuple[str, object]] = []
        for message in body["messages"]:
            content = str(message.get("content") or "")
            if message["role"] == "user":
                found = QUESTION.search(content)
                got.append(("user", (found.group(1), int(found.group(2))) if found else content))
            elif message["role"] == "assistant":
                got.append(("assistant", content.strip()))
        wanted: list[tuple[str, object]] = []
        for j in range(1, k):
            wanted += [("user", (chat, j)), ("assistant", answer(chat, j))]
        wanted.append(("user", (chat, k)))
        if got == wanted:
            result.whole_context += 1
        elif len(result.context_faults) < 5:
            result.context_faults.append(f"{question(chat, k)}: {got!r:.300}")
    result.repeated_requests = sum(count - 1 for count in seen.values())


async def measure(args: argparse.Namespace) -> Result:
    result = Result(args.platform, args.database, args.chats, args.messages)
    watch = Watch()
    settings: dict[str, object] = {"PARLEY_LOG_LEVEL": "WARNING"}
    if args.update_interval is not None:
        settings[UPDATE_INTERVAL[args.platform]] = args.update_interval
    if args.pool_size is not None:
        settings["PARLEY_DB_POOL_SIZE"] = args.pool_size
    model = StreamingModel()
    with tempfile.TemporaryDirectory() as folder:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(args.chats, 1))
            ) as session,
            model,
            database(args, Path(folder)) as url,
        ):
            platform = PLATFORMS[args.platform](watch, session)
            async with (
                platform.fake(),
                Processes(Path(folder), DATABASE_URL=url, **settings) as processes,
            ):
                process = await processes.start(
                    args.platform,
                    name=f"parley-{args.platform}",
                    profile=args.profile,
                    **{**model_settings(model), **platform.settings()},  # type: ignore[arg-type]
                )
                platform.process = process
                warm = [f"w{n}" for n in range(args.warmup)]
                await run_chats(platform, watch, warm, 1, None, args.timeout)

                chats = [f"c{n}" for n in range(args.chats)]
                cpu_before = process.cpu_seconds()
                harness_before = time.process_time()
                await run_chats(platform, watch, chats, args.messages, result, args.timeout)
                if process.alive:  # at the last complete answer (or the timeout)
                    result.cpu = process.cpu_seconds() - cpu_before
                    result.harness_cpu = time.process_time() - harness_before
                # A late duplicate would come shortly after: give it a moment to show.
                await asyncio.sleep(args.settle)
                stopping = time.monotonic()
                if process.alive:
                    result.peak_rss_kb = peak_rss_kb(process.pid)
                    await process.terminate()
                else:
                    result.died = process.tail()
                collect_logs(process, result)
                if args.verbose:
                    report_logs([process], verbose=True)

            wanted = {(chat, k) for chat in chats for k in range(1, args.messages + 1)}
            result.landed = {key: at for key, at in watch.landed.items() if key in wanted}
            result.last_token = {key: at for key, at in model.last_token.items() if key in wanted}
            check_context(model, result, set(chats))
            first = min(result.sent.values(), default=math.inf)
            result.calls = platform.calls_since(first)
            for what, at in watch.aborted:
                if at >= stopping:
                    result.aborted_stop[what] += 1
                elif at >= first:
                    result.aborted_load[what] += 1
            if args.profile is not None and args.profile.exists():
                result.profile = profile_by_package(args.profile)
            count_answers(platform, result, chats)
    return result


def profile_by_package(path: Path, top: int = 14) -> list[tuple[str, float]]:
    """Self time of the profiled process by package (site-packages' top-level name, Parley's
    own packages, the standard library's module), as shares of the total without the time
    spent waiting in epoll; the whole run (start-up and warm-up included)."""
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    by: Counter[str] = Counter()
    for (filename, _, function), (_, _, self_time, _, _) in stats.items():
        if "site-packages/" in filename:
            name = filename.split("site-packages/", 1)[1].split("/", 1)[0]
        elif filename.startswith(str(Path.cwd())) or "/work/main/" in filename:
            name = "parley:" + Path(filename).relative_to(Path(filename).parents[1]).parts[0]
        elif filename == "~" and "epoll" in function and "poll" in function:
            continue  # waiting for I/O: idle, not work
        elif filename == "~":
            name = f"builtin:{function}"[:48]
        else:
            name = "stdlib:" + Path(filename).stem
        by[name] += self_time
    total = sum(by.values()) or 1.0
    return [(name, value / total) for name, value in by.most_common(top)]


def collect_logs(process: ParleyProcess, result: Result) -> None:
    for line in process.lines:
        found = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+) (.{0,60})", line)
        if found:
            result.logs[" ".join(found.groups())] += 1
            if len(result.log_lines) < 12:
                result.log_lines.append(line[:300])
        elif line.startswith("Traceback") and len(result.log_lines) < 12:
            result.log_lines.append(line)


def count_answers(platform: Platform, result: Result, chats: Sequence[str]) -> None:
    """From what the fake platform holds at the end: each answer shown in exactly one
    message of its chat, in several (duplicated), or in none (missing)."""
    keys = {platform.chat_key(chat): chat for chat in chats}
    shown: Counter[tuple[str, int]] = Counter()
    for where, text in platform.shown():
        if where not in keys:
            continue
        found = platform.watch.expected.get(text.strip())
        if found is not None and found[0] == keys[where]:
            shown[found] += 1
        else:
            result.other_messages.append(f"{keys[where]}: {text[:80]!r}")
    for chat in chats:
        for k in range(1, result.messages + 1):
            count = shown[(chat, k)]
            if count == 1:
                result.once += 1
            elif count > 1:
                result.duplicated += 1
            else:
                result.missing += 1


# --- report ---------------------------------------------------------------------------------


def machine_line(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return (
        f"{when}: load average {one:.2f} {five:.2f} {fifteen:.2f}, "
        f"yardstick {yardstick_ms():.2f} ms ({os.cpu_count()} CPUs)"
    )


def print_result(r: Result, args: argparse.Namespace) -> None:
    latencies, after = r.latencies(), r.after_last_token()
    print(
        f"\n{r.platform} / {r.database}: {r.chats} chats x {r.messages} messages "
        f"(update interval {args.update_interval or 'default'}, warm-up {args.warmup} chats)"
    )
    print(
        f"  answered {r.answered}/{r.total} in {r.seconds:.2f} s: "
        f"{r.answered / r.seconds:.1f} msg/s"
    )
    print(
        f"  latency event -> complete answer: p50 {percentile(latencies, 50):.0f} ms, "
        f"p95 {percentile(latencies, 95):.0f} ms, max {max(latencies, default=0) * 1000:.0f} ms"
    )
    print(
        f"  model's last token -> complete answer on the platform: p50 "
        f"{percentile(after, 50):.1f} ms, p95 {percentile(after, 95):.1f} ms, max "
        f"{max(after, default=0) * 1000:.1f} ms"
    )
    if r.chats == 1:
        print("    per message (ms): " + " ".join(f"{value * 1000:.1f}" for value in after))
    if r.answered:
        print(
            f"  parley CPU {r.cpu * 1000 / r.answered:.2f} ms/msg "
            f"({r.cpu:.2f} s), peak RSS {r.peak_rss_kb / 1024:.1f} MiB; harness CPU "
            f"{r.harness_cpu * 1000 / r.answered:.2f} ms/msg"
        )
    print(
        f"  on the platform: answered once {r.once}, duplicated {r.duplicated}, "
        f"missing {r.missing}; other bot messages in the chats {len(r.other_messages)}"
    )
    for text in r.other_messages[:5]:
        print(f"    other: {text}")
    print(
        f"  model requests {r.requests} ({r.repeated_requests} beyond one per message), "
        f"with the whole earlier conversation {r.whole_context}/{r.requests}"
    )
    for fault in r.context_faults:
        print(f"    context: {fault}")
    per = max(r.answered, 1)
    print(
        "  platform calls per answer: "
        + ", ".join(f"{name} {count / per:.2f}" for name, count in r.calls.most_common())
    )
    if r.aborted_load or r.aborted_stop:
        print(
            f"  requests the bot abandoned mid-send: during the load {dict(r.aborted_load)}, "
            f"while stopping {dict(r.aborted_stop)}"
        )
    for name, share in r.profile:
        print(f"  profile (self time, whole run): {share:6.1%} {name}")
    for kind, count in r.logs.most_common():
        print(f"  logged {count} x {kind}")
    for line in r.log_lines:
        print(f"    | {line}")
    if r.died:
        print(f"  THE PROCESS DIED:\n{r.died}")
    print(
        "  row: | "
        + " | ".join(
            [
                r.platform,
                r.database,
                f"{r.chats}x{r.messages}",
                f"{r.answered / r.seconds:.1f}",
                f"{percentile(latencies, 50):.0f}",
                f"{percentile(latencies, 95):.0f}",
                f"{max(latencies, default=0) * 1000:.0f}",
                f"{percentile(after, 50):.1f}",
                f"{r.cpu * 1000 / max(r.answered, 1):.2f}",
                f"{r.peak_rss_kb / 1024:.0f}",
                f"{r.once}/{r.duplicated}/{r.missing}",
                f"{r.whole_context}/{r.requests}",
            ]
        )
        + " |"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--platform", choices=sorted(PLATFORMS), default="telegram")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--chats", type=int, default=50, help="N chats at once (50)")
    parser.add_argument("--messages", type=int, default=4, help="M messages per chat (4)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server for a throwaway database (default: $TEST_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--update-interval",
        type=float,
        help="the platform's PARLEY_*_UPDATE_INTERVAL (default: the product's, 1.0 s)",
    )
    parser.add_argument(
        "--pool-size", type=int, help="PARLEY_DB_POOL_SIZE (default: the product's, 10)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed one-message chats first (5)")
    parser.add_argument(
        "--settle", type=float, default=1.5, help="seconds to wait after the last answer (1.5)"
    )
    parser.add_argument("--timeout", type=float, default=100, help="seconds for the load (100)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the process under cProfile, write its statistics to FILE and print its "
        "self time by package (slower: not for the figures)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the process's stderr")
    return parser.parse_args(argv)


def code_line() -> str:
    """Which Parley is measured: where `core` comes from (the subprocess imports the same,
    PYTHONPATH included), and its commit: a checkout's HEAD and changed files, or the
    REVISION file a `git archive` snapshot was given (see bench/README.md)."""
    import subprocess

    import core

    root = Path(core.__file__).resolve().parents[1]
    revision = root / "REVISION"
    if revision.exists():
        return f"code: {root} (snapshot of {revision.read_text().strip()})"
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "core", "adapters", "bots"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return f"code: {root} (commit unknown)"
    dirty = [line[3:] for line in changed if line.strip()]
    return f"code: {root} at {head}" + (f", uncommitted changes in {dirty}" if dirty else "")


async def main(args: argparse.Namespace) -> None:
    print(code_line())
    print(machine_line("start"), flush=True)
    result = await measure(args)
    print_result(result, args)
    print(machine_line("end"))


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
