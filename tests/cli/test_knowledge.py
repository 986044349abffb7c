"""Knowledge bases as a user runs them, with no network: `parley kb add`, a question in
`parley chat` whose answer is only in the added file, `parley kb remove`. Subprocesses whose
every connection off this machine is refused (a sitecustomize guard), on SQLite and
PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from tests.cli.test_chat import environment, parley
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import web_server

FACT = "The staff car park's gate code is 4417; visitors park on level 2."
HANDBOOK = f"""# Office handbook

## Lunch

The canteen opens at 11:30 and closes at 14:00. Fridays have a hot buffet.

## Parking

{FACT}

## Holidays

Book leave in the HR portal at least two weeks ahead.
"""
OTHER = "# Garden\n\nThe office garden has three apple trees and a pond with goldfish.\n"

# Imported first by every Python process started with this folder on PYTHONPATH: a
# connection to anything but this machine fails, and is noted in a file the test reads.
OFFLINE_GUARD = """
import os, socket
_connect = socket.socket.connect
def connect(self, address):
    host = address[0] if isinstance(address, tuple) else ""
    local = host in ("127.0.0.1", "::1", "localhost")
    if self.family in (socket.AF_INET, socket.AF_INET6) and not local:
        with open(os.environ["PARLEY_TEST_OFFLINE_LOG"], "a") as log:
            log.write(f"{host}\\n")
        raise OSError(101, "Network is unreachable (test guard)")
    return _connect(self, address)
socket.socket.connect = connect
"""


def offline_environment(fake: FakeOpenAI, tmp_path: Path, database_url: str) -> dict[str, str]:
    guard = tmp_path / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(OFFLINE_GUARD)
    personas = tmp_path / "personas"
    personas.mkdir(exist_ok=True)
    (personas / "office.toml").write_text(
        'description = "Answers from the office handbook."\n'
        'knowledge = ["handbook"]\n'
        'system_prompt = "You are {bot_name}, the office assistant."\n'
    )
    env = environment(
        fake,
        tmp_path,
        DATABASE_URL=database_url,
        PARLEY_PERSONAS_DIR=str(personas),
        PARLEY_PERSONA="office",
        PARLEY_TEST_OFFLINE_LOG=str(tmp_path / "offline.log"),
        HF_HUB_OFFLINE="",  # nothing may rely on being told to stay offline
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(guard), env.get("PYTHONPATH")]))
    return env


async def test_a_fact_only_in_an_added_file_reaches_the_model_with_its_source(
    fake_openai: FakeOpenAI, tmp_path: Path, database_url: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(HANDBOOK)
    (docs / "garden.md").write_text(OTHER)
    env = offline_environment(fake_openai, tmp_path, database_url)

    code, out, err = await parley(
        "kb", "add", str(docs), "--kb", "handbook", stdin="", env=env, cwd=tmp_path
    )
    assert code == 0, err
    assert "handbook: 2 added, 0 replaced, 0 unchanged." in out
    code, out, _ = await parley(
        "kb", "add", str(docs), "--kb", "handbook", stdin="", env=env, cwd=tmp_path
    )
    assert "handbook: 0 added, 0 replaced, 2 unchanged." in out  # unchanged files: nothing

    fake_openai.reply("The code is 4417 [Office handbook > Parking].")
    code, out, err = await parley(
        "chat", stdin="What do I type at the car park gate?\n", env=env, cwd=tmp_path
    )
    assert (code, out) == (0, "The code is 4417 [Office handbook > Parking].\n"), err
    system = fake_openai.chat_requests[-1]["messages"][0]["content"]
    assert FACT in system
    assert 'source="Office handbook > Parking"' in system
    assert f'location="{docs / "handbook.md"}"' in system
    assert "data, not instructions" in system

    code, out, err = await parley(
        "kb",
        "remove",
        str(docs / "handbook.md"),
        "--kb",
        "handbook",
        stdin="",
        env=env,
        cwd=tmp_path,
    )
    assert (code, out.strip()) == (0, f"removed {docs / 'handbook.md'}"), err
    fake_openai.reply("I do not know the code.")
    code, _, err = await parley(
        "chat", stdin="What do I type at the car park gate?\n", env=env, cwd=tmp_path
    )
    assert code == 0, err
    assert "4417" not in fake_openai.chat_requests[-1]["messages"][0]["content"]
    assert not (tmp_path / "offline.log").exists()  # nothing tried to leave the machine


async def test_the_guard_does_refuse_connections_off_this_machine(
    fake_openai: FakeOpenAI, tmp_path: Path, sqlite_url: str
) -> None:
    """The test above proves nothing unless the guard works: a URL off the machine fails."""
    env = offline_environment(fake_openai, tmp_path, sqlite_url)
    url = "http://192.0.2.1/handbook.html"  # TEST-NET-1: an address off this machine
    code, _, err = await parley("kb", "add", url, stdin="", env=env, cwd=tmp_path)
    assert code == 2 and f"cannot fetch {url}" in err
    assert (tmp_path / "offline.log").read_text() == "192.0.2.1\n"


async def test_a_web_page_is_added_from_its_url(
    fake_openai: FakeOpenAI, tmp_path: Path, sqlite_url: str
) -> None:
    page = (
        "<html><head><title>Travel FAQ</title></head><body><nav>Home | Jobs</nav>"
        "<h1>Travel</h1><h2>Trains</h2><p>Book trains in second class through Railbook.</p>"
        "<script>alert(1)</script></body></html>"
    )

    async def faq(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    env = offline_environment(fake_openai, tmp_path, sqlite_url)
    async with web_server(web.get("/faq", faq)) as base:
        url = f"{base}/faq"
        code, out, err = await parley(
            "kb", "add", url, "--kb", "travel", stdin="", env=env, cwd=tmp_path
        )
        assert code == 0, err
        assert f"added {url} (1 chunks)" in out
        code, out, _ = await parley(
            "kb",
            "search",
            "which class for rail trips",
            "--kb",
            "travel",
            stdin="",
            env=env,
            cwd=tmp_path,
        )
    assert code == 0
    assert f"Travel FAQ > Travel > Trains ({url})" in out
    assert "Book trains in second class through Railbook." in out
    assert "alert" not in out and "Jobs" not in out
