"""The one line `parley run` prints when a platform's API cannot be reached at start.

"Cannot reach" must never read like "refused the token": the user's fix differs (the network
or the base URL, not the credentials), so the adapters tell the two apart and say which.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import aiohttp

from core.errors import ConfigError


def unreachable(platform: str, setting: str, url: str, exc: BaseException) -> ConfigError:
    """E.g. `SLACK_API_URL: cannot reach Slack at slack.com (connection refused); check the
    network and SLACK_API_URL`. Only host and port are named: a URL can carry credentials."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or "?"
    return ConfigError(
        f"{setting}: cannot reach {platform} at {where} ({_reason(exc)}); "
        f"check the network and {setting}"
    )


def _reason(exc: BaseException) -> str:
    # aiohttp wraps the socket's error (`os_error`); its own text repeats host and port.
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return "timed out"
    if isinstance(cause, socket.gaierror):
        return "host name not found"
    if isinstance(exc, aiohttp.ClientResponseError):
        # A websocket handshake answered with an HTTP error: not a gateway at that URL. Its
        # text repeats the whole URL, query and all.
        return f"answered HTTP {exc.status}"
    if isinstance(cause, OSError) and cause.errno:
        return os.strerror(cause.errno).lower()  # "connection refused", "network is unreachable"
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
