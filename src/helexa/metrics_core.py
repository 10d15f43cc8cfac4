"""Lock-free Prometheus metrics shared by cortex and neuron.

The hot path only bumps plain Python numbers (no locks: everything runs on one event loop);
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

# Bucket sets of cortex's histograms (neuron's reuse them).
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

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount

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

    def remove(self, *labels: str) -> None:
        """Drop one child (a gauge for a model that is gone)."""
        self.children.pop(labels, None)

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


class MetricSet(Collector):
    """Base for a component's metrics: declare families with `_family`, then `exposition()`.

    Each instance has its own registry, so several gateways or neurons in one process (tests)
    never share counters.
    """

    def __init__(self) -> None:
        self.families: list[Family] = []
        self.registry = CollectorRegistry(auto_describe=False)

    def _register(self) -> None:
        """Call at the end of a subclass __init__, once every family exists."""
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
