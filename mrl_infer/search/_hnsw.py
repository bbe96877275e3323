"""The ``hnsw`` engine (the ``[faiss]`` extra): an approximate shortlist from a graph, for large indexes.

A faiss ``IndexHNSWSQ`` (a navigable small-world graph over the first ``dim`` dims of every row,
renormalized, its vectors stored as 8-bit scalar codes) returns ``oversample * k`` candidates per
query after visiting a small part of the index; the rerank then rescores them exactly, as for the
brute-force tiers. Its cost grows about with ``log(N)`` instead of ``N``, and it pays for that in
RAM (about ``dim + 8 * m`` bytes per row: 640 MB per million rows at 384 dims, ``m = 32``, against
128 MB for the default 128-d int8 tier) and in build time (150 s per million rows on 2 cores).
It is never chosen for you: :meth:`Index.add_hnsw` builds it, ``search(engine="hnsw")`` uses it.

Why these defaults (docs/search.md, "The hnsw engine"): on the default model's real embeddings
(101,915 texts), a graph over all 384 dims with 4x oversampling and ``ef_search = 4 * k *
oversample`` reaches recall@10 0.995 against exact search, where a 128-d graph needs 48x
oversampling for 0.99 (its prefix ranks near neighbours too loosely) and an IVF index must probe
a quarter of its lists for 0.97.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import IndexFormatError
from mrl_infer.search._scan import RowStore, prefix_normalize

#: Graph degree (faiss' ``M``): each row links to ``m`` others on the upper levels, ``2 m`` on the base.
M = 32
#: Candidate-list length while building (faiss' ``efConstruction``).
EF_CONSTRUCTION = 80
#: Default ``oversample`` of ``search(engine="hnsw")``: candidates per result to rerank.
OVERSAMPLE = 4
#: Default ``ef_search`` is this many times the candidates asked for (``k * oversample``).
EF_FACTOR = 4
#: Rows the 8-bit codes' per-dim ranges are fitted on (spread evenly over the index).
TRAIN_ROWS = 100_000
_ADD_BLOCK = 65_536


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("engine='hnsw' needs faiss-cpu: pip install 'mrl-infer[faiss]'") from exc
    return faiss


@dataclass
class Graph:
    """An HNSW graph over the first ``dim`` dims of an index's rows (``faiss.IndexHNSWSQ``).

    ``index`` is None until the graph is built or read from ``path`` (a saved index reads it on
    first use, so loading an index neither needs faiss nor spends the RAM until then).
    """

    dim: int
    m: int = M
    ef_construction: int = EF_CONSTRUCTION
    path: Path | None = None
    count: int = 0  # rows in the file at ``path``
    index: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def nbytes(self, rows: int) -> int:
        """About the RAM of the graph over ``rows`` rows: the codes and the base level's links."""
        return rows * (self.dim + 8 * self.m + 16)

    def ensure(self, store: RowStore) -> Any:
        """The faiss index, read or built, holding every row of ``store`` (new rows are added)."""
        with self._lock:
            if self.index is None:
                self.index = self._read() if self.path is not None else self._new(store)
            index = self.index
            for start in range(index.ntotal, len(store), _ADD_BLOCK):
                stop = min(len(store), start + _ADD_BLOCK)
                rows = store.gather(np.arange(start, stop))
                index.add(prefix_normalize(rows, self.dim))
            return index

    def _new(self, store: RowStore) -> Any:
        faiss = faiss_module()
        index = faiss.IndexHNSWSQ(self.dim, faiss.ScalarQuantizer.QT_8bit, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        n = len(store)
        sample = np.unique(np.linspace(0, n - 1, min(n, TRAIN_ROWS)).astype(np.int64))
        index.train(prefix_normalize(store.gather(sample), self.dim))
        return index

    def _read(self) -> Any:
        faiss = faiss_module()
        assert self.path is not None
        try:
            index = faiss.read_index(str(self.path))
        except RuntimeError as exc:
            raise IndexFormatError(f"{self.path}: unreadable HNSW graph ({str(exc)[:200]})") from None
        if not isinstance(index, faiss.IndexHNSWSQ) or index.d != self.dim or index.ntotal != self.count:
            raise IndexFormatError(
                f"{self.path}: a {type(index).__name__} of {index.ntotal} rows of dim {index.d}, the "
                f"manifest says an HNSW graph of {self.count} rows of dim {self.dim} (rebuild it: "
                "index.add_hnsw())"
            )
        return index

    def write(self, path: Path, store: RowStore) -> None:
        """Write the graph over every row of ``store`` to ``path`` (faiss' own format)."""
        faiss_module().write_index(self.ensure(store), str(path))


def shortlist(graph: Graph, store: RowStore, queries: np.ndarray, kk: int, ef: int) -> np.ndarray:
    """``kk`` candidate rows per query (int64 ``[Q, kk]``; -1 where the graph found fewer)."""
    faiss = faiss_module()
    index = graph.ensure(store)
    params = faiss.SearchParametersHNSW(efSearch=max(ef, kk))
    _, rows = index.search(prefix_normalize(queries, graph.dim), kk, params=params)
    return np.asarray(rows, dtype=np.int64)
