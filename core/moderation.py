"""Moderation: the Moderator port, its verdicts, and the chain the engine runs both ways.

A moderator looks at one text going in (the user's message, before the model sees it) or out
(the reply, before it is final) and returns a Verdict: the text to use from now on (with
personal data redacted, say) and what it found. Each finding carries the action its rule or
category maps to: block, redact, or only flag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from core.errors import ParleyError


class Direction(StrEnum):
    """Which way a text is going."""

    INPUT = "input"  # from the user, before the model sees it
    OUTPUT = "output"  # from the model, before the reply is final


class Action(StrEnum):
    """What a finding asks for; BLOCK outranks REDACT outranks FLAG."""

    FLAG = "flag"  # let it pass, keep a record for review
    REDACT = "redact"  # pass the text with the finding replaced
    BLOCK = "block"  # stop it: the model (input) or the user (output) never sees it

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.FLAG: 0, Action.REDACT: 1, Action.BLOCK: 2}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a moderator found.

    Attributes:
        source: The moderator's name ("openai", "rules", "pii").
        category: The rule or category ("harassment", "email", a rule's name).
        action: What this rule or category maps to.
        score: The category's score, when the moderator gives one (0..1).
    """

    source: str
    category: str
    action: Action
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A moderator's answer: the text to use from here on, and what was found in it."""

    text: str
    findings: tuple[Finding, ...] = ()

    @property
    def action(self) -> Action | None:
        """The strongest action among the findings; None when nothing was found."""
        if not self.findings:
            return None
        return max((f.action for f in self.findings), key=lambda a: a.severity)

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


class ModerationUnavailable(ParleyError):
    """A moderator could not give a verdict (its service failed); the policy decides."""


class Moderator(Protocol):
    """Checks one text; raises ModerationUnavailable when it cannot tell."""

    name: str

    async def check(self, text: str, *, direction: Direction) -> Verdict:
        """The verdict on `text`; a moderator not concerned with `direction` returns it as is."""
        ...


UNAVAILABLE = "unavailable"  # the category of a finding that says a moderator could not tell


class ModerationChain:
    """Runs moderators in order, each on the text the previous one passed on.

    Local rules and redaction go first, so personal data is gone before text leaves for a
    moderation service; the chain stops at the first block. When a moderator is unavailable,
    `fail_closed` decides per direction: closed raises ModerationUnavailable (the engine
    refuses), open passes the text on with an "unavailable" flag for review.
    """

    def __init__(
        self, moderators: Sequence[Moderator], *, fail_closed: Mapping[Direction, bool]
    ) -> None:
        self.moderators = list(moderators)
        self._fail_closed = dict(fail_closed)

    async def check(self, text: str, *, direction: Direction) -> Verdict:
        findings: list[Finding] = []
        for moderator in self.moderators:
            try:
                verdict = await moderator.check(text, direction=direction)
            except ModerationUnavailable:
                if self._fail_closed.get(direction, True):
                    raise
                findings.append(Finding(moderator.name, UNAVAILABLE, Action.FLAG))
                continue
            text = verdict.text
            findings.extend(verdict.findings)
            if verdict.blocked:
                break
        return Verdict(text=text, findings=tuple(findings))
