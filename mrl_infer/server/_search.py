"""``POST /v1/search``: funnel search over the index given at start-up (``mrl-embed serve --index DIR``).

Request: ``{"query": str | [str], "k": 10, "oversample": int, "rerank_dim": int, "exact": false,
"model": str}`` (``input`` is accepted for ``query``). Query texts go through the same queue and
batches as ``/v1/embeddings`` (so backpressure applies), embedded at full dim with the index's
query prompt; the search runs in a worker thread. Response::

    {"object": "list", "model": ..., "data": [{"object": "search_result", "index": 0, "query": ...,
      "results": [{"id": ..., "score": 0.83, "fields": {...}}, ...]}],
     "usage": {"prompt_tokens": n, "total_tokens": n}}
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

from mrl_infer.errors import OverloadedError
from mrl_infer.server._errors import HTTPError, RequestError, error_response


class NoIndex(HTTPError):
    status = 404


@dataclass(frozen=True)
class SearchRequest:
    queries: list[str]
    k: int
    oversample: int | None
    rerank_dim: int | None
    exact: bool
    model: str | None

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
    unknown = set(body) - {"query", "input", "k", "oversample", "rerank_dim", "exact", "model", "user"}
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
    k = _opt_int(body, "k", 10)
    assert k is not None
    return SearchRequest(
        queries, k, _opt_int(body, "oversample", None), _opt_int(body, "rerank_dim", None), exact, model
    )


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
    """The index routes (``POST /v1/search``) over ``state.index``."""
    return [Route("/v1/search", search_route(state), methods=["POST"])]


def search_route(state: Any) -> Callable[[Request], Any]:
    """The ``/v1/search`` handler over ``state.index`` (an :class:`~mrl_infer.Index` or None)."""
    from mrl_infer.server import _app

    checked: list[bool] = []

    async def search(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            index = state.index
            if index is None:
                raise NoIndex("this server has no index: start it with mrl-embed serve --index DIR",
                              code="no_index")
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
            if state.batcher.would_overflow(req.n):
                raise OverloadedError(
                    f"the queue is full ({state.batcher.admitted} inputs); retry later",
                    retry_after=state.batcher.retry_after(),
                )
            prompt = (index.model or {}).get("query_prompt_name")
            prompt = prompt if prompt in backend.prompts else None
            tok = await _app._tokenize(backend, req.queries, None, prompt)
            pooled = await state.batcher.embed(tok.rows, tok.lengths)
            vectors = backend.finish(pooled, backend.embedding_dim)
            hits = await run_in_threadpool(
                index.search, vectors, req.k, oversample=req.oversample, rerank_dim=req.rerank_dim,
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
        return JSONResponse({"object": "list", "model": state.model_name, "data": data, "usage": usage})

    return search
