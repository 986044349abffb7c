"""Knowledge bases: chunking by structure, adding (unchanged, replaced), searching by meaning
and words, the embedding model recorded with the vectors, another process's changes, and the
search_knowledge tool. The shipped embedding model runs for real."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bots.embedder import LocalEmbedder
from core.knowledge.base import KnowledgeBases, KnowledgeError
from core.knowledge.chunking import chunks, parse
from core.storage import SqlStore, create_database_engine, migrate
from tests.conftest import EngineFactory
from tests.fakes.openai_server import FakeOpenAI
from tests.helpers import turn

HANDBOOK = """# Office handbook

Welcome to the office.

## Parking

The staff car park's gate code is 4417; visitors park on level 2.

```sh
open-gate --code 4417
```

### Bicycles

Bicycles go in the shed behind building B.

## Lunch

The canteen opens at 11:30 and closes at 14:00.
"""


def minimal_pdf(lines: list[str]) -> bytes:
    """A one-page PDF whose text is `lines` (what a word processor's export holds)."""
    text = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    stream = f"BT /F1 12 Tf 72 720 Td {text} ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


def test_markdown_chunks_follow_headings_and_keep_code_blocks_whole() -> None:
    parsed = parse(HANDBOOK.encode(), "handbook.md")
    assert parsed.title == "Office handbook"
    assert [(c.section, c.text) for c in chunks(parsed)] == [
        ("Office handbook", "Welcome to the office."),
        (
            "Office handbook > Parking",
            "The staff car park's gate code is 4417; visitors park on level 2.\n\n"
            "```sh\nopen-gate --code 4417\n```",
        ),
        ("Office handbook > Parking > Bicycles", "Bicycles go in the shed behind building B."),
        ("Office handbook > Lunch", "The canteen opens at 11:30 and closes at 14:00."),
    ]


def test_html_text_without_scripts_navigation_or_markup() -> None:
    page = b"""<html><head><title>FAQ &amp; help</title><style>p {color: red}</style></head>
    <body><nav><a href="/">Home</a></nav><h1>FAQ</h1><p>Reset your password
    in <b>Settings</b>.</p><script>track()</script><h2>Billing</h2><ul><li>Invoices are
    monthly.</li></ul><footer>(c) 2026</footer></body></html>"""
    parsed = parse(page, "https://example.com/faq", "text/html; charset=utf-8")
    assert parsed.title == "FAQ & help"
    assert [(b.section, b.text) for b in parsed.blocks] == [
        ("FAQ", "Reset your password in Settings."),
        ("FAQ > Billing", "Invoices are monthly."),
    ]


def test_pdf_and_plain_text_and_long_paragraphs() -> None:
    parsed = parse(minimal_pdf(["Quarterly report", "Revenue grew by 12 percent."]), "q3.pdf")
    assert parsed.title == "q3.pdf"
    assert [b.section for b in parsed.blocks] == ["page 1"]
    assert "Revenue grew by 12 percent." in parsed.blocks[0].text
    long = " ".join(f"Sentence number {n} is here." for n in range(200))
    pieces = chunks(parse(f"Intro.\n\n{long}".encode(), "notes.txt"), max_chars=300)
    assert all(len(c.text) <= 300 for c in pieces)
    assert " ".join(c.text for c in pieces).replace("\n\n", " ") == f"Intro. {long}"


@pytest.fixture
async def store(database_url: str) -> SqlStore:
    engine = create_database_engine(database_url)
    await migrate(engine)
    store = SqlStore(engine)
    yield store  # type: ignore[misc]
    await store.close()


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


async def test_adding_again_does_nothing_and_a_change_replaces_the_old_chunks(
    store: SqlStore, embedder: LocalEmbedder
) -> None:
    bases = KnowledgeBases(store, embedder)
    added = await bases.add("office", "/docs/handbook.md", HANDBOOK.encode())
    assert (added.status, added.chunks) == ("added", 4)
    assert (await bases.add("office", "/docs/handbook.md", HANDBOOK.encode())).status == (
        "unchanged"
    )
    changed = HANDBOOK.replace("4417", "9082")
    assert (await bases.add("office", "/docs/handbook.md", changed.encode())).status == "replaced"
    [hit] = await bases.search(["office"], "What is the code of the car park gate?", 1)
    assert "9082" in hit.text and "4417" not in hit.text
    assert hit.cited == "Office handbook > Parking" and hit.source == "/docs/handbook.md"
    assert [d.chunk_count for d in await bases.documents("office")] == [4]
    assert await bases.remove("office", "/docs/handbook.md") == 1
    assert await bases.search(["office"], "car park gate", 1) == []


async def test_search_finds_paraphrases_and_exact_words(
    store: SqlStore, embedder: LocalEmbedder
) -> None:
    bases = KnowledgeBases(store, embedder)
    docs = Path(__file__).parent / "knowledge_docs"
    for path in sorted(docs.glob("*.md")):
        await bases.add("company", str(path), path.read_bytes())
    questions = json.loads((docs / "questions.json").read_text())
    for question in questions:
        hits = await bases.search(["company"], question["question"], 5)
        assert any(question["answer"] in hit.text for hit in hits), question["question"]


async def test_vectors_of_another_model_are_never_compared(
    store: SqlStore, embedder: LocalEmbedder
) -> None:
    await KnowledgeBases(store, embedder).add("office", "/docs/h.md", HANDBOOK.encode())

    class Other:
        name = "another-model"

        async def embed(self, texts: list[str]) -> object:
            return await embedder.embed(texts)

    other = KnowledgeBases(store, Other())  # type: ignore[arg-type]
    with pytest.raises(KnowledgeError, match="parley kb rebuild office"):
        await other.search(["office"], "parking", 3)
    assert await other.rebuild("office") == 4
    [hit] = await other.search(["office"], "the car park gate code", 1)
    assert "4417" in hit.text


async def test_another_process_adding_a_document_is_seen_at_the_next_search(
    store: SqlStore, embedder: LocalEmbedder, database_url: str
) -> None:
    reader = KnowledgeBases(store, embedder)
    await reader.add("office", "/docs/h.md", HANDBOOK.encode())
    assert "Biscuit" not in (await reader.search(["office"], "the office cat", 1))[0].text
    other = SqlStore(create_database_engine(database_url))
    try:
        cat = b"# Pets\n\nThe office cat is called Biscuit and likes tuna."
        await KnowledgeBases(other, embedder).add("office", "/docs/cat.md", cat)
    finally:
        await other.close()
    assert "Biscuit" in (await reader.search(["office"], "the office cat", 1))[0].text


async def test_the_model_can_search_knowledge_itself(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, tmp_path: Path, sqlite_url: str
) -> None:
    (tmp_path / "office.toml").write_text(
        'knowledge = ["office"]\ntools = ["search_knowledge"]\n'
        'system_prompt = "You are the office assistant."\n'
    )
    fake_openai.call(("search_knowledge", json.dumps({"query": "car park gate code"})))
    fake_openai.reply("It is 4417 [Office handbook > Parking].")
    settings = {"PARLEY_PERSONAS_DIR": str(tmp_path), "PARLEY_PERSONA": "office"}
    async with engine_factory(PARLEY_KB_PASSAGES=0, **settings) as runtime:
        assert isinstance(runtime.store, SqlStore)
        await KnowledgeBases(runtime.store, LocalEmbedder()).add(
            "office", "/docs/handbook.md", HANDBOOK.encode()
        )
        await turn(runtime.engine, "How do I get into the car park?")
    first, second = fake_openai.chat_requests
    assert "<passage" not in first["messages"][0]["content"]  # PARLEY_KB_PASSAGES=0
    [result] = [m["content"] for m in second["messages"] if m["role"] == "tool"]
    assert "[Office handbook > Parking] (/docs/handbook.md)" in result
    assert "gate code is 4417" in result
    assert result.startswith('<tool_result name="search_knowledge">')


async def test_passages_take_at_most_a_quarter_of_a_small_context(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    (tmp_path / "office.toml").write_text(
        'knowledge = ["office"]\nsystem_prompt = "You are the office assistant."\n'
    )
    long_section = "## Parking\n\n" + "The gate code is 4417. " + "Park with care. " * 60
    fake_openai.reply("4417.")
    settings = {"PARLEY_PERSONAS_DIR": str(tmp_path), "PARLEY_PERSONA": "office"}
    async with engine_factory(PARLEY_CONTEXT_TOKENS=2000, **settings) as runtime:
        assert isinstance(runtime.store, SqlStore)
        bases = KnowledgeBases(runtime.store, LocalEmbedder())
        await bases.add("office", "/docs/h.md", f"# Handbook\n\n{long_section}".encode())
        await turn(runtime.engine, "What is the gate code?")
    system = fake_openai.chat_requests[0]["messages"][0]["content"]
    block = system[system.index("Passages from the knowledge base") :]
    assert len(block) <= 2000 // 4
    assert "The gate code is 4417." in block and block.endswith("…\n</passage>")


async def test_a_channel_chooses_its_knowledge_bases_with_kb(
    engine_factory: EngineFactory, fake_openai: FakeOpenAI
) -> None:
    for _ in range(3):
        fake_openai.reply("ok")
    async with engine_factory() as runtime:  # the default persona has no knowledge base
        assert isinstance(runtime.store, SqlStore)
        await KnowledgeBases(runtime.store, LocalEmbedder()).add(
            "office", "/docs/handbook.md", HANDBOOK.encode()
        )
        await turn(runtime.engine, "What is the car park gate code?")
        answer = await turn(runtime.engine, "/kb office")
        assert "office" in answer[-1].text  # type: ignore[union-attr]
        await turn(runtime.engine, "What is the car park gate code?")
        await turn(runtime.engine, "/kb none")
        await turn(runtime.engine, "What is the car park gate code?")
    systems = [r["messages"][0]["content"] for r in fake_openai.chat_requests]
    assert ["4417" in system for system in systems] == [False, True, False]
