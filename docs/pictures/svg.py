"""Rich text for the pictures: each platform's markup parsed into blocks, wrapped to a width
and written as SVG with the standard library only.

Widths are estimated from DejaVu Sans' advance widths (the widest of the usual fallbacks), so
text laid out here fits whichever sans-serif font the viewer has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from html import escape

Styles = frozenset[str]
Run = tuple[str, Styles]
PLAIN: Styles = frozenset()

SANS = "'Helvetica Neue', Helvetica, Arial, 'DejaVu Sans', sans-serif"
MONO = "Menlo, Consolas, 'DejaVu Sans Mono', monospace"
MONO_ADVANCE = 0.602  # of the font size: DejaVu Sans Mono, Menlo and Consolas alike

# DejaVu Sans advance widths in 1/2048 em; anything else counts as WIDE.
_WIDTHS = {
    **dict.fromkeys("ijl'|", 569),
    **dict.fromkeys(" .,:;!", 651),
    **dict.fromkeys("ft()[]{}/\\-", 799),
    **dict.fromkeys("r", 842),
    **dict.fromkeys('"*^_`szc', 1100),
    **dict.fromkeys("abdeghknopquvxy?0123456789$#", 1303),
    **dict.fromkeys("EFLJPSTZ", 1350),
    **dict.fromkeys("ABCKRVXY", 1420),
    **dict.fromkeys("DGHNOQU&%=+<>~", 1600),
    **dict.fromkeys("mwMW@", 2030),
    "I": 604,
    "•": 1208,
}
WIDE = 1400


def text_width(text: str, size: float, styles: Styles = PLAIN, code_scale: float = 0.9) -> float:
    """The estimated width in px of `text` at font size `size`."""
    if "code" in styles:
        return len(text) * MONO_ADVANCE * size * code_scale
    units = sum(_WIDTHS.get(ch, WIDE) for ch in text)
    return units / 2048 * size * (1.1 if "b" in styles else 1.0)


def clean(text: str) -> str:
    """Text safe inside XML: no control characters but newline and tab."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)


def esc(text: str) -> str:
    return escape(clean(text), quote=True)


# --- blocks ------------------------------------------------------------------------------


@dataclass
class Block:
    kind: str  # "p" a line of text, "li" a bullet item, "gap" a blank line, "pre" code
    runs: list[Run] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    language: str = ""


def _lines_to_blocks(lines: list[list[Run]]) -> list[Block]:
    blocks = []
    for runs in lines:
        text = "".join(t for t, _ in runs)
        if not text.strip():
            blocks.append(Block("gap"))
        elif re.match(r"[•\-*] ", text) and not runs[0][1]:
            first, styles = runs[0]
            blocks.append(Block("li", [(first[2:], styles), *runs[1:]]))
        else:
            blocks.append(Block("p", runs))
    return blocks


def _split_lines(runs: list[Run]) -> list[list[Run]]:
    lines: list[list[Run]] = [[]]
    for text, styles in runs:
        for number, part in enumerate(text.split("\n")):
            if number:
                lines.append([])
            if part:
                lines[-1].append((part, styles))
    return lines


def _segments_to_blocks(segments: list[tuple[str, list[Run] | str, str]]) -> list[Block]:
    """Segments are ("text", runs, "") or ("pre", code, language); a text segment loses the
    line break that ends at, or starts after, a code block."""
    blocks: list[Block] = []
    for index, (kind, content, language) in enumerate(segments):
        if kind == "pre":
            assert isinstance(content, str)
            blocks.append(Block("pre", code=content.strip("\n").split("\n"), language=language))
            continue
        assert isinstance(content, list)
        lines = _split_lines(content)
        if index + 1 < len(segments) and lines and not lines[-1]:
            lines.pop()
        if index > 0 and lines and not lines[0]:
            lines.pop(0)
        blocks.extend(_lines_to_blocks(lines))
    while blocks and blocks[-1].kind == "gap":
        blocks.pop()
    return blocks


