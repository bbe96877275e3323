"""The math of funnel search: shortlist tiers, the compiled scan, the rerank and exact search.

Nothing here knows about files, ids or texts (that is ``_store`` and ``_index``). All vectors are
unit-normalized, so the inner product is the cosine similarity.

The shortlist scan runs in onnxruntime (already a runtime dependency): one small graph per tier
precision (``graphs/scan_*.onnx``, written by ``scripts/build_scan_graphs.py``) scores a chunk of
the tier against a block of queries (one GEMM, both cores) and returns that chunk's exact top
``kk`` through a grouped max-reduce and two TopKs, so neither the score matrix nor the selection
ever goes through per-query Python. Chunks of ``CHUNK`` rows (more at few queries: ``chunk_rows``)
bound memory for any N: a ``[QUERY_BLOCK, CHUNK]`` score block (64 MiB) at most.

The ``faiss`` engine (the ``[faiss]`` extra) scans ubinary tiers by Hamming distance between the
query's sign bits and the rows' (faiss ``IndexBinaryFlat``, popcount in compiled code): a cheaper
score than the asymmetric one, so it needs a larger prefix or more oversampling for the same recall.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Shortlist precisions: float16 (2 B/dim), int8 with per-dim scales (1 B/dim), ubinary (1 bit/dim).
SHORTLIST_PRECISIONS = ("float16", "int8", "ubinary")
#: Shortlist engines: the tier's own scoring in onnxruntime, Hamming distance in faiss, or a faiss
#: HNSW graph (``_hnsw``; approximate, built by ``Index.add_hnsw``).
ENGINES = ("onnxruntime", "faiss", "hnsw")
#: Rerank-tier precisions.
RERANK_PRECISIONS = ("float16", "float32")
#: Rows per onnxruntime call. 65,536 rows: the fewest calls at which the score block still fits
#: the cache-friendly range measured in benchmarks/search.py (16k was slower, 256k no faster).
CHUNK = 65_536
#: At few queries a block, chunks grow to hold about ``CHUNK_SCORES`` scores, up to ``CHUNK_MAX``
#: rows: one query's call costs ~0.3 ms more than its GEMV of 65,536 rows, so larger chunks pay.
#: Over 1M 128-d int8 rows (Intel Xeon with AMX, 2 cores), one query took 11.0 ms at 512k-row chunks
#: against 15.9 ms at 65,536 (12.0 at 256k; 64 queries unchanged at their 65,536).
CHUNK_SCORES = 64 * CHUNK
CHUNK_MAX = 1 << 19
#: Rows per group of the grouped max-reduce inside the scan graphs (scripts/build_scan_graphs.py).
GROUP = 8
#: Queries per scan pass: every query of a block shares one pass over the tier.
QUERY_BLOCK = 256
#: From how many candidates per query, and how many queries in a block, chunks after the first go
#: through the ``_above`` graphs (only the rows that reach each query's cut) instead of two TopKs.
#: Over 1M 128-d int8 rows (benchmarks/search.py's structured vectors; both ways interleaved in one
#: process; Zen 5, 2 cores), 64 queries took 109 vs 173 ms at 480 candidates, 73 vs 98 at 160,
#: 70 vs 77 at 80, the same at 40 and 20, 84 vs 77 at 10; at 480 candidates, 16 queries 0.50x the
#: time and 4 queries 0.65x, but one query 1.1-1.4x (median 12.6 vs 8.5 ms: its TopKs are cheap).
CUT_MIN_KK = 64
CUT_MIN_QUERIES = 2
_GRAPHS = Path(__file__).with_name("graphs")


def prefix_normalize(x: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` columns of ``x`` (float32 ``[n, D]``), each row renormalized to unit length."""
    p = np.array(x[:, :dim], dtype=np.float32)
    norms = np.linalg.norm(p, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    p /= norms
    return p


@dataclass
class Tier:
    """A shortlist tier: the first ``dim`` dims of every row, renormalized, at ``precision``.

    ``data``: float16 ``[n, dim]``; int8 as uint8 ``[n, dim]`` holding ``int8 + 128`` (the form
    MatMulInteger takes; the offset adds a per-query constant, which keeps each query's order);
    ubinary as uint8 ``[n, dim // 8]`` (packed sign bits, MSB first).
    ``scale``: for int8, the per-dim step (float32 ``[dim]``); the query absorbs it.
    """

    dim: int
    precision: str
    data: np.ndarray
    scale: np.ndarray | None = None
    #: the faiss copy of a ubinary tier's codes (engine="faiss"), built on first use, extended on append
    _faiss: Any = field(default=None, repr=False, compare=False)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + (0 if self.scale is None else self.scale.nbytes))

    def __len__(self) -> int:
        return len(self.data)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Tier rows for unit vectors ``[n, D]`` (D >= dim); int8 rows beyond the scale saturate."""
        return self._encode_prefix(prefix_normalize(vectors, self.dim))

    def _encode_prefix(self, p: np.ndarray) -> np.ndarray:
        if self.precision == "float16":
            return p.astype(np.float16)
        if self.precision == "int8":
            assert self.scale is not None
            return (np.clip(np.rint(p / self.scale), -127, 127) + 128).astype(np.uint8)
        return np.packbits(p > 0, axis=1)

    def append(self, vectors: np.ndarray) -> None:
        self.data = np.concatenate([self.data, self.encode(vectors)])

    def query(self, queries: np.ndarray) -> np.ndarray:
        """The scan graph's query operand ``[dim, Q]``: the prefix, renormalized; for int8 times
        the scale; for int8 and ubinary rounded to 7-bit ints (|q| <= 63) with one scale per query:
        AVX2's u8 x s8 kernel adds pairs of products in int16, which 255 * 127 * 2 would overflow."""
        q = prefix_normalize(queries, self.dim)
        if self.precision == "float16":
            return np.ascontiguousarray(q.T)
        if self.scale is not None:
            q *= self.scale
        peak = np.maximum(np.abs(q).max(axis=1, keepdims=True), 1e-30)
        return np.ascontiguousarray(np.rint(q * (63.0 / peak)).astype(np.int8).T)

    def decode(self, start: int, stop: int) -> np.ndarray:
        """float32 rows ``[start, stop)`` as the scan graph sees them (int8: +128; ubinary: {0, 1})."""
        part = self.data[start:stop]
        if self.precision == "ubinary":
            return np.unpackbits(part, axis=1)[:, : self.dim].astype(np.float32)
        return part.astype(np.float32)


