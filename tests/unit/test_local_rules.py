"""The local moderators: personal-data redaction and the policy's keyword rules."""

from __future__ import annotations

import re
import string
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.local_rules import (
    REDACTION_MARKERS,
    KeywordRules,
    PiiConfig,
    PiiRedactor,
    RuleConfig,
    scrub,
)
from core.moderation import Action, Direction, Finding, Moderator, Verdict

INPUT, OUTPUT = Direction.INPUT, Direction.OUTPUT
EMAIL, PHONE, CARD, SECRET = (
    REDACTION_MARKERS[kind] for kind in ("email", "phone", "card", "secret")
)


async def pii(text: str, direction: Direction = INPUT, **config: Any) -> Verdict:
    moderator: Moderator = PiiRedactor(PiiConfig(**config))
    return await moderator.check(text, direction=direction)


def found(verdict: Verdict) -> dict[str, Action]:
    return {finding.category: finding.action for finding in verdict.findings}


# --- personal data -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe@example.com.", f"write to {EMAIL}."),
        ("<john_smith+news@mail.example.co.uk>", f"<{EMAIL}>"),
        ("a%b-c@sub-domain.example.org, x@y.io", f"{EMAIL}, {EMAIL}"),
        ("MixedCase.99@Example.COM: hi", f"{EMAIL}: hi"),
        ("foo@bar is not an address, nor is @handle or me@localhost", None),
    ],
)
async def test_email_addresses(text: str, expected: str | None) -> None:
    verdict = await pii(text)
    assert verdict.text == (expected or text)
    assert found(verdict) == ({"email": Action.REDACT} if expected else {})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("call +44 20 7946 0958 today", f"call {PHONE} today"),
        ("call +1-202-555-0173.", f"call {PHONE}."),
        ("+33612345678 or +33 6 12 34 56 78", f"{PHONE} or {PHONE}"),
        ("+44 (0)20 7946 0958, +1 (202) 555-0173", f"{PHONE}, {PHONE}"),
        ("(202) 555-0173 or 202-555-0173 or 202.555.0173", f"{PHONE} or {PHONE} or {PHONE}"),
        ("office 020 7946 0958, mobile 07700 900123", f"office {PHONE}, mobile {PHONE}"),
        ("(020) 7946 0958", PHONE),
    ],
)
async def test_phone_numbers(text: str, expected: str) -> None:
    verdict = await pii(text)
    assert verdict.text == expected
    assert found(verdict) == {"phone": Action.REDACT}


@pytest.mark.parametrize(
    "text",
    [
        "+1 2024",  # too few digits for a phone number
        "+12 3456 7890 1234 5678",  # too many
        "01-02-2024",  # a date, though it starts with a trunk 0
        "123-456-7890",  # no North American area code starts with 1
    ],
)
async def test_not_phone_numbers(text: str) -> None:
    assert await pii(text) == Verdict(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("visa 4111 1111 1111 1111 exp 12/27", f"visa {CARD} exp 12/27"),
        ("4111-1111-1111-1111", CARD),
        ("mastercard 5500000000000004.", f"mastercard {CARD}."),
        ("amex 3782 822463 10005 and 378282246310005", f"amex {CARD} and {CARD}"),
        ("13 digits: 4222222222222, 19: 6011 0009 9013 9424 123", f"13 digits: {CARD}, 19: {CARD}"),
        ("two: 4111 1111 1111 1111 5500 0000 0000 0004", f"two: {CARD} {CARD}"),
    ],
)
async def test_card_numbers(text: str, expected: str) -> None:
    verdict = await pii(text)
    assert verdict.text == expected
    assert found(verdict) == {"card": Action.REDACT}


@pytest.mark.parametrize(
    "text",
    ["4111 1111 1111 1112", "4111-1111-1111-1110", "5500000000000005", "1234567890123456"],
)
async def test_numbers_failing_luhn_are_not_cards(text: str) -> None:
    assert await pii(f"order {text} shipped") == Verdict(f"order {text} shipped")


@pytest.mark.parametrize(
    "secret",
    [
        "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z_-Ab3dEf6hIj9kLm2nOp5q",
        "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
        "xoxp-1234567890-abcdefghij",
        "xapp-1-A0123456789-0123456789012-abcdef0123456789",
        "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJK",
        "AKIAIOSFODNN7EXAMPLE",
        "AIzaSyA-1234567890abcdefghijklmnopqrst_",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_51H8abcdEFGHijkl",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "Bearer 2a9f0c7e5b3d41e8a6c9",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nq3Lx==\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----",
    ],
)
async def test_secrets(secret: str) -> None:
    verdict = await pii(f"use {secret} please")
    assert verdict == Verdict(f"use {SECRET} please", (Finding("pii", "secret", Action.REDACT),))


