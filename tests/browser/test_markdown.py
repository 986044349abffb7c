"""The Markdown renderer (static/markdown.js) case by case, in Chromium, with no server: the
page and its modules are served from the repository through Playwright's routing."""

from __future__ import annotations

from playwright.async_api import Route

from tests.browser.conftest import STATIC, Tab

ORIGIN = "http://parley.test"

# (Markdown, the innerHTML it renders to). The renderer builds nodes, never parses HTML, so
# every "<" in the text comes back escaped.
CASES = [
    ("plain", "<p>plain</p>"),
    ("one\ntwo\n\nthree", "<p>one<br>two</p><p>three</p>"),
    ("# Title\n### Small", "<h1>Title</h1><h3>Small</h3>"),
    (
        "*it* and **bold** and __also__",
        "<p><em>it</em> and <strong>bold</strong> and <strong>also</strong></p>",
    ),
    ("***both***", "<p><strong><em>both</em></strong></p>"),
    ("snake_case_name and 2 * 3 * 4", "<p>snake_case_name and 2 * 3 * 4</p>"),
    ("`<b>x</b>` and ``a`b``", "<p><code>&lt;b&gt;x&lt;/b&gt;</code> and <code>a`b</code></p>"),
    (
        "```python\nprint('<hi>')\n\n**no**\n```",
        '<pre><code class="language-python" data-language="python">'
        "print('&lt;hi&gt;')\n\n**no**</code></pre>",
    ),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
    ("- a\n- **b**\n* c", "<ul><li>a</li><li><strong>b</strong></li><li>c</li></ul>"),
    ("3. c\n4. d", '<ol start="3"><li>c</li><li>d</li></ol>'),
    ("> quoted\n> *more*", "<blockquote><p>quoted<br><em>more</em></p></blockquote>"),
    ("a\n\n---\n\nb", "<p>a</p><hr><p>b</p>"),
    (
        "[ok](https://example.com/a?b=1&c=2)",
        '<p><a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer nofollow" '
        'target="_blank">ok</a></p>',
    ),
    (
        "[**mail**](mailto:a@example.com)",
        '<p><a href="mailto:a@example.com" rel="noopener noreferrer nofollow" '
        'target="_blank"><strong>mail</strong></a></p>',
    ),
    (
        "see https://example.com/wiki/A_(b).",
        '<p>see <a href="https://example.com/wiki/A_(b)" rel="noopener noreferrer nofollow" '
        'target="_blank">https://example.com/wiki/A_(b)</a>.</p>',
    ),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[x](JaVaScRiPt:alert(1))", "<p>[x](JaVaScRiPt:alert(1))</p>"),
    ("[x]( javascript:alert(1) )", "<p>[x]( javascript:alert(1) )</p>"),
    ("[x](data:text/html;base64,PHNjcmlwdD4=)", "<p>[x](data:text/html;base64,PHNjcmlwdD4=)</p>"),
    ("[x](vbscript:msgbox)", "<p>[x](vbscript:msgbox)</p>"),
    ("[x](/relative/path)", "<p>[x](/relative/path)</p>"),
    ("[x](//evil.example/)", "<p>[x](//evil.example/)</p>"),
    (
        "![img](https://example.com/t.png)",
        '<p>!<a href="https://example.com/t.png" '
        'rel="noopener noreferrer nofollow" target="_blank">img</a></p>',
    ),
    (
        '<a href="javascript:alert(1)">x</a><img src=x onerror=alert(1)>',
        '<p>&lt;a href="javascript:alert(1)"&gt;x&lt;/a&gt;&lt;img src=x onerror=alert(1)&gt;</p>',
    ),
    ("<script>alert(1)</script>", "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"),
    ("# <svg onload=alert(1)>", "<h1>&lt;svg onload=alert(1)&gt;</h1>"),
    ("\\*not italic\\*", "<p>*not italic*</p>"),
]


async def serve_static(route: Route) -> None:
    name = route.request.url.removeprefix(f"{ORIGIN}/static/")
    path = STATIC / name
    if route.request.url == f"{ORIGIN}/":
        path = STATIC / "index.html"
    if not path.is_file() or path.parent != STATIC:
        await route.fulfill(status=404, body="")
        return
    await route.fulfill(path=path)


async def test_the_renderer_builds_only_safe_elements(tab: Tab) -> None:
    page = tab.page
    await page.route(f"{ORIGIN}/**", serve_static)
    await page.goto(f"{ORIGIN}/")
    rendered = await page.evaluate(
        """async (cases) => {
          const { renderMarkdown } = await import("/static/markdown.js");
          return cases.map((source) => {
            const box = document.createElement("div");
            box.append(renderMarkdown(source));
            return box.innerHTML;
          });
        }""",
        [source for source, _ in CASES],
    )
    wrong = [
        (source, expected, got)
        for (source, expected), got in zip(CASES, rendered, strict=True)
        if got != expected
    ]
    assert not wrong, "\n".join(f"{s!r}\n  expected {e!r}\n  got      {g!r}" for s, e, g in wrong)
    assert await page.evaluate("document.querySelectorAll('img, svg, iframe').length") == 0
