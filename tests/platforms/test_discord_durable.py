"""The Discord bot's guarantees on the durable pipeline: real discord.py, a fake Discord.

Every accepted message is answered exactly once and in order, whatever Discord's REST API or
the process does meanwhile: an outage while the answer is delivered, a placeholder that could
not be posted, fifty messages at once, a restart with a stored but undelivered reply, a slash
command handed over to the next process, and a database that is briefly down.
"""

# The waiting helpers take `timeout=` (seconds) on purpose: one knob per wait in tests.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from adapters.discord.bot import DiscordBot, channel_address
from bots.bootstrap import build_engine
from core.events import ConversationKey, Inbound
from core.storage.retry import DatabaseUnavailable
from core.storage.tables import conversations
from tests.conftest import FIXED_NOW
from tests.fakes.discord_server import (
    BOT_USER,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    USER_ID,
    FakeDiscord,
    dm_message_create,
    interaction_create,
    message_create,
    thread_channel,
    thread_create,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import states_become, stored_messages, turn_states
from tests.platforms.running import Running, platform_settings
from tests.platforms.running import running as running_platform

QUIET: dict[str, Any] = {"parse": []}
ANSWERING: dict[str, Any] = {"parse": [], "replied_user": True}
HTML_503 = "<html><body><h1>503 Service Unavailable</h1></body></html>"


def discord_settings(
    fake: FakeDiscord, fake_openai: FakeOpenAI, database: str, **extra: Any
) -> Any:
    return platform_settings(
        fake_openai,
        database,
        **{
            "DISCORD_BOT_TOKEN": "discord-token",
            "DISCORD_API_URL": fake.api_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "PARLEY_DISCORD_UPDATE_INTERVAL": 0.05,
            "PARLEY_LEASE_SECONDS": 2,
            **extra,
        },
    )


@asynccontextmanager
async def running(
    fake: FakeDiscord, fake_openai: FakeOpenAI, database: str, **extra: Any
) -> AsyncIterator[Running]:
    settings = discord_settings(fake, fake_openai, database, **extra)
    with fake.patch_discord():  # restores discord.py's class attributes afterwards
        async with running_platform(settings, "discord") as started:
            assert isinstance(started.bot, DiscordBot)
            yield started


def contents(fake: FakeDiscord, channel: str) -> list[str]:
    return [m["content"] for m in fake.messages_in(channel)]


async def contents_become(
    fake: FakeDiscord, channel: str, expected: list[str], timeout: float = 10
) -> None:
    await fake.wait_for(
        lambda: contents(fake, channel) == expected,
        timeout,
        what=f"channel {channel}: {expected!r}",
    )


def statuses(fake: FakeDiscord, path_prefix: str) -> list[tuple[str, int]]:
    return [(c.method, c.status) for c in fake.calls if c.path.startswith(path_prefix)]


def down_error() -> DatabaseUnavailable:
    return DatabaseUnavailable("accept", attempts=3, elapsed=1.0, last=ConnectionError("down"))


# --- a. an outage while the answer is delivered ------------------------------------------------


async def test_an_outage_during_delivery_leaves_one_complete_message(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    answer = "The whole answer, delivered once Discord is back."
    fake_openai.reply(answer, delay=0.8)  # time to see the placeholder and start the outage
    async with running(discord_fake, fake_openai, database_url) as started:
        question = message_create("<@1000> tell me", mentions=[BOT_USER])
        await discord_fake.dispatch("MESSAGE_CREATE", question)
        thread = question["id"]
        await contents_become(discord_fake, thread, ["…"])
        # Discord's edge answers 502s (discord.py retries those itself, once a second), then
        # a proxy's HTML 503 (which discord.py raises at once) until the outage ends.
        discord_fake.fail_for(2.5, "/channels/", responses=[502, (503, HTML_503)])
        await contents_become(discord_fake, thread, [answer], timeout=20)
        await states_become(started.database, ["delivered"])

    [message] = discord_fake.messages_in(thread, deleted=True)  # no second message, none deleted
    assert message["versions"][0] == "…" and message["content"] == answer
    assert message["allowed_mentions"] == QUIET
    seen = statuses(discord_fake, f"/channels/{thread}/messages")
    assert ("PATCH", 502) in seen and ("PATCH", 503) in seen
    assert seen[-1] == ("PATCH", 200)
    assert [method for method, _ in seen].count("POST") == 1  # the placeholder only
    assert len(fake_openai.chat_requests) == 1


# --- b. the placeholder cannot be posted ---------------------------------------------------


@pytest.mark.parametrize("failing", ["post", "thread"])
async def test_a_failed_placeholder_does_not_lose_the_answer(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str, failing: str
) -> None:
    answer = "Answered all the same."
    fake_openai.reply(answer, delay=0.3)
    async with running(discord_fake, fake_openai, database_url) as started:
        if failing == "post":  # in a DM: the placeholder's POST fails
            where = DM_CHANNEL_ID
            discord_fake.fail_next("POST", f"/channels/{where}/messages", status=503)
            await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("hello?"))
        else:  # a mention: the thread cannot be started at the placeholder's turn
            question = message_create("<@1000> hello?", mentions=[BOT_USER])
            where = question["id"]
            discord_fake.fail_next("POST", f"/channels/{CHANNEL_ID}/messages/{where}", status=503)
            await discord_fake.dispatch("MESSAGE_CREATE", question)
        await contents_become(discord_fake, where, [answer])
        await states_become(started.database, ["delivered"])
        assert await stored_messages(started.database) == [
            ("user", "hello?"),
            ("assistant", answer),
        ]
    failed = [c for c in discord_fake.calls if c.status == 503]
    assert len(failed) == 1
    assert len(discord_fake.messages_in(where, deleted=True)) == 1
    if failing == "thread":
        assert [t["id"] for t in discord_fake.threads] == [where]  # started by the next post


# --- c. fifty messages at once ---------------------------------------------------------------


async def test_fifty_messages_at_once_are_answered_in_order(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    count = 50
    for n in range(count):
        fake_openai.reply(f"answer {n}")
    # One user writing fifty messages in a burst: lift the per-user limit (0: none).
    async with running(discord_fake, fake_openai, database_url, PARLEY_USER_RPM=0) as started:
        thread = thread_create("busy thread")  # one the bot started: no mention needed
        await discord_fake.dispatch("THREAD_CREATE", thread)
        questions = [message_create(f"question {n}", channel_id=thread["id"]) for n in range(count)]
        for question in questions:  # back to back, as a busy gateway sends them
            await discord_fake.dispatch("MESSAGE_CREATE", question)
        expected = [f"answer {n}" for n in range(count)]
        await contents_become(discord_fake, thread["id"], expected, timeout=60)
        await states_become(started.database, ["delivered"] * count)

    # Each answer replies to its own question and may notify only its author (its first
    # post, the placeholder; the edits that follow notify nobody).
    posts = discord_fake.calls_to("POST", f"/channels/{thread['id']}/messages")
    assert len(posts) == count
    for question, post in zip(questions, posts, strict=True):
        assert str(post.body["message_reference"]["message_id"]) == question["id"]
        assert post.body["allowed_mentions"] == ANSWERING
    for edit in discord_fake.calls_to("PATCH", f"/channels/{thread['id']}/messages"):
        assert edit.body["allowed_mentions"] == QUIET
    # The model saw the questions in arrival order, each with every earlier exchange.
    requests = fake_openai.chat_requests
    assert len(requests) == count
    for n, request in enumerate(requests):
        history = [(m["role"], m["content"]) for m in request["messages"][1:]]
        earlier = [
            turn
            for k in range(n)
            for turn in (("user", f"Alice: question {k}"), ("assistant", f"answer {k}"))
        ]
        assert history == [*earlier, ("user", f"Alice: question {n}")]


# --- d. a restart with a reply stored but not delivered ------------------------------------


async def test_a_stored_reply_is_delivered_at_start_by_editing_its_placeholder(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    """A process answered a mention, posted the placeholder in the new thread, stored the
    reply and died before the final edit. The next process edits that placeholder."""
    question = message_create("<@1000> what is 2+2?", mentions=[BOT_USER])
    thread = question["id"]
    discord_fake.add_thread(thread_channel("what is 2+2?", thread_id=thread))
    placeholder = discord_fake.add_message(thread, "…")
    fake_openai.reply("Four.")
    settings = discord_settings(discord_fake, fake_openai, database_url)
    async with build_engine(settings, clock=lambda: FIXED_NOW) as runtime:
        inbound = Inbound(
            key=ConversationKey("discord", GUILD_ID, CHANNEL_ID, thread),
            event_id=f"message:{thread}",
            user_id=USER_ID,
            user_name="Alice",
            text="what is 2+2?",
            mentions_bot=True,
        )
        address = channel_address(
            channel_id=thread,
            guild_id=GUILD_ID,
            thread_parent=CHANNEL_ID,
            thread_title="what is 2+2?",
        )
        store = runtime.store
        turn = await store.accept(
            inbound=inbound, address=address, owner="crashed", lease_until=time.time() + 60
        )
        assert turn is not None
        await store.record_posted(turn_id=turn.id, owner="crashed", posted=[placeholder["id"]])
        _ = [event async for event in runtime.engine.run(turn, "crashed")]  # stores the reply
        await store.release_leases(owner="crashed")  # as if its lease had expired
    assert len(fake_openai.chat_requests) == 1

    async with running(discord_fake, fake_openai, database_url) as started:
        assert await turn_states(started.database) in (["replied"], ["delivered"])
        await contents_become(discord_fake, thread, ["Four."])
        await states_become(started.database, ["delivered"])

    edits = discord_fake.calls_to("PATCH", f"/channels/{thread}/messages/{placeholder['id']}")
    assert [c.body for c in edits] == [
        {"content": "Four.", "tts": False, "allowed_mentions": QUIET}
    ]
    assert discord_fake.calls_to("POST", "/channels/") == []  # no new message, no new thread
    assert len(fake_openai.chat_requests) == 1  # delivered, not answered again


async def test_a_turn_run_again_after_its_thread_was_started_answers_in_that_thread(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    """A process started the thread for a mention and died before posting anything."""
    question = message_create("<@1000> what is 2+2?", mentions=[BOT_USER])
    thread = question["id"]
    discord_fake.add_thread(thread_channel("what is 2+2?", thread_id=thread))
    settings = discord_settings(discord_fake, fake_openai, database_url)
    async with build_engine(settings, clock=lambda: FIXED_NOW) as runtime:
        turn = await runtime.store.accept(
            inbound=Inbound(
                key=ConversationKey("discord", GUILD_ID, CHANNEL_ID, thread),
                event_id=f"message:{thread}",
                user_id=USER_ID,
                user_name="Alice",
                text="what is 2+2?",
            ),
            address=channel_address(
                channel_id=thread,
                guild_id=GUILD_ID,
                thread_parent=CHANNEL_ID,
                thread_title="what is 2+2?",
            ),
            owner="crashed",
            lease_until=0.0,  # expired
        )
        assert turn is not None
    fake_openai.reply("Four.")
    async with running(discord_fake, fake_openai, database_url) as started:
        await contents_become(discord_fake, thread, ["Four."])
        await states_become(started.database, ["delivered"])
    [start] = discord_fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages/{thread}/threads")
    assert (start.status, start.response["code"]) == (400, 160004)
    assert len(discord_fake.threads) == 1
    assert [m["content"] for m in fake_openai.chat_requests[0]["messages"][1:]] == [
        "Alice: what is 2+2?"
    ]


# --- e. slash commands -----------------------------------------------------------------------


async def test_ask_in_a_dm_continues_the_dms_conversation(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    fake_openai.reply("Hello Alice.")
    fake_openai.reply("You said hi.")
    async with running(discord_fake, fake_openai, database_url) as started:
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("hi"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["Hello Alice."])
        ask = interaction_create(
            "ask", {"prompt": "what did I say?"}, guild_id=None, channel_id=DM_CHANNEL_ID
        )
        await discord_fake.dispatch("INTERACTION_CREATE", ask)
        await discord_fake.wait_for(
            lambda: any(
                r["kind"] == "edit_original" and r["body"]["content"] == "You said hi."
                for r in discord_fake.interaction_responses
            ),
            what="the answer to /ask",
        )
        await states_become(started.database, ["delivered", "delivered"])
        assert await started.count(conversations) == 1

    deferred, *answers = discord_fake.interaction_responses
    assert (deferred["kind"], deferred["type"]) == ("callback", 5)
    assert deferred["body"] == {"type": 5}  # /ask is public by default: no ephemeral flag
    assert {r["kind"] for r in answers} == {"edit_original"}
    assert all(r["body"]["allowed_mentions"] == QUIET for r in answers)
    assert [(m["role"], m["content"]) for m in fake_openai.chat_requests[1]["messages"][1:]] == [
        ("user", "Alice: hi"),
        ("assistant", "Hello Alice."),
        ("user", "Alice: what did I say?"),
    ]


async def test_ask_is_stored_before_it_is_deferred_and_private_on_request(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    fake_openai.reply("Paris.", delay=0.3)
    async with running(discord_fake, fake_openai, database_url) as started:
        turn_rows: list[str] = []
        seen: list[list[str]] = []
        # What had been stored when Discord was told "thinking…".
        discord_fake.observe(
            lambda call: seen.append(list(turn_rows)) if call.path.endswith("/callback") else None
        )
        store = started.runtime.store
        accept = store.accept

        async def recording_accept(**values: Any) -> Any:
            turn = await accept(**values)
            turn_rows.append(values["inbound"].event_id)
            return turn

        store.accept = recording_accept  # type: ignore[method-assign]
        ask = interaction_create("ask", {"prompt": "Capital of France?", "private": True})
        await discord_fake.dispatch("INTERACTION_CREATE", ask)
        await states_become(started.database, ["delivered"])

    assert seen == [[f"interaction:{ask['id']}"]]
    deferred, answer = discord_fake.interaction_responses
    assert deferred["body"] == {"type": 5, "data": {"flags": 64}}
    assert answer["kind"] == "edit_original"
    assert answer["body"] == {"content": "Paris.", "tts": False, "allowed_mentions": QUIET}
    assert answer["message"]["flags"] & 64  # still private


async def test_a_command_that_cannot_be_stored_is_not_acknowledged(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(discord_fake, fake_openai, sqlite_url) as started:

        async def down(**values: Any) -> Any:
            raise down_error()

        started.runtime.store.accept = down  # type: ignore[method-assign]
        await discord_fake.dispatch("INTERACTION_CREATE", interaction_create("help"))
        await asyncio.sleep(0.5)
        assert discord_fake.interaction_responses == []  # Discord says: did not respond
        assert await turn_states(started.database) == []


async def test_an_ask_handed_over_at_shutdown_is_answered_by_the_next_process(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, database_url: str
) -> None:
    """The first process stops while the model thinks; the next one answers through the
    interaction's webhook, rebuilt from the stored application id and token."""
    fake_openai.reply("never shown", delay=5)
    fake_openai.reply("Paris.")
    ask = interaction_create("ask", {"prompt": "Capital of France?"})
    async with running(discord_fake, fake_openai, database_url, PARLEY_SHUTDOWN_GRACE=0):
        await discord_fake.dispatch("INTERACTION_CREATE", ask)
        await fake_openai.received(1)
    assert [r["kind"] for r in discord_fake.interaction_responses] == ["callback"]

    async with running(discord_fake, fake_openai, database_url) as started:
        await states_become(started.database, ["delivered"])
    deferred, answer = discord_fake.interaction_responses
    assert deferred["kind"] == "callback"  # by the first process
    assert answer["kind"] == "edit_original" and answer["token"] == ask["token"]
    assert answer["body"] == {"content": "Paris.", "tts": False, "allowed_mentions": QUIET}
    assert len(fake_openai.chat_requests) == 2
    # The commands did not change: the second start read them and did not upload them again
    # (Discord rate-limits uploads hard).
    assert len(discord_fake.calls_to("PUT", "/applications/")) == 1
    assert len(discord_fake.calls_to("GET", "/applications/")) == 2


# --- the database down while messages arrive -------------------------------------------------


async def test_messages_are_held_while_the_database_is_down_and_kept_in_order(
    discord_fake: FakeDiscord,
    fake_openai: FakeOpenAI,
    sqlite_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("adapters.base.HOLD_RETRY_SECONDS", 0.1)
    fake_openai.reply("first")
    fake_openai.reply("second")
    async with running(discord_fake, fake_openai, sqlite_url) as started:
        store = started.runtime.store
        accept = store.accept
        failures = [down_error() for _ in range(3)]

        async def flaky(**values: Any) -> Any:
            if failures:
                raise failures.pop()
            return await accept(**values)

        store.accept = flaky  # type: ignore[method-assign]
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("one"))
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("two"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["first", "second"])
    assert [r["messages"][-1]["content"] for r in fake_openai.chat_requests] == [
        "Alice: one",
        "Alice: two",
    ]
