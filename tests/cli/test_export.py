"""`parley export` as an operator runs it (a subprocess), on SQLite and PostgreSQL: the JSON
holds exactly the user's rows, and exactly what /forget then deletes."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from core.storage import SqlStore, create_database_engine
from core.storage.privacy import EXPORT_FORMAT, Privacy
from tests.cli.test_chat import parley
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.storage.test_privacy import mentioning, rows_of, seed


def environment(database_url: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    return {**keep, "DATABASE_URL": database_url}


def moment(value: datetime) -> str:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


async def export(database_url: str, tmp_path: Path, *arguments: str) -> tuple[int, str, str]:
    return await parley("export", *arguments, stdin="", env=environment(database_url), cwd=tmp_path)


async def test_export_round_trips_the_users_rows(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    async with engine_factory(DATABASE_URL=database_url, PARLEY_MODERATION="pii") as runtime:
        await seed(runtime, fake_openai, database_url)
    engine = create_async_engine(database_url)
    try:
        rows = await rows_of(engine)
    finally:
        await engine.dispose()

    output = tmp_path / "ada.json"
    code, out, err = await export(
        database_url, tmp_path, "--user", "U-ada", "--platform", "test", "--output", str(output)
    )
    assert (code, out) == (0, "")
    assert err == f"Wrote 8 messages in 2 conversations of U-ada to {output}.\n"
    assert stat.S_IMODE(output.stat().st_mode) == 0o600  # personal data
    data = json.loads(output.read_text(encoding="utf-8"))
    assert (data["format"], data["user_id"], data["platforms"]) == (
        EXPORT_FORMAT,
        "U-ada",
        ["test"],
    )

    on_test = {c["id"] for c in rows["conversations"] if c["platform"] == "test"}
    dm = next(c for c in rows["conversations"] if c["channel"] == "D-ada" and c["id"] in on_test)
    thread = next(c for c in rows["conversations"] if c["channel"] == "general")
    exported = {c["id"]: c for c in data["conversations"]}
    assert sorted(exported) == sorted([dm["id"], thread["id"]])
    for conversation in (dm, thread):
        shown = exported[conversation["id"]]
        assert {k: shown[k] for k in ("platform", "workspace", "channel", "thread")} == {
            k: conversation[k] for k in ("platform", "workspace", "channel", "thread")
        }
        assert shown["created_at"] == moment(conversation["created_at"])
    assert (exported[dm["id"]]["shared"], exported[dm["id"]]["summary"]) == (False, "")
    assert (exported[thread["id"]]["shared"], exported[thread["id"]]["summary"]) == (True, None)

    # Her DM whole; in the thread her messages and the replies to them (they say zebracorn).
    expected = [
        m
        for m in rows["messages"]
        if m["conversation_id"] == dm["id"]
        or (m["conversation_id"] == thread["id"] and "zebracorn" in m["content"])
    ]
    listed = [m for c in data["conversations"] for m in c["messages"]]
    assert sorted(listed, key=lambda m: m["id"]) == [
        {
            "id": m["id"],
            "role": m["role"],
            "author_id": m["author_id"],
            "author_name": m["author_name"],
            "content": m["content"],
            "tool_calls": m["tool_calls"],
            "tool_call_id": m["tool_call_id"],
            "created_at": moment(m["created_at"]),
        }
        for m in expected
    ]

    def hers(table: str) -> list[dict[str, Any]]:
        return [r for r in rows[table] if r["user_id"] == "U-ada" and r.get("platform") == "test"]

    assert [
        (a["id"], a["name"], base64.b64decode(a["data_base64"])) for a in data["attachments"]
    ] == [(a["id"], a["name"], a["data"]) for a in hers("attachments")]
    assert [(t["id"], t["text"], t["reply"]) for t in data["turns"]] == [
        (t["id"], t["text"], t["reply"]) for t in hers("turns")
    ]
    assert [
        (u["id"], u["model"], u["prompt_tokens"], u["completion_tokens"], u["created_at"])
        for u in data["usage"]
    ] == [
        (u["id"], u["model"], u["prompt_tokens"], u["completion_tokens"], moment(u["created_at"]))
        for u in hers("usage")
    ]
    assert [(f["id"], f["action"], f["excerpt"]) for f in data["moderation_flags"]] == [
        (f["id"], f["action"], f["excerpt"]) for f in hers("moderation_flags")
    ]
    assert data["access_rules"] == [
        {
            "platform": "test",
            "list": "allow",
            "added_by": "op",
            "created_at": data["access_rules"][0]["created_at"],
        }
    ]

    # What was exported is what /forget deletes: afterwards none of it is left.
    store = SqlStore(create_database_engine(database_url))
    engine = create_async_engine(database_url)
    try:
        await Privacy(store).forget(platform="test", user_id="U-ada")
        after = await rows_of(engine)
    finally:
        await store.close()
        await engine.dispose()
    remaining = {m["id"] for m in after["messages"]}
    assert not remaining & {m["id"] for m in listed}
    assert [t for t, _ in mentioning(after, "zebracorn")] == []


async def test_export_to_stdout_without_image_data_and_across_platforms(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await seed(runtime, fake_openai, database_url)
    code, out, err = await export(database_url, tmp_path, "--user", "U-ada", "--no-attachment-data")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["platforms"] == ["other", "test"]
    assert [c["platform"] for c in data["conversations"]] == ["other", "test", "test"]
    assert [a["data_base64"] for a in data["attachments"]] == [None, None]

    code, out, _ = await export(database_url, tmp_path, "--user", "U-nobody")
    assert code == 0 and json.loads(out)["conversations"] == []


async def test_parley_forget_says_what_it_would_delete_then_deletes_it(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, database_url: str, tmp_path: Path
) -> None:
    async with engine_factory(DATABASE_URL=database_url) as runtime:
        await seed(runtime, fake_openai, database_url)
    arguments = ("forget", "--user", "U-ada", "--platform", "test")
    engine = create_async_engine(database_url)
    try:
        before = await rows_of(engine)
        asked = await parley(*arguments, stdin="", env=environment(database_url), cwd=tmp_path)
        assert await rows_of(engine) == before
        done = await parley(
            *arguments, "--yes", stdin="", env=environment(database_url), cwd=tmp_path
        )
        after = await rows_of(engine)
    finally:
        await engine.dispose()
    assert asked == (
        0,
        "8 messages in 2 conversations of U-ada on test would be deleted, with their images"
        " and files, turns, usage and flags. Nothing was deleted: add --yes to delete.\n",
        "",
    )
    assert done == (
        0,
        "Deleted for U-ada on test: 8 messages, 2 images and files, 1 whole conversations,"
        " 4 turns, 4 usage rows, 0 flags; 1 shared summaries cleared.\n",
        "",
    )

    # Ada's words (zebracorn) are gone; Bob's messages (quokka) all stay. (The shared
    # thread's summary, built from both, was cleared.)
    def bobs(rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return [row for table, row in mentioning(rows, "quokka") if table == "messages"]

    assert mentioning(before, "zebracorn") and mentioning(after, "zebracorn") == []
    assert bobs(before) and bobs(after) == bobs(before)
