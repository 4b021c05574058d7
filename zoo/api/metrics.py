"""Prometheus metrics of one server, in a registry of its own (several apps in one process, as in tests, must
not collide in the global one). Routes are label values: the zoo's adapters, `base`, never client text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("zoo_requests", "requests accepted, by route and endpoint", ["route", "endpoint"],
                                registry=r)
        self.errors = Counter("zoo_request_errors", "requests refused or failed, by HTTP status", ["status"],
                              registry=r)
        self.prompt_tokens = Counter("zoo_prompt_tokens", "prompt tokens, by route", ["route"], registry=r)
        self.completion_tokens = Counter("zoo_completion_tokens", "generated tokens, by route", ["route"],
                                         registry=r)
        self.queue = Gauge("zoo_queue_length", "requests waiting for a batch row", registry=r)
        self.running = Gauge("zoo_running_requests", "requests in the decoding batch", registry=r)
        self.batch = Histogram("zoo_batch_size", "rows per decode step", buckets=BATCH_BUCKETS, registry=r)
        self.ttft = Histogram("zoo_time_to_first_token_seconds", "from arrival to the first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("zoo_request_latency_seconds", "from arrival to the last generated token",
                                 buckets=LATENCY_BUCKETS, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
