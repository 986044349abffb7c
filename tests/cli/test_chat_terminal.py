"""`parley chat` on a terminal (a pseudo-terminal here): Ctrl-C stops a reply and the program
goes on; at the prompt, Ctrl-C quits, as does /exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.cli.test_chat import environment
from tests.fakes.openai_server import FakeOpenAI

LONG = "This answer goes on and on, long after anyone wanted to read it. " * 10


class Terminal:
    """A `parley chat` process on a pseudo-terminal: type into it, read what it shows."""

    def __init__(self, process: asyncio.subprocess.Process, master: int) -> None:
        self.process = process
        self._master = master
        self.shown = ""
        self._seen = 0  # where the last text looked for ended

    def type(self, text: str) -> None:
        os.write(self._master, text.encode())

    async def shows(self, text: str) -> None:
        """Reads until `text` has been shown after what the last call found, for 15 s."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(15):
                while (found := self.shown.find(text, self._seen)) < 0:
                    chunk = await loop.run_in_executor(None, os.read, self._master, 4096)
                    self.shown += chunk.decode(errors="replace")
            self._seen = found + len(text)
        except TimeoutError:
            raise AssertionError(
                f"never shown: {text!r}; the terminal shows:\n{self.shown}"
            ) from None

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)  # what Ctrl-C on the terminal sends


@asynccontextmanager
async def terminal(env: dict[str, str], cwd: Path) -> AsyncIterator[Terminal]:
    master, slave = os.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "chat",
        stdin=slave,
        stdout=slave,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    os.close(slave)
    try:
        yield Terminal(process, master)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(master)


async def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply(LONG, chunk_delay=0.05)  # about six seconds of streaming
    fake_openai.reply("Short and sweet.")
    async with terminal(environment(fake_openai, tmp_path), tmp_path) as chat:
        await chat.shows("you> ")
        chat.type("tell me everything\n")
        await chat.shows("This answer goes on")
        chat.interrupt()
        await chat.shows("[stopped]")
        await chat.shows("you> ")  # still running, asking for the next message
        chat.type("and briefly?\n")
        await chat.shows("Short and sweet.")
        await chat.shows("you> ")
        chat.type("/exit\n")
        assert await asyncio.wait_for(chat.process.wait(), 15) == 0
    assert LONG.strip() not in chat.shown  # the long answer was cut short
    # The stopped question is kept (its cut-off answer is not): the next request carries it.
    sent = fake_openai.chat_requests[-1]["messages"][1:]
    assert [m["content"].split(": ", 1)[1] for m in sent] == [
        "tell me everything",
        "and briefly?",
    ]


async def test_ctrl_c_at_the_prompt_quits(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    async with terminal(environment(fake_openai, tmp_path), tmp_path) as chat:
        await chat.shows("you> ")
        chat.interrupt()
        assert await asyncio.wait_for(chat.process.wait(), 15) == 0
