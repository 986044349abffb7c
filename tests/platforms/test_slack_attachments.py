"""Images, voice clips and files shared with the Slack bot: the payloads Slack sends, the
downloads through the Web API client's connection pool against the fake Slack, and the turn
the model reads.

File objects follow Slack's file type (https://api.slack.com/types/file) and the
`message.file_share` event; the voice clip carries `subtype: slack_audio`, as Slack's clips do.
"""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import select

from adapters.slack.bot import FileDownloadError
from adapters.slack.translate import SlackMessage, attachments_of, parse_event
from core.attachments import AUDIO, FILE, IMAGE, Attachment, TooLarge, prepare_image
from core.storage.tables import turns
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.slack_server import (
    BOT_ID,
    BOT_USER_ID,
    SIGN_IN_PAGE,
    TEAM_ID,
    FakeSlack,
    app_mention,
    channel_message,
    file_share,
    next_ts,
)
from tests.helpers import states_become
from tests.platforms.test_slack import final_texts, running, slack_settings

MB = 1_000_000

# A photo as Slack's own payloads describe it (from a `file_share` event), URLs included.
CHEVY: dict[str, Any] = {
    "id": "F02PM6A1AUA",
    "created": 1638784624,
    "timestamp": 1638784624,
    "name": "Chevy.jpg",
    "title": "Chevy.jpg",
    "mimetype": "image/jpeg",
    "image_exif_rotation": 0,
    "filetype": "jpg",
    "pretty_type": "JPEG",
    "user": "U1",
    "user_team": TEAM_ID,
    "mode": "hosted",
    "editable": False,
    "is_external": False,
    "external_type": "",
    "size": 359002,
    "url_private": "https://files.slack.com/files-pri/T1-F02PM6A1AUA/chevy.jpg",
    "url_private_download": "https://files.slack.com/files-pri/T1-F02PM6A1AUA/download/chevy.jpg",
    "original_h": 1080,
    "original_w": 1920,
    "thumb_64": "https://files.slack.com/files-tmb/T1-F02PM6A1AUA-d1fdb12d3e/chevy_64.jpg",
    "permalink": "https://test.slack.com/files/U1/F02PM6A1AUA/chevy.jpg",
    "is_public": False,
    "public_url_shared": False,
    "has_rich_preview": False,
    "file_access": "visible",
}
CHEVY_ATTACHMENT = Attachment(
    IMAGE, "Chevy.jpg", "image/jpeg", 359002, CHEVY["url_private_download"]
)


def slack_file(**fields: Any) -> dict[str, Any]:
    """CHEVY with some fields replaced (None: removed)."""
    file = {**CHEVY, **fields}
    return {key: value for key, value in file.items() if value is not None}


def parsed(event: dict[str, Any]) -> SlackMessage | None:
    return parse_event(event, team_id=TEAM_ID, bot_user_id=BOT_USER_ID, bot_id=BOT_ID)


def png(width: int = 8, height: int = 6, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "PNG")
    return out.getvalue()


# --- the payloads ----------------------------------------------------------------------------


def test_a_photo_with_a_caption_in_a_dm() -> None:
    message = parsed(file_share([CHEVY], "what car is this?"))
    assert message is not None
    assert message.text == "what car is this?"
    assert message.attachments == (CHEVY_ATTACHMENT,)
    assert message.is_direct


def test_newer_payloads_share_files_without_a_subtype() -> None:
    event = file_share([CHEVY], "what car is this?")
    del event["subtype"]
    message = parsed(event)
    assert message is not None and message.attachments == (CHEVY_ATTACHMENT,)


def test_a_mention_carrying_a_photo() -> None:
    message = parsed(app_mention("<@UBOT> what car is this?", files=[CHEVY], upload=False))
    assert message is not None
    assert (message.text, message.mentions_bot) == ("what car is this?", True)
    assert message.attachments == (CHEVY_ATTACHMENT,)


