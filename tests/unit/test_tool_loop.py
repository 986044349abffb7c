"""The tool loop in the engine, against the scripted model server."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from core import wording
from core.events import Delta, Failed, Final, ToolFinished, ToolStarted
from core.storage.tables import channel_settings, messages, usage
from core.tokens import counter_for_model, message_tokens
from core.tools import DATA_NOTICE
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import KEY, turn

PLUGIN = '''
import asyncio

from core.tools import tool


@tool
async def slow_echo(text: str, seconds: float = 0.3) -> str:
    """Echo text after a pause.

    Args:
        text: What to echo.
        seconds: How long to wait first.
    """
    await asyncio.sleep(seconds)
    return f"echo: {text}"


@tool(timeout=0.2)
async def sleepy() -> str:
    """Takes far too long."""
    await asyncio.sleep(5)
    return "never"


@tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise RuntimeError(f"boom: {reason}")
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A third-party tool module and a persona allowed to use it, as settings."""
    module = tmp_path / "plugins"
    module.mkdir()
    (module / "parley_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(module))
    personas = tmp_path / "personas"
    personas.mkdir()
    (personas / "tester.toml").write_text(
        textwrap.dedent(
            """
            description = "Uses the test tools."
            tools = ["slow_echo", "sleepy", "explode", "calculate"]
            system_prompt = "You test tools."
            """
        )
    )
    return {
        "PARLEY_TOOL_MODULES": "parley_test_plugin",
        "PARLEY_PERSONAS_DIR": str(personas),
        "PARLEY_PERSONA": "tester",
    }


def tool_names(request: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in request.get("tools", [])]


async def stored(runtime: Any) -> list[dict[str, Any]]:
    async with runtime.store.engine.connect() as connection:
        rows = await connection.execute(
            select(
                messages.c.role, messages.c.content, messages.c.tool_calls, messages.c.tool_call_id
            ).order_by(messages.c.id)
        )
        return [dict(row._mapping) for row in rows]


@pytest.mark.parametrize("whole", [False, True], ids=["fragments", "whole"])
async def test_a_tool_call_runs_and_the_history_holds_call_and_result(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, whole: bool
) -> None:
    fake_openai.call(("calculate", '{"expression": "6 * 7"}'), whole=whole)
    fake_openai.reply("It is 42.")
    fake_openai.reply("You asked about 6 times 7.")
    async with engine_factory() as runtime:
        events = await turn(runtime.engine, "what is 6*7?")
        rows = await stored(runtime)
        await turn(runtime.engine, "what did I ask?")

    first, second, third = fake_openai.chat_requests
    assert sorted(tool_names(first)) == ["calculate", "current_time", "search_conversation"]
    assert [e for e in events if not isinstance(e, Delta)] == [
        ToolStarted("calculate", "call_0_calculate"),
        ToolFinished("calculate", "call_0_calculate", ok=True),
        Final("It is 42.", events[-1].usage),  # type: ignore[union-attr]
    ]
    call = {
        "id": "call_0_calculate",
        "type": "function",
        "function": {"name": "calculate", "arguments": '{"expression": "6 * 7"}'},
    }
    result = rows[2]["content"]
    assert "42" in result and result.startswith("<tool_result")
    assert second["messages"][1:] == [
        {"role": "user", "content": "alice: what is 6*7?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0_calculate", "content": result},
    ]
    assert [(r["role"], r["tool_call_id"]) for r in rows] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_0_calculate"),
        ("assistant", None),
    ]
    assert rows[1]["tool_calls"] == [call] and rows[1]["content"] == ""
    # The next turn's context holds the call and its result, in order.
    assert third["messages"][1:] == [
        *second["messages"][1:],
        {"role": "assistant", "content": "It is 42."},
        {"role": "user", "content": "alice: what did I ask?"},
    ]
    assert events[-1].usage.prompt_tokens == 20  # type: ignore[union-attr]  # two model calls


