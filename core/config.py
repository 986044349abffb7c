"""Settings: the only place that reads the environment (and `.env`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.errors import ConfigError

# Users paste the URLs their database provider gives them; map those to the async drivers.
_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class McpServer(BaseModel):
    """One entry of PARLEY_MCP_SERVERS: a command to start (stdio) or a URL (streamable
    HTTP), in the `mcpServers` form other MCP clients use."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    url: AnyHttpUrl | None = None
    headers: dict[str, str] = {}
    timeout: PositiveFloat = 30.0  # seconds a tool call may take

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (stdio) or url (streamable HTTP)")
        return self


class Settings(BaseSettings):
    """Every setting of Parley. Names are the environment variables, documented in .env.example."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # `.env.example` copies leave `KEY=` lines; an empty value means "not set".
        env_ignore_empty=True,
    )

    # Unset (or empty): a SQLite file in the user's data directory, so `parley chat` finds
    # its history from any folder.
    database_url: str = Field(default_factory=lambda: default_database_url(), alias="DATABASE_URL")
    db_pool_size: PositiveInt = Field(10, alias="PARLEY_DB_POOL_SIZE")
    auto_migrate: bool = Field(True, alias="PARLEY_AUTO_MIGRATE")
    db_retry_seconds: NonNegativeFloat = Field(30.0, alias="PARLEY_DB_RETRY_SECONDS")

    lease_seconds: Annotated[float, Field(ge=2.0)] = Field(20.0, alias="PARLEY_LEASE_SECONDS")
    max_concurrent_turns: PositiveInt = Field(64, alias="PARLEY_MAX_CONCURRENT_TURNS")
    delivery_deadline: PositiveFloat = Field(600.0, alias="PARLEY_DELIVERY_DEADLINE")
    keep_finished_hours: PositiveFloat = Field(48.0, alias="PARLEY_KEEP_FINISHED_HOURS")
    # 0: keep messages until /forget; N: `parley run` purges what is older than N days hourly.
    retention_days: NonNegativeInt = Field(0, alias="PARLEY_RETENTION_DAYS")
    shutdown_grace: NonNegativeFloat = Field(30.0, alias="PARLEY_SHUTDOWN_GRACE")
    merge_queued: bool = Field(False, alias="PARLEY_MERGE_QUEUED")

    openai_api_key: SecretStr | None = Field(None, alias="OPENAI_API_KEY")
    openai_base_url: AnyHttpUrl | None = Field(None, alias="OPENAI_BASE_URL")
    model: str = Field("gpt-5-mini", alias="PARLEY_MODEL", min_length=1)
    reasoning_effort: Literal["", "none", "minimal", "low", "medium", "high"] = Field(
        "low", alias="PARLEY_REASONING_EFFORT"
    )
    fallback_model: str | None = Field(None, alias="PARLEY_FALLBACK_MODEL")
    model_timeout: PositiveFloat = Field(60.0, alias="PARLEY_MODEL_TIMEOUT")
    model_retries: NonNegativeInt = Field(2, alias="PARLEY_MODEL_RETRIES")
    model_max_retry_after: NonNegativeFloat = Field(
        20.0, alias="PARLEY_MODEL_MAX_RETRY_AFTER", le=120
    )
    context_tokens: PositiveInt | None = Field(None, alias="PARLEY_CONTEXT_TOKENS")
    reply_tokens: PositiveInt = Field(1024, alias="PARLEY_REPLY_TOKENS")
    summaries: bool = Field(False, alias="PARLEY_SUMMARIES")
    window_cache_size: NonNegativeInt = Field(256, alias="PARLEY_WINDOW_CACHE_SIZE")

    tool_modules: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_TOOL_MODULES")
    tool_steps: NonNegativeInt = Field(5, alias="PARLEY_TOOL_STEPS")
    mcp_servers: Annotated[dict[str, McpServer], NoDecode] = Field(
        default_factory=dict, alias="PARLEY_MCP_SERVERS"
    )

    persona: str = Field("assistant", alias="PARLEY_PERSONA", min_length=1)
    personas_dir: Path | None = Field(None, alias="PARLEY_PERSONAS_DIR")
    bot_name: str = Field("Parley", alias="PARLEY_BOT_NAME", min_length=1)

    local_model_path: Path | None = Field(None, alias="PARLEY_LOCAL_MODEL_PATH")
    local_context_tokens: PositiveInt = Field(2048, alias="PARLEY_LOCAL_CONTEXT_TOKENS")

    # By default only credentials are redacted: a key pasted into a chat never leaves for the
    # model service. "none" turns moderation off.
    moderation: Annotated[
        tuple[Literal["rules", "pii", "secrets", "openai", "none"], ...], NoDecode
    ] = Field(("secrets",), alias="PARLEY_MODERATION")
    moderation_policy: Path | None = Field(None, alias="PARLEY_MODERATION_POLICY")
    moderation_model: str = Field(
        "omni-moderation-latest", alias="PARLEY_MODERATION_MODEL", min_length=1
    )
    moderation_input_failure: Literal["closed", "open"] = Field(
        "closed", alias="PARLEY_MODERATION_INPUT_FAILURE"
    )
    moderation_output_failure: Literal["closed", "open"] = Field(
        "open", alias="PARLEY_MODERATION_OUTPUT_FAILURE"
    )
    moderation_buffer: bool = Field(False, alias="PARLEY_MODERATION_BUFFER")

    admins: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_ADMINS")
    allow_users: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_ALLOW_USERS")
    block_users: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_BLOCK_USERS")
    allow_channels: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_ALLOW_CHANNELS")
    block_channels: Annotated[tuple[str, ...], NoDecode] = Field((), alias="PARLEY_BLOCK_CHANNELS")
    allow_workspaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), alias="PARLEY_ALLOW_WORKSPACES"
    )
    block_workspaces: Annotated[tuple[str, ...], NoDecode] = Field(
        (), alias="PARLEY_BLOCK_WORKSPACES"
    )
    user_rpm: NonNegativeInt = Field(20, alias="PARLEY_USER_RPM")
    user_tokens_per_day: NonNegativeInt = Field(0, alias="PARLEY_USER_TOKENS_PER_DAY")
    # NoDecode: our validator parses the JSON, so a typo is a one-line error, not a traceback.
    prices: Annotated[dict[str, tuple[NonNegativeFloat, NonNegativeFloat]], NoDecode] = Field(
        default_factory=dict, alias="PARLEY_PRICES"
    )

    embedding_model: str = Field("local", alias="PARLEY_EMBEDDING_MODEL", min_length=1)
    embedding_base_url: AnyHttpUrl | None = Field(None, alias="PARLEY_EMBEDDING_BASE_URL")
    kb_passages: NonNegativeInt = Field(4, alias="PARLEY_KB_PASSAGES")
    kb_tokens: PositiveInt = Field(1500, alias="PARLEY_KB_TOKENS")

    # Images, voice notes and files sent to the bot.
    vision: Literal["auto", "always", "never"] = Field("auto", alias="PARLEY_VISION")
    max_attachment_mb: Annotated[float, Field(gt=0, le=2000)] = Field(
        20.0, alias="PARLEY_MAX_ATTACHMENT_MB"
    )
    file_max_chars: PositiveInt = Field(100_000, alias="PARLEY_FILE_MAX_CHARS")
    transcription_model: str = Field("whisper-1", alias="PARLEY_TRANSCRIPTION_MODEL")
    transcription_base_url: AnyHttpUrl | None = Field(None, alias="PARLEY_TRANSCRIPTION_BASE_URL")
    transcription_api_key: SecretStr | None = Field(None, alias="PARLEY_TRANSCRIPTION_API_KEY")

    http_host: str = Field("127.0.0.1", alias="PARLEY_HTTP_HOST", min_length=1)
    http_port: int = Field(8080, alias="PARLEY_HTTP_PORT", ge=0, le=65535)
    http_cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), alias="PARLEY_HTTP_CORS_ORIGINS"
    )
    jwt_secret: SecretStr | None = Field(None, alias="PARLEY_JWT_SECRET")
    jwt_jwks_url: AnyHttpUrl | None = Field(None, alias="PARLEY_JWT_JWKS_URL")
    jwt_audience: str | None = Field(None, alias="PARLEY_JWT_AUDIENCE")
    jwt_issuer: str | None = Field(None, alias="PARLEY_JWT_ISSUER")
    jwt_admin_role: str = Field("parley-admin", alias="PARLEY_JWT_ADMIN_ROLE", min_length=1)

    slack_bot_token: SecretStr | None = Field(None, alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, alias="SLACK_SIGNING_SECRET")
    slack_api_url: AnyHttpUrl = Field(AnyHttpUrl("https://slack.com/api/"), alias="SLACK_API_URL")
    slack_update_interval: PositiveFloat = Field(1.0, alias="PARLEY_SLACK_UPDATE_INTERVAL")
    slack_ignore_bots: bool = Field(True, alias="PARLEY_SLACK_IGNORE_BOTS")

    telegram_bot_token: SecretStr | None = Field(None, alias="TELEGRAM_BOT_TOKEN")
    telegram_api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://api.telegram.org"), alias="TELEGRAM_API_URL"
    )
    telegram_webhook_url: AnyHttpUrl | None = Field(None, alias="TELEGRAM_WEBHOOK_URL")
    telegram_webhook_secret: SecretStr | None = Field(None, alias="TELEGRAM_WEBHOOK_SECRET")
    telegram_update_interval: PositiveFloat = Field(1.0, alias="PARLEY_TELEGRAM_UPDATE_INTERVAL")

    discord_bot_token: SecretStr | None = Field(None, alias="DISCORD_BOT_TOKEN")
    discord_api_url: AnyHttpUrl = Field(
        AnyHttpUrl("https://discord.com/api/v10"), alias="DISCORD_API_URL"
    )
    discord_gateway_url: str = Field(
        "wss://gateway.discord.gg/", alias="DISCORD_GATEWAY_URL", pattern=r"^wss?://"
    )
    discord_shard_count: PositiveInt | None = Field(None, alias="DISCORD_SHARD_COUNT")
    discord_shard_ids: Annotated[tuple[NonNegativeInt, ...], NoDecode] = Field(
        (), alias="DISCORD_SHARD_IDS"
    )
    discord_update_interval: PositiveFloat = Field(1.0, alias="PARLEY_DISCORD_UPDATE_INTERVAL")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "WARNING", alias="PARLEY_LOG_LEVEL"
    )
    # json: one object per line (timestamp, level, logger, message, turn ids) for collectors.
    log_format: Literal["text", "json"] = Field("text", alias="PARLEY_LOG_FORMAT")
    # Users' messages and the bot's replies in the log (at INFO): off unless asked for.
    log_messages: bool = Field(False, alias="PARLEY_LOG_MESSAGES")

    @field_validator("database_url")
    @classmethod
    def _async_database_url(cls, value: str) -> str:
        if not value.strip():
            return default_database_url()
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError(
                "not a database URL; use e.g. sqlite+aiosqlite:///./parley.db "
                "or postgresql+asyncpg://user@host/dbname"
            ) from None
        driver = _ASYNC_DRIVERS.get(url.drivername)
        if driver is None:
            raise ValueError(f"unsupported database '{url.drivername}'; use SQLite or PostgreSQL")
        return url.set(drivername=driver).render_as_string(hide_password=False)

    @field_validator(
        "tool_modules",
        "http_cors_origins",
        "discord_shard_ids",
        "moderation",
        "admins",
        "allow_users",
        "block_users",
        "allow_channels",
        "block_channels",
        "allow_workspaces",
        "block_workspaces",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("mcp_servers", mode="before")
    @classmethod
    def _mcp_servers(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'not JSON ({exc.msg}); write e.g. {{"files": {{"command": "npx", '
                    f'"args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]}}}}'
                ) from None
        if isinstance(value, dict) and set(value) == {"mcpServers"}:
            value = value["mcpServers"]  # the whole file other MCP clients read
        if isinstance(value, dict):
            bad = [name for name in value if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", str(name))]
            if bad:
                raise ValueError(
                    f"server name {bad[0]!r}: use letters, digits, _ and - (32 at most)"
                )
        return value

    @field_validator("prices", mode="before")
    @classmethod
    def _json_object(cls, value: object) -> object:
        # The environment gives JSON text; keyword arguments (tests, tools) may give it too.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f'not JSON ({exc.msg}); write e.g. {{"my-model": [0.15, 0.60]}}'
                ) from None
        return value

    @field_validator("moderation_policy")
    @classmethod
    def _existing_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file")
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("a bot token starts with xoxb- (the app's OAuth & Permissions page)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError(
                "an app-level token starts with xapp- (Basic Information > App-Level Tokens, "
                "scope connections:write)"
            )
        return value

    @field_validator("telegram_bot_token")
    @classmethod
    def _telegram_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"\d+:[\w-]{20,}", value.get_secret_value()):
            raise ValueError("not a bot token; @BotFather gives one like 123456789:AAH…")
        return value

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Telegram's own rule for secret_token; it rejects setWebhook otherwise.
        secret = value.get_secret_value() if value is not None else ""
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", secret):
            raise ValueError("use 1-256 characters: letters, digits, _ and -")
        return value

    @model_validator(mode="after")
    def _discord_shards(self) -> Settings:
        count, ids = self.discord_shard_count, self.discord_shard_ids
        if ids and count is None:
            raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the total number)")
        if count is not None and any(shard >= count for shard in ids):
            raise ValueError(f"DISCORD_SHARD_IDS must be below DISCORD_SHARD_COUNT ({count})")
        return self

    @model_validator(mode="after")
    def _telegram_webhook(self) -> Settings:
        if self.telegram_webhook_url and not self.telegram_webhook_secret:
            raise ValueError(
                "TELEGRAM_WEBHOOK_URL is set but TELEGRAM_WEBHOOK_SECRET is not: without it "
                "anyone could post updates to the webhook"
            )
        return self

    @model_validator(mode="after")
    def _slack_transport(self) -> Settings:
        if self.slack_bot_token and not (self.slack_app_token or self.slack_signing_secret):
            raise ValueError(
                "SLACK_BOT_TOKEN is set but neither SLACK_APP_TOKEN (Socket Mode) nor "
                "SLACK_SIGNING_SECRET (HTTP events) is"
            )
        return self

    @model_validator(mode="after")
    def _moderators_configured(self) -> Settings:
        if "none" in self.moderation:
            if len(self.moderation) > 1:
                raise ValueError("PARLEY_MODERATION: 'none' cannot be combined with moderators")
            self.moderation = ()
        if "rules" in self.moderation and self.moderation_policy is None:
            raise ValueError(
                "PARLEY_MODERATION includes 'rules' but PARLEY_MODERATION_POLICY names no "
                "policy file to read them from"
            )
        if "openai" in self.moderation and self.uses_embedded_model:
            raise ValueError(
                "PARLEY_MODERATION includes 'openai' but no model service is configured "
                "(set OPENAI_API_KEY or OPENAI_BASE_URL)"
            )
        return self

    @field_validator("personas_dir")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @property
    def uses_embedded_model(self) -> bool:
        """True when no model service is configured, so the bundled local model answers."""
        return self.openai_api_key is None and self.openai_base_url is None


def default_database_url() -> str:
    """SQLite in the user's data directory (~/.local/share/parley on Linux, honouring
    XDG_DATA_HOME; ~/Library/Application Support/parley on macOS; %LOCALAPPDATA% on Windows)."""
    folder = platformdirs.user_data_path("parley", appauthor=False, ensure_exists=True)
    return f"sqlite+aiosqlite:///{folder / 'parley.db'}"


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and `.env`; a bad value becomes a one-line ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def _secret_bearing() -> frozenset[str]:
    """Settings whose values are never shown in an error: tokens and keys, and the MCP
    servers (their headers and environment carry credentials)."""
    return frozenset(
        key
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation) or name == "mcp_servers"
        for key in (name, field.alias or name)
    )


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad setting, what is wrong, and the value given."""
    aliases = {name: field.alias or name for name, field in Settings.model_fields.items()}
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a check across settings: its message names them
            parts.append(message)
            continue
        name = str(error["loc"][0])
        inside = [str(part) for part in error["loc"][1:] if isinstance(part, str)]
        setting = ".".join([aliases.get(name, name), *inside])  # PARLEY_MCP_SERVERS.wiki.url
        given = error.get("input")
        hidden = given is None or isinstance(given, dict) or name in _secret_bearing()
        shown = "" if hidden else f" (got {str(given)!r})"
        parts.append(f"{setting}: {message}{shown}")
    return "invalid setting " + "; ".join(parts)
