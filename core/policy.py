"""Who may use the bot, and how much: access lists, admins, per-user rate limits and budgets.

Access lists come from settings and from the database (admins edit the latter with commands);
the database's are cached for a few seconds, so checking them costs no round trip per message.
Limits are counted in the database, so several processes sharing one PostgreSQL database
share them too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from core import wording
from core.events import Inbound
from core.storage.base import AccessRule, Admission, ChannelSettings, LimitCounts, SessionStore

KINDS = ("user", "channel", "workspace")

# How long the database's access rules are trusted before they are read again; a change made
# through another process takes at most this long to apply here (changes here apply at once).
ACCESS_CACHE_SECONDS = 10.0


def parse_entries(entries: Iterable[str], *, kind: str, list_: str) -> list[AccessRule]:
    """Rules from setting entries: `ID` (any platform) or `platform:ID`."""
    rules = []
    for entry in entries:
        platform, _, value = entry.rpartition(":")
        rules.append(AccessRule(platform=platform, kind=kind, value=value, list=list_))
    return rules


def _subject(inbound: Inbound, kind: str) -> str:
    key = inbound.key
    return {"user": inbound.user_id, "channel": key.channel, "workspace": key.workspace}[kind]


def _applies(rule: AccessRule, platform: str) -> bool:
    return rule.platform in ("", platform)


class AccessControl:
    """Allow and block lists of users, channels and workspaces, and the admins.

    A blocked user, channel or workspace is refused. When an allowlist of a kind has entries
    (for this platform), only what it lists is let in. Admins are always let in, so they can
    repair the lists from a chat.
    """

    def __init__(
        self,
        *,
        store: SessionStore,
        configured: Sequence[AccessRule] = (),
        admins: Sequence[AccessRule] = (),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._configured = list(configured)
        self._admins = list(admins)
        self._monotonic = monotonic
        self._stored: list[AccessRule] = []
        self._read_at: float | None = None

    @property
    def has_admins(self) -> bool:
        return bool(self._admins)

    def is_admin(self, inbound: Inbound) -> bool:
        """Named in PARLEY_ADMINS (only settings make admins: a chat cannot promote anyone)."""
        platform = inbound.key.platform
        return any(
            _applies(rule, platform) and rule.value == inbound.user_id for rule in self._admins
        )

    async def rules(self) -> list[AccessRule]:
        """The configured rules and the database's (cached for ACCESS_CACHE_SECONDS)."""
        now = self._monotonic()
        if self._read_at is None or now - self._read_at >= ACCESS_CACHE_SECONDS:
            self._stored = list(await self._store.access_rules())
            self._read_at = now
        return self._configured + self._stored

    def forget_cache(self) -> None:
        """Read the database's rules again at the next message (after a change here)."""
        self._read_at = None

    async def allows(self, inbound: Inbound) -> bool:
        if self.is_admin(inbound):
            return True
        platform = inbound.key.platform
        rules = [rule for rule in await self.rules() if _applies(rule, platform)]
        for kind in KINDS:
            subject = _subject(inbound, kind)
            of_kind = [rule for rule in rules if rule.kind == kind]
            if any(r.list == "block" and r.value == subject for r in of_kind):
                return False
            allowed = [r.value for r in of_kind if r.list == "allow"]
            if allowed and subject not in allowed:
                return False
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """Per user; 0 means no limit. A channel's settings override each one."""

    requests_per_minute: int = 0
    tokens_per_day: int = 0

    def for_channel(self, channel: ChannelSettings) -> Limits:
        """These limits with the channel's overrides applied."""
        rpm, tokens = channel.user_rpm, channel.user_tokens_per_day
        return Limits(
            requests_per_minute=self.requests_per_minute if rpm is None else rpm,
            tokens_per_day=self.tokens_per_day if tokens is None else tokens,
        )


class RateLimiter:
    """Admits a user's request or says, politely, when they can try again."""

    def __init__(self, *, limits: Limits) -> None:
        self.limits = limits

    def admission(self, now: datetime) -> Admission:
        """The check of one message arriving `now`, for the store to run as it accepts it."""
        return Admission(now=now, refuse=lambda counts: self.refusal(counts, now))

    def refusal(self, counts: LimitCounts, now: datetime) -> str | None:
        """What to tell the user when these counts are over a limit; None when they are not."""
        limits = self.limits.for_channel(counts.channel)
        over = _over(limits, counts)
        if over == "rate":
            assert counts.oldest_request is not None
            wait = counts.oldest_request + timedelta(minutes=1) - now
            return wording.RATE_LIMITED.format(
                limit=limits.requests_per_minute, wait=describe_wait(wait)
            )
        if over == "budget":
            midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
            wait = midnight + timedelta(days=1) - now
            return wording.BUDGET_USED.format(limit=limits.tokens_per_day, wait=describe_wait(wait))
        return None


def _over(limits: Limits, counts: LimitCounts) -> str | None:
    if limits.requests_per_minute and counts.requests >= limits.requests_per_minute:
        return "rate"
    if limits.tokens_per_day and counts.tokens_today >= limits.tokens_per_day:
        return "budget"
    return None


def describe_wait(wait: timedelta) -> str:
    """ "in 35 seconds", "in 2 hours 5 minutes": rounded up, so trying then works."""
    seconds = max(1, math.ceil(wait.total_seconds()))
    if seconds < 60:
        return f"in {seconds} second{'s' if seconds != 1 else ''}"
    minutes = math.ceil(seconds / 60)
    hours, minutes = divmod(minutes, 60)
    parts = []
    if hours:
        parts.append(f"{hours} hour{'s' if hours != 1 else ''}")
    if minutes:
        parts.append(f"{minutes} minute{'s' if minutes != 1 else ''}")
    return "in " + " ".join(parts)