def test_a_voice_clip_is_audio_whatever_its_type_says() -> None:
    clip: dict[str, Any] = {
        "id": "F0AUDIO01",
        "name": "audio_message.m4a",
        "title": "audio_message.m4a",
        "mimetype": "audio/mp4",
        "filetype": "m4a",
        "subtype": "slack_audio",
        "media_display_type": "audio",
        "duration_ms": 3200,
        "mode": "hosted",
        "is_external": False,
        "size": 51234,
        "url_private": "https://files.slack.com/files-pri/T1-F0AUDIO01/audio_message.m4a",
        "url_private_download": (
            "https://files.slack.com/files-pri/T1-F0AUDIO01/download/audio_message.m4a"
        ),
        "transcription": {"status": "processing"},
    }
    # Some clients label the clip a video.
    as_video = {**clip, "name": "audio_message.mp4", "mimetype": "video/mp4", "filetype": "mp4"}
    message = parsed(file_share([clip, as_video]))
    assert message is not None and message.text == ""
    assert message.attachments == (
        Attachment(AUDIO, "audio_message.m4a", "audio/mp4", 51234, clip["url_private_download"]),
        Attachment(AUDIO, "audio_message.mp4", "video/mp4", 51234, clip["url_private_download"]),
    )


def test_a_document_and_several_files_in_the_order_shown() -> None:
    pdf = slack_file(
        id="F0PDF0001",
        name="Q3 report.pdf",
        title="Q3 report",
        mimetype="application/pdf",
        filetype="pdf",
        size=48213,
        url_private="https://files.slack.com/files-pri/T1-F0PDF0001/q3_report.pdf",
        url_private_download="https://files.slack.com/files-pri/T1-F0PDF0001/download/q3_report.pdf",
    )
    # A snippet: hosted text whose name Slack may leave empty (the title stands in).
    snippet = slack_file(
        id="F0SNIP001",
        name=None,
        title="Untitled",
        mimetype="text/plain",
        filetype="text",
        mode="snippet",
        size=120,
        url_private="https://files.slack.com/files-pri/T1-F0SNIP001/untitled",
        url_private_download=None,
    )
    message = parsed(file_share([pdf, CHEVY, snippet], "compare these"))
    assert message is not None
    assert message.attachments == (
        Attachment(FILE, "Q3 report.pdf", "application/pdf", 48213, pdf["url_private_download"]),
        CHEVY_ATTACHMENT,
        Attachment(FILE, "Untitled", "text/plain", 120, snippet["url_private"]),
    )


def test_an_oversized_file_keeps_the_size_slack_reports() -> None:
    video = slack_file(name="demo.mov", mimetype="video/quicktime", filetype="mov", size=300 * MB)
    message = parsed(file_share([video]))
    assert message is not None
    [attachment] = message.attachments
    assert (attachment.kind, attachment.size) == (FILE, 300 * MB)


def test_files_slack_does_not_serve_are_left_out() -> None:
    external = slack_file(
        id="F0EXT0001",
        name="Plan",
        mimetype="application/vnd.google-apps.document",
        mode="external",
        is_external=True,
        external_type="gdrive",
        url_private="https://docs.google.com/document/d/1e8LtkvCSe/edit",
        url_private_download=None,
    )
    deleted = {"id": "F0GONE001", "mode": "tombstone"}
    over_limit = {"id": "F0OLD0001", "mode": "hidden_by_limit"}
    not_visible = {"id": "F0HID0001", "mode": "file_access", "file_access": "check_file_info"}
    files = [external, deleted, over_limit, not_visible, CHEVY]
    message = parsed(file_share(files, "see"))
    assert message is not None and message.attachments == (CHEVY_ATTACHMENT,)
    # Nothing left to read and no text, in a thread nobody addressed the bot in: not for it.
    only_gone = file_share(files[:4], channel="C1", thread_ts=next_ts())
    assert parsed(only_gone) is None


def test_a_file_alone_in_a_thread_is_a_message() -> None:
    message = parsed(file_share([CHEVY], channel="C1", thread_ts=next_ts()))
    assert message is not None
    assert (message.text, message.in_thread, message.is_direct) == ("", True, False)
    assert message.attachments == (CHEVY_ATTACHMENT,)


