"""The engine's own cost per turn, with a model that answers at once.

Runs turns through the scheduler (as the chat platforms do: accept, lease, run, deliver)
against a real store (a SQLite file, PostgreSQL) and an in-process model whose own time is
measured and subtracted, so what is left is Parley's: accepting the message (with
admission), storing it, building the window, token counting, recording the placeholder,
storing the reply and its usage. Every turn adds its two messages, as in real use, and the
warm-up turns run first, so the engine's window cache is warm as in a running bot. See
bench/README.md for what the figures mean.

    python -m bench.engine_overhead --database both --turns 300
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import itertools
import logging
import os
import pstats
import random
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from time import perf_counter, process_time
from typing import Any

from sqlalchemy import func, select, text

from bots.bootstrap import build_engine
from core.config import Settings
from core.conversation import Engine
from core.events import Accepted, ConversationKey, Final, Inbound, ReplyEvent
from core.llm import ModelChunk, ModelRequest, TextChunk, UsageChunk
from core.scheduler import PostedCallback, ReplyView, Scheduler
from core.storage import SqlStore
from core.storage.base import Turn
from core.storage.tables import messages as message_rows
from core.tokens import counter_for_model, message_tokens
from tests.fakes.databases import throwaway_postgres_database

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPLY = ("Sure", " — that works.", " Here is a short answer", " to your question.")
USER_NAME = "Alice"
SEED_BATCH = 2_000

# Words for seeded history: plain English, so BPE counts are like real chat text.
_VOCABULARY = (
    "the a to of and in is it you that for on with this be are as have not can what do "
    "we if will about there how your but so more when one all would time they like just "
    "from or my an by me up out was which get use make could know need think want also "
    "new some other than then now look only come its over work first well way even good "
    "because any these give day most us database message model reply thread channel token "
    "window context summary persona question answer python server deploy config error test "
    "release budget meeting schedule customer report invoice design review branch merge"
)
WORDS = _VOCABULARY.split()

log = logging.getLogger("bench")


# ---------------------------------------------------------------------------------------------
# The model


class InstantModel:
    """A ModelClient that answers at once and keeps account of the time spent inside stream().

    Time is taken from each resumption of the generator to its next `yield`, so only the
    model's own work is counted, not the engine's handling of each chunk.
    """

    def __init__(self, reply: Sequence[str] = REPLY) -> None:
        self._reply = tuple(reply)
        self.wall = 0.0
        self.cpu = 0.0
        self.last_window = 0  # chat messages (system prompt included) in the latest request

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        wall, cpu = perf_counter(), process_time()
        self.last_window = len(request.messages)
        for piece in self._reply:
            chunk: ModelChunk = TextChunk(piece)
            self._add(wall, cpu)
            yield chunk
            wall, cpu = perf_counter(), process_time()
        chunk = UsageChunk(
            prompt_tokens=sum(len(m["content"]) for m in request.messages) // 4,
            completion_tokens=len(self._reply) * 3,
            model=request.model,
        )
        self._add(wall, cpu)
        yield chunk

    def _add(self, wall: float, cpu: float) -> None:
        self.cpu += process_time() - cpu
        self.wall += perf_counter() - wall

    def snapshot(self) -> tuple[float, float]:
        return self.wall, self.cpu


# ---------------------------------------------------------------------------------------------
# Where a turn's time goes: the store's calls, timed from outside (`--breakdown`)


class StageTimer:
    """Wraps a store's turn methods on the instance, summing the wall time spent in each, and
    counts its transactions (each one round trip to the store's thread or a BEGIN/COMMIT on
    PostgreSQL)."""

    STAGES = (
        "accept",
        "claim_turns",
        "begin_turn",
        "recent_messages",
        "record_posted",
        "finish_turn",
        "finish_deliveries",
    )

    def __init__(self, store: SqlStore) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()
        for name in self.STAGES:
            setattr(store, name, self._timed(name, getattr(store, name)))
        run = store._run

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls["transactions"] += 1
            return await run(*args, **kwargs)

        store._run = counted  # type: ignore[method-assign]

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.seconds[name] += perf_counter() - start
                self.calls[name] += 1

        return timed


# ---------------------------------------------------------------------------------------------
# Databases and seeding


@asynccontextmanager
async def sqlite_database() -> AsyncIterator[str]:
    """A SQLite file in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as directory:
        yield f"sqlite+aiosqlite:///{directory}/bench.db"


