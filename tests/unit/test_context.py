"""The context window: whole turns by stored token counts, truncation, summaries."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import select

from core import wording
from core.context import PAGE_SIZE, WindowCache, build_window, context_size
from core.events import Final
from core.storage import (
    SqlStore,
    StoredMessage,
    create_database_engine,
    migrate,
)
from core.storage.base import TurnState
from core.storage.tables import messages, turns
from core.tokens import ApproximateCounter, ExactCounter, counter_for_model, message_tokens
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import KEY, turn
from tests.storage.test_sql_store import begin


class CountingStore(SqlStore):
    """The real store, counting how many rows the window reads."""

    rows_read = 0

    async def recent_messages(self, **kwargs: Any) -> Sequence[StoredMessage]:
        rows = await super().recent_messages(**kwargs)
        self.rows_read += len(rows)
        return rows


@pytest.fixture
async def store(sqlite_url: str) -> AsyncIterator[CountingStore]:
    store = CountingStore(create_database_engine(sqlite_url))
    await migrate(store.engine)
    yield store
    await store.close()


async def add_turns(store: SqlStore, count: int, tokens: int = 10) -> int:
    """`count` exchanges stored straight into the messages table (history, not turns)."""
    state = await store.conversation(key=KEY)
    if not count:
        return state.id
    async with store.engine.begin() as connection:
        await connection.execute(
            messages.insert(),
            [
                {
                    "conversation_id": state.id,
                    "role": role,
                    "content": f"{role} {i}",
                    "token_count": tokens,
                }
                for i in range(count)
                for role in ("user", "assistant")
            ],
        )
    return state.id


async def test_the_window_keeps_the_newest_whole_turns_within_the_budget(
    store: CountingStore,
) -> None:
    conversation = await add_turns(store, 10)  # 20 messages of 10 tokens
    window = await build_window(
        store, conversation_id=conversation, after_id=0, budget=65, counter=ApproximateCounter()
    )
    # 65 tokens hold three whole turns (60); half a turn is never sent.
    assert [m.content for m in window.messages] == [
        "user 7",
        "assistant 7",
        "user 8",
        "assistant 8",
        "user 9",
        "assistant 9",
    ]
    assert window.tokens == 60 and window.dropped


async def test_building_the_window_reads_only_what_it_needs_however_long_the_history(
    store: CountingStore,
) -> None:
    conversation = await add_turns(store, 2_000)  # 4,000 stored messages
    window = await build_window(
        store, conversation_id=conversation, after_id=0, budget=200, counter=ApproximateCounter()
    )
    assert len(window.messages) == 20
    assert store.rows_read == PAGE_SIZE  # one page, not the history


async def test_a_message_larger_than_the_budget_is_truncated_with_a_marker(
    store: CountingStore,
) -> None:
    counter = counter_for_model("gpt-4o")
    huge = "word " * 5_000
    state, _, _ = await begin(store, KEY, huge, token_count=counter.count(huge) + 4)
    window = await build_window(
        store, conversation_id=state.id, after_id=0, budget=300, counter=counter
    )
    [message] = window.messages
    assert message.content.endswith(wording.TRUNCATED_MARKER)
    assert message.content.startswith("word word")
    assert counter.count(message.content) + 4 == message.token_count <= 300
    assert message.token_count > 250  # it uses the room it has


def test_context_sizes_come_from_the_table_with_an_override() -> None:
    assert context_size("gpt-4o-mini") == 128_000
    assert context_size("openai/gpt-4.1") == 1_047_576
    assert context_size("gpt-4") == 8_192
    assert context_size("some-local-model") == 8_192  # the safe default
    assert context_size("gpt-4o", override=4_000) == 4_000


async def test_the_engine_sends_only_what_fits_in_a_small_context(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    for i in range(6):
        fake_openai.reply(f"answer {i} " + "blah " * 100)
    # 1,600 context - 1,024 reply reserve - ~110 system prompt (a persona without tools):
    # the new question and one turn.
    async with engine_factory(PARLEY_CONTEXT_TOKENS=1600, PARLEY_PERSONA="editor") as runtime:
        for i in range(6):
            events = await turn(runtime.engine, f"question {i} " + "blah " * 100)
            assert isinstance(events[-1], Final)
    last = fake_openai.chat_requests[-1]["messages"]
    assert last[0]["role"] == "system"
    assert [m["content"].split(" blah")[0] for m in last[1:]] == [
        "alice: question 4",
        "answer 4",
        "alice: question 5",
    ]


async def test_summaries_carry_what_fell_out_of_the_window(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    async with engine_factory(
        PARLEY_CONTEXT_TOKENS=1600, PARLEY_SUMMARIES=True, PARLEY_PERSONA="editor"
    ) as runtime:
        for i in range(3):
            fake_openai.reply(f"answer {i} " + "blah " * 100)
            if i == 2:
                fake_openai.reply("scripted summary")
            await turn(runtime.engine, f"question {i} " + "blah " * 100)
        # Turn 2 pushed turn 0 out of the window, so a summary request followed it.
        summary_request = fake_openai.chat_requests[-1]
        assert summary_request["messages"][0]["content"].startswith("You maintain the running")
        assert "alice: question 0" in summary_request["messages"][1]["content"]
        assert "question 1" not in summary_request["messages"][1]["content"]
        fake_openai.reply("the next answer")
        await turn(runtime.engine, "and now?")
    assert fake_openai.chat_requests[-1]["messages"][0]["content"].endswith(
        f"{wording.SUMMARY_PREFIX}\nscripted summary"
    )


async def test_a_cached_window_reads_only_new_messages_and_matches_a_fresh_read(
    store: CountingStore,
) -> None:
    conversation = await add_turns(store, 2_000)  # turns of 20 tokens
    cache = WindowCache()
    counter = ApproximateCounter()
    arguments = {"conversation_id": conversation, "after_id": 0, "budget": 5_015}
    first = await build_window(store, counter=counter, cache=cache, **arguments)
    assert first.tokens == 5_000 and first.dropped
    # A small new turn fits in the 15 tokens left: every cached message stays, and the next
    # older turn still cannot fit, so nothing older is read either.
    await add_turns(store, 1, tokens=5)
    store.rows_read = 0
    cached = await build_window(store, counter=counter, cache=cache, **arguments)
    assert store.rows_read == 2  # the new user message and reply, nothing else
    fresh = await build_window(store, counter=counter, **arguments)
    assert cached == fresh
    assert cached.tokens == 5_010 and cached.dropped


async def test_the_cache_follows_other_writers_resets_and_budget_changes(
    store: CountingStore, sqlite_url: str
) -> None:
    rng = random.Random(7)
    cache = WindowCache()
    counter = ApproximateCounter()
    other = SqlStore(create_database_engine(sqlite_url))  # another process on the same database
    try:
        conversation = await add_turns(store, 5)
        after_id = 0
        for step in range(120):
            writer = rng.choice([store, other])
            await add_turns(writer, rng.randint(0, 40), tokens=rng.randint(1, 30))
            if step % 37 == 36:  # now and then a /reset
                await store.reset(key=KEY)
                after_id = (await store.conversation(key=KEY)).window_start_id
            budget = rng.choice([50, 300, 2_000, 20_000])
            arguments = {"conversation_id": conversation, "after_id": after_id, "budget": budget}
            cached = await build_window(store, counter=counter, cache=cache, **arguments)
            fresh = await build_window(store, counter=counter, **arguments)
            assert cached == fresh, f"step {step}"
    finally:
        await other.close()


async def test_a_failing_summary_leaves_the_delivered_answer_as_it_was(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    async with engine_factory(
        PARLEY_CONTEXT_TOKENS=1600,
        PARLEY_SUMMARIES=True,
        PARLEY_PERSONA="editor",
        PARLEY_MODEL_RETRIES=0,
    ) as runtime:
        for i in range(3):
            fake_openai.reply(f"answer {i} " + "blah " * 100)
        fake_openai.error(500)  # the summary request after turn 2
        events = [await turn(runtime.engine, f"question {i} " + "blah " * 100) for i in range(3)]
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            rows = (
                await connection.execute(select(turns.c.state, turns.c.reply).order_by(turns.c.id))
            ).all()
        fake_openai.reply("the next answer")
        await turn(runtime.engine, "and now?")

    assert fake_openai.chat_requests[3]["messages"][0]["content"].startswith(
        "You maintain the running"
    )  # the summary was asked for, and failed
    assert isinstance(events[2][-1], Final)
    assert events[2][-1].text == "answer 2 " + "blah " * 100
    assert rows[2] == (TurnState.DELIVERED, "answer 2 " + "blah " * 100)
    # No summary was stored: the next turn's system prompt carries none.
    assert wording.SUMMARY_PREFIX not in fake_openai.chat_requests[-1]["messages"][0]["content"]


class RecordingCounter(ExactCounter):
    """o200k_base, noting every text it counts exactly."""

    def __init__(self) -> None:
        super().__init__("o200k_base")
        self.counted: list[str] = []

    def count(self, text: str) -> int:
        self.counted.append(text)
        return super().count(text)


async def add_texts(store: SqlStore, conversation: int, texts: list[str]) -> None:
    """Exchanges stored as the engine stores them: with their bounds as token counts."""
    counter = ExactCounter("o200k_base")
    async with store.engine.begin() as connection:
        await connection.execute(
            messages.insert(),
            [
                {
                    "conversation_id": conversation,
                    "role": role,
                    "content": text,
                    "token_count": message_tokens(counter, text),
                }
                for i, text in enumerate(texts)
                for role in [("user", "assistant")[i % 2]]
            ],
        )


async def test_stored_bounds_that_do_not_fit_are_counted_exactly(store: CountingStore) -> None:
    conversation = (await store.conversation(key=KEY)).id
    texts = [f"message {i}: " + "hello " * 50 for i in range(8)]  # 313 bytes, 55 tokens
    await add_texts(store, conversation, texts)
    counter = RecordingCounter()
    arguments = {"conversation_id": conversation, "after_id": 0, "counter": counter}

    roomy = await build_window(store, budget=3_000, **arguments)  # 8 x 317 fit by bounds
    assert (len(roomy.messages), roomy.exact, counter.counted) == (8, False, [])

    exact = [message_tokens(counter, text, exact=True) for text in texts]
    assert sum(exact) == 472
    # By bounds one message fits in 400 tokens; counted exactly, all 8 fit in the 500 that
    # the budget is when counted exactly (the system prompt's and tools' exact share).
    window = await build_window(store, budget=400, exact_budget=lambda: 500, **arguments)
    assert [m.content for m in window.messages] == texts
    assert window.exact and not window.dropped
    assert [m.token_count for m in window.messages] == exact
    assert window.tokens == 472

    tight = await build_window(store, budget=300, **arguments)  # no exact budget: 300 stays
    assert tight.exact and tight.dropped
    assert [m.content for m in tight.messages] == texts[-4:]  # two whole turns of 2 x 59
    assert tight.tokens == sum(exact[-4:]) <= 300


async def test_a_cached_window_counts_only_new_messages_exactly(store: CountingStore) -> None:
    conversation = (await store.conversation(key=KEY)).id
    texts = [f"message {i}: " + "hello " * 50 for i in range(8)]
    await add_texts(store, conversation, texts)
    counter = RecordingCounter()
    cache = WindowCache()
    arguments = {"conversation_id": conversation, "after_id": 0, "counter": counter}
    first = await build_window(store, budget=600, cache=cache, **arguments)
    assert first.exact and not first.dropped
    assert sorted(counter.counted) == sorted(texts)

    await add_texts(store, conversation, ["and one more", "an answer " + "hello " * 50])
    counter.counted.clear()
    second = await build_window(store, budget=600, cache=cache, **arguments)
    assert second.exact and len(second.messages) == 10
    assert counter.counted == ["an answer " + "hello " * 50, "and one more"]
    assert second == await build_window(store, budget=600, **arguments)  # as read afresh
