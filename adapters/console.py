"""The terminal adapter behind `parley chat`.

Interactive on a terminal (the reply streams in as it is written); with piped input, one
message per line in and each reply out on stdout, so it composes with other tools. Logs go
to stderr only.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import sys
import uuid
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
        stdin: TextIO = sys.stdin,
        stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr,
    ) -> None:
        self._engine = engine
        self._key = key
        self._user = user
        self._bot_name = bot_name
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
            self._write(
                f"Chatting with {self._bot_name} (conversation {self._key.thread}). "
                "/help lists commands; Ctrl-D quits.\n"
            )
        failures = 0
        while True:
            line = await asyncio.to_thread(self._read)
            if line is None:
                break
            text = line.strip()
            if text and not await self.send(text):
                failures += 1
        if self.interactive:
            self._write("\n")
        return 1 if failures and not self.interactive else 0

    def _read(self) -> str | None:
        if self.interactive:
            try:
                return input("you> ")
            except EOFError:
                return None
        line = self._stdin.readline()
        return line or None

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
