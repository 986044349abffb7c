"""The `parley` command itself: --version, one-line errors (`parley db`, a platform that
cannot be reached or refuses its token, an unexpected exception), --debug, and logs that never
show a secret."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path

import pytest

from tests.cli.test_chat import parley
from tests.durability.processes import (
    SLACK_SECRET,
    TELEGRAM_TOKEN,
    ParleyProcess,
    Processes,
    environment,
    model_settings,
    send_slack_event,
    slack_settings,
    telegram_settings,
)
from tests.fakes.discord_server import BOT_USER, FakeDiscord, message_create
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, app_mention, next_ts
from tests.fakes.telegram_server import FakeTelegram, private_message
from tests.platforms.running import run_error

OPENAI_KEY = "sk-proj-never-in-a-log-0123456789"
SLACK_TOKEN = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
DISCORD_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAw.GhIjKl.never-in-a-log-AbCdEfGhIjKlMnOpQrStUv"
TRACEBACK = "Traceback (most recent call last)"


@asynccontextmanager
async def bot_at_debug(
    tmp_path: Path, model: FakeOpenAI, platform: str, settings: dict[str, object]
) -> AsyncIterator[ParleyProcess]:
    """`parley run PLATFORM` at DEBUG, with the OpenAI key set, until the block ends."""
    async with Processes(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/p.db") as processes:
        yield await processes.start(
            platform,
            PARLEY_LOG_LEVEL="DEBUG",
            **{**model_settings(model), "OPENAI_API_KEY": OPENAI_KEY},
            **settings,
        )


async def test_version_names_the_installed_release(tmp_path: Path) -> None:
    code, out, _ = await parley("--version", stdin="", env=environment(), cwd=tmp_path)
    assert (code, out.strip()) == (0, f"parley {metadata.version('parley')}")


async def test_db_with_an_unreachable_server_is_one_line_without_the_password(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    url = f"postgresql://parley:hunter2-secret@127.0.0.1:{unused_tcp_port}/parley"
    env = environment(DATABASE_URL=url, OPENAI_API_KEY="sk-test", PARLEY_LOG_LEVEL=None)
    code, _, err = await parley("db", "current", stdin="", env=env, cwd=tmp_path)
    [line] = err.strip().splitlines()
    assert code == 2
    assert line.startswith("parley: DATABASE_URL: cannot use postgresql+asyncpg://parley:***@")
    assert "check that the database server is running" in line
    assert "hunter2-secret" not in err


async def test_db_with_an_unknown_revision_is_one_line(tmp_path: Path) -> None:
    env = environment(
        DATABASE_URL=f"sqlite:///{tmp_path}/p.db", OPENAI_API_KEY="sk-test", PARLEY_LOG_LEVEL=None
    )
    code, _, err = await parley("db", "upgrade", "nope", stdin="", env=env, cwd=tmp_path)
    assert (code, err.strip()) == (
        2,
        "parley: parley db upgrade: Can't locate revision identified by 'nope'",
    )


async def test_no_secret_reaches_the_log_even_at_debug_telegram(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("Hello!")
    async with (
        FakeTelegram() as telegram,
        bot_at_debug(tmp_path, fake_openai, "telegram", telegram_settings(telegram)) as bot,
    ):
        telegram.push(private_message("hi"))
        await telegram.wait_for(lambda: telegram.texts_in(1) == ["Hello!"], what="the answer")
        assert await bot.terminate() == 0
    # The Bot API's URLs carry the token: the log shows them, masked.
    assert "getUpdates" in bot.stderr and "[secret]" in bot.stderr
    assert TELEGRAM_TOKEN not in bot.stderr
    assert TELEGRAM_TOKEN.split(":")[1] not in bot.stderr
    assert OPENAI_KEY not in bot.stderr


async def test_no_secret_reaches_the_log_even_at_debug_slack(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("Hello!")
    async with (
        FakeSlack() as slack,
        bot_at_debug(
            tmp_path,
            fake_openai,
            "slack",
            {**slack_settings(slack), "SLACK_BOT_TOKEN": SLACK_TOKEN},
        ) as bot,
    ):
        ts = next_ts()
        await send_slack_event(bot, app_mention("<@UBOT> hi", ts=ts))
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("C1", ts)] == ["Hello!"],
            what="the answer",
        )
        assert await bot.terminate() == 0
    for secret in (SLACK_TOKEN, SLACK_SECRET, OPENAI_KEY):
        assert secret not in bot.stderr


async def test_no_secret_reaches_the_log_even_at_debug_discord(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("Hello!")
    async with (
        FakeDiscord() as discord,
        bot_at_debug(tmp_path, fake_openai, "discord", discord_settings(discord)) as bot,
    ):
        question = message_create("<@1000> hi", mentions=[BOT_USER])
        await discord.dispatch("MESSAGE_CREATE", question)
        await discord.wait_for(
            lambda: [m["content"] for m in discord.messages_in(question["id"])] == ["Hello!"],
            what="the answer",
        )
        assert await bot.terminate() == 0
    # The token was in use (REST headers, the gateway's IDENTIFY), and DEBUG logged a lot.
    assert discord.calls[0].headers["Authorization"] == f"Bot {DISCORD_TOKEN}"
    assert [p["token"] for p in discord.identify_payloads] == [DISCORD_TOKEN]
    assert " DEBUG discord." in bot.stderr
    for secret in (DISCORD_TOKEN, OPENAI_KEY):
        assert secret not in bot.stderr


# Reached on an unused port: nothing listens, the connection is refused.
UNREACHABLE = {
    "slack": ("Slack", "SLACK_API_URL", {"SLACK_SIGNING_SECRET": SLACK_SECRET}),
    "discord": ("Discord", "DISCORD_API_URL", {}),
}


@pytest.mark.parametrize("platform", ["slack", "discord"])
async def test_a_platform_that_cannot_be_reached_is_one_line_saying_so(
    tmp_path: Path, unused_tcp_port: int, platform: str
) -> None:
    name, setting, others = UNREACHABLE[platform]
    token = SLACK_TOKEN if platform == "slack" else DISCORD_TOKEN
    settings = {f"{platform.upper()}_BOT_TOKEN": token, **others}
    url = f"http://127.0.0.1:{unused_tcp_port}/api/"
    line = await run_error([platform], tmp_path, **settings, **{setting: url})
    assert line == (
        f"parley: {setting}: cannot reach {name} at 127.0.0.1:{unused_tcp_port} "
        f"(connection refused); check the network and {setting}"
    )


@pytest.mark.parametrize("error", ["invalid_auth", "not_authed"])
async def test_a_slack_token_slack_refuses_is_one_line_saying_so(
    tmp_path: Path, error: str
) -> None:
    async with FakeSlack() as slack:
        slack.fail_next("auth.test", error)
        line = await run_error(
            ["slack"],
            tmp_path,
            SLACK_BOT_TOKEN=SLACK_TOKEN,
            SLACK_SIGNING_SECRET=SLACK_SECRET,
            SLACK_API_URL=slack.api_url,
        )
    assert line == (
        f"parley: SLACK_BOT_TOKEN: Slack refused it ({error}); copy the Bot User OAuth Token "
        "from the app's OAuth & Permissions page"
    )


async def test_a_slack_app_token_slack_refuses_is_one_line_saying_so(tmp_path: Path) -> None:
    # slack_sdk alone would retry apps.connections.open forever, printing nothing.
    async with FakeSlack() as slack:
        slack.fail_next("apps.connections.open", "invalid_auth")
        line = await run_error(
            ["slack"],
            tmp_path,
            SLACK_BOT_TOKEN=SLACK_TOKEN,
            SLACK_APP_TOKEN="xapp-1-A1-never-in-a-log-0123456789",
            SLACK_API_URL=slack.api_url,
        )
    assert line == (
        "parley: SLACK_APP_TOKEN: Slack refused it (invalid_auth); copy the App-Level Token "
        "(connections:write) from the app's Basic Information page"
    )


def discord_settings(discord: FakeDiscord) -> dict[str, str]:
    return {
        "DISCORD_BOT_TOKEN": DISCORD_TOKEN,
        "DISCORD_API_URL": discord.api_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
    }


async def run_discord_error(tmp_path: Path, discord: FakeDiscord, **settings: str) -> str:
    """`parley run discord` against the fake (these settings overriding), expected to stop
    at once with one line, which is returned."""
    return await run_error(["discord"], tmp_path, **{**discord_settings(discord), **settings})


DISCORD_TOKEN_REFUSED = (
    "parley: DISCORD_BOT_TOKEN: Discord refused it; copy the token from the Developer "
    "Portal (your application > Bot > Reset Token)"
)


async def test_a_discord_token_discord_refuses_is_one_line_saying_so(tmp_path: Path) -> None:
    async with FakeDiscord() as discord:
        discord.fail_next("GET", "/users/@me", status=401, body={"message": "401: Unauthorized"})
        line = await run_discord_error(tmp_path, discord)
    assert line == DISCORD_TOKEN_REFUSED


@pytest.mark.parametrize("gateway", ["closed port", "not a gateway"])
async def test_a_discord_gateway_that_cannot_be_reached_is_one_line_saying_so(
    tmp_path: Path, unused_tcp_port: int, gateway: str
) -> None:
    # The REST API answers (the login works); the gateway refuses the connection, or is a
    # web server without a gateway (its handshake answers 404).
    async with FakeDiscord() as discord:
        port, reason = (unused_tcp_port, "connection refused")
        if gateway == "not a gateway":
            port, reason = (discord.port, "answered HTTP 404")
        started = time.monotonic()
        line = await run_discord_error(
            tmp_path, discord, DISCORD_GATEWAY_URL=f"ws://127.0.0.1:{port}/gateway-elsewhere"
        )
        elapsed = time.monotonic() - started
    assert line == (
        f"parley: DISCORD_GATEWAY_URL: cannot reach Discord at 127.0.0.1:{port} ({reason}); "
        "check the network and DISCORD_GATEWAY_URL"
    )
    assert TRACEBACK not in line  # run_error checked there is no other line
    # Not a benchmark: discord.py alone took about a minute and blamed the token.
    assert elapsed < 20


async def test_a_discord_gateway_outage_after_the_start_is_retried_as_before(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    # Only the first connection stops the start; later, discord.py's reconnects carry on.
    fake_openai.reply("Hello!")
    async with (
        FakeDiscord() as discord,
        Processes(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/p.db") as processes,
    ):
        bot = await processes.start(
            "discord",
            **model_settings(fake_openai),
            **discord_settings(discord),
        )
        await discord.connected()
        discord.gateway_refusals = 2
        await discord.drop_connection(4000)  # resumable: discord.py reconnects at once
        await discord.wait_for(lambda: discord.gateway_refusals == 0, what="the refused retries")
        await discord.resumed(timeout=30)
        question = message_create("<@1000> hi", mentions=[BOT_USER])
        await discord.dispatch("MESSAGE_CREATE", question)
        await discord.wait_for(
            lambda: [m["content"] for m in discord.messages_in(question["id"])] == ["Hello!"],
            what="the answer after the outage",
        )
        assert bot.alive
        assert await bot.terminate() == 0
    assert "Attempting a reconnect" in bot.stderr  # discord.py's own retry, as before


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (
            4014,
            "parley: Discord refused the Message Content Intent this bot needs; turn it on in "
            "the Developer Portal (your application > Bot > Privileged Gateway Intents)",
        ),
        (4004, DISCORD_TOKEN_REFUSED),
    ],
    ids=["intent not enabled", "token refused"],
)
async def test_a_discord_gateway_refusing_the_session_is_one_line_saying_why(
    tmp_path: Path, code: int, expected: str
) -> None:
    async with FakeDiscord() as discord:
        discord.identify_close_code = code
        line = await run_discord_error(tmp_path, discord)
        assert len(discord.identify_payloads) == 1  # refused once, not retried
    assert line == expected


@pytest.mark.parametrize(
    ("arguments", "level", "traceback"),
    [((), "INFO", False), (("--debug",), None, True), ((), "DEBUG", True)],
    ids=["one-line", "--debug", "PARLEY_LOG_LEVEL=DEBUG"],
)
async def test_an_unexpected_error_is_one_line_unless_debugging(
    tmp_path: Path, arguments: tuple[str, ...], level: str | None, traceback: bool
) -> None:
    # A tool plugin with a bug: it raises while it is imported, naming a secret.
    (tmp_path / "broken_tools.py").write_text(
        "import os\nraise RuntimeError('plugin broke: ' + os.environ['OPENAI_API_KEY'])\n"
    )
    env = environment(
        DATABASE_URL=f"sqlite:///{tmp_path}/p.db",
        OPENAI_API_KEY=OPENAI_KEY,
        PARLEY_TOOL_MODULES="broken_tools",
        PARLEY_LOG_LEVEL=level,
    )
    code, _, err = await parley(*arguments, "chat", stdin="", env=env, cwd=tmp_path)
    assert code == 2 and OPENAI_KEY not in err
    if traceback:
        assert TRACEBACK in err
        assert err.rstrip().endswith("RuntimeError: plugin broke: [secret]")
    else:
        assert TRACEBACK not in err
        assert err.strip() == (
            "parley: unexpected RuntimeError: plugin broke: [secret]; "
            "run again with --debug for details"
        )


async def test_debug_is_documented_in_help(tmp_path: Path) -> None:
    code, out, _ = await parley("--help", stdin="", env=environment(), cwd=tmp_path)
    assert code == 0 and "--debug" in out


@pytest.mark.parametrize("command", ["chat", "run", "flags", "db"])
async def test_each_command_explains_what_it_reads_with_examples(
    tmp_path: Path, command: str
) -> None:
    code, out, _ = await parley(command, "--help", stdin="", env=environment(), cwd=tmp_path)
    assert code == 0
    assert "Reads: " in out and f"examples:\n  parley {command}" in out
