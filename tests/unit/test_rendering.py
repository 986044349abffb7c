"""Splitting Markdown for platform limits, and streaming a reply through throttled edits."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.rendering import RateLimited, StreamingReply, split_markdown

FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,}).*$", re.MULTILINE)


def render(markdown: str) -> str:
    """Escapes like Telegram HTML does: the rendered text is longer than the Markdown."""
    return markdown.replace("&", "&amp;")


def rendered_length(markdown: str) -> int:
    return len(render(markdown))


def expected_messages(markdown: str, limit: int) -> list[str]:
    return [render(part) for part in split_markdown(markdown, limit, measure=rendered_length)]


def fence_lines(markdown: str) -> list[str]:
    return FENCE_LINE.findall(markdown)


def assert_preserved(original: str, parts: list[str]) -> None:
    """Without fence lines, the parts are the text in order, apart from whitespace at cuts."""
    rest = FENCE_LINE.sub("", original)
    for part in parts:
        piece = FENCE_LINE.sub("", part).strip()
        assert rest.lstrip().startswith(piece), (piece, rest[:200])
        rest = rest.lstrip()[len(piece) :]
    assert not rest.strip()


def code_lines(markdown: str) -> list[str]:
    """The lines inside fenced code blocks, fences left out."""
    lines, inside = [], False
    for line in markdown.split("\n"):
        if FENCE_LINE.fullmatch(line):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def long_answer(size: int = 10_000) -> str:
    """A model-like answer: headings, prose with inline markup, and code blocks of all sizes."""
    blocks: list[str] = []
    step = 0
    while sum(len(block) + 2 for block in blocks) < size:
        step += 1
        blocks.append(f"## Step {step}")
        blocks.append(
            f"Step {step} explains **something important** with a [link](https://example.com/"
            f"{step}) and `inline code`. It keeps going for a while & then stops. " * 3
        )
        if step % 2 == 0:
            length = 12 if step % 4 == 0 else 60  # about 500 and 2,600 characters
            body = "\n".join(f"    total += values[{i}] & mask  # {i}" for i in range(length))
            blocks.append(f"```python\ndef step_{step}(values):\n    total = 0\n{body}\n```")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------
# split_markdown


def test_short_and_blank_texts() -> None:
    assert split_markdown("Hello *world*", 100) == ["Hello *world*"]
    assert split_markdown("  padded\n", 100) == ["  padded\n"]
    assert split_markdown("", 100) == []
    assert split_markdown(" \n\n \t", 100) == []
    with pytest.raises(ValueError):
        split_markdown("text", 0)


def test_a_paragraph_break_wins_over_later_lines_sentences_and_spaces() -> None:
    first = "A short first paragraph."
    second = "Its second has a line.\nAnd a sentence. And words, more words and more words."
    assert split_markdown(f"{first}\n\n{second}", 80) == [first, second]


def test_a_line_break_wins_over_later_sentences_and_spaces() -> None:
    text = "First line of text.\nSecond line. It has sentences. And words and words and words."
    assert split_markdown(text, 65) == [
        "First line of text.",
        "Second line. It has sentences. And words and words and words.",
    ]


def test_a_sentence_end_wins_over_later_spaces() -> None:
    text = "One sentence here. Two sentences here! Three is a much longer sentence that goes on."
    parts = split_markdown(text, 50)
    assert parts[0] == "One sentence here. Two sentences here!"
    assert parts[1] == "Three is a much longer sentence that goes on."


def test_a_numbered_list_marker_is_not_a_sentence_end() -> None:
    text = "Intro words here\n1. first item of the list and more words after it"
    assert split_markdown(text, 40)[0] == "Intro words here"


def test_words_are_kept_whole_and_only_a_long_word_is_cut_hard() -> None:
    assert split_markdown("alpha beta gamma delta epsilon zeta", 20) == [
        "alpha beta gamma",
        "delta epsilon zeta",
    ]
    word = "x" * 95
    assert split_markdown(f"{word} end", 40) == [word[:40], word[40:80], f"{word[80:]} end"]


def test_inline_code_bold_and_links_stay_whole_when_a_space_outside_exists() -> None:
    for span in ("`some inline code here`", "**some bold words here**", "[a link](https://x.y/z)"):
        text = f"Please look at {span} now"
        assert split_markdown(text, len(text) - 8) == ["Please look at", f"{span} now"]
    parts = split_markdown("`one two three four five six seven`", 20)  # no space outside
    assert all(len(part) <= 20 for part in parts)


def test_a_long_code_block_is_closed_and_reopened_with_its_info_string() -> None:
    code = "\n".join(f"    print('line {i}')" for i in range(40))
    text = f"Here is the code:\n\n```python\n{code}\n```\n\nThat was it."
    parts = split_markdown(text, 200)
    assert len(parts) > 3
    assert parts[0] == "Here is the code:"
    for part in parts[1:]:
        assert part.startswith("```python\n    print(")
        assert len(part) <= 200
    assert all(part.endswith("')\n```") for part in parts[1:-1])
    assert parts[-1].endswith("')\n```\n\nThat was it.")
    assert code_lines("\n".join(parts)) == code.split("\n")  # indentation kept at every cut


def test_tilde_fences_and_blank_code_lines_are_handled() -> None:
    code = "\n\n".join(f"step {i}" for i in range(30))
    parts = split_markdown(f"~~~\n{code}\n~~~", 60)
    for part in parts:
        assert part.startswith("~~~\n") and part.endswith("\n~~~")
        assert not part.startswith("~~~\n\n") and not part.endswith("\n\n~~~")
        assert len(part) <= 60
    assert [line for line in code_lines("\n".join(parts)) if line] == code.split("\n\n")


def test_a_code_block_that_fits_is_moved_whole_to_the_next_part() -> None:
    block = "```js\n" + "\n".join(f"let v{i} = {i};" for i in range(8)) + "\n```"
    text = f"Some words before the block, long enough to matter.\n{block}\nAfter."
    parts = split_markdown(text, len(block) + 10)
    assert parts[0] == "Some words before the block, long enough to matter."
    assert block in parts[1]


def test_the_rendered_length_is_what_counts() -> None:
    text = " ".join(["salt & pepper & oil"] * 40)
    parts = split_markdown(text, 100, measure=rendered_length)
    assert all(rendered_length(part) <= 100 for part in parts)
    assert max(len(part) for part in parts) < 80  # they would fit twice as long unrendered
    assert_preserved(text, parts)


@pytest.mark.parametrize("limit", [4096, 2000])
def test_a_long_answer_with_code_blocks(limit: int) -> None:
    answer = long_answer()
    assert len(answer) >= 10_000 and answer.count("```python") >= 4
    parts = split_markdown(answer, limit, measure=rendered_length)
    assert all(rendered_length(part) <= limit for part in parts)
    assert all(len(fence_lines(part)) % 2 == 0 for part in parts)
    assert code_lines("\n\n".join(parts)) == code_lines(answer)
    for block in re.findall(r"```python\n.*?\n```", answer, re.DOTALL):
        if rendered_length(block) <= limit:
            assert any(block in part for part in parts)
    assert_preserved(answer, parts)


def test_splitting_ten_thousand_characters_is_fast() -> None:
    answer = long_answer()
    timings = []
    for _ in range(10):
        started = time.perf_counter()
        split_markdown(answer, 4096)
        timings.append(time.perf_counter() - started)
    assert min(timings) < 0.005


def test_an_expensive_measure_is_called_a_few_times_per_part() -> None:
    calls = 0

    def measure(part: str) -> int:
        nonlocal calls
        calls += 1
        return rendered_length(part)

    parts = split_markdown(long_answer(), 2000, measure=measure)
    assert calls <= 25 * len(parts)


WORD = st.text(alphabet="abcdefgh&*.!?[]()", min_size=1, max_size=45)
PROSE_LINE = st.lists(st.one_of(WORD, WORD.map(lambda w: f"`{w}`")), min_size=1, max_size=10)
PARAGRAPH = st.lists(PROSE_LINE.map(" ".join), min_size=1, max_size=4).map("\n".join)
CODE_BLOCK = st.builds(
    lambda indent, fence, info, lines: (
        f"{indent}{fence}{info}\n" + "".join(f"{line}\n" for line in lines) + f"{indent}{fence}"
    ),
    st.sampled_from(["", "  "]),
    st.sampled_from(["```", "````", "~~~"]),
    st.sampled_from(["", "python", "js title"]),
    st.lists(st.text(alphabet="ab &(){}=;\t ", max_size=60), max_size=12),
)
DOCUMENT = st.lists(
    st.tuples(st.one_of(PARAGRAPH, CODE_BLOCK), st.sampled_from(["\n", "\n\n", "\n \n\n"])),
    min_size=1,
    max_size=8,
).map(lambda blocks: "".join(block + gap for block, gap in blocks))


@settings(max_examples=100, deadline=None, database=None)
@given(text=DOCUMENT, limit=st.integers(min_value=40, max_value=400), rendered=st.booleans())
def test_any_text_splits_into_fitting_balanced_parts_that_keep_the_text(
    text: str, limit: int, rendered: bool
) -> None:
    measure: Callable[[str], int] = rendered_length if rendered else len
    parts = split_markdown(text, limit, measure=measure)
    if measure(text) <= limit:
        assert parts == [text]
        return
    for part in parts:
        # Only a reopened fence line keeps its indentation: everything else at a cut goes.
        assert part and part == part.rstrip()
        assert part == part.lstrip() or FENCE_LINE.match(part)
        assert measure(part) <= limit
        assert len(fence_lines(part)) % 2 == 0
    assert_preserved(text, parts)


# ---------------------------------------------------------------------------------------------
# StreamingReply


@dataclass
class Call:
    kind: str
    message_id: str
    text: str
    at: float
    done: bool = False


class FakeSink:
    """Records every call with its time; `failures` maps a call's number (from 1) to an error."""

    def __init__(self, *, failures: dict[int, Exception] | None = None, delay: float = 0.0):
        self.calls: list[Call] = []
        self.messages: dict[str, str] = {}
        self.failures = failures or {}
        self.delay = delay

    async def post(self, text: str) -> str:
        message_id = f"m{len(self.calls) + 1}"
        await self._call("post", message_id, text)
        self.messages[message_id] = text
        return message_id

    async def edit(self, message_id: str, text: str) -> None:
        await self._call("edit", message_id, text)
        self.messages[message_id] = text

    async def delete(self, message_id: str) -> None:
        await self._call("delete", message_id, "")
        del self.messages[message_id]

    def made(self, kind: str) -> list[Call]:
        return [call for call in self.calls if call.kind == kind]

    async def _call(self, kind: str, message_id: str, text: str) -> None:
        call = Call(kind, message_id, text, time.monotonic())
        self.calls.append(call)
        failure = self.failures.get(len(self.calls))
        await asyncio.sleep(self.delay)
        call.done = True
        if failure is not None:
            raise failure