def make_tier(vectors: np.ndarray, dim: int, precision: str) -> Tier:
    """Build a tier from unit vectors ``[n, D]``; the int8 scale is fitted to these rows.

    ``dim`` and ``precision`` are checked by ``Index``.
    """
    p = prefix_normalize(vectors, dim)
    scale = None
    if precision == "int8":
        peak = np.abs(p).max(axis=0) if len(p) else np.ones(dim, np.float32)
        scale = (np.maximum(peak, 1e-6) / 127.0).astype(np.float32)
    width = dim // 8 if precision == "ubinary" else dim
    tier = Tier(
        dim, precision, np.empty((0, width), np.float16 if precision == "float16" else np.uint8), scale
    )
    tier.data = tier._encode_prefix(p)
    return tier


class _Sessions:
    """One onnxruntime session per scan graph, created on first use and shared by threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, int | None], object] = {}

    def get(self, graph: str, threads: int | None) -> object:
        """The session of ``graphs/{graph}.onnx`` (e.g. ``scan_int8``, ``cast_float16``)."""
        key = (graph, threads)
        with self._lock:
            if key not in self._sessions:
                import onnxruntime as ort

                so = ort.SessionOptions()
                so.log_severity_level = 3
                if threads:
                    so.intra_op_num_threads = threads
                # a search alternates between sessions (TopK and cut graphs, the cast, the rerank);
                # a pool that spins after its run takes the cores from the next session's: 64 queries
                # over 1M rows 118 vs 133 ms (Intel Xeon with AMX, interleaved), one query unchanged
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                path = str(_GRAPHS / f"{graph}.onnx")
                self._sessions[key] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            return self._sessions[key]


_SESSIONS = _Sessions()


def _select(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of ``scores`` ``[Q, m]`` (with their ``rows``), in no order."""
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.take_along_axis(scores, part, 1)
        rows = np.take_along_axis(rows, part, 1)
    return scores, rows