def postgres_database(base_url: str) -> AbstractAsyncContextManager[str]:
    """A new, empty PostgreSQL database on the server of `base_url`, dropped afterwards."""
    return throwaway_postgres_database(base_url, "parley_bench")


@dataclass(frozen=True)
class TextPool:
    """Chat-like texts with their token counts, computed as the engine computes them."""

    user: list[tuple[str, int]]
    assistant: list[tuple[str, int]]

    @classmethod
    def build(cls, model: str, seed: int = 7) -> TextPool:
        rng = random.Random(seed)
        counter = counter_for_model(model)

        def texts(low: int, high: int, name: str) -> list[tuple[str, int]]:
            result = []
            for _ in range(64):
                words = rng.choices(WORDS, k=rng.randint(low, high))
                content = " ".join(words).capitalize() + rng.choice(".?!")
                result.append((content, message_tokens(counter, content, name)))
            return result

        # Users write a line or two; replies run from a sentence to a few paragraphs.
        return cls(user=texts(4, 60, USER_NAME), assistant=texts(20, 320, ""))


async def seed_history(
    store: SqlStore, key: ConversationKey, count: int, pool: TextPool, rng: random.Random
) -> None:
    """Store `count` alternating user/assistant messages in one go, oldest first."""
    state = await store.conversation(key=key)
    rows: list[dict[str, Any]] = []
    for index in range(count):
        user = index % 2 == 0
        content, tokens = rng.choice(pool.user if user else pool.assistant)
        rows.append(
            {
                "conversation_id": state.id,
                "role": "user" if user else "assistant",
                "content": content,
                "token_count": tokens,
                "author_id": "U1" if user else "",
                "author_name": USER_NAME if user else "Parley",
                "tool_calls": None,  # stored as the engine stores it (JSON null)
                "tool_call_id": None,
            }
        )
    async with store.engine.begin() as connection:
        for start in range(0, len(rows), SEED_BATCH):
            await connection.execute(message_rows.insert(), rows[start : start + SEED_BATCH])


async def stored_messages(store: SqlStore) -> int:
    """All messages in the database (one conversation's, in the sequential mode)."""
    async with store.engine.connect() as connection:
        return int((await connection.execute(select(func.count(message_rows.c.id)))).scalar_one())


async def analyze(store: SqlStore) -> None:
    """Planner statistics, as PostgreSQL's autovacuum would gather after a bulk load."""
    if store.engine.dialect.name == "postgresql":
        async with store.engine.connect() as connection:
            await connection.execute(text("ANALYZE"))
            await connection.commit()


# ---------------------------------------------------------------------------------------------
# Running turns

_event_ids = itertools.count(1)


def make_inbound(key: ConversationKey, pool: TextPool, rng: random.Random) -> Inbound:
    return Inbound(
        key=key,
        event_id=f"bench-{next(_event_ids)}",
        user_id="U1",
        user_name=USER_NAME,
        text=rng.choice(pool.user)[0],
    )


class Pipeline:
    """A platform message's path without the platform: `Scheduler.accept` (what an adapter
    calls before it acknowledges), the scheduler's worker running the turn, and a reply view
    that posts a placeholder (its id stored, as every platform's is) and delivers at once."""

    def __init__(self, engine: Engine, store: SqlStore) -> None:
        self.scheduler = Scheduler(engine=engine, store=store)
        self.scheduler.add_outlet("bench", self._view)
        self._answers: dict[str, asyncio.Future[bool]] = {}

    def _view(self, turn: Turn, posted: PostedCallback) -> ReplyView:
        return _InstantView(self._answers.pop(turn.inbound.event_id), posted)

    async def turn(self, inbound: Inbound) -> bool:
        """One message accepted and answered; True when it ended with a stored reply."""
        answered = asyncio.get_running_loop().create_future()
        self._answers[inbound.event_id] = answered
        await self.scheduler.accept(inbound, {"bench": True})
        return await answered


class _InstantView:
    edits_in_place = True

    def __init__(self, answered: asyncio.Future[bool], posted: PostedCallback) -> None:
        self._answered = answered
        self._posted = posted
        self._placeholder: asyncio.Task[None] | None = None
        self._last: ReplyEvent | None = None

    def show(self, event: ReplyEvent) -> None:
        if isinstance(event, Accepted):
            self._placeholder = asyncio.create_task(self._posted(["placeholder"]))
        self._last = event

    async def deliver(self, markdown: str) -> None:
        if self._placeholder is not None:
            await self._placeholder
        self._answered.set_result(isinstance(self._last, Final))

    async def aclose(self) -> None:
        if not self._answered.done():  # the turn stopped before delivery (a lost lease)
            self._answered.set_result(False)