async def test_two_calls_in_one_step_run_concurrently(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    fake_openai.call(
        ("slow_echo", '{"text": "a", "seconds": 0.4}'),
        ("slow_echo", '{"text": "b", "seconds": 0.4}'),
    )
    fake_openai.reply("a and b")
    async with engine_factory(**plugin) as runtime:
        started = time.perf_counter()
        events = await turn(runtime.engine, "echo twice")
        elapsed = time.perf_counter() - started
    assert elapsed < 0.75  # one 0.4 s pause, not two
    tool_messages = [m for m in fake_openai.chat_requests[1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_0_slow_echo", "call_1_slow_echo"]
    assert "echo: a" in tool_messages[0]["content"] and "echo: b" in tool_messages[1]["content"]
    assert sum(isinstance(e, ToolStarted) for e in events) == 2


async def test_a_chain_of_steps_then_text(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    fake_openai.call(("calculate", '{"expression": "2 + 2"}'), text="Let me work it out.")
    fake_openai.call(("slow_echo", '{"text": "4", "seconds": 0}'))
    fake_openai.reply("The answer is 4.")
    async with engine_factory(**plugin) as runtime:
        events = await turn(runtime.engine, "2+2, then echo it")
        rows = await stored(runtime)
    assert len(fake_openai.chat_requests) == 3
    third = fake_openai.chat_requests[2]["messages"]
    assert [m["role"] for m in third] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert third[2]["content"] == "Let me work it out."
    final = events[-1]
    assert isinstance(final, Final)
    assert final.text == "Let me work it out.\n\nThe answer is 4."  # as the user saw it
    assert "".join(e.text for e in events if isinstance(e, Delta)) == final.text
    assert [r["role"] for r in rows] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    assert rows[-1]["content"] == "The answer is 4."


async def test_the_step_limit_asks_for_an_answer_without_tools(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    for n in range(2):
        fake_openai.call(("slow_echo", json.dumps({"text": str(n), "seconds": 0})))
    fake_openai.reply("Done looping.")
    async with engine_factory(PARLEY_TOOL_STEPS=2, **plugin) as runtime:
        events = await turn(runtime.engine, "loop")
    requests = fake_openai.chat_requests
    assert [len(tool_names(r)) > 0 for r in requests] == [True, True, False]
    assert requests[2]["messages"][-1] == {"role": "system", "content": wording.TOOL_STEPS_USED}
    assert events[-1].text == "Done looping."  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("sleepy", "{}", "timed out"),
        ("explode", '{"reason": "testing"}', "RuntimeError: boom: testing"),
        ("slow_echo", '{"text": "unterminated', "JSON"),
        ("slow_echo", '{"seconds": 1}', "text"),
        ("no_such_tool", "{}", "calculate"),  # the error lists the available tools
    ],
    ids=["timeout", "raises", "invalid-json", "invalid-arguments", "unknown-tool"],
)
async def test_a_failing_call_goes_back_to_the_model_as_an_error_result(
    engine_factory: EngineFactory,
    fake_openai: FakeOpenAI,
    plugin: dict[str, str],
    name: str,
    arguments: str,
    expected: str,
) -> None:
    fake_openai.call((name, arguments))
    fake_openai.reply("Sorry, that tool failed.")
    async with engine_factory(**plugin) as runtime:
        events = await turn(runtime.engine, "try it")
        rows = await stored(runtime)
    assert ToolFinished(name, f"call_0_{name}", ok=False) in events
    assert events[-1].text == "Sorry, that tool failed."  # type: ignore[union-attr]
    [tool_message] = [m for m in fake_openai.chat_requests[1]["messages"] if m["role"] == "tool"]
    assert expected in tool_message["content"]
    assert "Traceback" not in tool_message["content"]
    assert rows[2]["content"] == tool_message["content"]


async def test_a_third_party_module_is_offered_to_the_model(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    fake_openai.reply("hi")
    async with engine_factory(**plugin) as runtime:
        await turn(runtime.engine, "hello")
    [offered] = [
        t["function"]
        for t in fake_openai.chat_requests[0]["tools"]
        if t["function"]["name"] == "slow_echo"
    ]
    assert offered["description"].startswith("Echo text after a pause.")
    assert offered["parameters"]["properties"]["text"]["description"] == "What to echo."
    assert offered["parameters"]["required"] == ["text"]


async def test_a_channel_can_narrow_the_personas_tools(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    fake_openai.reply("ok")
    async with engine_factory(**plugin) as runtime:
        async with runtime.store.engine.begin() as connection:  # type: ignore[attr-defined]
            await connection.execute(
                channel_settings.insert().values(
                    platform=KEY.platform,
                    workspace=KEY.workspace,
                    channel=KEY.channel,
                    tools=["calculate", "explode", "not_in_persona"],
                )
            )
        await turn(runtime.engine, "hello")
    assert sorted(tool_names(fake_openai.chat_requests[0])) == ["calculate", "explode"]


async def test_tool_results_are_shortened_to_fit_the_context(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, plugin: dict[str, str]
) -> None:
    long_text = "word " * 1400
    fake_openai.call(("slow_echo", json.dumps({"text": long_text, "seconds": 0})))
    fake_openai.reply("That was long.")
    async with engine_factory(PARLEY_CONTEXT_TOKENS=3000, **plugin) as runtime:
        await turn(runtime.engine, "echo a lot")
    second = fake_openai.chat_requests[1]
    [result] = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert result.startswith('<tool_result name="slow_echo">\necho: word word')
    assert result.endswith(f"{wording.TRUNCATED_MARKER}\n</tool_result>\n{DATA_NOTICE}")
    counter = counter_for_model("gpt-4o-mini")
    prompt = sum(message_tokens(counter, str(m["content"]), exact=True) for m in second["messages"])
    tools = counter.count(json.dumps(second["tools"]))
    # Everything sent leaves room for the reply (1,024 tokens) within the 3,000-token context.
    assert (
        prompt + tools + counter.count(json.dumps(second["messages"][2]["tool_calls"]))
        <= 3000 - 1024
    )
    assert len(result) > 1000  # it used the room it had


async def test_a_model_failure_after_a_tool_step_keeps_the_exchange_and_its_usage(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.call(("calculate", '{"expression": "6 * 7"}'), usage=(30, 4))
    fake_openai.reply("It is", usage=(50, 2), cut_after=1)  # the connection drops mid-answer
    fake_openai.reply("Still here.")
    async with engine_factory(PARLEY_MODEL_RETRIES=0) as runtime:
        events = await turn(runtime.engine, "what is 6*7?")
        rows = await stored(runtime)
        async with runtime.store.engine.connect() as connection:  # type: ignore[attr-defined]
            spent = (
                await connection.execute(
                    select(
                        usage.c.prompt_tokens, usage.c.completion_tokens, usage.c.estimated
                    ).order_by(usage.c.id)
                )
            ).all()
        await turn(runtime.engine, "and now?")

    failed = events[-1]
    assert isinstance(failed, Failed) and failed.reason == "interrupted"
    assert failed.partial == "It i"  # what the user saw is marked cut off, not stored
    # The tool exchange is kept (the model paid for it); the cut-off text is not.
    assert [(r["role"], r["tool_call_id"]) for r in rows] == [
        ("user", None),
        ("assistant", None),
        ("tool", "call_0_calculate"),
    ]
    # Both model calls are paid for: the tool step as reported, the cut one estimated.
    assert spent[0] == (30, 4, False)
    assert spent[1][2] is True and spent[1][1] == 2  # "It i" is two o200k tokens
    assert len(spent) == 2
    # The next turn's context holds the kept exchange, whole and in order.
    assert [m["role"] for m in fake_openai.chat_requests[-1]["messages"][1:]] == [
        "user",
        "assistant",
        "tool",
        "user",
    ]


async def test_no_tool_steps_means_no_tools_are_offered(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("It is noon.")
    async with engine_factory(PARLEY_TOOL_STEPS=0) as runtime:
        events = await turn(runtime.engine, "what time is it?")
    assert events[-1] == Final(text="It is noon.", usage=events[-1].usage)  # type: ignore[union-attr]
    [request] = fake_openai.chat_requests
    assert "tools" not in request
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
