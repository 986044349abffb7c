"""Real-shaped Discord gateway payloads through discord.py against the fake Discord.

Each case is a list of dispatches shaped like Discord's API docs and discord.py's own test
data. For each: whether the bot answers and where, the exact text the model read, and which
conversation stored it. Every case ends with a DM ("ping"): once that is answered, whatever
the case started is done, and the model must have seen the ping after the case's own text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.discord.bot import DiscordBot
from core import wording
from core.events import ConversationKey
from tests.fakes.discord_server import (
    BOT_ROLE_ID,
    BOT_USER,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    GUILD_ID,
    FakeDiscord,
    dm_message_create,
    interaction_create,
    message_create,
    next_snowflake,
    now_iso,
    thread_create,
    user_payload,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import stored_messages
from tests.platforms.running import Running, platform_settings
from tests.platforms.running import running as running_platform

ANSWER = "Answer."
PONG = "Pong."
PING_CHANNEL = "5999"
INTERACTION = "interaction"


@dataclass(frozen=True)
class Case:
    name: str
    events: tuple[tuple[str, dict[str, Any]], ...]
    seen: str | None = None  # what the model read last; None: the model is not called
    answer_in: str | None = None  # channel id, or INTERACTION; None: not answered
    answer: str = ANSWER
    key: ConversationKey | None = None


def guild_key(thread: str = "") -> ConversationKey:
    return ConversationKey("discord", GUILD_ID, CHANNEL_ID, thread)


DM_KEY = ConversationKey("discord", "", DM_CHANNEL_ID)


def mention(text: str, **extra: Any) -> dict[str, Any]:
    return message_create(f"<@{BOT_USER['id']}> {text}", mentions=[BOT_USER], **extra)


# A CDN that refuses connections: downloads fail at once, and nothing leaves the machine
# (tests/platforms/test_discord_attachments.py downloads from the fake Discord's CDN).
NO_CDN = "http://127.0.0.1:9"
NOT_DOWNLOADED = "I could not download photo.png; please send it again."


def attachment(name: str = "photo.png") -> dict[str, Any]:
    return {
        "id": next_snowflake(),
        "filename": name,
        "size": 2048,
        "url": f"{NO_CDN}/attachments/1/2/{name}",
        "proxy_url": f"{NO_CDN}/media/attachments/1/2/{name}",
        "content_type": "image/png",
        "width": 64,
        "height": 64,
    }


def with_fields(payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**payload, **fields}


def system_message(kind: int, content: str = "") -> dict[str, Any]:
    return with_fields(message_create(content), type=kind)


def bot_message(content: str) -> dict[str, Any]:
    return {
        "id": next_snowflake(),
        "channel_id": CHANNEL_ID,
        "guild_id": GUILD_ID,
        "author": dict(BOT_USER),
        "content": content,
        "timestamp": now_iso(),
        "edited_timestamp": None,
        "tts": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
        "attachments": [],
        "embeds": [],
        "pinned": False,
        "type": 0,
        "flags": 0,
    }


def reply_to_bot(text: str) -> dict[str, Any]:
    earlier = bot_message("Earlier answer.")
    data = message_create(text, reply_to=earlier["id"], mentions=[BOT_USER])
    data["referenced_message"] = earlier
    return data


def docs_interaction() -> dict[str, Any]:
    """The guild example of Discord's "Interaction Object" docs: no `version` ... fields
    discord.py reads, no `attachment_size_limit`."""
    data = interaction_create("ask", {"prompt": "from the docs"})
    for field in ("version", "attachment_size_limit", "entitlements"):
        data.pop(field)
    return data


_thread = next_snowflake()
_forward_guild = message_create("", forwarded="Forwarded: what is 2+2?")
_mention = mention("what is 2+2?")
_role = with_fields(message_create(f"<@&{BOT_ROLE_ID}> what is 2+2?"), mention_roles=[BOT_ROLE_ID])
_thread_message = mention("in a thread", channel_id=_thread)
_reply = reply_to_bot("and why?")
_ask = interaction_create("ask", {"prompt": "Capital of France?"})
_ask_dm = interaction_create(
    "ask", {"prompt": "Capital of Spain?"}, channel_id=DM_CHANNEL_ID, guild_id=None
)
_text_and_file = with_fields(mention("what is in it?"), attachments=[attachment()])
_docs = docs_interaction()
_bare = mention("")

CASES = [
    Case(
        "guild_mention",
        (("MESSAGE_CREATE", _mention),),
        seen="Alice: what is 2+2?",
        answer_in=_mention["id"],
        key=guild_key(_mention["id"]),
    ),
    Case(
        "role_mention",
        (("MESSAGE_CREATE", _role),),
        seen="Alice: what is 2+2?",
        answer_in=_role["id"],
        key=guild_key(_role["id"]),
    ),
    Case(
        "dm",
        (("MESSAGE_CREATE", dm_message_create("hello")),),
        seen="Alice: hello",
        answer_in=DM_CHANNEL_ID,
        key=DM_KEY,
    ),
    Case(
        "thread_message_with_a_mention",
        (
            ("THREAD_CREATE", thread_create("talk", thread_id=_thread, owner_id="1")),
            ("MESSAGE_CREATE", _thread_message),
        ),
        seen="Alice: in a thread",
        answer_in=_thread,
        key=guild_key(_thread),
    ),
    Case(
        "reply_to_the_bot",
        (("MESSAGE_CREATE", _reply),),
        seen="Alice: and why?",
        answer_in=_reply["id"],
        key=guild_key(_reply["id"]),
    ),
    Case(
        "forwarded_in_a_dm",
        (("MESSAGE_CREATE", dm_message_create("", forwarded="What is 2+2?")),),
        seen="Alice: What is 2+2?",
        answer_in=DM_CHANNEL_ID,
        key=DM_KEY,
    ),
    Case("forwarded_in_a_channel_not_for_the_bot", (("MESSAGE_CREATE", _forward_guild),)),
    Case(
        "attachment_only_dm",
        (("MESSAGE_CREATE", with_fields(dm_message_create(""), attachments=[attachment()])),),
        answer_in=DM_CHANNEL_ID,
        answer=NOT_DOWNLOADED,  # nothing else to answer: the model is not called
        key=DM_KEY,
    ),
    Case(
        "text_and_attachment_mention",
        (("MESSAGE_CREATE", _text_and_file),),
        seen="Alice: what is in it?",
        answer_in=_text_and_file["id"],
        answer=f"_{NOT_DOWNLOADED}_\n\n{ANSWER}",
        key=guild_key(_text_and_file["id"]),
    ),
    Case(
        "sticker_only_dm",
        (
            (
                "MESSAGE_CREATE",
                with_fields(
                    dm_message_create(""),
                    sticker_items=[{"id": next_snowflake(), "name": "wave", "format_type": 1}],
                ),
            ),
        ),
        answer_in=DM_CHANNEL_ID,
        answer=wording.ATTACHMENT_ONLY,
        key=DM_KEY,
    ),
    Case(
        "embeds_only_in_a_channel",
        (
            (
                "MESSAGE_CREATE",
                with_fields(
                    message_create(""),
                    embeds=[{"type": "rich", "title": "Release", "description": "v2"}],
                ),
            ),
        ),
    ),
    Case("member_join", (("MESSAGE_CREATE", system_message(7)),)),
    Case("pin_added", (("MESSAGE_CREATE", system_message(6)),)),
    Case("own_message", (("MESSAGE_CREATE", bot_message("<@1000> talking to myself")),)),
    Case(
        "another_bots_mention",
        (
            (
                "MESSAGE_CREATE",
                with_fields(
                    mention("hello bot"), author=user_payload("8000", "otherbot", bot=True)
                ),
            ),
        ),
    ),
    Case(
        "webhook_message",
        (("MESSAGE_CREATE", with_fields(mention("from a webhook"), webhook_id="8100")),),
    ),
    Case(
        "message_update_of_a_mention",
        (
            (
                "MESSAGE_UPDATE",
                with_fields(mention("edited question"), edited_timestamp=now_iso()),
            ),
        ),
    ),
    Case("channel_chatter", (("MESSAGE_CREATE", message_create("just chatting")),)),
    Case(
        "bare_mention",
        (("MESSAGE_CREATE", _bare),),
        answer_in=_bare["id"],
        answer="Commands:",
        key=guild_key(_bare["id"]),
    ),
    Case(
        "ask_in_a_guild",
        (("INTERACTION_CREATE", _ask),),
        seen="Alice: Capital of France?",
        answer_in=INTERACTION,
        key=guild_key("user:1"),
    ),
    Case(
        "ask_in_a_dm",
        (("INTERACTION_CREATE", _ask_dm),),
        seen="Alice: Capital of Spain?",
        answer_in=INTERACTION,
        key=DM_KEY,
    ),
    Case(
        "ask_shaped_like_the_docs_example",
        (("INTERACTION_CREATE", _docs),),
        seen="Alice: from the docs",
        answer_in=INTERACTION,
        key=guild_key("user:1"),
    ),
    Case(
        "ask_delivered_twice",
        (("INTERACTION_CREATE", _ask), ("INTERACTION_CREATE", _ask)),
        seen="Alice: Capital of France?",
        answer_in=INTERACTION,
        key=guild_key("user:1"),
    ),
    Case(
        "component_interaction",
        (
            (
                "INTERACTION_CREATE",
                with_fields(
                    interaction_create(),
                    type=3,
                    data={"custom_id": "approve", "component_type": 2},
                    message=bot_message("Pick one"),
                ),
            ),
        ),
    ),
    Case(
        "autocomplete",
        (
            (
                "INTERACTION_CREATE",
                with_fields(
                    interaction_create(),
                    type=4,
                    data={
                        "id": next_snowflake(),
                        "name": "ask",
                        "type": 1,
                        "options": [{"name": "prompt", "type": 3, "value": "Cap", "focused": True}],
                    },
                ),
            ),
        ),
    ),
]


@asynccontextmanager
async def running(
    fake: FakeDiscord, fake_openai: FakeOpenAI, database: str
) -> AsyncIterator[Running]:
    settings = platform_settings(
        fake_openai,
        database,
        DISCORD_BOT_TOKEN="discord-token",
        DISCORD_API_URL=fake.api_url,
        DISCORD_GATEWAY_URL=fake.gateway_url,
        PARLEY_DISCORD_UPDATE_INTERVAL=0.05,
    )
    with fake.patch_discord():
        async with running_platform(settings, "discord") as started:
            assert isinstance(started.bot, DiscordBot)
            yield started


def contents(fake: FakeDiscord, channel: str) -> list[str]:
    return [m["content"] for m in fake.messages_in(channel)]


def edits(fake: FakeDiscord) -> list[str]:
    return [
        str(r["body"].get("content"))
        for r in fake.interaction_responses
        if r["kind"] == "edit_original"
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_payload(
    case: Case, discord_fake: FakeDiscord, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    assert len(CASES) >= 18
    if case.seen:
        fake_openai.reply(ANSWER)
    fake_openai.reply(PONG)
    async with running(discord_fake, fake_openai, sqlite_url) as started:
        for event, payload in case.events:
            await discord_fake.dispatch(event, payload)
        if case.answer_in == INTERACTION:
            await discord_fake.wait_for(lambda: ANSWER in edits(discord_fake), what="answer")
        elif case.answer_in is not None:
            channel = case.answer_in
            await discord_fake.wait_for(
                lambda: any(c.startswith(case.answer) for c in contents(discord_fake, channel)),
                what=f"the answer in {channel}",
            )
        await discord_fake.dispatch(
            "MESSAGE_CREATE", dm_message_create("ping", channel_id=PING_CHANNEL)
        )
        await discord_fake.wait_for(
            lambda: contents(discord_fake, PING_CHANNEL) == [PONG], what="the ping"
        )

        seen = [r["messages"][-1]["content"] for r in fake_openai.chat_requests]
        assert seen == [*([case.seen] if case.seen else []), "Alice: ping"]
        callbacks = [r for r in discord_fake.interaction_responses if r["kind"] == "callback"]
        if case.answer_in == INTERACTION:
            assert [c["type"] for c in callbacks] == [5]  # deferred once
            assert edits(discord_fake)[-1] == ANSWER
            assert edits(discord_fake).count(ANSWER) == 1
        else:
            assert callbacks == []
        if case.answer_in not in (None, INTERACTION):
            [answer] = contents(discord_fake, str(case.answer_in))
            assert (
                answer == case.answer
                if case.answer != "Commands:"
                else answer.startswith("Commands:\n/help: ")
            )
        else:
            # Nothing but the ping's answer was posted in a channel.
            posted = [m for m in discord_fake.messages.values() if m["channel_id"] != PING_CHANNEL]
            assert [m for m in posted if m.get("interaction_token") is None] == []
        if case.key is not None:
            assert await started.runtime.store.conversation_exists(key=case.key)
            stored = await stored_messages(started.database)
            if case.seen:
                assert ("user", case.seen.removeprefix("Alice: ")) in stored
        else:
            assert [t for role, t in await stored_messages(started.database) if role == "user"] == [
                "ping"
            ]


async def test_a_payload_discord_py_cannot_read_costs_only_itself(
    discord_fake: FakeDiscord,
    fake_openai: FakeOpenAI,
    sqlite_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """discord.py parses a dispatch inside its gateway read loop: a parser raising there
    used to end the connection task silently, and every later event was lost."""
    broken = mention("lost")
    del broken["author"]  # discord.py's Message cannot be built without it
    fake_openai.reply(ANSWER)
    async with running(discord_fake, fake_openai, sqlite_url) as started:
        await discord_fake.dispatch("MESSAGE_CREATE", broken)
        later = mention("still there?")
        await discord_fake.dispatch("MESSAGE_CREATE", later)
        await discord_fake.wait_for(
            lambda: contents(discord_fake, later["id"]) == [ANSWER], what="the later answer"
        )
        assert [r["messages"][-1]["content"] for r in fake_openai.chat_requests] == [
            "Alice: still there?"
        ]
        assert await started.runtime.store.conversation_exists(key=guild_key(later["id"]))
    logged = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert logged == [
        "Discord: could not read a MESSAGE_CREATE event "
        "(AttributeError: 'Message' object has no attribute 'author'); it is skipped"
    ]


async def test_code_blocks_stay_closed_when_split_or_left_open(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    lines = "\n".join(f"print({n})  # a line of the listing" for n in range(90))
    long_answer = f"Here it is:\n\n```python\n{lines}\n```\n\nDone."
    fake_openai.reply(long_answer)
    fake_openai.reply("Start:\n```python\nprint(1)")  # the model stopped inside the block
    async with running(discord_fake, fake_openai, sqlite_url):
        first = dm_message_create("a long listing")
        await discord_fake.dispatch("MESSAGE_CREATE", first)
        await discord_fake.wait_for(
            lambda: (
                contents(discord_fake, DM_CHANNEL_ID)[-1:] != []
                and contents(discord_fake, DM_CHANNEL_ID)[-1].endswith("Done.")
            ),
            what="the whole listing",
        )
        parts = contents(discord_fake, DM_CHANNEL_ID)
        assert len(parts) >= 2 and all(len(p) <= 2000 for p in parts)
        # The cut inside the block closes it, and the next part opens it again.
        assert all(p.count("```") % 2 == 0 for p in parts)
        assert parts[-2].endswith("\n```") and parts[-1].startswith("```python\nprint(")
        await discord_fake.dispatch("MESSAGE_CREATE", dm_message_create("a short one"))
        await discord_fake.wait_for(
            lambda: (
                len(contents(discord_fake, DM_CHANNEL_ID)) > len(parts)
                and "print(1)" in contents(discord_fake, DM_CHANNEL_ID)[-1]
            ),
            what="the open block",
        )
        assert contents(discord_fake, DM_CHANNEL_ID)[-1] == "Start:\n```python\nprint(1)\n```"