def _inline(text: str, rules: list[tuple[str, Styles, int]]) -> list[Run]:
    """Inline markup by regexes: (pattern, styles, group holding the shown text)."""
    pattern = re.compile("|".join(f"(?P<r{n}>{p})" for n, (p, _, _) in enumerate(rules)))
    runs: list[Run] = []
    position = 0
    for match in pattern.finditer(text):
        if match.start() > position:
            runs.append((text[position : match.start()], PLAIN))
        number = int(next(name for name, value in match.groupdict().items() if value)[1:])
        _, styles, group = rules[number]
        inner = re.fullmatch(rules[number][0], match.group(0))
        assert inner is not None
        runs.append((inner.group(group), styles))
        position = match.end()
    if position < len(text):
        runs.append((text[position:], PLAIN))
    return runs


def _fenced(text: str, inline: Iterable[tuple[str, Styles, int]], unescape: bool) -> list[Block]:
    rules = list(inline)
    segments: list[tuple[str, list[Run] | str, str]] = []
    position = 0
    for match in re.finditer(r"```([\w+-]*)\n?(.*?)```", text, re.S):
        segments.append(("text", _inline(text[position : match.start()], rules), ""))
        code = match.group(2)
        segments.append(("pre", _slack_unescape(code) if unescape else code, match.group(1)))
        position = match.end()
    segments.append(("text", _inline(text[position:], rules), ""))
    if unescape:
        segments = [
            (kind, [(_slack_unescape(t), s) for t, s in content], lang)
            if isinstance(content, list)
            else (kind, content, lang)
            for kind, content, lang in segments
        ]
    return _segments_to_blocks(segments)


def _slack_unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


MENTION = (r"@Parley\b", frozenset({"mention"}), 0)
COMMAND = (r"(?<!\S)/[a-z]+\b", frozenset({"command"}), 0)


def slack_blocks(text: str) -> list[Block]:
    """Slack mrkdwn: *bold*, _italic_, ~strike~, `code`, ```blocks```, <url|label>."""
    return _fenced(
        text,
        [
            (r"`([^`\n]+)`", frozenset({"code"}), 1),
            (r"(?<!\w)\*([^*\n]+)\*(?!\w)", frozenset({"b"}), 1),
            (r"(?<!\w)_([^_\n]+)_(?!\w)", frozenset({"i"}), 1),
            (r"(?<!\w)~([^~\n]+)~(?!\w)", frozenset({"s"}), 1),
            (r"<[^>|\n]+\|([^>\n]+)>", frozenset({"link"}), 1),
            (r"<(https?://[^>\n]+)>", frozenset({"link"}), 1),
            MENTION,
        ],
        unescape=True,
    )


def discord_blocks(text: str) -> list[Block]:
    """Discord Markdown: **bold**, *italic*, __underline__, ~~strike~~, `code`, fences."""
    return _fenced(
        text,
        [
            (r"`([^`\n]+)`", frozenset({"code"}), 1),
            (r"\*\*([^*\n]+)\*\*", frozenset({"b"}), 1),
            (r"__([^_\n]+)__", frozenset({"u"}), 1),
            (r"(?<!\w)\*([^*\n]+)\*(?!\w)", frozenset({"i"}), 1),
            (r"(?<!\w)_([^_\n]+)_(?!\w)", frozenset({"i"}), 1),
            (r"~~([^~\n]+)~~", frozenset({"s"}), 1),
            (r"\[([^\]\n]+)\]\([^)\n]+\)", frozenset({"link"}), 1),
            MENTION,
        ],
        unescape=False,
    )


_ENTITY_STYLES = {
    "bold": "b",
    "italic": "i",
    "underline": "u",
    "strikethrough": "s",
    "code": "code",
    "text_link": "link",
    "url": "link",
    "mention": "mention",
    "bot_command": "command",
}


