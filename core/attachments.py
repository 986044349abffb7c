"""What users send besides text: images, voice notes and audio, files.

Adapters describe each attachment (`Attachment`, stored with the turn) and register a `Fetch`
that downloads one through their SDK; whichever process answers the turn downloads them. The
engine turns them into the turn's input with `AttachmentReader`: images become image parts
(downscaled, their token cost estimated), audio becomes its transcript, text-like files
become text with their name. What cannot be used gets a short note for the user.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Protocol

log = logging.getLogger(__name__)

IMAGE, AUDIO, FILE = "image", "audio", "file"

# The sizes OpenAI's vision models work at: an image is fitted in 2048 x 2048, then its
# shorter side to 768; larger uploads only cost bandwidth and storage.
MAX_LONG_SIDE = 2048
MAX_SHORT_SIDE = 768
JPEG_QUALITY = 85
# Above this many pixels an image is refused before decoding (a "decompression bomb").
MAX_PIXELS = 50_000_000

# Models that accept image parts, by name prefix (see `sees_images`).
VISION_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-4-turbo",
    "gpt-5",
    "o1-2",
    "o1-pro",
    "o3",
    "o4",
    "claude-3",
    "claude-sonnet",
    "claude-opus",
    "gemini",
    "llava",
    "qwen2.5-vl",
    "qwen2-vl",
    "gemma-3",
    "gemma3",
    "pixtral",
    "llama-3.2-11b-vision",
    "llama-3.2-90b-vision",
    "llama-4",
)
_ONE_O1 = "o1"  # plain "o1" sees images; "o1-mini" and "o1-preview" do not

TEXT_SUFFIXES = frozenset(
    [
        ".txt",
        ".text",
        ".md",
        ".markdown",
        ".rst",
        ".csv",
        ".tsv",
        ".json",
        ".jsonl",
        ".yaml",
        ".yml",
        ".toml",
        ".ini",
        ".cfg",
        ".conf",
        ".log",
        ".xml",
        ".html",
        ".htm",
        ".py",
        ".js",
        ".ts",
        ".tsx",
        ".jsx",
        ".java",
        ".kt",
        ".go",
        ".rs",
        ".rb",
        ".php",
        ".c",
        ".h",
        ".cc",
        ".cpp",
        ".hpp",
        ".cs",
        ".swift",
        ".sh",
        ".bash",
        ".zsh",
        ".ps1",
        ".sql",
        ".r",
        ".scala",
        ".lua",
        ".pl",
        ".m",
        ".dart",
        ".vue",
        ".svelte",
        ".css",
        ".scss",
        ".env",
        ".gitignore",
        ".dockerfile",
        ".tf",
        ".proto",
        ".graphql",
        ".tex",
        ".srt",
        ".vtt",
    ]
)
AUDIO_SUFFIXES = frozenset(
    [".ogg", ".oga", ".opus", ".mp3", ".m4a", ".mp4", ".mpeg", ".mpga", ".wav", ".webm", ".flac"]
)
IMAGE_SUFFIXES = frozenset([".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp"])


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment as the platform describes it; `ref` is what its adapter downloads it by
    (Slack's url_private_download, Telegram's file_id, Discord's attachment URL)."""

    kind: str  # IMAGE, AUDIO or FILE
    name: str
    mime: str = ""
    size: int = 0  # bytes, as the platform reports them; 0: unknown
    ref: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "mime": self.mime,
            "size": self.size,
            "ref": self.ref,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Attachment:
        return cls(
            kind=str(value["kind"]),
            name=str(value.get("name", "")),
            mime=str(value.get("mime", "")),
            size=int(value.get("size", 0)),
            ref=str(value.get("ref", "")),
        )


class TooLarge(Exception):
    """The attachment is larger than the limit (found before or while downloading).
    `limit`: the platform's own, when lower than the one asked for (Telegram's 20 MB)."""

    def __init__(self, size: int, limit: int | None = None) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
        self.limit = limit


Fetch = Callable[[Attachment, int], Awaitable[bytes]]
"""Downloads an attachment through the platform's SDK, at most `limit` bytes.

Raises TooLarge when it is larger (checked before downloading when the size is known), and
any other exception when the download fails."""


class Transcriber(Protocol):
    async def transcribe(self, data: bytes, name: str, mime: str) -> str:
        """The spoken words. Raises on failure (the user is told it could not be heard)."""
        ...


