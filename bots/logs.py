"""Logging for the `parley` command: text or JSON lines, and secrets never in a log line.

Libraries log what they send: httpx logs every request URL at INFO, and the Telegram Bot API
puts the bot token in the URL (`/bot123:ABC/getUpdates`). A filter on the handler replaces
every configured secret, wherever it appears (a URL, an error message, a traceback), before
a line is written, whatever the format.

Users' messages and replies are logged only by `core.observe.messages_log`, which stays
silent unless PARLEY_LOG_MESSAGES is on.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy.engine import make_url

from core.config import Settings
from core.observe import MESSAGES_LOGGER, current_turn

MASK = "[secret]"
# Shorter values are not worth masking (and would mangle ordinary words).
MIN_SECRET_LENGTH = 8


class RedactSecrets(logging.Filter):
    """Replaces the given secrets in a record's message, arguments and traceback text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len)[::-1]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class JsonLines(logging.Formatter):
    """One JSON object per record: timestamp (ISO 8601, UTC), level, logger, message, the
    turn's platform and ids when the record was written while working on one, and the
    exception's traceback when there is one. Log collectors read it without a parsing rule."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        turn = current_turn()
        if turn is not None:
            entry["platform"] = turn.platform
            entry["conversation_id"] = turn.conversation_id
            entry["turn_id"] = turn.turn_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret setting's value, and the database password (DATABASE_URL is a plain
    setting, but a driver's error may quote the URL it was given)."""
    found = [
        value.get_secret_value()
        for value in (getattr(settings, name) for name in type(settings).model_fields)
        if isinstance(value, SecretStr)
    ]
    password = make_url(settings.database_url).password
    return [*found, password] if password else found


def configure_logging(settings: Settings) -> RedactSecrets:
    """Logs to stderr at the configured level and format, secrets masked; returns the
    filter."""
    redact = RedactSecrets(secrets_of(settings))
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redact)
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # Asked for, they are shown whatever the level; otherwise never.
    messages = logging.getLogger(MESSAGES_LOGGER)
    messages.setLevel(logging.INFO if settings.log_messages else logging.CRITICAL + 1)
    # One INFO line per HTTP request (every Bot API poll, every model call) drowns the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    return redact


def announce(settings: Settings, text: str) -> None:
    """A line for the person who started Parley, shown whatever the log level: plain text,
    or a JSON record like every other line when the logs are JSON."""
    if settings.log_format == "json":
        record = logging.LogRecord("parley", logging.INFO, __file__, 0, text, None, None)
        text = JsonLines().format(record)
    print(text, file=sys.stderr)
