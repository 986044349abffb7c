"""The one place that wires Parley together. Every part can be passed in, for tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from bots.mcp import SEPARATOR, McpTools
from bots.metrics import PrometheusRecorder
from bots.platforms import HTTP, PLATFORMS, configured
from bots.retention import Retention
from bots.tools import SHIPPED_TOOL_MODULES
from core.attachments import AttachmentReader
from core.config import Settings
from core.conversation import Engine, EngineOptions
from core.errors import ConfigError
from core.knowledge.passages import Hit, Retriever
from core.llm import ModelClient, OpenAIModelClient, OpenAITranscriber
from core.moderation import Direction, ModerationChain, Moderator
from core.personas import Persona, PersonaCatalogue
from core.policy import AccessControl, Limits, RateLimiter, parse_entries
from core.pricing import PriceTable
from core.scheduler import Scheduler
from core.storage import SessionStore, SqlStore, create_database_engine, migrate
from core.storage.database import current_revision, head_revision, schema_is_current
from core.tools import ToolRegistry

if TYPE_CHECKING:
    from adapters.http import HttpServer

log = logging.getLogger(__name__)

SHIPPED_PERSONAS = Path(__file__).resolve().parent / "personas"


@dataclass(frozen=True)
class Runtime:
    """A wired engine and the store behind it (adapters need the store for lookups)."""

    engine: Engine
    store: SessionStore
    model_label: str
    """Who answers, in words for the user: the model's name, or the embedded model's title."""
    personas: PersonaCatalogue
    default_persona: str
    metrics: PrometheusRecorder
    """What the engine and the scheduler count, served at /metrics by `parley run`."""


def load_tools(
    settings: Settings, catalogue: PersonaCatalogue, registry: ToolRegistry | None = None
) -> ToolRegistry:
    """Shipped tools, the modules named in PARLEY_TOOL_MODULES, and installed plugins (added
    to `registry`, which may already hold MCP servers' tools); every persona's tools must be
    among them, except those of an MCP server (it may be down now, and come back)."""
    registry = registry or ToolRegistry()
    for module in (*SHIPPED_TOOL_MODULES, *settings.tool_modules):
        registry.load_module(module)
    registry.load_entry_points()
    servers = tuple(f"{name}{SEPARATOR}" for name in settings.mcp_servers)
    for persona in catalogue:
        unknown = [
            name
            for name in persona.tools
            if registry.get(name) is None and not name.startswith(servers)
        ]
        if unknown:
            raise ConfigError(
                f"persona '{persona.name}' lists unknown tool(s) {', '.join(unknown)}; "
                f"available: {', '.join(registry.names())}"
            )
    return registry


def load_personas(settings: Settings) -> tuple[PersonaCatalogue, Persona]:
    """The catalogue (shipped, then the user's directory) and the default persona."""
    catalogue = PersonaCatalogue.load(SHIPPED_PERSONAS, settings.personas_dir)
    default = catalogue.get(settings.persona)
    if default is None:
        raise ConfigError(
            f"PARLEY_PERSONA: unknown persona '{settings.persona}'; "
            f"available: {', '.join(catalogue.names())}"
        )
    return catalogue, default


async def open_store(settings: Settings) -> SqlStore:
    """The SQL store, with the schema brought up to date (or checked, if that is turned off)."""
    engine = create_database_engine(settings.database_url, pool_size=settings.db_pool_size)
    try:
        if await schema_is_current(engine):
            pass
        elif settings.auto_migrate:
            await migrate(engine)
        elif await current_revision(engine) != head_revision():
            raise ConfigError(
                "the database schema is not up to date and PARLEY_AUTO_MIGRATE is off; "
                "run `parley db upgrade`"
            )
    except ConfigError:
        await engine.dispose()
        raise
    except Exception as exc:
        await engine.dispose()
        first_line = (str(exc).splitlines() or [""])[0]
        raise ConfigError(
            f"DATABASE_URL: cannot open the database ({type(exc).__name__}: {first_line})"
        ) from exc
    return SqlStore(engine, retry_seconds=settings.db_retry_seconds)


def access_control(settings: Settings, store: SessionStore) -> AccessControl:
    """The access lists and admins from settings, with the database's lists behind them."""
    configured = [
        rule
        for kind in ("user", "channel", "workspace")
        for list_ in ("allow", "block")
        for rule in parse_entries(getattr(settings, f"{list_}_{kind}s"), kind=kind, list_=list_)
    ]
    admins = parse_entries(settings.admins, kind="user", list_="admin")
    return AccessControl(store=store, configured=configured, admins=admins)


def moderation_chain(settings: Settings, stack: AsyncExitStack) -> ModerationChain | None:
    """The moderators named in PARLEY_MODERATION, in that order, configured by the policy file."""
    if not settings.moderation:
        return None
    from core.local_rules import SECRETS_ONLY, KeywordRules, PiiRedactor
    from core.moderation_policy import PolicyFile, load_policy_file

    path = settings.moderation_policy
    policy = load_policy_file(path) if path is not None else PolicyFile()
    moderators: list[Moderator] = []
    for name in settings.moderation:
        if name == "rules":
            assert path is not None  # Settings refuses "rules" without a policy file
            try:
                moderators.append(KeywordRules.from_config(policy.rules, base_dir=path.parent))
            except ValueError as exc:
                raise ConfigError(f"PARLEY_MODERATION_POLICY: {path}: {exc}") from None
        elif name == "pii":
            moderators.append(PiiRedactor(policy.pii))
        elif name == "secrets":
            moderators.append(PiiRedactor(SECRETS_ONLY, name="secrets"))
        else:
            import openai

            from core.openai_moderation import OpenAIModerator

            client = openai.AsyncOpenAI(
                api_key=_api_key(settings),
                base_url=str(settings.openai_base_url) if settings.openai_base_url else None,
                max_retries=settings.model_retries,
                timeout=openai.Timeout(settings.model_timeout, connect=10.0),
            )
            stack.push_async_callback(client.close)
            moderators.append(
                OpenAIModerator(
                    client=client,
                    model=policy.openai.model or settings.moderation_model,
                    config=policy.openai,
                )
            )
    return ModerationChain(
        moderators,
        fail_closed={
            Direction.INPUT: settings.moderation_input_failure == "closed",
            Direction.OUTPUT: settings.moderation_output_failure == "closed",
        },
    )


@dataclass
class Platforms:
    """The running chat platforms, and the HTTP server (the API, platforms' webhooks, and
    always /healthz, /readyz and /metrics)."""

    bots: list[object]
    http: HttpServer
    scheduler: Scheduler


@asynccontextmanager
async def chat_platforms(
    settings: Settings, runtime: Runtime, names: Sequence[str] = ()
) -> AsyncIterator[Platforms]:
    """Start the named platforms (or every configured one) on the runtime; stop them on exit."""
    for name in names:
        if name == HTTP:
            continue
        if name not in PLATFORMS:
            known = ", ".join([*PLATFORMS, HTTP])
            raise ConfigError(f"parley run: unknown platform '{name}'; use {known}")
        if not configured(settings, name):
            raise ConfigError(f"parley run {name}: {PLATFORMS[name]} is not set")
    chosen = [n for n in names if n != HTTP] or (
        [] if names else [name for name in PLATFORMS if configured(settings, name)]
    )
    serve_api = HTTP in names or (not names and await _api_configured(settings, runtime))
    if not chosen and not serve_api:
        needed = ", ".join(PLATFORMS.values())
        raise ConfigError(
            f"no chat platform is configured: set one of {needed}, or create an API key "
            "(parley keys create NAME) for `parley run http` (see README)"
        )
    try:
        from adapters.http import HttpServer  # aiohttp: only the platform extras install it
        from bots.health import Health
    except ImportError:
        extra = chosen[0] if chosen else HTTP
        raise ConfigError(
            f"parley run needs the extra of each platform: pip install 'parley[{extra}]'"
        ) from None
    http = HttpServer(settings.http_host, settings.http_port)
    if serve_api:
        _mount_api(http, settings, runtime)
    scheduler = Scheduler(
        engine=runtime.engine,
        store=runtime.store,
        lease_seconds=settings.lease_seconds,
        concurrency=settings.max_concurrent_turns,
        delivery_deadline=settings.delivery_deadline,
        keep_finished_seconds=settings.keep_finished_hours * 3600,
        grace_seconds=settings.shutdown_grace,
        merge_queued=settings.merge_queued,
        recorder=runtime.metrics,
    )
    bots = [_platform(name, settings, runtime, http, scheduler) for name in chosen]
    Health(store=runtime.store, platforms=bots, metrics=runtime.metrics).mount(http)
    async with AsyncExitStack() as stack:
        for bot in bots:
            await stack.enter_async_context(bot)
        # Started once every platform can deliver (recovery delivers at once); on exit it
        # stops before them, so running turns can still finish their replies.
        await stack.enter_async_context(scheduler)
        if settings.retention_days and isinstance(runtime.store, SqlStore):
            await stack.enter_async_context(Retention(runtime.store, days=settings.retention_days))
        # Started last, so no request arrives before every bot is ready.
        await stack.enter_async_context(http)
        yield Platforms(bots=list(bots), http=http, scheduler=scheduler)


async def _api_configured(settings: Settings, runtime: Runtime) -> bool:
    """Whether anyone could use the API: a JWT setting, or an API key in the database."""
    if settings.jwt_secret or settings.jwt_jwks_url:
        return True
    if not isinstance(runtime.store, SqlStore):
        return False
    from core.storage.api import ApiStore

    return any(key.revoked_at is None for key in await ApiStore(runtime.store).keys())


def _mount_api(http: HttpServer, settings: Settings, runtime: Runtime) -> None:
    if not isinstance(runtime.store, SqlStore):
        raise ConfigError("parley run http needs the SQL store (DATABASE_URL)")
    try:
        from adapters.web.server import mount
    except ImportError as exc:
        raise ConfigError(
            f"parley run http needs the http extra: pip install 'parley[http]' ({exc})"
        ) from None
    mount(
        http,
        engine=runtime.engine,
        store=runtime.store,
        settings=settings,
        personas=runtime.personas,
        default_persona=runtime.default_persona,
    )


def _platform(
    name: str, settings: Settings, runtime: Runtime, http: HttpServer, scheduler: Scheduler
) -> AbstractAsyncContextManager[object]:
    parts = {
        "engine": runtime.engine,
        "store": runtime.store,
        "settings": settings,
        "http": http,
        "scheduler": scheduler,
    }
    try:
        if name == "slack":
            from adapters.slack.bot import SlackBot

            return SlackBot(**parts)
        if name == "telegram":
            from adapters.telegram.bot import TelegramBot

            return TelegramBot(**parts)
        from adapters.discord.bot import DiscordBot

        return DiscordBot(**parts)
    except ImportError as exc:
        raise ConfigError(
            f"{name} needs the {name} extra: pip install 'parley[{name}]' ({exc})"
        ) from None


class _LazyKnowledge:
    """The knowledge bases, imported at the first search: numpy and the embedding model
    cost memory that a bot without knowledge bases should not pay."""

    def __init__(self, settings: Settings, store: SqlStore) -> None:
        self._settings = settings
        self._store = store
        self._bases: Retriever | None = None

    async def search(self, kbs: Sequence[str], query: str, limit: int = 5) -> list[Hit]:
        if self._bases is None:
            from bots.kb import embedder_for
            from core.knowledge.base import KnowledgeBases

            self._bases = KnowledgeBases(self._store, embedder_for(self._settings))
        return await self._bases.search(kbs, query, limit)


def _transcriber(settings: Settings, stack: AsyncExitStack) -> OpenAITranscriber | None:
    """Voice notes are transcribed where the model's server (or PARLEY_TRANSCRIPTION_BASE_URL)
    can: not by the embedded model's server, which has no speech model."""
    base_url = settings.transcription_base_url or settings.openai_base_url
    if not settings.transcription_model or (settings.uses_embedded_model and base_url is None):
        return None
    key = settings.transcription_api_key
    transcriber = OpenAITranscriber(
        api_key=key.get_secret_value() if key is not None else _api_key(settings),
        base_url=str(base_url) if base_url is not None else None,
        model=settings.transcription_model,
        timeout=settings.model_timeout,
        max_retries=settings.model_retries,
    )
    stack.push_async_callback(transcriber.close)
    return transcriber


def _api_key(settings: Settings) -> str:
    return settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"


@asynccontextmanager
async def build_engine(
    settings: Settings,
    *,
    store: SessionStore | None = None,
    model: ModelClient | None = None,
    clock: Callable[[], datetime] | None = None,
) -> AsyncIterator[Runtime]:
    """Wire the engine from settings; closes what it opened on exit."""
    catalogue, default = load_personas(settings)
    tools = load_tools(settings, catalogue)
    async with AsyncExitStack() as stack:
        if settings.mcp_servers:
            await stack.enter_async_context(McpTools(settings.mcp_servers, tools))
        model_name = settings.model
        model_label = model_name
        tool_steps = settings.tool_steps
        context_tokens = settings.context_tokens
        if model is None:
            base_url = str(settings.openai_base_url) if settings.openai_base_url else None
            api_key = _api_key(settings)
            if settings.uses_embedded_model:
                from bots.local_model import (
                    LocalModelServer,
                    LocalModelUnavailable,
                    find_local_model,
                )

                try:
                    served = await asyncio.to_thread(find_local_model, settings.local_model_path)
                    server = await stack.enter_async_context(
                        LocalModelServer(served, n_ctx=settings.local_context_tokens)
                    )
                except LocalModelUnavailable as exc:
                    raise ConfigError(str(exc)) from None
                base_url, api_key, model_name = server.base_url, "local", server.model
                model_label = f"{served.title} (set OPENAI_API_KEY for a stronger model)"
                # A model this small writes a made-up tool call as text instead of choosing a
                # tool: no tools, unless the operator asks for them.
                if "tool_steps" not in settings.model_fields_set:
                    tool_steps = 0
                context_tokens = context_tokens or server.context_tokens
            client = OpenAIModelClient(
                api_key=api_key,
                base_url=base_url,
                timeout=settings.model_timeout,
                max_retries=settings.model_retries,
                fallback_model=settings.fallback_model,
                max_retry_after=settings.model_max_retry_after,
                reasoning_effort=settings.reasoning_effort,
                # llama.cpp's server closes a kept-alive connection after a few requests,
                # racing the next one: each such request cost a retry, or failed without.
                keep_alive=not settings.uses_embedded_model,
            )
            stack.push_async_callback(client.close)
            model = client
        if store is None:
            sql_store = await open_store(settings)
            stack.push_async_callback(sql_store.close)
            store = sql_store
        limits = Limits(
            requests_per_minute=settings.user_rpm, tokens_per_day=settings.user_tokens_per_day
        )
        metrics = PrometheusRecorder()
        engine = Engine(
            store=store,
            model=model,
            attachments=AttachmentReader(
                transcriber=_transcriber(settings, stack),
                max_download_bytes=int(settings.max_attachment_mb * 1_000_000),
                max_file_chars=settings.file_max_chars,
            ),
            personas=catalogue,
            default_persona=default,
            options=EngineOptions(
                bot_name=settings.bot_name,
                model=model_name,
                reply_tokens=settings.reply_tokens,
                context_tokens=context_tokens,
                summaries=settings.summaries,
                window_cache_size=settings.window_cache_size,
                tool_steps=tool_steps,
                buffer_output=settings.moderation_buffer,
                local_lease=settings.lease_seconds,
                kb_passages=settings.kb_passages,
                kb_chars=settings.kb_tokens * 4,
                vision=settings.vision,
            ),
            tools=tools,
            access=access_control(settings, store),
            limiter=RateLimiter(limits=limits),
            moderation=moderation_chain(settings, stack),
            prices=PriceTable(settings.prices),
            retriever=_LazyKnowledge(settings, store) if isinstance(store, SqlStore) else None,
            clock=clock or (lambda: datetime.now(UTC)),
            recorder=metrics,
        )
        yield Runtime(
            engine=engine,
            store=store,
            model_label=model_label,
            personas=catalogue,
            default_persona=default.name,
            metrics=metrics,
        )
