"""Knowledge bases: retrieval quality, ingestion speed and query latency, with the shipped
embedding model (all-MiniLM-L6-v2 int8, onnxruntime, on this machine's CPUs).

1. Quality: the documents and 20 paraphrased questions shipped with the tests
   (tests/unit/knowledge_docs) are added to a fresh base; recall@1 and recall@5 count the
   questions whose answer is in the first / first five passages; "in the prompt" counts those
   whose answer is in the passages the engine puts before the model (PARLEY_KB_PASSAGES=4,
   PARLEY_KB_TOKENS=1500), built by the engine's own `knowledge_block`.
2. Ingestion: chunks per second of `KnowledgeBases.add` over those documents repeated with
   changes (parsing, chunking, embedding, storing).
3. Query latency at 1,000 and 100,000 chunks: a base seeded with that many chunks (random
   unit vectors, text of ~60 words; untimed bulk inserts), then the first search (which loads
   the in-memory index) and 50 warm searches (embedding the question included): p50 and p95.

    python -m bench.knowledge --database sqlite
    python -m bench.knowledge --database postgres --postgres-url postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import statistics
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from time import perf_counter

import numpy as np
from sqlalchemy import insert

from bots.embedder import LocalEmbedder
from core.knowledge.base import KnowledgeBases
from core.knowledge.passages import knowledge_block
from core.storage import SqlStore, create_database_engine, migrate
from core.storage.tables import kb_chunks, kb_documents
from tests.fakes.databases import throwaway_postgres_database

DOCS = Path(__file__).resolve().parents[1] / "tests" / "unit" / "knowledge_docs"
WORDS = [
    "the",
    "team",
    "office",
    "policy",
    "code",
    "release",
    "review",
    "leave",
    "expense",
    "laptop",
    "printer",
    "network",
    "customer",
    "invoice",
    "report",
    "meeting",
    "project",
    "budget",
    "travel",
    "badge",
    "security",
    "canteen",
    "holiday",
    "parking",
    "password",
    "manager",
    "engineer",
    "incident",
    "service",
    "deploy",
    "backup",
]


@asynccontextmanager
async def database(kind: str, postgres_url: str) -> AsyncIterator[SqlStore]:
    """A migrated store on a throwaway PostgreSQL database or a temporary SQLite file."""
    async with AsyncExitStack() as stack:
        if kind == "postgres":
            url = await stack.enter_async_context(
                throwaway_postgres_database(postgres_url, "parley_kb")
            )
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory())
            url = f"sqlite+aiosqlite:///{folder}/kb.db"
        engine = create_database_engine(url)
        await migrate(engine)
        store = SqlStore(engine)
        try:
            yield store
        finally:
            await store.close()


async def quality(bases: KnowledgeBases) -> None:
    for path in sorted(DOCS.glob("*.md")):
        await bases.add("quality", str(path), path.read_bytes())
    questions = json.loads((DOCS / "questions.json").read_text())
    at1 = at5 = prompted = 0
    for q in questions:
        hits = await bases.search(["quality"], q["question"], 5)
        at1 += q["answer"] in hits[0].text
        at5 += any(q["answer"] in hit.text for hit in hits)
        prompted += q["answer"] in knowledge_block(hits[:4], 1500 * 4)
    n = len(questions)
    print(
        f"quality: {n} questions: recall@1 {at1}/{n}, recall@5 {at5}/{n}, "
        f"in the prompt {prompted}/{n}"
    )


async def ingestion(bases: KnowledgeBases) -> None:
    documents = [p.read_text() for p in sorted(DOCS.glob("*.md"))]
    chunks = 0
    started = perf_counter()
    for copy in range(10):
        for n, text in enumerate(documents):
            added = await bases.add(
                "ingest", f"/docs/{copy}/{n}.md", f"{text}\n\nCopy {copy}.".encode()
            )
            chunks += added.chunks
    elapsed = perf_counter() - started
    print(f"ingestion: {chunks} chunks in {elapsed:.1f} s: {chunks / elapsed:.0f} chunks/s")


async def seed(store: SqlStore, kb: str, count: int, model: str) -> None:
    rng = np.random.default_rng(7)
    words = random.Random(7)
    per_document = 100

    def work(connection: object) -> None:
        for start in range(0, count, per_document):
            document_id = connection.execute(  # type: ignore[attr-defined]
                insert(kb_documents)
                .values(
                    kb=kb,
                    source=f"/seed/{start}.md",
                    title=f"Seeded document {start}",
                    content_hash=f"{start:064d}",
                    embedding_model=model,
                    chunk_count=per_document,
                )
                .returning(kb_documents.c.id)
            ).scalar_one()
            vectors = rng.standard_normal((per_document, 384)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            connection.execute(  # type: ignore[attr-defined]
                insert(kb_chunks),
                [
                    {
                        "document_id": document_id,
                        "kb": kb,
                        "ordinal": i,
                        "section": "Section",
                        "text": " ".join(words.choices(WORDS, k=60)),
                        "vector": vectors[i].tobytes(),
                    }
                    for i in range(per_document)
                ],
            )

    await store.run(work)


async def latency(store: SqlStore, bases: KnowledgeBases, count: int) -> None:
    kb = f"seeded-{count}"
    await seed(store, kb, count, bases.model)
    questions = [
        f"What does the {w} policy say about {v}?" for w, v in zip(WORDS, WORDS[3:], strict=False)
    ]
    started = perf_counter()
    await bases.search([kb], "How do I reset my password?", 5)
    first = (perf_counter() - started) * 1000
    times = []
    for question in questions * 2:
        started = perf_counter()
        await bases.search([kb], question, 5)
        times.append((perf_counter() - started) * 1000)
    times.sort()
    p95 = times[int(len(times) * 0.95) - 1]
    print(
        f"latency at {count:,} chunks: first search (loads the index) {first:.0f} ms; "
        f"then p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms over {len(times)}"
    )


async def main(args: argparse.Namespace) -> None:
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs, database {args.database}")
    async with database(args.database, args.postgres_url) as store:
        bases = KnowledgeBases(store, LocalEmbedder())
        await quality(bases)
        await ingestion(bases)
        for count in args.chunks:
            await latency(store, bases, count)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process {peak:.0f} MiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--chunks", type=lambda s: [int(n) for n in s.split(",")], default=[1_000, 100_000]
    )
    asyncio.run(main(parser.parse_args()))
