"""Parley over HTTP, mounted on the shared server: `/api/v1` (the API and the admin
endpoints), `/v1` (OpenAI-compatible), and the pages `/`, `/admin` and `/static/`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from adapters.http import Handler, HttpServer
from adapters.web.api import CALLER, AdminApi, ApiError, ConversationsApi
from adapters.web.auth import Authenticator
from adapters.web.openai_compat import OpenAICompatible
from adapters.web.openapi import DOCUMENT
from core.config import Settings
from core.conversation import Engine
from core.personas import PersonaCatalogue
from core.storage.api import ApiStore
from core.storage.sql import SqlStore

STATIC = Path(__file__).parent / "static"
PUBLIC = frozenset({"/api/v1/openapi.json"})
CORS_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Parley-Conversation"


def mount(
    http: HttpServer,
    *,
    engine: Engine,
    store: SqlStore,
    settings: Settings,
    personas: PersonaCatalogue,
    default_persona: str,
) -> None:
    api = ApiStore(store)
    auth = Authenticator(api, settings)
    conversations = ConversationsApi(
        engine=engine, store=store, api=api, personas=personas, default_persona=default_persona
    )
    v1 = web.Application(middlewares=[_authenticate(auth)])
    _cors(v1, settings.http_cors_origins)
    v1.add_routes(conversations.routes())
    v1.add_routes(AdminApi(engine=engine, store=store, api=api, personas=personas).routes())
    v1.router.add_get("/conversations/{id}/ws", conversations.websocket)
    v1.router.add_get("/openapi.json", _openapi)
    http.add_app("/api/v1", v1)

    compatible = web.Application(middlewares=[_authenticate(auth)])
    _cors(compatible, settings.http_cors_origins)
    compatible.add_routes(
        OpenAICompatible(
            conversations=conversations, store=store, api=api, personas=personas
        ).routes()
    )
    http.add_app("/v1", compatible)

    http.add_get("/", _page("index.html"))
    http.add_get("/admin", _page("admin.html"))
    http.add_static("/static/", str(STATIC))


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


def _page(name: str) -> Handler:
    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / name, headers={"Cache-Control": "no-cache"})

    return page


def _authenticate(auth: Authenticator) -> Middleware:
    """401 without valid credentials (before anything is read or stored), 403 for a
    non-admin on an admin path; the caller goes into the request."""

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC or request.method == "OPTIONS":
            return await handler(request)
        websocket = request.path.endswith("/ws")
        caller = await auth.caller(request, query_token=websocket)
        if caller is None:
            needed = "a valid API key or token is needed (Authorization: Bearer ...)"
            raise ApiError(401, needed, "unauthorized")
        if request.path.startswith("/api/v1/admin") and not caller.admin:
            needed = "this needs an admin key (parley keys create NAME --admin)"
            raise ApiError(403, needed, "forbidden")
        request[CALLER] = caller
        return await handler(request)

    return authenticate


def _cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """CORS for the origins in PARLEY_HTTP_CORS_ORIGINS; for others no CORS headers (the
    browser then keeps the answer from the page). Headers go on as a response is prepared,
    so streamed replies and errors carry them too."""

    def allowed(request: web.Request) -> str | None:
        origin = request.headers.get("Origin", "")
        return origin if origin and ("*" in origins or origin in origins) else None

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "OPTIONS":
            return await handler(request)
        if allowed(request) is None:
            raise ApiError(403, "origin not in PARLEY_HTTP_CORS_ORIGINS", "forbidden")
        return web.Response(status=204)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = allowed(request)
        if origin is None:
            return
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
        response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
        response.headers["Access-Control-Max-Age"] = "600"
        response.headers["Vary"] = "Origin"

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(add_headers)
