"""Shared by the chat adapters: splitting long Markdown replies and streaming them as edits.

The model writes Markdown; each platform has a length limit and its own markup, produced by
a platform-specific `render(markdown) -> str`. `split_markdown` cuts the Markdown into parts
that fit once rendered, and `StreamingReply` shows a growing reply as a placeholder message
that is edited (throttled, because platforms rate-limit edits) and continued in new messages
when it outgrows one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from bisect import bisect_left, bisect_right
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol, TypeVar

from core.events import Accepted, Delta, ReplyEvent, ToolFinished, ToolStarted
from core.observe import delivery_retried
from core.scheduler import DeliveryFailed, MessageGone

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRY_WAIT = 30.0
"""Seconds: the longest a `RateLimited` is waited out, whatever the platform asks for."""
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 15.0
"""Seconds between attempts at the final text while the platform fails (doubling)."""

# A fence line, indented or not (models indent fences inside list items); whether it opens
# or closes a block is decided in _find_fences.
_FENCE_LINE = re.compile(r"^([ \t]*)(`{3,}|~{3,})(.*)$", re.MULTILINE)
_BLANK_LINE = re.compile(r"\n[ \t\r]*\n")
_NEWLINE = re.compile(r"\n")
# Closing quotes, brackets and emphasis may follow the full stop; CJK needs no space after.
_SENTENCE_END = re.compile(r"[.!?\u2026][\"'\u201d\u2019)\]*_`]*(?=[ \t])|[\u3002\uff01\uff1f]")
_SPACE = re.compile(r"[ \t]+")
_LIST_NUMBER = re.compile(r"[ \t]*\d+[.)]")
# Inline code, bold, links and images: single-line only, which is how models write them.
_INLINE_SPAN = re.compile(r"`[^`\n]+`|\*\*[^\n]+?\*\*|__[^\n]+?__|!?\[[^\]\n]*\]\([^)\s]*\)")


@dataclass(frozen=True, slots=True)
class _Fence:
    """A fenced code block; for one left open, `close_start == close_end == len(text)`."""

    indent: str  # of the opening line
    open_start: int  # where the fence characters of the opening line start
    open_end: int  # where the opening line ends, trailing whitespace excluded
    close_start: int  # where the closing line starts, indentation included
    close_end: int
    opener: str  # the opening line without indentation, info string included
    marks: str  # the fence characters


class _Splitter:
    """One text's fences and candidate cut points, found once, then a greedy cut per part."""

    def __init__(self, text: str, limit: int, measure: Callable[[str], int]) -> None:
        self.text = text
        self.limit = limit
        self.measure = measure
        self.fences = _find_fences(text)
        self.fence_starts = [f.open_start for f in self.fences]
        spans = [(m.start(), m.end()) for m in _INLINE_SPAN.finditer(text)]
        self.span_starts = [start for start, _ in spans]
        self.span_ends = [end for _, end in spans]
        # Before an opening fence line and after a closing one: as good as a blank line.
        block_edges = [f.open_start for f in self.fences if f.open_start > 0]
        block_edges += [f.close_end for f in self.fences if f.close_end < len(text)]
        spaces = [m.start() for m in _SPACE.finditer(text)]
        # Where a part may end (before its trailing whitespace is dropped), by kind, best
        # first, each with the test a position must pass to count as that kind.
        self.preferences: list[tuple[list[int], Callable[[int], bool]]] = [
            (sorted([m.start() for m in _BLANK_LINE.finditer(text)] + block_edges), self._prose),
            ([m.start() for m in _NEWLINE.finditer(text)], lambda p: True),
            ([m.end() for m in _SENTENCE_END.finditer(text)], self._sentence),
            (spaces, lambda p: not self._in_span(p)),
            (spaces, self._in_span),
        ]

    def parts(self) -> list[str]:
        text, parts = self.text, []
        start = self._next_start(0)
        while start < len(text):
            fit = self._longest_fit(start)
            if fit == len(text):
                parts.append(self._part(start, fit))
                break
            cut = self._best_cut(start, fit)
            parts.append(self._part(start, cut))
            start = self._next_start(cut)
        return parts

    def _longest_fit(self, start: int) -> int:
        """The furthest cut point whose part fits (`start` if none): gallop, then bisect."""
        fits, span = start, self.limit
        while True:
            too_long = min(len(self.text), start + span)
            if not self._fits(start, too_long):
                break
            if too_long == len(self.text):
                return too_long
            fits, span = too_long, span * 2
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if self._fits(start, middle):
                fits = middle
            else:
                too_long = middle
        return fits

    def _best_cut(self, start: int, fit: int) -> int:
        for positions, accept in self.preferences:
            first, last = bisect_right(positions, start), bisect_right(positions, fit)
            for cut in reversed(positions[first:last]):
                if accept(cut) and self._clean(start, cut) and self._fits(start, cut):
                    return cut
        for cut in range(fit, start, -1):
            if self._clean(start, cut) and self._fits(start, cut):
                return cut
        # Not even one character fits beside the fence lines: overflow rather than stall.
        return self._skip_space(start) + 1

    def _fits(self, start: int, cut: int) -> bool:
        return self.measure(self._part(start, cut)) <= self.limit

    def _part(self, start: int, cut: int) -> str:
        end = self._end(start, cut)
        part = self.text[start:end]
        reopened = self._fence_before(start)
        if reopened is not None and reopened.open_end < start <= reopened.close_start:
            part = reopened.opener + "\n" + part
        left_open = self._fence_before(end)
        if cut < len(self.text) and left_open is not None and end <= left_open.close_start:
            # Indented like the opening line as this part shows it (a part starts unindented).
            indent = left_open.indent if start < left_open.open_start else ""
            part += "\n" + indent + left_open.marks
        return part

    def _end(self, start: int, cut: int) -> int:
        end = cut
        while end > start and self.text[end - 1].isspace():
            end -= 1
        return end

    def _next_start(self, cut: int) -> int:
        """Skips the whitespace at a cut, except the indentation of a code line."""
        start = self._skip_space(cut)
        fence = self._fence_before(start)
        newline = self.text.rfind("\n", cut, start)
        if fence is not None and fence.open_end < start < fence.close_start and newline >= 0:
            return newline + 1
        return start

    def _skip_space(self, position: int) -> int:
        while position < len(self.text) and self.text[position].isspace():
            position += 1
        return position

    def _clean(self, start: int, cut: int) -> bool:
        """Neither side of the cut is empty, holds a piece of a fence line or an empty block."""
        end, after = self._end(start, cut), self._next_start(cut)
        ending, starting = self._fence_before(end), self._fence_before(after)
        ends_badly = ending is not None and (
            ending.open_start < end <= ending.open_end
            or ending.close_start < end < ending.close_end
        )
        starts_badly = starting is not None and (
            starting.open_start < after <= starting.open_end
            or starting.close_start <= after < starting.close_end
        )
        return end > start and not ends_badly and not starts_badly

    def _fence_before(self, position: int) -> _Fence | None:
        """The last fence opened strictly before `position`."""
        i = bisect_left(self.fence_starts, position) - 1
        return self.fences[i] if i >= 0 else None

    def _prose(self, cut: int) -> bool:
        fence = self._fence_before(cut)
        return fence is None or not fence.open_end <= cut < fence.close_start

    def _sentence(self, cut: int) -> bool:
        line_start = self.text.rfind("\n", 0, cut) + 1
        return (
            self._prose(cut)
            and not self._in_span(cut)
            and not _LIST_NUMBER.fullmatch(self.text, line_start, cut)
        )

    def _in_span(self, cut: int) -> bool:
        i = bisect_left(self.span_starts, cut) - 1
        return i >= 0 and cut < self.span_ends[i]


