"""Small-set helpers, as sentence-transformers users know them: ``similarity`` and ``semantic_search``."""

from __future__ import annotations

from typing import Any

import numpy as np

from mrl_infer.errors import DimError, InputError
from mrl_infer.search import _scan


def _matrix(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InputError(f"{what} must be [n, dim] or [dim], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contain NaN or inf")
    return arr


def similarity(a: Any, b: Any) -> np.ndarray:
    """Cosine similarity ``[len(a), len(b)]`` of already-normalized vectors (the inner product).

    Any dim works as long as both sides match; for Matryoshka prefixes, cut and renormalize first
    (``Embedder.encode(..., dim=d)`` does).
    """
    x, y = _matrix(a, "a"), _matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise DimError(f"a has dim {x.shape[1]}, b has dim {y.shape[1]}")
    return x @ y.T


def semantic_search(
    query_embeddings: Any, corpus_embeddings: Any, k: int = 10
) -> list[list[dict[str, float | int]]]:
    """Exact top ``k`` corpus rows per query: ``[[{"corpus_id", "score"}, ...], ...]``, best first.

    The same shape as ``sentence_transformers.util.semantic_search`` (which calls it ``top_k``);
    rows are renormalized, memory stays bounded (the corpus is scanned in chunks).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    q = _matrix(query_embeddings, "query_embeddings")
    c = _matrix(corpus_embeddings, "corpus_embeddings")
    if q.shape[1] != c.shape[1]:
        raise DimError(f"query_embeddings have dim {q.shape[1]}, corpus_embeddings have dim {c.shape[1]}")
    if len(c) == 0:
        return [[] for _ in range(len(q))]
    store = _scan.RowStore(c.shape[1], "float32", [_scan.prefix_normalize(c, c.shape[1])])
    scores, rows = _scan.exact(store, q, int(k), c.shape[1])
    return [
        [{"corpus_id": int(r), "score": float(s)} for r, s in zip(rr, ss, strict=True)]
        for rr, ss in zip(rows.tolist(), scores.tolist(), strict=True)
    ]