def as_float32(x: np.ndarray) -> np.ndarray:
    """``x`` (``[n, d]``) as float32; float16 goes through onnxruntime's Cast (F16C, ~10x numpy's
    astype, bit-identical), which reads a memory-mapped array in place."""
    if x.dtype != np.float16 or x.size < 4096:
        return np.asarray(x, dtype=np.float32)
    session = _SESSIONS.get("cast_float16", None)
    return session.run(None, {"x": np.ascontiguousarray(x)})[0]  # type: ignore[attr-defined, no-any-return]


def scores_against(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``q @ rows.T`` (float32 ``[Q, d]``; rows ``[U, d]`` float32 or float16) in onnxruntime.

    Not numpy: OpenBLAS's threads spin after a GEMM and compete with the scan's onnxruntime pool
    for the same cores (see scripts/build_scan_graphs.py's ``build_gemm``). float16 rows are cast
    in the graph: the same numbers as casting first.
    """
    if q.size * len(rows) < 65_536:  # tiny: the session call costs more than the product
        return q @ np.asarray(rows, np.float32).T  # type: ignore[no-any-return]
    half = rows.dtype == np.float16
    session = _SESSIONS.get("gemm_float16" if half else "gemm_float32", None)
    feed = {
        "q": np.ascontiguousarray(q, np.float32),
        "rows": np.ascontiguousarray(rows if half else np.asarray(rows, np.float32)),
    }
    return session.run(None, feed)[0]  # type: ignore[attr-defined, no-any-return]


def top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``k`` of each row of ``scores`` ``[Q, m]`` (with their ``rows``), best first."""
    scores, rows = _select(scores, rows, k)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)


_FAISS_LOCK = threading.Lock()


def _faiss_index(tier: Tier) -> Any:
    """The tier's faiss ``IndexBinaryFlat``; rows are only ever appended, so new ones are added to it."""
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("engine='faiss' needs faiss-cpu: pip install 'mrl-infer[faiss]'") from exc
    with _FAISS_LOCK:
        if tier._faiss is None:
            tier._faiss = faiss.IndexBinaryFlat(tier.dim)
        index = tier._faiss
        if index.ntotal < len(tier):
            index.add(np.ascontiguousarray(tier.data[index.ntotal :]))
        return index


def shortlist_hamming(tier: Tier, queries: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``kk`` rows of a ubinary tier by Hamming distance to each query's sign bits (faiss).

    Scores are minus the distance (float32, higher is better); rows int64 ``[Q, kk]``.
    """
    index = _faiss_index(tier)
    codes = np.packbits(prefix_normalize(queries, tier.dim) > 0, axis=1)
    dist, rows = index.search(codes, kk)
    return -dist.astype(np.float32), rows.astype(np.int64)


def _dense(nq: int, qi: np.ndarray, s: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, score, row) triples as ``[nq, w]`` matrices padded with -inf."""
    # a stable sort of small unsigned ints is a radix sort: ~8x faster than on int64
    order = np.argsort(qi.astype(np.uint8 if nq <= 256 else np.uint32), kind="stable")
    qi, s, r = qi[order], s[order], r[order]
    counts = np.bincount(qi, minlength=nq)
    pos = np.arange(len(qi)) - np.repeat(np.cumsum(counts) - counts, counts)
    out_s = np.full((nq, int(counts.max())), -np.inf, np.float32)
    out_r = np.zeros(out_s.shape, np.int64)
    out_s[qi, pos] = s
    out_r[qi, pos] = r
    return out_s, out_r


def chunk_rows(queries: int) -> int:
    """Rows per scan call for a block of ``queries``: ``CHUNK``, more at few queries (``CHUNK_SCORES``)."""
    return max(CHUNK, min(CHUNK_MAX, CHUNK_SCORES // max(queries, 1) // GROUP * GROUP))


def _scan_block(tier: Tier, q: np.ndarray, kk: int, threads: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``kk`` rows for the query block ``q`` (``[dim, Q]``, from :meth:`Tier.query`).

    Chunks go through the TopK graph until each query holds ``kk`` candidates; after that (from
    ``CUT_MIN_KK`` candidates and ``CUT_MIN_QUERIES`` queries on), through the ``_above`` graph,
    which returns only the rows that reach the query's cut (its ``kk``-th best kept score): rows
    below it cannot enter the result, so the result is the same. Rows that pass are merged into the
    kept ones (and the cut raised) once they add up to ``kk`` a query.
    """
    n = len(tier)
    nq = q.shape[1]
    session = _SESSIONS.get(f"scan_{tier.precision}", threads)
    above = _SESSIONS.get(f"scan_{tier.precision}_above", threads)
    cut_type = np.float32 if tier.precision == "float16" else np.int32
    qf = q.astype(np.float32)
    kept_s = [np.empty((nq, 0), np.float32)]
    kept_r = [np.empty((nq, 0), np.int64)]
    width = pending = 0  # kept columns; rows passed since the last merge
    cut = below = None
    chunk = first = chunk_rows(nq)
    use_cut = kk >= CUT_MIN_KK and nq >= CUT_MIN_QUERIES
    if use_cut:
        # a first chunk of twice the rows sets a tighter cut for the rest (64 queries x 480 over 1M
        # rows: 74 vs 80 ms; half the rows: 85 ms), within the [QUERY_BLOCK, CHUNK] score bound
        first = max(GROUP, min(2 * chunk, QUERY_BLOCK * CHUNK // nq) // GROUP * GROUP)
    bounds = [0, *range(first, n, chunk), n] if n else []
    for start, stop in itertools.pairwise(bounds):
        whole = (stop - start) // GROUP * GROUP  # the graphs take whole groups
        kc = min(kk, stop - start)
        if whole and cut is not None and use_cut:
            cand, pairs = above.run(  # type: ignore[attr-defined]
                None, {"t": tier.data[start : start + whole], "q": q, "below": below}
            )
            if len(pairs):
                rows = start + pairs[:, :1] * GROUP + np.arange(GROUP)  # [M, G]
                hit = cand >= cut[pairs[:, 1]][:, None].astype(np.float32)
                s, r = _dense(nq, np.broadcast_to(pairs[:, 1:], cand.shape)[hit], cand[hit], rows[hit])
                kept_s.append(s)
                kept_r.append(r)
                pending += int(hit.sum())
                width += s.shape[1]
        elif whole // GROUP >= kc:
            s, r = session.run(  # type: ignore[attr-defined]
                None, {"t": tier.data[start : start + whole], "q": q, "kk": np.array([kc], dtype=np.int64)}
            )
            kept_s.append(s)
            kept_r.append(r + start)
            width += s.shape[1]
        else:
            whole = 0
        if start + whole < stop:  # rows the graphs cannot take (< GROUP, or a tiny index): plain numpy
            s_all = (tier.decode(start + whole, stop) @ qf).T  # [Q, m]
            m = stop - start - whole
            s, r = _select(s_all, np.broadcast_to(np.arange(m), s_all.shape), min(kc, m))
            kept_s.append(s)
            kept_r.append(r + start + whole)
            width += s.shape[1]
        if width >= kk and (cut is None or pending >= kk * nq or width > 8 * kk):
            s, r = _select(np.concatenate(kept_s, 1), np.concatenate(kept_r, 1), kk)
            kept_s, kept_r, width, pending = [s], [r], kk, 0
            # kk real scores a query (padding is -inf and never selected over a real score);
            # int8 and ubinary scores are integers, held exactly in float32
            cut = s.min(axis=1).astype(cut_type)
            # the largest score under the cut: integers for int8 and ubinary, the next float down
            # for float16 tiers (their float32 scores differ from it only when they reach the cut)
            below = cut - 1 if cut_type is np.int32 else np.nextafter(cut, np.float32(-np.inf))
    return top_k(np.concatenate(kept_s, 1), np.concatenate(kept_r, 1), kk)


def shortlist(
    tier: Tier, queries: np.ndarray, kk: int, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``kk`` rows of the tier for each query (unit vectors ``[Q, D]``): scores and rows ``[Q, kk]``.

    Scores are the tier's own (int8/ubinary: scaled integers), comparable within a query only.
    """
    out_s, out_r = [], []
    for b in range(0, len(queries), QUERY_BLOCK):
        s, r = _scan_block(tier, tier.query(queries[b : b + QUERY_BLOCK]), kk, threads)
        out_s.append(s)
        out_r.append(r)
    return np.concatenate(out_s), np.concatenate(out_r)


class RowStore:
    """The rerank tier: unit rows ``[n, dim]`` in segments (memory-mapped from disk, or in RAM).

    Only the rows asked for are read from a memory-mapped segment.
    """

    def __init__(self, dim: int, precision: str, segments: list[np.ndarray] | None = None) -> None:
        if precision not in RERANK_PRECISIONS:
            raise ValueError(f"rerank_precision must be one of {RERANK_PRECISIONS}, got {precision!r}")
        self.dim = dim
        self.precision = precision
        self.segments: list[np.ndarray] = list(segments or [])

    def __len__(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def nbytes(self) -> int:
        return sum(int(s.nbytes) for s in self.segments)

    def append(self, vectors: np.ndarray) -> None:
        self.segments.append(prefix_normalize(vectors, self.dim).astype(self.precision))

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 ``[len(rows), dim]`` for sorted, distinct ``rows``."""
        return as_float32(self.take(rows))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), dim]`` as stored (float16 or float32) for sorted, distinct ``rows``."""
        parts = []
        offset = 0
        for seg in self.segments:
            lo, hi = np.searchsorted(rows, [offset, offset + len(seg)])
            if hi > lo:
                parts.append(seg[rows[lo:hi] - offset])
            offset += len(seg)
        if not parts:
            return np.empty((0, self.dim), self.precision)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 block) over the whole tier, ``size`` rows at a time."""
        offset = 0
        for seg in self.segments:
            for start in range(0, len(seg), size):
                yield offset + start, as_float32(seg[start : start + size])
            offset += len(seg)


def rerank(
    store: RowStore, queries: np.ndarray, candidates: np.ndarray, k: int, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rescore ``candidates`` ``[Q, C]`` with the first ``dim`` rerank dims; best ``k`` ``[Q, k]``.

    A candidate ``-1`` (an approximate shortlist that found fewer) scores ``-inf``, so it comes
    last; callers make sure each query has at least ``k`` real candidates.
    """
    out_s, out_r = [], []
    missing = candidates < 0
    if missing.any():  # stand in the query's best candidate (column 0, or row 0), scored -inf below
        candidates = np.where(missing, np.maximum(candidates[:, :1], 0), candidates)
    for b in range(0, len(queries), 64):
        cand = candidates[b : b + 64]  # [q, C]
        uniq, inverse = np.unique(cand, return_inverse=True)
        # full dim: the stored rows as they are (float16 is cast inside the GEMM's graph)
        rows = store.take(uniq) if dim == store.dim else prefix_normalize(store.gather(uniq), dim)
        q = prefix_normalize(queries[b : b + 64], dim)  # [q, dim]
        # one GEMM against the distinct rows, then each query's own candidates: cheaper than
        # materializing [q, C, dim] (126 MB at 64 queries x 1,280 candidates), as fast at one query
        scores = np.take_along_axis(scores_against(q, rows), inverse.reshape(cand.shape), 1)  # [q, C]
        scores[missing[b : b + 64]] = -np.inf
        s, r = top_k(scores, cand, k)
        out_s.append(s)
        out_r.append(r)
    return np.concatenate(out_s), np.concatenate(out_r)


def exact(store: RowStore, queries: np.ndarray, k: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top ``k`` over the whole rerank tier at ``dim`` dims (the reference)."""
    k = min(k, len(store))
    out_s, out_r = [], []
    for b in range(0, len(queries), QUERY_BLOCK):
        q = prefix_normalize(queries[b : b + QUERY_BLOCK], dim)
        kept_s = np.empty((len(q), 0), np.float32)
        kept_r = np.empty((len(q), 0), np.int64)
        for start, block in store.chunks(CHUNK):
            if dim < store.dim:
                block = prefix_normalize(block, dim)
            s_all = q @ block.T  # [q, m]
            s, r = top_k(s_all, np.broadcast_to(np.arange(start, start + len(block)), s_all.shape), k)
            kept_s, kept_r = top_k(np.concatenate([kept_s, s], 1), np.concatenate([kept_r, r], 1), k)
        out_s.append(kept_s)
        out_r.append(kept_r)
    return np.concatenate(out_s), np.concatenate(out_r)
