"""The Discord bot as users meet it: the real discord.py client against a fake Discord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import discord
import pytest

from adapters.discord.bot import DiscordBot
from core.events import ConversationKey
from core.scheduler import Scheduler
from tests.conftest import make_settings
from tests.fakes.discord_server import (
    BOT_USER,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    FakeDiscord,
    dm_message_create,
    interaction_create,
    message_create,
    thread_create,
)
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.platforms.running import Running, platform_settings
from tests.platforms.running import running as running_platform

QUIET: dict[str, Any] = {"parse": []}


@asynccontextmanager
async def started_discord(
    fake: FakeDiscord, fake_openai: FakeOpenAI, database: str, **extra: Any
) -> AsyncIterator[Running]:
    """`parley run discord` in this process against the fake gateway and API."""
    settings = platform_settings(
        fake_openai,
        database,
        **{
            "DISCORD_BOT_TOKEN": "discord-token",
            "DISCORD_API_URL": fake.api_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            "PARLEY_DISCORD_UPDATE_INTERVAL": 0.05,
            **extra,
        },
    )
    with fake.patch_discord():  # restores discord.py's class attributes afterwards
        async with running_platform(settings, "discord") as started:
            assert isinstance(started.bot, DiscordBot)
            yield started


@asynccontextmanager
async def running(
    fake: FakeDiscord, fake_openai: FakeOpenAI, database: str, **extra: Any
) -> AsyncIterator[Any]:
    async with started_discord(fake, fake_openai, database, **extra) as started:
        yield started.runtime


@pytest.fixture
def bot_factory(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, sqlite_url: str
) -> Callable[..., Any]:
    return lambda **extra: running(discord_fake, fake_openai, sqlite_url, **extra)


def contents(fake: FakeDiscord, channel: str) -> list[str]:
    return [m["content"] for m in fake.messages_in(channel)]


async def contents_become(fake: FakeDiscord, channel: str, expected: list[str]) -> None:
    await fake.wait_for(
        lambda: contents(fake, channel) == expected, what=f"channel {channel}: {expected!r}"
    )


async def test_ask_is_deferred_then_answered(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("**Paris**, on the Seine.", chunk_delay=0.02)
    async with bot_factory():
        commands = [c["name"] for c in discord_fake.commands[None]]
        assert sorted(commands) == [
            "ask",
            "forget",
            "help",
            "persona",
            "personas",
            "reset",
            "usage",
        ]
        await discord_fake.dispatch(
            "INTERACTION_CREATE", interaction_create("ask", {"prompt": "Capital of France?"})
        )
        answer = "**Paris**, on the Seine."
        await discord_fake.wait_for(
            lambda: any(
                r["kind"] == "edit_original" and r["body"].get("content") == answer
                for r in discord_fake.interaction_responses
            ),
            what="the answer in the original response",
        )
        first = discord_fake.interaction_responses[0]
        assert (first["kind"], first["type"]) == ("callback", 5)  # deferred at once
        edits = [r for r in discord_fake.interaction_responses if r["kind"] == "edit_original"]
        assert all(r["body"]["allowed_mentions"] == QUIET for r in edits)
    assert fake_openai.chat_requests[0]["messages"][-1] == {
        "role": "user",
        "content": "Alice: Capital of France?",
    }


async def test_a_mention_opens_a_thread_and_the_thread_continues_without_a_mention(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Four.")
    fake_openai.reply("Twelve.")
    async with bot_factory() as runtime:
        question = message_create("<@1000> what is 2+2?", mentions=[BOT_USER])
        await discord_fake.dispatch("MESSAGE_CREATE", question)
        thread_id = question["id"]  # a thread started from a message has its id
        await contents_become(discord_fake, thread_id, ["Four."])
        [thread] = discord_fake.threads
        assert thread["name"] == "what is 2+2?"

        await discord_fake.dispatch(
            "THREAD_CREATE", thread_create("what is 2+2?", thread_id=thread_id)
        )
        follow_up = message_create("and times 3?", channel_id=thread_id)
        await discord_fake.dispatch("MESSAGE_CREATE", follow_up)
        await contents_become(discord_fake, thread_id, ["Four.", "Twelve."])
        posts = discord_fake.calls_to("POST", f"/channels/{thread_id}/messages")
        first, second = (c.body for c in posts if c.path.endswith("/messages"))
        assert first["allowed_mentions"] == QUIET and "message_reference" not in first
        # The answer to a follow-up replies to it, and may notify only its author.
        assert second["allowed_mentions"] == {"parse": [], "replied_user": True}
        assert str(second["message_reference"]["message_id"]) == follow_up["id"]
        assert [m["content"] for m in fake_openai.chat_requests[1]["messages"][1:]] == [
            "Alice: what is 2+2?",
            "Four.",
            "Alice: and times 3?",
        ]
        assert await runtime.store.conversation_exists(
            key=ConversationKey("discord", GUILD_ID, CHANNEL_ID, thread_id)
        )
        # Plain channel chatter is not for the bot.
        await discord_fake.dispatch("MESSAGE_CREATE", message_create("lunch?"))
        await asyncio.sleep(0.3)
        assert len(fake_openai.chat_requests) == 2


async def test_a_direct_message_is_answered(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hello Alice.")
    async with bot_factory():
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("hi"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["Hello Alice."])


async def test_a_forwarded_message_is_read_from_its_snapshot(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A reminder about Friday.")
    async with bot_factory():
        forward = dm_message_create("", forwarded="Release moves to Friday.")
        await discord_fake.dispatch("MESSAGE_CREATE", forward)
        await contents_become(discord_fake, DM_CHANNEL_ID, ["A reminder about Friday."])
    assert fake_openai.chat_requests[0]["messages"][-1] == {
        "role": "user",
        "content": "Alice: Release moves to Friday.",
    }


async def test_model_output_never_pings(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hey @everyone and <@&77> and <@1>, look!")
    async with bot_factory():
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("ping them"))
        await discord_fake.wait_for(
            lambda: any("look!" in text for text in contents(discord_fake, DM_CHANNEL_ID))
        )
        for message in discord_fake.messages_in(DM_CHANNEL_ID):
            assert message["allowed_mentions"] in (QUIET, {"parse": [], "replied_user": True})
            assert "@everyone" not in message["content"]
            assert "<@&77>" not in message["content"] and "<@1>" not in message["content"]


async def test_a_five_thousand_character_answer_is_split_with_code_blocks_intact(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    code = "\n".join(f"let v{n} = {n};" for n in range(150))
    prose = " ".join(["The code below declares many values."] * 50)
    answer = f"{prose}\n\n```rust\n{code}\n```\n\n{prose}"
    assert len(answer) > 5000
    fake_openai.reply(answer, chunk_size=400)
    async with bot_factory():
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("long one"))
        await discord_fake.wait_for(
            lambda: (
                len(contents(discord_fake, DM_CHANNEL_ID)) >= 3
                and contents(discord_fake, DM_CHANNEL_ID)[-1].endswith("values.")
            ),
            what="the whole answer",
        )
    parts = contents(discord_fake, DM_CHANNEL_ID)
    assert all(len(part) <= 2000 for part in parts)
    assert all(part.count("```") % 2 == 0 for part in parts)
    shown = "".join(parts)
    assert all(f"let v{n} = {n};" in shown for n in range(150))


async def test_the_same_message_delivered_twice_is_answered_once(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = Reply("Once.", delay=0.2)
    async with bot_factory():
        question = message_create("<@1000> hello", mentions=[BOT_USER])
        await discord_fake.dispatch("MESSAGE_CREATE", question)
        await discord_fake.dispatch("MESSAGE_CREATE", question)
        await contents_become(discord_fake, question["id"], ["Once."])
        await asyncio.sleep(0.3)
    assert len(fake_openai.chat_requests) == 1
    assert len(discord_fake.threads) == 1  # no empty second thread


async def test_after_a_gateway_reconnect_the_bot_resumes_and_keeps_answering(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Before.")
    fake_openai.reply("After.")
    async with bot_factory():
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("one"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["Before."])
        await discord_fake.send_reconnect()
        await discord_fake.resumed()
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("two"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["Before.", "After."])
    assert discord_fake.resumes == 1


async def test_slash_persona_changes_the_channels_persona(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    async with bot_factory() as runtime:
        await discord_fake.dispatch(
            "INTERACTION_CREATE", interaction_create("persona", {"name": "coder"})
        )
        await discord_fake.wait_for(
            lambda: any(r["kind"] == "edit_original" for r in discord_fake.interaction_responses)
        )
        # Deferred privately, then the answer replaces the "thinking…" response, which keeps
        # it private: the same path as /ask, so a recovery can finish it by the token alone.
        deferred, answer = discord_fake.interaction_responses
        assert (deferred["kind"], deferred["type"]) == ("callback", 5)
        assert deferred["body"]["data"]["flags"] & 64  # ephemeral
        assert answer["kind"] == "edit_original" and "coder" in answer["body"]["content"]
        assert answer["body"]["allowed_mentions"] == QUIET
        assert answer["message"]["flags"] & 64
        channel = await runtime.store.channel(key=ConversationKey("discord", GUILD_ID, CHANNEL_ID))
        assert channel.persona == "coder"
    assert fake_openai.chat_requests == []


async def test_shard_settings_make_an_auto_sharded_client(engine_factory: Any) -> None:
    async with engine_factory() as runtime:
        settings = make_settings(
            DISCORD_BOT_TOKEN="token", DISCORD_SHARD_COUNT="4", DISCORD_SHARD_IDS="1,3"
        )
        # Built, not started: nothing is opened until login.
        scheduler = Scheduler(engine=runtime.engine, store=runtime.store)
        bot = DiscordBot(
            scheduler=scheduler, engine=runtime.engine, store=runtime.store, settings=settings
        )
        assert isinstance(bot.client, discord.AutoShardedClient)
        assert (bot.client.shard_count, bot.client.shard_ids) == (4, [1, 3])


async def test_slash_forget_asks_and_with_confirm_deletes_the_users_messages(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Noted.")
    async with bot_factory() as runtime:
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("my secret is 42"))
        await contents_become(discord_fake, DM_CHANNEL_ID, ["Noted."])

        async def answered(options: dict[str, Any]) -> str:
            before = len(discord_fake.interaction_responses)
            await discord_fake.dispatch(
                "INTERACTION_CREATE", interaction_create("forget", options, guild_id=None)
            )
            await discord_fake.wait_for(
                lambda: any(
                    r["kind"] == "edit_original"
                    for r in discord_fake.interaction_responses[before:]
                )
            )
            [edit] = [
                r
                for r in discord_fake.interaction_responses[before:]
                if r["kind"] == "edit_original"
            ]
            return str(edit["body"]["content"])

        assert (await answered({})).endswith("To go ahead, send /forget confirm")
        key = ConversationKey("discord", "", DM_CHANNEL_ID)
        state = await runtime.store.conversation(key=key)
        assert await runtime.store.recent_messages(
            conversation_id=state.id, after_id=0, before_id=None, limit=10
        )
        assert (await answered({"confirm": True})).startswith("Done: I deleted")
        state = await runtime.store.conversation(key=key)
        assert not await runtime.store.recent_messages(
            conversation_id=state.id, after_id=0, before_id=None, limit=10
        )
    assert len(fake_openai.chat_requests) == 1
