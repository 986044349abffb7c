"""Throughput of 1, 2, 4... `parley run slack` processes sharing one PostgreSQL database.

The load of tests/durability/test_processes.py, measured instead of asserted: N Slack
conversations of M messages each (HTTP events, signed, spread round-robin over the
processes' event endpoints; message k+1 of a conversation sent once message k was
acknowledged, without waiting for answers), a model that answers at once (EchoModel), and
FakeSlack recording when each final answer lands. Each process count gets its own throwaway
database. See bench/README.md ("Several processes").

    python -m bench.processes --conversations 200 --messages 4 --processes 1,2,4
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from sqlalchemy.engine import make_url

from tests.durability.processes import (
    EchoModel,
    ParleyProcess,
    Processes,
    answer_to,
    converse,
    eventually,
    model_settings,
    question,
    slack_settings,
    turn_states,
)
from tests.fakes.databases import throwaway_postgres_database
from tests.fakes.slack_server import FakeSlack

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHANNEL = "C1"


@dataclass
class Result:
    processes: int
    messages: int
    seconds: float  # first event sent -> last final answer at the fake
    latencies: list[float]  # per message: event sent -> its final answer at the fake
    parley_cpu: float  # seconds, all parley processes, during the timed load
    postgres_cpu: float  # seconds, PostgreSQL's processes (backends that exited are missed)
    harness_cpu: float  # seconds, this process: the fakes and the load generator
    failed: int  # messages never answered, or answered more than once
    connections: int  # the most server connections to the database seen during the load
    service: list[float]  # per message: its placeholder posted -> its final answer
    # Per message k >= 2 sent before answer k-1 landed: answer k-1 landed -> placeholder k,
    # the time a conversation's next turn waited once the one before it was delivered.
    handoff: list[float]

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    def p(self, q: int, values: Sequence[float] | None = None) -> float:
        """The q-th percentile, in ms, of `values` (default: the latencies)."""
        values = self.latencies if values is None else values
        if len(values) < 2:
            return values[0] * 1000 if values else math.nan
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def postgres_ticks() -> dict[int, int]:
    """CPU ticks (user + system) of every PostgreSQL process, by pid (Linux /proc)."""
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name.startswith("postgres"):
            fields = rest.split()
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    return ticks


def postgres_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    used = sum(ticks - before.get(pid, 0) for pid, ticks in after.items())
    return used / os.sysconf("SC_CLK_TCK")


async def watch_connections(url: str, peak: list[int], stop: asyncio.Event) -> None:
    """The most connections to the database at once, sampled every 0.2 s."""
    admin = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(False)
    )
    name = make_url(url).database
    try:
        while not stop.is_set():
            count = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
            )
            peak[0] = max(peak[0], int(count))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    except asyncpg.InterfaceError:
        pass  # the database was dropped under it: the run failed, which is reported
    finally:
        await admin.close()


async def measure(count: int, args: argparse.Namespace) -> Result:
    total = args.conversations * args.messages
    async with (
        throwaway_postgres_database(args.postgres_url, "parley_bench") as url,
        EchoModel() as model,
        FakeSlack() as slack,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.conversations)) as session,
    ):
        slack.users["U1"] = "alice"
        with tempfile.TemporaryDirectory() as cwd:
            async with Processes(
                Path(cwd),
                DATABASE_URL=url,
                PARLEY_LOG_LEVEL="WARNING",
                PARLEY_SLACK_UPDATE_INTERVAL=args.update_interval,
                PARLEY_DB_POOL_SIZE=args.pool_size,
                **model_settings(model),
                **slack_settings(slack),
            ) as processes:
                started = await asyncio.gather(
                    *(
                        processes.start("slack", name=f"p{n}", profile=profile_path(args, count, n))
                        for n in range(count)
                    )
                )
                if args.warmup:
                    # Connections opened, caches and code paths warm; not measured.
                    warm = await converse(started, args.warmup, 1, channel="CWARM", session=session)
                    await slack.wait_for(
                        lambda: (
                            sum(
                                1
                                for m in slack.messages.values()
                                if m["channel"] == "CWARM" and m["text"].startswith("Answer to ")
                            )
                            >= len(warm.sent)
                        ),
                        timeout=120,
                        what="the warm-up answers",
                    )
                calls_before = len(slack.calls)
                cpu_before = sum(process.cpu_seconds() for process in started)
                pg_before = postgres_ticks()
                harness_before = time.process_time()
                peak, stop = [0], asyncio.Event()
                watcher = asyncio.create_task(watch_connections(url, peak, stop))

                began = time.monotonic()
                load = await converse(
                    started, args.conversations, args.messages, channel=CHANNEL, session=session
                )
                expected = {answer_to(text) for text in load.questions}

                def answered() -> int:
                    return sum(
                        1
                        for m in slack.messages.values()
                        if m["channel"] == CHANNEL and m["text"] in expected
                    )

                await slack.wait_for(
                    lambda: answered() >= total, timeout=args.timeout, what=f"{total} answers"
                )
                parley_cpu = sum(process.cpu_seconds() for process in started) - cpu_before
                harness_cpu = time.process_time() - harness_before
                pg_cpu = postgres_seconds(pg_before, postgres_ticks())
                stop.set()
                await watcher
                for process in started:
                    if not process.alive:
                        raise SystemExit(f"{process.name} died:\n{process.tail()}")
                # A delivery is recorded with its process's next transaction (within a
                # second, by its poll): read the states before the processes stop.
                with contextlib.suppress(AssertionError):
                    await eventually(
                        lambda: turn_states(url),
                        until=lambda states: all(state == "delivered" for state, _ in states),
                        timeout=10,
                    )
                states = await turn_states(url)
                for process in started:
                    await process.terminate()
                report_logs(started, verbose=args.verbose)

        # When each answer's final text landed: the first call that set it.
        landed: dict[str, float] = {}
        for call in slack.calls[calls_before:]:
            text = str(call.args.get("text") or "")
            if call.ok and text in expected:
                landed.setdefault(text, call.at)
        finals = [
            call
            for call in slack.calls[calls_before:]
            if call.ok and str(call.args.get("text") or "") in expected
        ]
        shown = Counter(str(call.args["text"]) for call in finals)
        once = {text for text in expected if shown[text] == 1}
        delivered = sum(1 for state, _ in states if state == "delivered")
        if len(once) < total or delivered < len(states):
            twice = sorted(text for text in expected if shown[text] > 1)[:5]
            print(
                f"not exactly once: {total - len(once)} answers (e.g. {twice}); "
                f"turn states {Counter(state for state, _ in states)}",
                file=sys.stderr,
            )
        latencies = [landed[answer_to(text)] - sent for text, sent in load.sent.items()]
        placeholders: dict[str, list[float]] = {thread: [] for thread in load.threads}
        for call in slack.calls[calls_before:]:
            thread = str(call.args.get("thread_ts") or "")
            if call.method == "chat.postMessage" and call.ok and thread in placeholders:
                placeholders[thread].append(call.at)
        service, handoff = [], []
        for number, thread in enumerate(load.threads):
            for k, started_at in enumerate(placeholders[thread][: args.messages], start=1):
                service.append(landed[answer_to(question(number, k))] - started_at)
                if k > 1:
                    before = landed[answer_to(question(number, k - 1))]
                    if load.sent[question(number, k)] < before:
                        handoff.append(started_at - before)
        return Result(
            processes=count,
            messages=total,
            seconds=max(landed.values()) - began,
            latencies=latencies,
            parley_cpu=parley_cpu,
            postgres_cpu=pg_cpu,
            harness_cpu=harness_cpu,
            failed=total - len(once) + (len(states) - delivered),
            connections=peak[0],
            service=service,
            handoff=handoff,
        )


def profile_path(args: argparse.Namespace, count: int, number: int) -> Path | None:
    directory: Path | None = args.profile
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{count}-processes-p{number}.prof"


def report_logs(processes: Sequence[ParleyProcess], *, verbose: bool) -> None:
    """What the processes logged at WARNING and above, counted by logger and message start
    (all of it with --verbose): a benchmark that errs measures the wrong thing."""
    kinds: Counter[str] = Counter()
    for process in processes:
        for line in process.lines:
            found = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) (\S+) (.{0,60})", line)
            if found:
                kinds[" ".join(found.groups())] += 1
    for kind, count in kinds.most_common():
        print(f"  logged {count} x {kind}", file=sys.stderr)
    if verbose:
        for process in processes:
            print(process.stderr, file=sys.stderr)


def print_results(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.conversations} conversations x {args.messages} messages, Slack HTTP events, "
        f"instant model; PARLEY_SLACK_UPDATE_INTERVAL={args.update_interval}, "
        f"PARLEY_DB_POOL_SIZE={args.pool_size}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    header = (
        f"{'processes':>9} {'msgs':>6} {'seconds':>8} {'msg/s':>7} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'parley CPU ms/msg':>18} {'PG CPU ms/msg':>14} "
        f"{'harness CPU ms/msg':>19} {'PG conns':>9} {'failed':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.processes:>9} {r.messages:>6} {r.seconds:>8.1f} {r.per_second:>7.1f} "
            f"{r.p(50):>8.0f} {r.p(95):>8.0f} {r.parley_cpu / r.messages * 1000:>18.2f} "
            f"{r.postgres_cpu / r.messages * 1000:>14.2f} "
            f"{r.harness_cpu / r.messages * 1000:>19.2f} {r.connections:>9} {r.failed:>7}"
        )


def print_timeline(results: Sequence[Result]) -> None:
    print(
        "\nWhere the latency goes (ms): service = placeholder posted -> final answer; "
        "handoff = answer k-1 landed -> placeholder k, when message k was waiting;\n"
        "CPU busy = (parley + PostgreSQL + harness CPU) / (seconds x CPUs)"
    )
    header = (
        f"{'processes':>9} {'service p50':>12} {'service p95':>12} {'handoff p50':>12} "
        f"{'handoff p95':>12} {'handoffs':>9} {'CPU busy':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        busy = (r.parley_cpu + r.postgres_cpu + r.harness_cpu) / (r.seconds * (os.cpu_count() or 1))
        print(
            f"{r.processes:>9} {r.p(50, r.service):>12.0f} {r.p(95, r.service):>12.0f} "
            f"{r.p(50, r.handoff):>12.0f} {r.p(95, r.handoff):>12.0f} {len(r.handoff):>9} "
            f"{busy:>9.0%}"
        )


def parse_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {value}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("process counts must be numbers >= 1")
    return counts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=200, help="N (default 200)")
    parser.add_argument("--messages", type=int, default=4, help="M per conversation (4)")
    parser.add_argument(
        "--processes", type=parse_counts, default=[1, 2, 4], help="counts to run, e.g. 1,2,4"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="server to create a throwaway database on (default: $TEST_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=5,
        help="PARLEY_DB_POOL_SIZE of each process (default 5: with its 2x overflow, four "
        "processes stay under PostgreSQL's default max_connections of 100)",
    )
    parser.add_argument(
        "--update-interval",
        type=float,
        default=0.1,
        help="PARLEY_SLACK_UPDATE_INTERVAL (default 0.1; the product's default 1.0 adds up "
        "to a second to every answer)",
    )
    parser.add_argument(
        "--warmup", type=int, default=20, help="untimed one-message conversations first"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each process under cProfile and write its statistics to DIR (slower; "
        "read them with python -m pstats)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the processes' stderr")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per process count")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> None:
    results = []
    for count in args.processes:
        result = await measure(count, args)
        results.append(result)
        print(
            f"{count} process(es): {result.per_second:.1f} msg/s, p50 {result.p(50):.0f} ms, "
            f"{result.failed} failed",
            file=sys.stderr,
        )
    print_results(results, args)
    print_timeline(results)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