class FailureLog(logging.Handler):
    """Keeps the first of the engine's "turn failed" reports, without the tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.first and record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            self.first = f"{type(error).__name__}: {str(error).splitlines()[0]}"


@dataclass
class Phase:
    """The figures of one history size on one database, sequential turns."""

    database: str
    seeded: int  # messages stored before the warm-up turns
    history: int = 0  # messages stored when the timed turns start
    window: int = 0  # stored messages in the last request
    overhead_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0  # the turns' wall time, model included
    model_ms: float = 0.0  # the model's own wall time, subtracted (all turns together)
    stages_ms: dict[str, float] = field(default_factory=dict)  # per turn, with --breakdown
    pages: float = 0.0  # recent_messages calls per turn, with --breakdown
    transactions: float = 0.0  # the store's transactions per turn, with --breakdown

    def p(self, q: int) -> float:
        return percentile(self.overhead_ms, q)

    @property
    def turns_per_second(self) -> float:
        return len(self.overhead_ms) / self.wall_s


@dataclass
class Concurrent:
    """The figures of the concurrent mode on one database and history size."""

    database: str
    seeded: int  # messages per chat before the warm-up round
    chats: int
    history: int = 0  # messages per chat when the timed rounds start
    messages: int = 0  # turns that ended with a stored reply
    failed: int = 0
    first_failure: str = ""
    wall_s: float = 0.0  # model time subtracted
    cpu_s: float = 0.0  # model time subtracted
    latency_ms: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.messages / self.wall_s

    @property
    def cpu_ms_per_message(self) -> float:
        return self.cpu_s * 1000 / max(self.messages, 1)


def percentile(values: Sequence[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def yardstick_ms() -> float:
    """The time of a fixed piece of pure-Python work: how fast the machine is at the moment.

    On a shared VM it varies by up to 2x with the host's other tenants, which the load average
    does not show, and a turn's wall and CPU time vary with it.
    """
    samples = []
    for _ in range(7):
        start = perf_counter()
        sum(i * i for i in range(100_000))
        samples.append((perf_counter() - start) * 1000)
    return statistics.median(samples)


@asynccontextmanager
async def open_runtime(
    url: str, args: argparse.Namespace, model: InstantModel
) -> AsyncIterator[tuple[Pipeline, SqlStore]]:
    """The engine as the bots wire it (bootstrap, migrations), on `url` and the instant model."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        DATABASE_URL=url,
        PARLEY_MODEL=args.model,
        PARLEY_CONTEXT_TOKENS=args.context_tokens,
        # Every turn goes through admission (the rate limit's round trip) but none is refused.
        PARLEY_USER_RPM=1_000_000_000,
        PARLEY_MODERATION=args.moderation,
    )
    async with build_engine(settings, model=model) as runtime:
        assert isinstance(runtime.store, SqlStore)
        pipeline = Pipeline(runtime.engine, runtime.store)
        async with pipeline.scheduler:
            yield pipeline, runtime.store


async def sequential_phase(
    database: str,
    url: str,
    seeded: int,
    args: argparse.Namespace,
    pool: TextPool,
    profiler: Profiler,
    failures: FailureLog,
) -> Phase:
    model = InstantModel()
    rng = random.Random(seeded)
    key = ConversationKey("bench", "team", f"chat-{seeded}", "")
    phase = Phase(database, seeded)

    async def turn(inbound: Inbound) -> None:
        if not await pipeline.turn(inbound):
            raise RuntimeError(f"a turn failed on {database}: {failures.first}")

    async with open_runtime(url, args, model) as (pipeline, store):
        await seed_history(store, key, seeded, pool, rng)
        await analyze(store)
        # Warm-up first, untimed: the engine's window cache, SQLAlchemy's statement cache and
        # the database's pages are warm, as in a running bot.
        for _ in range(args.warmup):
            await turn(make_inbound(key, pool, rng))
        phase.history = await stored_messages(store)
        timer = StageTimer(store) if args.breakdown else None
        gc.collect()
        await profiler.start(store)
        for _ in range(args.turns):
            inbound = make_inbound(key, pool, rng)
            model_wall, model_cpu = model.snapshot()
            wall, cpu = perf_counter(), process_time()
            await turn(inbound)
            cpu, wall = process_time() - cpu, perf_counter() - wall
            phase.wall_s += wall
            phase.model_ms += (model.wall - model_wall) * 1000
            phase.overhead_ms.append((wall - (model.wall - model_wall)) * 1000)
            phase.cpu_ms.append((cpu - (model.cpu - model_cpu)) * 1000)
        await profiler.stop()
        phase.window = model.last_window - 1  # the system prompt is not a stored message
        if timer:
            phase.stages_ms = {
                name: timer.seconds[name] * 1000 / args.turns for name in StageTimer.STAGES
            }
            phase.pages = timer.calls["recent_messages"] / args.turns
            phase.transactions = timer.calls["transactions"] / args.turns
    return phase


