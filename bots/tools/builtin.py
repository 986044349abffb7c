"""The shipped tools. None of them reaches the internet or the file system."""

from __future__ import annotations

import difflib
import functools
import random
import zoneinfo

from bots.tools.calculator import evaluate
from core.tools import ToolContext, tool

SEARCH_LIMIT = 20
SNIPPET_CHARS = 300
RANDOM_SPAN = 10**18  # keeps the numbers (and their text) small


@tool
def current_time(timezone: str = "UTC", *, context: ToolContext) -> str:
    """Tell the current date, time and weekday in a time zone.

    Args:
        timezone: An IANA time zone name, such as "Europe/Paris", "America/New_York" or "UTC".
    """
    zone = _zone(timezone)
    local = context.now.astimezone(zone)
    offset = local.strftime("%z")  # "+0900"
    return (
        f"{local:%A %Y-%m-%d %H:%M:%S} in {zone.key} "
        f"(UTC{offset[:3]}:{offset[3:]}{', daylight saving time' if local.dst() else ''})"
    )


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        pass
    # Only on a miss, since listing the zones reads the whole tz database.
    by_lower = {key.lower(): key for key in _all_zones()}
    if name.lower() in by_lower:
        return zoneinfo.ZoneInfo(by_lower[name.lower()])
    close = difflib.get_close_matches(name, _all_zones(), n=3)
    suggestion = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris', "
        f"'America/New_York' or 'UTC'{suggestion}"
    )


@functools.cache
def _all_zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


@tool
def calculate(expression: str) -> str:
    """Compute an arithmetic expression exactly; use it instead of doing arithmetic yourself.

    Supports numbers, + - * / // % ** and parentheses, for example "(1.5 + 2) * 3 / 7".

    Args:
        expression: The expression, in Python notation (** for powers).
    """
    return evaluate(expression)


@tool
async def search_conversation(query: str, limit: int = 5, *, context: ToolContext) -> str:
    """Find earlier messages of this conversation that mention something.

    Use it when the user refers to something said earlier that you no longer see.

    Args:
        query: Words to look for.
        limit: How many messages to return, newest first (1 to 20).
    """
    if not query.strip():
        raise ValueError("the query is empty; give a word or phrase to look for")
    found = await context.store.search_messages(
        conversation_id=context.conversation_id,
        query=query,
        limit=min(max(limit, 1), SEARCH_LIMIT),
    )
    if not found:
        return f"No earlier message in this conversation matches {query!r}."
    lines = [f"{len(found)} earlier message(s) matching {query!r}, newest first:"]
    for message in found:
        who = f"{message.role} {message.author_name}" if message.author_name else message.role
        lines.append(f"#{message.id} {who}: {_shorten(message.content)}")
    return "\n".join(lines)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else f"{flat[: SNIPPET_CHARS - 1]}…"


_random = random.SystemRandom()


@tool
def random_number(minimum: int = 1, maximum: int = 100) -> str:
    """Pick a random whole number between two bounds, both included (a die, a coin, a draw).

    Args:
        minimum: The smallest possible number.
        maximum: The largest possible number.
    """
    if minimum > maximum:
        raise ValueError(f"minimum ({minimum}) is larger than maximum ({maximum})")
    if maximum - minimum > RANDOM_SPAN:
        raise ValueError(f"the range is too wide; keep maximum - minimum under {RANDOM_SPAN}")
    return str(_random.randint(minimum, maximum))


@tool
async def search_knowledge(query: str, limit: int = 5, *, context: ToolContext) -> str:
    """Search the knowledge bases of this conversation (the team's own documents).

    Use it when the question needs facts from those documents that the passages you were
    given do not hold. Cite what you use by its source.

    Args:
        query: A question or the words to look for.
        limit: How many passages to return, best first (1 to 10).
    """
    if context.knowledge is None:
        raise ValueError("no knowledge base is attached to this conversation")
    if not query.strip():
        raise ValueError("the query is empty; give a question or words to look for")
    hits = await context.knowledge(query, min(max(limit, 1), 10))
    if not hits:
        return f"Nothing in the knowledge bases matches {query!r}."
    return "\n\n".join(f"[{hit.cited}] ({hit.source})\n{hit.text}" for hit in hits)
