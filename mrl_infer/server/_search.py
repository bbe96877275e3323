"""``POST /v1/search`` and ``GET /v1/index`` over the index given at start-up (``--index DIR``).

Request: ``{"query": str | [str], "k": 10, "oversample": int, "rerank_dim": int, "shortlist_dim":
int, "shortlist_precision": "float16" | "int8" | "ubinary", "exact": false, "model": str}``
(``input`` is accepted for ``query``). ``shortlist_dim``/``shortlist_precision`` pick one of the
index's shortlist tiers (``Index.search``'s rules); a tier it lacks is a 400 naming the field and
listing the tiers, before any query is embedded. Query texts go through the same queue and batches
as ``/v1/embeddings`` (so backpressure applies), embedded at full dim with the index's query
prompt; the search runs in a worker thread. Response::

    {"object": "list", "model": ..., "data": [{"object": "search_result", "index": 0, "query": ...,
      "results": [{"id": ..., "score": 0.83, "fields": {...}}, ...]}],
     "usage": {"prompt_tokens": n, "total_tokens": n},
     "stats": {"embed_ms": ..., "shortlist": {"dim", "precision", "rows", "candidates", "engine", "ms"},
               "rerank": {"dim", "precision", "rows", "kept", "ms"}}}

(``"exact": {"dim", "precision", "rows", "kept", "ms"}`` instead of shortlist/rerank for exact
search; times in milliseconds, 3 decimals; ``embed_ms`` is tokenization + the batched model call.)

``GET /v1/index``::

    {"object": "index", "count": n, "dim": 384, "tiers": [{"dim", "precision", "bytes"}, ...],
     "default_tier": {"dim", "precision"}, "rerank": {"dim", "precision", "bytes"},
     "oversample": 48, "model": name}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mrl_infer.errors import DimError, OverloadedError
from mrl_infer.server._errors import HTTPError, RequestError, error_response


class NoIndex(HTTPError):
    status = 404


_NO_INDEX = "this server has no index: start it with mrl-embed serve --index DIR"
_PRECISIONS = ("float16", "int8", "ubinary")  # mrl_infer.search._scan.SHORTLIST_PRECISIONS
_FIELDS = frozenset(
    {
        "query",
        "input",
        "k",
        "oversample",
        "rerank_dim",
        "shortlist_dim",
        "shortlist_precision",
        "exact",
        "model",
        "user",
    }
)


@dataclass(frozen=True)
class SearchRequest:
    queries: list[str]
    k: int
    oversample: int | None
    rerank_dim: int | None
    exact: bool
    model: str | None
    shortlist_dim: int | None = None
    shortlist_precision: str | None = None

    @property
    def n(self) -> int:
        return len(self.queries)


def _opt_int(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"'{name}' must be a positive integer, got {value!r}", param=name)
    return value


def parse_search(body: Any, max_inputs: int) -> SearchRequest:
    """Validate a ``/v1/search`` body; each error names the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = set(body) - _FIELDS
    if unknown:
        raise RequestError(f"unknown field(s) {sorted(unknown)}", param=sorted(unknown)[0])
    name = "query" if "query" in body else "input"
    q = body.get(name)
    queries = [q] if isinstance(q, str) else q
    if not isinstance(queries, list) or not queries or not all(isinstance(x, str) for x in queries):
        raise RequestError("'query' must be a string or a non-empty list of strings", param=name)
    if any(not x.strip() for x in queries):
        raise RequestError("'query' contains an empty string", param=name)
    if len(queries) > max_inputs:
        raise RequestError(f"at most {max_inputs} queries per request, got {len(queries)}", param=name)
    exact = body.get("exact", False)
    if not isinstance(exact, bool):
        raise RequestError(f"'exact' must be a boolean, got {exact!r}", param="exact")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    precision = body.get("shortlist_precision")
    if precision is not None and precision not in _PRECISIONS:
        raise RequestError(
            f"'shortlist_precision' must be one of {', '.join(_PRECISIONS)}, got {precision!r}",
            param="shortlist_precision",
        )
    k = _opt_int(body, "k", 10)
    assert k is not None
    return SearchRequest(
        queries,
        k,
        _opt_int(body, "oversample", None),
        _opt_int(body, "rerank_dim", None),
        exact,
        model,
        _opt_int(body, "shortlist_dim", None),
        precision,
    )


