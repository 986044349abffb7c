"""Moderation in the turn: input before the model, output before it is final, flags stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from core import wording
from core.events import Delta, Final, Refused, Retracted
from core.storage.tables import messages
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import KEY, turn


async def stored(runtime: Any) -> list[tuple[str, str]]:
    async with runtime.store.engine.connect() as connection:
        rows = await connection.execute(
            select(messages.c.role, messages.c.content).order_by(messages.c.id)
        )
        return [tuple(row) for row in rows]


def last_user_content(fake: FakeOpenAI) -> str:
    return fake.chat_requests[-1]["messages"][-1]["content"]


async def test_flagged_input_never_reaches_the_model_and_the_flag_is_stored(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.flag_when("hurt", {"violence": 0.93, "harassment": 0.2})
    async with engine_factory(PARLEY_MODERATION="openai") as runtime:
        events = await turn(runtime.engine, "I will hurt you")

        assert events == [Refused(text=wording.INPUT_BLOCKED, reason="moderation")]
        assert fake_openai.chat_requests == []
        assert [r["input"] for r in fake_openai.moderation_requests] == ["I will hurt you"]
        assert fake_openai.moderation_requests[0]["model"] == "omni-moderation-latest"
        assert await stored(runtime) == []
        [flag] = await runtime.store.flags()
        assert (flag.key, flag.user_id, flag.direction, flag.action) == (
            KEY,
            "U1",
            "input",
            "block",
        )
        assert flag.categories == ["openai/violence"]
        assert flag.scores == {"openai/violence": 0.93}
        assert flag.excerpt == "I will hurt you"


async def test_flagged_output_is_retracted_and_not_kept_in_the_conversation(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.flag_when("gory", {"violence/graphic": 0.88})
    fake_openai.reply("Here are the gory details")
    fake_openai.reply("Something else")
    async with engine_factory(PARLEY_MODERATION="openai") as runtime:
        events = await turn(runtime.engine, "tell me a story")

        assert any(isinstance(e, Delta) for e in events)  # it streamed, then was withdrawn
        assert events[-1] == Retracted(text=wording.OUTPUT_RETRACTED, reason="moderation")
        assert await stored(runtime) == [("user", "tell me a story")]
        [flag] = await runtime.store.flags()
        assert (flag.direction, flag.action, flag.categories) == (
            "output",
            "block",
            ["openai/violence/graphic"],
        )

        await turn(runtime.engine, "another one")
        sent = fake_openai.chat_requests[-1]["messages"][1:]
        assert [m["content"] for m in sent] == ["alice: tell me a story", "alice: another one"]


async def test_a_buffered_reply_is_not_streamed_and_a_flagged_one_is_never_shown(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.flag_when("gory", {"violence/graphic": 0.88})
    fake_openai.reply("A calm answer")
    fake_openai.reply("The gory version")
    async with engine_factory(PARLEY_MODERATION="openai") as runtime:
        await runtime.store.update_channel(key=KEY, buffer_output=True)

        calm = await turn(runtime.engine, "one")
        gory = await turn(runtime.engine, "two")

        assert [type(e) for e in calm] == [Final]
        assert calm[0].text == "A calm answer"  # type: ignore[union-attr]
        assert gory == [Retracted(text=wording.OUTPUT_RETRACTED, reason="moderation")]


async def test_redaction_removes_personal_data_before_the_model_sees_it(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.reply("Noted.")
    message = (
        "Mail ada.lovelace+bills@example.co.uk or call +44 20 7946 0958; "
        "card 4111 1111 1111 1111, key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789"
    )
    async with engine_factory(PARLEY_MODERATION="pii,openai") as runtime:
        await turn(runtime.engine, message)
        redacted = (
            "Mail [email removed] or call [phone number removed]; "
            "card [card number removed], key [secret removed]"
        )

        assert last_user_content(fake_openai) == f"alice: {redacted}"
        # The moderation service, too, only ever sees the redacted text.
        assert [r["input"] for r in fake_openai.moderation_requests] == [redacted, "Noted."]
        assert (await stored(runtime))[0] == ("user", redacted)
        [flag] = await runtime.store.flags()
        assert flag.action == "redact"
        assert sorted(flag.categories) == ["pii/card", "pii/email", "pii/phone", "pii/secret"]
        assert "4111" not in flag.excerpt and "example.co.uk" not in flag.excerpt


async def test_by_default_only_credentials_are_redacted(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Noted.")
    message = "Mail ada@example.org; my key is xoxb-1234567890-abcdefghijkl, keep it"
    async with engine_factory() as runtime:  # PARLEY_MODERATION unset
        await turn(runtime.engine, message)
        redacted = "Mail ada@example.org; my key is [secret removed], keep it"

        assert last_user_content(fake_openai) == f"alice: {redacted}"
        assert (await stored(runtime))[0] == ("user", redacted)
        [flag] = await runtime.store.flags()
        assert (flag.action, flag.categories) == ("redact", ["secrets/secret"])
        assert "xoxb" not in flag.excerpt


async def test_moderation_none_sends_the_message_as_written(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Noted.")
    message = "my key is xoxb-1234567890-abcdefghijkl"
    async with engine_factory(PARLEY_MODERATION="none") as runtime:
        await turn(runtime.engine, message)
        assert last_user_content(fake_openai) == f"alice: {message}"
        assert await runtime.store.flags() == []


async def test_output_redaction_changes_the_final_text_and_what_is_stored(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.reply("Write to bob@example.com about it.")
    async with engine_factory(PARLEY_MODERATION="pii") as runtime:
        events = await turn(runtime.engine, "who do I ask?")

        assert isinstance(events[-1], Final)
        assert events[-1].text == "Write to [email removed] about it."
        assert (await stored(runtime))[-1] == ("assistant", "Write to [email removed] about it.")


async def test_the_moderation_service_failing_closes_input_by_default(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.moderation_error(500)
    async with engine_factory(PARLEY_MODERATION="openai") as runtime:
        events = await turn(runtime.engine, "hello")

        assert events == [
            Refused(text=wording.MODERATION_UNAVAILABLE, reason="moderation_unavailable")
        ]
        assert fake_openai.chat_requests == []
        [flag] = await runtime.store.flags()
        assert (flag.direction, flag.action, flag.excerpt) == ("input", "unchecked", "hello")


async def test_failing_open_passes_the_message_on_and_flags_it(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.moderation_error(503)
    fake_openai.reply("Hi there")
    async with engine_factory(
        PARLEY_MODERATION="openai", PARLEY_MODERATION_INPUT_FAILURE="open"
    ) as runtime:
        events = await turn(runtime.engine, "hello")

        assert events[-1] == Final(text="Hi there", usage=events[-1].usage)  # type: ignore[union-attr]
        assert last_user_content(fake_openai) == "alice: hello"
        [flag] = await runtime.store.flags()
        assert (flag.direction, flag.action, flag.categories) == (
            "input",
            "flag",
            ["openai/unavailable"],
        )


async def test_output_can_fail_closed(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    fake_openai.default = None
    fake_openai.reply("An answer")
    async with engine_factory(
        PARLEY_MODERATION="openai", PARLEY_MODERATION_OUTPUT_FAILURE="closed"
    ) as runtime:
        fake_openai.flag_when("An answer", error=500)
        events = await turn(runtime.engine, "question")

        assert events[-1] == Retracted(
            text=wording.OUTPUT_UNCHECKED, reason="moderation_unavailable"
        )
        assert await stored(runtime) == [("user", "question")]


async def test_local_rules_block_redact_and_flag_both_ways(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "banned.txt").write_text("# words we do not send\nzorblax\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(
        """
