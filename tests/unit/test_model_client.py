"""OpenAIModelClient through the real openai client against the scripted model server:
streams that stop early, and Retry-Afters too long to wait for."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import select

from core import wording
from core.config import load_settings
from core.errors import ConfigError, ModelError, ModelFailure
from core.events import Delta, Failed
from core.llm import (
    ModelChunk,
    ModelRequest,
    OpenAIModelClient,
    TextChunk,
    ToolCallChunk,
    UsageChunk,
    retry_after_seconds,
)
from core.storage.tables import messages
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import turn

REQUEST = ModelRequest(
    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=64
)
ANSWER = "The quick brown fox jumps over the lazy dog."


@asynccontextmanager
async def model_client(
    fake: FakeOpenAI, *, max_retries: int = 2, **options: Any
) -> AsyncIterator[OpenAIModelClient]:
    client = OpenAIModelClient(
        api_key="sk-test",
        base_url=fake.base_url,
        timeout=10.0,
        max_retries=max_retries,
        **options,
    )
    try:
        yield client
    finally:
        await client.close()


async def collect(
    client: OpenAIModelClient, request: ModelRequest = REQUEST
) -> tuple[list[ModelChunk], ModelError | None]:
    """The chunks the client yielded, and the ModelError that ended them (if any)."""
    chunks: list[ModelChunk] = []
    try:
        async for chunk in client.stream(request):
            chunks.append(chunk)
    except ModelError as exc:
        return chunks, exc
    return chunks, None


def text_of(chunks: list[ModelChunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextChunk))


# --- streams -------------------------------------------------------------------------------


async def test_a_complete_stream_yields_text_then_usage(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(ANSWER, usage=(12, 9))
    async with model_client(fake_openai) as client:
        chunks, error = await collect(client)
    assert error is None
    assert text_of(chunks) == ANSWER
    assert len(chunks) > 2  # it streamed
    assert chunks[-1] == UsageChunk(prompt_tokens=12, completion_tokens=9, model="gpt-4o-mini")


async def test_a_complete_stream_of_tool_calls_still_works(fake_openai: FakeOpenAI) -> None:
    fake_openai.call(("calculate", '{"expression": "6*7"}'))
    async with model_client(fake_openai) as client:
        chunks, error = await collect(client)
    assert error is None
    calls = [c for c in chunks if isinstance(c, ToolCallChunk)]
    assert calls[0].name == "calculate"
    assert "".join(c.arguments for c in calls) == '{"expression": "6*7"}'


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"finish": False}, id="no-finish-reason-then-DONE"),
        pytest.param({"finish": False, "done": False}, id="no-finish-reason-no-DONE"),
        pytest.param({"cut_after": 3}, id="connection-cut"),
    ],
)
async def test_a_stream_that_stops_early_is_interrupted_after_its_text(
    fake_openai: FakeOpenAI, fault: dict[str, Any]
) -> None:
    fake_openai.reply(ANSWER, chunk_size=4, **fault)
    fake_openai.reply("from the fallback")  # must not be asked: text was already shown
    async with model_client(fake_openai, fallback_model="gpt-4.1-mini") as client:
        chunks, error = await collect(client)
    assert error is not None and error.kind is ModelFailure.INTERRUPTED
    expected = ANSWER[:12] if "cut_after" in fault else ANSWER
    assert text_of(chunks) == expected
    assert not any(isinstance(c, UsageChunk) for c in chunks)
    assert len(fake_openai.chat_requests) == 1


async def test_a_stream_cut_before_any_text_goes_to_the_fallback(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.reply(ANSWER, cut_after=0)
    fake_openai.reply("from the fallback")
    async with model_client(fake_openai, fallback_model="gpt-4.1-mini") as client:
        chunks, error = await collect(client)
    assert error is None
    assert text_of(chunks) == "from the fallback"
    assert [r["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini", "gpt-4.1-mini"]


async def test_the_user_is_told_the_answer_was_cut_off_and_no_reply_is_stored(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply(ANSWER, chunk_size=4, cut_after=3)
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "tell me about foxes")
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            rows = (await connection.execute(select(messages.c.role))).scalars().all()
    assert "".join(e.text for e in events if isinstance(e, Delta)) == ANSWER[:12]
    failed = events[-1]
    assert failed == Failed(
        text=wording.MODEL_FAILURE[ModelFailure.INTERRUPTED], reason="interrupted"
    )
    assert isinstance(failed, Failed) and failed.partial == ANSWER[:12]
    assert rows == ["user"]


# --- Retry-After ---------------------------------------------------------------------------


async def test_a_retry_after_within_the_maximum_is_waited_for(fake_openai: FakeOpenAI) -> None:
    fake_openai.error(429, retry_after=1)
    fake_openai.reply(ANSWER)
    async with model_client(fake_openai, max_retry_after=5.0) as client:
        started = time.monotonic()
        chunks, error = await collect(client)
        elapsed = time.monotonic() - started
    assert error is None and text_of(chunks) == ANSWER
    assert len(fake_openai.chat_requests) == 2
    assert elapsed >= 0.9  # it did wait as asked


def in_two_minutes() -> str:
    return email.utils.formatdate(time.time() + 120, usegmt=True)


@pytest.mark.parametrize(
    ("status", "options"),
    [
        pytest.param(429, {"retry_after": 120}, id="429-seconds"),
        pytest.param(429, {"retry_after": 30}, id="429-within-the-SDK-limit"),
        pytest.param(429, {"headers": {"retry-after-ms": "120000"}}, id="429-ms"),
        pytest.param(429, {"retry_after": "date"}, id="429-http-date"),
        pytest.param(503, {"retry_after": 120}, id="503-seconds"),
    ],
)
async def test_a_retry_after_beyond_the_maximum_fails_at_once(
    fake_openai: FakeOpenAI, status: int, options: dict[str, Any]
) -> None:
    if options.get("retry_after") == "date":
        options = {"retry_after": in_two_minutes()}
    fake_openai.error(status, **options)
    fake_openai.reply("too late")
    async with model_client(fake_openai, max_retries=2, max_retry_after=5.0) as client:
        started = time.monotonic()
        chunks, error = await collect(client)
        elapsed = time.monotonic() - started
    assert chunks == []
    assert error is not None and error.kind is ModelFailure.RATE_LIMITED
    assert elapsed < 3
    assert len(fake_openai.chat_requests) == 1


async def test_a_retry_after_beyond_the_maximum_goes_to_the_fallback_at_once(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.error(429, retry_after=120)
    fake_openai.reply("from the fallback", usage=(8, 3))
    async with model_client(
        fake_openai, max_retries=2, max_retry_after=5.0, fallback_model="gpt-4.1-mini"
    ) as client:
        started = time.monotonic()
        chunks, error = await collect(client)
        elapsed = time.monotonic() - started
    assert error is None and text_of(chunks) == "from the fallback"
    assert chunks[-1] == UsageChunk(8, 3, "gpt-4.1-mini")
    assert [r["model"] for r in fake_openai.chat_requests] == ["gpt-4o-mini", "gpt-4.1-mini"]
    assert elapsed < 3


def test_retry_after_is_read_as_the_sdk_reads_it() -> None:
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "1.5"}) == 1.5
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "soon"}) is None
    from_date = retry_after_seconds({"retry-after": in_two_minutes()})
    assert from_date is not None and 115 < from_date <= 120


def test_the_maximum_retry_after_is_a_validated_setting() -> None:
    assert load_settings(_env_file=None).model_max_retry_after == 20.0
    settings = load_settings(_env_file=None, PARLEY_MODEL_MAX_RETRY_AFTER="2.5")
    assert settings.model_max_retry_after == 2.5
    for bad in ("-1", "600", "soon"):
        with pytest.raises(ConfigError, match="PARLEY_MODEL_MAX_RETRY_AFTER"):
            load_settings(_env_file=None, PARLEY_MODEL_MAX_RETRY_AFTER=bad)


@pytest.mark.parametrize("model", ["gpt-5-mini", "o4-mini", "openai/o3"])
async def test_reasoning_models_get_max_completion_tokens_and_no_temperature(
    fake_openai: FakeOpenAI, model: str
) -> None:
    fake_openai.reply(ANSWER)
    request = replace(REQUEST, model=model, temperature=0.7)
    async with model_client(fake_openai, reasoning_effort="low") as client:
        _, error = await collect(client, request)
    assert error is None
    [sent] = fake_openai.chat_requests
    assert sent["max_completion_tokens"] == 64
    assert sent["reasoning_effort"] == "low"
    assert "max_tokens" not in sent and "temperature" not in sent


async def test_a_reasoning_effort_the_model_refuses_is_dropped_once_and_remembered(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.error(
        400,
        message="Unsupported value: 'reasoning_effort' does not support 'minimal' with this "
        "model. Supported values are: 'low', 'medium', and 'high'.",
        param="reasoning_effort",
        code="unsupported_value",
    )
    fake_openai.reply(ANSWER)
    fake_openai.reply(ANSWER)
    request = replace(REQUEST, model="o3")
    async with model_client(fake_openai, reasoning_effort="minimal") as client:
        _, error = await collect(client, request)
        assert error is None
        await collect(client, request)
    refused, retried, later = fake_openai.chat_requests
    assert refused["reasoning_effort"] == "minimal"
    assert "reasoning_effort" not in retried and "reasoning_effort" not in later


async def test_other_models_get_max_tokens_and_the_temperature(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(ANSWER)
    async with model_client(fake_openai, reasoning_effort="low") as client:
        await collect(client, replace(REQUEST, temperature=0.7))
    [sent] = fake_openai.chat_requests
    assert (sent["max_tokens"], sent["temperature"]) == (64, 0.7)
    assert "max_completion_tokens" not in sent and "reasoning_effort" not in sent


@pytest.mark.parametrize(
    ("param", "code", "message"),
    [
        (
            "temperature",
            "unsupported_value",
            "Unsupported value: 'temperature' does not support 0.7 with this model. Only the "
            "default (1) value is supported.",
        ),
        (
            "max_tokens",
            "unsupported_parameter",
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
            "'max_completion_tokens' instead.",
        ),
    ],
)
async def test_a_parameter_the_model_refuses_is_dropped_once_and_remembered(
    fake_openai: FakeOpenAI, param: str, code: str, message: str
) -> None:
    # OpenAI's 400s, as its API words them, for a model Parley does not know to be special.
    fake_openai.error(400, message=message, param=param, code=code)
    fake_openai.reply(ANSWER)
    fake_openai.reply(ANSWER)
    request = replace(REQUEST, model="acme-think-1", temperature=0.7)
    async with model_client(fake_openai) as client:
        first, error = await collect(client, request)
        assert error is None and first
        await collect(client, request)
    refused, retried, later = fake_openai.chat_requests
    assert param in refused and param not in retried and param not in later
    if param == "max_tokens":
        assert retried["max_completion_tokens"] == later["max_completion_tokens"] == 64
    else:
        assert retried["max_tokens"] == 64


async def test_a_refused_parameter_that_cannot_be_dropped_is_an_error(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.error(400, message="Unsupported value: 'tools'", param="tools", code="x")
    async with model_client(fake_openai) as client:
        _, error = await collect(client)
    assert error is not None and len(fake_openai.chat_requests) == 1


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        ('{"error": {"message": "overloaded", "type": "server_error"}}', ModelFailure.SERVER_ERROR),
        ("[1, 2]", ModelFailure.SERVER_ERROR),
        ('{"choices": "none"}', ModelFailure.SERVER_ERROR),
        ("{not json", ModelFailure.SERVER_ERROR),
    ],
)
async def test_an_unreadable_or_error_event_in_the_stream_is_a_model_error(
    fake_openai: FakeOpenAI, event: str, kind: ModelFailure
) -> None:
    fake_openai.reply("Hello there", events=[event])
    async with model_client(fake_openai, max_retries=0) as client:
        chunks, error = await collect(client)
    assert text_of(chunks) == "Hello there"  # what came before it stands
    assert error is not None and error.kind is kind


async def test_tool_call_fragments_and_usage_are_read_from_the_raw_chunks(
    fake_openai: FakeOpenAI,
) -> None:
    fake_openai.call(("calculate", '{"expression": "2+2"}'), text="Let me see.", usage=(12, 7))
    async with model_client(fake_openai) as client:
        chunks, error = await collect(client)
    assert error is None
    calls = [c for c in chunks if isinstance(c, ToolCallChunk)]
    assert calls[0].id and calls[0].name == "calculate" and calls[0].index == 0
    assert "".join(c.arguments for c in calls) == '{"expression": "2+2"}'
    assert chunks[-1] == UsageChunk(12, 7, "gpt-4o-mini")


# --- servers that drop kept-alive connections ------------------------------------------------

STREAM = (
    b"".join(
        b"data: " + json.dumps(chunk).encode() + b"\n\n"
        for chunk in (
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "local",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
            },
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "local",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            },
        )
    )
    + b"data: [DONE]\n\n"
)


class DropsKeptAliveConnections:
    """Answers one request per connection and promises to keep it open, then closes it as the
    next request arrives on it, unanswered: llama.cpp's server past its keep-alive count,
    every time instead of now and then."""

    def __init__(self) -> None:
        self.connections = 0
        self.base_url = ""

    async def __aenter__(self) -> DropsKeptAliveConnections:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            for answered in (False, True):
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                if answered:
                    return  # the second request on this connection: no answer
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n" % len(STREAM) + STREAM
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed it first (it said "Connection: close")
        finally:
            writer.close()


@pytest.mark.parametrize("keep_alive", [True, False])
async def test_a_client_without_keep_alive_survives_a_server_that_drops_connections(
    keep_alive: bool,
) -> None:
    async with DropsKeptAliveConnections() as server:
        client = OpenAIModelClient(
            api_key="local",
            base_url=server.base_url,
            timeout=10.0,
            max_retries=0,
            keep_alive=keep_alive,
        )
        try:
            results = [await collect(client) for _ in range(3)]
        finally:
            await client.close()
    if keep_alive:  # the second request went out on the dropped connection
        assert results[0][1] is None and results[1][1] is not None
    else:
        assert [(text_of(chunks), error) for chunks, error in results] == [("Hi", None)] * 3
        assert server.connections == 3
