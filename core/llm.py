"""The model client: the official openai SDK against any OpenAI-compatible server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import openai

from core.errors import ModelError, ModelFailure

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One chat completion request, in OpenAI's message format."""

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TextChunk:
    """A piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A fragment of a tool call: the first of a call carries its id and name, later ones
    carry pieces of its JSON arguments. `index` tells the calls of one reply apart."""

    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class UsageChunk:
    """Token usage the server reported, for the model that actually answered."""

    prompt_tokens: int
    completion_tokens: int
    model: str


ModelChunk = TextChunk | ToolCallChunk | UsageChunk


class ModelClient(Protocol):
    """Streams a chat completion; raises ModelError when the model cannot answer."""

    def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]: ...


class OpenAIModelClient:
    """ModelClient on `openai.AsyncOpenAI`.

    Retries (429, 5xx, timeouts, honouring Retry-After) are the SDK's, bounded by
    `max_retries`. When the primary model still fails before any text arrived, the fallback
    model gets one try.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        fallback_model: str | None = None,
    ) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)),
        )
        self._fallback_model = fallback_model

    async def close(self) -> None:
        await self._client.close()

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        produced = False
        try:
            async for chunk in self._stream_once(request):
                produced = True
                yield chunk
        except ModelError as exc:
            fallback = self._fallback_model
            if produced or not fallback or fallback == request.model or not exc.worth_fallback:
                raise
            log.warning("model %s failed (%s); trying fallback %s", request.model, exc, fallback)
            async for chunk in self._stream_once(replace(request, model=fallback)):
                yield chunk

    async def _stream_once(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        arguments: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.tools:
            arguments["tools"] = request.tools
        try:
            stream = await self._client.chat.completions.create(**arguments)
            async with stream:
                async for chunk in stream:
                    if chunk.choices:
                        delta = chunk.choices[0].delta
                        if delta.content:
                            yield TextChunk(delta.content)
                        for call in delta.tool_calls or ():
                            function = call.function
                            yield ToolCallChunk(
                                index=call.index,
                                id=call.id,
                                name=function.name if function else None,
                                arguments=(function.arguments or "") if function else "",
                            )
                    if chunk.usage is not None:
                        yield UsageChunk(
                            prompt_tokens=chunk.usage.prompt_tokens,
                            completion_tokens=chunk.usage.completion_tokens,
                            model=chunk.model or request.model,
                        )
        except openai.OpenAIError as exc:
            raise as_model_error(exc) from exc


def as_model_error(exc: openai.OpenAIError) -> ModelError:
    """Map the SDK's exceptions onto the few failures a user needs told apart."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelError(ModelFailure.TIMEOUT, str(exc))
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(ModelFailure.UNREACHABLE, str(exc))
    if isinstance(exc, openai.RateLimitError):
        return ModelError(ModelFailure.RATE_LIMITED, str(exc))
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelError(ModelFailure.AUTHENTICATION, str(exc))
    if isinstance(exc, openai.NotFoundError):
        return ModelError(ModelFailure.MODEL_NOT_FOUND, str(exc))
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return ModelError(ModelFailure.SERVER_ERROR, str(exc))
    if isinstance(exc, openai.APIStatusError):
        return ModelError(ModelFailure.REJECTED, str(exc))
    # An error event inside the stream, or anything the SDK adds later.
    return ModelError(ModelFailure.SERVER_ERROR, str(exc))
