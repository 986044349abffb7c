"""Photos, voice notes, audio and documents sent to the Telegram bot, through the real
python-telegram-bot against the fake Bot API.

Shapes are the Bot API's (Message.photo is an array of PhotoSize, smallest first; Voice,
Audio and Document carry `file_id`, `file_unique_id`, `file_size` and a `mime_type`;
getFile answers a File with its `file_path`, downloaded from `/file/bot<TOKEN>/<path>`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select
from telegram.error import BadRequest

from adapters.telegram.bot import TelegramBot
from core.attachments import Attachment, TooLarge, prepare_image
from core.storage.tables import turns
from tests.fakes.openai_server import FakeOpenAI, Reply
from tests.fakes.telegram_server import (
    GROUP_CHAT_ID,
    FakeTelegram,
    free_port,
    group_message,
    media_message,
    next_message_id,
    post_update,
    private_message,
    user,
    with_fields,
)
from tests.platforms.running import Running
from tests.platforms.test_telegram import running, telegram_settings

ALICE = 1  # a private chat's id is its user's id
ANSWER = "Got it."
OGG = b"OggS\x00\x02" + bytes(range(256)) * 4  # a voice note's bytes (the fake hears any)


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 200)).save(out, "JPEG", quality=80)
    return out.getvalue()


def photo_sizes(telegram: FakeTelegram, *sizes: tuple[int, int]) -> list[dict[str, Any]]:
    """A Message's `photo`: the same picture at each (width, height), smallest first, as
    Telegram sends it, each stored in the fake as its own file."""
    return [
        {**telegram.add_file(jpeg(width, height), "photo"), "width": width, "height": height}
        for width, height in sizes
    ]


def settings(telegram: FakeTelegram, fake_openai: FakeOpenAI, database: str, **extra: Any) -> Any:
    """The bot's settings, with images sent to the model whatever its name."""
    return telegram_settings(telegram, fake_openai, database, PARLEY_VISION="always", **extra)


@pytest.fixture
async def telegram() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        yield fake


async def stored(bot: Running) -> list[tuple[str, Any]]:
    """(text, attachments) of every turn, oldest first."""
    query = select(turns.c.text, turns.c.attachments).order_by(turns.c.id)
    async with bot.database.connect() as connection:
        return [(text, attachments) for text, attachments in await connection.execute(query)]


async def answered(telegram: FakeTelegram, chat: int, count: int = 1) -> None:
    await telegram.wait_for(
        lambda: telegram.texts_in(chat) == [ANSWER] * count, what=f"{count} answer(s) in {chat}"
    )


def bot_of(running_bot: Running) -> TelegramBot:
    bot = running_bot.bot
    assert isinstance(bot, TelegramBot)
    return bot


# --- what an update becomes ---------------------------------------------------------------


