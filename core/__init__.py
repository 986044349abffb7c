"""Parley's conversation engine. Imports no platform SDK."""

from core.config import Settings, load_settings
from core.conversation import Engine, EngineOptions
from core.errors import ConfigError, ModelError, ModelFailure, ParleyError
from core.events import (
    CommandResult,
    ConversationKey,
    Delta,
    Failed,
    Final,
    Inbound,
    Refused,
    ReplyEvent,
    Usage,
)
from core.llm import ModelClient, ModelRequest, OpenAIModelClient
from core.personas import Persona, PersonaCatalogue

__all__ = [
    "CommandResult",
    "ConfigError",
    "ConversationKey",
    "Delta",
    "Engine",
    "EngineOptions",
    "Failed",
    "Final",
    "Inbound",
    "ModelClient",
    "ModelError",
    "ModelFailure",
    "ModelRequest",
    "OpenAIModelClient",
    "ParleyError",
    "Persona",
    "PersonaCatalogue",
    "Refused",
    "ReplyEvent",
    "Settings",
    "Usage",
    "load_settings",
]
