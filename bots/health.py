"""`/healthz`, `/readyz` and `/metrics`, served on the shared HTTP server of every
`parley run`.

None asks for credentials (probes and scrapers carry none; bind PARLEY_HTTP_HOST to a private
address, or filter these paths at the proxy, to keep them from the internet) and none reads
conversation data. `/healthz` answers 200 while the process serves HTTP at all: a liveness
probe restarts a process that stopped answering, not one whose database is down (restarting
would not bring that back). `/readyz` answers 200 only when the database answers a trivial
query within READY_TIMEOUT seconds and every platform is connected, else 503 naming what is
not ready, so a load balancer or an orchestrator sends nothing to it meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from sqlalchemy import text

from adapters.http import HttpServer
from bots.metrics import PrometheusRecorder
from core.storage import SessionStore, SqlStore

READY_TIMEOUT = 2.0  # seconds for the database check: probes usually time out after 1-5 s


class Connected(Protocol):
    """A platform adapter that can tell whether it is connected to its platform."""

    platform: str

    @property
    def ready(self) -> bool: ...


class Health:
    """The three handlers, for one running bot."""

    def __init__(
        self,
        *,
        store: SessionStore,
        platforms: Sequence[Connected],
        metrics: PrometheusRecorder,
        timeout: float = READY_TIMEOUT,
    ) -> None:
        self._store = store
        self._platforms = platforms
        self._metrics = metrics
        self._timeout = timeout

    def mount(self, http: HttpServer) -> None:
        http.add_get("/healthz", self.healthz)
        http.add_get("/readyz", self.readyz)
        http.add_get("/metrics", self.metrics)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        not_ready = [] if await self._database_answers() else ["database"]
        not_ready += [p.platform for p in self._platforms if not p.ready]
        if not_ready:
            return web.json_response({"status": "not ready", "not_ready": not_ready}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        body = self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": self._metrics.content_type})

    async def _database_answers(self) -> bool:
        if not isinstance(self._store, SqlStore):
            return True  # a store of a test's own: nothing to reach
        try:
            async with asyncio.timeout(self._timeout), self._store.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            # Any failure means "not ready": the probe repeats, and the store logs outages.
            return False
        return True
