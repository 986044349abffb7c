"""The turn pipeline against the scripted model server, through the real openai client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import NoReturn

from sqlalchemy import select

from core import wording
from core.errors import ModelFailure
from core.events import Accepted, CommandResult, Delta, Failed, Final, Usage
from core.storage import SqlStore, create_database_engine, migrate
from core.storage.tables import messages, usage
from core.tokens import MESSAGE_OVERHEAD, ApproximateCounter, counter_for_model, message_tokens
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.helpers import KEY, inbound, turn

ASSISTANT_PROMPT = (
    "You are Parley, a helpful assistant talking with people on test. Today is 2026-11-21.\n"
    "The person writing to you now is alice; in a shared thread, messages are prefixed with\n"
    "their author's name so you can tell people apart.\n"
    "Answer clearly and concisely. Use Markdown for structure and code. When you do not know\n"
    "something, say so instead of guessing."
)


async def stored_rows(store: SqlStore) -> list[tuple[str, str]]:
    async with store.engine.connect() as connection:
        rows = await connection.execute(
            select(messages.c.role, messages.c.content).order_by(messages.c.id)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def test_a_turn_streams_stores_and_sends_the_exact_context(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hello alice, how can I help?", usage=(42, 7))
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "hello")

        deltas = [e.text for e in events if isinstance(e, Delta)]
        assert len(deltas) > 1  # it streamed
        assert "".join(deltas) == "Hello alice, how can I help?"
        assert events[-1] == Final(
            text="Hello alice, how can I help?", usage=Usage(42, 7, "gpt-4o-mini")
        )
        request = fake_openai.chat_requests[0]
        assert request["messages"] == [
            {"role": "system", "content": ASSISTANT_PROMPT},
            {"role": "user", "content": "alice: hello"},
        ]
        assert request["model"] == "gpt-4o-mini"
        assert fake_openai.requests[0].headers["Authorization"] == "Bearer sk-test"
        assert request["stream"] is True
        assert request["stream_options"] == {"include_usage": True}
        assert request["max_tokens"] == 1024
        assert request["temperature"] == 0.7
        assert sorted(tool["function"]["name"] for tool in request["tools"]) == [
            "calculate",
            "current_time",
            "search_conversation",
        ]
        assert await stored_rows(runtime.store) == [  # type: ignore[arg-type]
            ("user", "hello"),
            ("assistant", "Hello alice, how can I help?"),
        ]


async def test_a_reply_that_starts_with_a_speaker_name_is_shown_and_stored_without_it(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Parley: The capital of France is Paris.")
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "What is the capital of France?")

        answer = "The capital of France is Paris."
        assert "".join(e.text for e in events if isinstance(e, Delta)) == answer
        assert isinstance(events[-1], Final) and events[-1].text == answer
        assert (await stored_rows(runtime.store))[-1] == ("assistant", answer)  # type: ignore[arg-type]


async def test_the_next_turn_sees_the_previous_exchange(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Paris.")
    fake_openai.reply("About 2.1 million.")
    async with engine_factory() as runtime:
        await turn(runtime.engine, "Capital of France?")
        await turn(runtime.engine, "Population?", user_name="bob", user_id="U2")
    assert fake_openai.chat_requests[1]["messages"][1:] == [
        {"role": "user", "content": "alice: Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "bob: Population?"},
    ]


async def test_a_redelivered_event_is_answered_once_also_after_a_restart(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("once")
    async with engine_factory() as runtime:
        first = await turn(runtime.engine, "hi", event_id="Ev42")
        again = [e async for e in runtime.engine.handle(inbound("hi", event_id="Ev42"))]
    async with engine_factory() as restarted:
        after_restart = [e async for e in restarted.engine.handle(inbound("hi", event_id="Ev42"))]
        rows = await stored_rows(restarted.store)  # type: ignore[arg-type]
    assert isinstance(first[-1], Final)
    assert again == [] and after_restart == []  # not even Accepted: no placeholder appears
    assert len(fake_openai.chat_requests) == 1
    assert rows == [("user", "hi"), ("assistant", "once")]


async def test_two_messages_at_once_in_one_conversation_are_answered_in_order(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("first answer", delay=0.3)
    fake_openai.reply("second answer")
    async with engine_factory() as runtime:
        first, second = await asyncio.gather(
            turn(runtime.engine, "first question"), turn(runtime.engine, "second question")
        )
    assert first[-1].text == "first answer"  # type: ignore[union-attr]
    assert second[-1].text == "second answer"  # type: ignore[union-attr]
    assert fake_openai.chat_requests[1]["messages"][1:] == [
        {"role": "user", "content": "alice: first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "alice: second question"},
    ]


async def test_a_slow_model_in_one_chat_does_not_hold_up_another(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("slow", delay=5)
    fake_openai.reply("fast")
    async with engine_factory() as runtime:
        slow = asyncio.create_task(turn(runtime.engine, "take your time"))
        await fake_openai.received(1)
        other = KEY.__class__("test", "team", "random", "")
        fast = await asyncio.wait_for(turn(runtime.engine, "quick one", key=other), timeout=4)
        assert fast[-1].text == "fast"  # type: ignore[union-attr]
        assert not slow.done()
        slow.cancel()


async def assert_failure(
    engine_factory: EngineFactory, kind: ModelFailure, **settings: object
) -> None:
    async with engine_factory(**settings) as runtime:
        events = await turn(runtime.engine, "are you there?")
        rows = await stored_rows(runtime.store)  # type: ignore[arg-type]
    assert events == [Failed(text=wording.MODEL_FAILURE[kind], reason=kind.value)]
    assert rows == [("user", "are you there?")]  # the message is kept; no reply stored


async def test_server_error_gives_a_clear_message_and_keeps_the_message(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(500)
    await assert_failure(engine_factory, ModelFailure.SERVER_ERROR)


async def test_rate_limit_after_retries_gives_a_clear_message(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    for _ in range(2):
        fake_openai.error(429, retry_after=0.01)
    await assert_failure(engine_factory, ModelFailure.RATE_LIMITED, PARLEY_MODEL_RETRIES=1)
    assert len(fake_openai.chat_requests) == 2  # one try plus one bounded retry


async def test_a_rate_limit_is_retried_after_retry_after_and_then_answered(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(429, retry_after=0.05)
    fake_openai.reply("made it")
    async with engine_factory(PARLEY_MODEL_RETRIES=2) as runtime:
        events = await turn(runtime.engine, "hello?")
    assert events[-1].text == "made it"  # type: ignore[union-attr]
    assert len(fake_openai.chat_requests) == 2


async def test_timeout_gives_a_clear_message(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("too late", delay=3)
    await assert_failure(engine_factory, ModelFailure.TIMEOUT, PARLEY_MODEL_TIMEOUT=0.3)


async def test_connection_refused_gives_a_clear_message(
    engine_factory: EngineFactory, unused_tcp_port: int
) -> None:
    await assert_failure(
        engine_factory,
        ModelFailure.UNREACHABLE,
        OPENAI_BASE_URL=f"http://127.0.0.1:{unused_tcp_port}/v1",
    )


async def test_bad_credentials_are_reported_without_retrying(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(401, message="Incorrect API key provided")
    await assert_failure(
        engine_factory, ModelFailure.AUTHENTICATION, PARLEY_FALLBACK_MODEL="gpt-4o"
    )
    assert len(fake_openai.chat_requests) == 1  # no fallback either: it would fail the same way


async def test_the_fallback_model_answers_when_the_primary_fails(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(503)
    fake_openai.reply("from the fallback")
    async with engine_factory(PARLEY_FALLBACK_MODEL="gpt-4.1-mini") as runtime:
        events = await turn(runtime.engine, "hello")
    assert [r["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert events[-1] == Final("from the fallback", Usage(10, 5, "gpt-4.1-mini"))


async def test_usage_is_estimated_when_the_server_reports_none(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("four words right here", usage=None)
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "hi")
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            row = (await connection.execute(select(usage))).one()
    final = events[-1]
    assert isinstance(final, Final) and final.usage.estimated
    assert final.usage.completion_tokens == 4  # exact o200k count of the reply
    assert final.usage.prompt_tokens > 60  # system prompt plus the message
    assert (row.prompt_tokens, row.completion_tokens, row.estimated) == (
        final.usage.prompt_tokens,
        4,
        True,
    )


async def test_an_empty_reply_is_a_failure_not_an_empty_message(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("   ")
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "hi")
    assert events[-1] == Failed(text=wording.EMPTY_REPLY, reason="empty")


async def test_reset_starts_a_fresh_window_and_deletes_nothing(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("noted")
    fake_openai.reply("fresh start")
    async with engine_factory() as runtime:
        await turn(runtime.engine, "remember 42")
        reset = await turn(runtime.engine, "/reset")
        await turn(runtime.engine, "what number?")
        rows = await stored_rows(runtime.store)  # type: ignore[arg-type]
    assert reset == [CommandResult(text=wording.RESET_DONE, command="reset")]
    assert fake_openai.chat_requests[1]["messages"][1:] == [
        {"role": "user", "content": "alice: what number?"}
    ]
    assert [content for _, content in rows] == [
        "remember 42",
        "noted",
        "what number?",
        "fresh start",
    ]


async def test_persona_command_switches_the_system_prompt_for_the_channel(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("def f(): ...")
    fake_openai.reply("hi from another thread")
    async with engine_factory() as runtime:
        answer = await turn(runtime.engine, "/persona coder")
        await turn(runtime.engine, "write f")
        other_thread = KEY.__class__(KEY.platform, KEY.workspace, KEY.channel, "thread-2")
        await turn(runtime.engine, "hello", key=other_thread)
        shown = await turn(runtime.engine, "/persona")
    assert answer[0].text.startswith("This channel now uses the persona *coder*")  # type: ignore[union-attr]
    for request in fake_openai.chat_requests:
        assert request["messages"][0]["content"].startswith("You are Parley, a senior software")
        assert request["temperature"] == 0.2 and request["max_tokens"] == 2048
    assert shown[0].text.startswith("Current persona: *coder*")  # type: ignore[union-attr]


async def test_unknown_persona_and_unknown_command_list_what_exists(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    async with engine_factory() as runtime:
        persona = await turn(runtime.engine, "/persona pirate")
        command = await turn(runtime.engine, "/frobnicate now")
        listing = await turn(runtime.engine, "/personas")
    assert persona[0].text == (  # type: ignore[union-attr]
        "There is no persona called 'pirate'. Available: assistant, coder, editor, translator."
    )
    assert command[0].text == (  # type: ignore[union-attr]
        "Unknown command /frobnicate. Available commands: "
        "/help, /reset, /persona, /personas, /usage, /forget."
    )
    lines = listing[0].text.split("\n")  # type: ignore[union-attr]
    assert lines[0] == "Personas (switch with /persona NAME):"
    # The marker is words, which no platform's Markdown renderer turns into a bullet.
    assert [line for line in lines if line.endswith(" (in use)")] == [
        line for line in lines if line.startswith("- assistant: ")
    ]
    assert len(lines) == 5 and all(line.startswith("- ") for line in lines[1:])
    assert fake_openai.chat_requests == []  # commands never reach the model


async def test_the_persona_in_use_stays_marked_on_every_platform(
    engine_factory: EngineFactory,
) -> None:
    """A leading "*" became a bullet like "-" (Slack "•", Telegram and Discord lists), so
    which persona was in use could not be told: the marker is words now."""
    from adapters.discord.translate import safe_text
    from adapters.slack.translate import markdown_to_mrkdwn
    from adapters.telegram.translate import markdown_to_html

    async with engine_factory() as runtime:
        listing = (await turn(runtime.engine, "/personas"))[0].text  # type: ignore[union-attr]
    for render in (safe_text, markdown_to_mrkdwn, markdown_to_html):
        shown = render(listing)
        assert shown.count(" (in use)") == 1, (render.__name__, shown)
        [line] = [line for line in shown.split("\n") if "(in use)" in line]
        assert "assistant: " in line, (render.__name__, line)


async def test_tools_answers_read_as_sentences(engine_factory: EngineFactory) -> None:
    async with engine_factory() as runtime:
        none = await turn(runtime.engine, "/tools none")
        every = await turn(runtime.engine, "/tools all")
        some = await turn(runtime.engine, "/tools calculate, current_time")
    assert none[0].text == "This channel now uses no tools."  # type: ignore[union-attr]
    assert every[0].text == "This channel now uses all of the persona's tools."  # type: ignore[union-attr]
    assert some[0].text == (  # type: ignore[union-attr]
        "This channel now uses these tools: calculate, current_time."
    )


async def test_a_message_of_stickers_only_is_answered_without_the_model(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    async with engine_factory() as runtime:
        answer = await turn(runtime.engine, "/attachment_only")
    assert answer[0].text == (  # type: ignore[union-attr]
        "I can't see stickers; please write your question as text."
    )
    assert fake_openai.chat_requests == []


async def test_a_path_is_a_message_not_a_command(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("It lists host names.")
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "/etc/hosts: what is it?")
    assert isinstance(events[-1], Final)


async def test_usage_command_reports_the_users_tokens(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("one", usage=(100, 20))
    fake_openai.reply("two", usage=(200, 30))
    fake_openai.reply("three", usage=(1000, 1))
    async with engine_factory() as runtime:
        await turn(runtime.engine, "a")
        await turn(runtime.engine, "b")
        await turn(runtime.engine, "c", user_id="someone-else")  # not alice's usage
        report = await turn(runtime.engine, "/usage")
    assert report[0].text == (  # type: ignore[union-attr]
        "Your usage: today 350 tokens in 2 replies; last 30 days 350 tokens in 2 replies, "
        "under $0.01. This conversation: 1,351 tokens."
    )


async def test_a_bug_inside_a_turn_becomes_a_short_message_not_a_traceback(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    class BrokenStore(SqlStore):
        async def begin_turn(self, **kwargs: object) -> NoReturn:
            raise RuntimeError("disk on fire")

    store = BrokenStore(create_database_engine(sqlite_url))
    await migrate(store.engine)
    try:
        async with engine_factory(store=store) as runtime:
            events = [e async for e in runtime.engine.handle(inbound("hi"))]
    finally:
        await store.close()
    assert events == [Accepted(), Failed(text=wording.UNEXPECTED_FAILURE, reason="internal")]
    assert fake_openai.chat_requests == []


async def test_many_concurrent_turns_on_postgres_share_a_small_pool(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, postgres_url: str
) -> None:
    # Each turn holds one connection (its advisory lock) and runs its statements on it: with
    # a second connection per turn, 30 turns on a pool of at most 10 deadlocked until timeout.
    fake_openai.default = Reply("ok", delay=0.05)
    async with engine_factory(
        DATABASE_URL=postgres_url, PARLEY_DB_POOL_SIZE=2, PARLEY_USER_RPM=0
    ) as runtime:
        keys = [KEY.__class__("test", "team", f"channel-{i}", "") for i in range(30)]
        results = await asyncio.wait_for(
            asyncio.gather(*(turn(runtime.engine, "hi", key=key) for key in keys)), timeout=60
        )
        rows = await stored_rows(runtime.store)  # type: ignore[arg-type]
    assert all(events[-1] == Final("ok", Usage(10, 5, "gpt-4o-mini")) for events in results)
    assert len(rows) == 60


async def test_token_counts_are_stored_with_the_tokenizer_of_the_conversations_model(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "local.toml").write_text('system_prompt = "Be brief."\nmodel = "llama3.1:8b"\n')
    fake_openai.reply("Sure.")
    fake_openai.reply("Sure.")
    text = "Please summarise the quarterly report for the board meeting on Tuesday."
    async with engine_factory(PARLEY_PERSONAS_DIR=str(tmp_path)) as runtime:
        await turn(runtime.engine, text)  # the default persona: gpt-4o-mini, exact o200k
        await turn(runtime.engine, "/persona local")
        await turn(runtime.engine, text)  # llama3.1: the approximation
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            counts = (
                (
                    await connection.execute(
                        select(messages.c.token_count).where(messages.c.role == "user")
                    )
                )
                .scalars()
                .all()
            )
    # Stored: each model's bound. o200k's is the UTF-8 length (tables not needed), above the
    # exact count; the approximation has nothing better than its estimate.
    exact = counter_for_model("gpt-4o-mini")
    assert counts == [
        len(text) + len("alice") + MESSAGE_OVERHEAD,
        message_tokens(ApproximateCounter(), text, "alice"),
    ]
    assert message_tokens(exact, text, "alice", exact=True) < counts[0]
    assert fake_openai.chat_requests[1]["model"] == "llama3.1:8b"
