"""The terminal adapter behind `parley chat`.

Interactive on a terminal (the reply streams in as it is written); with piped input, one
message per line in and each reply out on stdout, so it composes with other tools. Logs go
to stderr only.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Awaitable
from typing import TextIO

from core.conversation import Engine
from core.events import (
    CommandResult,
    ConversationKey,
    Delta,
    Failed,
    Final,
    Inbound,
    Refused,
    Retracted,
    ToolFinished,
    ToolStarted,
)
from core.storage.base import SessionStore

PLATFORM = "console"
EXIT_COMMANDS = frozenset({"/exit", "/quit"})


def local_user() -> str:
    """The operating-system account name (from the password database, not the environment)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


async def conversation_key(store: SessionStore, *, user: str, new: bool) -> ConversationKey:
    """This user's latest terminal conversation, or a new one."""
    workspace = socket.gethostname()
    thread = (
        None
        if new
        else await store.latest_thread(platform=PLATFORM, workspace=workspace, channel=user)
    )
    return ConversationKey(PLATFORM, workspace, user, thread or uuid.uuid4().hex[:12])


class Console:
    """Reads messages, sends each through the engine, prints the reply as it streams."""

    def __init__(
        self,
        engine: Engine,
        key: ConversationKey,
        *,
        user: str,
        bot_name: str,
        model_label: str = "",
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr,
    ) -> None:
        self._engine = engine
        self._key = key
        self._user = user
        self._bot_name = bot_name
        self._model_label = model_label
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self.interactive = stdin.isatty() and stdout.isatty()

    async def send(self, text: str) -> bool:
        """Send one message and print the answer; False when it failed."""
        inbound = Inbound(
            key=self._key,
            event_id=uuid.uuid4().hex,
            user_id=self._user,
            user_name=self._user,
            text=text,
            is_direct=True,
        )
        if self.interactive:
            self._write(f"{self._bot_name}> ")
        ok = True
        streamed = False
        async for event in self._engine.handle(inbound):
            match event:
                case Delta(text=piece):
                    streamed = True
                    self._write(piece)
                case ToolStarted(name=name):
                    self._activity(f"using {name}…")
                case ToolFinished(name=name, ok=False):
                    self._activity(f"{name} failed; the model was told why")
                case Final(text=text):
                    # A buffered reply arrives whole; a streamed one is already on screen.
                    self._write(("" if streamed else text) + "\n")
                case CommandResult(text=answer) | Refused(text=answer):
                    self._write(answer + "\n")
                case Retracted(text=answer):
                    self._write(("\n" if streamed else "") + f"[{answer}]\n")
                case Failed(text=answer, partial=partial):
                    self._write(("\n" if partial else "") + f"[{answer}]\n")
                    ok = False
        return ok

    async def run(self) -> int:
        """The read-answer loop; returns the exit status (1 if any reply failed when piped)."""
        if self.interactive:
            return await self._run_interactive()
        failures = 0
        while True:
            line = await asyncio.to_thread(self._stdin.readline)
            text = line.strip()
            if not line or text in EXIT_COMMANDS:
                return 1 if failures else 0
            if text and not await self.send(text):
                failures += 1

    async def _run_interactive(self) -> int:
        """Ctrl-C stops a reply being written; at the prompt it quits, as do Ctrl-D and
        /exit. Lines are read by a daemon thread that prompts only when asked, so nothing
        typed is lost and the prompt never cuts into a reply."""
        answering = f"Answering: {self._model_label}.\n" if self._model_label else ""
        self._write(
            f"Chatting with {self._bot_name} (conversation {self._key.thread}). {answering}"
            "/help lists commands; Ctrl-C stops a reply; /exit, Ctrl-D or Ctrl-C quits.\n"
        )
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        wanted = threading.Event()

        def read() -> None:
            while True:
                wanted.wait()
                wanted.clear()
                try:
                    line: str | None = self._stdin.readline() or None  # "": end of input
                except OSError:
                    line = None
                loop.call_soon_threadsafe(lines.put_nowait, line)
                if line is None:
                    return

        threading.Thread(target=read, name="parley-console-input", daemon=True).start()
        replying: asyncio.Task[bool] | None = None
        quitting = asyncio.Event()

        def interrupted() -> None:
            if replying is not None and not replying.done():
                replying.cancel()
            else:
                quitting.set()

        loop.add_signal_handler(signal.SIGINT, interrupted)
        try:
            while True:
                self._write("you> ")
                wanted.set()
                line = await _first(lines.get(), quitting)
                if line is None:
                    break
                text = line.strip()
                if text in EXIT_COMMANDS:
                    break
                if not text:
                    continue
                replying = asyncio.create_task(self.send(text))
                try:
                    await replying
                except asyncio.CancelledError:
                    if not replying.cancelled():
                        raise  # this task itself is being cancelled
                    self._write("\n[stopped]\n")
                replying = None
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        self._write("\n")
        return 0

    def _activity(self, text: str) -> None:
        # On a terminal it shows in the conversation; piped, stdout stays replies only.
        if self.interactive:
            self._write(f"[{text}] ")
        else:
            self._stderr.write(f"[{text}]\n")
            self._stderr.flush()

    def _write(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


async def _first(line: Awaitable[str | None], quitting: asyncio.Event) -> str | None:
    """The next line, or None once `quitting` is set first."""
    reading = asyncio.ensure_future(line)
    stopping = asyncio.ensure_future(quitting.wait())
    done, _ = await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (reading, stopping):
        if task not in done:
            task.cancel()
    return reading.result() if reading in done else None
