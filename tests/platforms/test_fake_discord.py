"""FakeDiscord against the real discord.py (REST + gateway), without Parley's code."""

from __future__ import annotations

import asyncio
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

# discord.py imports the stdlib `audioop` (voice), deprecated since 3.11: with pytest's
# `filterwarnings = error` that DeprecationWarning would fail the import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import discord
    import discord.gateway
    import discord.http
    from discord import app_commands

from tests.fakes.discord_server import (
    BOT_USER,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    FakeDiscord,
    dm_message_create,
    interaction_create,
    message_create,
    patched,
    thread_channel,
)

TOKEN = "fake.bot.token"
INTENTS = discord.Intents.default() | discord.Intents(message_content=True)


@dataclass
class Bot:
    client: discord.Client
    tree: app_commands.CommandTree
    messages: list[discord.Message] = field(default_factory=list)
    commands: list[tuple[str, str]] = field(default_factory=list)  # (command, question)
    resumed: int = 0


@asynccontextmanager
async def running(fake: FakeDiscord, **client_options: Any) -> AsyncIterator[Bot]:
    """A logged-in, ready discord.Client with an /ask command, closed cleanly afterwards."""
    client = discord.Client(intents=INTENTS, guild_ready_timeout=0.1, **client_options)
    tree = app_commands.CommandTree(client)
    bot = Bot(client, tree)

    @client.event
    async def on_message(message: discord.Message) -> None:
        bot.messages.append(message)

    @client.event
    async def on_resumed() -> None:
        bot.resumed += 1

    @tree.command(name="ask", description="Ask Parley")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await interaction.response.defer()
        bot.commands.append(("ask", question))
        await interaction.followup.send("answer", allowed_mentions=discord.AllowedMentions.none())
        await interaction.edit_original_response(content="done")

    async with patched(fake):
        await client.login(TOKEN)
        task = asyncio.create_task(client.connect(reconnect=True))
        try:
            await asyncio.wait_for(client.wait_until_ready(), 10)
            yield bot
        finally:
            await client.close()
            await asyncio.wait_for(task, 10)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        yield fake


async def wait_messages(fake: FakeDiscord, bot: Bot, count: int) -> list[discord.Message]:
    await fake.wait_for(lambda: len(bot.messages) >= count, what=f"{count} on_message call(s)")
    return bot.messages


async def test_patched_restores_class_attributes(fake: FakeDiscord) -> None:
    base, gateway = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with patched(fake):
        assert fake.api_url == discord.http.Route.BASE
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == fake.gateway_url
    assert base == discord.http.Route.BASE
    assert gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