async def test_a_cut_off_private_key_is_removed_to_the_end() -> None:
    verdict = await pii("key:\n-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nMIIE")
    assert verdict.text == f"key:\n{SECRET}"


async def test_a_bearer_token_goes_with_its_scheme() -> None:
    verdict = await pii("Authorization: Bearer 2a9f0c7e5b3d41e8a6c9f0e1\nHost: x")
    assert verdict.text == f"Authorization: {SECRET}\nHost: x"


async def test_ordinary_prose_passes_unchanged() -> None:
    prose = (
        "In 2024 the team shipped version 3.11.7 (and 2.0) of the desk-top app. It cost "
        "$1,234.56, or 1.234,56 EUR, plus 19.99 for shipping. The meeting at 12:30 on "
        "2026-11-21 (or 21/11/2026, 11.21.2026) reviewed order #12345 and ticket #0207946, "
        "served from 192.168.1.1:8080 and 10.0.0.255. The task-force's skills, a risk-free "
        "ask-me-anything, the bearer of news, xoxo, AKIA in caps, a sk-8 park, 100% sure, "
        "50-60 people, 1 000 000 visitors, page 12 of 300, room 0.5, ratio 16:9, call at 9."
    )
    assert await pii(prose) == Verdict(prose)


async def test_each_kind_takes_its_own_action() -> None:
    text = "mail a@b.co, call 202-555-0173, pay 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE"
    verdict = await pii(text, email=Action.REDACT, phone=Action.FLAG, card=Action.BLOCK)

    # Only the REDACT kind is replaced; the others are left for the caller to pass or stop.
    assert verdict.text == (
        f"mail {EMAIL}, call 202-555-0173, pay 4111 1111 1111 1111, key {SECRET}"
    )
    assert verdict.findings == (
        Finding(source="pii", category="secret", action=Action.REDACT),
        Finding(source="pii", category="email", action=Action.REDACT),
        Finding(source="pii", category="card", action=Action.BLOCK),
        Finding(source="pii", category="phone", action=Action.FLAG),
    )
    assert verdict.blocked


@pytest.mark.parametrize("action", [Action.BLOCK, Action.FLAG])
async def test_block_and_flag_leave_the_text_as_it_is(action: Action) -> None:
    text = "a@b.co and c@d.co"
    verdict = await pii(text, email=action)
    assert verdict == Verdict(text, (Finding(source="pii", category="email", action=action),))


async def test_one_finding_per_kind_not_per_occurrence() -> None:
    verdict = await pii("a@b.co, c@d.co and e@f.co")
    assert verdict == Verdict(
        f"{EMAIL}, {EMAIL} and {EMAIL}", (Finding("pii", "email", Action.REDACT),)
    )


async def test_a_kind_set_to_none_is_not_checked() -> None:
    text = "mail a@b.co or call 202-555-0173"
    verdict = await pii(text, email=None)
    assert verdict == Verdict(
        f"mail a@b.co or call {PHONE}", (Finding("pii", "phone", Action.REDACT),)
    )
    off: dict[str, Any] = {"email": None, "phone": None, "card": None, "secret": None}
    assert await pii(text, **off) == Verdict(text)


async def test_only_the_configured_directions_are_checked() -> None:
    assert (await pii("a@b.co", OUTPUT, directions=["input"])) == Verdict("a@b.co")
    assert (await pii("a@b.co", INPUT, directions=["input"])).text == EMAIL
    assert (await pii("a@b.co", OUTPUT)).text == EMAIL


async def test_digits_inside_an_address_or_key_are_not_numbers_of_their_own() -> None:
    verdict = await pii("mail 2025550173@example.com or 4111111111111111@example.com")
    assert verdict == Verdict(f"mail {EMAIL} or {EMAIL}", (Finding("pii", "email", Action.REDACT),))
    verdict = await pii("token xoxb-202-555-0173-abcdefghij")
    assert verdict == Verdict(f"token {SECRET}", (Finding("pii", "secret", Action.REDACT),))


def test_pii_config_is_checked() -> None:
    assert PiiConfig.model_validate({"card": "block"}).card is Action.BLOCK
    with pytest.raises(ValidationError):
        PiiConfig.model_validate({"iban": "redact"})
    with pytest.raises(ValidationError):
        PiiConfig.model_validate({"email": "delete"})


def test_scrub_redacts_every_kind() -> None:
    assert scrub("a@b.co 202-555-0173 4111111111111111 AKIAIOSFODNN7EXAMPLE") == (
        f"{EMAIL} {PHONE} {CARD} {SECRET}"
    )


# --- keyword rules -------------------------------------------------------------------------


