"""The admin console (`/admin`) in headless Chromium against `parley run http`."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from playwright.async_api import Browser, expect

from tests.browser.conftest import Parley, Tab, open_tab, sign_in
from tests.fakes.openai_server import FakeOpenAI

SECRET = "sk-abcdefghijklmnopqrstuvwxyz0123"


async def chat_turn(parley: Parley, text: str) -> None:
    """One message from alice through the API (JSON, not streamed)."""
    status, conversation = await parley.call("POST", "/api/v1/conversations", key=parley.alice)
    assert status == 201, conversation
    status, reply = await parley.call(
        "POST",
        f"/api/v1/conversations/{conversation['id']}/messages",
        key=parley.alice,
        json={"text": text},
    )
    assert status == 200 and reply["kind"] == "final", reply


async def test_an_admin_reviews_flags_and_sees_usage_per_user_and_day(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.reply("Noted.", usage=(120, 30))
    await chat_turn(parley, f"my key is {SECRET}")  # the secret is redacted and flagged

    await sign_in(page, parley.url + "/admin", parley.root)
    await expect(page.locator("#who")).to_have_text("Signed in as root (admin)")

    flags = page.locator("#flags-table tbody tr")
    await expect(flags).to_have_count(1)
    flag = flags.first
    for text in ("key:alice", "input", "redact", "secrets", "my key is [secret removed]"):
        await expect(flag).to_contain_text(text)
    assert SECRET not in await page.locator("body").inner_text()

    await flag.get_by_role("button", name="Dismiss").click()
    await expect(flag).to_contain_text("dismissed")
    await expect(flag.get_by_role("button")).to_have_count(0)
    await page.locator("#flags").get_by_role("button", name="Refresh").click()
    await expect(page.locator("#flags-empty")).to_be_visible()
    await page.get_by_label("Show").select_option("all")
    await expect(flags).to_have_count(1)
    await expect(flags.first).to_contain_text("dismissed")

    today = datetime.now(UTC).date().isoformat()
    usage = page.locator("#usage-table tbody tr")
    await expect(usage).to_have_count(1)
    cells = usage.first.locator("td")
    await expect(cells).to_have_text(
        [today, "key:alice", "api", "1", "120", "30", re.compile(r"^\$")]
    )
    bar = page.locator(f'#usage-chart svg rect[data-day="{today}"]')
    await expect(bar).to_have_count(1)
    assert float(await bar.get_attribute("height") or 0) > 100  # the tallest bar
    assert await page.locator("#usage-chart svg rect").count() == 30


async def test_the_console_needs_an_admin_key(
    parley: Parley, fake_openai: FakeOpenAI, browser: Browser
) -> None:
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(page, parley.url + "/admin", parley.alice)
    error = page.locator("#sign-in-error")
    await expect(error).to_contain_text("An admin key is needed")
    await expect(page.locator("#console")).to_be_hidden()
    assert await page.evaluate("localStorage.length") == 0

    # Signed in on the chat page, alice opens the console: the same answer, her key kept.
    await sign_in(page, parley.url + "/", parley.alice)
    await expect(page.locator("#app")).to_be_visible()
    await page.goto(parley.url + "/admin")
    await expect(error).to_contain_text("An admin key is needed")
    await expect(page.locator("#console")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('parley.key')") == parley.alice
    await tab.context.close()
    assert tab.errors == []
    assert fake_openai.chat_requests == []


async def test_an_admin_edits_access_rules_and_channel_settings_and_searches(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.reply("Sure.")
    await chat_turn(parley, "please find <script>window.__pwned=1</script> findme")
    await sign_in(page, parley.url + "/admin", parley.root)

    # Access rules: add one, see it, remove it.
    access = page.locator("#access")
    await expect(access.locator("#rules-empty")).to_be_visible()
    await access.get_by_label("Platform").fill("slack")
    await access.get_by_label("Kind").select_option("user")
    await access.get_by_label("Value").fill("U123")
    await access.get_by_label("List").select_option("block")
    await access.get_by_role("button", name="Add rule").click()
    rules = access.locator("tbody tr")
    await expect(rules).to_have_count(1)
    await expect(rules.first.locator("td")).to_have_text(
        ["slack", "user", "U123", "block", "Remove"]
    )
    status, body = await parley.call("GET", "/api/v1/admin/access-rules", key=parley.root)
    assert body == {
        "rules": [{"platform": "slack", "kind": "user", "value": "U123", "list": "block"}]
    }
    await rules.first.get_by_role("button", name="Remove").click()
    await expect(rules).to_have_count(0)
    await expect(access.locator("#rules-empty")).to_be_visible()

    # Channel settings: look one up, change three fields, save.
    channels = page.locator("#channels")
    await channels.get_by_label("Platform").fill("slack")
    await channels.get_by_label("Workspace").fill("T1")
    await channels.get_by_label("Channel", exact=True).fill("C1")
    await channels.get_by_role("button", name="Look up").click()
    await expect(channels.get_by_label("Persona")).to_have_value("")
    await channels.get_by_label("Persona").select_option("coder")
    await channels.get_by_label("Buffer output").select_option("true")
    await channels.get_by_label("Requests per user per minute").fill("5")
    await channels.get_by_role("button", name="Save").click()
    await expect(channels.locator("#settings-status")).to_contain_text("Saved")
    status, settings = await parley.call(
        "GET", "/api/v1/admin/channels/slack/T1/C1", key=parley.root
    )
    assert status == 200
    assert (settings["persona"], settings["buffer_output"], settings["user_rpm"]) == (
        "coder",
        True,
        5,
    )
    assert settings["merge_queued"] is None

    # Search: the stored message comes back as text.
    search = page.locator("#search")
    await search.get_by_label("Text").fill("findme")
    await search.get_by_role("button", name="Search").click()
    results = search.locator("tbody tr")
    await expect(results).to_have_count(1)
    await expect(results.first).to_contain_text("<script>window.__pwned=1</script> findme")
    await expect(results.first).to_contain_text("key:alice")
    assert await page.evaluate("window.__pwned") is None
    assert await page.evaluate("document.scripts.length") == 1
