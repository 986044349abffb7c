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
    ToolFinished,
    ToolStarted,
    Usage,
)
from core.llm import ModelClient, ModelRequest, OpenAIModelClient
from core.personas import Persona, PersonaCatalogue
from core.tools import Tool, ToolContext, ToolRegistry, tool

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
    "Tool",
    "ToolContext",
    "ToolFinished",
    "ToolRegistry",
    "ToolStarted",
    "Usage",
    "load_settings",
    "tool",
]