async def rules(
    text: str, *configs: dict[str, Any], direction: Direction = INPUT, base_dir: Path = Path()
) -> Verdict:
    moderator: Moderator = KeywordRules.from_config(
        [RuleConfig.model_validate(config) for config in configs], base_dir=base_dir
    )
    return await moderator.check(text, direction=direction)


async def test_keywords_are_whole_words_in_any_case() -> None:
    rule = {"name": "rude", "keywords": ["ass", "c++"], "action": "redact"}
    assert await rules("first class, assess the brass", rule) == Verdict(
        "first class, assess the brass"
    )
    assert await rules("ASS! You ass. c++ rocks, abc++ does not", rule) == Verdict(
        "[removed]! You [removed]. [removed] rocks, abc++ does not",
        (Finding(source="rules", category="rude", action=Action.REDACT),),
    )


async def test_phrases_match_across_any_whitespace_and_the_longest_wins() -> None:
    rule = {"name": "codenames", "keywords": ["falcon", "project falcon"], "action": "redact"}
    verdict = await rules("Project \t\n  FALCON and falcon, but not projectfalcon", rule)
    assert verdict.text == "[removed] and [removed], but not projectfalcon"


async def test_patterns_are_case_insensitive_regular_expressions() -> None:
    rule = {"name": "competitors", "patterns": [r"acme\s+corp(oration)?", r"\bz\d{3}\b"]}
    verdict = await rules("Ask ACME   Corporation about the Z100", rule)
    assert verdict == Verdict(
        "Ask ACME   Corporation about the Z100", (Finding("rules", "competitors", Action.BLOCK),)
    )


async def test_a_rules_keywords_and_patterns_are_redacted_together() -> None:
    rule = {"name": "r", "keywords": ["alpha beta"], "patterns": ["beta gamma"], "action": "redact"}
    assert (await rules("alpha beta gamma delta", rule)).text == "[removed] delta"


async def test_several_rules_each_give_one_finding_in_order() -> None:
    redact = {"name": "codenames", "keywords": ["falcon"], "action": "redact"}
    flag = {"name": "watch", "keywords": ["falcon", "ship"], "action": "flag"}
    block = {"name": "banned", "keywords": ["zorblax"]}
    verdict = await rules("falcon ships; the falcon ship sails", redact, flag, block)

    # The flag rule matched "falcon" too: detection runs on the text as given.
    assert verdict == Verdict(
        "[removed] ships; the [removed] ship sails",
        (Finding("rules", "codenames", Action.REDACT), Finding("rules", "watch", Action.FLAG)),
    )


async def test_rules_apply_only_to_their_directions() -> None:
    rule = {"name": "r", "keywords": ["secret"], "directions": ["output"]}
    assert await rules("a secret", rule, direction=INPUT) == Verdict("a secret")
    assert (await rules("a secret", rule, direction=OUTPUT)).blocked


async def test_an_empty_pattern_match_is_no_finding() -> None:
    assert await rules("hello", {"name": "r", "patterns": ["x*"]}) == Verdict("hello")


async def test_keywords_file_with_comments_relative_to_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "banned.txt").write_text(
        "# words we do not send\n\nzorblax\n  Bad   Thing  \n# ignored\ncafé\n", encoding="utf-8"
    )
    rule = {"name": "banned", "keywords_file": "lists/banned.txt", "action": "redact"}

    verdict = await rules("Zorblax, a bad thing at the CAFÉ; ignored", rule, base_dir=tmp_path)

    assert verdict.text == "[removed], a [removed] at the [removed]; ignored"


async def test_an_absolute_keywords_file_ignores_the_base_dir(tmp_path: Path) -> None:
    (tmp_path / "words.txt").write_text("zorblax\n", encoding="utf-8")
    rule = {"name": "r", "keywords_file": str(tmp_path / "words.txt")}
    assert (await rules("zorblax", rule, base_dir=Path("/nonexistent"))).blocked


def test_a_missing_or_empty_keywords_file_is_named(tmp_path: Path) -> None:
    rule = RuleConfig(name="banned", keywords_file=Path("missing.txt"))
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "missing.txt"))):
        KeywordRules.from_config([rule], base_dir=tmp_path)

    (tmp_path / "empty.txt").write_text("# nothing yet\n", encoding="utf-8")
    rule = RuleConfig(name="banned", keywords_file=Path("empty.txt"))
    with pytest.raises(ValueError, match=r"empty\.txt has no keywords"):
        KeywordRules.from_config([rule], base_dir=tmp_path)


