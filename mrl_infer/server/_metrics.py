"""Prometheus metrics, modelled on text-embeddings-inference's set (``te_*`` there, ``mrl_*`` here)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_TOKENS = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536)


class Metrics:
    """One registry per app (tests create many apps); implements the batcher's BatchObserver."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "mrl_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.request_duration = Histogram(
            "mrl_request_duration_seconds", "embeddings request duration", buckets=_LATENCY, registry=r
        )
        self.tokenization_duration = Histogram(
            "mrl_tokenization_duration_seconds", "tokenization time per request", buckets=_LATENCY, registry=r
        )
        self.queue_duration = Histogram(
            "mrl_queue_duration_seconds",
            "wait from admission to the first model call",
            buckets=_LATENCY,
            registry=r,
        )
        self.inference_duration = Histogram(
            "mrl_inference_duration_seconds", "duration of one model call", buckets=_LATENCY, registry=r
        )
        self.batch_size = Histogram("mrl_batch_size", "texts per model call", buckets=_SIZES, registry=r)
        self.batch_tokens = Histogram(
            "mrl_batch_tokens", "padded tokens per model call", buckets=_TOKENS, registry=r
        )
        self.queue_size = Gauge("mrl_queue_size", "inputs admitted and not yet embedded", registry=r)
        self.inputs = Counter("mrl_inputs", "inputs embedded", registry=r)
        self.input_tokens = Counter(
            "mrl_input_tokens", "input tokens embedded (usage.prompt_tokens)", registry=r
        )
        self.truncated = Counter("mrl_truncated_inputs", "inputs cut at max_seq_length", registry=r)
        self.rejected = Counter("mrl_overloaded", "requests refused with 429 (queue full)", registry=r)

    def on_batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.batch_size.observe(texts)
        self.batch_tokens.observe(tokens)
        self.inference_duration.observe(seconds)

    def on_queued(self, seconds: float) -> None:
        self.queue_duration.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
