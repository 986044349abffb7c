"""The web pages in a real headless Chromium, against a real `parley run http` subprocess.

Chromium comes from the distribution (`apt-get install chromium chromium-driver`; `.ci/run`
installs it) and Playwright drives it through `executable_path`: no browser is downloaded. When
it is missing the tests fail (they never skip: CI fails on skips).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from tests.fakes.openai_server import FakeOpenAI

CHROMIUM = os.environ.get("PARLEY_TEST_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "adapters" / "web" / "static"

expect.set_options(timeout=10_000)


@dataclass
class Parley:
    """A running `parley run http`, its keys, and a client for setting things up."""

    url: str
    env: dict[str, str]
    cwd: Path
    alice: str = ""  # a user's key
    root: str = ""  # an admin's key
    stderr: list[str] = field(default_factory=list)

    async def create_key(self, name: str, *, admin: bool = False) -> str:
        args = ["keys", "create", name, *(["--admin"] if admin else [])]
        code, out, err = await run_parley(*args, env=self.env, cwd=self.cwd)
        assert code == 0, f"parley keys create {name} failed ({code}): {err}"
        key = out.strip()
        assert key.startswith("pk-") and "\n" not in key, out
        return key

    async def call(self, method: str, path: str, *, key: str, json: Any = None) -> tuple[int, Any]:
        """One API call outside the browser: (status, JSON body or text)."""
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.url + path, headers=headers, json=json) as response,
        ):
            text = await response.text()
            body = await response.json() if response.content_type.endswith("json") else text
            return response.status, body


async def run_parley(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def parley_env() -> dict[str, str]:
    """More settings for the server: `@pytest.mark.parametrize("parley_env", [{...}])`."""
    return {}


@pytest.fixture
async def parley(
    fake_openai: FakeOpenAI, tmp_path: Path, parley_env: dict[str, str]
) -> AsyncIterator[Parley]:
    """`parley run http` on a free port with the scripted model; keys for alice and root."""
    port = free_port()
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env = {
        **keep,
        "DATABASE_URL": f"sqlite:///{tmp_path}/parley.db",
        "PARLEY_HTTP_HOST": "127.0.0.1",
        "PARLEY_HTTP_PORT": str(port),
        "OPENAI_BASE_URL": fake_openai.base_url,
        "OPENAI_API_KEY": "sk-test",
        "PARLEY_MODEL": "gpt-4o-mini",
        "PARLEY_MODEL_RETRIES": "0",
        **parley_env,
    }
    served = Parley(url=f"http://127.0.0.1:{port}", env=env, cwd=REPO)
    served.alice = await served.create_key("alice")
    served.root = await served.create_key("root", admin=True)

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        "http",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    ready = asyncio.Event()

    async def drain() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            served.stderr.append(line.decode(errors="replace").rstrip())
            if "Parley is running" in served.stderr[-1]:
                ready.set()

    reader = asyncio.create_task(drain())
    exited = asyncio.create_task(process.wait())
    said_ready = asyncio.create_task(ready.wait())
    try:
        done, _ = await asyncio.wait(
            [said_ready, exited], timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
        said_ready.cancel()
        log = "\n".join(served.stderr[-40:])
        assert exited not in done, f"parley run http exited ({process.returncode}):\n{log}"
        assert ready.is_set(), f"parley run http did not say it was running in 30 s:\n{log}"
        yield served
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), 10)
            except TimeoutError:
                process.kill()
        await exited
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(reader, 5)


@pytest.fixture
def chromium() -> str:
    """The distribution's Chromium; the tests fail (never skip) without it."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: the browser tests need the distribution's package "
            "(apt-get install chromium chromium-driver; .ci/run installs it)",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    """A browser context (its own localStorage) and a page that fails the test on a JS error."""

    context: BrowserContext
    page: Page
    errors: list[str]


async def open_tab(browser: Browser) -> Tab:
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return Tab(context, page, errors)


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    opened = await open_tab(browser)
    yield opened
    await opened.context.close()
    assert opened.errors == [], f"uncaught errors in the page: {opened.errors}"


async def sign_in(page: Page, url: str, key: str) -> None:
    """Open `url` (the chat or the console) and sign in with `key` through the form."""
    await page.goto(url)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
