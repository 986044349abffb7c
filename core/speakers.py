"""A reply that starts by naming a speaker ("Parley: Hello", "alice: ...") loses the name.

Chat transcripts in training data look like "name: text", and models, small ones most, start
their answer the same way: with their own name, or with the user's when they continue the
user's line. The user should see only the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from core.llm import ModelChunk, TextChunk


class SpeakerPrefix:
    """Removes one leading "NAME:" from a streamed reply, for any of the given names.

    Text is held back only while it could still be such a prefix (a few characters at the
    start of the reply), so streaming is not delayed.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._prefixes = sorted({f"{name}:" for name in names if name.strip()}, key=len)[::-1]
        self._held = ""
        self._deciding = bool(self._prefixes)
        self._after_prefix = False  # the whitespace after a removed prefix goes too

    def feed(self, piece: str) -> str:
        """The part of `piece` to show now (possibly ""), in order."""
        if self._after_prefix:
            piece = piece.lstrip()
            self._after_prefix = not piece
            return piece
        if not self._deciding:
            return piece
        self._held += piece
        text = self._held.lstrip()
        for prefix in self._prefixes:
            if text.startswith(prefix):
                self._held, self._deciding = "", False
                rest = text[len(prefix) :].lstrip()
                self._after_prefix = not rest
                return rest
        if text and not any(prefix.startswith(text) for prefix in self._prefixes):
            return self.flush()
        return ""

    def flush(self) -> str:
        """What is still held back: call when the reply ends."""
        held, self._held, self._deciding = self._held, "", False
        return held


async def without_speaker(
    stream: AsyncIterator[ModelChunk], names: Iterable[str]
) -> AsyncIterator[ModelChunk]:
    """The model's stream with a leading "NAME:" removed from its text."""
    speaker = SpeakerPrefix(names)
    async for chunk in stream:
        if isinstance(chunk, TextChunk):
            text = speaker.feed(chunk.text)
            if text:
                yield TextChunk(text)
        else:
            yield chunk
    rest = speaker.flush()
    if rest:
        yield TextChunk(rest)
