"""Frozen, validated settings: ``ServerConfig`` for the HTTP layer, ``BatchConfig`` for the batcher."""

from __future__ import annotations

from dataclasses import dataclass, field

# Texts per model call and padded tokens per model call: the same rule and CPU cap as Embedder.encode
# (mrl_infer._embedder._CPU_MAX_BATCH_TOKENS = 1,024, measured in docs/benchmarks.md).
DEFAULT_BATCH_SIZE = 32
DEFAULT_CPU_BATCH_TOKENS = 1024
# Inputs gathered per scheduling round, taken round-robin from waiting requests, then length-sorted
# and cut into model calls; bounds how long a newly arrived short request waits (docs/server.md).
DEFAULT_STEP_INPUTS = 128
# What one model call costs beyond its padded tokens, in padded tokens: the batcher cuts a round where
# padding would cost more than another call. Measured on the default int8 model (Intel Xeon, 2 vCPUs,
# AVX-512 VNNI): ~1.0 ms per call + ~33 us per padded token at 1,024 tokens per call, so ~30 tokens.
DEFAULT_CALL_TOKENS = 32
# OpenAI's limit on inputs per embeddings request.
DEFAULT_MAX_INPUTS = 2048


def _check_positive(**values: int | float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")


@dataclass(frozen=True)
class BatchConfig:
    """How the batcher forms model calls across requests.

    Args:
        max_batch_size: texts per model call.
        max_batch_tokens: padded tokens (rows x longest row) per model call; None: max_batch_size x 128
            (the Embedder's GPU rule); the CLI passes 1,024 on CPU, as ``encode`` does.
        max_step_inputs: inputs taken per scheduling round, round-robin over waiting requests, at most
            ``max_batch_size`` from one request per turn (so a long request cannot starve short ones).
        max_wait_ms: when the model is idle, how long to wait after the oldest waiting input arrived for
            more to batch with it (ms). Default 0: an idle model starts at once, and requests that
            arrive while it runs form the next call (wrk, single texts, Intel Xeon 2 vCPUs: 266 / 338
            / 381 req/s at 1 / 16 / 64 connections with 0, against 165 / 331 / 369 with 2 ms).
        max_queue: admitted inputs not yet embedded; a request that would exceed it is refused (429).
        call_tokens: the cost of one more model call, in padded tokens; a round is cut into the
            calls that minimize padded tokens plus this per call (``_batcher.plan_calls``).
        parallel_calls: model calls run at once, each in its own worker thread (``run_batch`` must be
            thread-safe, as an ONNX Runtime session is). On CPU, ``mrl-embed serve`` runs one call per
            physical core with one ONNX Runtime thread each (docs/server.md): a call then never waits
            for a thread that the event loop has preempted, and small calls lose less to threading.
    """

    max_batch_size: int = DEFAULT_BATCH_SIZE
    max_batch_tokens: int | None = DEFAULT_CPU_BATCH_TOKENS
    max_step_inputs: int = DEFAULT_STEP_INPUTS
    max_wait_ms: float = 0.0
    max_queue: int = 8192
    call_tokens: int = DEFAULT_CALL_TOKENS
    parallel_calls: int = 1

    def __post_init__(self) -> None:
        _check_positive(
            max_batch_size=self.max_batch_size,
            max_step_inputs=self.max_step_inputs,
            max_queue=self.max_queue,
            parallel_calls=self.parallel_calls,
        )
        if self.call_tokens < 0:
            raise ValueError(f"call_tokens must be >= 0, got {self.call_tokens}")
        if self.max_batch_tokens is not None:
            _check_positive(max_batch_tokens=self.max_batch_tokens)
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")

    @property
    def token_budget(self) -> int:
        """Padded tokens allowed per model call."""
        budget = self.max_batch_size * 128
        return budget if self.max_batch_tokens is None else min(budget, self.max_batch_tokens)


@dataclass(frozen=True)
class ServerConfig:
    """The HTTP layer's settings.

    Args:
        host, port: where ``mrl-embed serve`` listens (port 0: any free port).
        served_model_name: the name ``/v1/models`` lists (None: the model's manifest name).
        strict_model_name: a request naming another model gets OpenAI's 404 ``model_not_found``
            (default: accepted and logged once per name, as TEI does).
        api_key: if set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
        default_dim: output dim when a request sends no ``dimensions`` (None: the model's full dim).
        max_inputs: inputs per request (OpenAI's 2,048); more is a 400.
        max_body_bytes: request body size; more is a 413.
        batching: the batcher's settings.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    strict_model_name: bool = False
    api_key: str | None = field(default=None, repr=False)
    default_dim: int | None = None
    max_inputs: int = DEFAULT_MAX_INPUTS
    max_body_bytes: int = 16 * 1024 * 1024
    graceful_timeout_s: float = 30.0
    batching: BatchConfig = field(default_factory=BatchConfig)

    def __post_init__(self) -> None:
        _check_positive(max_inputs=self.max_inputs, max_body_bytes=self.max_body_bytes)
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, got {self.port}")
        if self.api_key == "":
            raise ValueError("api_key must not be empty (pass None for no authentication)")
        if self.max_inputs > self.batching.max_queue:
            raise ValueError(
                f"max_inputs ({self.max_inputs}) must not exceed batching.max_queue "
                f"({self.batching.max_queue}): such a request could never be admitted"
            )
