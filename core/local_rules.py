"""Moderators that need no network: personal-data redaction and keyword rules.

Both do pure CPU work on precompiled regular expressions. Matches are found on the text as
given; only then are the REDACT findings applied, so one finding never hides another and a
BLOCK or FLAG finding leaves its matches where they are.

Their configuration models are sections of a moderation policy file, which another module
loads and passes in already parsed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from core.moderation import Action, Direction, Finding, Verdict

REDACTION_MARKERS = {
    "email": "[email removed]",
    "phone": "[phone number removed]",
    "card": "[card number removed]",
    "secret": "[secret removed]",
}
RULE_MARKER = "[removed]"

BOTH_DIRECTIONS = (Direction.INPUT, Direction.OUTPUT)

_Span = tuple[int, int]

# re.ASCII throughout: \d and \w must not take other scripts' digits or letters for ASCII ones.
_EMAIL = re.compile(
    r"""
    (?<![\w.%+-])                      # start at the beginning of the local part, not inside
    [\w.%+-]+ @
    (?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+ [A-Za-z]{2,}
    (?!\.?[\w-])                       # the whole domain: not a prefix of a longer one
    """,
    re.ASCII | re.VERBOSE,
)

_PHONE = re.compile(
    r"""
    (?<![\w+\#]) (?<!\d[.,:/-])        # not the tail of a number, word or #reference
    (?:
        \+\d{1,3} (?:[ .-]?\(\d{1,4}\))? (?:[ .-]?\d+)++       # +44 (0)20 7946 0958
      | \(\d{2,5}\)\ ?\d{3,4}[ .-]?\d{3,4}                    # (202) 555-0173
      | [2-9]\d\d([.-])[2-9]\d\d\1\d{4}                       # 202-555-0173 (North America)
      | 0\d{1,4}(?:[ -]\d{2,8})++                             # 020 7946 0958 (trunk prefix)
    )
    (?!\w) (?![.,:/-]\d)               # nor the head of one: 3.11.7, 12:30, 2026-11-21
    """,
    re.ASCII | re.VERBOSE,
)

# Digits chained by single spaces or dashes; which of its groups form a card is Luhn's call.
_DIGIT_CHAIN = re.compile(r"(?<![\w+])(?<!\d[.,:/])\d(?:[ -]?\d){12,}+(?!\w)(?![.,:/]\d)", re.ASCII)
_DIGIT_GROUP = re.compile(r"\d+", re.ASCII)
_MOST_CARD_GROUPS = 6  # cards are written in 5 groups at most; this bounds long chains' cost

_SECRET = re.compile(
    r"""
    (?<![\w-])
    (?:
        sk-[\w-]{20,}+                                          # OpenAI, sk-proj-... too
      | xox[abposr]-[A-Za-z0-9-]{10,}+ | xapp-[A-Za-z0-9-]{10,}+  # Slack
      | gh[pousr]_[A-Za-z0-9]{30,}+ | github_pat_\w{30,}+        # GitHub
      | AKIA[0-9A-Z]{16}(?!\w)                                  # AWS access key id
      | AIza[\w-]{35}(?![\w-])                                  # Google
      | [srp]k_live_[A-Za-z0-9]{10,}+                           # Stripe
      | eyJ[\w-]{8,}+\.[\w-]{8,}+\.[\w-]*+                      # JWT
      | Bearer[ \t]+ (?=[\w.~+/-]*\d)(?=[\w.~+/-]*[A-Za-z])     # Authorization header: a
        [\w.~+/-]{16,}+=*                                       # token has digits and letters
      | -----BEGIN[ A-Z0-9]*PRIVATE\ KEY-----                   # PEM, to its end or
        [\s\S]*?(?:-----END[ A-Z0-9]*PRIVATE\ KEY-----|\Z)      # the text's if cut off
    )
    (?!@)                                                       # that is an address's local part
    """,
    re.ASCII | re.VERBOSE,
)


class PiiConfig(BaseModel):
    """The `pii` section of a moderation policy: what to do with each kind of personal data.

    Attributes:
        email: Action for e-mail addresses; None to not look for them.
        phone: Action for phone numbers; None to not look for them.
        card: Action for payment card numbers (Luhn-checked); None to not look for them.
        secret: Action for API keys, tokens and private keys; None to not look for them.
        directions: The directions checked; texts going the other way pass untouched.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    email: Action | None = Action.REDACT
    phone: Action | None = Action.REDACT
    card: Action | None = Action.REDACT
    secret: Action | None = Action.REDACT
    directions: tuple[Direction, ...] = BOTH_DIRECTIONS

    @field_validator("email", "phone", "card", "secret", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        # TOML has no null: a policy file writes `phone = "off"` to not look for phone numbers.
        return None if value in ("off", False) else value


SECRETS_ONLY = PiiConfig(email=None, phone=None, card=None, secret=Action.REDACT)
"""Moderator "secrets", on by default: API keys, tokens and private keys redacted, both ways."""


class PiiRedactor:
    """Finds e-mail addresses, phone numbers, card numbers and secrets (moderator "pii").

    One finding per kind found, with the kind's configured action; only REDACT kinds are
    replaced in the verdict's text, by the kind's entry in REDACTION_MARKERS.
    """

    def __init__(self, config: PiiConfig | None = None, *, name: str = "pii") -> None:
        self._config = config or PiiConfig()
        self.name = name

    async def check(self, text: str, *, direction: Direction) -> Verdict:
        """The verdict on `text`; see the class docstring."""
        if direction not in self._config.directions:
            return Verdict(text)
        return self._verdict(text)

    def _verdict(self, text: str) -> Verdict:
        taken: list[_Span] = []
        findings: list[Finding] = []
        redactions: list[tuple[int, int, str]] = []
        # Earlier kinds claim their text first: a card is not also a phone number, and the
        # digits in a key or an address are not numbers of their own.
        for kind, find in _FINDERS.items():
            action: Action | None = getattr(self._config, kind)
            if action is None:
                continue
            spans = [span for span in find(text) if not _overlaps_any(span, taken)]
            if not spans:
                continue
            taken += spans
            findings.append(Finding(source=self.name, category=kind, action=action))
            if action is Action.REDACT:
                redactions += [(start, end, REDACTION_MARKERS[kind]) for start, end in spans]
        return Verdict(_redact(text, redactions), tuple(findings))


def _find_all(pattern: re.Pattern[str]) -> Callable[[str], Iterator[_Span]]:
    return lambda text: (match.span() for match in pattern.finditer(text))


def _find_phones(text: str) -> Iterator[_Span]:
    for match in _PHONE.finditer(text):
        digits = sum(char.isdigit() for char in match.group())
        # A national number with a trunk 0 has at least 9 digits; fewer is a date (01-02-2024).
        least = 9 if match.group().startswith("0") else 7
        if least <= digits <= 15:
            yield match.span()


def _find_cards(text: str) -> Iterator[_Span]:
    for chain in _DIGIT_CHAIN.finditer(text):
        groups = list(_DIGIT_GROUP.finditer(text, chain.start(), chain.end()))
        # Any run of whole groups may be the card (a number may stand next to it), and any
        # run that passes Luhn is redacted: overlapping runs merge into one span later.
        for first in range(len(groups)):
            digits = ""
            for group in groups[first : first + _MOST_CARD_GROUPS]:
                digits += group.group()
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and luhn_valid(digits):
                    yield groups[first].start(), group.end()


def luhn_valid(digits: str) -> bool:
    """Whether a string of ASCII digits passes the Luhn check of payment card numbers."""
    kept, doubled = digits[-1::-2], digits[-2::-2]
    total = sum(map(int, kept)) + sum(_LUHN_DOUBLED[int(digit)] for digit in doubled)
    return total % 10 == 0


_LUHN_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # 2 * d, its digits summed


_FINDERS: dict[str, Callable[[str], Iterator[_Span]]] = {
    "secret": _find_all(_SECRET),
    "email": _find_all(_EMAIL),
    "card": _find_cards,
    "phone": _find_phones,
}


def scrub(text: str) -> str:
    """`text` with every kind of personal data replaced by its marker, e.g. for stored excerpts."""
    return _SCRUBBER._verdict(text).text


_SCRUBBER = PiiRedactor()  # the default configuration redacts every kind


def _overlaps_any(span: _Span, others: Iterable[_Span]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in others)


def _redact(text: str, replacements: Iterable[tuple[int, int, str]]) -> str:
    """`text` with each (start, end, marker) span replaced; overlapping spans share one marker."""
    parts: list[str] = []
    position = 0
    for start, end, marker in sorted(replacements):
        if start >= position:
            parts += (text[position:start], marker)
        position = max(position, end)
    parts.append(text[position:])
    return "".join(parts)


class RuleConfig(BaseModel):
    """One rule of a moderation policy: words, phrases or patterns and what to do on a match.

    Attributes:
        name: The rule's name, reported as the finding's category.
        keywords: Words or phrases, matched case-insensitively as whole words; any run of
            whitespace in the text matches the whitespace inside a phrase.
        patterns: Python regular expressions, matched case-insensitively.
        keywords_file: A UTF-8 file of more keywords, one a line; blank lines and lines
            starting with `#` are skipped. A relative path is relative to the policy's folder.
        action: What a match asks for.
        directions: The directions the rule applies to.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    keywords: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    keywords_file: Path | None = None
    action: Action = Action.BLOCK
    directions: tuple[Direction, ...] = BOTH_DIRECTIONS

    @model_validator(mode="after")
    def _check(self) -> RuleConfig:
        if not (self.keywords or self.patterns or self.keywords_file):
            raise ValueError(f"rule {self.name!r} has no keywords, patterns or keywords_file")
        if any(not keyword.strip() for keyword in self.keywords):
            raise ValueError(f"rule {self.name!r} has an empty keyword")
        for pattern in self.patterns:
            _compile_pattern(self.name, pattern)
        return self


def _compile_pattern(rule: str, pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"rule {rule!r}: invalid pattern {pattern!r}: {exc}") from None


_Trie = dict[str, "_Trie"]  # escaped token -> what may follow; "" marks a keyword's end


def _keywords_pattern(keywords: Iterable[str]) -> re.Pattern[str]:
    # One alternation shaped as a prefix tree: a flat list of N keywords costs N attempts at
    # every word of the text (~4 ms for 1,000 keywords on 2,000 characters), the tree a few.
    tree: _Trie = {}
    for keyword in keywords:
        node = tree
        for part in re.split(r"(\s+)", keyword.strip()):
            for token in [r"\s+"] if part.isspace() else map(re.escape, part):
                node = node.setdefault(token, {})
        node[""] = {}
    # Lookarounds rather than \b, which would fail next to a keyword's own punctuation (c++).
    return re.compile(rf"(?<!\w){_alternation(tree)}(?!\w)", re.IGNORECASE)


def _alternation(node: _Trie) -> str:
    branches = []
    for token, rest in node.items():
        if not token:
            continue
        chain = [token]
        # A loop, not recursion, along unbranched stretches: a keyword may be long.
        while len(rest) == 1 and "" not in rest:
            ((token, rest),) = rest.items()
            chain.append(token)
        branches.append("".join(chain) + _alternation(rest))
    if not branches:
        return ""
    if len(branches) == 1 and "" not in node:
        return branches[0]
    # A greedy `?` tries the longer keyword first: of "bad" and "bad word", the phrase wins.
    return f"(?:{'|'.join(branches)}){'?' if '' in node else ''}"


def _read_keywords(rule: str, path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"rule {rule!r}: cannot read keywords file {path}: {exc}") from None
    return [line for line in map(str.strip, lines) if line and not line.startswith("#")]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run: its keywords as one alternation, then its own patterns."""

    name: str
    action: Action
    directions: tuple[Direction, ...]
    regexes: tuple[re.Pattern[str], ...]

    @classmethod
    def from_config(cls, rule: RuleConfig, *, base_dir: Path) -> CompiledRule:
        """Compile `rule`, reading its keywords file (relative to `base_dir`).

        Raises:
            ValueError: The keywords file cannot be read, or the rule has nothing to match.
        """
        keywords = list(rule.keywords)
        if rule.keywords_file is not None:
            path = base_dir / rule.keywords_file
            keywords += _read_keywords(rule.name, path)
            if not (keywords or rule.patterns):
                raise ValueError(f"rule {rule.name!r}: keywords file {path} has no keywords")
        regexes = [_compile_pattern(rule.name, pattern) for pattern in rule.patterns]
        if keywords:
            regexes.insert(0, _keywords_pattern(keywords))
        return cls(rule.name, rule.action, rule.directions, tuple(regexes))


class KeywordRules:
    """The policy's keyword and pattern rules (moderator "rules").

    One finding per rule that matched, its category the rule's name; a REDACT rule's matches
    are replaced by RULE_MARKER.
    """

    name: str = "rules"

    def __init__(self, rules: Sequence[CompiledRule]) -> None:
        self._rules = tuple(rules)

    @classmethod
    def from_config(cls, rules: Sequence[RuleConfig], *, base_dir: Path) -> KeywordRules:
        """The moderator for `rules`; relative keywords files are read from `base_dir`.

        Raises:
            ValueError: A keywords file cannot be read or holds no keywords.
        """
        return cls([CompiledRule.from_config(rule, base_dir=base_dir) for rule in rules])

    async def check(self, text: str, *, direction: Direction) -> Verdict:
        """The verdict on `text`; see the class docstring."""
        findings: list[Finding] = []
        redactions: list[tuple[int, int, str]] = []
        for rule in self._rules:
            if direction not in rule.directions:
                continue
            # An empty match (a pattern like `x*`) has nothing to redact or to block.
            spans = [
                match.span()
                for regex in rule.regexes
                for match in regex.finditer(text)
                if match.end() > match.start()
            ]
            if not spans:
                continue
            findings.append(Finding(source=self.name, category=rule.name, action=rule.action))
            if rule.action is Action.REDACT:
                redactions += [(start, end, RULE_MARKER) for start, end in spans]
        return Verdict(_redact(text, redactions), tuple(findings))
