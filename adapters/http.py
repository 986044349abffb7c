"""One aiohttp server for every platform that receives HTTP (Slack events, Telegram webhook).

Platforms add their routes before it starts, so they share PARLEY_HTTP_HOST:PARLEY_HTTP_PORT
(one port to open in a firewall, one proxy rule), each under its own path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import web

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

    def add_post(self, path: str, handler: Handler) -> None:
        self._app.router.add_post(path, handler)
        self.paths.append(path)

    async def __aenter__(self) -> HttpServer:
        self._runner = web.AppRunner(self._app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
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
