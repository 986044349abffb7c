"""The `parley` command itself: --version, one-line errors of `parley db`, and logs that
never show a secret."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from tests.cli.test_chat import parley
from tests.durability.processes import (
    SLACK_SECRET,
    TELEGRAM_TOKEN,
    Processes,
    environment,
    model_settings,
    send_slack_event,
    slack_settings,
    telegram_settings,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import FakeSlack, app_mention, next_ts
from tests.fakes.telegram_server import FakeTelegram, private_message

OPENAI_KEY = "sk-proj-never-in-a-log-0123456789"


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
        Processes(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/p.db") as processes,
    ):
        bot = await processes.start(
            "telegram",
            PARLEY_LOG_LEVEL="DEBUG",
            **{**model_settings(fake_openai), "OPENAI_API_KEY": OPENAI_KEY},
            **telegram_settings(telegram),
        )
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
    token = "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx"
    async with (
        FakeSlack() as slack,
        Processes(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/p.db") as processes,
    ):
        bot = await processes.start(
            "slack",
            PARLEY_LOG_LEVEL="DEBUG",
            **{**model_settings(fake_openai), "OPENAI_API_KEY": OPENAI_KEY},
            **{**slack_settings(slack), "SLACK_BOT_TOKEN": token},
        )
        ts = next_ts()
        await send_slack_event(bot, app_mention("<@UBOT> hi", ts=ts))
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("C1", ts)] == ["Hello!"],
            what="the answer",
        )
        assert await bot.terminate() == 0
    for secret in (token, SLACK_SECRET, OPENAI_KEY):
        assert secret not in bot.stderr


@pytest.mark.parametrize("command", ["chat", "run", "flags", "db"])
async def test_each_command_explains_what_it_reads_with_examples(
    tmp_path: Path, command: str
) -> None:
    code, out, _ = await parley(command, "--help", stdin="", env=environment(), cwd=tmp_path)
    assert code == 0
    assert "Reads: " in out and f"examples:\n  parley {command}" in out
