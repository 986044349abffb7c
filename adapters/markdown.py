"""Markdown pieces the platform translators share: block syntax, inline tokens and tables.

Each platform renders the model's Markdown in its own syntax (`slack.translate`,
`telegram.translate`, `discord.translate`), but they read it the same way; what they read
it with lives here so the three cannot drift apart. Nothing here renders or escapes for a
platform: that stays in each translator.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

# --- block syntax -------------------------------------------------------------------------

FENCE = re.compile(r"^[ \t]*(`{3,}(?=[^`]*$)|~{3,})")
"""A line opening a fenced code block; group 1 is the fence. A backtick fence's info
string holds no backtick: "```ls``` now" is inline code. The info string is the rest of
the line after the match."""

HEADING = re.compile(r"^ {0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
"""An ATX heading; group 1 is its title, None for a bare "#"."""

RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
"""A thematic break (`---`, `***`, `* * *`, `___`)."""

QUOTE = re.compile(r"^ {0,3}(?:>[ \t]?)+")
"""A block quote's `>` markers at the start of a line, nested ones included."""

TASK = re.compile(r"^([ \t]*)[-*+][ \t]+\[([ xX])\][ \t]+(.*)$")
"""A task list item; groups: indentation, the box's mark (" ", "x" or "X"), the text."""

BULLET = re.compile(r"^([ \t]*)[-*+][ \t]+(.*)$")
"""A bullet list item; groups: indentation, the text."""


def fence_end(lines: list[str], start: int, fence: str) -> int:
    """Find the line that closes a fenced code block.

    Args:
        lines: The text's lines.
        start: The first line after the opening fence.
        fence: The opening fence (`FENCE`'s group 1); the closing one is of the same
            character and at least as long.

    Returns:
        The index of the closing fence; `len(lines)` for an unclosed fence, which runs to
        the end, as in CommonMark.
    """
    closing = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
    return next((i for i in range(start, len(lines)) if closing.match(lines[i])), len(lines))


# --- inline tokens ------------------------------------------------------------------------


def _link_pattern(kind: str) -> str:
    """`[label](destination "title")`, with its named groups prefixed by `kind`.

    The destination is `<anything>` or a run without spaces that may hold balanced
    parentheses (Wikipedia's `Foo_(bar)`).
    """
    return (
        rf"\[(?P<{kind}_label>(?:[^\[\]]|\[[^\[\]]*\])*)\]"
        rf"\(\s*(?:<(?P<{kind}_angled>[^<>\n]*)>|(?P<{kind}_bare>(?:[^\s()]|\([^\s()]*\))*))"
        r"(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)"
    )


INLINE_TOKEN = re.compile(
    r"(?P<code>(?P<ticks>`+)(?P<code_text>.+?)(?<!`)(?P=ticks)(?!`))"
    # Markdown's backslash escapes, for the characters it marks up with; not `\.` or `\\`,
    # which Windows paths (C:\Users\me\.ssh, \\server\share) are full of.
    r"|\\(?P<escaped>[`*_~\[\]#|])"
    rf"|!{_link_pattern('image')}"
    rf"|{_link_pattern('link')}"
    r"|<(?P<autolink>(?:https?://|mailto:)[^\s<>]+)>"
    # A bare URL ends before trailing punctuation and emphasis markers (`**https://x.y**`).
    r"|(?P<url>https?://(?:[^\s<>()]|\([^\s<>()]*\))*(?:[^\s<>().,;:!?'\"*_~]|\([^\s<>()]*\)))",
    re.IGNORECASE,
)
"""The inline pieces a translator renders whole, so that emphasis never cuts into them.

The alternatives, in priority order where two could start at the same place: `code` (with
`ticks`, its backtick run, and `code_text`, what they enclose), `escaped` (the character
after a backslash), an image and a link (see `link_parts`), `autolink` (the URL of a
`<url>`) and `url` (a bare URL).
"""


def link_parts(token: re.Match[str]) -> tuple[str, str]:
    """Take an image or link apart.

    Args:
        token: An `INLINE_TOKEN` match that is an image (`![alt](url)`) or a link
            (`[label](url)`).

    Returns:
        The label (an image's alt text) and the destination, without its angle brackets.
    """
    kind = "image" if token["image_label"] is not None else "link"
    angled, bare = token[f"{kind}_angled"], token[f"{kind}_bare"]
    return token[f"{kind}_label"], angled if angled is not None else bare


# --- tables -------------------------------------------------------------------------------

_TABLE_DELIMITER = re.compile(r"^[ \t]*\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$")
# An escaped "\|" is part of a cell's text.
_CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


def table_end(lines: list[str], start: int) -> int:
    """Find where a GFM table starting at a line ends.

    Args:
        lines: The text's lines.
        start: The line that may be the table's header.

    Returns:
        The index after the table's last row, or 0 if no table starts at `start`.
    """
    if start + 1 >= len(lines) or "|" not in lines[start]:
        return 0
    delimiter = lines[start + 1]
    if (
        "|" not in delimiter
        or not _TABLE_DELIMITER.match(delimiter)
        or len(table_cells(delimiter)) != len(table_cells(lines[start]))
    ):
        return 0
    end = start + 2
    while end < len(lines) and lines[end].strip() and "|" in lines[end]:
        end += 1
    return end


def table_cells(row: str) -> list[str]:
    """Split a table row into its cells.

    Args:
        row: One line of a table, with or without its outer pipes.

    Returns:
        The cells' text, stripped, with "\\|" unescaped to "|".
    """
    row = row.strip().removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_SEPARATOR.split(row)]


def aligned_table(lines: list[str], cell_text: Callable[[str], str] | None = None) -> list[str]:
    """Lay a table out for a monospace font, to be shown in a code block.

    Args:
        lines: The table's lines, as `table_end` delimits them.
        cell_text: What each header and body cell shows, given its Markdown (a code block
            renders no formatting); the Markdown as written when None.

    Returns:
        The header, a rule and the body rows, each `| a | b |` with every column padded to
        one width (at least 3) and aligned as the delimiter row says; short rows are padded
        with empty cells.
    """
    header, delimiter, *body = (table_cells(line) for line in lines)
    rows = [header, *body]
    if cell_text is not None:
        rows = [[cell_text(cell) for cell in row] for row in rows]
    columns = max(len(row) for row in rows)
    rows = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(3, *(display_width(row[c]) for row in rows)) for c in range(columns)]
    aligns = [_alignment(spec) for spec in delimiter] + [_ljust] * (columns - len(delimiter))

    def render(row: list[str]) -> str:
        padded = (
            align(cell, width) for align, cell, width in zip(aligns, row, widths, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return [render(rows[0]), rule, *(render(row) for row in rows[1:])]


def display_width(text: str) -> int:
    """Measure text as a monospace font shows it.

    Args:
        text: Any text.

    Returns:
        The columns it takes: wide characters (CJK, emoji) count two, combining marks zero.
    """
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _ljust(text: str, width: int) -> str:
    return text + " " * (width - display_width(text))


def _rjust(text: str, width: int) -> str:
    return " " * (width - display_width(text)) + text


def _center(text: str, width: int) -> str:
    left = (width - display_width(text)) // 2
    return " " * left + _ljust(text, width - left)


def _alignment(spec: str) -> Callable[[str, int], str]:
    """The padding a delimiter cell (`---`, `:--`, `--:`, `:-:`) asks for."""
    if spec.endswith(":"):
        return _center if spec.startswith(":") else _rjust
    return _ljust
