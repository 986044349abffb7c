"""One root for every error Parley raises on purpose."""

from __future__ import annotations

from enum import Enum


class ParleyError(Exception):
    """Base class of Parley's own errors."""


class ConfigError(ParleyError):
    """A setting is wrong; the message names it and says what to do. Stops start-up."""


class ModelFailure(Enum):
    """Why a model call failed, in words the user-facing layer can map to a message."""

    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    UNREACHABLE = "unreachable"
    AUTHENTICATION = "authentication"
    MODEL_NOT_FOUND = "model_not_found"
    REJECTED = "rejected"
    # The stream stopped before the model finished (connection broke, or the server ended the
    # stream without a finish reason): what arrived is not a complete answer.
    INTERRUPTED = "interrupted"


class ModelError(ParleyError):
    """The model could not answer, after the client's bounded retries (and the fallback)."""

    def __init__(self, kind: ModelFailure, detail: str) -> None:
        super().__init__(f"{kind.value}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def worth_fallback(self) -> bool:
        """A fallback model can help when the primary is down or overloaded, not when we are."""
        return self.kind is not ModelFailure.AUTHENTICATION
