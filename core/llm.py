"""The model client: the official openai SDK against any OpenAI-compatible server."""

from __future__ import annotations

import email.utils
import logging
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Mapping
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
    `max_retries`, except that a Retry-After longer than `max_retry_after` seconds fails at
    once (RATE_LIMITED) instead of keeping the user waiting. When the primary model still
    fails before any text arrived, the fallback model gets one try. A stream that stops before
    a finish reason arrived raises INTERRUPTED after the text it brought.
    """

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        fallback_model: str | None = None,
        max_retry_after: float = 20.0,
        reasoning_effort: str = "",
        keep_alive: bool = True,
    ) -> None:
        """`keep_alive=False`: a new connection per request, for servers that close a kept-alive
        connection just as the next request goes out on it (llama.cpp's server, after a few
        requests: "Server disconnected without sending a response")."""
        self._max_retry_after = max_retry_after
        # How long reasoning models think before answering ("" leaves it to the server): a
        # chat wants an answer in seconds, not the API's default medium effort.
        self._reasoning_effort = reasoning_effort
        # Too long a Retry-After: the response hook adds `x-should-retry: false`, which the SDK
        # obeys (it does not retry, and raises the status error at once). Retry-Afters within
        # the maximum, backoff and connection errors stay the SDK's own: a retry loop of ours
        # would duplicate all of that to change one decision.
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=max_retries,
            timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)),
            http_client=openai.DefaultAsyncHttpxClient(
                event_hooks={"response": [self._refuse_long_waits]}
            ),
            default_headers=None if keep_alive else {"Connection": "close"},
        )
        self._fallback_model = fallback_model
        # OpenAI's own API takes max_completion_tokens (max_tokens is refused by its reasoning
        # models); every other OpenAI-compatible server reads max_tokens.
        self._official = base_url is None or "api.openai.com" in base_url
        # Parameters a model refused (a 400 naming them): not sent to it again.
        self._refused: dict[str, set[str]] = {}

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

    async def _refuse_long_waits(self, response: Any) -> None:
        """Response hook (httpx or httpx2, as the SDK uses): no retry after too long a wait."""
        if self._waits_too_long(response.status_code, response.headers):
            response.headers["x-should-retry"] = "false"

    def _waits_too_long(self, status: int, headers: Mapping[str, str]) -> bool:
        if status not in _RETRIED_STATUSES and status < 500:
            return False
        wait = retry_after_seconds(headers)
        return wait is not None and wait > self._max_retry_after

    def _model_error(self, exc: openai.OpenAIError) -> ModelError:
        if (
            isinstance(exc, openai.APIStatusError)
            and exc.status_code in (429, 503)
            and self._waits_too_long(exc.status_code, exc.response.headers)
        ):
            wait = retry_after_seconds(exc.response.headers)
            return ModelError(
                ModelFailure.RATE_LIMITED,
                f"{exc.status_code}: the server asks to wait {wait:.0f} s, longer than "
                f"the {self._max_retry_after:g} s worth waiting for",
            )
        return as_model_error(exc)

    async def _stream_once(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        arguments: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        refused = self._refused.setdefault(request.model, set())
        if self._official or is_reasoning_model(request.model) or "max_tokens" in refused:
            arguments["max_completion_tokens"] = request.max_tokens
        else:
            arguments["max_tokens"] = request.max_tokens
        # OpenAI's reasoning models take no temperature but the default.
        if request.temperature is not None and not is_reasoning_model(request.model):
            arguments["temperature"] = request.temperature
        if self._reasoning_effort and is_reasoning_model(request.model):
            arguments["reasoning_effort"] = self._reasoning_effort
        if request.tools:
            arguments["tools"] = request.tools
        for name in refused & {"temperature", "top_p", "reasoning_effort"}:
            arguments.pop(name, None)
        try:
            # The SDK's own request (retries, errors, SSE, error events), with each chunk left
            # as the parsed JSON: building its pydantic object took about 40 times as long as
            # parsing, for every one of a reply's ~75 chunks.
            # `object`, not `dict[str, Any]`: the SDK walks every value of a typed dict.
            stream: openai.AsyncStream[Any] = await self._client.post(
                "/chat/completions",
                body=arguments,
                cast_to=object,
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.BadRequestError as exc:
            param = _unsupported_parameter(exc)
            if param is None or param in refused:
                raise self._model_error(exc) from exc
            # Once per model and parameter: remembered, then the request goes again without it.
            log.warning("model %s refuses %s; not sending it again", request.model, param)
            refused.add(param)
            async for chunk in self._stream_once(request):
                yield chunk
            return
        except openai.OpenAIError as exc:
            raise self._model_error(exc) from exc
        finished = False
        try:
            async with stream:
                async for data in stream:
                    choices = data.get("choices")
                    if choices:
                        finished = finished or any(c.get("finish_reason") for c in choices)
                        delta = choices[0].get("delta") or {}
                        if content := delta.get("content"):
                            yield TextChunk(content)
                        for call in delta.get("tool_calls") or ():
                            function = call.get("function") or {}
                            yield ToolCallChunk(
                                index=call.get("index", 0),
                                id=call.get("id"),
                                name=function.get("name"),
                                arguments=function.get("arguments") or "",
                            )
                    if usage := data.get("usage"):
                        yield UsageChunk(
                            prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=usage.get("completion_tokens", 0),
                            model=data.get("model") or request.model,
                        )
        except (AttributeError, TypeError, ValueError) as exc:
            # JSON that is not a chat completion chunk (or not JSON): the server is broken.
            raise ModelError(
                ModelFailure.SERVER_ERROR, f"unreadable chunk in the stream: {exc!r}"
            ) from exc
        except openai.APITimeoutError as exc:
            raise ModelError(ModelFailure.TIMEOUT, f"while streaming: {exc}") from exc
        except openai.APIConnectionError as exc:
            # openai 3 wraps a connection that breaks while the stream is read.
            raise ModelError(ModelFailure.INTERRUPTED, f"{exc}: {exc.__cause__!r}") from exc
        except openai.OpenAIError as exc:
            raise self._model_error(exc) from exc
        # Older SDKs let the HTTP library's errors escape while the stream is read.
        except _http_errors("TimeoutException") as exc:
            raise ModelError(ModelFailure.TIMEOUT, f"while streaming: {exc!r}") from exc
        except _http_errors("TransportError") as exc:
            raise ModelError(ModelFailure.INTERRUPTED, repr(exc)) from exc
        if not finished:
            raise ModelError(
                ModelFailure.INTERRUPTED, "the stream ended before any finish_reason arrived"
            )


# Statuses the SDK retries besides 5xx (as its `_should_retry` does).
_RETRIED_STATUSES = frozenset({408, 409, 429})


def _http_errors(name: str) -> tuple[type[Exception], ...]:
    """The class `name` of each HTTP library loaded: `httpx` (openai 1.x) and `httpx2` (3.x)."""
    modules = (sys.modules.get("httpx"), sys.modules.get("httpx2"))
    return tuple(getattr(module, name) for module in modules if module is not None)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for, as the SDK reads it: `retry-after-ms`, else `retry-after`
    in seconds or as an HTTP date. None when absent or unreadable."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        return None if math.isnan(seconds) else seconds
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else email.utils.mktime_tz(parsed) - time.time()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


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


_REASONING_MODEL = re.compile(r"(?:.*/)?(?:o\d|gpt-5)(?:[-.:].*)?", re.IGNORECASE)


def is_reasoning_model(model: str) -> bool:
    """OpenAI's o-series and gpt-5 family (also behind a provider prefix, "openai/o3")."""
    return _REASONING_MODEL.fullmatch(model) is not None


def _unsupported_parameter(exc: openai.BadRequestError) -> str | None:
    """The parameter a 400 says the model does not support, if it names one we can drop."""
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    param = error.get("param") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if code in ("unsupported_parameter", "unsupported_value") and param in _DROPPABLE:
        return str(param)
    return None


_DROPPABLE = frozenset({"temperature", "top_p", "max_tokens", "reasoning_effort"})


class OpenAITranscriber:
    """Speech to text through an OpenAI-compatible `/v1/audio/transcriptions` (OpenAI's, or a
    local Whisper server's)."""

    def __init__(
        self, *, api_key: str, base_url: str | None, model: str, timeout: float, max_retries: int
    ) -> None:
        self._model = model
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout
        )

    async def close(self) -> None:
        await self._client.close()

    async def transcribe(self, data: bytes, name: str, mime: str) -> str:
        result = await self._client.audio.transcriptions.create(
            model=self._model,
            file=(name, data, mime or "application/octet-stream"),
            response_format="json",
        )
        return result.text
