"""A scripted OpenAI-compatible server on 127.0.0.1, reached through the real `openai` client.

Tests queue what the next requests get (text, streamed or whole; HTTP errors with
Retry-After; delays; streams that end early or whose connection is cut) and then assert on
`requests`, the exact JSON bodies received.

`/v1/moderations` has a queue of its own (`flag`, `moderation_error`, `moderation_body`) and
content rules (`flag_when`) checked before it; with neither, every input passes unflagged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    text: str
    usage: tuple[int, int] | None = (10, 5)
    # (name, arguments JSON) pairs the model calls; sent in fragments unless `whole`.
    tool_calls: list[tuple[str, str]] = field(default_factory=list)
    whole: bool = False
    delay: float = 0.0  # before the response starts
    chunk_delay: float = 0.0  # between streamed chunks
    chunk_size: int = 4  # characters per streamed chunk
    model: str | None = None
    # Faults: no chunk with a finish_reason (nor usage) when `finish` is false; no
    # `data: [DONE]` when `done` is false; with `cut_after=N`, the connection is closed after
    # N text chunks, in the middle of the chunked body (the client sees a protocol error).
    finish: bool = True
    done: bool = True
    cut_after: int | None = None
    events: list[str] = field(default_factory=list)  # raw `data:` payloads after the text


@dataclass
class Error:
    status: int
    message: str = "scripted error"
    retry_after: float | str | None = None  # seconds, or a string sent as is (an HTTP date)
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # more, e.g. retry-after-ms
    # OpenAI's error fields: e.g. param "temperature", code "unsupported_value".
    param: str | None = None
    code: str | None = None


@dataclass
class Moderation:
    scores: dict[str, float]  # categories not named score 0.0
    flagged: tuple[str, ...]  # the categories whose boolean is true
    delay: float = 0.0


@dataclass
class RawBody:
    text: str  # sent as is, as application/json: malformed answers
    delay: float = 0.0


# Every category the openai SDK's Categories / CategoryScores types declare.
MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
NOT_FLAGGED = Moderation(scores={}, flagged=())


@dataclass
class Recorded:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Transcription:
    """One /v1/audio/transcriptions request as received."""

    model: str
    filename: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


class FakeOpenAI:
    """`async with FakeOpenAI() as fake:` then `fake.base_url` for the client."""

    def __init__(self) -> None:
        self.script: deque[Reply | Error] = deque()
        self.requests: list[Recorded] = []
        self.default: Reply | None = None
        self.moderations: deque[Moderation | Error | RawBody] = deque()
        self.moderation_rules: list[tuple[str, Moderation | Error]] = []
        self.transcripts: deque[str | Error] = deque()
        self.transcriptions: list[Transcription] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._arrived = asyncio.Condition()

    # --- scripting -----------------------------------------------------------------------
    def reply(self, text: str, **options: Any) -> None:
        self.script.append(Reply(text, **options))

    def call(self, *calls: tuple[str, str], text: str = "", **options: Any) -> None:
        """Queue a reply that calls tools: `call(("calculate", '{"expression": "1+1"}'))`."""
        self.script.append(Reply(text, tool_calls=list(calls), **options))

    def error(self, status: int, **options: Any) -> None:
        """Queue an HTTP error: `error(429, retry_after=1.5)`, `retry_after="<HTTP date>"`,
        `headers={"retry-after-ms": "1500"}`."""
        self.script.append(Error(status, **options))

    def flag(
        self,
        scores: Mapping[str, float],
        *,
        flagged: Iterable[str] | None = None,
        delay: float = 0.0,
    ) -> None:
        """Queue a moderation answer: `flag({"harassment": 0.91}, flagged=("harassment",))`.

        Categories not in `scores` score 0.0; `flagged` defaults to those scoring 0.5 or more.
        A request with a list of inputs takes one queued answer for all of them.
        """
        self.moderations.append(_moderation(scores, flagged, delay))

    def flag_when(
        self,
        substring: str,
        scores: Mapping[str, float] | None = None,
        *,
        flagged: Iterable[str] | None = None,
        error: int | None = None,
    ) -> None:
        """Any moderation input containing `substring` gets this answer, ahead of the queue.

        `error=500` answers such a request with that HTTP status instead of scores.
        """
        assert (scores is None) != (error is None), "scores or error, not both"
        answer = Error(error) if error is not None else _moderation(scores or {}, flagged, 0.0)
        self.moderation_rules.append((substring, answer))

    def moderation_error(
        self, status: int, retry_after: float | None = None, **options: Any
    ) -> None:
        """Queue an HTTP error for the next moderation request (`delay=`, `message=` too)."""
        self.moderations.append(Error(status, retry_after=retry_after, **options))

    def moderation_body(self, text: str, *, delay: float = 0.0) -> None:
        """Queue a literal answer body, sent as JSON whether it is or not (`'{"results": []}'`)."""
        self.moderations.append(RawBody(text, delay))

    def transcript(self, text: str) -> None:
        """Queue the text of the next /v1/audio/transcriptions answer."""
        self.transcripts.append(text)

    def transcription_error(self, status: int) -> None:
        self.transcripts.append(Error(status))

    async def received(self, count: int) -> None:
        """Wait (at most 10 s) until `count` requests have arrived."""
        async with asyncio.timeout(10):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def moderation_requests(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.path.endswith("/moderations")]

    # --- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/moderations", self._moderate)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    # --- handlers --------------------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append(Recorded(request.path, body, dict(request.headers)))
        async with self._arrived:
            self._arrived.notify_all()
        return body

    async def _transcribe(self, request: web.Request) -> web.Response:
        """The multipart form OpenAI's client sends: `file` (the audio) and `model`."""
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField), "the audio must come as a file part"
        self.transcriptions.append(
            Transcription(
                model=str(form.get("model", "")),
                filename=upload.filename,
                data=upload.file.read(),
                headers=dict(request.headers),
            )
        )
        step = self.transcripts.popleft() if self.transcripts else "(no transcript scripted)"
        if isinstance(step, Error):
            return web.json_response(
                {"error": {"message": "transcription failed", "type": "server_error"}},
                status=step.status,
            )
        return web.json_response({"text": step})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.script:
            step = self.script.popleft()
        elif self.default is not None:
            step = self.default
        else:
            return web.json_response(
                {"error": {"message": "FakeOpenAI: no scripted reply left", "type": "test"}},
                status=500,
            )
        if step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step, Error):
            return _error_response(step)
        model = step.model or body["model"]
        assert body.get("stream"), "Parley always streams"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for number, start in enumerate(range(0, len(step.text), step.chunk_size)):
            if number == step.cut_after:
                return _cut(request, response)
            piece = step.text[start : start + step.chunk_size]
            await _send(response, _chunk(model, {"content": piece}))
            if step.chunk_delay:
                await asyncio.sleep(step.chunk_delay)
        if step.cut_after is not None:
            return _cut(request, response)
        for event in step.events:
            await response.write(f"data: {event}\n\n".encode())
        for index, (name, arguments) in enumerate(step.tool_calls):
            for delta in _tool_call_deltas(index, name, arguments, whole=step.whole):
                await _send(response, _chunk(model, {"tool_calls": [delta]}))
        finish = "tool_calls" if step.tool_calls else "stop"
        if step.finish:
            await _send(response, _chunk(model, {}, finish_reason=finish))
        if step.finish and step.usage and (body.get("stream_options") or {}).get("include_usage"):
            prompt, completion = step.usage
            usage_chunk = _chunk(model, None)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(prompt, completion)
            await _send(response, usage_chunk)
        if step.done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _moderate(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        inputs: list[str] = [body["input"]] if isinstance(body["input"], str) else body["input"]
        answers = [self._rule_for(text) for text in inputs]
        failure = next((a for a in answers if isinstance(a, Error)), None)
        step: Moderation | Error | RawBody = failure or NOT_FLAGGED
        if failure is None and None in answers and self.moderations:
            step = self.moderations.popleft()
        if step.delay:
            await asyncio.sleep(step.delay)
        if isinstance(step, Error):
            return _error_response(step)
        if isinstance(step, RawBody):
            return web.Response(text=step.text, content_type="application/json")
        return web.json_response(
            {
                "id": "modr-fake",
                "model": body.get("model", "omni-moderation-latest"),
                "results": [
                    _moderation_result(a if isinstance(a, Moderation) else step) for a in answers
                ],
            }
        )

    def _rule_for(self, text: str) -> Moderation | Error | None:
        return next((answer for part, answer in self.moderation_rules if part in text), None)


def _moderation(
    scores: Mapping[str, float], flagged: Iterable[str] | None, delay: float
) -> Moderation:
    if flagged is None:
        flagged = [name for name, score in scores.items() if score >= 0.5]
    return Moderation(dict(scores), tuple(flagged), delay)


def _moderation_result(answer: Moderation) -> dict[str, Any]:
    # Categories a test names beyond the SDK's are sent too, as new ones would be.
    names = list(dict.fromkeys([*MODERATION_CATEGORIES, *answer.scores, *answer.flagged]))
    return {
        "flagged": bool(answer.flagged),
        "categories": {name: name in answer.flagged for name in names},
        "category_scores": {name: answer.scores.get(name, 0.0) for name in names},
        "category_applied_input_types": {name: ["text"] for name in names},
    }


def _cut(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Close the connection where the stream is: the chunked body never gets its last chunk."""
    assert request.transport is not None
    request.transport.close()  # what was written is flushed first
    return response


def _error_response(step: Error) -> web.Response:
    headers = dict(step.headers)
    if step.retry_after is not None:
        headers["Retry-After"] = str(step.retry_after)
    return web.json_response(
        {
            "error": {
                "message": step.message,
                "type": "invalid_request_error" if step.param else "scripted",
                "param": step.param,
                "code": step.code,
            }
        },
        status=step.status,
        headers=headers,
    )


async def _send(response: web.StreamResponse, payload: dict[str, Any]) -> None:
    await response.write(f"data: {json.dumps(payload)}\n\n".encode())


def _tool_call_deltas(
    index: int, name: str, arguments: str, *, whole: bool
) -> list[dict[str, Any]]:
    """As OpenAI streams a call: id and name first, then the arguments in pieces."""
    head = {
        "index": index,
        "id": f"call_{index}_{name}",
        "type": "function",
        "function": {"name": name, "arguments": arguments if whole else ""},
    }
    if whole:
        return [head]
    pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
    return [head, *({"index": index, "function": {"arguments": p}} for p in pieces)]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _chunk(
    model: str, delta: dict[str, Any] | None, finish_reason: str | None = None
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}],
    }