async def concurrent_phase(
    database: str,
    url: str,
    seeded: int,
    args: argparse.Namespace,
    pool: TextPool,
    profiler: Profiler,
    failures: FailureLog,
) -> Concurrent:
    model = InstantModel()
    rng = random.Random(seeded)
    keys = [ConversationKey("bench", "team", f"room-{n}", "") for n in range(args.concurrency)]
    result = Concurrent(database, seeded, args.concurrency)

    async with open_runtime(url, args, model) as (pipeline, store):
        for key in keys:
            await seed_history(store, key, seeded, pool, rng)
        await analyze(store)

        async def timed_turn(inbound: Inbound) -> tuple[bool, float]:
            start = perf_counter()
            completed = await pipeline.turn(inbound)
            return completed, (perf_counter() - start) * 1000

        for round_number in range(1 + args.rounds):  # the first round warms up
            if round_number == 1:
                result.history = await stored_messages(store) // len(keys)
                await profiler.start(store)
            inbounds = [make_inbound(key, pool, rng) for key in keys]
            gc.collect()
            failures.first = ""
            model_wall, model_cpu = model.snapshot()
            wall, cpu = perf_counter(), process_time()
            outcomes = await asyncio.gather(*(timed_turn(i) for i in inbounds))
            cpu, wall = process_time() - cpu, perf_counter() - wall
            if round_number:
                completed = sum(ok for ok, _ in outcomes)
                result.messages += completed
                result.failed += len(outcomes) - completed
                result.first_failure = result.first_failure or failures.first
                result.wall_s += wall - (model.wall - model_wall)
                result.cpu_s += cpu - (model.cpu - model_cpu)
                result.latency_ms.extend(ms for ok, ms in outcomes if ok)
        await profiler.stop()
    return result


# ---------------------------------------------------------------------------------------------
# Profiling (optional)


class Profiler:
    """Profiles the timed turns of one phase (sequential or concurrent) with cProfile or
    pyinstrument.

    A profiler sees one thread, so there are two on SQLite: the event loop's and the store's
    own thread, where the SQL runs (the loop shows that time as waiting, `epoll.poll`). On
    PostgreSQL the database's work happens in the server and likewise shows as waiting.
    """

    def __init__(self, kind: str, top: int) -> None:
        self.kind = kind
        self.top = top
        self._threads: list[tuple[str, Any, ThreadPoolExecutor | None]] = []

    def _new(self) -> Any:
        if self.kind == "cprofile":
            return cProfile.Profile()
        from pyinstrument import Profiler as Instrument

        return Instrument(interval=0.0002, async_mode="disabled")

    async def start(self, store: SqlStore) -> None:
        if self.kind == "none":
            return
        self._threads = [("event loop", self._new(), None)]
        if store._sqlite is not None:  # the store's private thread: a benchmark may reach in
            self._threads.append(("SQLite thread", self._new(), store._sqlite._thread))
        for _, profile, thread in self._threads:
            await _call_in(thread, profile.enable if self.kind == "cprofile" else profile.start)

    async def stop(self) -> None:
        for _, profile, thread in reversed(self._threads):
            await _call_in(thread, profile.disable if self.kind == "cprofile" else profile.stop)

    def report(self, title: str, turns: int) -> None:
        for thread, profile, _ in self._threads:
            print(f"\n--- profile: {title}, {thread}, {turns} turns ---")
            if self.kind == "cprofile":
                out = io.StringIO()
                stats = pstats.Stats(profile, stream=out).strip_dirs()
                stats.sort_stats("tottime").print_stats(self.top)
                stats.sort_stats("cumulative").print_stats(self.top)
                print(out.getvalue())
            else:
                print(profile.output_text(unicode=True, color=False, show_all=False))
        self._threads = []


async def _call_in(thread: ThreadPoolExecutor | None, call: Callable[[], object]) -> None:
    """`call()` on `thread`, or here when None (a profiler profiles the thread that starts it)."""
    if thread is None:
        call()
    else:
        await asyncio.get_running_loop().run_in_executor(thread, call)


