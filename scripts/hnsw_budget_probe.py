"""Probe (issue 12): can an HNSW graph fit the shortlist tier's RAM budget (1/12 of float32) and reach 0.99?

The 1/12 budget is 128 B per row at 384 dims; `Index.add_hnsw`'s graph (SQ8 codes of all 384 dims,
m=32) takes ~656 B. This builds faiss graphs of smaller degree over shorter or coarser codes on the
default model's 101,915 real embeddings (benchmarks/search_data.py, 1,000 held-out real queries),
reranks every candidate list exactly at 384 dims, and prints each graph's bytes per row (its faiss
file) and recall@10 against exact search. Needs the [faiss] extra; about 3 minutes on 2 cores.

    python scripts/hnsw_budget_probe.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import search_data
from mrl_infer.search import _scan

K = 10


def prefix(x: np.ndarray, d: int) -> np.ndarray:
    y = np.ascontiguousarray(x[:, :d], dtype=np.float32)
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def main() -> None:
    import faiss

    _, cv, _, qv = search_data.load()
    ref = _scan.exact(_scan.RowStore(384, "float32", [cv]), qv, K, 384)[1]
    # normalized vectors: L2 order = inner-product order (faiss' HNSW-PQ searches in L2)
    graphs: list[tuple[str, int, Callable[[int], object]]] = [
        (
            "m=8, SQ8 codes of the 128-d prefix",
            128,
            lambda d: faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 8),
        ),
        (
            "m=8, SQ4 codes of the 192-d prefix",
            192,
            lambda d: faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_4bit, 8),
        ),
        ("m=8, PQ 48 x 8 bits of all 384 dims", 384, lambda d: faiss.IndexHNSWPQ(d, 48, 8)),
        ("m=12, PQ 32 x 8 bits of all 384 dims", 384, lambda d: faiss.IndexHNSWPQ(d, 32, 12)),
    ]
    for name, d, make in graphs:
        index = make(d)
        index.hnsw.efConstruction = 80  # type: ignore[attr-defined]
        x = prefix(cv, d)
        t0 = time.perf_counter()
        index.train(x[:: max(1, len(x) // 50_000)])  # type: ignore[attr-defined]
        index.add(x)  # type: ignore[attr-defined]
        build = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(index, f"{tmp}/g.faiss")
            per_row = os.path.getsize(f"{tmp}/g.faiss") / len(x)
        print(f"{name}: built in {build:.0f} s, {per_row:.0f} B per row", flush=True)
        for over in (4, 8, 16):
            for ef in (160, 320, 640):
                params = faiss.SearchParametersHNSW(efSearch=ef)
                _, cand = index.search(prefix(qv, d), K * over, params=params)  # type: ignore[attr-defined]
                hits = 0
                for qi, c in enumerate(cand):
                    c = c[c >= 0]
                    best = c[np.argsort(-(cv[c] @ qv[qi]))[:K]]
                    hits += len(set(best.tolist()) & set(ref[qi].tolist()))
                print(f"  x{over} ef {ef}: recall@10 {hits / (K * len(qv)):.4f}", flush=True)


if __name__ == "__main__":
    main()