def telegram_blocks(text: str, entities: list[dict[str, object]]) -> list[Block]:
    """Telegram's plain text and entities (offsets in UTF-16 code units)."""
    index_of: dict[int, int] = {}
    units = 0
    for index, ch in enumerate(text):
        index_of[units] = index
        units += 2 if ord(ch) > 0xFFFF else 1
    index_of[units] = len(text)
    styles: list[set[str]] = [set() for _ in text]
    pre: list[str | None] = [None] * len(text)
    for entity in entities:
        start = index_of[int(str(entity["offset"]))]
        end = index_of[int(str(entity["offset"])) + int(str(entity["length"]))]
        kind = str(entity["type"])
        for index in range(start, end):
            if kind == "pre":
                pre[index] = str(entity.get("language") or "")
            elif kind in _ENTITY_STYLES:
                styles[index].add(_ENTITY_STYLES[kind])
    segments: list[tuple[str, list[Run] | str, str]] = []
    index = 0
    while index < len(text):
        end = index
        while end < len(text) and pre[end] == pre[index]:
            end += 1
        if pre[index] is not None:
            segments.append(("pre", text[index:end], pre[index] or ""))
        else:
            runs: list[Run] = []
            for position in range(index, end):
                style = frozenset(styles[position])
                if runs and runs[-1][1] == style:
                    runs[-1] = (runs[-1][0] + text[position], style)
                else:
                    runs.append((text[position], style))
            segments.append(("text", runs, ""))
        index = end
    return _segments_to_blocks(segments)


# --- layout ------------------------------------------------------------------------------


@dataclass
class Theme:
    size: float = 15
    line: float = 22  # line height
    text: str = "#1d1c1d"
    bold: str | None = None  # colour of bold text, when not `text`
    code_text: str = "#e01e5a"
    code_scale: float = 0.9  # code font size, of `size`
    pre_text: str = "#1d1c1d"
    pre_fill: str = "#f8f8f8"
    pre_stroke: str = "#dddddd"
    link: str = "#1264a3"
    mention: str = "#1264a3"
    mention_fill: str | None = None
    command: str = "#1264a3"
    gap: float = 8  # height of a blank line
    font: str = SANS


def wrap(runs: list[Run], width: float, theme: Theme) -> list[list[Run]]:
    """Greedy word wrap; a word longer than the line is cut."""
    lines: list[list[Run]] = [[]]
    used = 0.0

    def measure(text: str, styles: Styles) -> float:
        return text_width(text, theme.size, styles, theme.code_scale)

    for text, styles in runs:
        for piece in re.findall(r"\s+|\S+", text):
            space = piece.isspace()
            if space and not lines[-1]:
                continue
            wide = measure(piece, styles)
            if used + wide > width and not space and lines[-1]:
                while lines[-1] and lines[-1][-1][0].isspace():
                    lines[-1].pop()
                lines.append([])
                used = 0.0
            while not space and wide > width:  # one word wider than a line
                cut = len(piece)
                while cut > 1 and measure(piece[:cut], styles) > width:
                    cut -= 1
                lines[-1].append((piece[:cut], styles))
                lines.append([])
                piece = piece[cut:]
                wide = measure(piece, styles)
                used = 0.0
            if space and used + wide > width:
                continue
            lines[-1].append((piece, styles))
            used += wide
    return [line for line in lines if line] or [[]]


def line_width(runs: list[Run], theme: Theme) -> float:
    return sum(text_width(t, theme.size, s, theme.code_scale) for t, s in runs)


@dataclass
class Laid:
    """Blocks wrapped to a width: `height`, the `width` the text really uses, `draw(x, y)`
    (y is the top)."""

    items: list[tuple[str, object, float]]  # (kind, content, height)
    width: float
    height: float
    theme: Theme
    box: float  # the width given: code blocks span it

    def draw(self, x: float, y: float) -> list[str]:
        out: list[str] = []
        t = self.theme
        for kind, content, height in self.items:
            if kind == "line":
                indent, runs, first = content  # type: ignore[misc]
                if indent and first:
                    bullet_y = y + t.line * 0.7
                    out.append(_text(x + 4, bullet_y, [("•", PLAIN)], t))
                out.append(_text(x + indent, y + t.line * 0.7, runs, t))
            elif kind == "pre":
                lines, box = content  # type: ignore[misc]
                out.append(
                    f'<rect x="{x:.1f}" y="{y + 4:.1f}" width="{box:.1f}" '
                    f'height="{height - 8:.1f}" rx="4" fill="{t.pre_fill}" '
                    f'stroke="{t.pre_stroke}"/>'
                )
                size = t.size * t.code_scale
                for number, code in enumerate(lines):
                    baseline = y + 4 + 10 + size * 0.85 + number * size * 1.45
                    out.append(
                        f'<text x="{x + 10:.1f}" y="{baseline:.1f}" font-family="{esc(MONO)}" '
                        f'font-size="{size:.1f}" fill="{t.pre_text}" '
                        f'xml:space="preserve">{esc(code)}</text>'
                    )
            y += height
        return out