# ---------------------------------------------------------------------------------------------
# Report


def print_sequential(phases: Sequence[Phase]) -> None:
    header = (
        f"{'database':<9} {'seeded':>7} {'history':>8} {'window':>7} {'turns':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'mean ms':>8} {'CPU ms/turn':>12} {'turns/s':>8} "
        f"{'model ms':>9}"
    )
    print("\nSequential turns (engine overhead per turn; model time subtracted)")
    print(header)
    print("-" * len(header))
    for phase in phases:
        print(
            f"{phase.database:<9} {phase.seeded:>7,} {phase.history:>8,} {phase.window:>7,} "
            f"{len(phase.overhead_ms):>6} {phase.p(50):>7.2f} {phase.p(99):>7.2f} "
            f"{statistics.fmean(phase.overhead_ms):>8.2f} "
            f"{statistics.fmean(phase.cpu_ms):>12.2f} {phase.turns_per_second:>8.1f} "
            f"{phase.model_ms / len(phase.overhead_ms):>9.3f}"
        )
    print(
        "(history: stored messages when the timed turns start, after the warm-up; each turn adds"
        " 2.\n window: stored messages in the last request. model ms: the instant model's own"
        " time per turn, already subtracted)"
    )


def print_breakdown(phases: Sequence[Phase]) -> None:
    names = ("accept", "claim", "begin", "window reads", "posted", "finish", "delivered", "rest")
    header = f"{'database':<9} {'history':>8} " + " ".join(f"{n:>12}" for n in names) + "  tx/turn"
    print("\nWhere a turn's wall time goes (mean ms per turn; 'rest' is the engine's own code)")
    print(header)
    print("-" * len(header))
    window = StageTimer.STAGES.index("recent_messages")
    for phase in phases:
        stages = [phase.stages_ms[name] for name in StageTimer.STAGES]
        rest = statistics.fmean(phase.overhead_ms) - sum(stages)
        cells = [f"{ms:>12.2f}" for ms in stages]
        cells[window] = f"{stages[window]:>6.2f} ({phase.pages:>3.0f})"
        print(
            f"{phase.database:<9} {phase.history:>8,} "
            + " ".join(cells)
            + f" {rest:>12.2f} {phase.transactions:>8.1f}"
        )
    print(
        "('window reads': recent_messages calls, with their number per turn in brackets;"
        " tx/turn: the store's transactions per turn)"
    )


def print_concurrent(results: Sequence[Concurrent]) -> None:
    header = (
        f"{'database':<9} {'seeded':>7} {'history':>8} {'chats':>6} {'replies':>8} "
        f"{'failed':>7} {'msg/s':>8} {'CPU ms/msg':>11} {'lat p50 ms':>11} {'lat p99 ms':>11}"
    )
    print("\nConcurrent chats (one turn per chat per round, asyncio.gather; model subtracted)")
    print(header)
    print("-" * len(header))
    for r in results:
        latency = r.latency_ms or [float("nan")]
        print(
            f"{r.database:<9} {r.seeded:>7,} {r.history:>8,} {r.chats:>6} {r.messages:>8} "
            f"{r.failed:>7} {r.per_second:>8.1f} {r.cpu_ms_per_message:>11.2f} "
            f"{percentile(latency, 50):>11.1f} {percentile(latency, 99):>11.1f}"
        )
    print("(history: messages per chat when the timed rounds start; each round adds 2)")
    for r in results:
        if r.failed:
            print(f"  {r.database} x {r.seeded:,}: first failure: {r.first_failure}")