@pytest.mark.parametrize(
    "event",
    [
        file_share([CHEVY], "from a bot", subtype="bot_message", bot_id="B9"),
        file_share([CHEVY], "", user=BOT_USER_ID),  # the bot's own upload
        channel_message("", subtype="message_changed", files=[CHEVY]),
        channel_message("", subtype="message_deleted", files=[CHEVY]),
        channel_message("", subtype="channel_join", files=[CHEVY]),
    ],
    ids=["bot_message", "own", "message_changed", "message_deleted", "channel_join"],
)
def test_other_subtypes_with_files_are_still_ignored(event: dict[str, Any]) -> None:
    assert parsed(event) is None


def test_attachments_of_an_event_without_files() -> None:
    assert attachments_of(channel_message("hi")) == ()
    assert attachments_of(channel_message("hi", files=[])) == ()


# --- the fake serves files as Slack does ------------------------------------------------------


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        fake.users.update({"U1": "alice", "U2": "bob"})
        yield fake


async def test_the_fake_answers_a_download_without_the_token_with_its_sign_in_page(
    slack: FakeSlack,
) -> None:
    file = slack.upload("notes.txt", b"hello", "text/plain")
    async with aiohttp.ClientSession() as session:
        async with session.get(file["url_private_download"]) as response:
            assert (response.status, response.content_type) == (200, "text/html")
            assert await response.text() == SIGN_IN_PAGE
        headers = {"Authorization": "Bearer xoxb-test"}
        async with session.get(file["url_private"], headers=headers) as response:
            assert (response.status, response.content_type) == (200, "text/plain")
            assert await response.read() == b"hello"
    assert [(d.token, d.served) for d in slack.downloads] == [(None, False), ("xoxb-test", True)]


# --- fetch: downloads through the Web API client ----------------------------------------------


@pytest.fixture
def bot_factory(slack: FakeSlack, fake_openai: FakeOpenAI, sqlite_url: str) -> Callable[..., Any]:
    def factory(**extra: Any) -> Any:
        return running(slack_settings(slack, fake_openai, sqlite_url, **extra))

    return factory


def attachment_of(file: dict[str, Any]) -> Attachment:
    [attachment] = attachments_of(file_share([file]))
    return attachment


async def test_fetch_downloads_the_exact_bytes_with_the_bot_token(
    bot_factory: Callable[..., Any], slack: FakeSlack
) -> None:
    photo = png(300, 200)
    file = slack.upload("Cat Photo.PNG", photo, "image/png")
    text_only = slack.upload("notes.txt", b"line one\n", "text/plain", url_private_download=None)
    async with bot_factory() as running:
        assert await running.bot.fetch(attachment_of(file), 20 * MB) == photo
        assert await running.bot.fetch(attachment_of(text_only), 20 * MB) == b"line one\n"
    first, second = slack.downloads
    assert first.path == f"/files-pri/{TEAM_ID}-{file['id']}/download/cat_photo.png"
    assert second.path == f"/files-pri/{TEAM_ID}-{text_only['id']}/notes.txt"
    assert [(d.token, d.served) for d in slack.downloads] == [("xoxb-test", True)] * 2


async def test_fetch_refuses_a_file_reported_too_large_without_downloading_it(
    bot_factory: Callable[..., Any], slack: FakeSlack
) -> None:
    file = slack.upload("big.pdf", b"%PDF-1.4 small really", "application/pdf", size=25 * MB)
    async with bot_factory() as running:
        with pytest.raises(TooLarge) as raised:
            await running.bot.fetch(attachment_of(file), 20 * MB)
    assert raised.value.size == 25 * MB
    assert slack.downloads == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_fetch_stops_at_the_limit_when_slack_reported_less(
    bot_factory: Callable[..., Any], slack: FakeSlack, chunked: bool
) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB, reported as 1 KiB
    file = slack.upload("dump.bin", data, "application/octet-stream", size=1024, chunked=chunked)
    async with bot_factory() as running:
        with pytest.raises(TooLarge) as raised:
            await running.bot.fetch(attachment_of(file), 100_000)
        assert await running.bot.fetch(attachment_of(file), len(data)) == data
    if chunked:  # read up to the limit and a chunk at most, then given up
        assert 100_000 < raised.value.size <= 100_000 + 64 * 1024
    else:  # known from Content-Length before reading
        assert raised.value.size == len(data)
    assert [d.served for d in slack.downloads] == [True, True]


