"""`parley keys` and `parley run` serving the HTTP API, as a user runs them: subprocesses."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from tests.cli.test_chat import parley
from tests.fakes.openai_server import FakeOpenAI
from tests.platforms.running import run_error


def environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {**keep, "DATABASE_URL": f"sqlite:///{tmp_path}/parley.db", **extra}


async def keys(tmp_path: Path, *arguments: str) -> tuple[int, str, str]:
    return await parley("keys", *arguments, stdin="", env=environment(tmp_path), cwd=tmp_path)


async def test_a_key_is_shown_once_listed_by_prefix_and_revoked(tmp_path: Path) -> None:
    code, out, err = await keys(tmp_path, "create", "alice")
    key = out.strip()
    assert code == 0 and key.startswith("pk-") and len(key) > 40 and out.count("\n") == 1
    assert "shown only now" in err and key not in err

    code, out, _ = await keys(tmp_path, "create", "ops", "--admin")
    assert code == 0
    code, listed, _ = await keys(tmp_path, "list")
    assert code == 0 and key not in listed  # never shown again
    alice, ops = listed.splitlines()
    assert alice.split()[:3] == ["alice", key[:10] + "…", "user"]
    assert ops.split()[:3] == ["ops", out.strip()[:10] + "…", "admin"]

    code, _, err = await keys(tmp_path, "create", "alice")
    assert (code, err.strip()) == (
        2,
        "parley: parley keys create: a key named 'alice' exists; revoke it first",
    )
    assert (await keys(tmp_path, "revoke", "alice"))[:2] == (0, "Revoked the key of alice.\n")
    code, _, err = await keys(tmp_path, "revoke", "alice")
    assert (code, err.strip()) == (2, "parley: parley keys revoke: no live key named 'alice'")
    code, _, err = await keys(tmp_path, "create", "not a name")
    assert code == 2 and "letters, digits" in err


async def test_parley_run_serves_the_api_when_a_key_exists(
    tmp_path: Path, fake_openai: FakeOpenAI, unused_tcp_port: int
) -> None:
    line = await run_error([], tmp_path)
    assert "create an API key (parley keys create NAME)" in line

    _, out, _ = await keys(tmp_path, "create", "alice")
    key = out.strip()
    fake_openai.reply("Served over HTTP.")
    env = environment(
        tmp_path,
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
        PARLEY_MODEL="gpt-4o-mini",
        PARLEY_HTTP_PORT=str(unused_tcp_port),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        env=env,
        cwd=tmp_path,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        while b"Parley is running" not in await process.stderr.readline():
            assert process.returncode is None
        url = f"http://127.0.0.1:{unused_tcp_port}"
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(f"{url}/api/v1/conversations") as response:
                conversation = (await response.json())["id"]
            async with http.post(
                f"{url}/api/v1/conversations/{conversation}/messages", json={"text": "hi"}
            ) as response:
                assert (await response.json())["text"] == "Served over HTTP."
            async with http.get(url + "/") as page:
                assert page.status == 200 and page.content_type == "text/html"
            # Revoked while it runs: refused at the next request.
            assert (await keys(tmp_path, "revoke", "alice"))[0] == 0
            async with http.get(f"{url}/api/v1/me") as response:
                assert response.status == 401
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    assert process.returncode == 0
