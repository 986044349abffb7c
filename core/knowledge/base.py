"""Knowledge bases: documents added, chunked, embedded and stored; searched by meaning and by
words together.

The search is exact and portable: a knowledge base's vectors are loaded into memory (float32,
L2-normalised, so cosine similarity is one matrix product) and its words into a BM25 index,
both rebuilt when another process changed the base; the two rankings are fused by reciprocal
rank. It runs the same on SQLite and PostgreSQL, with no database extension.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sqlalchemy import Connection, delete, func, insert, select

from core.knowledge.chunking import chunks, parse
from core.knowledge.passages import Hit
from core.storage.sql import SqlStore
from core.storage.tables import kb_chunks, kb_documents

CANDIDATES = 50  # from each ranking, before fusing
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al.)
_WORD = re.compile(r"\w+", re.UNICODE)


class KnowledgeError(Exception):
    """Something the user must fix (a base built with another model, nothing to add)."""


class Embedder(Protocol):
    """Text to unit vectors. `name` is recorded with every vector it made."""

    name: str

    async def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]: ...


@dataclass(frozen=True, slots=True)
class Document:
    kb: str
    source: str
    title: str
    chunk_count: int
    embedding_model: str


@dataclass(frozen=True, slots=True)
class Added:
    source: str
    status: str  # added, replaced or unchanged
    chunks: int


@dataclass
class _Index:
    version: tuple[int, int]
    vectors: np.ndarray[Any, np.dtype[np.float32]]
    rows: list[Any]  # (source, title, section, text, model) per chunk
    # BM25: for each word, the chunks holding it and how often; each chunk's length.
    postings: dict[
        str, tuple[np.ndarray[Any, np.dtype[np.int64]], np.ndarray[Any, np.dtype[np.float32]]]
    ]
    lengths: np.ndarray[Any, np.dtype[np.float32]]


class KnowledgeBases:
    def __init__(self, store: SqlStore, embedder: Embedder) -> None:
        self._store = store
        self._embedder = embedder
        self._indexes: dict[str, _Index] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    @property
    def model(self) -> str:
        return self._embedder.name

    async def add(self, kb: str, source: str, data: bytes, content_type: str = "") -> Added:
        """Add a document, or replace its older version; an unchanged one is left alone."""
        digest = hashlib.sha256(data).hexdigest()
        d = kb_documents.c
        existing = await self._store.run(
            lambda c: c.execute(
                select(d.content_hash, d.embedding_model).where(d.kb == kb, d.source == source)
            ).first(),
            write=False,
        )
        if existing is not None and tuple(existing) == (digest, self.model):
            return Added(source, "unchanged", 0)
        parsed = parse(data, source, content_type)
        pieces = chunks(parsed)
        if not pieces:
            raise KnowledgeError(f"{source}: no text found")
        # The section goes into what is embedded: it often names the subject.
        vectors = await self._embedder.embed(
            [f"{parsed.title}. {p.section}. {p.text}" for p in pieces]
        )

        def work(connection: Connection) -> None:
            connection.execute(delete(kb_documents).where(d.kb == kb, d.source == source))
            document_id = connection.execute(
                insert(kb_documents)
                .values(
                    kb=kb,
                    source=source,
                    title=parsed.title[:512],
                    content_hash=digest,
                    embedding_model=self.model,
                    chunk_count=len(pieces),
                )
                .returning(d.id)
            ).scalar_one()
            connection.execute(
                insert(kb_chunks),
                [
                    {
                        "document_id": document_id,
                        "kb": kb,
                        "ordinal": n,
                        "section": piece.section[:512],
                        "text": piece.text,
                        "vector": vectors[n].astype(np.float32).tobytes(),
                    }
                    for n, piece in enumerate(pieces)
                ],
            )

        await self._store.run(work)
        return Added(source, "added" if existing is None else "replaced", len(pieces))

    async def remove(self, kb: str, source: str | None = None) -> int:
        """Remove one document, or the whole base; how many documents went."""
        d = kb_documents.c
        statement = delete(kb_documents).where(d.kb == kb)
        if source is not None:
            statement = statement.where(d.source == source)
        return int(await self._store.run(lambda c: c.execute(statement).rowcount))

    async def documents(self, kb: str | None = None) -> list[Document]:
        d = kb_documents.c
        statement = select(d.kb, d.source, d.title, d.chunk_count, d.embedding_model).order_by(
            d.kb, d.source
        )
        if kb is not None:
            statement = statement.where(d.kb == kb)
        rows = await self._store.run(lambda c: c.execute(statement).all(), write=False)
        return [Document(*row) for row in rows]

    async def search(self, kbs: Sequence[str], query: str, limit: int = 5) -> list[Hit]:
        """The best `limit` chunks of these bases for `query`."""
        if not kbs or not query.strip():
            return []
        [vector] = await self._embedder.embed([query])
        words = _words(query)
        found: list[Hit] = []
        for kb in kbs:
            index = await self._index(kb)
            if index is None:
                continue
            similarity = index.vectors @ vector
            by_meaning = _top(similarity, CANDIDATES)
            bm25 = _bm25(index, words)
            by_words = [i for i in _top(bm25, CANDIDATES) if bm25[i] > 0]
            fused: dict[int, float] = {}
            for ranking in (by_meaning, by_words):
                for rank, i in enumerate(ranking):
                    fused[i] = fused.get(i, 0.0) + 1 / (RRF_K + rank + 1)
            best = sorted(fused.items(), key=lambda item: -item[1])[:limit]
            for i, score in best:
                source, title, section, text, _ = index.rows[i]
                found.append(Hit(kb, source, title, section, text, score, float(similarity[i])))
        found.sort(key=lambda hit: -hit.score)
        return found[:limit]

    async def rebuild(self, kb: str) -> int:
        """Embed a base's stored chunks again with the current model; how many."""
        c, d = kb_chunks.c, kb_documents.c
        rows = await self._store.run(
            lambda conn: conn.execute(
                select(c.id, d.title, c.section, c.text)
                .join(kb_documents, d.id == c.document_id)
                .where(c.kb == kb)
                .order_by(c.id)
            ).all(),
            write=False,
        )
        vectors = await self._embedder.embed([f"{t}. {s}. {x}" for _, t, s, x in rows])

        def work(connection: Connection) -> None:
            for (chunk_id, *_), vector in zip(rows, vectors, strict=True):
                connection.execute(
                    kb_chunks.update()
                    .where(c.id == chunk_id)
                    .values(vector=vector.astype(np.float32).tobytes())
                )
            connection.execute(
                kb_documents.update().where(d.kb == kb).values(embedding_model=self.model)
            )

        await self._store.run(work)
        self._indexes.pop(kb, None)
        return len(rows)

    async def _index(self, kb: str) -> _Index | None:
        """The base's in-memory index, read again when the database changed under it."""
        # Documents are replaced (deleted and inserted), never edited: their count and newest
        # id change with every change to the base, and there are few of them to count.
        d = kb_documents.c
        version_query = select(func.count(), func.coalesce(func.max(d.id), 0)).where(d.kb == kb)
        row = await self._store.run(lambda conn: conn.execute(version_query).one(), write=False)
        version = (int(row[0]), int(row[1]))
        if version[0] == 0:
            return None
        index = self._indexes.get(kb)
        if index is not None and index.version == version:
            return index
        async with self._loading.setdefault(kb, asyncio.Lock()):
            index = self._indexes.get(kb)
            if index is None or index.version != version:
                index = await self._load(kb, version)
                self._indexes[kb] = index
        return index

    async def _load(self, kb: str, version: tuple[int, int]) -> _Index:
        c, d = kb_chunks.c, kb_documents.c
        statement = (
            select(c.id, d.source, d.title, c.section, c.text, d.embedding_model, c.vector)
            .join(kb_documents, d.id == c.document_id)
            .where(c.kb == kb)
            .order_by(c.id)
        )
        rows = await self._store.run(lambda conn: conn.execute(statement).all(), write=False)
        models = {row.embedding_model for row in rows}
        if models != {self.model}:
            others = ", ".join(sorted(models - {self.model}))
            raise KnowledgeError(
                f"knowledge base {kb!r} was built with {others}, not {self.model}: run "
                f"`parley kb rebuild {kb}` before searching it"
            )
        vectors = np.frombuffer(b"".join(row.vector for row in rows), dtype=np.float32)
        chunks_of: dict[str, list[int]] = {}
        counts_of: dict[str, list[int]] = {}
        lengths = np.empty(len(rows), dtype=np.float32)
        for i, row in enumerate(rows):
            counted = Counter(_words(f"{row.title} {row.section} {row.text}"))
            lengths[i] = sum(counted.values())
            for word, count in counted.items():
                chunks_of.setdefault(word, []).append(i)
                counts_of.setdefault(word, []).append(count)
        return _Index(
            version=version,
            vectors=vectors.reshape(len(rows), -1),
            rows=[(r.source, r.title, r.section, r.text, r.embedding_model) for r in rows],
            postings={
                word: (np.array(ids, dtype=np.int64), np.array(counts_of[word], np.float32))
                for word, ids in chunks_of.items()
            },
            lengths=lengths,
        )


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _top(scores: np.ndarray[Any, Any], count: int) -> list[int]:
    """Indexes of the `count` highest scores, highest first."""
    if len(scores) > count:
        best = np.argpartition(-scores, count)[:count]
        return best[np.argsort(-scores[best])].tolist()  # type: ignore[no-any-return]
    return np.argsort(-scores).tolist()  # type: ignore[no-any-return]


def _bm25(
    index: _Index, words: list[str], k1: float = 1.2, b: float = 0.75
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Okapi BM25 of every chunk for the query's words, from the postings of those words."""
    n = len(index.rows)
    scores = np.zeros(n, dtype=np.float32)
    norm = k1 * (1 - b + b * index.lengths / max(float(index.lengths.mean()), 1.0))
    for word in set(words):
        if word not in index.postings:
            continue
        ids, tf = index.postings[word]
        weight = math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5))
        scores[ids] += weight * tf * (k1 + 1) / (tf + norm[ids])
    return scores
