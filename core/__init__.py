"""Parley's conversation engine. Imports no platform SDK."""

from core.config import Settings, load_settings
from core.conversation import Engine, EngineOptions
from core.errors import ConfigError, ModelError, ModelFailure, ParleyError
from core.events import (
    Accepted,
    CommandResult,
    ConversationKey,
    Delta,
    Failed,
    Final,
    Inbound,
    Refused,
    ReplyEvent,
    Retracted,
    ToolFinished,
    ToolStarted,
    Usage,
)
from core.llm import ModelClient, ModelRequest, OpenAIModelClient
from core.moderation import Action, Direction, Finding, ModerationChain, Moderator, Verdict
from core.personas import Persona, PersonaCatalogue
from core.tools import Tool, ToolContext, ToolRegistry, tool

__all__ = [
    "Accepted",
    "Action",
    "CommandResult",
    "ConfigError",
    "ConversationKey",
    "Delta",
    "Direction",
    "Engine",
    "EngineOptions",
    "Failed",
    "Final",
    "Finding",
    "Inbound",
    "ModelClient",
    "ModelError",
    "ModelFailure",
    "ModelRequest",
    "ModerationChain",
    "Moderator",
    "OpenAIModelClient",
    "ParleyError",
    "Persona",
    "PersonaCatalogue",
    "Refused",
    "ReplyEvent",
    "Retracted",
    "Settings",
    "Tool",
    "ToolContext",
    "ToolFinished",
    "ToolRegistry",
    "ToolStarted",
    "Usage",
    "Verdict",
    "load_settings",
    "tool",
]