def kind_of(name: str, mime: str = "") -> str:
    """IMAGE, AUDIO or FILE, from the content type or, failing that, the name's suffix."""
    mime = mime.split(";")[0].strip().lower()
    if mime.startswith("image/") and mime != "image/svg+xml":
        return IMAGE
    if mime.startswith("audio/") or mime in ("video/ogg", "video/webm"):
        return AUDIO
    suffix = PurePosixPath(name.lower()).suffix
    if suffix in IMAGE_SUFFIXES:
        return IMAGE
    if suffix in AUDIO_SUFFIXES:
        return AUDIO
    return FILE


def sees_images(model: str, setting: str = "auto") -> bool:
    """Whether to send images to `model`: PARLEY_VISION's `always` or `never`, or (`auto`)
    whether the model's name is one of the vision models known here."""
    if setting != "auto":
        return setting == "always"
    name = model.lower().rsplit("/", 1)[-1]
    return name == _ONE_O1 or name.startswith(VISION_PREFIXES)


def image_tokens(width: int, height: int) -> int:
    """OpenAI's cost of an image at high detail, after the server's own scaling: 85 tokens,
    plus 170 per 512-pixel tile. Other servers charge differently; usage they report wins."""
    scale = min(1.0, MAX_LONG_SIDE / max(width, height))
    scale *= min(1.0, MAX_SHORT_SIDE / (min(width, height) * scale))
    return 85 + 170 * math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


@dataclass(frozen=True, slots=True)
class PreparedImage:
    data: bytes
    mime: str
    width: int
    height: int
    tokens: int


def prepare_image(data: bytes) -> PreparedImage:
    """The image downscaled to what vision models use and re-encoded (JPEG, or PNG when it
    has transparency). Raises ValueError when it is not an image Pillow can read."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > MAX_PIXELS:
                raise ValueError(f"{width}x{height} pixels is more than {MAX_PIXELS}")
            scale = min(
                1.0, MAX_LONG_SIDE / max(width, height), MAX_SHORT_SIDE / min(width, height)
            )
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            opened.draft("RGB", target)  # JPEG: decode at a fraction of the size, much faster
            image = ImageOps.exif_transpose(opened)  # phone photos are stored sideways
            image.thumbnail(target)
            keeps_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            out = io.BytesIO()
            if keeps_alpha:
                image.convert("RGBA").save(out, "PNG", optimize=True)
                mime = "image/png"
            else:
                image.convert("RGB").save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
                mime = "image/jpeg"
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc)) from exc
    w, h = image.size
    return PreparedImage(out.getvalue(), mime, w, h, image_tokens(w, h))


def file_text(data: bytes, name: str, mime: str = "") -> str | None:
    """The text of a text-like file (text, Markdown, CSV, JSON, code, HTML, PDF); None when it
    is not one (a binary, an office document)."""
    suffix = PurePosixPath(name.lower()).suffix
    mime = mime.split(";")[0].strip().lower()
    if suffix == ".pdf" or mime == "application/pdf":
        from core.knowledge.chunking import parse

        try:
            parsed = parse(data, name, "application/pdf")
        except Exception as exc:  # pypdf raises many kinds on a broken file
            log.info("could not read the PDF %s: %s", name, exc)
            return None
        return "\n\n".join(block.text for block in parsed.blocks)
    texty = (
        suffix in TEXT_SUFFIXES
        or mime.startswith("text/")
        or mime in ("application/json", "application/xml", "application/x-yaml")
    )
    if b"\x00" in data[:8192] or not (texty or not suffix):
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        if not texty:
            return None
        return data.decode("latin-1")  # a legacy text file: every byte is some character


@dataclass(frozen=True, slots=True)
class Kept:
    """An attachment's row for the `attachments` table: images keep their data."""

    kind: str
    name: str
    mime: str
    size: int
    tokens: int = 0
    data: bytes | None = None


@dataclass(slots=True)
class ReadAttachments:
    """A message's attachments as the turn's input."""

    texts: list[str] = field(default_factory=list)  # transcripts and files' text, in order
    images: list[Kept] = field(default_factory=list)  # to send as image parts
    kept: list[Kept] = field(default_factory=list)  # every attachment, for the table
    notes: list[str] = field(default_factory=list)  # for the user: what could not be used


# Attachments of one message downloaded and read at once: enough for an album to arrive
# together, few enough that a message of many large files does not hold them all in memory.
DOWNLOADS_AT_ONCE = 4


