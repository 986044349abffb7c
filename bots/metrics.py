"""Prometheus metrics: core's Recorder, counting into a registry of this object's own.

A registry per object, not the library's global one: a process (a test run) may wire several
bots, and each must count only its own turns. Labelled children are looked up once and kept,
so recording a turn costs a few dictionary lookups and locked additions.

Names (the dashboard in deploy/grafana/parley-dashboard.json uses them):

| metric | type | labels |
| --- | --- | --- |
| parley_turns_total | counter | platform, outcome (final, command, refused, retracted, failed) |
| parley_turn_seconds | histogram | platform |
| parley_queue_wait_seconds | histogram | platform |
| parley_model_first_token_seconds | histogram | model |
| parley_tokens_total | counter | model, kind (prompt, completion) |
| parley_cost_usd_total | counter | model |
| parley_errors_total | counter | kind (below) |
| parley_deliveries_total | counter | platform, outcome (delivered, refused, timeout) |
| parley_delivery_seconds | histogram | platform |
| parley_delivery_retries_total | counter | platform |
| parley_pending_messages | gauge | |
| parley_lease_takeovers_total | counter | |
| parley_moderation_actions_total | counter | direction, action |

Error kinds: a failed turn's reason (the model's: timeout, rate_limited, server_error,
unreachable, authentication, model_not_found, rejected, interrupted; else internal, crashed,
empty), moderation_unavailable, database_unavailable (a turn stopped), lease_lost,
lease_renewal, poll and worker (the scheduler's background work failed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Seconds. A turn is mostly the model: from a cached reply in tens of milliseconds to minutes
# of tool calls. Queue waits are milliseconds unless turns pile up behind the concurrency bound.
TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)
QUEUE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
DELIVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)


class PrometheusRecorder:
    """`core.observe.Recorder` for Prometheus; `exposition()` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._turns = Counter(
            "parley_turns",
            "Turns ended, by how they ended",
            ["platform", "outcome"],
            registry=registry,
        )
        self._turn_seconds = Histogram(
            "parley_turn_seconds",
            "A turn's work, from its start to its reply stored (delivery not included)",
            ["platform"],
            buckets=TURN_BUCKETS,
            registry=registry,
        )
        self._queue_seconds = Histogram(
            "parley_queue_wait_seconds",
            "From a message accepted to its turn starting",
            ["platform"],
            buckets=QUEUE_BUCKETS,
            registry=registry,
        )
        self._first_token_seconds = Histogram(
            "parley_model_first_token_seconds",
            "From a model call made to its first chunk",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=registry,
        )
        self._tokens = Counter(
            "parley_tokens",
            "Model tokens, prompt and completion",
            ["model", "kind"],
            registry=registry,
        )
        self._cost = Counter(
            "parley_cost_usd",
            "Estimated cost of model calls (models with a known price)",
            ["model"],
            registry=registry,
        )
        self._errors = Counter("parley_errors", "Errors, by kind", ["kind"], registry=registry)
        self._deliveries = Counter(
            "parley_deliveries",
            "Final replies delivered or given up on",
            ["platform", "outcome"],
            registry=registry,
        )
        self._delivery_seconds = Histogram(
            "parley_delivery_seconds",
            "Delivering a final reply, retries included",
            ["platform"],
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self._delivery_retries = Counter(
            "parley_delivery_retries",
            "Platform calls of replies retried after a network error, 5xx or 429",
            ["platform"],
            registry=registry,
        )
        self._pending = Gauge(
            "parley_pending_messages",
            "Messages accepted by this process and waiting for their turn",
            registry=registry,
        )
        self._takeovers = Counter(
            "parley_lease_takeovers",
            "Turns taken over from another process whose lease expired",
            registry=registry,
        )
        self._moderation = Counter(
            "parley_moderation_actions",
            "Texts flagged by moderation, by direction and action",
            ["direction", "action"],
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        """The metric's child for these label values, made once."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- Recorder -----------------------------------------------------------------------------

    def turn_finished(self, *, platform: str, outcome: str, seconds: float) -> None:
        self._child(self._turns, platform, outcome).inc()
        self._child(self._turn_seconds, platform).observe(seconds)

    def queue_wait(self, *, platform: str, seconds: float) -> None:
        self._child(self._queue_seconds, platform).observe(seconds)

    def first_token(self, *, model: str, seconds: float) -> None:
        self._child(self._first_token_seconds, model).observe(seconds)

    def usage(
        self, *, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float | None
    ) -> None:
        self._child(self._tokens, model, "prompt").inc(prompt_tokens)
        self._child(self._tokens, model, "completion").inc(completion_tokens)
        if cost_usd is not None:
            self._child(self._cost, model).inc(cost_usd)

    def error(self, *, kind: str) -> None:
        self._child(self._errors, kind).inc()

    def delivery(self, *, platform: str, outcome: str, seconds: float) -> None:
        self._child(self._deliveries, platform, outcome).inc()
        self._child(self._delivery_seconds, platform).observe(seconds)

    def delivery_retried(self, *, platform: str) -> None:
        self._child(self._delivery_retries, platform).inc()

    def lease_takeover(self) -> None:
        self._takeovers.inc()

    def moderation(self, *, direction: str, action: str) -> None:
        self._child(self._moderation, direction, action).inc()

    def watch_pending(self, count: Callable[[], int]) -> None:
        self._pending.set_function(count)

    # --- exposition ---------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)