def test_a_bad_pattern_is_named_with_its_rule() -> None:
    with pytest.raises(ValueError, match=r"rule 'broken': invalid pattern '\(unclosed'"):
        RuleConfig(name="broken", patterns=("fine", "(unclosed"))


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"name": "nothing"}, "no keywords, patterns or keywords_file"),
        ({"name": "blank", "keywords": ["ok", "  "]}, "empty keyword"),
        ({"name": "typo", "keyword": ["x"]}, "Extra inputs are not permitted"),
        ({"name": "r", "keywords": ["x"], "action": "delete"}, "action"),
    ],
)
def test_rule_config_is_checked(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RuleConfig.model_validate(config)


# --- properties ----------------------------------------------------------------------------

WORDS = (
    *("the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "by", "for", "with", "we"),
    *("you", "it", "is", "was", "The", "In", "It", "We", "team", "shipped", "version", "price"),
    *("order", "meeting", "phone", "card", "mail", "email", "key", "token", "plus", "minus"),
    # Near misses: "sk-" inside task-force, prefixes of keys, "bearer" with no token after it.
    *("skills", "desk-top", "task-force", "risk-free", "class", "assess", "sk", "xoxo"),
    *("bearer", "Bearer", "AKIA", "eyJ", "ghp", "@", "-"),
)
PUNCTUATION = ("", "", "", ".", ",", ";", ":", "!", "?", "'s", ")")
number = st.integers(0, 9999).map(str)
# A number in prose counts something: a word follows it. Four bare numbers in a row
# ("2020 2021 2022 2023") are a 16-digit run that passes Luhn one time in ten.
prose_token = st.one_of(
    st.sampled_from(WORDS),
    st.tuples(st.sampled_from(WORDS), st.sampled_from(PUNCTUATION)).map("".join),
    st.tuples(st.sampled_from(("", "#", "$")), number, st.sampled_from(WORDS)).map(
        lambda parts: f"{parts[0]}{parts[1]} {parts[2]}"
    ),
)
prose = st.lists(prose_token, max_size=25).map(" ".join)

# Only what the e-mail pattern claims to support: an ASCII local part of letters, digits and
# ._%+-, dot-separated LDH domain labels and an alphabetic top-level domain. Hypothesis's own
# emails() also draws forms that are deliberately not matched (quoted parts, other scripts).
local_part = st.text(string.ascii_letters + string.digits + "._%+-", min_size=1, max_size=20)
alphanumeric = st.text(string.ascii_letters + string.digits, min_size=1, max_size=6)
label = st.lists(alphanumeric, min_size=1, max_size=3).map("-".join)  # no edge hyphens
top_level = st.text(string.ascii_letters, min_size=2, max_size=6)
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    local_part,
    st.lists(label, min_size=1, max_size=3),
    top_level,
)


def luhn_check_digit(body: str) -> str:
    """The digit that completes `body` to a Luhn-valid number (written apart from the module)."""
    doubled = [int(d) * 2 if i % 2 == 0 else int(d) for i, d in enumerate(reversed(body))]
    return str(-sum(d - 9 if d > 9 else d for d in doubled) % 10)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    length = draw(st.integers(13, 19))
    body = draw(st.text(string.digits, min_size=length - 1, max_size=length - 1))
    digits = body + luhn_check_digit(body)
    separator = draw(st.sampled_from(("", " ", "-")))
    cuts = sorted(draw(st.sets(st.integers(1, length - 1), max_size=5))) if separator else []
    return separator.join(digits[start:end] for start, end in pairwise([0, *cuts, length]))


def embed(before: str, item: str, after: str) -> str:
    return " ".join(part for part in (before, item, after) if part)


@settings(max_examples=200, database=None)
@given(before=prose, card=card_numbers(), after=prose)
async def test_valid_card_numbers_in_prose_are_always_redacted(
    before: str, card: str, after: str
) -> None:
    verdict = await pii(embed(before, card, after))

    assert card not in verdict.text
    # Nor in pieces: the prose's own numbers have words between them, so no run of 13 digits
    # could come from anywhere but the card.
    assert re.sub(r"\D", "", card) not in re.sub(r"[ -]", "", verdict.text)
    assert CARD in verdict.text
    assert found(verdict) == {"card": Action.REDACT}


@settings(max_examples=200, database=None)
@given(before=prose, email=emails, after=prose)
async def test_email_addresses_in_prose_are_always_redacted(
    before: str, email: str, after: str
) -> None:
    verdict = await pii(embed(before, email, after))
    assert verdict == Verdict(
        embed(before, EMAIL, after), (Finding("pii", "email", Action.REDACT),)
    )


@settings(max_examples=200, database=None)
@given(text=prose)
async def test_ordinary_prose_is_never_touched(text: str) -> None:
    assert await pii(text) == Verdict(text)


def test_a_policy_file_turns_a_kind_off() -> None:
    config = PiiConfig.model_validate({"phone": "off", "card": "block"})
    assert (config.phone, config.card, config.email) == (None, Action.BLOCK, Action.REDACT)
