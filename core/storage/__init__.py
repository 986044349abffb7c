"""Durable sessions: the SessionStore port and its SQL implementation."""

from core.storage.base import (
    ConversationState,
    NewMessage,
    SessionStore,
    StoredMessage,
    UsageRecord,
    UsageTotals,
)
from core.storage.database import create_database_engine, migrate
from core.storage.sql import SqlStore

__all__ = [
    "ConversationState",
    "NewMessage",
    "SessionStore",
    "SqlStore",
    "StoredMessage",
    "UsageRecord",
    "UsageTotals",
    "create_database_engine",
    "migrate",
]
