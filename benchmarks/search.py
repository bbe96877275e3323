"""Funnel search: recall, labelled quality, speed and memory (issue: Matryoshka funnel search).

    python -m benchmarks.search                 # everything (~15 min on 2 cores); writes
                                                # benchmarks/results/search.json, docs/search_pareto.png
    python -m benchmarks.search --quick         # smaller sweep, for a smoke run

- **Recall** is measured on real embeddings only: the default model's full 384-d vectors of the
  101,915 real texts of ``benchmarks/search_data.py``, 1,000 held-out real queries; recall@10 of
  each setting against exact full-dim float32 search.
- **Labelled quality**: nDCG@10 on ``benchmarks/data/retrieval`` (MNLI-val) and on CISI
  (``../shared/data/retrieval/cisi``, when present), exact vs the default funnel.
- **Speed at 1M**: 1,000,000 vectors built from the real ones so that they keep their structure:
  each is a real embedding plus Gaussian noise drawn from the real embeddings' own covariance
  (0.5x its scale), renormalized; the per-dim variance profile (what makes Matryoshka prefixes
  work) and the cluster structure of the real set carry over. Queries: the 1,000 real held-out
  queries. Queries/s at batch 1 (median of 20 single-query calls) and batch 64 (median of 3).
- Peers in the same run: exact numpy (chunked GEMM + argpartition, the reference) and faiss
  ``IndexFlatIP`` over the full float32 vectors (the usual choice), when faiss-cpu is installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import search_data
from mrl_infer import _quality
from mrl_infer.search import Index, _scan

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "search.json"
PLOT = REPO / "docs" / "search_pareto.png"
K = 10


def machine() -> dict[str, Any]:
    flags = ""
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
                break
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f" {f}" in flags]
    import os

    return {"cpu": model, "isa": isa, "cores": os.cpu_count(), "python": platform.python_version()}


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(
        np.mean(
            [len(set(a) & set(b)) / ref.shape[1] for a, b in zip(found.tolist(), ref.tolist(), strict=True)]
        )
    )


def structured_million(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: real rows plus noise from the real rows' covariance (see module docstring)."""
    rng = np.random.default_rng(seed)
    cov = np.cov((real - real.mean(0)).T).astype(np.float64)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(real.shape[1])).astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        base = real[rng.integers(0, len(real), m)]
        out[s : s + m] = base + 0.5 * (rng.standard_normal((m, real.shape[1])).astype(np.float32) @ chol.T)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def timed(fn: Any, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speeds(search: Any, queries: np.ndarray) -> dict[str, float]:
    """Queries/s at batch 1 and batch 64."""
    b1 = timed(lambda: [search(queries[i : i + 1]) for i in range(20)], 1) / 20
    b64 = timed(lambda: search(queries[:64]), 3)
    return {"qps_batch1": 1 / b1, "qps_batch64": 64 / b64}


def sweep(dims: list[int], precisions: list[str], oversamples: list[int]) -> list[tuple[int, str, int]]:
    return [
        (d, p, o) for d in dims for p in precisions for o in oversamples if not (p == "ubinary" and d % 8)
    ]


def recall_table(settings: list[tuple[int, str, int]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    corpus, cv, _, qv = search_data.load()
    store = _scan.RowStore(384, "float32", [cv])
    _, ref = _scan.exact(store, qv, K, 384)
    rows = []
    built: dict[tuple[int, str], Index] = {}
    for d, p, o in settings:
        if (d, p) not in built:
            built.clear()
            built[(d, p)] = Index.from_embeddings(cv, shortlist_dim=d, shortlist_precision=p)
        r = built[(d, p)].search(qv, K, oversample=o)
        rows.append(
            {"shortlist_dim": d, "precision": p, "oversample": o, "recall_at_10": recall(r.positions, ref)}
        )
        print(f"recall  {d:>4} {p:<8} x{o:<3} {rows[-1]['recall_at_10']:.4f}", file=sys.stderr, flush=True)
    return rows, {"corpus": len(corpus), "queries": len(qv)}


def labelled_quality() -> list[dict[str, Any]]:
    from mrl_infer import Embedder

    emb = Embedder()
    sets = [
        (
            "MNLI-val (benchmarks/data/retrieval)",
            _quality.load_retrieval(REPO / "benchmarks" / "data" / "retrieval"),
        )
    ]
    cisi = search_data.SHARED / "retrieval" / "cisi"
    if cisi.is_dir():
        qs = [json.loads(x) for x in (cisi / "queries.jsonl").read_text(encoding="utf-8").splitlines()]
        docs = [json.loads(x) for x in (cisi / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
        qrels: dict[str, set[str]] = {}
        for line in (cisi / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()[1:]:
            qid, did, *_ = line.split("\t")
            qrels.setdefault(qid, set()).add(did)
        sets.append(
            (
                "CISI (shared/data/retrieval/cisi)",
                _quality.RetrievalData(
                    [q["_id"] for q in qs],
                    [q["text"] for q in qs],
                    [d["_id"] for d in docs],
                    [(d.get("title", "") + " " + d["text"]).strip() for d in docs],
                    qrels,
                ),
            )
        )
    out = []
    for name, data in sets:
        index = Index.build(emb, data.docs, ids=data.doc_ids)
        qv = emb.encode(data.queries, prompt_name="query" if "query" in emb.prompts else None)
        rel = [data.qrels.get(q, set()) for q in data.query_ids]
        ex = index.search(qv, K, exact=True).ids
        fu = index.search(qv, K).ids
        row = {
            "set": name,
            "queries": len(qv),
            "docs": len(data.doc_ids),
            "ndcg10_exact": 100 * _quality.ndcg_at_k(ex, rel),
            "ndcg10_funnel": 100 * _quality.ndcg_at_k(fu, rel),
        }
        out.append(row)
        print(f"quality {row}", file=sys.stderr, flush=True)
    return out


def speed_tables(settings: list[tuple[int, str, int]], sizes: list[int]) -> dict[str, Any]:
    _, cv, _, qv = search_data.load()
    big = structured_million(cv, max(sizes))
    out: dict[str, Any] = {"pareto": [], "scaling": []}
    n = max(sizes)
    store = _scan.RowStore(384, "float32", [big])
    _, ref = _scan.exact(store, qv[:64], K, 384)
    out["exact_numpy"] = speeds(lambda q: _scan.exact(store, q, K, 384), qv) | {"ram_bytes": big.nbytes}
    print(f"speed exact numpy {out['exact_numpy']}", file=sys.stderr, flush=True)
    try:
        import faiss

        fi = faiss.IndexFlatIP(384)
        fi.add(big)
        out["faiss_flat"] = speeds(lambda q, fi=fi: fi.search(q, K), qv) | {
            "ram_bytes": big.nbytes,
            "faiss": faiss.__version__,
        }
        print(f"speed faiss flat {out['faiss_flat']}", file=sys.stderr, flush=True)
        del fi
    except ImportError:
        out["faiss_flat"] = None
    built: dict[tuple[int, str], Index] = {}
    for d, p, o in settings:
        if (d, p) not in built:
            built.clear()
            built[(d, p)] = Index.from_embeddings(big, shortlist_dim=d, shortlist_precision=p)
        idx = built[(d, p)]
        row = {"shortlist_dim": d, "precision": p, "oversample": o, "n": n}
        row |= speeds(lambda q, idx=idx, o=o: idx.search(q, K, oversample=o), qv)
        row["recall_at_10_synthetic"] = recall(idx.search(qv[:64], K, oversample=o).positions, ref)
        row |= {"shortlist_bytes": idx.memory["shortlist"], "rerank_bytes": idx.memory["rerank"]}
        out["pareto"].append(row)
        print(f"speed {row}", file=sys.stderr, flush=True)
    built.clear()
    for size in sizes:
        part = big[:size]
        st = _scan.RowStore(384, "float32", [part])
        ex = speeds(lambda q, st=st: _scan.exact(st, q, K, 384), qv)
        idx = Index.from_embeddings(part)
        fu = speeds(lambda q, idx=idx: idx.search(q, K), qv)
        out["scaling"].append(
            {
                "n": size,
                "exact": ex,
                "funnel_default": fu,
                "shortlist_bytes": idx.memory["shortlist"],
                "rerank_bytes": idx.memory["rerank"],
                "float32_bytes": part.nbytes,
            }
        )
        print(f"scaling {out['scaling'][-1]}", file=sys.stderr, flush=True)
    return out


def plot(result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = {(r["shortlist_dim"], r["precision"], r["oversample"]): r["recall_at_10"] for r in result["recall"]}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    markers = {"float16": "o", "int8": "s", "ubinary": "^"}
    for ax, key, title in ((axes[0], "qps_batch64", "batch 64"), (axes[1], "qps_batch1", "batch 1")):
        for d in sorted({r["shortlist_dim"] for r in result["speed"]["pareto"]}):
            for p, m in markers.items():
                pts = [
                    (r[key], rec.get((d, p, r["oversample"])))
                    for r in result["speed"]["pareto"]
                    if r["shortlist_dim"] == d and r["precision"] == p
                ]
                pts = [(x, y) for x, y in pts if y is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker=m, label=f"{d}-d {p}")
        for name, style in (("exact_numpy", "k--"), ("faiss_flat", "r:")):
            if result["speed"].get(name):
                ax.axvline(result["speed"][name][key], color=style[0], linestyle=style[1:], label=name)
        ax.set_xscale("log")
        ax.set_xlabel(f"queries/s at 1M ({title})")
        ax.set_title(f"funnel search, {title}")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("recall@10 vs exact (real embeddings, 101,915 texts)")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(f"mrl-infer funnel: oversample 1..32 along each line; {result['machine']['cpu']}")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small sweep at 100k (smoke run)")
    args = ap.parse_args()
    if args.quick:
        settings = sweep([64, 128], ["int8"], [4, 32])
        sizes = [10_000, 100_000]
    else:
        settings = sweep([16, 32, 64, 128], ["float16", "int8", "ubinary"], [1, 2, 4, 8, 16, 32])
        sizes = [10_000, 100_000, 1_000_000]
    result: dict[str, Any] = {
        "machine": machine(),
        "k": K,
        "command": "python -m benchmarks.search" + (" --quick" if args.quick else ""),
    }
    result["recall"], result["recall_data"] = recall_table(settings)
    result["quality"] = labelled_quality()
    result["speed"] = speed_tables(settings, sizes)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        plot(result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
