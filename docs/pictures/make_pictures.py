"""Makes the README's pictures of a chat on each platform from a real run.

    python docs/pictures/make_pictures.py        (from the repository root, in the dev venv)

For Slack, Discord and Telegram it starts Parley's real bot (slack-bolt, discord.py,
python-telegram-bot) against the tests' fake platform server and scripted OpenAI-compatible
model on 127.0.0.1, using the tests' own helpers (tests/platforms/test_*.py, tests/fakes/);
for the terminal it runs `parley chat` on a pseudo-terminal (tests/cli/test_chat_terminal.py)
against the same scripted model. Each gets the same exchange (capture.py: a question, the
command `/persona coder`, a follow-up), and what the fake platform holds at the end (the
bot's messages as finally posted or edited, in the platform's own markup) or what the
terminal showed is drawn in the platform's style:

    docs/pictures/slack.svg     a thread in #general, mrkdwn rendered
    docs/pictures/discord.svg   the thread the mention opened, dark theme, the private
                                /persona answer and the reply to the follow-up as Discord
                                shows them
    docs/pictures/telegram.svg  a private chat, as bubbles, from the message entities
    docs/pictures/terminal.svg  the `parley chat` session in a terminal window

The message texts are exactly what the run produced; the decoration around them (avatars,
names, clock times from the tests' fixed clock, window chrome) is drawn here. The model's
answers are scripted, so the pictures show Parley's formatting, commands and threading, not
a model's wording. The SVG is written with the standard library only (svg.py).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE)]

from capture import Message, capture_all  # noqa: E402
from svg import (  # noqa: E402
    MONO,
    SANS,
    Theme,
    discord_blocks,
    document,
    esc,
    label,
    layout,
    slack_blocks,
    telegram_blocks,
    text_width,
)

from tests.conftest import FIXED_NOW  # noqa: E402

WIDTH = 720


def clock(index: int, *, twelve: bool = True) -> str:
    """The time shown on the index-th message: the tests' fixed clock, a minute per turn."""
    moment = FIXED_NOW + timedelta(minutes=index // 2)
    if twelve:
        return moment.strftime("%I:%M %p").lstrip("0")
    return moment.strftime("%H:%M")


def exchange(messages: list[Message]) -> str:
    return " / ".join(f"{m.author}: {m.text}" for m in messages)


def initials_avatar(
    cx: float, cy: float, size: float, name: str, fill: str, *, round_: bool, font_size: float
) -> list[str]:
    half = size / 2
    radius = half if round_ else size * 0.18
    return [
        f'<rect x="{cx - half:.1f}" y="{cy - half:.1f}" width="{size}" height="{size}" '
        f'rx="{radius:.1f}" fill="{fill}"/>',
        label(
            cx,
            cy + font_size * 0.36,
            name[:1].upper(),
            size=font_size,
            fill="#ffffff",
            weight="bold",
            anchor="middle",
        ),
    ]


def badge(x: float, baseline: float, text: str, *, fill: str, colour: str) -> tuple[str, float]:
    """A small "APP" / "BOT" tag starting at x; returns the SVG and its width."""
    wide = text_width(text, 10, frozenset({"b"})) + 8
    svg = (
        f'<rect x="{x:.1f}" y="{baseline - 11:.1f}" width="{wide:.1f}" height="14" rx="3" '
        f'fill="{fill}"/>'
        + label(
            x + wide / 2, baseline - 0.5, text, size=10, fill=colour, weight="bold", anchor="middle"
        )
    )
    return svg, wide


# --- Slack -------------------------------------------------------------------------------

SLACK = Theme(
    size=15,
    line=22,
    text="#1d1c1d",
    code_text="#e01e5a",
    pre_fill="#f8f8f8",
    pre_stroke="#dddddd",
    link="#1264a3",
    mention="#1264a3",
    command="#1264a3",
)
SLACK_AVATARS = {"Alice": "#7c3085", "Parley": "#2eb67d"}


def slack_svg(messages: list[Message]) -> str:
    body: list[str] = []
    y = 0.0
    # The thread pane's header.
    body.append(label(20, 34, "Thread", size=18, fill="#1d1c1d", weight="bold"))
    body.append(
        label(
            20 + text_width("Thread", 18, frozenset({"b"})) + 10,
            34,
            "# general",
            size=14,
            fill="#616061",
        )
    )
    y = 56
    body.append(f'<line x1="0" y1="{y}" x2="{WIDTH}" y2="{y}" stroke="#dddddd"/>')
    y += 14
    text_x, text_width_ = 68.0, WIDTH - 68 - 24
    for index, message in enumerate(messages):
        laid = layout(slack_blocks(message.text), text_width_, SLACK)
        body += initials_avatar(
            38,
            y + 18,
            36,
            message.author,
            SLACK_AVATARS.get(message.author, "#1264a3"),
            round_=False,
            font_size=16,
        )
        x = text_x
        body.append(label(x, y + 13, message.author, size=15, fill="#1d1c1d", weight="bold"))
        x += text_width(message.author, 15, frozenset({"b"})) + 6
        if message.bot:
            tag, wide = badge(x, y + 13, "APP", fill="#e8e8e8", colour="#616061")
            body.append(tag)
            x += wide + 6
        body.append(label(x, y + 13, clock(index), size=12, fill="#616061"))
        body += laid.draw(text_x, y + 20)
        y += max(40, 20 + laid.height) + 14
        if index == 0 and len(messages) > 1:
            replies = len(messages) - 1
            text = f"{replies} {'reply' if replies == 1 else 'replies'}"
            body.append(label(20, y + 4, text, size=13, fill="#616061"))
            start = 20 + text_width(text, 13) + 10
            body.append(
                f'<line x1="{start:.1f}" y1="{y:.1f}" x2="{WIDTH - 20}" y2="{y:.1f}" '
                f'stroke="#dddddd"/>'
            )
            y += 22
    height = y + 6
    frame = [
        f'<rect x="0.5" y="0.5" width="{WIDTH - 1}" height="{height - 1:.0f}" rx="8" '
        f'fill="#ffffff" stroke="#dddddd"/>'
    ]
    return document(
        WIDTH,
        height,
        frame + body,
        title="Parley answering in a Slack thread",
        desc=exchange(messages),
    )


# --- Discord -----------------------------------------------------------------------------

DISCORD = Theme(
    size=15,
    line=22,
    text="#dbdee1",
    bold="#f2f3f5",
    code_text="#e3e5e8",
    pre_fill="#2b2d31",
    pre_stroke="#1e1f22",
    pre_text="#dbdee1",
    link="#00a8fc",
    mention="#c9cdfb",
    command="#c9cdfb",
)
DISCORD_AVATARS = {"Alice": "#eb459e", "Parley": "#5865f2"}


def discord_svg(messages: list[Message]) -> str:
    body: list[str] = []
    thread = next((m.thread for m in messages if m.thread), "")
    body.append(label(18, 30, "#", size=20, fill="#80848e", weight="bold"))
    x = 38
    body.append(label(x, 30, "general", size=15, fill="#949ba4", weight="bold"))
    x += text_width("general", 15, frozenset({"b"})) + 10
    body.append(label(x, 30, "\u203a", size=18, fill="#949ba4"))
    x += 18
    body.append(label(x, 30, thread, size=15, fill="#f2f3f5", weight="bold"))
    y = 48.0
    body.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="2" fill="#26282c"/>')
    y += 14
    text_x, box = 72.0, WIDTH - 72 - 20
    pending_command = ""
    for index, message in enumerate(messages):
        if message.note.startswith("used "):
            pending_command = f"{message.author} {message.note}"  # above the answer, as Discord
            continue
        top = y
        context = ""
        if pending_command:
            context = pending_command
            pending_command = ""
        elif message.note and message.note.startswith("@"):
            context = message.note
        private = message.note == "Only you can see this"
        laid = layout(discord_blocks(message.text), box, DISCORD)
        block_height = (22 if context else 0) + 22 + laid.height + (22 if private else 0)
        if private:
            body.append(
                f'<rect x="0" y="{top - 4:.1f}" width="{WIDTH}" '
                f'height="{block_height + 8:.1f}" fill="#5865f2" fill-opacity="0.08"/>'
            )
            body.append(
                f'<rect x="0" y="{top - 4:.1f}" width="2" '
                f'height="{block_height + 8:.1f}" fill="#5865f2"/>'
            )
        if context:
            # The reply line: a bent connector from above the avatar to a small avatar.
            body.append(
                f'<path d="M 38 {y + 20:.1f} V {y + 12:.1f} Q 38 {y + 8:.1f} 42 '
                f'{y + 8:.1f} H 66" fill="none" stroke="#4e5058" stroke-width="2"/>'
            )
            body += initials_avatar(
                78, y + 9, 16, "Alice", DISCORD_AVATARS["Alice"], round_=True, font_size=9
            )
            who, _, rest = context.partition(" ")
            if who.startswith("@"):
                body.append(label(90, y + 13, who, size=13, fill="#f2f3f5", weight="bold"))
                body.append(
                    label(
                        90 + text_width(who, 13, frozenset({"b"})) + 6,
                        y + 13,
                        rest,
                        size=13,
                        fill="#b5bac1",
                    )
                )
            else:
                body.append(label(90, y + 13, who, size=13, fill="#f2f3f5", weight="bold"))
                x = 90 + text_width(who, 13, frozenset({"b"})) + 5
                verb, _, command = rest.partition(" ")
                body.append(label(x, y + 13, verb, size=13, fill="#b5bac1"))
                x += text_width(verb, 13) + 5
                body.append(label(x, y + 13, command, size=13, fill="#00a8fc"))
            y += 22
        body += initials_avatar(
            38,
            y + 20,
            40,
            message.author,
            DISCORD_AVATARS.get(message.author, "#5865f2"),
            round_=True,
            font_size=17,
        )
        x = text_x
        body.append(label(x, y + 15, message.author, size=15, fill="#f2f3f5", weight="bold"))
        x += text_width(message.author, 15, frozenset({"b"})) + 6
        if message.bot:
            tag, wide = badge(x, y + 14, "APP", fill="#5865f2", colour="#ffffff")
            body.append(tag)
            x += wide + 6
        body.append(label(x, y + 15, f"Today at {clock(index)}", size=12, fill="#949ba4"))
        body += laid.draw(text_x, y + 22)
        y += 22 + laid.height
        if private:
            body.append(label(text_x, y + 15, "Only you can see this", size=12, fill="#949ba4"))
            x = text_x + text_width("Only you can see this", 12) + 3
            body.append(label(x, y + 15, "•", size=12, fill="#949ba4"))
            body.append(label(x + 11, y + 15, "Dismiss message", size=12, fill="#00a8fc"))
            y += 22
        y = max(y, top + 44) + 18
    height = y + 4
    frame = [f'<rect x="0" y="0" width="{WIDTH}" height="{height:.0f}" rx="8" fill="#313338"/>']
    return document(
        WIDTH,
        height,
        frame + body,
        title="Parley answering in a Discord thread",
        desc=exchange(messages),
    )


# --- Telegram ----------------------------------------------------------------------------

TELEGRAM = Theme(
    size=15,
    line=21,
    text="#000000",
    code_text="#2a5885",
    pre_fill="#eef3f7",
    pre_stroke="#d9e3ec",
    pre_text="#1f3a56",
    link="#168acd",
    mention="#168acd",
    command="#168acd",
)
BUBBLE_TEXT = 430


def telegram_svg(messages: list[Message]) -> str:
    body: list[str] = []
    body += initials_avatar(38, 32, 42, "Parley", "#3ca5e0", round_=True, font_size=18)
    body.append(label(70, 28, "Parley", size=16, fill="#000000", weight="bold"))
    body.append(label(70, 47, "bot", size=13, fill="#8a8a8a"))
    y = 64.0
    bubbles: list[str] = []
    y += 14
    for index, message in enumerate(messages):
        outgoing = not message.bot
        laid = layout(telegram_blocks(message.text, message.entities), BUBBLE_TEXT, TELEGRAM)
        stamp = clock(index, twelve=False)
        stamp_width = text_width(stamp, 11) + (20 if outgoing else 0)
        last = laid.items[-1] if laid.items else None
        last_width = 0.0
        if last and last[0] == "line":
            _, runs, _ = last[1]  # type: ignore[misc]
            last_width = sum(text_width(t, 15, s, TELEGRAM.code_scale) for t, s in runs)
        inner = max(laid.width, 60.0)
        if last and last[0] == "line" and last_width + stamp_width + 14 <= BUBBLE_TEXT:
            inner = max(inner, last_width + stamp_width + 14)
            extra = 0.0  # the time sits at the end of the last line
        else:
            inner = max(inner, stamp_width)
            extra = 16.0
        wide, high = inner + 24, laid.height + 14 + extra
        x = WIDTH - 16 - wide if outgoing else 16.0
        fill = "#effdde" if outgoing else "#ffffff"
        bubbles.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{wide:.1f}" height="{high:.1f}" '
            f'rx="12" fill="{fill}" filter="url(#lift)"/>'
        )
        bubbles += laid.draw(x + 12, y + 7)
        stamp_colour = "#5fad56" if outgoing else "#a0acb6"
        right = x + wide - 10
        if outgoing:
            bubbles.append(
                label(
                    right,
                    y + high - 8,
                    "✓✓",
                    size=11,
                    fill=stamp_colour,
                    anchor="end",
                    extra='letter-spacing="-3" ',
                )
            )
            right -= 18
        bubbles.append(label(right, y + high - 8, stamp, size=11, fill=stamp_colour, anchor="end"))
        y += high + 8
    height = y + 10
    frame = [
        '<defs><filter id="lift" x="-5%" y="-5%" width="110%" height="120%">'
        '<feDropShadow dx="0" dy="1" stdDeviation="0.6" flood-color="#000000" '
        'flood-opacity="0.18"/></filter>'
        '<linearGradient id="wall" x1="0" y1="0" x2="1" y2="1">'
        '<stop offset="0" stop-color="#d3e2b8"/><stop offset="0.5" stop-color="#b8d3a8"/>'
        '<stop offset="1" stop-color="#9fc3a6"/></linearGradient></defs>',
        f'<rect x="0" y="0" width="{WIDTH}" height="{height:.0f}" rx="8" fill="url(#wall)"/>',
        f'<path d="M 0 8 Q 0 0 8 0 H {WIDTH - 8} Q {WIDTH} 0 {WIDTH} 8 V 64 H 0 Z" '
        f'fill="#ffffff"/>',
        f'<line x1="0" y1="64" x2="{WIDTH}" y2="64" stroke="#dadada"/>',
    ]
    return document(
        WIDTH,
        height,
        frame + body + bubbles,
        title="A private chat with Parley on Telegram",
        desc=exchange(messages),
    )


