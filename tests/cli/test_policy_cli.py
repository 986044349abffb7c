"""Limits shared by separate `parley` processes on one PostgreSQL database; `parley flags`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.cli.test_chat import environment, parley
from tests.fakes.openai_server import FakeOpenAI, Reply

pytestmark = pytest.mark.postgres


async def test_two_processes_share_one_daily_budget(
    fake_openai: FakeOpenAI, postgres_url: str, tmp_path: Path
) -> None:
    fake_openai.default = Reply("ok", usage=(60, 10))  # 70 tokens a turn
    env = environment(
        fake_openai, tmp_path, DATABASE_URL=postgres_url, PARLEY_USER_TOKENS_PER_DAY="100"
    )
    first = await parley("chat", stdin="one\n", env=env, cwd=tmp_path)
    second = await parley("chat", stdin="two\n", env=env, cwd=tmp_path)  # another process
    third = await parley("chat", stdin="three\n", env=env, cwd=tmp_path)

    assert (first[0], first[1]) == (0, "ok\n")
    assert (second[0], second[1]) == (0, "ok\n")  # 70 used: still under 100
    assert third[1].startswith("You've used today's budget of 100 tokens.")
    assert len(fake_openai.chat_requests) == 2


async def test_two_processes_running_at_once_share_one_rate_limit(
    fake_openai: FakeOpenAI, postgres_url: str, tmp_path: Path
) -> None:
    fake_openai.default = Reply("ok", delay=0.05)
    env = environment(fake_openai, tmp_path, DATABASE_URL=postgres_url, PARLEY_USER_RPM="3")
    lines = "a\nb\nc\n"
    results = await asyncio.gather(
        parley("chat", "--new", stdin=lines, env=env, cwd=tmp_path),
        parley("chat", "--new", stdin=lines, env=env, cwd=tmp_path),
    )

    replies = [line for _, out, _ in results for line in out.splitlines()]
    assert replies.count("ok") == 3
    refusals = [r for r in replies if r != "ok"]
    assert len(refusals) == 3
    assert all(
        r.startswith("You're sending messages faster than I can take them") for r in refusals
    )
    assert len(fake_openai.chat_requests) == 3


async def test_parley_flags_lists_what_moderation_caught(
    fake_openai: FakeOpenAI, postgres_url: str, tmp_path: Path
) -> None:
    fake_openai.default = Reply("Noted.")
    fake_openai.flag_when("hurt", {"violence": 0.93})
    env = environment(
        fake_openai, tmp_path, DATABASE_URL=postgres_url, PARLEY_MODERATION="pii,openai"
    )
    await parley(
        "chat", stdin="my mail is ada@example.com\nI will hurt them\n", env=env, cwd=tmp_path
    )

    code, out, err = await parley("flags", stdin="", env=env, cwd=tmp_path)
    assert code == 0, err
    lines = out.splitlines()
    assert "input BLOCK openai/violence=0.93" in lines[0]
    assert lines[1] == "    I will hurt them"
    assert "input REDACT pii/email" in lines[2]
    assert lines[3] == "    my mail is [email removed]"

    code, out, _ = await parley(
        "flags", "--json", "--action", "block", stdin="", env=env, cwd=tmp_path
    )
    [record] = [json.loads(line) for line in out.splitlines()]
    assert (record["direction"], record["action"], record["scores"]) == (
        "input",
        "block",
        {"openai/violence": 0.93},
    )
    assert record["platform"] == "console"

    code, out, _ = await parley(
        "flags", "--since", "1m", "--action", "flag", stdin="", env=env, cwd=tmp_path
    )
    assert out == "No moderation flags in that period.\n"
    code, _, err = await parley("flags", "--since", "soon", stdin="", env=env, cwd=tmp_path)
    assert code == 2 and "use minutes, hours or days" in err
