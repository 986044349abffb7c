"""The official `openai` client against Parley's `/v1`: personas as models, answers streamed
and not, conversations Parley keeps, stateless requests, and bad keys."""

from __future__ import annotations

import openai
import pytest

from tests.fakes.openai_server import FakeOpenAI
from tests.web.conftest import Served


def client(served: Served, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{served.url}/v1", api_key=key or served.user_key, max_retries=0
    )


async def test_personas_are_the_models(served: Served) -> None:
    async with client(served) as parley:
        models = [model.id async for model in parley.models.list()]
    assert models == ["assistant", "coder", "editor", "translator"]


async def test_a_named_conversation_keeps_its_history_and_takes_only_the_newest_message(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Hi Sam!")
    fake_openai.reply("Your name is Sam.")
    async with client(served) as parley:
        first = await parley.chat.completions.create(
            model="editor",
            messages=[{"role": "user", "content": "Hi, I am Sam"}],
            user="project-x",
        )
        assert first.choices[0].message.content == "Hi Sam!"
        assert first.choices[0].finish_reason == "stop"
        assert first.usage is not None and first.usage.total_tokens > 0
        # The client sends its own idea of the history; Parley takes only the newest message.
        stream = await parley.chat.completions.create(
            model="editor",
            messages=[
                {"role": "system", "content": "ignored: the persona decides"},
                {"role": "user", "content": "ignored too"},
                {"role": "user", "content": "What is my name?"},
            ],
            user="project-x",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(pieces) == "Your name is Sam."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None and usage.completion_tokens > 0
    sent = fake_openai.chat_requests[-1]["messages"]
    assert [m["content"] for m in sent[1:]] == [
        "alice: Hi, I am Sam",
        "Hi Sam!",
        "alice: What is my name?",
    ]
    assert "ignored" not in sent[0]["content"]
    # The conversation is alice's, under the name the client gave, with the API's others.
    status, read = await served.call("GET", "/api/v1/conversations/project-x")
    assert status == 200 and read["persona"] == "editor" and len(read["messages"]) == 4


async def test_the_conversation_header_names_a_conversation_too(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("one")
    fake_openai.reply("two")
    async with client(served) as parley:
        for text in ("first", "second"):
            await parley.chat.completions.create(
                model="assistant",
                messages=[{"role": "user", "content": text}],
                extra_headers={"X-Parley-Conversation": "from-a-header"},
            )
    assert [m["content"] for m in fake_openai.chat_requests[-1]["messages"][1:]] == [
        "alice: first",
        "one",
        "alice: second",
    ]


async def test_without_a_conversation_the_request_is_one_stateless_turn(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("It is 4.")
    fake_openai.reply("Hello.")
    async with client(served) as parley:
        answer = await parley.chat.completions.create(
            model="assistant",
            messages=[
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "What is 2+2?"},
                {"role": "assistant", "content": "4"},
                {"role": "user", "content": [{"type": "text", "text": "And 2+2 again?"}]},
            ],
        )
        assert answer.choices[0].message.content == "It is 4."
        await parley.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}]
        )
    first, second = fake_openai.chat_requests
    assert [m["content"] for m in first["messages"][1:]] == [
        "What is 2+2?",
        "4",
        "alice: And 2+2 again?",
    ]
    assert [m["content"] for m in second["messages"][1:]] == ["alice: Hi"]  # nothing carried
    status, listed = await served.call("GET", "/api/v1/conversations")
    assert (status, listed) == (200, {"conversations": []})  # one-request ones are not listed


async def test_a_bad_key_is_refused_and_nothing_is_stored(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    async with client(served, key="pk-not-a-key") as parley:
        with pytest.raises(openai.AuthenticationError):
            await parley.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "hi"}], user="c1"
            )
        with pytest.raises(openai.AuthenticationError):
            await parley.models.list()
    assert fake_openai.chat_requests == []
    assert await served.rows() == (0, 0)


async def test_unknown_personas_and_failures_are_errors_the_client_understands(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.error(500)
    async with client(served) as parley:
        with pytest.raises(openai.NotFoundError) as unknown:
            await parley.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert "assistant" in str(unknown.value)  # it names the personas
        with pytest.raises(openai.APIStatusError) as failed:
            await parley.chat.completions.create(
                model="assistant", messages=[{"role": "user", "content": "hi"}], user="c2"
            )
    assert failed.value.status_code == 502
    status, read = await served.call("GET", "/api/v1/conversations/c2")
    assert (status, [m["content"] for m in read["messages"]]) == (200, ["hi"])  # kept
