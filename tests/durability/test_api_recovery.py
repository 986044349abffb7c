"""`kill -9` of a real `parley run http` while an answer streams to an API client, then a
restart: the question is kept, answered before the conversation's next message, in order,
and the history holds both exchanges whole."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp

from tests.durability.processes import Processes, environment, model_settings
from tests.fakes.openai_server import FakeOpenAI

QUESTION = "why are there two tides a day?"
ANSWER = "Tides follow the Moon, whose pull raises the water on both sides of the Earth."
FOLLOW_UP = "and how far apart are they?"
SECOND_ANSWER = "About twelve hours and twenty-five minutes."


async def create_key(tmp_path: Path, database_url: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "keys",
        "create",
        "alice",
        env=environment(DATABASE_URL=database_url),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def test_an_answer_cut_by_a_crash_is_given_before_the_next_message(
    tmp_path: Path, database_url: str, fake_openai: FakeOpenAI
) -> None:
    key = await create_key(tmp_path, database_url)
    fake_openai.reply(ANSWER, chunk_delay=0.2)  # slow: the process dies mid-stream
    settings = {**model_settings(fake_openai), "DATABASE_URL": database_url}
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        Processes(tmp_path, PARLEY_LEASE_SECONDS=2, **settings) as processes,
        aiohttp.ClientSession(headers=headers) as http,
    ):
        first = await processes.start("http")
        url = f"http://127.0.0.1:{first.port}/api/v1/conversations"
        async with http.post(url) as response:
            conversation = (await response.json())["id"]
        async with http.post(
            f"{url}/{conversation}/messages",
            json={"text": QUESTION},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert await response.content.readline() == b"event: delta\n"
            await first.kill()

        fake_openai.reply(ANSWER)  # asked again: nothing of the cut answer was stored
        fake_openai.reply(SECOND_ANSWER)
        second = await processes.start("http")
        url = f"http://127.0.0.1:{second.port}/api/v1/conversations"
        async with http.post(
            f"{url}/{conversation}/messages", json={"text": FOLLOW_UP}
        ) as response:
            assert (await response.json())["text"] == SECOND_ANSWER
        async with http.get(f"{url}/{conversation}") as response:
            history = [(m["role"], m["content"]) for m in (await response.json())["messages"]]
    assert history == [
        ("user", QUESTION),
        ("assistant", ANSWER),
        ("user", FOLLOW_UP),
        ("assistant", SECOND_ANSWER),
    ]
    first_request, again, follow_up = fake_openai.chat_requests
    assert again["messages"] == first_request["messages"]
    assert [m["content"] for m in follow_up["messages"][1:]] == [
        f"alice: {QUESTION}",
        ANSWER,
        f"alice: {FOLLOW_UP}",
    ]
