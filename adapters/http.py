"""One aiohttp server for everything Parley serves over HTTP: Slack events, the Telegram
webhook, the API and its pages, and in every `parley run` /healthz, /readyz and /metrics.

Platforms add their routes before it starts, so they share PARLEY_HTTP_HOST:PARLEY_HTTP_PORT
(one port to open in a firewall, one proxy rule), each under its own path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from urllib.parse import parse_qsl

from aiohttp import web

from core.errors import ConfigError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpServer:
    """`server.add_post(path, handler)` for each platform, then `async with server:`."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port  # the real port once started (0 picks a free one, for tests)
        self._app = web.Application()
        self._runner: web.AppRunner | None = None
        self.paths: list[str] = []

    @property
    def app(self) -> web.Application:
        return self._app

    def add_post(self, path: str, handler: Handler) -> None:
        self._app.router.add_post(path, _well_formed(handler))
        self.paths.append(path)

    def add_get(self, path: str, handler: Handler) -> None:
        self._app.router.add_get(path, handler)
        self.paths.append(path)

    def add_app(self, prefix: str, app: web.Application) -> None:
        """An application of its own (its own middlewares) under `prefix`."""
        self._app.add_subapp(prefix, app)
        self.paths.append(prefix)

    def add_static(self, prefix: str, folder: str) -> None:
        self._app.router.add_static(prefix, folder)
        self.paths.append(prefix)

    async def __aenter__(self) -> HttpServer:
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:  # the port is taken (another `parley run`?), or not ours
            await self._runner.cleanup()
            raise ConfigError(
                f"PARLEY_HTTP_HOST/PARLEY_HTTP_PORT: cannot listen on {self.host}:{self.port} "
                f"({exc.strerror or exc}); every `parley run` serves /healthz, /readyz and "
                "/metrics there: give each process on a host its own port"
            ) from None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for path in self.paths:
            log.info("listening on http://%s:%s%s", self.host, self.port, path)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def bad_body(body: bytes, content_type: str) -> str | None:
    """Why a webhook body cannot be a platform's event, or None when it may be one.

    Slack and Telegram send UTF-8: a JSON object (`application/json`), or a form whose
    `payload` field, when present, is a JSON object (Slack's interactions). Anything else is
    the sender's mistake (400), never the bot's (500).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "the body is not UTF-8"
    if content_type == "application/json":
        try:
            data = json.loads(text)
        except ValueError:
            return "the body is not JSON"
        if not isinstance(data, dict):
            return "the body is not a JSON object"
    elif content_type == "application/x-www-form-urlencoded":
        payload = dict(parse_qsl(text)).get("payload")
        if payload is not None:
            try:
                data = json.loads(payload)
            except ValueError:
                return "the payload field is not JSON"
            if not isinstance(data, dict):
                return "the payload field is not a JSON object"
    return None


def _well_formed(handler: Handler) -> Handler:
    """The handler, behind a check that answers 400 to a body no platform would send."""

    async def checked(request: web.Request) -> web.StreamResponse:
        problem = bad_body(await request.read(), request.content_type)
        if problem is not None:
            log.warning("HTTP %s: refused a request (400): %s", request.path, problem)
            return web.Response(status=400, text=problem)
        return await handler(request)

    return checked