def _find_fences(text: str) -> list[_Fence]:
    fences: list[_Fence] = []
    opening: re.Match[str] | None = None
    for line in _FENCE_LINE.finditer(text):
        marks, rest = line.group(2, 3)
        if opening is None:
            if not (marks[0] == "`" and "`" in rest):  # backticks in an info string: not a fence
                opening = line
            continue
        opened = opening.group(2)
        if marks[0] == opened[0] and len(marks) >= len(opened) and not rest.strip():
            fences.append(_fence(opening, line.start(), line.start() + len(line.group().rstrip())))
            opening = None
    if opening is not None:
        fences.append(_fence(opening, len(text), len(text)))
    return fences


def _fence(opening: re.Match[str], close_start: int, close_end: int) -> _Fence:
    opener = opening.group().strip()
    return _Fence(
        indent=opening.group(1),
        open_start=opening.start(2),
        open_end=opening.start(2) + len(opener),
        close_start=close_start,
        close_end=close_end,
        opener=opener,
        marks=opening.group(2),
    )


def split_markdown(text: str, limit: int, *, measure: Callable[[str], int] = len) -> list[str]:
    """Splits Markdown into parts that each measure at most `limit`.

    Cuts are chosen in the Markdown but measured as the caller says, typically
    `lambda part: len(render(part))`, since escaping and markup conversion change the length.
    Each part ends at the furthest boundary of the best kind that fits, in this order: a
    blank line or the edge of a fenced code block, a line break, the end of a sentence, a
    space outside inline code, bold and links, any space, and only then anywhere. A part that
    ends inside a fenced code block gets a closing fence line, and the next part reopens the
    block with the same opening line (info string included, indentation dropped), so every
    part is self-contained; the added lines count towards the limit. Whitespace at a cut is
    dropped, except the indentation of a code line.

    Args:
        text: Markdown, possibly still growing (a code block left open stays open in the last
            part, as in the text).
        limit: The most `measure` may return for a part.
        measure: The length of a part as the platform counts it. Called about log2(limit)
            times per part, on strings of about `limit` characters.

    Returns:
        `[text]` unchanged when it fits, `[]` when it is blank, otherwise the parts, none
        empty. A part exceeds `limit` only when not even one character fits beside the fence
        lines it needs.

    Raises:
        ValueError: `limit` is below 1.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if not text.strip():
        return []
    if measure(text) <= limit:
        return [text]
    return _Splitter(text, limit, measure).parts()


class RateLimited(Exception):
    """Raised by a sink when the platform says slow down.

    Attributes:
        retry_after: Seconds to wait before the next call, as the platform asked.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited; retry after {retry_after:g} s")
        self.retry_after = retry_after