async def test_without_the_files_read_scope_the_error_says_to_add_it(
    bot_factory: Callable[..., Any], slack: FakeSlack
) -> None:
    slack.files_read = False
    file = slack.upload("notes.txt", b"hello", "text/plain")
    async with bot_factory() as running:
        with pytest.raises(FileDownloadError) as raised:
            await running.bot.fetch(attachment_of(file), 20 * MB)
    assert str(raised.value) == (
        "Slack sent its sign-in page instead of the file notes.txt: add the files:read scope "
        "to the app (OAuth & Permissions) and reinstall it"
    )
    [download] = slack.downloads
    assert (download.token, download.served) == ("xoxb-test", False)


async def test_a_deleted_file_is_an_error(
    bot_factory: Callable[..., Any], slack: FakeSlack
) -> None:
    file = slack.upload("notes.txt", b"hello", "text/plain")
    del slack.files[file["id"]]
    async with bot_factory() as running:
        with pytest.raises(FileDownloadError) as raised:
            await running.bot.fetch(attachment_of(file), 20 * MB)
    assert str(raised.value) == "Slack answered HTTP 404 for the file notes.txt"


async def test_the_token_goes_to_slack_only(
    bot_factory: Callable[..., Any], slack: FakeSlack
) -> None:
    async with FakeSlack() as elsewhere:
        file = elsewhere.upload("notes.txt", b"hello", "text/plain")
        async with bot_factory() as running:
            with pytest.raises(FileDownloadError) as raised:
                await running.bot.fetch(attachment_of(file), 20 * MB)
        assert str(raised.value) == f"{file['url_private_download']!r} is not a Slack file URL"
        assert elsewhere.downloads == []


# --- stored with the turn -----------------------------------------------------------------


async def stored_turns(running: Any) -> list[tuple[str, Any]]:
    async with running.database.connect() as connection:
        rows = await connection.execute(
            select(turns.c.text, turns.c.attachments).order_by(turns.c.id)
        )
        return [(text, attachments) for text, attachments in rows]


async def test_a_photo_without_a_caption_is_a_message_to_answer(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A red square.")
    fake_openai.reply("Still red.")
    photo = png()
    dm_photo = slack.upload("square.png", photo, "image/png")
    thread_photo = slack.upload("again.png", photo, "image/png")
    async with bot_factory(PARLEY_VISION="always") as running:
        ts = next_ts()
        status, _ = await running.deliver(file_share([dm_photo], ts=ts))
        assert status == 200
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("D1")] == ["A red square."],
            what="the answer to the photo",
        )
        # In a thread the bot answers in, a photo needs no mention (nor any text).
        thread = next_ts()
        await running.deliver(app_mention("<@UBOT> hi", ts=thread))
        await final_texts(slack, "C1", thread, ["Still red."])
        fake_openai.reply("Yes, red again.")
        await running.deliver(file_share([thread_photo], channel="C1", thread_ts=thread))
        await final_texts(slack, "C1", thread, ["Still red.", "Yes, red again."])
        stored = await stored_turns(running)
    assert stored == [
        ("", [attachment_of(dm_photo).as_json()]),
        ("hi", None),
        ("", [attachment_of(thread_photo).as_json()]),
    ]


# --- what the model reads --------------------------------------------------------------------