[[rules]]
name = "codenames"
keywords = ["project falcon"]
action = "redact"

[[rules]]
name = "banned"
keywords_file = "banned.txt"
action = "block"

[[rules]]
name = "competitors"
patterns = ['acme\\s+corp(oration)?']
action = "flag"
"""
    )
    fake_openai.default = None
    fake_openai.reply("Project Falcon ships with Acme Corp support.")
    async with engine_factory(
        PARLEY_MODERATION="rules", PARLEY_MODERATION_POLICY=str(policy)
    ) as runtime:
        blocked = await turn(runtime.engine, "say ZORBLAX")
        answered = await turn(runtime.engine, "When does project   falcon ship vs Acme Corp?")

        assert blocked == [Refused(text=wording.INPUT_BLOCKED, reason="moderation")]
        assert last_user_content(fake_openai) == "alice: When does [removed] ship vs Acme Corp?"
        assert answered[-1].text == "[removed] ships with Acme Corp support."  # type: ignore[union-attr]
        flags = await runtime.store.flags()
        assert [(f.direction, f.action, f.categories) for f in flags] == [
            ("output", "redact", ["rules/codenames", "rules/competitors"]),
            ("input", "redact", ["rules/codenames", "rules/competitors"]),
            ("input", "block", ["rules/banned"]),
        ]