def streaming(sink: FakeSink, *, limit: int = 4096, interval: float = 0.01) -> StreamingReply:
    return StreamingReply(sink, render=render, limit=limit, interval=interval)


async def test_many_updates_make_few_interval_spaced_edits_and_the_last_shows_all() -> None:
    sink = FakeSink()
    reply = streaming(sink, interval=0.05)
    await reply.start()
    started = time.monotonic()
    text = ""
    for i in range(200):
        text += f"token{i} & "
        reply.update(text)
        await asyncio.sleep(0.001)
    finishing = time.monotonic()
    ids = await reply.finish(text)
    elapsed = time.monotonic() - started

    edits = sink.made("edit")
    assert 2 <= len(edits) <= elapsed / 0.05 + 2
    assert sink.calls[1].at - sink.calls[0].at < 0.05  # the first edit comes at once
    streamed, final = edits[:-1], edits[-1]
    assert all(b.at - a.at >= 0.05 - 0.002 for a, b in itertools.pairwise(streamed))
    assert final.at - finishing < 0.02  # the final text does not wait for the pace
    assert final.text == render(text)
    assert ids == ["m1"] and sink.messages == {"m1": render(text)}


async def test_a_rate_limited_edit_waits_then_sends_the_newest_text() -> None:
    sink = FakeSink(failures={2: RateLimited(0.2)})
    reply = streaming(sink)
    await reply.start()
    reply.update("Hello")
    await asyncio.sleep(0.05)
    reply.update("Hello, world")
    await asyncio.sleep(0.3)
    ids = await reply.finish("Hello, world. Bye.")

    limited, retried, final = sink.calls[1:]
    assert limited.text == "Hello"
    assert (retried.kind, retried.text) == ("edit", "Hello, world")
    assert retried.at - limited.at >= 0.2 - 0.002
    assert final.text == "Hello, world. Bye."
    assert [sink.messages[i] for i in ids] == ["Hello, world. Bye."]