class MessageSink(Protocol):
    """One conversation on a platform, as `StreamingReply` uses it. Text arrives rendered."""

    async def post(self, text: str) -> str:
        """Posts a new message (in the thread or chat) and returns its id."""
        ...

    async def edit(self, message_id: str, text: str) -> None:
        """Replaces the text of a message posted before."""
        ...

    async def delete(self, message_id: str) -> None:
        """Deletes a message posted before."""
        ...


class StreamingReply:
    """A reply shown while it is written: a placeholder, then throttled edits and new messages.

    `update` is cheap and can be called for every token: it only records the text, and a
    background task makes at most one platform call per `interval`, always for the newest
    text, and only where a message's rendered text changed. Streaming calls are best effort:
    a `RateLimited` is waited out, other errors are logged. `finish` (or `replace`) then
    delivers the final text for sure.

    Typical use::

        reply = StreamingReply(sink, render=to_mrkdwn, limit=3900)
        await reply.start()
        try:
            text = ""
            async for delta in deltas:
                text += delta
                reply.update(text)
            await reply.finish(text)
        finally:
            await reply.aclose()
    """

    def __init__(
        self,
        sink: MessageSink,
        *,
        render: Callable[[str], str],
        limit: int,
        measure: Callable[[str], int] = len,
        interval: float = 1.0,
        placeholder: str | None = "…",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_attempts: int | None = 5,
        existing: Sequence[str] = (),
        first_post: Callable[[str], str | None] | None = None,
        on_posted: Callable[[list[str]], Awaitable[None]] | None = None,
        hold: float = 0.0,
    ) -> None:
        """Prepares a reply; nothing is posted before `start`.

        Args:
            sink: Where the messages go.
            render: Markdown to the platform's markup.
            limit: The longest rendered text one message may hold, as `measure` counts.
            measure: The length the platform counts in rendered text (Telegram counts the
                text without its HTML tags, in UTF-16 units).
            interval: Seconds between two platform calls (edits, posts and deletes alike).
            placeholder: Shown, as is, until the first text arrives; None posts nothing
                until then (Telegram shows "typing…" instead).
            clock: Seconds, monotonic; injectable for tests.
            sleep: Waits that many seconds; injectable for tests.
            max_attempts: Calls per message when delivering the final text; None retries
                every failure but `DeliveryFailed` (with backoff) until it lands.
            existing: Ids of messages posted for this reply before (by a process that
                died): they are edited into the reply, not left behind.
            on_posted: Awaited with all the ids each time a message is posted, so they can
                be stored before anything else happens to them.
            first_post: While nothing is posted, what of the streamed text to post first
                (None: wait for more); `finish` posts the final text whatever it is.
            hold: Seconds after `begin` before the first streamed call (the placeholder,
                or the first words): a reply finished sooner goes out whole, in one call.

        Raises:
            ValueError: `max_attempts` is below 1.
        """
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts}")
        self._sink = sink
        self._render = render
        self._measure = measure
        self._limit = limit
        self._interval = interval
        self._placeholder = placeholder
        self._clock = clock
        self._sleep = sleep
        self._max_attempts = max_attempts
        self._ids: list[str] = list(existing)
        # The rendered text of each message, as last sent; None: unknown (posted before a
        # crash), so the final delivery edits it whatever it shows.
        self._shown: list[str | None] = [None] * len(self._ids)
        self._on_posted = on_posted
        self._first_post = first_post
        self._hold = hold
        self._latest = ""
        self._last_call = -math.inf
        self._not_before = -math.inf  # set by a RateLimited, for every call after it
        self._wake = asyncio.Event()
        self._calling = asyncio.Lock()  # held by the background task during a platform call
        self._task: asyncio.Task[None] | None = None
        self._refused: DeliveryFailed | None = None  # for good, while streaming

    @property
    def message_ids(self) -> list[str]:
        """The ids of the messages showing the reply, in order."""
        return list(self._ids)

    async def start(self) -> None:
        """Posts the placeholder and starts applying updates.

        Raises:
            Exception: Whatever the sink raised; nothing was started.
        """
        if self._placeholder is not None and not self._ids:
            await self._post(self._placeholder, self._placeholder)
        self._task = asyncio.create_task(self._stream(), name="parley-streaming-reply")

    def begin(self) -> None:
        """`start` without waiting: the placeholder is posted by the background task, and a
        failure to post it is only logged (the final delivery posts what is missing)."""
        self._task = asyncio.create_task(
            self._stream(placeholder=True), name="parley-streaming-reply"
        )

    def update(self, markdown: str) -> None:
        """Records the whole text so far; the background task shows it when its turn comes."""
        if self._first_post is not None and not self._ids:
            head = self._first_post(markdown)
            if head is None:
                return
            markdown = head
        self._latest = markdown
        self._wake.set()

    async def finish(self, markdown: str) -> list[str]:
        """Stops streaming and delivers the final text.

        An in-flight streaming call is let finish. Every part whose rendered text differs
        from what its message shows is edited (or posted), messages beyond the last part are
        deleted, and a `RateLimited` is waited out up to `max_attempts` times per call.
        A blank text leaves no message at all.

        Returns:
            The ids of the messages holding the final parts.

        Raises:
            Exception: What the sink raised last for a call that did not go through.
        """
        await self._stop()
        if self._refused is not None:
            raise self._refused
        # The final text goes out at once, not an edit interval after the last streamed edit:
        # the pace keeps streaming edits few, and the answer complete is what the user waits
        # for. A platform that asks to wait (429) is still obeyed.
        self._last_call = -math.inf
        parts = self._rendered_parts(markdown)
        for i, text in enumerate(parts):
            if i == len(self._shown) or self._shown[i] != text:
                await self._show(i, text, attempts=self._max_attempts)
        while len(self._ids) > len(parts):
            # Gone already (deleted by someone, or by a call whose answer was lost): done.
            with contextlib.suppress(MessageGone):
                await self._call(partial(self._sink.delete, self._ids[-1]), self._max_attempts)
            del self._ids[-1], self._shown[-1]
        return list(self._ids)

    async def replace(self, markdown: str) -> list[str]:
        """Replaces everything shown with `markdown` (a retraction notice), for sure.

        Delivered as `finish` does: the first messages are edited to the new text and every
        message beyond it is deleted, so nothing of the withdrawn reply stays visible.

        Returns:
            The ids of the messages holding the new text.

        Raises:
            Exception: What the sink raised last for a call that did not go through.
        """
        return await self.finish(markdown)

    async def aclose(self) -> None:
        """Cancels the background task if it still runs; for the adapter's `finally:`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _stop(self) -> None:
        if self._task is not None:
            async with self._calling:  # cancelling now can only interrupt a wait, never a call
                self._task.cancel()
            await self.aclose()

    async def _stream(self, *, placeholder: bool = False) -> None:
        """One call per turn, each for the newest text, until there is nothing left to show.
        A refusal for good (a blocked bot, a deleted chat) ends it: no later call can land,
        and `finish` raises it instead of calling again."""
        try:
            if self._hold > 0:
                await self._sleep(self._hold)  # finish() cancels it: the reply goes out whole
            if placeholder and self._placeholder is not None and not self._ids:
                try:
                    async with self._calling:
                        await self._call(
                            partial(self._post, self._placeholder, self._placeholder), attempts=1
                        )
                except (DeliveryFailed, asyncio.CancelledError):
                    raise
                except Exception:
                    logger.warning("Posting the placeholder failed; carrying on", exc_info=True)
            while True:
                await self._wake.wait()
                await self._wait_for_turn()
                self._wake.clear()  # from here on, the text read below is the newest
                try:
                    async with self._calling:
                        more = await self._show_next(self._latest)
                except RateLimited:
                    more = True  # the next turn comes when the platform said
                except (DeliveryFailed, asyncio.CancelledError):
                    raise
                except Exception:
                    # Best effort: the next update, or finish(), tries again.
                    logger.warning("A streaming edit failed; carrying on", exc_info=True)
                    more = False
                if more:
                    self._wake.set()
        except DeliveryFailed as exc:
            logger.warning("The platform refused the reply (%s); not streaming it", exc)
            self._refused = exc

    async def _show_next(self, markdown: str) -> bool:
        """Makes the first call the text needs; False when everything is shown already."""
        for i, text in enumerate(self._rendered_parts(markdown)):
            if i == len(self._shown) or self._shown[i] != text:
                await self._show(i, text, attempts=1)
                return True
        return False

    async def _show(self, index: int, text: str, *, attempts: int | None) -> None:
        if index == len(self._ids):
            await self._call(partial(self._post, text, text), attempts)
            return
        try:
            await self._call(partial(self._sink.edit, self._ids[index], text), attempts)
        except MessageGone:
            # Someone deleted it (the placeholder, say): the answer must still be seen, so it
            # is posted anew, after whatever came in the meantime.
            logger.info("A message of the reply was deleted; posting it again")
            await self._call(partial(self._post, text, text, index=index), attempts)
            return
        self._shown[index] = text

    async def _post(self, rendered: str, shown: str, *, index: int | None = None) -> None:
        """Posts a message, as the next one of the reply or in place of message `index`."""
        posted = await self._sink.post(rendered)
        if index is None:
            self._ids.append(posted)
            self._shown.append(shown)
        else:
            self._ids[index], self._shown[index] = posted, shown
        if self._on_posted is not None:
            try:
                await self._on_posted(list(self._ids))
            except Exception:
                # The message stands; only a crash before the next record would orphan it.
                logger.warning("Recording a posted message failed", exc_info=True)

    async def _call(self, call: Callable[[], Awaitable[T]], attempts: int | None) -> T:
        attempt, backoff = 1, FIRST_BACKOFF
        while True:
            await self._wait_for_turn()
            self._last_call = self._clock()
            try:
                return await call()
            except RateLimited as exc:
                self._not_before = self._clock() + min(max(exc.retry_after, 0.0), MAX_RETRY_WAIT)
                if attempts is not None and attempt >= attempts:
                    raise
            except DeliveryFailed:
                raise
            except Exception as exc:
                if attempts is not None:
                    raise
                # Network errors, 5xx, bodies that are not JSON: the platform comes back.
                logger.warning("Delivering failed (%s); retrying in %.1f s", _brief(exc), backoff)
                self._not_before = self._clock() + backoff
                backoff = min(backoff * 2, MAX_BACKOFF)
            delivery_retried()
            attempt += 1

    async def _wait_for_turn(self) -> None:
        delay = max(self._last_call + self._interval, self._not_before) - self._clock()
        if delay > 0:
            await self._sleep(delay)

    def _rendered_parts(self, markdown: str) -> list[str]:
        parts = split_markdown(
            markdown, self._limit, measure=lambda p: self._measure(self._render(p))
        )
        return [self._render(part) for part in parts]


@dataclass(frozen=True)
class Rendering:
    """How a platform shows replies: its markup, message size, edit pace and placeholder."""

    render: Callable[[str], str]  # Markdown -> the platform's markup
    limit: int  # per message, as `measure` counts
    interval: float  # seconds between edits while the text streams
    placeholder: str | None = "…"  # posted when the turn starts; None: wait for text
    measure: Callable[[str], int] = len
    # Without a placeholder: the beginning of the streamed text worth a first message, or
    # None to wait for more (the first message is what a notification shows).
    first_post: Callable[[str], str | None] | None = None


class FinalOnly:
    """A reply that cannot be edited (an ephemeral answer): only the final text goes out."""

    edits_in_place = False  # sending it again would show it twice

    def __init__(self, reply: StreamingReply) -> None:
        self._reply = reply

    def show(self, event: ReplyEvent) -> None:
        return None  # no placeholder, no progress: each post would stay as a separate message

    async def deliver(self, markdown: str) -> None:
        await self._reply.finish(markdown)

    async def aclose(self) -> None:
        await self._reply.aclose()


class TurnReply:
    """A turn's reply on a chat platform (core.scheduler.ReplyView) through a StreamingReply.

    The placeholder goes up when the turn starts, text streams in with the running tool shown
    beneath it, and `deliver` replaces it all with the final text until that lands. Nothing
    here makes the turn wait: platform calls run in the StreamingReply's background task.
    `accepted` (Telegram's typing action) runs in a task of its own from `hold` seconds after
    the start until the first text: an answer quicker than that needs no sign of life.
    """

    edits_in_place = True

    def __init__(
        self,
        reply: StreamingReply,
        *,
        accepted: Callable[[], Awaitable[None]] | None = None,
        hold: float = 0.0,
    ) -> None:
        self._reply = reply
        self._accepted = accepted
        self._hold = hold
        self._side: asyncio.Task[None] | None = None
        self._text = ""
        self._status = ""

    def show(self, event: ReplyEvent) -> None:
        match event:
            case Accepted():
                self._reply.begin()
                if self._accepted is not None:
                    self._side = asyncio.create_task(self._after_hold(), name="parley-accepted")
            case Delta(text=piece):
                self._text += piece
                self._update()
            case ToolStarted(name=name):
                self._status = f"_using {name}…_"
                self._update()
            case ToolFinished():
                self._status = ""
                self._update()
            case _:
                pass  # the end: `deliver` shows it

    async def deliver(self, markdown: str) -> None:
        await self._stop_side()
        await self._reply.finish(markdown)

    async def aclose(self) -> None:
        await self._stop_side()
        await self._reply.aclose()

    async def _after_hold(self) -> None:
        assert self._accepted is not None
        await asyncio.sleep(self._hold)
        await self._accepted()

    def _update(self) -> None:
        self._reply.update(_with_status(self._text, self._status))
        if self._text:
            self._side_done()

    def _side_done(self) -> None:
        if self._side is not None:
            self._side.cancel()

    async def _stop_side(self) -> None:
        side, self._side = self._side, None
        if side is not None:
            side.cancel()
            await asyncio.wait([side])


async def show_once(reply: StreamingReply, markdown: str) -> None:
    """Posts a reply that no turn stands behind (a refusal at the door), for sure."""
    try:
        await reply.finish(markdown)
    finally:
        await reply.aclose()


def _brief(exc: BaseException) -> str:
    first = (str(exc).splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _with_status(text: str, status: str) -> str:
    if not status:
        return text
    return f"{text}\n\n{status}" if text else status
