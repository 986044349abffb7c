"""The context window: which stored messages the model sees, within a token budget.

The window is built newest-first from stored token counts, a page at a time, so its cost
depends on the window's size and never on the length of the conversation's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from core.storage.base import SessionStore, StoredMessage
from core.tokens import MESSAGE_OVERHEAD, TokenCounter
from core.wording import TRUNCATED_MARKER

DEFAULT_CONTEXT_TOKENS = 8192

# Context sizes by model-name prefix; the first match wins, so longer prefixes come first.
CONTEXT_SIZES: tuple[tuple[str, int], ...] = (
    ("gpt-4o", 128_000),
    ("chatgpt-4o", 128_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-4.5", 128_000),
    ("gpt-4-turbo", 128_000),
    ("gpt-4-32k", 32_768),
    ("gpt-4", 8_192),
    ("gpt-3.5-turbo", 16_385),
    ("gpt-5", 400_000),
    ("o1-mini", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("llama-3", 131_072),
    ("llama3", 131_072),
    ("mistral", 32_768),
    ("qwen2.5", 32_768),
    ("gemma", 8_192),
    ("smollm2", 2_048),
)

PAGE_SIZE = 64


def context_size(model: str, override: int | None = None) -> int:
    """Tokens the model accepts in one request: the override, the table, or a safe default."""
    if override is not None:
        return override
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, size in CONTEXT_SIZES:
        if name.startswith(prefix):
            return size
    return DEFAULT_CONTEXT_TOKENS


@dataclass(frozen=True, slots=True)
class Window:
    """Messages for the model, oldest first.

    Attributes:
        messages: The messages in the window, oldest first.
        tokens: Their stored token counts, summed (after any truncation).
        dropped: Older messages exist that did not fit.
        oldest_id: Id of the oldest message in the window (None when empty).
    """

    messages: list[StoredMessage]
    tokens: int
    dropped: bool
    oldest_id: int | None


async def build_window(
    store: SessionStore,
    *,
    conversation_id: int,
    after_id: int,
    budget: int,
    counter: TokenCounter,
) -> Window:
    """Newest whole turns that fit in `budget` tokens; the newest turn always goes in.

    A turn is a user message and everything after it up to the next user message (the reply,
    tool calls and their results), so a tool call is never separated from its result. When the
    newest turn alone is too large, its largest message is truncated with a marker.
    """
    chosen: list[StoredMessage] = []  # newest first
    used = 0
    pending: list[StoredMessage] = []  # the turn being gathered, newest first
    before_id: int | None = None
    while True:
        page = await store.recent_messages(
            conversation_id=conversation_id, after_id=after_id, before_id=before_id, limit=PAGE_SIZE
        )
        for message in page:
            pending.append(message)
            if message.role != "user":
                continue
            turn_tokens = sum(m.token_count for m in pending)
            if not chosen:
                pending, turn_tokens = _fit(pending, budget, counter)
            elif used + turn_tokens > budget:
                return _window(chosen, used, dropped=True)
            chosen.extend(pending)
            used += turn_tokens
            pending = []
        if len(page) < PAGE_SIZE:
            break
        before_id = page[-1].id
    # Messages older than the oldest user message (e.g. a greeting) go in if they fit.
    leftover = sum(m.token_count for m in pending)
    if pending and used + leftover <= budget:
        chosen.extend(pending)
        used += leftover
        pending = []
    return _window(chosen, used, dropped=bool(pending))


def _window(newest_first: list[StoredMessage], tokens: int, *, dropped: bool) -> Window:
    messages = newest_first[::-1]
    return Window(
        messages=messages,
        tokens=tokens,
        dropped=dropped,
        oldest_id=messages[0].id if messages else None,
    )


def _fit(
    turn: Sequence[StoredMessage], budget: int, counter: TokenCounter
) -> tuple[list[StoredMessage], int]:
    """Shrink the largest message of a turn until the turn fits (only needed for huge input)."""
    messages = list(turn)
    total = sum(m.token_count for m in messages)
    if total <= budget:
        return messages, total
    largest = max(range(len(messages)), key=lambda i: messages[i].token_count)
    big = messages[largest]
    others = total - big.token_count
    marker = counter.count(TRUNCATED_MARKER)
    room = max(budget - others - MESSAGE_OVERHEAD - marker, 0)
    content = counter.truncate(big.content, room) + TRUNCATED_MARKER
    tokens = counter.count(content) + MESSAGE_OVERHEAD
    messages[largest] = replace(big, content=content, token_count=tokens)
    return messages, others + tokens
