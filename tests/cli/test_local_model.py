"""The embedded model: locating the GGUF and serving it over the OpenAI API."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import os
import shutil
import signal
import sys
from pathlib import Path

import openai
import pytest

from bots import local_model
from bots.local_model import (
    LocalModel,
    LocalModelServer,
    LocalModelUnavailable,
    ShippedModel,
    find_local_model,
)


def test_missing_explicit_model_path_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"

    with pytest.raises(LocalModelUnavailable) as info:
        find_local_model(missing)

    message = str(info.value)
    assert str(missing) in message
    assert "\n" not in message


def test_existing_explicit_model_path_wins(tmp_path: Path) -> None:
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")

    assert find_local_model(model) == LocalModel(path=model, alias="mine", title="mine.gguf")


def shipped_in_pieces(
    root: Path, pieces: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> ShippedModel:
    """Packages `piece_N` on sys.path, each holding one piece, as the `local` extra installs."""
    for number, content in enumerate(pieces, 1):
        package = root / f"piece_{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('never imported')\n")
        (package / "data" / "part.bin").write_bytes(content)
    monkeypatch.syspath_prepend(str(root))
    whole = b"".join(pieces)
    return ShippedModel(
        parts=tuple((f"piece_{n}", "data/part.bin") for n in range(1, len(pieces) + 1)),
        sha256=hashlib.sha256(whole).hexdigest(),
        filename="model.gguf",
        alias="tiny",
        title="Tiny, for tests",
    )


def test_the_shipped_pieces_are_joined_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = shipped_in_pieces(
        tmp_path / "site", [b"GGUF" + b"a" * 100, b"b" * 50, b"c"], monkeypatch
    )
    cache = tmp_path / "cache"

    first = find_local_model(shipped=shipped, cache=cache)
    written = first.path.stat().st_mtime_ns
    again = find_local_model(shipped=shipped, cache=cache)

    joined = cache / f"{shipped.sha256[:12]}-model.gguf"
    assert first == again == LocalModel(joined, "tiny", "Tiny, for tests")
    assert first.path.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50 + b"c"
    assert again.path.stat().st_mtime_ns == written
    assert list(cache.iterdir()) == [joined]


def test_damaged_pieces_are_one_line_and_leave_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = shipped_in_pieces(tmp_path / "site", [b"GGUF", b"rest"], monkeypatch)
    (tmp_path / "site" / "piece_2" / "data" / "part.bin").write_bytes(b"RUST")
    cache = tmp_path / "cache"

    with pytest.raises(LocalModelUnavailable) as info:
        find_local_model(shipped=shipped, cache=cache)

    message = str(info.value)
    assert "\n" not in message and "checksum mismatch" in message
    assert "pip install --force-reinstall 'parley[local]'" in message
    assert list(cache.iterdir()) == []


def test_a_missing_piece_tells_the_user_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = shipped_in_pieces(tmp_path / "site", [b"GGUF", b"rest"], monkeypatch)
    shutil.rmtree(tmp_path / "site" / "piece_2")

    with pytest.raises(LocalModelUnavailable, match=r"pip install 'parley\[local\]'"):
        find_local_model(shipped=shipped, cache=tmp_path / "cache")


async def test_missing_server_dependencies_tell_the_user_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "xllamacpp" else real_find_spec(name, package)

    monkeypatch.setattr(local_model.importlib.util, "find_spec", find_spec)
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")

    with pytest.raises(LocalModelUnavailable) as info:
        async with LocalModelServer(LocalModel(model, "mine", "mine.gguf")):
            pass

    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'parley[local]'" in message
    assert "OPENAI_API_KEY" in message


def _needs_llama_cpp() -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (pip install 'parley[local]')")


@pytest.mark.local_model
async def test_server_that_dies_at_startup_reports_its_last_words(tmp_path: Path) -> None:
    _needs_llama_cpp()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    server = LocalModelServer(LocalModel(broken, "broken", "broken.gguf"))

    with pytest.raises(LocalModelUnavailable) as info:
        async with server:
            pass

    first_line = str(info.value).splitlines()[0]
    assert "exited during start-up" in first_line
    assert str(broken) in first_line  # llama.cpp's "Failed to load model from file: ..."
    assert server.process is not None
    assert server.process.returncode is not None
    assert server.log_path is None  # the temporary log is cleaned up


@pytest.mark.local_model
async def test_server_that_does_not_answer_in_time_is_stopped() -> None:
    _needs_llama_cpp()
    server = LocalModelServer(find_local_model(), startup_timeout=0)

    with pytest.raises(LocalModelUnavailable, match="did not answer within 0 s"):
        async with server:
            pass

    assert server.process is not None
    assert server.process.returncode is not None


@pytest.mark.local_model
async def test_shipped_model_answers_a_streamed_chat(capfd: pytest.CaptureFixture[str]) -> None:
    _needs_llama_cpp()

    async with LocalModelServer(find_local_model(), n_ctx=1024) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.context_tokens == 1024
        process = server.process
        assert process is not None
        # Ctrl-C in `parley chat` reaches the whole process group; it stops a reply, and the
        # model must go on serving.
        process.send_signal(signal.SIGINT)
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="local", max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=server.model,
                messages=[
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "Say hello in one short sentence."},
                ],
                max_tokens=32,
                temperature=0.2,
                stream=True,
            )
            parts: list[str] = []
            async with stream:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        parts.append(chunk.choices[0].delta.content)

    assert "".join(parts).strip()
    assert process.returncode is not None
    # `parley chat` writes replies to stdout: the server must keep out of it.
    assert capfd.readouterr().out == ""


PARENT = """
import asyncio, sys
from bots.local_model import LocalModelServer, find_local_model

async def main():
    async with LocalModelServer(find_local_model(), n_ctx=512) as server:
        print(server.process.pid, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.local_model
async def test_the_server_exits_when_parley_is_killed() -> None:
    _needs_llama_cpp()
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PARENT, stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    child = int(await asyncio.wait_for(parent.stdout.readline(), timeout=60))

    parent.kill()  # no chance to stop its child
    await parent.wait()

    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the model server outlived its parent by 10 s")