def check_tier(index: Any, req: SearchRequest) -> None:
    """A 400 naming ``shortlist_dim`` or ``shortlist_precision`` if the index has no such tier."""
    try:
        index._pick_tier(req.shortlist_dim, req.shortlist_precision)
    except DimError as exc:
        dims = {d for d, _ in index.tiers}
        lacks_dim = req.shortlist_dim is not None and req.shortlist_dim not in dims
        param = "shortlist_dim" if lacks_dim or req.shortlist_precision is None else "shortlist_precision"
        raise RequestError(str(exc).replace("index.add_tier", "Index.add_tier"), param=param) from None


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def search_stats(stats: dict[str, Any], embed_seconds: float) -> dict[str, Any]:
    """The response's ``stats``: ``SearchResult.stats`` with times in milliseconds."""
    out: dict[str, Any] = {"embed_ms": _ms(embed_seconds)}
    for stage in ("shortlist", "rerank", "exact"):
        if stage in stats:
            entry = {k: v for k, v in stats[stage].items() if k != "seconds"}
            out[stage] = entry | {"ms": _ms(stats[stage]["seconds"])}
    return out


def index_info(index: Any) -> dict[str, Any]:
    """The ``GET /v1/index`` body."""
    default_dim, default_precision = index.tiers[0]
    sizes = index.tier_bytes
    return {
        "object": "index",
        "count": len(index),
        "dim": index.dim,
        "tiers": [{"dim": d, "precision": p, "bytes": sizes[(d, p)]} for d, p in index.tiers],
        "default_tier": {"dim": default_dim, "precision": default_precision},
        "rerank": {
            "dim": index.rerank_dim,
            "precision": index.rerank_precision,
            "bytes": index.memory["rerank"],
        },
        "oversample": index.oversample,
        "model": (index.model or {}).get("name"),
    }


def _results(index: Any, req: SearchRequest, hits: Any) -> list[dict[str, Any]]:
    data = []
    for i, (query, ids, scores, positions) in enumerate(
        zip(req.queries, hits.ids, hits.scores.tolist(), hits.positions.tolist(), strict=True)
    ):
        rows = [
            {"id": rid, "score": score, "fields": fields}
            for rid, score, fields in zip(ids, scores, index.fields(positions), strict=True)
        ]
        data.append({"object": "search_result", "index": i, "query": query, "results": rows})
    return data


def search_routes(state: Any) -> list[Route]:
    """The index routes (``POST /v1/search``, ``GET /v1/index``) over ``state.index``."""
    return [
        Route("/v1/search", search_route(state), methods=["POST"]),
        Route("/v1/index", index_route(state), methods=["GET"]),
    ]


def index_route(state: Any) -> Callable[[Request], Any]:
    """The ``/v1/index`` handler: what ``state.index`` holds (404 ``no_index`` without one)."""

    async def describe(request: Request) -> Response:
        index = state.index
        if index is None:
            return error_response(NoIndex(_NO_INDEX, code="no_index"))
        return JSONResponse(index_info(index))

    return describe


def search_route(state: Any) -> Callable[[Request], Any]:
    """The ``/v1/search`` handler over ``state.index`` (an :class:`~mrl_infer.Index` or None)."""
    from mrl_infer.server import _app

    checked: list[bool] = []

    async def search(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            index = state.index
            if index is None:
                raise NoIndex(_NO_INDEX, code="no_index")
            backend = state.require_backend()
            if not checked and getattr(backend, "embedder", None) is not None:
                index._check_model(backend.embedder)  # another model's queries would be meaningless
                checked.append(True)
            raw = await _app._read_body(request, state.config.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"the request body is not valid JSON: {exc}") from exc
            req = parse_search(body, state.config.max_inputs)
            _app._check_model(state, req.model)
            check_tier(index, req)
            if state.batcher.would_overflow(req.n):
                raise OverloadedError(
                    f"the queue is full ({state.batcher.admitted} inputs); retry later",
                    retry_after=state.batcher.retry_after(),
                )
            prompt = (index.model or {}).get("query_prompt_name")
            prompt = prompt if prompt in backend.prompts else None
            t_embed = time.perf_counter()
            tok = await _app._tokenize(backend, req.queries, None, prompt)
            pooled = await state.batcher.embed(tok.rows, tok.lengths)
            vectors = backend.finish(pooled, backend.embedding_dim)
            embed_seconds = time.perf_counter() - t_embed
            hits = await run_in_threadpool(
                index.search,
                vectors,
                req.k,
                oversample=req.oversample,
                shortlist_dim=req.shortlist_dim,
                shortlist_precision=req.shortlist_precision,
                rerank_dim=req.rerank_dim,
                exact=req.exact,
            )
            data = await run_in_threadpool(_results, index, req, hits)
        except OverloadedError as exc:
            state.metrics.rejected.inc()
            return error_response(exc)
        except Exception as exc:
            return error_response(exc)
        state.metrics.request_duration.observe(time.perf_counter() - t0)
        request.state.log = f" queries={req.n} k={req.k} tokens={tok.num_tokens}"
        usage = {"prompt_tokens": tok.num_tokens, "total_tokens": tok.num_tokens}
        stats = search_stats(hits.stats, embed_seconds)
        return JSONResponse(
            {"object": "list", "model": state.model_name, "data": data, "usage": usage, "stats": stats}
        )

    return search
