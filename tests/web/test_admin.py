"""The admin endpoints behind the console: admin credentials only; flags reviewed by a
person, usage per user and day, access rules that apply to API users, channel settings,
search across conversations."""

from __future__ import annotations

from datetime import UTC, datetime

from adapters.web.api import ChannelChange
from core.events import ConversationKey
from core.storage.base import ChannelSettings, FlagRecord
from tests.fakes.openai_server import FakeOpenAI
from tests.web.conftest import Served

ADMIN_CALLS = [
    ("GET", "/api/v1/admin/flags", None),
    ("POST", "/api/v1/admin/flags/1/review", {"decision": "dismiss"}),
    ("GET", "/api/v1/admin/usage", None),
    ("GET", "/api/v1/admin/access-rules", None),
    ("POST", "/api/v1/admin/access-rules", {"kind": "user", "value": "x", "list": "block"}),
    ("GET", "/api/v1/admin/channels/slack/T1/C1", None),
    ("PATCH", "/api/v1/admin/channels/slack/T1/C1", {"user_rpm": 1}),
    ("GET", "/api/v1/admin/search?q=a", None),
]


async def test_only_admin_credentials_reach_the_admin_endpoints(served: Served) -> None:
    for method, path, body in ADMIN_CALLS:
        status, error = await served.call(method, path, json=body)
        assert (status, error["error"]["type"]) == (403, "forbidden"), path
    assert await served.store.access_rules() == []  # the refused POST stored nothing
    status, _ = await served.call("GET", "/api/v1/admin/flags", key=served.admin_key)
    assert status == 200


def flag(text: str, action: str, at: datetime) -> FlagRecord:
    return FlagRecord(
        key=ConversationKey("slack", "T1", "C1", "1700000000.000100"),
        user_id="U1",
        direction="input",
        action=action,
        categories=["pii/email"],
        scores={},
        excerpt=text,
        at=at,
    )


async def test_flags_are_reviewed_by_a_person(served: Served) -> None:
    await served.store.record_flag(flag=flag("mail me at [EMAIL]", "redact", datetime.now(UTC)))
    await served.store.record_flag(flag=flag("a worse one", "block", datetime.now(UTC)))
    admin = served.admin_key
    status, listed = await served.call("GET", "/api/v1/admin/flags", key=admin)
    assert [(f["excerpt"], f["action"], f["review"]) for f in listed["flags"]] == [
        ("a worse one", "block", None),
        ("mail me at [EMAIL]", "redact", None),
    ]
    newest = listed["flags"][0]
    path = f"/api/v1/admin/flags/{newest['id']}/review"
    status, reviewed = await served.call("POST", path, key=admin, json={"decision": "confirm"})
    assert status == 200
    assert (reviewed["review"], reviewed["reviewed_by"]) == ("confirmed", "key:root")
    assert reviewed["reviewed_at"]
    status, still_open = await served.call("GET", "/api/v1/admin/flags?review=open", key=admin)
    assert [f["excerpt"] for f in still_open["flags"]] == ["mail me at [EMAIL]"]
    status, everything = await served.call("GET", "/api/v1/admin/flags?review=all", key=admin)
    assert len(everything["flags"]) == 2
    status, _ = await served.call("POST", path, key=admin, json={"decision": "maybe"})
    assert status == 400
    status, _ = await served.call(
        "POST", "/api/v1/admin/flags/999/review", key=admin, json={"decision": "dismiss"}
    )
    assert status == 404


async def test_usage_per_user_and_day_and_search(served: Served, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("The launch is on Friday.")
    conversation = await served.start()
    await served.events(conversation, "When is the rocket launch?")
    status, usage = await served.call("GET", "/api/v1/admin/usage?days=7", key=served.admin_key)
    assert status == 200
    [row] = usage["days"]
    assert (row["user"], row["platform"], row["calls"]) == ("key:alice", "api", 1)
    assert row["day"] == datetime.now(UTC).strftime("%Y-%m-%d")
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0

    status, found = await served.call("GET", "/api/v1/admin/search?q=ROCKET", key=served.admin_key)
    assert [(r["user"], r["role"], r["content"]) for r in found["results"]] == [
        ("key:alice", "user", "When is the rocket launch?")
    ]
    assert found["results"][0]["conversation"] == f"api/api/key:alice/{conversation}"
    status, _ = await served.call("GET", "/api/v1/admin/search", key=served.admin_key)
    assert status == 400


async def test_access_rules_set_here_apply_to_api_users(
    served: Served, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply("before the rule")
    bob = await served.keys.create_key(name="bob")
    conversation = await served.start(key=bob)
    path = f"/api/v1/conversations/{conversation}/messages"
    status, reply = await served.call("POST", path, key=bob, json={"text": "hi"})
    assert (status, reply["text"]) == (200, "before the rule")  # the rules are cached now
    rule = {"platform": "api", "kind": "user", "value": "key:bob", "list": "block"}
    admin = served.admin_key
    status, added = await served.call("POST", "/api/v1/admin/access-rules", key=admin, json=rule)
    assert (status, added) == (201, rule)
    status, listed = await served.call("GET", "/api/v1/admin/access-rules", key=admin)
    assert listed == {"rules": [rule]}

    status, refused = await served.call("POST", path, key=bob, json={"text": "hello"})
    assert (status, refused["error"]["type"]) == (403, "forbidden")  # at once, not in 10 s
    assert refused["error"]["message"]  # the engine's words for the user
    assert len(fake_openai.chat_requests) == 1

    status, _ = await served.call("DELETE", "/api/v1/admin/access-rules", key=admin, json=rule)
    assert status == 204
    status, _ = await served.call("DELETE", "/api/v1/admin/access-rules", key=admin, json=rule)
    assert status == 404
    status, error = await served.call(
        "POST", "/api/v1/admin/access-rules", key=admin, json={**rule, "list": "maybe"}
    )
    assert status == 400 and "allow or block" in error["error"]["message"]


async def test_channel_settings_are_read_and_changed(served: Served) -> None:
    admin = served.admin_key
    path = "/api/v1/admin/channels/telegram/-/12345"
    status, settings = await served.call("GET", path, key=admin)
    assert status == 200 and set(settings.values()) == {None}
    status, settings = await served.call(
        "PATCH", path, key=admin, json={"persona": "editor", "user_rpm": 5}
    )
    assert (status, settings["persona"], settings["user_rpm"]) == (200, "editor", 5)
    stored = await served.store.channel(key=ConversationKey("telegram", "", "12345"))
    assert (stored.persona, stored.user_rpm) == ("editor", 5)
    status, error = await served.call("PATCH", path, key=admin, json={"colour": "red"})
    assert status == 400 and "colour" in error["error"]["message"]
    status, error = await served.call("PATCH", path, key=admin, json={"persona": "nobody"})
    assert status == 404 and "editor" in error["error"]["message"]
    for wrong in ({"user_rpm": "abc"}, {"user_rpm": -1}, {"scope": "galaxy"}, {"tools": "x"}):
        status, error = await served.call("PATCH", path, key=admin, json=wrong)
        assert status == 400 and next(iter(wrong)) in error["error"]["message"], wrong
    status, settings = await served.call("PATCH", path, key=admin, json={"user_rpm": None})
    assert (status, settings["user_rpm"], settings["persona"]) == (200, None, "editor")


def test_a_channel_change_names_every_channel_setting() -> None:
    assert list(ChannelChange.model_fields) == list(ChannelSettings.__dataclass_fields__)
