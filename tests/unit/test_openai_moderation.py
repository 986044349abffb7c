"""The OpenAI moderator against the scripted server, through the real openai client."""

from __future__ import annotations

import logging
import socket
import tomllib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from pydantic import ValidationError

from core.moderation import Action, Direction, Finding, ModerationUnavailable, Verdict
from core.openai_moderation import OpenAIModerationConfig, OpenAIModerator
from tests.fakes.openai_server import FakeOpenAI


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=fake_openai.base_url, max_retries=0
    ) as client:
        yield client


def moderator(client: openai.AsyncOpenAI, **config: Any) -> OpenAIModerator:
    return OpenAIModerator(client=client, config=OpenAIModerationConfig.model_validate(config))


async def test_a_text_not_flagged_passes_unchanged(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    verdict = await moderator(client).check("hello there", direction=Direction.INPUT)

    assert verdict == Verdict("hello there")
    assert verdict.action is None
    assert fake_openai.moderation_requests == [
        {"model": "omni-moderation-latest", "input": "hello there"}
    ]
    assert fake_openai.requests[0].headers["Authorization"] == "Bearer sk-test"
    assert fake_openai.chat_requests == []


async def test_flagged_categories_become_findings_with_their_actions_and_scores(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag({"harassment": 0.91, "self-harm": 0.3, "violence/graphic": 0.8})
    checker = moderator(client, categories={"harassment": {"action": "flag"}})

    verdict = await checker.check("you again", direction=Direction.OUTPUT)

    assert verdict.text == "you again"
    assert verdict.findings == (
        Finding("openai", "harassment", Action.FLAG, 0.91),
        Finding("openai", "violence/graphic", Action.BLOCK, 0.8),
    )
    assert verdict.blocked


async def test_the_default_action_applies_to_categories_without_an_entry(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag({"hate": 0.7, "self-harm/intent": 0.6})
    checker = moderator(
        client, default_action="flag", categories={"self-harm/intent": {"action": "block"}}
    )

    verdict = await checker.check("text", direction=Direction.INPUT)

    assert verdict.findings == (
        Finding("openai", "hate", Action.FLAG, 0.7),
        Finding("openai", "self-harm/intent", Action.BLOCK, 0.6),
    )


async def test_a_threshold_flags_a_category_the_endpoint_did_not(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag({"self-harm": 0.3, "violence": 0.29}, flagged=())
    checker = moderator(
        client,
        categories={
            "self-harm": {"threshold": 0.3, "action": "flag"},  # reached exactly: flagged
            "violence": {"threshold": 0.3},
        },
    )

    verdict = await checker.check("text", direction=Direction.INPUT)

    assert verdict.findings == (Finding("openai", "self-harm", Action.FLAG, 0.3),)


async def test_a_threshold_above_the_score_overrides_the_endpoints_flag(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag({"harassment": 0.91, "hate": 0.6}, flagged=("harassment", "hate"))
    checker = moderator(client, categories={"harassment": {"threshold": 0.95}})

    verdict = await checker.check("text", direction=Direction.INPUT)

    assert verdict.findings == (Finding("openai", "hate", Action.BLOCK, 0.6),)


async def test_categories_the_sdk_does_not_know_are_read_and_configurable(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag({"fraud/phishing": 0.4, "spam": 0.9})
    checker = moderator(client, categories={"fraud/phishing": {"threshold": 0.35}})

    verdict = await checker.check("text", direction=Direction.INPUT)

    assert verdict.findings == (
        Finding("openai", "fraud/phishing", Action.BLOCK, 0.4),
        Finding("openai", "spam", Action.BLOCK, 0.9),
    )


async def test_a_direction_not_listed_passes_without_a_request(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag_when("hurt", {"violence": 0.95})
    checker = moderator(client, directions=["input"])

    verdict = await checker.check("I will hurt you", direction=Direction.OUTPUT)

    assert verdict == Verdict("I will hurt you")
    assert fake_openai.requests == []
    assert (await checker.check("I will hurt you", direction=Direction.INPUT)).blocked


async def test_the_configured_model_reaches_the_server(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    await OpenAIModerator(client=client, model="text-moderation-stable").check(
        "a", direction=Direction.INPUT
    )
    overridden = OpenAIModerationConfig(model="omni-moderation-2024-09-26")
    await OpenAIModerator(client=client, model="text-moderation-stable", config=overridden).check(
        "b", direction=Direction.INPUT
    )

    assert fake_openai.moderation_requests == [
        {"model": "text-moderation-stable", "input": "a"},
        {"model": "omni-moderation-2024-09-26", "input": "b"},
    ]


@pytest.mark.parametrize(
    ("status", "retry_after"), [(500, None), (429, 1.0), (401, None), (400, None)]
)
async def test_an_http_error_makes_the_moderator_unavailable(
    client: openai.AsyncOpenAI,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
    status: int,
    retry_after: float | None,
) -> None:
    fake_openai.moderation_error(status, retry_after=retry_after)

    with pytest.raises(ModerationUnavailable, match=f"^openai moderation: HTTP {status}$"):
        await moderator(client).check("text", direction=Direction.INPUT)

    [record] = [r for r in caplog.records if r.name == "core.openai_moderation"]
    assert record.levelno == logging.WARNING
    assert f"HTTP {status}" in record.getMessage()


async def test_an_unreachable_server_makes_the_moderator_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
    ) as client:
        with pytest.raises(ModerationUnavailable, match="connection error"):
            await moderator(client).check("text", direction=Direction.INPUT)


async def test_a_slow_server_makes_the_moderator_unavailable(fake_openai: FakeOpenAI) -> None:
    fake_openai.flag({}, delay=2.0)
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=fake_openai.base_url, max_retries=0, timeout=0.2
    ) as client:
        with pytest.raises(ModerationUnavailable, match="timeout"):
            await moderator(client).check("text", direction=Direction.INPUT)


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        '"hello"',
        "[]",
        '{"results": []}',
        '{"results": [{"categories": {"hate": true}}]}',
        '{"results": [{"categories": {"hate": true}, "category_scores": {"hate": "high"}}]}',
    ],
)
async def test_a_malformed_answer_makes_the_moderator_unavailable(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI, body: str
) -> None:
    fake_openai.moderation_body(body)

    with pytest.raises(ModerationUnavailable, match="malformed response"):
        await moderator(client).check("text", direction=Direction.INPUT)


def test_the_policy_section_reads_openais_category_names_from_toml() -> None:
    section = tomllib.loads(
        """
        default_action = "flag"
        directions = ["output"]
        categories.self-harm = { action = "block" }
        categories."harassment/threatening" = { threshold = 0.4 }
        """
    )

    config = OpenAIModerationConfig.model_validate(section)

    assert config.default_action is Action.FLAG
    assert config.directions == (Direction.OUTPUT,)
    assert config.categories["self-harm"].action is Action.BLOCK
    assert config.categories["harassment/threatening"].threshold == 0.4


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"default_action": "redact"}, "cannot redact"),
        ({"categories": {"hate": {"action": "redact"}}}, "cannot redact"),
        ({"categories": {"hate": {"threshold": 1.5}}}, "less than or equal to 1"),
        ({"categories": {"hate": {"threshold": -0.1}}}, "greater than or equal to 0"),
        ({"categories": {"hate": {"level": 0.5}}}, "Extra inputs are not permitted"),
        ({"threshold": 0.5}, "Extra inputs are not permitted"),
        ({"directions": ["sideways"]}, "'input' or 'output'"),
    ],
)
def test_the_policy_section_refuses_what_it_cannot_do(
    section: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        OpenAIModerationConfig.model_validate(section)


async def test_the_fake_answers_each_input_and_matches_content_before_its_queue(
    client: openai.AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.flag_when("gory", {"violence/graphic": 0.88})
    fake_openai.flag_when("broken", error=503)
    fake_openai.flag({"hate": 0.2}, flagged=("hate",))

    response = await client.moderations.create(input=["a gory tale", "a calm one"])
    again = await client.moderations.create(input="another gory tale")
    with pytest.raises(openai.InternalServerError):
        await client.moderations.create(input=["calm", "broken"])
    last = await client.moderations.create(input="calm")

    assert [r.flagged for r in response.results] == [True, True]
    assert response.results[0].category_scores.violence_graphic == 0.88
    assert response.results[1].categories.hate
    assert again.results[0].categories.violence_graphic
    assert not last.results[0].flagged
    assert len(fake_openai.moderation_requests) == 4
