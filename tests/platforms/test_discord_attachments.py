"""Images, voice messages and files sent to the Discord bot: the attachment objects Discord
sends in MESSAGE_CREATE, the downloads through discord.py's CDN client against the fake
Discord's CDN, and the turn the model reads.

Attachment objects follow Discord's (https://discord.com/developers/docs/resources/message
#attachment-object) as discord.py's `Attachment` reads them: signed CDN URLs
(`?ex=..&is=..&hm=..&`), width and height for images, and for a voice message
`duration_secs` and `waveform`, in a message flagged IS_VOICE_MESSAGE.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from typing import Any

import aiohttp
import discord
import pytest
from PIL import Image
from sqlalchemy import select

from adapters.discord.translate import parse_message
from core import wording
from core.attachments import AUDIO, FILE, IMAGE, Attachment, TooLarge, prepare_image
from core.storage.tables import turns
from tests.fakes.discord_server import (
    ATTACHMENT_URL_LIFETIME,
    BOT_ID,
    BOT_USER,
    CHANNEL_ID,
    DM_CHANNEL_ID,
    IS_VOICE_MESSAGE,
    FakeDiscord,
    dm_message_create,
    message_create,
    next_snowflake,
)
from tests.fakes.openai_server import FakeOpenAI
from tests.platforms.running import Running
from tests.platforms.test_discord import contents, started_discord

MB = 1_000_000
# The start of an Ogg Opus file, as Discord's clients record voice messages.
OGG = b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01\x38\x01\x80\xbb" + bytes(64)
NOTES = b"milk\neggs\n"


def png(width: int = 4, height: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def with_attachments(
    payload: dict[str, Any], *attachments: dict[str, Any], flags: int = 0
) -> dict[str, Any]:
    return {**payload, "attachments": list(attachments), "flags": flags}


def mention(text: str = "") -> dict[str, Any]:
    return message_create(f"<@{BOT_ID}> {text}".strip(), mentions=[BOT_USER])


def attachment_of(data: dict[str, Any], kind: str) -> Attachment:
    """What the adapter makes of an attachment object Discord sent."""
    return Attachment(
        kind, data["filename"], data.get("content_type", ""), data["size"], data["url"]
    )


@pytest.fixture
def bot_factory(
    discord_fake: FakeDiscord, fake_openai: FakeOpenAI, sqlite_url: str
) -> Callable[..., Any]:
    return lambda **extra: started_discord(discord_fake, fake_openai, sqlite_url, **extra)


async def answered(started: Running, count: int = 1) -> None:
    """Until `count` turns have been answered and their answers delivered (streamed text
    alone may still be partial)."""
    async with asyncio.timeout(10):
        while True:
            async with started.database.connect() as connection:
                states = (await connection.execute(select(turns.c.state))).scalars().all()
            if sum(state == "delivered" for state in states) >= count:
                return
            await asyncio.sleep(0.02)


async def stored_turns(started: Running) -> list[tuple[str, Any]]:
    async with started.database.connect() as connection:
        rows = await connection.execute(
            select(turns.c.text, turns.c.attachments).order_by(turns.c.id)
        )
        return [(text, attachments) for text, attachments in rows]


# --- what Discord sends, as the engine receives it ------------------------------------------


async def test_payload_shapes_become_the_turns_attachments(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    photo = discord_fake.add_attachment(png(), "photo.png", "image/png")
    voice = discord_fake.add_attachment(
        OGG, "voice-message.ogg", "audio/ogg", channel_id=DM_CHANNEL_ID, duration_secs=2.4
    )
    report = discord_fake.add_attachment(b"%PDF-1.4\n%%EOF\n", "report.pdf", "application/pdf")
    notes = discord_fake.add_attachment(NOTES, "notes.txt", "text/plain; charset=utf-8")
    song = discord_fake.add_attachment(OGG, "song.opus", None)  # no content type: by name
    huge = discord_fake.add_attachment(b"PK\x03\x04", "data.zip", "application/zip", size=30 * MB)
    for _ in range(4):
        fake_openai.reply("Answer.")
    async with bot_factory() as started:
        captioned = with_attachments(mention("what is in this picture?"), photo)
        await discord_fake.dispatch("MESSAGE_CREATE", captioned)
        await answered(started)
        # A voice message: no content, the flag, one audio/ogg attachment.
        spoken = with_attachments(dm_message_create(""), voice, flags=IS_VOICE_MESSAGE)
        await discord_fake.dispatch("MESSAGE_CREATE", spoken)
        await answered(started, 2)
        several = with_attachments(mention("compare these"), report, notes, song)
        await discord_fake.dispatch("MESSAGE_CREATE", several)
        await answered(started, 3)
        oversized = with_attachments(dm_message_create("and this?"), huge)
        await discord_fake.dispatch("MESSAGE_CREATE", oversized)
        await answered(started, 4)
        stored = await stored_turns(started)
    assert stored == [
        ("what is in this picture?", [attachment_of(photo, IMAGE).as_json()]),
        ("", [attachment_of(voice, AUDIO).as_json()]),
        (
            "compare these",
            [
                attachment_of(report, FILE).as_json(),
                attachment_of(notes, FILE).as_json(),
                attachment_of(song, AUDIO).as_json(),
            ],
        ),
        ("and this?", [attachment_of(huge, FILE).as_json()]),
    ]
    assert stored[3][1][0]["size"] == 30 * MB  # as Discord reported it: refused unread
    assert stored[1][1][0]["ref"].startswith(f"{discord_fake.url}/attachments/{DM_CHANNEL_ID}/")


async def test_a_photo_without_a_caption_is_a_message_to_answer(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A red square.")
    fake_openai.reply("Red again.")
    dm_photo = discord_fake.add_attachment(png(), "square.png", "image/png")
    channel_photo = discord_fake.add_attachment(png(), "again.png", "image/png")
    ignored = discord_fake.add_attachment(png(), "chatter.png", "image/png")
    async with bot_factory(PARLEY_VISION="always") as started:
        await discord_fake.dispatch(
            "MESSAGE_CREATE", with_attachments(dm_message_create(""), dm_photo)
        )
        await answered(started)
        assert contents(discord_fake, DM_CHANNEL_ID) == ["A red square."]
        # In a channel: only with a mention, as for text; the thread is named after the file.
        await discord_fake.dispatch("MESSAGE_CREATE", with_attachments(message_create(""), ignored))
        bare = with_attachments(mention(), channel_photo)
        await discord_fake.dispatch("MESSAGE_CREATE", bare)
        await answered(started, 2)
        assert contents(discord_fake, bare["id"]) == ["Red again."]
        stored = await stored_turns(started)
    assert stored == [
        ("", [attachment_of(dm_photo, IMAGE).as_json()]),
        ("", [attachment_of(channel_photo, IMAGE).as_json()]),
    ]
    [thread] = discord_fake.threads
    assert (thread["id"], thread["name"]) == (bare["id"], "again.png")


async def test_stickers_alone_still_get_the_word_that_they_cannot_be_seen(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    sticker = {"id": next_snowflake(), "name": "wave", "format_type": 1}
    async with bot_factory() as started:
        await discord_fake.dispatch(
            "MESSAGE_CREATE", {**dm_message_create(""), "sticker_items": [sticker]}
        )
        await answered(started)
        assert contents(discord_fake, DM_CHANNEL_ID) == [wording.ATTACHMENT_ONLY]
    assert fake_openai.chat_requests == []


async def test_a_forwarded_photo_is_the_forwards_attachment(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A cat, it seems.")
    photo = discord_fake.add_attachment(png(), "cat.png", "image/png", channel_id="9000")
    # Discord sends a forward with empty content; the original is in message_snapshots.
    forward = dm_message_create("", forwarded="look at this")
    forward["message_snapshots"][0]["message"]["attachments"] = [photo]
    async with bot_factory() as started:
        await discord_fake.dispatch("MESSAGE_CREATE", forward)
        await answered(started)
        stored = await stored_turns(started)
    assert stored == [("look at this", [attachment_of(photo, IMAGE).as_json()])]


def test_a_voice_message_is_audio_by_its_flag() -> None:
    """A voice message whose attachment came without a content type is audio all the same."""
    voice: dict[str, Any] = {
        "id": "1100000000000000002",
        "filename": "voice-message.ogg",
        "size": 9150,
        "url": "https://cdn.discordapp.com/attachments/5/1100000000000000002/voice-message.ogg",
        "proxy_url": "https://media.discordapp.net/attachments/5/1100000000000000002/voice-message.ogg",
        "duration_secs": 3.2,
        "waveform": base64.b64encode(bytes(32)).decode(),
    }
    flagged = with_attachments(dm_message_create(""), voice, flags=IS_VOICE_MESSAGE)
    parsed = parse_message(flagged, bot_id=BOT_ID)
    assert parsed is not None
    assert parsed.attachments == (Attachment(AUDIO, "voice-message.ogg", "", 9150, voice["url"]),)


# --- downloads through discord.py -----------------------------------------------------------


async def test_fetch_downloads_the_exact_bytes_by_the_stored_url(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    photo = png(40, 30)
    data = discord_fake.add_attachment(photo, "photo.png", "image/png")
    fake_openai.reply("Noted.")
    async with bot_factory() as started:
        message = with_attachments(dm_message_create("keep this"), data)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
        # As a turn answered in another process reads it: from the stored JSON.
        [(_, [stored])] = await stored_turns(started)
        downloads_before = len(discord_fake.downloads)
        fetched = await started.bot.fetch(Attachment.from_json(stored), 20 * MB)
    assert fetched == photo
    download = discord_fake.downloads[downloads_before]
    assert (download.path, download.status) == (
        f"/attachments/{CHANNEL_ID}/{data['id']}/photo.png",
        200,
    )
    assert set(download.query) == {"ex", "is", "hm"}
    assert "Authorization" not in download.headers  # the bot token stays with the API


async def test_fetch_refuses_a_file_reported_too_large_without_downloading_it(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord
) -> None:
    data = discord_fake.add_attachment(b"x" * 100, "big.bin", "application/octet-stream")
    async with bot_factory() as started:
        with pytest.raises(TooLarge) as refused:
            await started.bot.fetch(Attachment(FILE, "big.bin", "", 25 * MB, data["url"]), 20 * MB)
    assert refused.value.size == 25 * MB
    assert discord_fake.downloads == []


async def test_fetch_refuses_more_bytes_than_the_limit_when_discord_reported_less(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord
) -> None:
    data = discord_fake.add_attachment(b"y" * 5000, "log.txt", "text/plain", size=10)
    async with bot_factory() as started:
        with pytest.raises(TooLarge) as refused:
            await started.bot.fetch(Attachment(FILE, "log.txt", "", 10, data["url"]), 4096)
    assert refused.value.size == 5000


async def test_an_expired_url_is_an_error(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord
) -> None:
    data = discord_fake.add_attachment(b"hello", "hello.txt", "text/plain")
    clock = discord_fake.cdn_clock
    discord_fake.cdn_clock = lambda: clock() + ATTACHMENT_URL_LIFETIME + 60
    async with bot_factory() as started:
        with pytest.raises(discord.NotFound):
            await started.bot.fetch(Attachment(FILE, "hello.txt", "", 5, data["url"]), MB)
    [download] = discord_fake.downloads
    assert download.status == 404


async def test_the_fake_cdn_serves_signed_urls_only_as_discord_does(
    discord_fake: FakeDiscord,
) -> None:
    data = discord_fake.add_attachment(b"hello", "hello.txt", "text/plain")
    unsigned = data["url"].split("?")[0]
    tampered = data["url"].replace("hm=", "hm=0")
    async with aiohttp.ClientSession() as session:
        answers = []
        for url in (data["url"], data["proxy_url"], unsigned, tampered):
            async with session.get(url) as response:
                answers.append((response.status, await response.read()))
    gone = (404, b"This content is no longer available.")
    assert answers == [(200, b"hello"), (200, b"hello"), gone, gone]
    assert [d.path.startswith("/media/") for d in discord_fake.downloads] == [
        False,
        True,
        False,
        False,
    ]


# --- what the model reads --------------------------------------------------------------------


async def test_a_photo_and_its_caption_reach_the_model(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A red rectangle.")
    photo = png(40, 30)
    data = discord_fake.add_attachment(photo, "shape.png", "image/png", channel_id=DM_CHANNEL_ID)
    async with bot_factory(PARLEY_VISION="always") as started:
        message = with_attachments(dm_message_create("what is in this picture?"), data)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
        assert contents(discord_fake, DM_CHANNEL_ID) == ["A red rectangle."]
    prepared = prepare_image(photo)
    url = f"data:{prepared.mime};base64,{base64.b64encode(prepared.data).decode()}"
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Alice: what is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    [download] = discord_fake.downloads
    assert (download.path, download.status) == (
        f"/attachments/{DM_CHANNEL_ID}/{data['id']}/shape.png",
        200,
    )


async def test_a_voice_message_is_transcribed_and_answered(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.transcript("what time is it in Tokyo")
    fake_openai.reply("It is 9 pm in Tokyo.")
    voice = discord_fake.add_attachment(
        OGG, "voice-message.ogg", "audio/ogg", channel_id=DM_CHANNEL_ID, duration_secs=1.8
    )
    async with bot_factory() as started:
        message = with_attachments(dm_message_create(""), voice, flags=IS_VOICE_MESSAGE)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
        assert contents(discord_fake, DM_CHANNEL_ID) == ["It is 9 pm in Tokyo."]
    [heard] = fake_openai.transcriptions
    assert (heard.model, heard.filename, heard.data) == ("whisper-1", "voice-message.ogg", OGG)
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": "Alice: what time is it in Tokyo",
    }


async def test_a_text_file_reaches_the_model_with_its_name(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Two items.")
    notes = discord_fake.add_attachment(NOTES, "notes.txt", "text/plain; charset=utf-8")
    async with bot_factory() as started:
        message = with_attachments(mention("how many items?"), notes)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
        assert contents(discord_fake, message["id"]) == ["Two items."]
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": 'Alice: how many items?\n\n<file name="notes.txt">\nmilk\neggs\n</file>',
    }


async def test_an_oversized_file_is_not_downloaded_and_the_user_is_told(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Here is what I can say.")
    huge = discord_fake.add_attachment(
        b"PK\x03\x04", "data.zip", "application/zip", channel_id=DM_CHANNEL_ID, size=30 * MB
    )
    async with bot_factory() as started:
        message = with_attachments(dm_message_create("what is in it?"), huge)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
    assert contents(discord_fake, DM_CHANNEL_ID) == [
        "_data.zip is too large (30.0 MB); I take files up to 20.0 MB._\n\nHere is what I can say."
    ]
    assert discord_fake.downloads == []


async def test_a_turn_answered_after_the_url_expired_asks_for_the_file_again(
    bot_factory: Callable[..., Any], discord_fake: FakeDiscord, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("I only have your words.")
    notes = discord_fake.add_attachment(NOTES, "notes.txt", "text/plain", channel_id=DM_CHANNEL_ID)
    clock = discord_fake.cdn_clock
    # The turn is run (say, after an outage) once Discord's signature has expired.
    discord_fake.cdn_clock = lambda: clock() + ATTACHMENT_URL_LIFETIME + 60
    async with bot_factory() as started:
        message = with_attachments(dm_message_create("read this"), notes)
        await discord_fake.dispatch("MESSAGE_CREATE", message)
        await answered(started)
    assert contents(discord_fake, DM_CHANNEL_ID) == [
        "_I could not download notes.txt; please send it again._\n\nI only have your words."
    ]
    assert [d.status for d in discord_fake.downloads] == [404]
