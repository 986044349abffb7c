"""Logging for the `parley` command: one format, and secrets never in a log line.

Libraries log what they send: httpx logs every request URL at INFO, and the Telegram Bot API
puts the bot token in the URL (`/bot123:ABC/getUpdates`). A filter on the handler replaces
every configured secret, wherever it appears (a URL, an error message, a traceback), before
a line is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from pydantic import SecretStr

from core.config import Settings

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


def secrets_of(settings: Settings) -> list[str]:
    """Every secret setting's value."""
    return [
        value.get_secret_value()
        for value in (getattr(settings, name) for name in type(settings).model_fields)
        if isinstance(value, SecretStr)
    ]


def configure_logging(settings: Settings) -> RedactSecrets:
    """Logs to stderr at the configured level, secrets masked; returns the filter."""
    redact = RedactSecrets(secrets_of(settings))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(redact)
    logging.basicConfig(level=settings.log_level, handlers=[handler])
    # One INFO line per HTTP request (every Bot API poll, every model call) drowns the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.root.level))
    return redact
