"""Prometheus metrics of cortex (contract §1.15), in a registry per gateway instance.

The hot path only bumps plain Python numbers (no locks: everything runs on the event loop);
a custom collector turns them into the exposition format when `/metrics` is scraped. That is
~10x cheaper per request than prometheus_client's locked children.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TPS_BUCKETS = (1, 5, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500)
LOAD_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800)


class Value:
    """One labelled counter or gauge sample."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def set(self, value: float) -> None:
        self.value = value


class Buckets:
    """One labelled histogram: per-bucket counts (non-cumulative until exposition)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Family:
    """A metric name with its label names and one child per label tuple."""

    __slots__ = ("buckets", "children", "doc", "kind", "labels", "name")

    def __init__(
        self, kind: str, name: str, doc: str, labels: tuple[str, ...], buckets: tuple = ()
    ) -> None:
        self.kind, self.name, self.doc, self.labels = kind, name, doc, labels
        self.buckets = buckets
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self.children.get(labels)
        if child is None:
            child = Buckets(self.buckets) if self.kind == "histogram" else Value()
            self.children[labels] = child
        return child

    def collect(self) -> Metric:
        if self.kind == "counter":
            c = CounterMetricFamily(self.name.removesuffix("_total"), self.doc, labels=self.labels)
            for lv, v in self.children.items():
                c.add_metric(list(lv), v.value)
            return c
        if self.kind == "gauge":
            g = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
            for lv, v in self.children.items():
                g.add_metric(list(lv), v.value)
            return g
        h = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for lv, b in self.children.items():
            running, cumulative = 0, []
            for bound, n in zip((*self.buckets, float("inf")), b.counts, strict=True):
                running += n
                cumulative.append((_bound(bound), running))
            h.add_metric(list(lv), cumulative, b.sum)
        return h


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


class CortexMetrics(Collector):
    def __init__(self) -> None:
        self.families: list[Family] = []
        mn = ("model", "node")
        ak = ("account", "key")
        nm = ("node", "model")
        f = self._family
        self.requests = f("counter", "cortex_requests_total", "Routed inference requests", mn)
        self.request_errors = f(
            "counter",
            "cortex_request_errors_total",
            "Upstream 5xx, transport and mid-stream failures",
            mn,
        )
        self.cold_starts = f(
            "counter", "cortex_cold_starts_total", "Requests that awaited a load", mn
        )
        self.duration = f(
            "histogram",
            "cortex_request_duration_seconds",
            "Request start to upstream response headers",
            mn,
            DURATION_BUCKETS,
        )
        self.ttft = f(
            "histogram",
            "cortex_time_to_first_token_seconds",
            "Request start to first streamed body chunk",
            mn,
            DURATION_BUCKETS,
        )
        self.tps = f(
            "histogram",
            "cortex_tokens_per_second",
            "Completion tokens per second",
            mn,
            TPS_BUCKETS,
        )
        self.prompt_tokens = f(
            "counter", "cortex_prompt_tokens_total", "Prompt tokens (upstream usage)", mn
        )
        self.completion_tokens = f(
            "counter", "cortex_completion_tokens_total", "Completion tokens (upstream usage)", mn
        )
        self.spend = f("counter", "cortex_spend_tokens_total", "Tokens metered per key", ak)
        self.spend_prompt = f(
            "counter", "cortex_spend_prompt_tokens_total", "Prompt tokens metered per key", ak
        )
        self.spend_completion = f(
            "counter",
            "cortex_spend_completion_tokens_total",
            "Completion tokens metered per key",
            ak,
        )
        self.evictions = f("counter", "cortex_evictions_total", "Models unloaded for room", nm)
        self.loads = f(
            "counter",
            "cortex_model_loads_total",
            "/models/load calls sent",
            ("node", "model", "outcome"),
        )
        self.load_duration = f(
            "histogram",
            "cortex_load_duration_seconds",
            "Successful load wall time",
            nm,
            LOAD_BUCKETS,
        )
        self.failovers = f("counter", "cortex_failovers_total", "Failover retries", ("model",))
        self.node_healthy = f("gauge", "cortex_node_healthy", "1 if the node is healthy", ("node",))
        self.in_flight = f(
            "gauge", "cortex_model_in_flight", "cortex's live in-flight requests", nm
        )
        self.queue_depth = f("gauge", "cortex_model_queue_depth", "Polled neuron queue depth", nm)
        self.vram_used = f(
            "gauge", "cortex_device_vram_used_mb", "Polled device memory used", ("node", "device")
        )
        self.vram_free = f(
            "gauge", "cortex_device_vram_free_mb", "Polled device memory free", ("node", "device")
        )
        self.lifecycle_cycles = f(
            "gauge", "cortex_node_lifecycle_cycles", "Unloads cortex made on the node", ("node",)
        )
        self.rejections = f(
            "counter", "cortex_rejections_total", "Errors generated by cortex, by code", ("code",)
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def _family(
        self, kind: str, name: str, doc: str, labels: tuple[str, ...], buckets: tuple = ()
    ) -> Family:
        fam = Family(kind, name, doc, labels, buckets)
        self.families.append(fam)
        return fam

    def collect(self) -> Iterator[Metric]:
        for fam in self.families:
            yield fam.collect()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