class AttachmentReader:
    """Downloads and reads a message's attachments within the configured limits."""

    def __init__(
        self,
        *,
        transcriber: Transcriber | None,
        max_download_bytes: int,
        max_file_chars: int,
    ) -> None:
        self._transcriber = transcriber
        self._max_download = max_download_bytes
        self._max_file_chars = max_file_chars

    async def read(
        self, attachments: Sequence[Attachment], fetch: Fetch | None, *, vision: bool
    ) -> ReadAttachments:
        """Reads them side by side (an album of ten photos need not wait for ten downloads in
        a row), at most DOWNLOADS_AT_ONCE, and gives what they hold in the order they came."""
        at_once = asyncio.Semaphore(DOWNLOADS_AT_ONCE)

        async def one(attachment: Attachment) -> ReadAttachments:
            part = ReadAttachments()
            async with at_once:
                await self._read_one(attachment, fetch, vision, part)
            return part

        read = ReadAttachments()
        for part in await asyncio.gather(*(one(a) for a in attachments)):
            read.texts += part.texts
            read.images += part.images
            read.kept += part.kept
            read.notes += part.notes
        return read

    async def _read_one(
        self, attachment: Attachment, fetch: Fetch | None, vision: bool, read: ReadAttachments
    ) -> None:
        name = attachment.name or attachment.kind
        if attachment.kind == IMAGE and not vision:
            read.notes.append(f"The model I use cannot see images, so I did not see {name}.")
            read.kept.append(Kept(IMAGE, name, attachment.mime, attachment.size))
            return
        if attachment.kind == AUDIO and self._transcriber is None:
            read.notes.append(f"I cannot listen to {name}: transcription is not set up here.")
            read.kept.append(Kept(AUDIO, name, attachment.mime, attachment.size))
            return
        data = await self._download(attachment, fetch, read)
        if data is None:
            return
        if attachment.kind == IMAGE:
            try:
                image = await asyncio.to_thread(prepare_image, data)
            except ValueError as exc:
                log.info("could not read the image %s: %s", name, exc)
                read.notes.append(f"I could not open the image {name}.")
                return
            kept = Kept(IMAGE, name, image.mime, len(data), image.tokens, image.data)
            read.images.append(kept)
            read.kept.append(kept)
        elif attachment.kind == AUDIO:
            assert self._transcriber is not None
            try:
                words = (await self._transcriber.transcribe(data, name, attachment.mime)).strip()
            except Exception as exc:
                log.warning("transcribing %s failed: %s", name, exc)
                read.notes.append(f"I could not transcribe {name}; please try again or type it.")
                return
            read.kept.append(Kept(AUDIO, name, attachment.mime, len(data)))
            if words:
                read.texts.append(words)
            else:
                read.notes.append(f"I heard no words in {name}.")
        else:
            text = await asyncio.to_thread(file_text, data, name, attachment.mime)
            if text is None:
                read.notes.append(
                    f"I can only read text files (text, Markdown, CSV, JSON, code, PDF); "
                    f"{name} is not one."
                )
                return
            if len(text) > self._max_file_chars:
                read.notes.append(
                    f"{name} is too long for me ({len(text):,} characters; I read up to "
                    f"{self._max_file_chars:,}). Send the part you want me to look at."
                )
                return
            read.kept.append(Kept(FILE, name, attachment.mime, len(data)))
            read.texts.append(f'<file name="{_quoted(name)}">\n{text.strip()}\n</file>')

    async def _download(
        self, attachment: Attachment, fetch: Fetch | None, read: ReadAttachments
    ) -> bytes | None:
        name = attachment.name or attachment.kind
        limit = self._max_download
        if attachment.size > limit:
            read.notes.append(_too_large(name, attachment.size, limit))
            return None
        if fetch is None:
            read.notes.append(f"I cannot download attachments here, so I did not see {name}.")
            return None
        try:
            return await fetch(attachment, limit)
        except TooLarge as exc:
            read.notes.append(_too_large(name, exc.size, exc.limit or limit))
        except Exception as exc:
            log.warning("downloading %s failed: %s", name, exc)
            read.notes.append(f"I could not download {name}; please send it again.")
        return None


def _too_large(name: str, size: int, limit: int) -> str:
    return f"{name} is too large ({_megabytes(size)}); I take files up to {_megabytes(limit)}."


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.0f} kB"


def _quoted(name: str) -> str:
    return name.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
