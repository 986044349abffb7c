"""Documents into chunks that follow their structure: headings give each chunk its section
("Setup > Install"), paragraphs are kept whole where they fit, a code block is never split
mid-line. Markdown, plain text, HTML and PDF."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

# About 200 English tokens: the embedding model reads 256 at most, and a retrieved chunk
# should be a passage, not a chapter.
MAX_CHARS = 900
TEXT_SUFFIXES = {".md", ".markdown", ".txt", ".text", ".rst", ".html", ".htm", ".pdf"}


@dataclass(frozen=True, slots=True)
class Block:
    section: str  # the headings above it, "A > B"; "" before the first heading
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    section: str
    text: str


@dataclass(frozen=True, slots=True)
class Parsed:
    title: str
    blocks: list[Block]


def kind_of(name: str, content_type: str = "") -> str:
    """markdown, text, html or pdf, from a content type or the name's suffix."""
    content_type = content_type.split(";")[0].strip().lower()
    by_type = {
        "text/markdown": "markdown",
        "text/html": "html",
        "application/xhtml+xml": "html",
        "application/pdf": "pdf",
        "text/plain": "text",
    }
    if content_type in by_type:
        return by_type[content_type]
    suffix = PurePosixPath(name.split("?")[0]).suffix.lower()
    return {
        ".md": "markdown",
        ".markdown": "markdown",
        ".html": "html",
        ".htm": "html",
        ".pdf": "pdf",
    }.get(suffix, "text")


def parse(data: bytes, name: str, content_type: str = "") -> Parsed:
    """The document's title and its blocks in order."""
    kind = kind_of(name, content_type)
    fallback = PurePosixPath(name.rstrip("/").split("?")[0]).name or name
    if kind == "pdf":
        return _pdf(data, fallback)
    text = data.decode("utf-8", errors="replace")
    if kind == "html":
        return _html(text, fallback)
    if kind == "markdown":
        return _markdown(text, fallback)
    return Parsed(fallback, [Block("", p) for p in _paragraphs(text)])


def chunks(parsed: Parsed, max_chars: int = MAX_CHARS) -> list[Chunk]:
    """Consecutive blocks of one section joined up to `max_chars`; a longer block is cut at
    sentence (else word) boundaries."""
    result: list[Chunk] = []
    section, size = "", 0
    parts: list[str] = []

    def flush() -> None:
        nonlocal parts, size
        if parts:
            result.append(Chunk(section, "\n\n".join(parts)))
        parts, size = [], 0

    for block in parsed.blocks:
        if block.section != section:
            flush()
            section = block.section
        for piece in _pieces(block.text, max_chars):
            if size and size + len(piece) + 2 > max_chars:
                flush()
            parts.append(piece)
            size += len(piece) + 2
    flush()
    return result


def _pieces(text: str, max_chars: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    sentences = re.split(r"(?<=[.!?])\s+|\n", text)
    pieces: list[str] = []
    current = ""
    for sentence in sentences:
        while len(sentence) > max_chars:  # one very long sentence: by words
            cut = sentence.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if current and len(current) + 1 + len(sentence) > max_chars:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return [p for p in pieces if p]


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def _markdown(text: str, fallback: str) -> Parsed:
    headings: list[tuple[int, str]] = []  # (level, name) of the headings above
    blocks: list[Block] = []
    title = ""
    paragraph: list[str] = []
    fence: list[str] | None = None

    def section() -> str:
        return " > ".join(name for _, name in headings)

    def flush() -> None:
        if paragraph:
            blocks.append(Block(section(), "\n".join(paragraph).strip()))
            paragraph.clear()

    for line in text.splitlines():
        if fence is not None:
            fence.append(line)
            if _FENCE.match(line):
                blocks.append(Block(section(), "\n".join(fence)))
                fence = None
            continue
        if _FENCE.match(line):
            flush()
            fence = [line]
            continue
        heading = _HEADING.match(line)
        if heading:
            flush()
            level, name = len(heading.group(1)), heading.group(2).strip()
            title = title or name
            while headings and headings[-1][0] >= level:
                headings.pop()
            headings.append((level, name))
            continue
        if not line.strip():
            flush()
        else:
            paragraph.append(line)
    flush()
    if fence:
        blocks.append(Block(section(), "\n".join(fence)))
    return Parsed(title or fallback, [b for b in blocks if b.text.strip()])


class _HtmlText(HTMLParser):
    """Headings and text blocks of an HTML page; scripts, styles and navigation skipped."""

    SKIP = frozenset({"script", "style", "nav", "header", "footer", "noscript", "template", "svg"})
    BLOCKS = frozenset(
        {"p", "li", "pre", "td", "th", "dd", "dt", "blockquote", "div", "section", "br"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title = ""
        self.headings: list[str] = []
        self.blocks: list[Block] = []
        self._text: list[str] = []
        self._skipping = 0
        self._heading: int | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self._flush()
            self._heading = int(tag[1])
        elif tag in self.BLOCKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skipping = max(self._skipping - 1, 0)
        elif tag == "title":
            self._in_title = False
        elif re.fullmatch(r"h[1-6]", tag) and self._heading is not None:
            name = " ".join("".join(self._text).split())
            self._text = []
            del self.headings[self._heading - 1 :]
            if name:
                self.headings.append(name)
            self._heading = None
        elif tag in self.BLOCKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skipping:
            return
        if self._in_title:
            self.title += data
        else:
            self._text.append(data)

    def _flush(self) -> None:
        if self._heading is not None:
            return
        text = " ".join("".join(self._text).split())
        self._text = []
        if text:
            self.blocks.append(Block(" > ".join(self.headings), text))


def _html(text: str, fallback: str) -> Parsed:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    parser._flush()
    title = " ".join(parser.title.split()) or (parser.headings[0] if parser.headings else "")
    return Parsed(title or fallback, parser.blocks)


def _pdf(data: bytes, fallback: str) -> Parsed:
    from pypdf import PdfReader  # the kb extra installs it

    reader = PdfReader(io.BytesIO(data))
    metadata = reader.metadata
    title = str(metadata.get("/Title") or "").strip() if metadata is not None else ""
    blocks = [
        Block(f"page {number}", paragraph)
        for number, page in enumerate(reader.pages, start=1)
        for paragraph in _paragraphs(page.extract_text() or "")
    ]
    return Parsed(title or fallback, blocks)