async def test_login_ready_message_and_send(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        client = bot.client
        assert client.user is not None and client.user.id == int(BOT_USER["id"])
        assert client.application_id == int(fake.application_id)
        # login: GET /users/@me and GET /oauth2/applications/@me; plain Client: no /gateway
        assert [c.path for c in fake.calls[:2]] == ["/users/@me", "/oauth2/applications/@me"]
        assert not fake.calls_to("GET", "/gateway")
        # IDENTIFY carries the intents; discord.py 2.7.1 asks for zlib-stream and gets it
        assert fake.identify_payloads[0]["intents"] == INTENTS.value
        assert fake.identify_payloads[0]["token"] == TOKEN
        assert fake.gateway_connections[0]["path"] == "/gateway"
        assert fake.gateway_connections[0]["query"] == {
            "v": "10",
            "encoding": "json",
            "compress": "zlib-stream",
        }
        assert fake.heartbeats >= 1
        guild = client.get_guild(int(GUILD_ID))
        assert guild is not None and guild.name == "Parley Test"
        channel = client.get_channel(int(CHANNEL_ID))
        assert isinstance(channel, discord.TextChannel)

        await fake.dispatch(
            "MESSAGE_CREATE",
            message_create("<@1000> hello", mentions=[BOT_USER]),
        )
        (message,) = await wait_messages(fake, bot, 1)
        assert message.content == "<@1000> hello"
        assert message.channel is channel
        assert message.guild is guild
        assert client.user in message.mentions
        assert message.author.name == "alice"

        sent = await channel.send("x @everyone", allowed_mentions=discord.AllowedMentions.none())
        call = fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages")[-1]
        assert call.body["allowed_mentions"] == {"parse": []}
        assert call.body["content"] == "x @everyone"
        assert set(call.body) == {
            "content",
            "tts",
            "allowed_mentions",
            "components",
            "nonce",
            "enforce_nonce",
        }
        assert call.headers["Authorization"] == f"Bot {TOKEN}"
        assert fake.messages[(CHANNEL_ID, str(sent.id))]["content"] == "x @everyone"

        reply = await message.reply("re", mention_author=False)
        body = fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages")[-1].body
        assert body["message_reference"] == {
            "message_id": message.id,
            "channel_id": message.channel.id,
            "guild_id": guild.id,
        }
        assert body["allowed_mentions"] == {
            "parse": ["everyone", "users", "roles"],
            "replied_user": False,
        }
        assert reply.reference is not None and reply.reference.message_id == message.id

        await channel.typing()
        assert fake.typing == [CHANNEL_ID]
        await sent.edit(content="y")
        await sent.delete()
        record = fake.messages[(CHANNEL_ID, str(sent.id))]
        assert record["versions"] == ["x @everyone", "y"] and record["deleted"]
        assert [m["content"] for m in fake.messages_in(CHANNEL_ID)] == ["re"]


async def test_text_frames_and_no_ratelimit_headers() -> None:
    """discord.py copes with uncompressed text frames and with no X-RateLimit-* headers."""
    fake_discord = FakeDiscord(zlib_stream=False, ratelimit_headers=False)
    async with fake_discord as fake, running(fake) as bot:
        await fake.dispatch("MESSAGE_CREATE", message_create("plain"))
        (message,) = await wait_messages(fake, bot, 1)
        assert message.content == "plain"
        sent = await message.channel.send("ok")
        await sent.edit(content="ok!")
        assert fake.messages_in(CHANNEL_ID)[0]["versions"] == ["ok", "ok!"]


async def test_slash_command_sync_defer_followup_edit(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        synced = await bot.tree.sync()
        assert [c.name for c in synced] == ["ask"]
        (call,) = fake.calls_to("PUT", f"/applications/{fake.application_id}/commands")
        assert call.body[0]["name"] == "ask"
        assert call.body[0]["options"][0]["name"] == "question"
        assert fake.commands[None][0]["id"] == str(synced[0].id)

        guild_synced = await bot.tree.sync(guild=discord.Object(int(GUILD_ID)))
        assert guild_synced == [] and fake.commands[GUILD_ID] == []

        payload = interaction_create("ask", {"question": "why?"}, command_id=str(synced[0].id))
        await fake.dispatch("INTERACTION_CREATE", payload)
        responses = await fake.wait_interaction_responses(3)
        assert bot.commands == [("ask", "why?")]
        callback, followup, edit = responses
        assert callback["kind"] == "callback" and callback["type"] == 5
        assert callback["interaction_id"] == payload["id"]
        assert callback["token"] == payload["token"]
        assert followup["kind"] == "followup"
        assert followup["body"]["content"] == "answer"
        assert followup["body"]["allowed_mentions"] == {"parse": []}
        assert edit["kind"] == "edit_original" and edit["body"]["content"] == "done"
        # paths as discord.py builds them; the callback asks for the callback resource back
        (cb,) = fake.calls_to("POST", f"/interactions/{payload['id']}/{payload['token']}/callback")
        assert cb.query == {"with_response": "1"} and cb.status == 200
        assert cb.body == {"type": 5}
        assert fake.calls_to("POST", f"/webhooks/{fake.application_id}/{payload['token']}")
        assert fake.calls_to(
            "PATCH", f"/webhooks/{fake.application_id}/{payload['token']}/messages/@original"
        )
        assert [m["content"] for m in fake.messages_in(CHANNEL_ID)] == ["done", "answer"]


async def test_rate_limited_edit_is_retried_by_discord_py(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        channel = bot.client.get_channel(int(CHANNEL_ID))
        assert isinstance(channel, discord.TextChannel)
        sent = await channel.send("v1")
        fake.fail_next("PATCH", "/channels/", retry_after=0.3)
        started = time.monotonic()
        edited = await sent.edit(content="v2")
        elapsed = time.monotonic() - started
        assert edited.content == "v2"
        first, second = fake.calls_to("PATCH", f"/channels/{CHANNEL_ID}/messages/{sent.id}")
        assert first.status == 429 and second.status == 200
        assert second.at - first.at >= 0.3 and elapsed >= 0.3
        assert first.response == {
            "message": "You are being rate limited.",
            "retry_after": 0.3,
            "global": False,
        }
        assert fake.messages[(CHANNEL_ID, str(sent.id))]["versions"] == ["v1", "v2"]


async def test_scripted_error_raises(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        channel = bot.client.get_channel(int(CHANNEL_ID))
        assert isinstance(channel, discord.TextChannel)
        fake.fail_next("POST", "/channels/", status=403)
        with pytest.raises(discord.Forbidden):
            await channel.send("nope")
        with pytest.raises(discord.HTTPException) as info:
            await channel.send("z" * 2001)
        assert info.value.code == 50035


async def test_reconnect_resumes_and_replays(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        session = fake.session_id
        await fake.send_reconnect()
        # Sent on the socket the client is abandoning: it arrives through the RESUME replay.
        await fake.dispatch("MESSAGE_CREATE", message_create("during"))
        await fake.resumed(1)
        await fake.connected()
        assert fake.resumes == 1 and len(fake.identify_payloads) == 1
        assert fake.resume_payloads[0]["session_id"] == session
        assert fake.resume_payloads[0]["token"] == TOKEN
        assert fake.gateway_connections[-1]["path"] == "/resume"  # resume_gateway_url
        await fake.dispatch("MESSAGE_CREATE", message_create("after"))
        await wait_messages(fake, bot, 2)
        await fake.wait_for(lambda: bot.resumed == 1, what="on_resumed")
        assert [m.content for m in bot.messages] == ["during", "after"]


async def test_dm_message_is_a_dm_channel(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        calls_before = len(fake.calls)
        await fake.dispatch("MESSAGE_CREATE", dm_message_create("psst"))
        (message,) = await wait_messages(fake, bot, 1)
        assert isinstance(message.channel, discord.DMChannel)
        assert message.guild is None and message.channel.id == int(DM_CHANNEL_ID)
        assert len(fake.calls) == calls_before  # resolved from the payload alone
        await message.channel.send("hi")
        assert [m["content"] for m in fake.messages_in(DM_CHANNEL_ID)] == ["hi"]


async def test_thread_from_message(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        await fake.dispatch("MESSAGE_CREATE", message_create("start a thread"))
        (message,) = await wait_messages(fake, bot, 1)
        channel = message.channel
        assert isinstance(channel, discord.TextChannel)
        thread = await message.create_thread(name="Parley: start a thread")
        assert isinstance(thread, discord.Thread)
        assert thread.id == message.id and thread.parent_id == int(CHANNEL_ID)
        assert fake.threads[0]["name"] == "Parley: start a thread"
        await thread.send("in thread")
        assert [m["content"] for m in fake.messages_in(str(thread.id))] == ["in thread"]
        with pytest.raises(discord.HTTPException):
            await channel.create_thread(name="x" * 101, message=message)


async def test_client_wide_allowed_mentions_default(fake: FakeDiscord) -> None:
    async with running(fake, allowed_mentions=discord.AllowedMentions.none()) as bot:
        await fake.dispatch("MESSAGE_CREATE", message_create("hi"))
        (message,) = await wait_messages(fake, bot, 1)
        await message.channel.send("@everyone <@1>")
        await message.reply("re")
        first, second = fake.calls_to("POST", f"/channels/{CHANNEL_ID}/messages")
        assert first.body["allowed_mentions"] == {"parse": []}
        # Message.reply without mention_author keeps the client default: no ping at all
        assert second.body["allowed_mentions"] == {"parse": []}


async def test_dm_interaction(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        payload = interaction_create(
            "ask", {"question": "dm?"}, guild_id=None, channel_id=DM_CHANNEL_ID
        )
        await fake.dispatch("INTERACTION_CREATE", payload)
        await fake.wait_interaction_responses(3)
        assert bot.commands == [("ask", "dm?")]
        assert [m["content"] for m in fake.messages_in(DM_CHANNEL_ID)] == ["done", "answer"]


async def test_an_outage_fails_every_request_for_a_while(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        channel = bot.client.get_partial_messageable(int(DM_CHANNEL_ID))
        fake.fail_for(0.5, "/channels/", responses=[(503, "<html>503 Service Unavailable</html>")])
        with pytest.raises(discord.DiscordServerError) as info:
            await channel.send("during")
        assert info.value.status == 503 and info.value.text == (
            "<html>503 Service Unavailable</html>"
        )
        await asyncio.sleep(0.5)
        await channel.send("after")
        assert [m["content"] for m in fake.messages_in(DM_CHANNEL_ID)] == ["after"]
        assert [c.status for c in fake.calls_to("POST", "/channels/")] == [503, 200]


async def test_an_outage_answers_its_responses_in_order(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        channel = bot.client.get_partial_messageable(int(DM_CHANNEL_ID))
        fake.fail_for(30, "/channels/", method="POST", responses=[403, (503, "down"), 404])
        for expected in (discord.Forbidden, discord.DiscordServerError, discord.NotFound):
            with pytest.raises(expected):
                await channel.send("x")
        with pytest.raises(discord.NotFound):  # the last one repeats
            await channel.send("x")


async def test_messages_and_threads_left_by_an_earlier_process(fake: FakeDiscord) -> None:
    async with running(fake) as bot:
        record = fake.add_message(CHANNEL_ID, "…")
        channel = bot.client.get_partial_messageable(int(CHANNEL_ID), guild_id=int(GUILD_ID))
        await channel.get_partial_message(int(record["id"])).edit(content="done")
        assert fake.messages[(CHANNEL_ID, record["id"])]["versions"] == ["…", "done"]

        question = message_create("start a thread")
        fake.add_thread(thread_channel("earlier", thread_id=question["id"]))
        with pytest.raises(discord.HTTPException) as info:
            await channel.get_partial_message(int(question["id"])).create_thread(name="again")
        assert (info.value.status, info.value.code) == (400, 160004)
        assert [t["name"] for t in fake.threads] == ["earlier"]