# --- the terminal ------------------------------------------------------------------------

TERMINAL_SIZE = 13
TERMINAL_LINE = 18
COLUMNS = 90


def _terminal_lines(shown: str) -> list[str]:
    """What the terminal showed, after the command that started it, word-wrapped."""
    lines = []
    for line in ["$ parley chat", *shown.rstrip("\n").split("\n")]:
        while len(line) > COLUMNS:
            cut = line.rfind(" ", 0, COLUMNS + 1)
            cut = cut if cut > 0 else COLUMNS
            lines.append(line[:cut])
            line = line[cut:].lstrip(" ")
        lines.append(line)
    return lines


def terminal_svg(shown: str) -> str:
    width = 32 + COLUMNS * TERMINAL_SIZE * 0.602 + 8
    lines = _terminal_lines(shown)
    body: list[str] = []
    top = 30 + 14
    prompts = {"$ ": "#6cc644", "you> ": "#4fc1ff", "Parley> ": "#d7a6ff"}
    for number, line in enumerate(lines):
        baseline = top + TERMINAL_SIZE + number * TERMINAL_LINE
        prefix = next((p for p in prompts if line.startswith(p)), "")
        rest = line[len(prefix) :]
        spans = ""
        if prefix:
            spans += f'<tspan fill="{prompts[prefix]}" font-weight="bold">{esc(prefix)}</tspan>'
        typed = prefix in ("$ ", "you> ")
        spans += f'<tspan fill="{"#ffffff" if typed else "#d4d4d4"}">{esc(rest)}</tspan>'
        body.append(
            f'<text x="16" y="{baseline:.1f}" font-family="{esc(MONO)}" '
            f'font-size="{TERMINAL_SIZE}" xml:space="preserve">{spans}</text>'
        )
    height = top + len(lines) * TERMINAL_LINE + 14
    frame = [
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" rx="8" fill="#1e1e1e"/>',
        f'<path d="M 0 8 Q 0 0 8 0 H {width - 8:.0f} Q {width:.0f} 0 {width:.0f} 8 V 30 H 0 Z" '
        f'fill="#323233"/>',
        '<circle cx="18" cy="15" r="6" fill="#ff5f57"/>',
        '<circle cx="38" cy="15" r="6" fill="#febc2e"/>',
        '<circle cx="58" cy="15" r="6" fill="#28c840"/>',
        label(width / 2, 19.5, "parley chat", size=12, fill="#a0a0a0", anchor="middle", font=SANS),
    ]
    return document(
        width,
        height,
        frame + body,
        title="A parley chat session in a terminal",
        desc=" / ".join(lines),
    )


def main() -> None:
    shown = asyncio.run(capture_all())
    pictures = {
        "slack.svg": slack_svg(shown["slack"]),
        "discord.svg": discord_svg(shown["discord"]),
        "telegram.svg": telegram_svg(shown["telegram"]),
        "terminal.svg": terminal_svg(shown["terminal"]),
    }
    for name, svg in pictures.items():
        (HERE / name).write_text(svg, encoding="utf-8")
        print(f"wrote {(HERE / name).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