async def test_a_photo_with_a_caption_is_its_largest_size_and_the_caption(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        sizes = photo_sizes(telegram, (90, 68), (320, 240), (1280, 960))
        telegram.push(media_message("photo", "what is in this picture?", media=sizes))
        await answered(telegram, ALICE)
        largest = sizes[-1]
        assert await stored(bot) == [
            (
                "what is in this picture?",
                [
                    {
                        "kind": "image",
                        "name": "photo.jpg",
                        "mime": "image/jpeg",
                        "size": largest["file_size"],
                        "ref": largest["file_id"],
                    }
                ],
            )
        ]
        # Only the size taken was asked for and downloaded.
        [get_file] = telegram.calls_to("getFile")
        assert get_file.args == {"file_id": largest["file_id"]}
        assert telegram.downloads == [telegram.file_infos[largest["file_id"]]["file_path"]]


async def test_in_a_group_a_caption_mentioning_the_bot_addresses_it(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        sizes = photo_sizes(telegram, (90, 68), (800, 600))
        telegram.push(media_message("photo", "nice, right?", group=True, media=sizes))
        telegram.push(media_message("photo", "@parley_bot what is this?", group=True, media=sizes))
        await answered(telegram, GROUP_CHAT_ID)
        image = {
            "kind": "image",
            "name": "photo.jpg",
            "mime": "image/jpeg",
            "size": sizes[1]["file_size"],
            "ref": sizes[1]["file_id"],
        }
        assert await stored(bot) == [("what is this?", [image])]


async def test_a_photo_without_a_caption_is_answered(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        [size] = photo_sizes(telegram, (320, 240))
        telegram.push(media_message("photo", media=[size]))
        await answered(telegram, ALICE)
        [(text, [attachment])] = await stored(bot)
        assert (text, attachment["kind"], attachment["ref"]) == ("", "image", size["file_id"])


async def test_voice_notes_audio_files_and_documents(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    fake_openai.transcript("remind me")
    fake_openai.transcript("nice song")
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        voice = {**telegram.add_file(OGG, "voice"), "duration": 2, "mime_type": "audio/ogg"}
        audio = {
            **telegram.add_file(b"ID3\x04" + bytes(300), "audio"),
            "duration": 184,
            "performer": "Nina Simone",
            "title": "Feeling Good",
            "file_name": "feeling-good.mp3",
            "mime_type": "audio/mpeg",
        }
        notes = {
            **telegram.add_file(b"Buy milk\n", "document", suffix=".txt"),
            "file_name": "notes.txt",
            "mime_type": "text/plain",
        }
        # An image sent "as a file" (uncompressed) is a document: still an image.
        diagram = {
            **telegram.add_file(png(), "document", suffix=".png"),
            "file_name": "diagram.png",
            "mime_type": "image/png",
            "thumbnail": {
                **telegram.add_file(jpeg(64, 48), "photo"),
                "width": 64,
                "height": 48,
            },
        }
        telegram.push(media_message("voice", media=voice))
        telegram.push(media_message("audio", media=audio))
        telegram.push(media_message("document", "keep this", media=notes))
        telegram.push(media_message("document", media=diagram))
        await answered(telegram, ALICE, 4)

        def attachment(kind: str, name: str, mime: str, item: dict[str, Any]) -> dict[str, Any]:
            return {
                "kind": kind,
                "name": name,
                "mime": mime,
                "size": item["file_size"],
                "ref": item["file_id"],
            }

        assert await stored(bot) == [
            ("", [attachment("audio", "voice.ogg", "audio/ogg", voice)]),
            ("", [attachment("audio", "feeling-good.mp3", "audio/mpeg", audio)]),
            ("keep this", [attachment("file", "notes.txt", "text/plain", notes)]),
            ("", [attachment("image", "diagram.png", "image/png", diagram)]),
        ]


async def test_a_reply_to_someones_photo_carries_that_photo_and_its_own_document(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        [photo] = photo_sizes(telegram, (640, 480))
        bobs_photo = {
            "message_id": next_message_id(GROUP_CHAT_ID),
            "from": user(2, "Bob", "bob"),
            "chat": {"id": GROUP_CHAT_ID, "title": "Test group", "type": "supergroup"},
            "date": int(time.time()) - 60,
            "photo": [photo],
            "caption": "the whiteboard",
        }
        listing = {
            **telegram.add_file(b"1. plan\n2. build\n", "document", suffix=".md"),
            "file_name": "plan.md",
            "mime_type": "text/markdown",
        }
        update = media_message("document", "@parley_bot does it match?", group=True, media=listing)
        telegram.push(with_fields(update, reply_to_message=bobs_photo))
        await answered(telegram, GROUP_CHAT_ID)
        assert await stored(bot) == [
            (
                "> the whiteboard\n\ndoes it match?",
                [
                    {
                        "kind": "image",
                        "name": "photo.jpg",
                        "mime": "image/jpeg",
                        "size": photo["file_size"],
                        "ref": photo["file_id"],
                    },
                    {
                        "kind": "file",
                        "name": "plan.md",
                        "mime": "text/markdown",
                        "size": listing["file_size"],
                        "ref": listing["file_id"],
                    },
                ],
            )
        ]


async def test_an_oversized_file_is_refused_by_its_reported_size_without_a_download(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    limited = settings(telegram, fake_openai, sqlite_url, PARLEY_MAX_ATTACHMENT_MB=1)
    too_large = "<i>scan.pdf is too large (30.0 MB); I take files up to 1.0 MB.</i>"
    async with running(limited) as bot:
        scan = {
            **telegram.add_file(b"not really 30 MB", "document", suffix=".pdf", size=30_000_000),
            "file_name": "scan.pdf",
            "mime_type": "application/pdf",
        }
        telegram.push(media_message("document", "read this", media=scan))
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == [f"{too_large}\n\n{ANSWER}"])
        # Of a photo's sizes, the largest within the limit (1 MB) is taken.
        small = png(320, 240)
        sizes = [
            {**telegram.add_file(small, "photo"), "width": 320, "height": 240},
            {**telegram.add_file(b"big", "photo", size=2_400_000), "width": 2560, "height": 1920},
        ]
        telegram.push(media_message("photo", "and this?", media=sizes))
        await telegram.wait_for(lambda: len(telegram.texts_in(ALICE)) == 2)
        assert telegram.texts_in(ALICE)[1] == ANSWER
        [(_, [pdf]), (_, [photo])] = await stored(bot)
        assert (pdf["name"], pdf["size"]) == ("scan.pdf", 30_000_000)
        assert (photo["ref"], photo["size"]) == (sizes[0]["file_id"], len(small))
        assert [call.args["file_id"] for call in telegram.calls_to("getFile")] == [
            sizes[0]["file_id"]
        ]
        assert telegram.downloads == [telegram.file_infos[sizes[0]["file_id"]]["file_path"]]


async def test_stickers_and_videos_are_described_not_downloaded(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        telegram.push(media_message("video", "what happens here?"))
        await answered(telegram, ALICE)
        assert await stored(bot) == [
            ("[a video was attached, which you cannot see]\n\nwhat happens here?", None)
        ]
        assert telegram.calls_to("getFile") == [] and telegram.downloads == []


# --- fetch: downloads through the SDK -----------------------------------------------------


async def test_fetch_downloads_exactly_the_files_bytes(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        data = png()
        file = telegram.add_file(data, "document", suffix=".png")
        attachment = Attachment("image", "a.png", "image/png", len(data), file["file_id"])
        assert await bot_of(bot).fetch(attachment, 1_000_000) == data
        [get_file] = telegram.calls_to("getFile")
        assert get_file.args == {"file_id": file["file_id"]}
        assert get_file.token == "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        assert telegram.downloads == [telegram.file_infos[file["file_id"]]["file_path"]]


async def test_fetch_refuses_an_oversized_file_before_downloading_it(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        fetch = bot_of(bot).fetch
        data = bytes(5000)
        file = telegram.add_file(data, "document")

        # The size the message gave: not even getFile.
        with pytest.raises(TooLarge) as refused:
            await fetch(Attachment("file", "a.bin", "", 5000, file["file_id"]), 4999)
        assert refused.value.size == 5000
        assert telegram.calls_to("getFile") == [] and telegram.downloads == []

        # Above Telegram's 20 MB whatever our limit: not even getFile.
        with pytest.raises(TooLarge) as refused:
            await fetch(Attachment("file", "a.bin", "", 25_000_000, file["file_id"]), 50_000_000)
        assert refused.value.size == 25_000_000
        assert telegram.calls_to("getFile") == [] and telegram.downloads == []

        # The message gave no size: getFile's File has it.
        with pytest.raises(TooLarge) as refused:
            await fetch(Attachment("file", "a.bin", "", 0, file["file_id"]), 4999)
        assert refused.value.size == 5000
        assert len(telegram.calls_to("getFile")) == 1 and telegram.downloads == []

        # Telegram refuses larger files itself ("file is too big").
        big = telegram.add_file(b"x", "document", size=21_000_000, report_size=False)
        with pytest.raises(TooLarge) as refused:
            await fetch(Attachment("file", "a.bin", "", 0, big["file_id"]), 50_000_000)
        assert refused.value.size == 20_000_001
        assert telegram.calls_to("getFile")[-1].response["description"] == (
            "Bad Request: file is too big"
        )
        assert telegram.downloads == []


async def test_fetch_checks_the_bytes_when_no_size_was_reported(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        file = telegram.add_file(bytes(5000), "document", report_size=False)
        assert "file_size" not in telegram.file_infos[file["file_id"]]
        with pytest.raises(TooLarge) as refused:
            await bot_of(bot).fetch(Attachment("file", "a.bin", "", 0, file["file_id"]), 4999)
        assert refused.value.size == 5000
        assert telegram.downloads == [telegram.file_infos[file["file_id"]]["file_path"]]


async def test_fetch_of_an_unknown_file_fails(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        with pytest.raises(BadRequest, match="Invalid file_id"):
            await bot_of(bot).fetch(Attachment("file", "a.bin", "", 10, "BQACAgIAAnope"), 100)
        assert telegram.downloads == []


# --- end to end: what the model gets ------------------------------------------------------


async def test_a_photo_reaches_the_model_as_an_image_part_with_its_caption(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("A red rectangle.")
    async with running(settings(telegram, fake_openai, sqlite_url)):
        data = png()
        sizes = [{**telegram.add_file(data, "photo"), "width": 64, "height": 48}]
        telegram.push(media_message("photo", "what is in this picture?", media=sizes))
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == ["A red rectangle."])
    sent = base64.b64encode(prepare_image(data).data).decode("ascii")
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Alice: what is in this picture?"},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{sent}"}},
        ],
    }


async def test_a_voice_note_is_transcribed_and_the_words_answered(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.transcript("what time is it in Tokyo?")
    fake_openai.reply("It is 9 pm in Tokyo.")
    async with running(settings(telegram, fake_openai, sqlite_url)):
        voice = {**telegram.add_file(OGG, "voice"), "duration": 2, "mime_type": "audio/ogg"}
        telegram.push(media_message("voice", media=voice))
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == ["It is 9 pm in Tokyo."])
    [heard] = fake_openai.transcriptions
    assert (heard.model, heard.filename, heard.data) == ("whisper-1", "voice.ogg", OGG)
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": "Alice: what time is it in Tokyo?",
    }


async def test_a_text_files_content_reaches_the_model_with_its_name(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("Milk, and call Bob.")
    async with running(settings(telegram, fake_openai, sqlite_url)):
        notes = {
            **telegram.add_file(b"Buy milk\nCall Bob\n", "document", suffix=".txt"),
            "file_name": "notes.txt",
            "mime_type": "text/plain",
        }
        telegram.push(media_message("document", "@parley_bot summarize", group=True, media=notes))
        await telegram.wait_for(lambda: telegram.texts_in(GROUP_CHAT_ID) == ["Milk, and call Bob."])
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": 'Alice: summarize\n\n<file name="notes.txt">\nBuy milk\nCall Bob\n</file>',
    }


async def test_group_photos_not_for_the_bot_are_never_downloaded(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        sizes = photo_sizes(telegram, (320, 240))
        telegram.push(media_message("photo", "our trip", group=True, media=sizes))
        telegram.push(group_message("@parley_bot hello"))
        await answered(telegram, GROUP_CHAT_ID)
        assert await stored(bot) == [("hello", None)]
        assert telegram.calls_to("getFile") == [] and telegram.downloads == []


# --- albums: one message per item, answered as one ----------------------------------------


def album_items(
    telegram: FakeTelegram, group_id: str, caption: str | None, count: int, *, group: bool = False
) -> list[dict[str, Any]]:
    """An album's updates as Telegram sends them: one message per photo, all with the same
    `media_group_id`, the caption on the first."""
    updates = []
    for index in range(count):
        sizes = [{**telegram.add_file(png(40 + index, 30), "photo"), "width": 40, "height": 30}]
        text = caption if index == 0 else None
        update = media_message("photo", text, group=group, media=sizes)
        updates.append(with_fields(update, media_group_id=group_id))
    return updates


async def test_an_albums_photos_are_one_message_with_its_caption(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.reply("The second.")
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        updates = album_items(telegram, "13652348902835610", "which one is best?", 3)
        for update in updates:
            telegram.push(update)
        await telegram.wait_for(lambda: telegram.texts_in(ALICE) == ["The second."])
        photos = [update["message"]["photo"][0] for update in updates]
        [(text, attachments)] = await stored(bot)
        assert text == "which one is best?"
        assert [a["ref"] for a in attachments] == [photo["file_id"] for photo in photos]
        # Claimed under the album's first item.
        async with bot.database.connect() as connection:
            [event_id] = (await connection.execute(select(turns.c.event_id))).scalars()
        assert event_id == f"{ALICE}:{updates[0]['message']['message_id']}"
    content = fake_openai.chat_requests[-1]["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "Alice: which one is best?"}
    assert [part["type"] for part in content[1:]] == ["image_url"] * 3


async def test_in_a_group_an_album_mentioning_the_bot_once_is_answered_whole(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        chatter = album_items(telegram, "1001", "our holiday", 2, group=True)
        asked = album_items(telegram, "1002", "@parley_bot where is this?", 2, group=True)
        for update in [*chatter, *asked]:
            telegram.push(update)
        await answered(telegram, GROUP_CHAT_ID)
        [(text, attachments)] = await stored(bot)
        assert text == "where is this?"
        refs = [update["message"]["photo"][0]["file_id"] for update in asked]
        assert [a["ref"] for a in attachments] == refs
        # Quoting the album's first item, which holds the question.
        [sent] = telegram.calls_to("sendMessage")
        assert sent.args["reply_parameters"]["message_id"] == asked[0]["message"]["message_id"]
        # The chatter album was never downloaded.
        assert sorted(call.args["file_id"] for call in telegram.calls_to("getFile")) == sorted(refs)


async def test_a_message_sent_right_after_an_album_is_answered_after_it(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    async with running(settings(telegram, fake_openai, sqlite_url)) as bot:
        for update in album_items(telegram, "2001", None, 2):
            telegram.push(update)
        telegram.push(private_message("what do you think of these?"))
        await answered(telegram, ALICE, 2)
        [(album_text, photos), (question, none)] = await stored(bot)
        assert (album_text, len(photos), question, none) == (
            "",
            2,
            "what do you think of these?",
            None,
        )


async def test_by_webhook_every_item_is_acknowledged_once_the_album_is_stored(
    telegram: FakeTelegram, fake_openai: FakeOpenAI, sqlite_url: str
) -> None:
    fake_openai.default = Reply(ANSWER)
    hook = settings(
        telegram,
        fake_openai,
        sqlite_url,
        TELEGRAM_WEBHOOK_URL="https://bot.example.com/telegram/hook",
        TELEGRAM_WEBHOOK_SECRET="s3cret",
        PARLEY_HTTP_PORT=free_port(),
    )
    async with running(hook) as bot:
        url = f"http://127.0.0.1:{bot.port}/telegram/hook"
        updates = [
            {**update, "update_id": 700 + index}
            for index, update in enumerate(album_items(telegram, "3001", "compare", 3))
        ]

        async def deliver() -> list[int]:
            return list(
                await asyncio.gather(*(post_update(url, u, secret="s3cret") for u in updates))
            )

        assert await deliver() == [200, 200, 200]
        assert [(text, len(found)) for text, found in await stored(bot)] == [("compare", 3)]
        # Telegram sending the album again: the same claim, not a second answer.
        assert await deliver() == [200, 200, 200]
        await answered(telegram, ALICE)
        assert [(text, len(found)) for text, found in await stored(bot)] == [("compare", 3)]
