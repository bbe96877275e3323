"""``mrl-embed serve``: argparse setup and the run function (starlette/uvicorn imported only when run)."""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mrl_infer.errors import MrlInferError
from mrl_infer.server._config import DEFAULT_MAX_INPUTS, BatchConfig, ServerConfig

API_KEY_ENV = "MRL_EMBED_API_KEY"
# Idle intra-op threads of ONNX Runtime spin by default. On a dedicated machine that is faster (wrk,
# Intel Xeon 2 vCPUs, quiet: 279-288 vs 157-187 req/s at 1 connection, equal at 64); with another
# process on one core, spinning off doubled throughput (215-245 vs 100-131). docs/server.md.
SPINNING_OFF = {"session.intra_op.allow_spinning": "0"}


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def add_parsers(sub: Any) -> None:
    """Register the server's commands (``serve``, ``demo``) on the ``mrl-embed`` subparsers."""
    from mrl_infer.server import _demo

    p = sub.add_parser(
        "serve",
        help="serve an OpenAI-compatible /v1/embeddings API (needs the [server] extra)",
        description=(
            "An OpenAI-compatible embeddings server: POST /v1/embeddings (Matryoshka 'dimensions', float "
            "or base64), GET /v1/models, /health, /metrics, and the demo page at /. Requests are batched "
            "across clients under a token budget. See docs/server.md."
        ),
    )
    _add_server_flags(p)
    p.add_argument("--index", metavar="DIR", help="serve POST /v1/search over this index (mrl-embed index)")
    p.set_defaults(handler=run_serve)
    _demo.add_parser(sub, _add_server_flags)


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    """The flags ``serve`` and ``demo`` share: model, address, limits and batching."""
    p.add_argument("--model", help="model directory or Hub id (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--variant", default="auto", help="model variant: auto, fp32, int8, fp16 (default auto)")
    p.add_argument(
        "--threads",
        type=_positive,
        help="ONNX Runtime threads per model call (default on CPU: physical cores / --parallel-calls; "
        "on GPU: ONNX Runtime's)",
    )
    p.add_argument(
        "--parallel-calls",
        type=_positive,
        help="model calls run at once, each in its own thread (default on CPU: physical cores / "
        "--threads, so one single-threaded call per core; on GPU: 1). docs/server.md",
    )
    p.add_argument(
        "--max-seq-length", type=_positive, help="truncate inputs to fewer tokens than the model's"
    )
    p.add_argument(
        "--ort-spinning",
        choices=("on", "off"),
        default="on",
        help="let idle ONNX Runtime threads spin (default on; off helps where other processes share "
        "the cores, see docs/server.md)",
    )
    p.add_argument("--served-model-name", help="the model name /v1/models lists (default: the model's name)")
    p.add_argument(
        "--strict-model-name",
        action="store_true",
        help="refuse requests naming another model (404 model_not_found); default: accept and log once",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require 'Authorization: Bearer KEY' on all routes but /health (default: ${API_KEY_ENV})",
    )
    p.add_argument(
        "--dim", type=_positive, help="output dim when a request sends no 'dimensions' (default: full)"
    )
    p.add_argument(
        "--max-inputs", type=_positive, default=DEFAULT_MAX_INPUTS, help="inputs per request (default 2048)"
    )
    p.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit in MiB (default 16)")
    b = BatchConfig()
    p.add_argument("--max-batch-size", type=_positive, default=b.max_batch_size, help="texts per model call")
    p.add_argument(
        "--max-batch-tokens",
        type=_positive,
        help="padded tokens per model call (default: 1024 on CPU, as encode; batch size x 128 on GPU)",
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=b.max_wait_ms, help=f"batching wait (default {b.max_wait_ms})"
    )
    p.add_argument(
        "--max-queue",
        type=_positive,
        default=b.max_queue,
        help=f"queued inputs before 429 (default {b.max_queue})",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def configs_from_args(args: argparse.Namespace, on_gpu: bool) -> ServerConfig:
    """The ServerConfig (with its BatchConfig) that ``args`` describe."""
    batch_tokens = args.max_batch_tokens if args.max_batch_tokens else (None if on_gpu else 1024)
    batching = BatchConfig(
        max_batch_size=args.max_batch_size,
        max_batch_tokens=batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        parallel_calls=parallelism(args, on_gpu)[1],
    )
    return ServerConfig(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        strict_model_name=args.strict_model_name,
        api_key=args.api_key or None,
        default_dim=args.dim,
        max_inputs=args.max_inputs,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        batching=batching,
    )


def _graceful_server_class() -> type:
    """uvicorn.Server whose SIGTERM/SIGINT shut down gracefully and then return (exit 0): uvicorn itself
    re-raises the signal after shutting down, which ends the process with -15."""
    import contextlib
    import signal
    import threading

    import uvicorn
    from uvicorn.server import HANDLED_SIGNALS

    class GracefulServer(uvicorn.Server):
        announce: str | None = None  # printed with the URL once the socket listens

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.announce and self.servers and not self.should_exit:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                host = f"[{host}]" if ":" in host else host
                print(f"{self.announce}: open http://{host}:{port}/", flush=True)

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def parallelism(args: argparse.Namespace, on_gpu: bool) -> tuple[int | None, int]:
    """(ONNX Runtime threads per call, model calls at once) for ``args``.

    On CPU the cores are split between calls: by default one single-threaded call per physical
    core, which beat one call over all cores by 10-40% under wrk (docs/server.md). On GPU one call
    at a time, with the threads the user gave (None: ONNX Runtime's default).
    """
    if on_gpu:
        return args.threads, args.parallel_calls or 1
    from mrl_infer._session import physical_cores

    cores = physical_cores()
    if args.parallel_calls is None:
        threads = args.threads or 1
        return threads, max(1, cores // threads)
    return args.threads or max(1, cores // args.parallel_calls), args.parallel_calls


def uses_gpu(args: argparse.Namespace) -> bool:
    """True when ``args.device`` asks for CUDA, or is auto and CUDA is there."""
    from mrl_infer._session import cuda_available

    return args.device.startswith("cuda") or (args.device == "auto" and cuda_available())


def load_embedder(args: argparse.Namespace) -> Any:
    """The Embedder that ``args`` name (model, device, variant, threads per call, max length)."""
    from mrl_infer import Embedder

    return Embedder(
        args.model,
        device=args.device,
        variant=args.variant,
        threads=parallelism(args, uses_gpu(args))[0],
        max_seq_length=args.max_seq_length,
        session_config=SPINNING_OFF if args.ort_spinning == "off" else None,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Load the model in the background, serve until SIGTERM/SIGINT (in-flight requests finish), return 0."""
    index = None
    require_server_extra(args.command)
    if args.index:
        from mrl_infer.search import Index

        index = Index.load(args.index)  # a bad index fails here, before the port opens
    return serve_app(args, functools.partial(load_embedder, args), index=index)


def require_server_extra(command: str) -> None:
    """MrlInferError naming the ``[server]`` extra when one of its packages is missing."""
    from mrl_infer.server import require_extra

    try:
        require_extra()
    except ImportError as exc:
        raise MrlInferError(f"mrl-embed {command}: {exc}") from exc


def serve_app(
    args: argparse.Namespace,
    source: Any,
    *,
    index: Any = None,
    demo_corpus: bool = False,
    announce: bool = False,
) -> int:
    """Build the app over ``source`` (an Embedder, or a loader run in the background) and serve it."""
    require_server_extra(args.command)
    import uvicorn

    from mrl_infer.server._app import create_app

    try:
        config = configs_from_args(args, uses_gpu(args))
    except ValueError as exc:
        raise MrlInferError(str(exc)) from exc
    level = getattr(logging, args.log_level.upper())
    logging.getLogger("mrl_infer.server").setLevel(level)
    app = create_app(source, config, index=index, demo_corpus=demo_corpus)
    server = _graceful_server_class()(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            access_log=False,  # our middleware logs one line per request
            timeout_graceful_shutdown=int(config.graceful_timeout_s),
            lifespan="on",
        )
    )
    server.announce = f"mrl-embed {args.command}" if announce else None
    with logging_off_the_loop():
        server.run()
    return 0


@contextmanager
def logging_off_the_loop() -> Iterator[None]:
    """Route the root logger's records through a queue to its handlers in a thread of their own, so
    the event loop never blocks on writing a log line (one per request); flushed on exit."""
    import logging.handlers  # here, not at module level: the CLI's --help stays lean
    import queue

    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers:
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    root.handlers = [logging.handlers.QueueHandler(records)]
    listener.start()
    try:
        yield
    finally:
        listener.stop()
        root.handlers = handlers
