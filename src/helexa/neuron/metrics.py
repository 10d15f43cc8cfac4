"""Prometheus metrics of neuron (see docs/reference.md#metrics), on the shared lock-free machinery.

Counters and histograms are bumped on the hot path; gauges (in-flight, queue depth, memory)
are read from live state when `/metrics` is scraped, so they can never drift.
"""

from __future__ import annotations

from helexa.metrics_core import DURATION_BUCKETS, LOAD_BUCKETS, TPS_BUCKETS, MetricSet


class NeuronMetrics(MetricSet):
    def __init__(self) -> None:
        super().__init__()
        m = ("model",)
        f = self._family
        self.requests = f(
            "counter",
            "neuron_requests_total",
            "Inference requests by endpoint and HTTP status",
            ("model", "endpoint", "status"),
        )
        self.prompt_tokens = f("counter", "neuron_prompt_tokens_total", "Prompt tokens", m)
        self.generated_tokens = f("counter", "neuron_generated_tokens_total", "Generated tokens", m)
        self.ttft = f(
            "histogram",
            "neuron_time_to_first_token_seconds",
            "Admission to the first generated token",
            m,
            DURATION_BUCKETS,
        )
        self.tps = f(
            "histogram",
            "neuron_decode_tokens_per_second",
            "Decode speed after the first token",
            m,
            TPS_BUCKETS,
        )
        self.load_duration = f(
            "histogram",
            "neuron_model_load_duration_seconds",
            "Successful load wall time",
            m,
            LOAD_BUCKETS,
        )
        self.restarts = f(
            "counter",
            "neuron_worker_restarts_total",
            "Worker faults that started a recovery",
            ("model", "reason"),
        )
        self.rejections = f(
            "counter",
            "neuron_admission_rejections_total",
            "Requests refused by admission",
            ("model", "reason"),
        )
        self.in_flight = f("gauge", "neuron_model_in_flight", "Requests generating", m)
        self.queue_depth = f("gauge", "neuron_model_queue_depth", "Requests waiting", m)
        self.model_memory = f(
            "gauge", "neuron_model_memory_used_mb", "Measured memory of the model's worker", m
        )
        self.device_used = f(
            "gauge", "neuron_device_memory_used_mb", "Device memory used", ("device",)
        )
        self.device_total = f(
            "gauge", "neuron_device_memory_total_mb", "Device memory total", ("device",)
        )
        self._register()

    def set_model_gauges(self, rows: list[tuple[str, int, int, int | None]]) -> None:
        """Replace the per-model gauges with `(model, in_flight, queue_depth, memory_mb)`."""
        for fam in (self.in_flight, self.queue_depth, self.model_memory):
            fam.children.clear()
        for model, in_flight, depth, mem in rows:
            self.in_flight(model).set(in_flight)
            self.queue_depth(model).set(depth)
            if mem is not None:
                self.model_memory(model).set(mem)
