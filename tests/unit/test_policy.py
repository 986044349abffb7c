"""Access lists, admins, per-user rate limits, daily budgets and cost, through the engine."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from core import wording
from core.events import CommandResult, ConversationKey, Final, Refused
from core.policy import describe_wait
from core.pricing import PriceTable
from core.storage.tables import messages, usage
from tests.conftest import FIXED_NOW, EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import KEY, turn


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = FIXED_NOW

    def __call__(self) -> datetime:
        return self.now


def texts(events: list[object]) -> list[str]:
    return [getattr(event, "text", "") for event in events]


async def stored_texts(runtime: object) -> list[str]:
    engine = runtime.store.engine  # type: ignore[attr-defined]
    async with engine.connect() as connection:
        rows = await connection.execute(select(messages.c.content).order_by(messages.c.id))
        return [row[0] for row in rows]


async def test_a_user_not_on_the_allowlist_is_refused_and_nothing_is_stored(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.reply("Hello boss")
    async with engine_factory(PARLEY_ALLOW_USERS="U-boss, discord:U1") as runtime:
        refused = await turn(runtime.engine, "hi", user_id="U1")  # allowed on discord only
        answered = await turn(runtime.engine, "hi", user_id="U-boss")

        assert refused == [Refused(text=wording.ACCESS_DENIED, reason="access")]
        assert isinstance(answered[-1], Final)
        assert len(fake_openai.chat_requests) == 1
        assert await stored_texts(runtime) == ["hi", "Hello boss"]


async def test_blocklists_from_settings_win_over_allowlists(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    async with engine_factory(
        PARLEY_ALLOW_WORKSPACES="team", PARLEY_BLOCK_CHANNELS="test:general"
    ) as runtime:
        assert texts(await turn(runtime.engine, "hi")) == [wording.ACCESS_DENIED]
        other = ConversationKey("test", "team", "random", "")
        fake_openai.reply("fine")
        assert texts(await turn(runtime.engine, "hi", key=other))[-1] == "fine"
        elsewhere = ConversationKey("test", "other-team", "random", "")
        assert texts(await turn(runtime.engine, "hi", key=elsewhere)) == [wording.ACCESS_DENIED]
        assert len(fake_openai.chat_requests) == 1


async def test_admins_edit_the_database_lists_and_others_are_refused_politely(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    async with engine_factory(PARLEY_ADMINS="test:U-admin") as runtime:
        engine = runtime.engine
        denied = await turn(engine, "/access block user U-bob", user_id="U1")
        assert texts(denied) == [wording.ADMIN_ONLY.format(what="use /access")]

        done = await turn(engine, "/access block channel here", user_id="U-admin")
        assert texts(done) == ["Added channel general to the block list."]
        assert texts(await turn(engine, "hi", user_id="U1")) == [wording.ACCESS_DENIED]
        # The admin is still let in, to undo it.
        listing = await turn(engine, "/access", user_id="U-admin")
        assert texts(listing) == ["Access lists:\n- block channel general (on test)"]
        await turn(engine, "/access remove block channel general", user_id="U-admin")
        fake_openai.reply("back")
        assert texts(await turn(engine, "hi", user_id="U1"))[-1] == "back"
        assert len(fake_openai.chat_requests) == 1


async def test_access_lists_need_an_admin_even_when_none_is_configured(
    engine_factory: EngineFactory,
) -> None:
    async with engine_factory() as runtime:
        for command in ("/access block user U2", "/limits rpm 100"):
            answer = await turn(runtime.engine, command)
            assert isinstance(answer[0], CommandResult)
            assert answer[0].text.startswith("Sorry, only the bot's admins")
        assert list(await runtime.store.access_rules()) == []


async def test_channel_settings_are_for_admins_when_admins_are_configured(
    engine_factory: EngineFactory,
) -> None:
    async with engine_factory(PARLEY_ADMINS="U-admin") as runtime:
        engine, store = runtime.engine, runtime.store
        refused = await turn(engine, "/persona coder", user_id="U1")
        assert texts(refused) == [wording.ADMIN_ONLY.format(what="change the persona of a channel")]
        # In a direct conversation the user is choosing for themselves.
        dm = ConversationKey("test", "team", "D1", "")
        assert "coder" in texts(await turn(engine, "/persona coder", key=dm, is_direct=True))[0]
        assert texts(await turn(engine, "/scope user", user_id="U1"))[0].startswith("Sorry")

        assert "coder" in texts(await turn(engine, "/persona coder", user_id="U-admin"))[0]
        await turn(engine, "/scope user", user_id="U-admin")
        await turn(engine, "/tools calculate current_time", user_id="U-admin")
        await turn(engine, "/buffer on", user_id="U-admin")
        await turn(engine, "/limits tokens 5000", user_id="U-admin")
        await turn(engine, "/mentions required", user_id="U-admin")
        unknown = await turn(engine, "/tools teleport", user_id="U-admin")
        assert texts(unknown)[0].startswith("There is no tool called teleport.")

        channel = await store.channel(key=KEY)
        assert (channel.persona, channel.scope, channel.tools) == (
            "coder",
            "user",
            ["calculate", "current_time"],
        )
        assert (channel.buffer_output, channel.user_tokens_per_day) == (True, 5000)
        assert channel.require_mention is True
        limits = await turn(engine, "/limits", user_id="U-admin")
        assert texts(limits) == [
            "Per-user limits in this channel: 20 requests a minute, 5,000 tokens a day."
        ]
        help_text = texts(await turn(engine, "/help", user_id="U1"))[0]
        assert "/access" not in help_text
        assert "/access" in texts(await turn(engine, "/help", user_id="U-admin"))[0]


async def test_the_rate_limit_refuses_then_recovers_and_commands_do_not_count(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    clock = Clock()
    fake_openai.default = None
    async with engine_factory(PARLEY_USER_RPM=2, clock=clock) as runtime:
        engine = runtime.engine
        for text in ("one", "two"):
            fake_openai.reply(f"answer {text}")
            clock.now += timedelta(seconds=10)
            assert isinstance((await turn(engine, text))[-1], Final)
        await turn(engine, "/help")  # a command is not a model request

        clock.now += timedelta(seconds=15)
        refused = await turn(engine, "three")
        assert refused == [
            Refused(
                text=wording.RATE_LIMITED.format(limit=2, wait="in 35 seconds"),
                reason="limit",
            )
        ]
        fake_openai.reply("yours")
        assert texts(await turn(engine, "mine", user_id="U2"))[-1] == "yours"  # per user
        assert len(fake_openai.chat_requests) == 3
        assert "three" not in await stored_texts(runtime)

        clock.now += timedelta(seconds=35)
        fake_openai.reply("answer three")
        assert texts(await turn(engine, "three again"))[-1] == "answer three"


async def test_the_daily_budget_refuses_until_midnight_utc(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    clock = Clock()
    fake_openai.default = None
    async with engine_factory(PARLEY_USER_TOKENS_PER_DAY=100, clock=clock) as runtime:
        engine = runtime.engine
        for _ in range(2):  # 70 tokens each: the second starts under the budget
            fake_openai.reply("ok", usage=(60, 10))
            assert isinstance((await turn(engine, "work"))[-1], Final)

        refused = await turn(engine, "more")
        assert refused == [
            Refused(text=wording.BUDGET_USED.format(limit=100, wait="in 12 hours"), reason="limit")
        ]
        assert len(fake_openai.chat_requests) == 2
        report = texts(await turn(engine, "/usage"))[0]
        assert "Today's budget here: 0 of 100 tokens left." in report

        clock.now += timedelta(hours=12)  # midnight UTC: a new day
        fake_openai.reply("good morning", usage=(60, 10))
        assert texts(await turn(engine, "more"))[-1] == "good morning"


async def test_a_channel_override_replaces_the_setting(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    async with engine_factory(PARLEY_USER_RPM=0) as runtime:
        await runtime.store.update_channel(key=KEY, user_rpm=1)
        fake_openai.reply("once")
        assert texts(await turn(runtime.engine, "a"))[-1] == "once"
        assert isinstance((await turn(runtime.engine, "b"))[0], Refused)


async def test_every_model_call_records_tokens_model_and_cost(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.reply("priced", usage=(1_000_000, 500_000))
    fake_openai.reply("custom", usage=(1000, 500), model="house-model-v2")
    async with engine_factory(PARLEY_PRICES='{"house-model": [1.0, 2.0]}') as runtime:
        await turn(runtime.engine, "a")
        await turn(runtime.engine, "b")
        report = texts(await turn(runtime.engine, "/usage"))[0]
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            rows = (
                await connection.execute(
                    select(
                        usage.c.model,
                        usage.c.prompt_tokens,
                        usage.c.completion_tokens,
                        usage.c.cost_usd,
                    ).order_by(usage.c.id)
                )
            ).all()

    assert [tuple(row) for row in rows] == [
        ("gpt-4o-mini", 1_000_000, 500_000, pytest.approx(0.45)),
        ("house-model-v2", 1000, 500, pytest.approx(0.002)),
    ]
    assert "last 30 days 1,501,500 tokens in 2 replies, about $0.45." in report


def test_prices_match_the_longest_family_name_and_provider_prefixes() -> None:
    prices = PriceTable({"gpt-4o": (3.0, 12.0)})
    assert prices.price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert prices.price("gpt-4o-2024-08-06") == (3.0, 12.0)
    assert prices.price("openai/gpt-4.1-nano") == (0.10, 0.40)
    assert prices.price("gpt-4oo") is None  # another name, not a snapshot of gpt-4o
    assert prices.price("gpt-5-mini-2025-08-07") == (0.25, 2.0)
    assert prices.price("gpt-5.1-codex") == (1.25, 10.0)
    assert prices.price("gpt-5-pro") == (15.0, 120.0)
    assert prices.cost("llama3", 10, 10) is None


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.2, "in 1 second"),
        (35, "in 35 seconds"),
        (60, "in 1 minute"),
        (61, "in 2 minutes"),
        (3600, "in 1 hour"),
        (7 * 3600 + 20 * 60, "in 7 hours 20 minutes"),
    ],
)
def test_waits_are_described_rounded_up(seconds: float, words: str) -> None:
    assert describe_wait(timedelta(seconds=seconds)) == words


async def test_a_failing_access_lookup_is_a_short_failure_not_a_crash(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    from core.storage import SqlStore, create_database_engine, migrate

    class BrokenRules(SqlStore):
        async def access_rules(self) -> list[Any]:
            raise RuntimeError("database gone")

    store = BrokenRules(create_database_engine(sqlite_url))
    await migrate(store.engine)
    try:
        async with engine_factory(store=store, PARLEY_ALLOW_USERS="U1") as runtime:
            events = await turn(runtime.engine, "hi")
    finally:
        await store.close()
    assert events == [Refused(text=wording.UNEXPECTED_FAILURE, reason="internal")]
    assert fake_openai.chat_requests == []