async def test_finish_respects_a_wait_the_platform_asked_for_while_streaming() -> None:
    sink = FakeSink(failures={2: RateLimited(0.15)})
    reply = streaming(sink)
    await reply.start()
    reply.update("Partial")
    await asyncio.sleep(0.03)
    await reply.finish("Complete")
    limited, final = sink.calls[1:]
    assert final.at - limited.at >= 0.15 - 0.002
    assert sink.messages == {"m1": "Complete"}


async def test_a_reply_that_outgrows_a_message_continues_in_new_ones() -> None:
    sink = FakeSink()
    reply = streaming(sink, limit=60)
    await reply.start()
    text = ""
    for i in range(40):
        text += f"Word{i} & " + ("\n\n" if i % 7 == 6 else "")
        reply.update(text)
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.05)
    assert len(reply.message_ids) > 1  # posted while streaming, not only at the end
    ids = await reply.finish(text)

    expected = expected_messages(text, 60)
    assert len(expected) >= 4
    assert [sink.messages[i] for i in ids] == expected
    assert all(len(message) <= 60 for message in sink.messages.values())
    assert [call.message_id for call in sink.made("post")] == ids
    assert not sink.made("delete")


async def test_replace_turns_a_two_part_reply_into_one_notice() -> None:
    sink = FakeSink()
    reply = streaming(sink, limit=60)
    await reply.start()
    answer = "A first paragraph that is fairly long.\n\nAnd a second one, also long."
    first, second = await reply.finish(answer)
    assert len(sink.messages) == 2

    assert await reply.replace("This reply was withheld.") == [first]
    assert sink.messages == {first: "This reply was withheld."}
    assert sink.calls[-2:] == [
        Call("edit", first, "This reply was withheld.", sink.calls[-2].at, done=True),
        Call("delete", second, "", sink.calls[-1].at, done=True),
    ]
    assert reply.message_ids == [first]


