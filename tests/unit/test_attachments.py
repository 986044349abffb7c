"""Images, voice notes and files through the engine: downloaded with the platform's fetcher,
downscaled or transcribed or read, stored, and sent to the scripted model through the real
`openai` client. The platforms' own downloads are tested with their SDKs in tests/platforms."""

from __future__ import annotations

import asyncio
import base64
import io
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from core.attachments import (
    AUDIO,
    DOWNLOADS_AT_ONCE,
    FILE,
    IMAGE,
    Attachment,
    AttachmentReader,
    TooLarge,
    file_text,
    image_tokens,
    kind_of,
    prepare_image,
    sees_images,
)
from core.events import Delta, Final, Refused
from core.storage.tables import attachments, messages
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import turn


def png(width: int, height: int, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def photo(name: str = "photo.png", data: bytes = b"", size: int | None = None) -> Attachment:
    return Attachment(IMAGE, name, "image/png", len(data) if size is None else size, ref=name)


class Files:
    """The platform's side of downloads: serves bytes by ref and records each download."""

    def __init__(self, **files: bytes) -> None:
        self.files = files
        self.downloads: list[str] = []

    async def fetch(self, attachment: Attachment, limit: int) -> bytes:
        self.downloads.append(attachment.ref)
        data = self.files[attachment.ref]
        if len(data) > limit:
            raise TooLarge(len(data))
        return data


def user_content(request: dict[str, Any]) -> Any:
    return [m for m in request["messages"] if m["role"] == "user"][-1]["content"]


def decoded(part: dict[str, Any]) -> Image.Image:
    url = part["image_url"]["url"]
    header, data = url.split(",", 1)
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


# --- the pieces --------------------------------------------------------------------------


def test_image_tokens_follow_openais_published_examples() -> None:
    # https://platform.openai.com/docs/guides/images-vision (high detail)
    assert image_tokens(1024, 1024) == 765
    assert image_tokens(2048, 4096) == 1105
    assert image_tokens(100, 100) == 255


def test_a_large_photo_is_downscaled_to_what_vision_models_use() -> None:
    image = prepare_image(png(4000, 3000))
    assert (image.width, image.height, image.mime) == (1024, 768, "image/jpeg")
    assert image.tokens == image_tokens(1024, 768) == 85 + 170 * 4
    assert Image.open(io.BytesIO(image.data)).size == (1024, 768)


def test_transparency_is_kept_as_png_and_garbage_is_refused() -> None:
    out = io.BytesIO()
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(out, "PNG")
    assert prepare_image(out.getvalue()).mime == "image/png"
    with pytest.raises(ValueError):
        prepare_image(b"not an image at all")


def test_kinds_and_readable_files() -> None:
    assert kind_of("IMG_1.JPG") == IMAGE
    assert kind_of("voice", "audio/ogg") == AUDIO
    assert kind_of("report.pdf", "application/pdf") == FILE
    assert file_text(b"a,b\n1,2\n", "data.csv") == "a,b\n1,2\n"
    assert file_text(b"\xef\xbb\xbfprint('hi')", "main.py") == "print('hi')"
    assert file_text(b"PK\x03\x04\x00\x00binary", "slides.pptx") is None
    assert file_text(b"\x00\x01\x02", "blob.bin") is None


def test_which_models_see_images() -> None:
    assert sees_images("gpt-4o-mini") and sees_images("openai/gpt-5-mini") and sees_images("o1")
    assert not sees_images("gpt-3.5-turbo") and not sees_images("o1-mini")
    assert not sees_images("qwen2.5-coder-1.5b-instruct")
    assert sees_images("my-local-model", "always") and not sees_images("gpt-4o", "never")


# --- through the engine ------------------------------------------------------------------


async def test_a_photo_with_its_caption_reaches_the_model_and_stays_in_the_conversation(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    files = Files(**{"photo.png": png(3000, 2000)})
    fake_openai.reply("A red rectangle.")
    fake_openai.reply("Still red.")
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        events = await turn(
            runtime.engine, "what is in this picture?", attachments=(photo("photo.png"),)
        )
        assert isinstance(events[-1], Final) and events[-1].text == "A red rectangle."
        text, image = user_content(fake_openai.chat_requests[0])
        assert text == {"type": "text", "text": "alice: what is in this picture?"}
        assert image["type"] == "image_url" and decoded(image).size == (1152, 768)

        # The next turn sends the stored image again, without downloading it again.
        await turn(runtime.engine, "and its colour?")
        history = fake_openai.chat_requests[1]["messages"]
        earlier = next(m for m in history if m["role"] == "user")["content"]
        assert earlier[0]["text"] == "alice: what is in this picture?"
        assert decoded(earlier[1]).size == (1152, 768)
        assert files.downloads == ["photo.png"]

    database = create_async_engine(database_url)
    try:
        async with database.connect() as connection:
            rows = (await connection.execute(select(attachments))).all()
            stored = (await connection.execute(select(messages.c.images))).scalars().all()
    finally:
        await database.dispose()
    [row] = rows
    assert (row.kind, row.name, row.mime, row.user_id, row.platform) == (
        "image",
        "photo.png",
        "image/jpeg",
        "U1",
        "test",
    )
    assert row.tokens == image_tokens(1152, 768) and Image.open(io.BytesIO(row.data)).size == (
        1152,
        768,
    )
    assert [images for images in stored if images] == [
        [{"id": row.id, "tokens": row.tokens, "name": "photo.png"}]
    ]


async def test_a_model_without_vision_gets_the_caption_and_the_user_a_note(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    files = Files(**{"photo.png": png(50, 50)})
    fake_openai.reply("From the caption alone: a cat.")
    async with engine_factory(PARLEY_VISION="never") as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        events = await turn(runtime.engine, "my cat", attachments=(photo("photo.png"),))
        note = "_The model I use cannot see images, so I did not see photo.png._"
        assert events[0] == Delta(note)
        assert isinstance(events[-1], Final)
        assert events[-1].text == f"{note}\n\nFrom the caption alone: a cat."
        assert user_content(fake_openai.chat_requests[0]) == "alice: my cat"
        assert files.downloads == []  # nothing to do with it: not downloaded

        # A photo alone is not sent to the model at all.
        events = await turn(runtime.engine, "", attachments=(photo("photo.png"),))
        assert events == [Refused(text=note.strip("_"), reason="attachments")]
        assert len(fake_openai.chat_requests) == 1


async def test_a_voice_note_is_transcribed_and_the_transcript_is_the_message(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str
) -> None:
    audio = b"OggS\x00\x02fake opus frames"
    files = Files(**{"voice-1": audio})
    fake_openai.transcript("What time is it in Tokyo?")
    fake_openai.reply("It is evening in Tokyo.")
    async with engine_factory(
        DATABASE_URL=database_url, PARLEY_TRANSCRIPTION_MODEL="whisper-local"
    ) as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        voice = Attachment(AUDIO, "voice.ogg", "audio/ogg", len(audio), ref="voice-1")
        events = await turn(runtime.engine, "", attachments=(voice,))
        assert isinstance(events[-1], Final) and events[-1].text == "It is evening in Tokyo."
    [sent] = fake_openai.transcriptions
    assert (sent.model, sent.filename, sent.data) == ("whisper-local", "voice.ogg", audio)
    assert user_content(fake_openai.chat_requests[0]) == "alice: What time is it in Tokyo?"
    database = create_async_engine(database_url)
    try:
        async with database.connect() as connection:
            stored = (
                (
                    await connection.execute(
                        select(messages.c.content).where(messages.c.role == "user")
                    )
                )
                .scalars()
                .all()
            )
            kept = (await connection.execute(select(attachments.c.kind, attachments.c.data))).all()
    finally:
        await database.dispose()
    assert stored == ["What time is it in Tokyo?"]
    assert [tuple(row) for row in kept] == [("audio", None)]  # the transcript, not the sound


async def test_a_failed_transcription_tells_the_user_and_calls_no_model(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    files = Files(**{"voice-1": b"OggS..."})
    fake_openai.transcription_error(500)
    async with engine_factory() as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        voice = Attachment(AUDIO, "voice.ogg", "audio/ogg", 7, ref="voice-1")
        events = await turn(runtime.engine, "", attachments=(voice,))
    assert events == [
        Refused(
            text="I could not transcribe voice.ogg; please try again or type it.",
            reason="attachments",
        )
    ]
    assert fake_openai.chat_requests == []


async def test_a_text_file_reaches_the_model_with_its_name_and_a_large_one_is_refused(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    notes = b"# Launch\nThe launch code word is PELICAN.\n"
    files = Files(**{"notes.md": notes, "huge.txt": b"x" * 3_000_000})
    fake_openai.reply("The code word is PELICAN.")
    async with engine_factory(PARLEY_MAX_ATTACHMENT_MB=2) as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        notes_file = Attachment(FILE, "notes.md", "text/markdown", len(notes), ref="notes.md")
        await turn(runtime.engine, "what is the code word?", attachments=(notes_file,))
        assert user_content(fake_openai.chat_requests[0]) == (
            "alice: what is the code word?\n\n"
            '<file name="notes.md">\n# Launch\nThe launch code word is PELICAN.\n</file>'
        )
        # Too large by the size the platform reported: refused before downloading.
        huge = Attachment(FILE, "huge.txt", "text/plain", 3_000_000, ref="huge.txt")
        events = await turn(runtime.engine, "", attachments=(huge,))
        assert events == [
            Refused(
                text="huge.txt is too large (3.0 MB); I take files up to 2.0 MB.",
                reason="attachments",
            )
        ]
        # The platform did not say how large: the download stops at the limit.
        unknown = Attachment(FILE, "huge.txt", "text/plain", 0, ref="huge.txt")
        events = await turn(runtime.engine, "", attachments=(unknown,))
        assert events[-1] == Refused(
            text="huge.txt is too large (3.0 MB); I take files up to 2.0 MB.",
            reason="attachments",
        )
    assert files.downloads == ["notes.md", "huge.txt"]
    assert len(fake_openai.chat_requests) == 1


async def test_an_older_image_gives_way_to_a_placeholder_when_the_window_is_full(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    files = Files(**{"chart.png": png(300, 300)})  # 85 + 170 tokens
    for _ in range(3):
        fake_openai.reply("ok")
    # Room for the system prompt and all three turns' words, not for the image too (the
    # test passes from 800 to 1,000 tokens: the middle leaves room for the persona to change).
    async with engine_factory(PARLEY_CONTEXT_TOKENS=900, PARLEY_REPLY_TOKENS=100) as runtime:
        runtime.engine.add_fetcher("test", files.fetch)
        await turn(runtime.engine, "look", attachments=(photo("chart.png"),))
        await turn(runtime.engine, "word " * 60)
        await turn(runtime.engine, "more " * 200)
    first, second, third = (user_messages(r) for r in fake_openai.chat_requests)
    assert isinstance(first[0]["content"], list)  # the image, while there was room
    assert isinstance(second[0]["content"], list)
    # The third request has no room for the image, but for the words around it.
    assert third[0]["content"] == "alice: look\n[image: chart.png]"
    assert len(third) == 3


def user_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "user"]


async def test_an_albums_photos_are_downloaded_side_by_side_and_kept_in_order() -> None:
    """Four at a time: the first four downloads are all under way before any of them ends;
    what they hold comes out in the order the attachments came, whichever ended first."""
    names = [f"p{i}.png" for i in range(6)]
    under_way: list[str] = []
    four_started = asyncio.Event()
    release = {name: asyncio.Event() for name in names}

    async def fetch(attachment: Attachment, limit: int) -> bytes:
        under_way.append(attachment.ref)
        if len(under_way) == DOWNLOADS_AT_ONCE:
            four_started.set()
        await release[attachment.ref].wait()
        return png(40 + names.index(attachment.ref), 30)

    reader = AttachmentReader(transcriber=None, max_download_bytes=10**6, max_file_chars=100)
    reading = asyncio.create_task(
        reader.read([photo(name, size=100) for name in names], fetch, vision=True)
    )
    await asyncio.wait_for(four_started.wait(), 5)
    await asyncio.sleep(0.05)
    assert under_way == names[:4]  # no fifth before one of them ends
    for name in reversed(names):  # the last ends first
        release[name].set()
    read = await asyncio.wait_for(reading, 10)
    assert under_way == names
    assert [k.name for k in read.images] == names
    assert [Image.open(io.BytesIO(k.data)).width for k in read.images] == [40, 41, 42, 43, 44, 45]
