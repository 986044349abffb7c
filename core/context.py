"""The context window: which stored messages the model sees, within a token budget.

The window is built newest-first from stored token counts, a page at a time, so its cost
depends on the window's size and never on the length of the conversation's history.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace

from core.storage.base import SessionStore, StoredMessage
from core.tokens import MESSAGE_OVERHEAD, TokenCounter, message_tokens
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
    ("gpt-5-chat", 128_000),
    ("gpt-5", 400_000),
    ("o1-mini", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("llama-3", 131_072),
    ("llama3", 131_072),
    ("mistral", 32_768),
    ("qwen2.5", 32_768),
    ("qwen3", 32_768),
    ("gemma-3", 32_768),
    ("gemma3", 32_768),
    ("gemma", 8_192),
    ("smollm2", 8_192),
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
        tokens: Their token counts (bounds, or exact counts when `exact`), summed, after
            any truncation.
        dropped: Older messages exist that did not fit.
        oldest_id: Id of the oldest message in the window (None when empty).
        exact: The counts are exact: by their stored bounds the messages did not all fit.
    """

    messages: list[StoredMessage]
    tokens: int
    dropped: bool
    oldest_id: int | None
    exact: bool = False


class WindowCache:
    """The last window of recently active conversations, newest message first.

    With it a turn reads only the messages stored since its conversation's previous turn
    instead of the whole window again (about 1,200 rows for a 128k-token model), so the cost
    of a turn stays flat as a conversation grows. It is safe across processes: a turn holds
    the conversation's lock and asks the database for every message newer than the cached
    ones, and a /reset (a new window start) discards the entry. Messages are never edited;
    whatever deletes them must call `forget`.
    """

    def __init__(self, max_conversations: int = 512) -> None:
        self._max = max_conversations
        self._entries: OrderedDict[int, _Cached] = OrderedDict()

    def get(self, conversation_id: int, after_id: int) -> _Cached | None:
        entry = self._entries.get(conversation_id)
        if entry is None or entry.after_id != after_id:
            return None
        self._entries.move_to_end(conversation_id)
        return entry

    def put(self, conversation_id: int, entry: _Cached) -> None:
        self._entries[conversation_id] = entry
        self._entries.move_to_end(conversation_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget(self, conversation_id: int) -> None:
        self._entries.pop(conversation_id, None)


@dataclass(frozen=True, slots=True)
class _Cached:
    after_id: int
    newest_first: list[StoredMessage]
    complete: bool  # no older message (after after_id) exists beyond these
    budget: int  # the budget these were chosen under


async def build_window(
    store: SessionStore,
    *,
    conversation_id: int,
    after_id: int,
    budget: int,
    counter: TokenCounter,
    cache: WindowCache | None = None,
    exact_budget: Callable[[], int] | None = None,
) -> Window:
    """Newest whole turns that fit in `budget` tokens; the newest turn always goes in.

    A turn is a user message and everything after it up to the next user message (the reply,
    tool calls and their results), so a tool call is never separated from its result. When the
    newest turn alone is too large, its largest message is truncated with a marker.

    Stored counts are upper bounds. The first time they do not fit, the messages are counted
    exactly (`Window.exact`) and `budget` becomes `exact_budget()`, the budget counted so.
    """
    chosen: list[StoredMessage] = []  # newest first, as stored
    fitted: list[StoredMessage] = []  # the newest turn, as sent (maybe truncated)
    used = 0
    pending: list[StoredMessage] = []  # the turn being gathered, newest first
    dropped = True
    exact = False

    def overflows(tokens: int) -> bool:
        """Whether `tokens` more do not fit; when by bounds they do not, the counts so far
        become exact first."""
        nonlocal exact, budget, chosen, pending, used
        if used + tokens <= budget or exact or not counter.loose_bounds:
            return used + tokens > budget
        exact = True
        if exact_budget is not None:
            budget = max(budget, exact_budget())
        chosen = [counted(m, counter) for m in chosen]
        pending = [counted(m, counter) for m in pending]
        used = sum(m.token_count for m in chosen)
        return used + sum(m.token_count for m in pending) > budget

    newest_first = _newest_first(store, conversation_id, after_id, lambda: budget, cache)
    async with aclosing(newest_first) as newest:
        async for message in newest:
            if message is None:  # older messages exist, and cannot fit
                break
            pending.append(counted(message, counter) if exact else message)
            if message.role != "user":
                continue
            if not chosen:
                turn_tokens = sum(m.token_count for m in pending)
                if overflows(turn_tokens):
                    fitted, turn_tokens = _fit(pending, budget, counter)
                else:
                    fitted, turn_tokens = list(pending), sum(m.token_count for m in pending)
            elif overflows(sum(m.token_count for m in pending)):
                # An older turn's images give way first: its words may still fit.
                lighter = [without_images(m) for m in pending]
                if lighter == pending or overflows(sum(m.token_count for m in lighter)):
                    break
                pending = lighter
                turn_tokens = sum(m.token_count for m in pending)
            else:
                turn_tokens = sum(m.token_count for m in pending)
            chosen.extend(pending)
            used += turn_tokens
            pending = []
        else:
            # History exhausted. Messages older than the oldest user message (a greeting, say)
            # go in if they fit.
            if not overflows(sum(m.token_count for m in pending)):
                chosen.extend(pending)
                used += sum(m.token_count for m in pending)
                pending = []
            dropped = bool(pending)
    if cache is not None:
        cache.put(conversation_id, _Cached(after_id, chosen, not dropped, budget))
    messages = [*fitted, *chosen[len(fitted) :]][::-1]
    return Window(
        messages=messages,
        tokens=used,
        dropped=dropped,
        oldest_id=messages[0].id if messages else None,
        exact=exact,
    )


def without_images(message: StoredMessage) -> StoredMessage:
    """The message with its images left out (the model gets `[image: name]`), and their
    tokens with them."""
    if not message.images or all(image.get("left_out") for image in message.images):
        return message
    kept = sum(int(image["tokens"]) for image in message.images if not image.get("left_out"))
    return replace(
        message,
        token_count=message.token_count - kept,
        images=[{**image, "left_out": True} for image in message.images],
    )


def counted(message: StoredMessage, counter: TokenCounter) -> StoredMessage:
    """The message with its exact count (the sum its stored bound bounds)."""
    if message.counted:
        return message
    name = message.author_name if message.role == "user" else ""
    tokens = message_tokens(counter, message.content, name, exact=True)
    if message.tool_calls:
        tokens += counter.count(json.dumps(message.tool_calls))
    if message.images:  # an estimate either way: the stored one
        tokens += sum(int(i["tokens"]) for i in message.images if not i.get("left_out"))
    return replace(message, token_count=tokens, counted=True)


async def _newest_first(
    store: SessionStore,
    conversation_id: int,
    after_id: int,
    budget: Callable[[], int],
    cache: WindowCache | None,
) -> AsyncGenerator[StoredMessage | None, None]:
    """The conversation's messages after `after_id`, newest first, read a page at a time.

    From the cache, a None after the known messages means: older ones exist but cannot fit.
    They did not fit last turn under a budget at least this large, and the newer messages
    since then only take more of it, so reading them would be wasted.
    """
    before_id: int | None = None
    entry = cache.get(conversation_id, after_id) if cache is not None else None
    if entry is not None:
        newest_known = entry.newest_first[0].id if entry.newest_first else after_id
        new = await store.recent_messages(
            conversation_id=conversation_id, after_id=newest_known, before_id=None, limit=PAGE_SIZE
        )
        if len(new) < PAGE_SIZE:  # else another process wrote a lot: read afresh
            known = [*new, *entry.newest_first]
            for message in known:
                yield message
            if entry.complete:
                return
            if budget() <= entry.budget:
                yield None
                return
            before_id = known[-1].id if known else None
    while True:
        page = await store.recent_messages(
            conversation_id=conversation_id, after_id=after_id, before_id=before_id, limit=PAGE_SIZE
        )
        for message in page:
            yield message
        if len(page) < PAGE_SIZE:
            return
        before_id = page[-1].id


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
    content = shorten(big.content, budget - others - MESSAGE_OVERHEAD, counter)
    tokens = counter.count(content) + MESSAGE_OVERHEAD
    messages[largest] = replace(big, content=content, token_count=tokens)
    return messages, others + tokens


def shorten(text: str, max_tokens: int, counter: TokenCounter, *, keep_from: str = "") -> str:
    """`text` cut to at most `max_tokens`, the cut marked.

    With `keep_from`, everything from its last occurrence on (a closing tag, say) is kept whole
    after the marker.
    """
    head, kept, tail = text.rpartition(keep_from) if keep_from else ("", "", "")
    if not kept:
        head, tail = text, ""
    end = TRUNCATED_MARKER + kept + tail
    return counter.truncate(head, max(max_tokens - counter.count(end), 0)) + end