async def test_replace_while_streaming_stops_the_stream() -> None:
    sink = FakeSink()
    reply = streaming(sink, limit=40)
    await reply.start()
    reply.update("Some text that is long enough to need two messages, surely.")
    await asyncio.sleep(0.05)
    assert len(reply.message_ids) == 2
    assert await reply.replace("Withheld.") == ["m1"]
    reply.update("late token")
    await asyncio.sleep(0.03)
    assert sink.messages == {"m1": "Withheld."}


async def test_finish_retries_a_rate_limited_final_edit() -> None:
    sink = FakeSink(failures={2: RateLimited(0.02), 3: RateLimited(0.02)})
    reply = streaming(sink)
    await reply.start()
    assert await reply.finish("Done & dusted") == ["m1"]
    assert [call.kind for call in sink.calls] == ["post", "edit", "edit", "edit"]
    assert sink.calls[3].at - sink.calls[2].at >= 0.02 - 0.002
    assert sink.messages == {"m1": "Done &amp; dusted"}


async def test_finish_gives_up_after_max_attempts_with_the_last_error() -> None:
    sink = FakeSink(failures={n: RateLimited(0.01) for n in range(2, 10)})
    reply = StreamingReply(sink, render=render, limit=100, interval=0.0, max_attempts=3)
    await reply.start()
    with pytest.raises(RateLimited):
        await reply.finish("Never shown")
    assert len(sink.made("edit")) == 3


