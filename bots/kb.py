"""`parley kb`: add files, folders and web pages to a knowledge base, list, remove, search."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from bots.embedder import LOCAL, LocalEmbedder, OpenAIEmbedder
from core.config import Settings
from core.errors import ConfigError
from core.knowledge.base import Embedder, KnowledgeBases, KnowledgeError
from core.knowledge.chunking import TEXT_SUFFIXES
from core.storage.sql import SqlStore

MAX_BYTES = 20 * 1024 * 1024  # a document larger than this is refused


def embedder_for(settings: Settings) -> Embedder:
    if settings.embedding_model == LOCAL:
        return LocalEmbedder()
    base_url = settings.embedding_base_url or settings.openai_base_url
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
    return OpenAIEmbedder(
        settings.embedding_model, base_url=str(base_url) if base_url else None, api_key=key
    )


async def run(settings: Settings, store: SqlStore, arguments: argparse.Namespace) -> int:
    bases = KnowledgeBases(store, embedder_for(settings))
    action = arguments.kb_command
    try:
        if action == "add":
            return await _add(bases, arguments.kb, arguments.sources)
        if action == "list":
            return await _list(bases, arguments.kb)
        if action == "remove":
            return await _remove(bases, arguments.kb, arguments.sources)
        if action == "rebuild":
            count = await bases.rebuild(arguments.kb)
            print(f"{arguments.kb}: {count} chunks embedded again with {bases.model}.")
            return 0
        return await _search(bases, arguments.kb, arguments.query, arguments.limit)
    except KnowledgeError as exc:
        raise ConfigError(f"parley kb {action}: {exc}") from None


async def _add(bases: KnowledgeBases, kb: str, sources: list[str]) -> int:
    counts = {"added": 0, "replaced": 0, "unchanged": 0}
    async for source, data, content_type in _read(sources):
        try:
            added = await bases.add(kb, source, data, content_type)
        except KnowledgeError as exc:
            print(f"skipped {source}: {exc}")
            continue
        counts[added.status] += 1
        detail = f" ({added.chunks} chunks)" if added.chunks else ""
        print(f"{added.status} {source}{detail}")
    print(
        f"{kb}: {counts['added']} added, {counts['replaced']} replaced, "
        f"{counts['unchanged']} unchanged."
    )
    return 0


async def _list(bases: KnowledgeBases, kb: str | None) -> int:
    documents = await bases.documents(kb)
    for d in documents:
        print(f"{d.kb:16} {d.chunk_count:5} chunks  {d.title[:40]:40}  {d.source}")
    if not documents:
        print("No documents. `parley kb add PATH --kb NAME` adds some.")
    return 0


async def _remove(bases: KnowledgeBases, kb: str, sources: list[str]) -> int:
    if not sources:
        removed = await bases.remove(kb)
        print(f"{kb}: removed ({removed} documents).")
        return 0
    for source in sources:
        if not await bases.remove(kb, source):
            raise ConfigError(f"parley kb remove: {kb} holds no {source}")
        print(f"removed {source}")
    return 0


async def _search(bases: KnowledgeBases, kb: str, query: str, limit: int) -> int:
    hits = await bases.search([kb], query, limit)
    for n, hit in enumerate(hits, start=1):
        print(
            f"{n}. score {hit.score:.4f} (similarity {hit.similarity:.2f}) "
            f"{hit.cited} ({hit.source})"
        )
        print("   " + hit.text.replace("\n", "\n   "))
    if not hits:
        print(f"Nothing found in {kb}.")
    return 0


async def _read(sources: list[str]) -> AsyncIterator[tuple[str, bytes, str]]:
    """(source, bytes, content type) of every file, every text file under each folder, and
    every URL."""
    for source in sources:
        if _is_url(source):
            yield source, *await _fetch(source)
            continue
        for file in await asyncio.to_thread(_files, source):
            yield str(file), await asyncio.to_thread(file.read_bytes), ""


def _files(source: str) -> list[Path]:
    path = Path(source)
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
        )
    elif path.is_file():
        found = [path]
    else:
        raise ConfigError(f"parley kb add: {source}: no such file or folder")
    small = [file for file in found if file.stat().st_size <= MAX_BYTES]
    for file in sorted(set(found) - set(small)):
        print(f"skipped {file}: larger than {MAX_BYTES // 2**20} MB")
    return small


async def _fetch(url: str) -> tuple[bytes, str]:
    import aiohttp

    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http,
            http.get(url) as response,
        ):
            if response.status != 200:
                raise ConfigError(f"parley kb add: {url} answered HTTP {response.status}")
            data = await response.content.read(MAX_BYTES + 1)
            if len(data) > MAX_BYTES:
                raise ConfigError(f"parley kb add: {url} is larger than {MAX_BYTES // 2**20} MB")
            return data, response.headers.get("Content-Type", "")
    except aiohttp.ClientError as exc:
        raise ConfigError(f"parley kb add: cannot fetch {url} ({exc})") from None


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))
