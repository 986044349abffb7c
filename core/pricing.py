"""Estimated cost of model calls: a price table per million tokens, with overrides.

Prices change and differ by contract, so these are estimates for /usage and reports, not
invoices; PARLEY_PRICES replaces or adds entries. A dated snapshot ("gpt-4o-2024-08-06") is
priced as its family, the longest matching name.
"""

from __future__ import annotations

from collections.abc import Mapping

# USD per million (prompt, completion) tokens, OpenAI list prices as of 2026.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-5.1": (1.25, 10.0),
    "gpt-5.1-codex-mini": (0.25, 2.0),
    "gpt-5": (1.25, 10.0),
    "gpt-5-pro": (15.0, 120.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-turbo": (10.0, 30.0),
    "gpt-4": (30.0, 60.0),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o1": (15.0, 60.0),
    "o1-pro": (150.0, 600.0),
    "o1-mini": (1.10, 4.40),
    "o3": (2.0, 8.0),
    "o3-pro": (20.0, 80.0),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


class PriceTable:
    """Looks up a model's price; unknown models (local ones, say) have no cost estimate."""

    def __init__(self, overrides: Mapping[str, tuple[float, float]] | None = None) -> None:
        self._prices = {**PRICES, **(overrides or {})}
        # Longest names first, so "gpt-4o-mini-2024-07-18" is not priced as "gpt-4o".
        self._names = sorted(self._prices, key=len, reverse=True)
        self._resolved: dict[str, tuple[float, float] | None] = {}

    def price(self, model: str) -> tuple[float, float] | None:
        """(prompt, completion) USD per million tokens, or None when unknown."""
        if model not in self._resolved:
            bare = model.rpartition("/")[2]  # "openai/gpt-4o" as routers and proxies name it
            name = next((n for n in self._names if bare == n or bare.startswith(f"{n}-")), None)
            self._resolved[model] = None if name is None else self._prices[name]
        return self._resolved[model]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """Estimated USD for one call, or None when the model's price is unknown."""
        price = self.price(model)
        if price is None:
            return None
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