async def test_a_sink_error_while_streaming_is_logged_and_finish_still_delivers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = FakeSink(failures={2: RuntimeError("platform hiccup")})
    reply = streaming(sink)
    await reply.start()
    with caplog.at_level(logging.WARNING, logger="adapters.rendering"):
        reply.update("Half an ans")
        await asyncio.sleep(0.05)
    assert "streaming edit failed" in caplog.text
    assert await reply.finish("Half an answer, then the rest.") == ["m1"]
    assert sink.messages == {"m1": "Half an answer, then the rest."}


async def test_finish_lets_an_in_flight_edit_end_and_shows_the_final_text() -> None:
    sink = FakeSink(delay=0.05)
    reply = streaming(sink)
    await reply.start()
    reply.update("Draft")
    await asyncio.sleep(0.02)  # the edit is now in flight
    assert not sink.calls[-1].done
    await reply.finish("Final")
    assert all(call.done for call in sink.calls)
    assert [call.text for call in sink.made("edit")] == ["Draft", "Final"]


async def test_an_unchanged_text_makes_no_call() -> None:
    sink = FakeSink()
    reply = streaming(sink)
    await reply.start()
    reply.update("Same")
    await asyncio.sleep(0.03)
    reply.update("Same")
    await asyncio.sleep(0.03)
    await reply.finish("Same")
    assert [call.kind for call in sink.calls] == ["post", "edit"]


async def test_a_failing_start_raises_and_aclose_ends_a_running_stream() -> None:
    broken = StreamingReply(FakeSink(failures={1: ConnectionError()}), render=render, limit=100)
    with pytest.raises(ConnectionError):
        await broken.start()
    await broken.aclose()

    sink = FakeSink()
    reply = streaming(sink, interval=10.0)
    await reply.start()
    reply.update("first")
    await asyncio.sleep(0.01)
    reply.update("second, waiting for its turn")
    await reply.aclose()
    await reply.aclose()
    assert [call.kind for call in sink.calls] == ["post", "edit"]


async def test_without_a_placeholder_the_first_text_is_posted_then_edited() -> None:
    sink = FakeSink()
    reply = StreamingReply(sink, render=render, limit=4096, interval=0.01, placeholder=None)
    await reply.start()
    assert sink.calls == []  # nothing until there is text
    reply.update("Hello")
    await asyncio.sleep(0.05)
    await reply.finish("Hello world")
    assert [(call.kind, call.text) for call in sink.calls] == [
        ("post", render("Hello")),
        ("edit", render("Hello world")),
    ]


async def test_a_reply_finished_within_the_hold_goes_out_in_one_call() -> None:
    sink = FakeSink()
    reply = StreamingReply(sink, render=render, limit=4096, interval=0.01, hold=0.3)
    reply.begin()
    reply.update("Hello")
    await asyncio.sleep(0.05)
    ids = await reply.finish("Hello, world.")
    await asyncio.sleep(0.4)  # past the hold: nothing more goes out
    assert [(c.kind, c.text) for c in sink.calls] == [("post", render("Hello, world."))]
    assert ids == ["m1"]


async def test_a_slower_reply_shows_its_placeholder_once_the_hold_is_over() -> None:
    sink = FakeSink()
    reply = StreamingReply(sink, render=render, limit=4096, interval=0.01, hold=0.2)
    started = time.monotonic()
    reply.begin()
    await asyncio.sleep(0.3)
    reply.update("Hello")
    await asyncio.sleep(0.05)
    await reply.finish("Hello, world.")
    placeholder, *_ = sink.calls
    assert (placeholder.kind, placeholder.text) == ("post", "…")
    assert placeholder.at - started >= 0.2 - 0.01
    assert sink.messages == {"m1": render("Hello, world.")}
