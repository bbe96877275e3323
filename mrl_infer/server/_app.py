"""The ASGI app: routes, request parsing and error mapping; imports run ``_app`` -> ``_batcher`` -> backend.

``create_app(embedder, config, index=None)`` builds it. Routes live in ``_routes(state)``, one list,
so another endpoint (e.g. ``/v1/search`` over ``index``) is one more ``Route``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mrl_infer._embedder import Embedder
from mrl_infer.errors import NonFiniteEmbeddingError, OverloadedError
from mrl_infer.server._backend import Backend, EmbedderBackend, Tokenized
from mrl_infer.server._batcher import Batcher
from mrl_infer.server._config import ServerConfig
from mrl_infer.server._demo import demo_routes
from mrl_infer.server._errors import (
    AuthError,
    ModelNotFound,
    NotReady,
    PayloadTooLarge,
    RequestError,
    error_response,
)
from mrl_infer.server._metrics import Metrics
from mrl_infer.server._schemas import build_response, parse_request, render_json
from mrl_infer.server._search import search_routes

logger = logging.getLogger("mrl_infer.server")

PUBLIC_PATHS = frozenset({"/health"})
TRUNCATED_HEADER = "X-Truncated-Inputs"
# Requests with fewer characters than this are tokenized on the event loop (a thread hop costs more).
_INLINE_TOKENIZE_CHARS = 4096

EmbedderSource = Embedder | Backend | Callable[[], Embedder]


class AppState:
    """Everything the routes share: config, backend (once loaded), batcher, metrics."""

    def __init__(self, source: EmbedderSource, config: ServerConfig, index: Any) -> None:
        self.config = config
        self.index = index
        self.source = source
        self.backend: Backend | None = None
        self.error: str | None = None
        self.ready = False
        self.metrics = Metrics()
        self.batcher: Batcher[Any] = Batcher(self._run, config.batching, self.metrics)
        self.other_names: set[str] = set()
        self.created = int(time.time())

    @property
    def loads_in_background(self) -> bool:
        """True when given a factory (an Embedder still to load), not a model."""
        return (
            callable(self.source)
            and not isinstance(self.source, Embedder)
            and not hasattr(self.source, "run")
        )

    def _run(self, rows: list[Any]) -> Any:
        assert self.backend is not None
        return self.backend.run(rows)

    @property
    def model_name(self) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        return self.backend.name if self.backend is not None else "loading"

    def require_backend(self) -> Backend:
        if not self.ready or self.backend is None:
            raise NotReady(self.error or "the model is loading; retry when /health returns 200")
        return self.backend

    async def load(self) -> None:
        """Load the model (if given a factory), then embed one text through the batcher."""
        try:
            src: Any = self.source
            if self.loads_in_background:
                src = await run_in_threadpool(src)
            backend: Backend = EmbedderBackend(src) if isinstance(src, Embedder) else src
            self.backend = backend
            tok = backend.tokenize(["warm-up"], None)
            await self.batcher.embed(tok.rows, tok.lengths)
            self.ready = True
            logger.info("model %s ready (dims %s)", self.model_name, backend.dims)
        except Exception as exc:  # /health reports it; the process stays up to say why
            self.error = f"the model failed to load: {type(exc).__name__}: {exc}"
            logger.error("%s", self.error)


# ---------------------------------------------------------------------- middleware
class ApiKeyMiddleware:
    """``Authorization: Bearer <key>`` on every route but the public ones, compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            response = error_response(AuthError("invalid or missing API key", code="invalid_api_key"))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestLogMiddleware:
    """One info line per request: method, path, status, ms, and what the route added (scope state)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            extra = scope.get("state", {}).get("log", "")
            route = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
            self.metrics.requests.labels(route, str(status)).inc()
            logger.info("%s %s %d %.1f ms%s", scope["method"], scope["path"], status, ms, extra)


_KNOWN_PATHS = frozenset(
    {"/v1/embeddings", "/embeddings", "/v1/models", "/health", "/metrics", "/v1/search", "/v1/index", "/"}
    | {"/demo/config.json", "/demo/corpus.json"}
)


# ---------------------------------------------------------------------- routes
async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    too_large = PayloadTooLarge(
        f"the request body exceeds the limit of {limit} bytes", code="payload_too_large"
    )
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _check_model(state: AppState, name: str | None) -> None:
    served = state.model_name
    if name is None or name == served:
        return
    if state.config.strict_model_name:
        raise ModelNotFound(
            f"The model `{name}` does not exist; this server serves `{served}`",
            param="model",
            code="model_not_found",
        )
    if name not in state.other_names:
        state.other_names.add(name)
        logger.warning(
            "request names model %r; serving %r (pass --strict-model-name to refuse)", name, served
        )


def _embeddings_route(state: AppState) -> Callable[[Request], Any]:
    cfg = state.config
    metrics = state.metrics

    async def embeddings(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            backend = state.require_backend()
            raw = await _read_body(request, cfg.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"the request body is not valid JSON: {exc}") from exc
            req = parse_request(
                body,
                dims=backend.dims,
                default_dim=cfg.default_dim or backend.embedding_dim,
                max_inputs=cfg.max_inputs,
                vocab_size=backend.vocab_size,
                prompts=backend.prompts,
            )
            _check_model(state, req.model)
            if state.batcher.would_overflow(req.n):  # refuse before spending CPU on tokenization
                raise OverloadedError(
                    f"the queue is full ({state.batcher.admitted} of {cfg.batching.max_queue} inputs); "
                    "retry later",
                    retry_after=state.batcher.retry_after(),
                )
            t_tok = time.perf_counter()
            tok = await _tokenize(backend, req.texts, req.token_ids, req.prompt_name)
            metrics.tokenization_duration.observe(time.perf_counter() - t_tok)
            metrics.queue_size.set(state.batcher.admitted + req.n)
            try:
                pooled = await state.batcher.embed(tok.rows, tok.lengths)
            finally:
                metrics.queue_size.set(state.batcher.admitted)
            vectors = backend.finish(pooled, req.dim)
            _check_finite(vectors)
            payload = build_response(vectors, req, state.model_name, tok.num_tokens)
        except OverloadedError as exc:
            metrics.rejected.inc()
            return error_response(exc)
        except Exception as exc:
            return error_response(exc)
        metrics.inputs.inc(req.n)
        metrics.input_tokens.inc(tok.num_tokens)
        metrics.truncated.inc(tok.num_truncated)
        metrics.request_duration.observe(time.perf_counter() - t0)
        request.state.log = (
            f" inputs={req.n} tokens={tok.num_tokens} dim={req.dim} truncated={tok.num_truncated}"
        )
        return Response(
            render_json(payload),
            media_type="application/json",
            headers={TRUNCATED_HEADER: str(tok.num_truncated)},
        )

    return embeddings


async def _tokenize(
    backend: Backend, texts: list[str] | None, ids: list[list[int]] | None, prompt_name: str | None
) -> Tokenized:
    if texts is None:
        return backend.from_ids(ids or [])
    try:
        if sum(len(t) for t in texts) < _INLINE_TOKENIZE_CHARS:
            return backend.tokenize(texts, prompt_name)
        return await run_in_threadpool(backend.tokenize, texts, prompt_name)
    except ValueError as exc:  # InputError (bad Unicode) or an unknown prompt
        raise RequestError(str(exc), param="input") from exc


def _check_finite(vectors: Any) -> None:
    import numpy as np

    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if bad.size:
        raise NonFiniteEmbeddingError(
            f"the model produced NaN/inf embeddings for input(s) {bad[:5].tolist()}", bad.tolist()
        )


def _routes(state: AppState, demo_corpus: bool) -> list[Route]:
    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": state.model_name,
                        "object": "model",
                        "created": state.created,
                        "owned_by": "mrl-infer",
                    }
                ],
            }
        )

    async def health(request: Request) -> Response:
        if state.ready:
            return JSONResponse({"status": "ok", "model": state.model_name})
        status = "failed" if state.error else "loading"
        return JSONResponse({"status": status, "error": state.error}, status_code=503)

    async def metrics(request: Request) -> Response:
        state.metrics.queue_size.set(state.batcher.admitted)
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    embeddings = _embeddings_route(state)
    return [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *search_routes(state),
        *demo_routes(state, demo_corpus),
    ]


def create_app(
    embedder: EmbedderSource,
    config: ServerConfig | None = None,
    index: Any = None,
    *,
    demo_corpus: bool = False,
) -> Starlette:
    """The OpenAI-compatible embeddings app.

    Args:
        embedder: an Embedder, a zero-argument function returning one (loaded in the background at
            start-up, so ``/health`` answers 503 meanwhile), or any ``Backend`` (tests).
        config: server settings (default ``ServerConfig()``).
        index: an :class:`~mrl_infer.Index` served at ``/v1/search`` (404 there when None).
        demo_corpus: ``index`` holds the demo's bundled corpus (``mrl-embed demo``), so the demo
            page at ``/`` runs its funnel mode through ``/v1/search``.

    Returns:
        A Starlette app; its lifespan starts the batcher and the model's warm-up, and on shutdown
        finishes every admitted request before stopping.
    """
    config = config or ServerConfig()
    state = AppState(embedder, config, index)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.batcher.start()
        loader = asyncio.create_task(state.load())
        if not state.loads_in_background:  # a loaded model: warm up before serving
            await asyncio.shield(loader)
        try:
            yield
        finally:
            if not loader.done():
                loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            await state.batcher.stop()
            if (
                callable(state.source)
                and not isinstance(state.source, Embedder)
                and state.backend is not None
            ):
                emb = getattr(state.backend, "embedder", None)
                if emb is not None:
                    emb.close()

    app = Starlette(
        routes=_routes(state, demo_corpus),
        middleware=[
            Middleware(RequestLogMiddleware, metrics=state.metrics),
            Middleware(ApiKeyMiddleware, api_key=config.api_key),
        ],
        lifespan=lifespan,
    )
    app.state.mrl = state
    return app