async def test_a_photo_and_its_caption_reach_the_model(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("A red rectangle.")
    photo = png(40, 30)
    file = slack.upload("shape.png", photo, "image/png")
    async with bot_factory(PARLEY_VISION="always") as running:
        ts = next_ts()
        await running.deliver(file_share([file], "what is in this picture?", ts=ts))
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("D1")] == ["A red rectangle."],
            what="the answer",
        )
    prepared = prepare_image(photo)
    url = f"data:{prepared.mime};base64,{base64.b64encode(prepared.data).decode()}"
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "alice: what is in this picture?"},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }
    [download] = slack.downloads
    assert (download.token, download.served) == ("xoxb-test", True)


async def test_a_voice_clip_is_transcribed_and_answered(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.transcript("what time is it in Tokyo")
    fake_openai.reply("It is 9 pm in Tokyo.")
    audio = b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(200)
    clip = slack.upload(
        "audio_message.m4a",
        audio,
        "audio/mp4",
        subtype="slack_audio",
        duration_ms=1800,
        transcription={"status": "processing"},
    )
    async with bot_factory() as running:
        await running.deliver(file_share([clip]))
        await slack.wait_for(
            lambda: [m["text"] for m in slack.messages_in("D1")] == ["It is 9 pm in Tokyo."],
            what="the answer",
        )
    [heard] = fake_openai.transcriptions
    assert (heard.model, heard.filename, heard.data) == ("whisper-1", "audio_message.m4a", audio)
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": "alice: what time is it in Tokyo",
    }


async def test_a_text_file_reaches_the_model_with_its_name(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("Two items.")
    file = slack.upload("notes.txt", b"milk\neggs\n", "text/plain")
    async with bot_factory() as running:
        thread = next_ts()
        await running.deliver(
            app_mention("<@UBOT> how many items?", ts=thread, files=[file], upload=False)
        )
        await final_texts(slack, "C1", thread, ["Two items."])
    assert fake_openai.chat_requests[-1]["messages"][-1] == {
        "role": "user",
        "content": 'alice: how many items?\n\n<file name="notes.txt">\nmilk\neggs\n</file>',
    }


async def test_a_mention_sharing_a_file_is_answered_once(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    # Slack sends the message twice: as app_mention and as a file_share message.
    fake_openai.reply("Two items.")
    file = slack.upload("notes.txt", b"milk\neggs\n", "text/plain")
    async with bot_factory() as running:
        ts = next_ts()
        text = "<@UBOT> how many items?"
        await running.deliver(app_mention(text, ts=ts, files=[file], upload=False))
        await running.deliver(file_share([file], text, channel="C1", ts=ts))
        await final_texts(slack, "C1", ts, ["Two items."])
        await states_become(running.database, ["delivered"])
    assert len(fake_openai.chat_requests) == 1
    assert [d.served for d in slack.downloads] == [True]


async def test_a_file_too_large_is_declined_without_downloading_it(
    bot_factory: Callable[..., Any], slack: FakeSlack, fake_openai: FakeOpenAI
) -> None:
    file = slack.upload("big.pdf", b"%PDF-1.4", "application/pdf", size=5 * MB)
    async with bot_factory(PARLEY_MAX_ATTACHMENT_MB=1) as running:
        await running.deliver(file_share([file]))
        await slack.wait_for(
            lambda: (
                [m["text"] for m in slack.messages_in("D1")]
                == ["big.pdf is too large (5.0 MB); I take files up to 1.0 MB."]
            ),
            what="the note",
        )
    assert slack.downloads == []
    assert fake_openai.chat_requests == []


async def test_without_files_read_the_log_says_to_add_it(
    bot_factory: Callable[..., Any],
    slack: FakeSlack,
    fake_openai: FakeOpenAI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    slack.files_read = False
    file = slack.upload("notes.txt", b"milk\neggs\n", "text/plain")
    async with bot_factory() as running:
        await running.deliver(file_share([file]))
        await slack.wait_for(
            lambda: (
                [m["text"] for m in slack.messages_in("D1")]
                == ["I could not download notes.txt; please send it again."]
            ),
            what="the note",
        )
    assert fake_openai.chat_requests == []
    assert (
        "downloading notes.txt failed: Slack sent its sign-in page instead of the file "
        "notes.txt: add the files:read scope to the app (OAuth & Permissions) and reinstall it"
    ) in caplog.messages
