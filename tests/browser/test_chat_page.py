"""The web chat (`/`) in headless Chromium against `parley run http` and the scripted model."""

from __future__ import annotations

import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import Parley, Tab, run_parley, sign_in
from tests.fakes.openai_server import FakeOpenAI

# Records, in the page, every text the streamed answer showed and whether "answering…" was on.
RECORD_RENDERS = """() => {
  window.__renders = [];
  window.__answering = [];
  const answering = document.getElementById("answering");
  new MutationObserver(() => window.__answering.push(!answering.hidden))
    .observe(answering, { attributes: true, attributeFilter: ["hidden"] });
  new MutationObserver(() => {
    const body = document.querySelector("#messages .msg.assistant:last-of-type .body");
    if (body) window.__renders.push(body.textContent);
  }).observe(document.getElementById("messages"),
             { subtree: true, childList: true, characterData: true });
}"""


async def send(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    await box.fill(text)
    await box.press("Enter")


async def test_a_signed_in_user_sees_the_answer_stream_in_and_finds_it_after_a_reload(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    answer = "Hello Alice, this answer arrives in several pieces over the stream. **Welcome!**"
    shown = "Hello Alice, this answer arrives in several pieces over the stream. Welcome!"
    fake_openai.reply(answer, chunk_size=8, chunk_delay=0.04)

    await sign_in(page, parley.url + "/", parley.alice)
    await expect(page.locator("#who")).to_have_text("Signed in as alice")
    await expect(page.get_by_label("Persona")).to_have_value("assistant")
    await page.evaluate(RECORD_RENDERS)
    await send(page, "Hi, I am Alice")

    assistant = page.locator("#messages .msg.assistant")
    await expect(assistant).to_have_count(1)
    await expect(assistant.locator(".body")).to_have_text(shown)
    await expect(assistant.locator("strong")).to_have_text("Welcome!")
    await expect(page.locator("#answering")).to_be_hidden()
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("")
    renders: list[str] = await page.evaluate("window.__renders")
    partial = [r for r in renders if r and r != shown and shown.startswith(r)]
    assert partial, f"no partial answer was shown while streaming: {renders}"
    assert await page.evaluate("window.__answering") == [True, False]

    assert len(fake_openai.chat_requests) == 1
    assert "Hi, I am Alice" in fake_openai.chat_requests[0]["messages"][-1]["content"]

    listed = page.locator("#conversations li")
    await expect(listed).to_have_count(1)
    await expect(listed).to_contain_text("Hi, I am Alice")
    await expect(page.locator("#conversation-title")).to_have_text("Hi, I am Alice")

    # A reload keeps the key and reopens the conversation (its id is in the address).
    await page.reload()
    await expect(page.locator("#who")).to_have_text("Signed in as alice")
    await expect(page.locator("#messages .msg.user .body")).to_have_text(["Hi, I am Alice"])
    await expect(page.locator("#messages .msg.assistant .body")).to_have_text([shown])

    # Coming back to the site: the conversation is listed and reopens from the list.
    await page.goto(parley.url + "/")
    await expect(page.locator("#messages .msg")).to_have_count(0)
    await page.locator("#conversations").get_by_role("button", name="Hi, I am Alice").click()
    await expect(page.locator("#messages .msg.user .body")).to_have_text(["Hi, I am Alice"])
    await expect(page.locator("#messages .msg.assistant .body")).to_have_text([shown])
    await expect(page.locator("#messages .msg.assistant strong")).to_have_text("Welcome!")
    assert len(fake_openai.chat_requests) == 1


XSS_ANSWER = (
    'An image: <img src=x onerror="window.__pwned=1"> and a script: '
    "<script>window.__pwned=2</script>\n\n"
    "A link: [click](javascript:window.__pwned=3) and "
    '<a href="javascript:window.__pwned=4">raw link</a>\n\n'
    "[ok](https://example.com) and **bold**\n\n"
    '```html\n<img src=y onerror="window.__pwned=5">\n```'
)
XSS_QUESTION = '<b>hi</b><img src=z onerror="window.__pwned=6"> there'


async def test_markup_in_answers_and_questions_shows_as_text_and_runs_nothing(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.reply(XSS_ANSWER)
    await sign_in(page, parley.url + "/", parley.alice)
    await send(page, XSS_QUESTION)

    answer = page.locator("#messages .msg.assistant .body")
    await expect(answer).to_contain_text("raw link")
    await expect(page.locator("#answering")).to_be_hidden()
    for text in (
        '<img src=x onerror="window.__pwned=1">',
        "<script>window.__pwned=2</script>",
        "[click](javascript:window.__pwned=3)",
        '<a href="javascript:window.__pwned=4">raw link</a>',
        '<img src=y onerror="window.__pwned=5">',
    ):
        await expect(answer).to_contain_text(text)
    await expect(page.locator("#messages .msg.user .body")).to_have_text(XSS_QUESTION)
    await expect(answer.locator("code")).to_have_text('<img src=y onerror="window.__pwned=5">')

    async def nothing_ran() -> None:
        assert await page.evaluate("window.__pwned") is None
        assert await page.locator("img").count() == 0
        assert await page.evaluate("[...document.scripts].map(s => s.getAttribute('src'))") == [
            "/static/chat.js"
        ]
        hrefs = await page.locator("#messages a").evaluate_all(
            "links => links.map(a => a.getAttribute('href'))"
        )
        assert hrefs == ["https://example.com"]

    await nothing_ran()
    await expect(answer.get_by_role("link", name="ok")).to_have_attribute(
        "href", "https://example.com"
    )
    await expect(answer.locator("strong")).to_have_text("bold")
    # The unsafe link is text, not a link: clicking it does nothing.
    await answer.get_by_text("[click](javascript:window.__pwned=3)").click()

    # The stored conversation (its title is the question's first words) renders safely too.
    await page.reload()
    await expect(page.locator("#messages .msg.assistant .body")).to_contain_text("raw link")
    await expect(page.locator("#conversations li")).to_contain_text("<b>hi</b>")
    await nothing_ran()


async def test_a_wrong_or_revoked_key_sends_the_user_to_sign_in_and_nothing_is_kept(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    await sign_in(page, parley.url + "/", "pk-not-a-real-key")

    error = page.locator("#sign-in-error")
    await expect(error).to_have_text("That key was not accepted. Check it and try again.")
    await expect(page.locator("#app")).to_be_hidden()
    await expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
    assert await page.evaluate("localStorage.length") == 0

    # A saved key that stops working (revoked, say) sends the user back to sign in.
    await page.evaluate("localStorage.setItem('parley.key', 'pk-revoked')")
    await page.reload()
    await expect(error).to_contain_text("Your saved key is no longer accepted")
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("localStorage.length") == 0

    assert fake_openai.chat_requests == []
    status, body = await parley.call("GET", "/api/v1/conversations", key=parley.alice)
    assert (status, body) == (200, {"conversations": []})

    # A key revoked while signed in: the next call answers 401 and the page asks for a key.
    await sign_in(page, parley.url + "/", parley.alice)
    await expect(page.locator("#app")).to_be_visible()
    code, _, err = await run_parley("keys", "revoke", "alice", env=parley.env, cwd=parley.cwd)
    assert code == 0, err
    await send(page, "are you there?")
    await expect(error).to_contain_text("Your key is no longer accepted")
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("localStorage.length") == 0
    assert fake_openai.chat_requests == []


async def test_sign_out_forgets_the_key_and_personas_reset_and_commands_work(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.reply("def f(): ...")
    fake_openai.reply("Fresh start.")
    await sign_in(page, parley.url + "/", parley.alice)

    persona = page.get_by_label("Persona")
    await expect(persona).to_have_value("assistant")
    await persona.select_option("coder")
    await send(page, "write f")
    await expect(page.locator("#messages .msg.assistant .body")).to_have_text("def f(): ...")
    assert "senior software engineer" in fake_openai.chat_requests[0]["messages"][0]["content"]
    await expect(page.locator("#conversations li")).to_contain_text("coder")

    # A command's answer is a notice; changing the persona of the open conversation.
    await send(page, "/persona")
    await expect(page.locator("#messages .notice.command")).to_contain_text("coder")
    await persona.select_option("assistant")
    await expect(page.locator("#messages .notice.info")).to_contain_text("assistant")
    await page.get_by_role("button", name="Reset").click()
    await expect(page.locator("#messages .notice.info").last).to_contain_text("reset")
    await send(page, "hello again")
    await expect(page.locator("#messages .msg.assistant .body").last).to_have_text("Fresh start.")
    second = fake_openai.chat_requests[1]["messages"]
    assert "senior software engineer" not in second[0]["content"]
    assert "write f" not in str(second)  # the reset forgot the history

    # Shift+Enter makes a new line instead of sending.
    box = page.get_by_role("textbox", name="Message")
    await box.fill("one")
    await box.press("Shift+Enter")
    await box.type("two")
    await expect(box).to_have_value("one\ntwo")
    await box.fill("")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    await expect(page.locator("#app")).to_be_hidden()
    assert await page.evaluate("localStorage.length") == 0
    await page.reload()
    await expect(page.get_by_label("API key")).to_be_visible()
    await expect(page.locator("#messages .msg")).to_have_count(0)


# Every text a tool-activity line showed.
RECORD_TOOLS = """() => {
  window.__tools = [];
  new MutationObserver(() => {
    for (const li of document.querySelectorAll("#messages .tools li")) {
      window.__tools.push(li.textContent);
    }
  }).observe(document.getElementById("messages"),
             { subtree: true, childList: true, characterData: true });
}"""


@pytest.mark.parametrize("parley_env", [{"PARLEY_USER_RPM": "2"}])
async def test_tool_activity_failures_and_limits_show_as_notices(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.call(("calculate", '{"expression": "6 * 7"}'))
    fake_openai.reply("6 times 7 is **42**.")
    fake_openai.error(500)
    await sign_in(page, parley.url + "/", parley.alice)
    await page.evaluate(RECORD_TOOLS)

    await send(page, "what is 6 times 7?")
    answer = page.locator("#messages .msg.assistant").last
    await expect(answer.locator(".body")).to_have_text("6 times 7 is 42.")
    await expect(answer.locator(".tools li")).to_have_text("used calculate")
    assert "using calculate…" in await page.evaluate("window.__tools")

    # The model fails: a notice says so, and the question can be sent again.
    await send(page, "and 6 times 8?")
    failed = page.locator("#messages .notice.failed")
    await expect(failed).to_have_count(1)
    await expect(failed).not_to_be_empty()
    await expect(page.locator("#answering")).to_be_hidden()

    # Over the limit of 2 messages a minute: a 429, its message shown inline, the text kept.
    await send(page, "one more")
    limited = page.locator("#messages .notice.error")
    await expect(limited).to_have_count(1)
    await expect(limited).to_contain_text("the limit is 2 a minute")
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("one more")
    await expect(page.locator("#answering")).to_be_hidden()
    assert len(fake_openai.chat_requests) == 3


@pytest.mark.parametrize("parley_env", [{"PARLEY_MODERATION": "openai"}])
async def test_an_answer_withdrawn_by_moderation_disappears_from_the_page(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    fake_openai.flag_when("gory details", {"violence/graphic": 0.99})
    fake_openai.reply("Here come the gory details of it all, in pieces.", chunk_delay=0.02)
    await sign_in(page, parley.url + "/", parley.alice)
    await page.evaluate(RECORD_RENDERS)
    await send(page, "tell me a story")

    notice = page.locator("#messages .notice.retracted")
    await expect(notice).to_have_count(1)
    await expect(notice).not_to_be_empty()
    await expect(page.locator("#answering")).to_be_hidden()
    await expect(page.locator("#messages .msg.assistant")).to_have_count(0)
    assert "gory details" not in await page.locator("#messages").inner_text()
    assert any("gory" in text for text in await page.evaluate("window.__renders"))


async def test_a_user_the_access_rules_keep_out_sees_why(
    parley: Parley, fake_openai: FakeOpenAI, tab: Tab
) -> None:
    page = tab.page
    rule = {"platform": "api", "kind": "user", "value": "key:alice", "list": "block"}
    status, body = await parley.call(
        "POST", "/api/v1/admin/access-rules", key=parley.root, json=rule
    )
    assert status == 201, body
    await sign_in(page, parley.url + "/", parley.alice)
    await send(page, "let me in")

    refused = page.locator("#messages .notice.error")
    await expect(refused).to_have_count(1)
    await expect(refused).not_to_be_empty()
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("let me in")
    await expect(page.locator("#answering")).to_be_hidden()
    await expect(page.locator("#app")).to_be_visible()  # a 403 is not a sign-out
    assert fake_openai.chat_requests == []