def layout(blocks: list[Block], width: float, theme: Theme) -> Laid:
    items: list[tuple[str, object, float]] = []
    used = 0.0
    bullet = 22.0
    for block in blocks:
        if block.kind == "gap":
            items.append(("gap", None, theme.gap))
        elif block.kind in ("p", "li"):
            indent = bullet if block.kind == "li" else 0.0
            for number, runs in enumerate(wrap(block.runs, width - indent, theme)):
                items.append(("line", (indent, runs, number == 0), theme.line))
                used = max(used, indent + line_width(runs, theme))
        elif block.kind == "pre":
            size = theme.size * theme.code_scale
            columns = max(10, int((width - 20) / (size * MONO_ADVANCE)))
            lines = [
                code[start : start + columns] or " "
                for code in block.code
                for start in range(0, max(len(code), 1), columns)
            ]
            box = min(width, max(len(c) for c in lines) * size * MONO_ADVANCE + 20)
            box = max(box, min(width, 240))
            used = max(used, box)
            items.append(("pre", (lines, box), 8 + 20 + size * 1.45 * len(lines) - size * 0.45))
    height = sum(h for _, _, h in items)
    return Laid(items, used, height, theme, width)


def _text(x: float, baseline: float, runs: list[Run], theme: Theme) -> str:
    spans = []
    for text, styles in runs:
        attributes = []
        if "b" in styles:
            attributes.append('font-weight="bold"')
            if theme.bold:
                attributes.append(f'fill="{theme.bold}"')
        if "i" in styles:
            attributes.append('font-style="italic"')
        decorations = [d for s, d in (("u", "underline"), ("s", "line-through")) if s in styles]
        if decorations:
            attributes.append(f'text-decoration="{" ".join(decorations)}"')
        if "code" in styles:
            attributes.append(
                f'font-family="{esc(MONO)}" font-size="{theme.size * theme.code_scale:.1f}" '
                f'fill="{theme.code_text}"'
            )
        for style, colour in (
            ("link", theme.link),
            ("mention", theme.mention),
            ("command", theme.command),
        ):
            if style in styles:
                attributes.append(f'fill="{colour}"')
        if attributes:
            spans.append(f"<tspan {' '.join(attributes)}>{esc(text)}</tspan>")
        else:
            spans.append(esc(text))
    return (
        f'<text x="{x:.1f}" y="{baseline:.1f}" font-family="{esc(theme.font)}" '
        f'font-size="{theme.size}" fill="{theme.text}" xml:space="preserve">'
        f"{''.join(spans)}</text>"
    )


def label(
    x: float,
    y: float,
    text: str,
    *,
    size: float,
    fill: str,
    weight: str = "normal",
    anchor: str = "start",
    font: str = SANS,
    extra: str = "",
) -> str:
    """One line of plain text at baseline `y`."""
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-family="{esc(font)}" font-size="{size}" '
        f'font-weight="{weight}" fill="{fill}" text-anchor="{anchor}" {extra}'
        f'xml:space="preserve">{esc(text)}</text>'
    )


def document(width: float, height: float, body: list[str], *, title: str, desc: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img">\n'
        f"<title>{esc(title)}</title>\n<desc>{esc(desc)}</desc>\n" + "\n".join(body) + "\n</svg>\n"
    )
