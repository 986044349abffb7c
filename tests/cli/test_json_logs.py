"""PARLEY_LOG_FORMAT=json: `parley run` as an operator starts it writes one JSON object per
stderr line, secrets masked as in text logs, and users' messages only when asked for."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bots.logs import JsonLines, RedactSecrets, secrets_of
from core.observe import TurnIds, working_on
from tests.conftest import make_settings
from tests.durability.processes import (
    TELEGRAM_TOKEN,
    ParleyProcess,
    Processes,
    model_settings,
    telegram_settings,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.telegram_server import FakeTelegram, private_message

OPENAI_KEY = "sk-proj-never-in-a-json-log-0123456789"
QUESTION = "what does the purple-elephant-42 eat"
ANSWER = "The zebra-answer-77 says hay."
FIELDS = {"timestamp", "level", "logger", "message"}


def records(bot: ParleyProcess) -> list[dict[str, Any]]:
    """Every stderr line, as JSON."""
    parsed = []
    for line in bot.lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        parsed.append(record)
    return parsed


async def answered_once(
    tmp_path: Path, fake_openai: FakeOpenAI, **settings: object
) -> list[dict[str, Any]]:
    """`parley run telegram` with JSON logs answers one message and stops; its records."""
    fake_openai.reply(ANSWER)
    async with (
        FakeTelegram() as telegram,
        Processes(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/p.db") as processes,
    ):
        bot = await processes.start(
            "telegram",
            PARLEY_LOG_FORMAT="json",
            **{**model_settings(fake_openai), "OPENAI_API_KEY": OPENAI_KEY},
            **telegram_settings(telegram),
            **settings,
        )
        telegram.push(private_message(QUESTION))
        await telegram.wait_for(lambda: telegram.texts_in(1) == [ANSWER], what="the answer")
        assert await bot.terminate() == 0
    return records(bot)


def check_fields(record: dict[str, Any]) -> None:
    assert record.keys() >= FIELDS, record
    assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
    at = datetime.fromisoformat(record["timestamp"])
    assert at.utcoffset() is not None and at.utcoffset() == UTC.utcoffset(at)
    assert abs((datetime.now(UTC) - at).total_seconds()) < 120


async def test_every_line_is_a_json_record_and_secrets_are_masked_even_at_debug(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    logged = await answered_once(tmp_path, fake_openai, PARLEY_LOG_LEVEL="DEBUG")
    assert len(logged) > 20  # DEBUG: the libraries speak too
    for record in logged:
        check_fields(record)
    text = json.dumps(logged)
    # The Bot API's URLs carry the token: the records show them, masked.
    assert any(r["message"].endswith("/bot[secret]") for r in logged)
    for secret in (TELEGRAM_TOKEN, TELEGRAM_TOKEN.split(":")[1], OPENAI_KEY):
        assert secret not in text
    loggers = {r["logger"] for r in logged}
    assert {"adapters.http", "adapters.telegram.bot"} <= loggers


async def test_message_text_is_not_logged_at_info_unless_asked_for(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    logged = await answered_once(tmp_path, fake_openai, PARLEY_LOG_LEVEL="INFO")
    for record in logged:
        check_fields(record)
        assert record["level"] != "DEBUG"
    text = json.dumps(logged)
    assert "purple-elephant-42" not in text
    assert "zebra-answer-77" not in text
    listening = [r for r in logged if r["message"].startswith("listening on http://")]
    assert {r["message"].rsplit("/", 1)[1] for r in listening} >= {"healthz", "readyz", "metrics"}


async def test_messages_asked_for_are_logged_with_the_turn_s_ids(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    logged = await answered_once(
        tmp_path, fake_openai, PARLEY_LOG_LEVEL="WARNING", PARLEY_LOG_MESSAGES="true"
    )
    chats = [r for r in logged if r["logger"] == "parley.messages"]
    assert [(r["level"], r["message"]) for r in chats] == [
        ("INFO", f"turn 1: Alice wrote: {QUESTION}"),
        ("INFO", f"turn 1: replied (final): {ANSWER}"),
    ]
    for record in chats:
        check_fields(record)
        assert (record["platform"], record["conversation_id"], record["turn_id"]) == (
            "telegram",
            1,
            1,
        )


def test_a_record_carries_the_turn_s_ids_and_its_masked_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLines())
    handler.addFilter(RedactSecrets([OPENAI_KEY]))
    logger = logging.getLogger("tests.json_logs")
    logger.addHandler(handler)
    try:
        with working_on(TurnIds("slack", 7, 42)):
            try:
                raise RuntimeError(f"refused key {OPENAI_KEY}")
            except RuntimeError:
                logger.exception("turn failed for %s", "slack/T1/C1")
        logger.error("after the turn")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    check_fields(first)
    assert (first["level"], first["logger"], first["message"]) == (
        "ERROR",
        "tests.json_logs",
        "turn failed for slack/T1/C1",
    )
    assert (first["platform"], first["conversation_id"], first["turn_id"]) == ("slack", 7, 42)
    assert first["exception"].startswith("Traceback (most recent call last)")
    assert first["exception"].endswith("RuntimeError: refused key [secret]")
    assert OPENAI_KEY not in stream.getvalue()
    assert "turn_id" not in second and second["message"] == "after the turn"


def test_the_database_password_is_masked_too() -> None:
    settings = make_settings(DATABASE_URL="postgresql://parley:db-pass-Zq81x@db.example.com/parley")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    logger = logging.getLogger("test.database.password")
    logger.addHandler(handler)
    try:
        logger.warning("could not connect to %s", settings.database_url)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == (
        "could not connect to postgresql+asyncpg://parley:[secret]@db.example.com/parley\n"
    )
