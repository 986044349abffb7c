"""Real runs for the pictures: Parley's bots against the tests' fake platforms and model.

Each `*_chat` function starts the real bot (slack-bolt, discord.py, python-telegram-bot, or
`parley chat` on a pseudo-terminal) exactly as the tests do, by importing the tests' own
helpers, sends the exchange in `EXCHANGE`, and returns what the fake platform holds at the
end: the bot's messages as last posted or edited, in the platform's own markup, between the
user's messages as they were sent.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cli.test_chat import environment
from tests.cli.test_chat_terminal import terminal
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import states_become

# What the user says (None: a command, answered by Parley itself) and what the scripted
# model answers, in Markdown as a model writes it.
QUESTION = "What is a lease in Parley?"
ANSWER = (
    "A **lease** is a process's claim on the message it is answering: an owner and an "
    "expiry, renewed every third of `PARLEY_LEASE_SECONDS` (20 s by default).\n\n"
    "- If the process dies, any Parley process on the same database takes the message "
    "over once the lease has expired.\n"
    "- A process that lost its lease stores nothing, so no message is answered twice."
)
COMMAND = "/persona coder"
FOLLOW_UP = "How do I make leases last a minute?"
FOLLOW_UP_ANSWER = (
    "Set it in `.env` and restart:\n\n"
    "```sh\nPARLEY_LEASE_SECONDS=60\n```\n\n"
    "A longer lease means a crashed process's message waits longer before another "
    "process takes it over."
)


def script(model: FakeOpenAI) -> None:
    model.reply(ANSWER, chunk_size=12)
    model.reply(FOLLOW_UP_ANSWER, chunk_size=12)


@dataclass
class Message:
    author: str
    bot: bool
    text: str  # in the platform's markup: Slack mrkdwn, Discord Markdown, Telegram plain text
    entities: list[dict[str, Any]] = field(default_factory=list)  # Telegram's
    note: str = ""  # "only you can see this", the message replied to, ...
    thread: str = ""  # a thread's name, when the message opened one


def _new(records: list[Any], seen: int) -> list[Any]:
    return records[seen:]


# --- Slack -------------------------------------------------------------------------------


async def slack_chat(workdir: Path) -> list[Message]:
    """#general: Alice mentions @Parley, then runs `@Parley /persona coder` and asks a
    follow-up in the thread without a mention."""
    from tests.fakes.slack_server import FakeSlack, app_mention, channel_message, next_ts
    from tests.platforms.test_slack import running, slack_settings

    shown: list[Message] = []
    async with FakeOpenAI() as model, FakeSlack() as slack:
        slack.users.update({"U1": "Alice"})
        script(model)
        database = f"sqlite+aiosqlite:///{workdir}/slack.db"
        async with running(slack_settings(slack, model, database)) as bot:
            thread = next_ts()
            steps = [
                app_mention(f"<@UBOT> {QUESTION}", ts=thread),
                app_mention(f"<@UBOT> {COMMAND}", thread_ts=thread),
                channel_message(FOLLOW_UP, thread_ts=thread),
            ]
            for number, event in enumerate(steps, 1):
                before = len(slack.messages_in("C1", thread))
                await bot.deliver(event)
                await states_become(bot.database, ["delivered"] * number)
                text = event["text"].replace("<@UBOT>", "@Parley")
                shown.append(Message("Alice", False, text))
                for posted in _new(slack.messages_in("C1", thread), before):
                    shown.append(Message("Parley", True, posted["text"]))
    return shown


# --- Discord -----------------------------------------------------------------------------


async def discord_chat(workdir: Path) -> list[Message]:
    """#general: Alice mentions @Parley, which opens a thread; in it she runs the slash
    command /persona (answered privately) and asks a follow-up."""
    from tests.fakes.discord_server import (
        BOT_USER,
        FakeDiscord,
        interaction_create,
        message_create,
        thread_channel,
        thread_create,
    )
    from tests.platforms.test_discord import running

    shown: list[Message] = []
    async with FakeOpenAI() as model, FakeDiscord() as fake:
        script(model)
        database = f"sqlite+aiosqlite:///{workdir}/discord.db"
        async with running(fake, model, database) as runtime:
            database_engine = runtime.store.engine
            question = message_create(f"<@1000> {QUESTION}", mentions=[BOT_USER])
            thread = question["id"]  # a thread started from a message has its id
            await fake.dispatch("MESSAGE_CREATE", question)
            await states_become(database_engine, ["delivered"])
            [opened] = fake.threads
            shown.append(Message("Alice", False, f"@Parley {QUESTION}", thread=opened["name"]))
            for record in fake.messages_in(thread):
                shown.append(Message("Parley", True, record["content"]))
            await fake.dispatch("THREAD_CREATE", thread_create(opened["name"], thread_id=thread))

            before = len(fake.messages_in(thread))
            name = COMMAND.split()[1]
            channel = thread_channel(opened["name"], thread_id=thread)
            command = interaction_create(
                "persona", {"name": name}, channel_id=thread, channel=channel
            )
            await fake.dispatch("INTERACTION_CREATE", command)
            await states_become(database_engine, ["delivered"] * 2)
            shown.append(Message("Alice", False, COMMAND, note="used /persona"))
            for record in _new(fake.messages_in(thread), before):
                private = bool(record["message"]["flags"] & 64)
                note = "Only you can see this" if private else ""
                shown.append(Message("Parley", True, record["content"], note=note))

            before = len(fake.messages_in(thread))
            follow_up = message_create(FOLLOW_UP, channel_id=thread)
            await fake.dispatch("MESSAGE_CREATE", follow_up)
            await states_become(database_engine, ["delivered"] * 3)
            shown.append(Message("Alice", False, FOLLOW_UP))
            for record in _new(fake.messages_in(thread), before):
                reference = record.get("message_reference") or {}
                replied = str(reference.get("message_id", "")) == follow_up["id"]
                note = f"@Alice {FOLLOW_UP}" if replied else ""
                shown.append(Message("Parley", True, record["content"], note=note))
    return shown


# --- Telegram ----------------------------------------------------------------------------


async def telegram_chat(workdir: Path) -> list[Message]:
    """A private chat with the bot: a question, /persona coder, a follow-up."""
    from tests.fakes.telegram_server import FakeTelegram, private_message
    from tests.platforms.test_telegram import running, telegram_settings

    shown: list[Message] = []
    async with FakeOpenAI() as model, FakeTelegram() as telegram:
        script(model)
        database = f"sqlite+aiosqlite:///{workdir}/telegram.db"
        async with running(telegram_settings(telegram, model, database)) as bot:
            for number, text in enumerate([QUESTION, COMMAND, FOLLOW_UP], 1):
                before = len(telegram.messages_in(1))
                update = private_message(text)
                telegram.push(update)
                await states_become(bot.database, ["delivered"] * number)
                shown.append(Message("Alice", False, text, update["message"].get("entities", [])))
                for record in _new(telegram.messages_in(1), before):
                    replied = record["message"].get("reply_to_message")
                    note = "Alice" if replied else ""
                    shown.append(
                        Message("Parley", True, record["plain"], record["entities"], note=note)
                    )
    return shown


# --- the terminal ------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def terminal_chat(workdir: Path) -> str:
    """`parley chat` on a pseudo-terminal, typed into as a person would; returns what the
    terminal showed (the typed lines are its echo)."""
    async with FakeOpenAI() as model:
        script(model)
        env = environment(model, workdir, PARLEY_LOG_LEVEL="WARNING")
        async with terminal(env, workdir) as chat:
            await chat.shows("you> ")
            for line in [QUESTION, COMMAND, FOLLOW_UP]:
                chat.type(line + "\n")
                await chat.shows(line)  # the echo
                await chat.shows("you> ")
            chat.type("/exit\n")
            await chat.shows("/exit")
            await asyncio.wait_for(chat.process.wait(), 15)
    shown = ANSI.sub("", chat.shown).replace("\r\n", "\n").replace("\r", "")
    return shown


async def capture_all() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="parley-pictures-") as scratch:
        root = Path(scratch)
        for name in ("slack", "discord", "telegram", "terminal"):
            (root / name).mkdir()
        return {
            "slack": await slack_chat(root / "slack"),
            "discord": await discord_chat(root / "discord"),
            "telegram": await telegram_chat(root / "telegram"),
            "terminal": await terminal_chat(root / "terminal"),
        }