def print_targets(phases: Sequence[Phase], results: Sequence[Concurrent]) -> None:
    def verdict(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    print("\nTargets (sizes are the seeded history; see the history column)")
    by_size = {(p.database, p.seeded): p for p in phases}
    small = by_size.get(("sqlite", 10))
    if small:
        p50 = small.p(50)
        print(f"  SQLite p50 at 10 messages <= 5 ms: {p50:.2f} ms  {verdict(p50 <= 5)}")
    for database in sorted({p.database for p in phases}):
        base, big = by_size.get((database, 10)), by_size.get((database, 10_000))
        if base and big:
            ratio = big.p(50) / base.p(50)
            print(
                f"  {database} p50 at 10,000 <= 2x p50 at 10: "
                f"{big.p(50):.2f} / {base.p(50):.2f} ms = {ratio:.2f}x  {verdict(ratio <= 2)}"
            )
    for r in results:
        ok = r.per_second >= 70 and not r.failed
        print(
            f"  {r.database} {r.chats} chats at once ({r.seeded:,} messages each) >= 70 msg/s: "
            f"{r.per_second:.1f} msg/s, {r.failed} failed  {verdict(ok)}"
        )
    for r in results:
        cpu = r.cpu_ms_per_message
        print(
            f"  {r.database} {r.chats} chats ({r.seeded:,} messages each) CPU per message "
            f"<= 15 ms (aim): {cpu:.2f} ms  {verdict(cpu <= 15)}"
        )


# ---------------------------------------------------------------------------------------------
# Main


def parse_sizes(value: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {value}") from None
    if not sizes or min(sizes) < 0:
        raise argparse.ArgumentTypeError("history sizes must be numbers >= 0")
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server to create a throwaway database on (default: $TEST_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--turns", type=int, default=300, help="timed sequential turns per size")
    parser.add_argument("--warmup", type=int, default=30, help="untimed turns before each size")
    parser.add_argument(
        "--history",
        type=parse_sizes,
        default=[10, 1_000, 10_000],
        help="messages seeded before the warm-up, e.g. 10,1000,10000",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="chats at once (0: skip)")
    parser.add_argument("--rounds", type=int, default=5, help="timed concurrent rounds")
    parser.add_argument(
        "--concurrent-history",
        type=parse_sizes,
        default=[10, 1_000],
        help="messages seeded per chat in the concurrent mode (default 10,1000)",
    )
    parser.add_argument("--model", default="gpt-4o-mini", help="PARLEY_MODEL (sets the counter)")
    parser.add_argument(
        "--context-tokens", type=int, default=None, help="PARLEY_CONTEXT_TOKENS override"
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="time the store's calls within each turn"
    )
    parser.add_argument(
        "--moderation",
        choices=("", "pii"),
        default="",
        help="PARLEY_MODERATION: pii redacts every message and reply (local, no network)",
    )
    parser.add_argument(
        "--profile",
        choices=("none", "cprofile", "pyinstrument"),
        default="none",
        help="profile the timed turns of each phase (slows them down)",
    )
    parser.add_argument("--profile-top", type=int, default=30)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A failed turn is counted and reported once, not printed with its traceback 50 times.
    failures = FailureLog()
    engine_log = logging.getLogger("core.conversation")
    engine_log.addHandler(failures)
    engine_log.propagate = False

    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    pool = TextPool.build(args.model)
    profiler = Profiler(args.profile, args.profile_top)

    def database(kind: str) -> AbstractAsyncContextManager[str]:
        return sqlite_database() if kind == "sqlite" else postgres_database(args.postgres_url)

    load_before, yardstick_before = os.getloadavg()[0], yardstick_ms()
    phases: list[Phase] = []
    results: list[Concurrent] = []
    for kind in databases:
        for seeded in args.history:
            async with database(kind) as url:
                phase = await sequential_phase(kind, url, seeded, args, pool, profiler, failures)
                profiler.report(f"{kind}, {phase.history:,} messages", args.turns)
            phases.append(phase)
            log.warning(
                "%s, %s messages: p50 %.2f ms, p99 %.2f ms",
                kind,
                f"{phase.history:,}",
                phase.p(50),
                phase.p(99),
            )
        for seeded in args.concurrent_history if args.concurrency > 0 else []:
            async with database(kind) as url:
                result = await concurrent_phase(kind, url, seeded, args, pool, profiler, failures)
                profiler.report(f"{kind}, {args.concurrency} chats at once", result.messages)
            results.append(result)
            log.warning(
                "%s, %d chats x %s messages: %.1f msg/s, %d failed",
                kind,
                args.concurrency,
                f"{result.history:,}",
                result.per_second,
                result.failed,
            )

    load = os.getloadavg()
    print(
        f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs; model {args.model}, context "
        f"{args.context_tokens or 'from the model table'}, {args.warmup} warm-up turns"
    )
    print(
        f"Load average {load_before:.2f} at the start, {load[0]:.2f} / {load[1]:.2f} / "
        f"{load[2]:.2f} (1/5/15 min) at the end; yardstick (fixed Python loop) "
        f"{yardstick_before:.1f} ms at the start, {yardstick_ms():.1f} ms at the end"
    )
    print_sequential(phases)
    if args.breakdown:
        print_breakdown(phases)
    if results:
        print_concurrent(results)
    print_targets(phases, results)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
