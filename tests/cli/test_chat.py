"""`parley chat` as a user runs it: a subprocess with piped input."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.fakes.openai_server import FakeOpenAI


async def parley(*args: str, stdin: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    return await python("-m", "bots", *args, stdin=stdin, env=env, cwd=cwd)


async def python(*args: str, stdin: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """This interpreter in a subprocess: exit status, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await process.communicate(stdin.encode())
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def environment(fake: FakeOpenAI, tmp_path: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {
        **keep,
        "DATABASE_URL": f"sqlite:///{tmp_path}/chat.db",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test",
        "PARLEY_MODEL": "gpt-4o-mini",
        "PARLEY_MODEL_RETRIES": "0",
        "PARLEY_LOG_LEVEL": "INFO",
        **extra,
    }


async def test_piped_chat_answers_each_line_and_continues_next_time(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = environment(fake_openai, tmp_path)
    fake_openai.reply("Hi there!")
    fake_openai.reply("Your name is Sam.")
    code, out, err = await parley(
        "chat", stdin="Hello, I am Sam\n\nWhat is my name?\n", env=env, cwd=tmp_path
    )
    assert (code, out) == (0, "Hi there!\nYour name is Sam.\n")
    assert "INFO" in err and "INFO" not in out  # logs on stderr only

    fake_openai.reply("Still Sam.")
    code, out, _ = await parley("chat", stdin="And now?\n", env=env, cwd=tmp_path)
    assert (code, out) == (0, "Still Sam.\n")
    assert [m["content"] for m in fake_openai.chat_requests[-1]["messages"][1:]] == [
        f"{user()}: Hello, I am Sam",
        "Hi there!",
        f"{user()}: What is my name?",
        "Your name is Sam.",
        f"{user()}: And now?",
    ]

    fake_openai.reply("Nice to meet you.")
    code, out, _ = await parley("chat", "--new", stdin="Hi\n", env=env, cwd=tmp_path)
    assert (code, out) == (0, "Nice to meet you.\n")
    assert len(fake_openai.chat_requests[-1]["messages"]) == 2  # system + the new message


async def test_persona_option_and_commands(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    env = environment(fake_openai, tmp_path)
    fake_openai.reply("```python\nprint(1)\n```")
    code, out, _ = await parley(
        "chat", "--persona", "coder", stdin="print one\n/persona\n", env=env, cwd=tmp_path
    )
    assert code == 0
    assert out.startswith("```python\nprint(1)\n```\nCurrent persona: *coder*")
    assert "senior software engineer" in fake_openai.chat_requests[0]["messages"][0]["content"]


async def test_persona_command_changes_this_terminal_conversation_only(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = environment(fake_openai, tmp_path)
    fake_openai.reply("def f(): ...")
    fake_openai.reply("Hello!")
    _, switched, _ = await parley("chat", stdin="/persona coder\nwrite f\n", env=env, cwd=tmp_path)
    _, fresh, _ = await parley("chat", "--new", stdin="hi\n/persona\n", env=env, cwd=tmp_path)
    _, resumed, _ = await parley("chat", stdin="/persona\n", env=env, cwd=tmp_path)

    assert switched.startswith("This conversation now uses the persona *coder*")
    assert "senior software engineer" in fake_openai.chat_requests[0]["messages"][0]["content"]
    assert "senior software engineer" not in fake_openai.chat_requests[1]["messages"][0]["content"]
    assert fresh.startswith("Hello!\nCurrent persona: *assistant*")
    assert resumed.startswith("Current persona: *assistant*")  # the latest conversation: --new


async def test_a_model_failure_is_one_line_on_stdout_and_exit_status_1(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.error(500)
    code, out, err = await parley(
        "chat", stdin="hello\n", env=environment(fake_openai, tmp_path), cwd=tmp_path
    )
    assert code == 1
    assert out == "[The model service had an error. Please try again in a moment.]\n"
    assert "Traceback" not in out + err


async def test_bad_settings_stop_start_up_with_one_line(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    for setting, value, expected in [
        ("PARLEY_CONTEXT_TOKENS", "-1", "invalid setting PARLEY_CONTEXT_TOKENS"),
        ("PARLEY_PERSONA", "pirate", "PARLEY_PERSONA: unknown persona 'pirate'; available:"),
        ("OPENAI_BASE_URL", "localhost:8000", "invalid setting OPENAI_BASE_URL"),
        ("DATABASE_URL", f"sqlite:///{tmp_path}/no/such/dir.db", "DATABASE_URL: cannot open"),
    ]:
        env = environment(fake_openai, tmp_path, PARLEY_LOG_LEVEL="WARNING", **{setting: value})
        code, out, err = await parley("chat", stdin="hi\n", env=env, cwd=tmp_path)
        assert (code, out) == (2, "")
        assert err.startswith(f"parley: {expected}") and err.count("\n") == 1, err
    code, _, err = await parley(
        "chat",
        "--persona",
        "pirate",
        stdin="",
        env=environment(fake_openai, tmp_path),
        cwd=tmp_path,
    )
    assert code == 2 and err.startswith("parley: --persona: unknown persona 'pirate'")
    assert fake_openai.requests == []


async def test_settings_are_read_from_a_dotenv_file(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = environment(fake_openai, tmp_path)
    persona = env.pop("PARLEY_MODEL")
    (tmp_path / ".env").write_text(f"PARLEY_MODEL=gpt-4.1\nPARLEY_PERSONA=editor\n# {persona}\n")
    fake_openai.reply("Edited.")
    code, out, _ = await parley("chat", stdin="fix this\n", env=env, cwd=tmp_path)
    assert (code, out) == (0, "Edited.\n")
    request = fake_openai.chat_requests[0]
    assert request["model"] == "gpt-4.1"
    assert "copy editor" in request["messages"][0]["content"]


def user() -> str:
    from adapters.console import local_user

    return local_user()


async def test_with_no_model_configured_chat_answers_with_the_embedded_model(
    tmp_path: Path,
) -> None:
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("xllamacpp is not installed (pip install 'parley[local]')")
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env = {**keep, "DATABASE_URL": f"sqlite:///{tmp_path}/chat.db"}
    question = "What is the capital of France? Answer in one word.\n"
    code, out, err = await parley("chat", stdin=question, env=env, cwd=tmp_path)
    assert code == 0, err
    assert "Paris" in out and out.endswith("\n")
    assert "Traceback" not in err


async def test_a_missing_local_model_file_is_one_line(tmp_path: Path) -> None:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    env = {**keep, "PARLEY_LOCAL_MODEL_PATH": str(tmp_path / "missing.gguf")}
    code, out, err = await parley("chat", stdin="hi\n", env=env, cwd=tmp_path)
    assert (code, out) == (2, "")
    assert err == (
        f"parley: Local model file not found: {tmp_path / 'missing.gguf'}; check the path, "
        "or unset it to use the embedded model.\n"
    )


async def test_chat_shows_a_tool_being_used(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.call(("calculate", '{"expression": "2**10"}'))
    fake_openai.reply("2 to the 10th is 1024.")
    code, out, err = await parley(
        "chat", stdin="2^10?\n", env=environment(fake_openai, tmp_path), cwd=tmp_path
    )
    assert (code, out) == (0, "2 to the 10th is 1024.\n")
    assert "[using calculate…]" in err
    assert "1024" in fake_openai.chat_requests[1]["messages"][-1]["content"]


async def test_chat_shows_a_checked_reply_whole_and_a_withdrawn_one_as_a_notice(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.reply("Mail bob@example.com about it.")
    fake_openai.reply("The gory version.")
    fake_openai.flag_when("gory", {"violence/graphic": 0.9})
    env = environment(
        fake_openai, tmp_path, PARLEY_MODERATION="pii,openai", PARLEY_MODERATION_BUFFER="true"
    )
    code, out, _ = await parley("chat", stdin="who?\ntell me\n", env=env, cwd=tmp_path)

    assert code == 0
    assert out == (
        "Mail [email removed] about it.\n"
        "[I withdrew my answer: it did not pass this workspace's content policy.]\n"
    )


async def test_chat_needs_no_platform_extra(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """`pip install -e '.[local]'` then `parley chat` (the README's first command): nothing a
    platform extra installs (aiohttp, the chat SDKs, asyncpg) may be imported on the way."""
    fake_openai.reply("Hi.")
    blocked = ["aiohttp", "slack_bolt", "slack_sdk", "telegram", "discord", "asyncpg"]
    script = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        "from bots.cli import main\n"
        "sys.exit(main(['chat']))\n"
    )
    code, out, err = await python(
        "-c", script, stdin="hello\n", env=environment(fake_openai, tmp_path), cwd=tmp_path
    )
    assert (code, out) == (0, "Hi.\n"), err


async def test_chat_continues_from_any_folder_with_the_default_database(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = environment(fake_openai, tmp_path, XDG_DATA_HOME=str(tmp_path / "data"))
    del env["DATABASE_URL"]
    fake_openai.reply("Hi Sam.")
    fake_openai.reply("You are Sam.")
    for folder, line in (("one", "I am Sam\n"), ("two", "Who am I?\n")):
        (tmp_path / folder).mkdir()
        code, _, _ = await parley("chat", stdin=line, env=env, cwd=tmp_path / folder)
        assert code == 0
    assert (tmp_path / "data" / "parley" / "parley.db").is_file()
    assert not (tmp_path / "one" / "parley.db").exists()
    first, reply, second = (m["content"] for m in fake_openai.chat_requests[-1]["messages"][1:])
    assert first.endswith(": I am Sam") and reply == "Hi Sam."
    assert second.endswith(": Who am I?")


TABLES_LOADED = (
    "import sys\n"
    "from bots.cli import main\n"
    "try:\n"
    "    sys.exit(main(['chat']))\n"
    "finally:\n"
    "    print('tables loaded:', 'bpe_openai._bindings' in sys.modules, file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    ("context_tokens", "loaded"),
    [("", False), ("1500", True)],
    ids=["the window fits by bounds", "it fits only counted exactly"],
)
async def test_token_tables_load_only_when_a_window_does_not_fit_by_bounds(
    fake_openai: FakeOpenAI, tmp_path: Path, context_tokens: str, loaded: bool
) -> None:
    lines = [f"line {i}: " + " ".join(["hello"] * 60) for i in range(3)]  # 367 bytes, 64 tokens
    for i in range(3):
        fake_openai.reply(f"answer {i}")
    env = environment(fake_openai, tmp_path, PARLEY_CONTEXT_TOKENS=context_tokens)
    stdin = "".join(f"{line}\n" for line in lines)
    code, out, err = await python("-c", TABLES_LOADED, stdin=stdin, env=env, cwd=tmp_path)
    assert (code, out) == (0, "answer 0\nanswer 1\nanswer 2\n"), err
    assert f"tables loaded: {loaded}" in err
    # Either way the model saw the whole conversation: with 1,500 tokens of context (1,024
    # kept for the reply) three lines of 367 bytes and the system prompt fit only when
    # counted exactly.
    last = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"].split(": ", 1)[1] for m in last[1::2]] == lines
