"""/metrics, /healthz and /readyz, served by every `parley run` on its HTTP port, without
credentials: counters that move with real turns (the API's, and Telegram's through the
scheduler), and readiness that follows the database and the platforms' connections."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import make_url

from bots.bootstrap import build_engine, chat_platforms
from bots.health import Health
from bots.metrics import PrometheusRecorder
from core.events import ConversationKey, ReplyEvent
from core.pricing import PriceTable
from core.scheduler import Scheduler
from core.storage.base import Turn, TurnState
from tests.conftest import EngineFactory
from tests.fakes.discord_server import FakeDiscord
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import FakeTelegram, private_message, server_error
from tests.helpers import eventually, inbound, states_become
from tests.platforms.running import platform_settings, running
from tests.platforms.test_slack_durable import TcpProxy
from tests.web.conftest import Served, serving

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET without any credentials."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.content_type, await response.text()


async def scrape(base_url: str) -> Samples:
    status, content_type, body = await get(f"{base_url}/metrics")
    assert (status, content_type) == (200, "text/plain")
    return parse(body)


def parse(exposition: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


async def test_an_api_turn_moves_turns_tokens_cost_and_latencies(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    before = await scrape(served.url)
    assert value(before, "parley_pending_messages") == 0
    fake_openai.reply("Hello there.", usage=(1200, 34))
    conversation = await served.start()
    events = await served.events(conversation, "hi")
    assert events[-1][0] == "final", events
    after = await scrape(served.url)

    assert moved(before, after, "parley_turns_total", platform="api", outcome="final") == 1
    assert moved(before, after, "parley_turns_total", platform="api", outcome="failed") == 0
    model = "gpt-4o-mini"
    assert moved(before, after, "parley_tokens_total", model=model, kind="prompt") == 1200
    assert moved(before, after, "parley_tokens_total", model=model, kind="completion") == 34
    cost = PriceTable().cost(model, 1200, 34)
    assert cost is not None
    assert moved(before, after, "parley_cost_usd_total", model=model) == pytest.approx(cost)
    assert moved(before, after, "parley_turn_seconds_count", platform="api") == 1
    assert moved(before, after, "parley_queue_wait_seconds_count", platform="api") == 1
    assert moved(before, after, "parley_model_first_token_seconds_count", model=model) == 1
    # The API answers in the request: no delivery of the scheduler's.
    assert moved(before, after, "parley_deliveries_total", platform="api", outcome="delivered") == 0

    # A command is a turn without a model call; a model error a failed turn and an error.
    assert (await served.events(conversation, "/help"))[-1][0] == "command"
    fake_openai.error(500)
    await served.events(conversation, "again")
    last = await scrape(served.url)
    assert moved(after, last, "parley_turns_total", platform="api", outcome="command") == 1
    assert moved(after, last, "parley_turns_total", platform="api", outcome="failed") == 1
    assert moved(after, last, "parley_errors_total", kind="server_error") == 1
    assert moved(after, last, "parley_tokens_total", model=model, kind="prompt") == 0


async def test_health_and_readiness_answer_without_credentials(served: Served) -> None:
    assert await get(f"{served.url}/healthz") == (200, "application/json", '{"status": "ok"}')
    assert await get(f"{served.url}/readyz") == (200, "application/json", '{"status": "ready"}')
    # The API next to them still asks for a key.
    status, _, _ = await get(f"{served.url}/api/v1/conversations")
    assert status == 401


@pytest.fixture
async def relayed_postgres(postgres_url: str) -> AsyncIterator[tuple[str, TcpProxy]]:
    """The test's PostgreSQL database reached through a relay the test can cut."""
    url = make_url(postgres_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        relayed = url.set(host="127.0.0.1", port=proxy.port)
        yield relayed.render_as_string(hide_password=False), proxy
    finally:
        await proxy.close()


@pytest.mark.postgres
async def test_readyz_fails_while_the_database_is_unreachable_and_recovers(
    relayed_postgres: tuple[str, TcpProxy], fake_openai: FakeOpenAI
) -> None:
    url, proxy = relayed_postgres
    async with serving(url, fake_openai, PARLEY_DB_RETRY_SECONDS=0.5) as served:
        assert (await get(f"{served.url}/readyz"))[0] == 200
        await proxy.cut()
        not_ready = (503, "application/json", '{"status": "not ready", "not_ready": ["database"]}')
        assert await get(f"{served.url}/readyz") == not_ready
        assert await get(f"{served.url}/readyz") == not_ready
        assert (await get(f"{served.url}/healthz"))[0] == 200
        assert (await get(f"{served.url}/metrics"))[0] == 200  # no query behind it
        await proxy.restore()

        async def ready() -> bool:
            return (await get(f"{served.url}/readyz"))[0] == 200

        await eventually(ready, "/readyz answering 200 again", timeout=10)
        assert (await get(f"{served.url}/healthz"))[0] == 200


class Platform:
    """A platform adapter as /readyz sees it."""

    def __init__(self, platform: str, ready: bool) -> None:
        self.platform = platform
        self.ready = ready


async def test_readyz_names_each_platform_that_is_not_connected(served: Served) -> None:
    health = Health(
        store=served.store,
        platforms=[Platform("slack", True), Platform("discord", False), Platform("x", False)],
        metrics=PrometheusRecorder(),
    )
    response = await health.readyz(None)  # type: ignore[arg-type]  # it reads no request
    assert response.status == 503
    assert response.text == '{"status": "not ready", "not_ready": ["discord", "x"]}'


async def test_a_telegram_turn_moves_the_scheduler_s_metrics(
    fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("Hi Alice.", usage=(40, 3))
    async with FakeTelegram() as telegram:
        settings = platform_settings(
            fake_openai,
            sqlite_url,
            TELEGRAM_BOT_TOKEN="123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            TELEGRAM_API_URL=telegram.url,
            PARLEY_TELEGRAM_UPDATE_INTERVAL=0.05,
            PARLEY_MODEL="gpt-4o-mini",
        )
        async with running(settings, "telegram") as bot:
            base = f"http://127.0.0.1:{bot.port}"  # polling: served for /metrics alone
            assert (await get(f"{base}/readyz"))[0] == 200
            before = await scrape(base)
            # The reply comes at once, in one call: its final delivery, retried after a 502.
            telegram.outage(server_error(502), methods={"sendMessage"})
            telegram.push(private_message("hello"))
            await telegram.wait_for(lambda: telegram.texts_in(1) == ["Hi Alice."])

            async def delivered() -> bool:
                after = await scrape(base)
                labels = {"platform": "telegram", "outcome": "delivered"}
                return moved(before, after, "parley_deliveries_total", **labels) == 1

            await eventually(delivered, "the delivery counted", timeout=10)
            after = await scrape(base)
    labels = {"platform": "telegram"}
    assert moved(before, after, "parley_turns_total", outcome="final", **labels) == 1
    assert moved(before, after, "parley_queue_wait_seconds_count", **labels) == 1
    assert moved(before, after, "parley_turn_seconds_count", **labels) == 1
    assert moved(before, after, "parley_delivery_seconds_count", **labels) == 1
    assert moved(before, after, "parley_delivery_retries_total", **labels) == 1
    assert [call.status for call in telegram.calls_to("sendMessage")] == [502, 200]
    assert moved(before, after, "parley_tokens_total", model="gpt-4o-mini", kind="prompt") == 40
    assert value(after, "parley_pending_messages") == 0
    assert value(after, "parley_lease_takeovers_total") == 0


async def test_readyz_once_slack_s_socket_and_discord_s_gateway_are_connected(
    fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with FakeSlack() as slack, FakeDiscord() as discord:
        settings = platform_settings(
            fake_openai,
            sqlite_url,
            SLACK_BOT_TOKEN="xoxb-test",
            SLACK_APP_TOKEN="xapp-test",
            SLACK_API_URL=slack.api_url,
            DISCORD_BOT_TOKEN="discord-token",
            DISCORD_API_URL=discord.api_url,
            DISCORD_GATEWAY_URL=discord.gateway_url,
        )
        async with (
            build_engine(settings) as runtime,
            chat_platforms(settings, runtime, ["slack", "discord"]) as started,
        ):
            await slack.socket_connected()
            assert [bot.ready for bot in started.bots] == [True, True]  # type: ignore[attr-defined]
            base = f"http://127.0.0.1:{started.http.port}"
            assert await get(f"{base}/readyz") == (200, "application/json", '{"status": "ready"}')
            await started.bots[1].aclose()  # type: ignore[attr-defined]  # the gateway closes
            assert await get(f"{base}/readyz") == (
                503,
                "application/json",
                '{"status": "not ready", "not_ready": ["discord"]}',
            )


class Delivered:
    """A platform's reply view that delivers at once, for the scheduler."""

    edits_in_place = True

    def show(self, event: ReplyEvent) -> None:
        pass

    async def deliver(self, markdown: str) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def test_the_scheduler_counts_pending_messages_and_lease_takeovers(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Left by a process that died.")
    fake_openai.reply("Slow.", delay=1.0)
    fake_openai.reply("Quick.")
    async with engine_factory() as runtime:
        metrics = runtime.metrics  # the engine's: the scheduler counts into the same
        # A turn leased by a process that died a moment ago: its lease has expired.
        orphan = await runtime.store.accept(
            inbound=inbound("anyone?", key=ConversationKey("test", "team", "c", "orphan")),
            address={},
            owner="dead-process",
            lease_until=time.time() - 1,
        )
        assert orphan is not None and orphan.state == TurnState.RUNNING
        scheduler = Scheduler(
            engine=runtime.engine, store=runtime.store, poll_seconds=0.05, recorder=metrics
        )
        scheduler.add_outlet("test", lambda turn, posted: Delivered())
        async with scheduler:
            await states_become(runtime.store.engine, ["delivered"])  # type: ignore[attr-defined]
            taken_over = parse(metrics.exposition().decode())
            first = await scheduler.accept(inbound("slow one"), {})
            await fake_openai.received(2)  # its turn has started: no longer pending
            second = await scheduler.accept(inbound("quick one"), {})
            assert isinstance(first, Turn) and isinstance(second, Turn)
            waiting = parse(metrics.exposition().decode())
            await states_become(
                runtime.store.engine,  # type: ignore[attr-defined]
                ["delivered"] * 3,
            )
            done = parse(metrics.exposition().decode())
    assert value(taken_over, "parley_lease_takeovers_total") == 1
    assert value(taken_over, "parley_queue_wait_seconds_count", platform="test") == 0
    assert value(taken_over, "parley_turns_total", platform="test", outcome="final") == 1
    assert value(waiting, "parley_pending_messages") == 1
    assert value(done, "parley_pending_messages") == 0
    assert value(done, "parley_queue_wait_seconds_count", platform="test") == 2
    assert value(done, "parley_turns_total", platform="test", outcome="final") == 3
    labels = {"platform": "test", "outcome": "delivered"}
    assert value(done, "parley_deliveries_total", **labels) == 3
    assert value(done, "parley_lease_takeovers_total") == 1
