"""Quality of an embedding model at each Matryoshka dim: STS-B Spearman and retrieval nDCG@10/recall@100.

Pure numpy (no torch, no scipy) so ``mrl-embed eval`` and ``benchmarks/quality.py`` run on the
runtime's own dependencies. The metrics are the standard ones (Spearman with average ranks for
ties; binary-relevance nDCG@k; recall@k), tested against scipy/hand-computed references.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EncodeFn = Callable[[list[str]], np.ndarray]
"""Maps texts to full-dim embeddings ``[n, d]`` (unnormalized is fine; truncation renormalizes)."""

logger = logging.getLogger("mrl_infer.eval")

_REPO = Path(__file__).resolve().parents[1]
PACKAGED_DATA_DIR = Path(__file__).resolve().parent / "eval_data"
"""Shipped with the package (see its PROVENANCE.md): the official STS-B test split and the MNLI-val set."""
PACKAGED_STS = {"test": PACKAGED_DATA_DIR / "stsb" / "sts-test.csv.gz"}
DEFAULT_DATA_DIR = _REPO.parent / "shared" / "data"
"""Other splits (dev, train): ``../shared/data`` in a checkout, or ``data_dir`` / ``$MRL_QUALITY_DATA``."""
DEFAULT_RETRIEVAL_DIR = PACKAGED_DATA_DIR / "retrieval"
"""The MNLI-val retrieval set, a packaged copy of ``benchmarks/data/retrieval`` (see its PROVENANCE.md)."""
STS_SOURCE_HINT = (
    "the STS Benchmark (official release: http://ixa2.si.ehu.eus/stswiki, stsbenchmark.tar.gz; "
    "sts-<split>.csv, or a sentence1<TAB>sentence2<TAB>score TSV)"
)


# --------------------------------------------------------------------------- metrics


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Boundaries of runs of equal values.
    new = np.concatenate(([True], xs[1:] != xs[:-1]))
    run_id = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.concatenate((starts[1:], [len(xs)]))
    avg = (starts + ends + 1) / 2.0  # mean of 1-based positions start+1..end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of the average ranks."""
    rx, ry = rankdata(np.asarray(x)), rankdata(np.asarray(y))
    if len(rx) != len(ry):
        raise ValueError("spearman: x and y differ in length")
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def truncate(emb: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` components, L2-renormalized (how a Matryoshka embedding is used)."""
    e = np.asarray(emb, dtype=np.float32)[:, :dim]
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return e / np.maximum(n, 1e-12)


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def ndcg_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = 10) -> float:
    """Mean binary-relevance nDCG@k over queries (gain 1/log2(rank+1), ideal = all relevant first)."""
    scores = []
    for docs, rel in zip(ranked, relevant, strict=True):
        if not rel:
            continue
        dcg = sum(1.0 / math.log2(i + 2) for i, d in enumerate(docs[:k]) if d in rel)
        idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
        scores.append(dcg / idcg)
    return float(np.mean(scores)) if scores else float("nan")


def recall_at_k(ranked: Sequence[Sequence[str]], relevant: Sequence[set[str]], k: int = 100) -> float:
    """Mean over queries of the fraction of relevant documents found in the top k."""
    scores = [
        len(rel.intersection(docs[:k])) / len(rel) for docs, rel in zip(ranked, relevant, strict=True) if rel
    ]
    return float(np.mean(scores)) if scores else float("nan")


def top_k(queries: np.ndarray, docs: np.ndarray, k: int, chunk: int = 512) -> np.ndarray:
    """Indices of the k most cosine-similar docs per query, best first (inputs L2-normalized)."""
    k = min(k, docs.shape[0])
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for s in range(0, queries.shape[0], chunk):
        sims = queries[s : s + chunk] @ docs.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        out[s : s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


# --------------------------------------------------------------------------- data


@dataclass
class StsData:
    """Sentence pairs with gold similarity scores (0-5)."""

    s1: list[str]
    s2: list[str]
    scores: np.ndarray


@dataclass
class RetrievalData:
    """Queries, a corpus, and binary relevance judgements."""

    query_ids: list[str]
    queries: list[str]
    doc_ids: list[str]
    docs: list[str]
    qrels: dict[str, set[str]]


def load_sts(path: str | os.PathLike[str]) -> StsData:
    """Read STS-B pairs (``.gz`` allowed; tab-separated, **no quoting**: quotes are part of the text).

    Two layouts: a TSV with a header naming ``sentence1``, ``sentence2`` and ``score``; or the official
    release's ``sts-<split>.csv`` (no header: genre, file, year, id, score, sentence1, sentence2, optional
    license fields).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="\n") as f:  # type: ignore[operator]
        lines = [line.rstrip("\n").removesuffix("\r") for line in f]
    header = lines[0].split("\t") if lines else []
    if "sentence1" in header or "score" in header:
        cols = {name: i for i, name in enumerate(header)}
        i1, i2, isc = cols.get("sentence1", 0), cols.get("sentence2", 1), cols.get("score", 2)
        body = lines[1:]
    else:  # the official headerless layout
        i1, i2, isc = 5, 6, 4
        body = lines
    s1, s2, sc = [], [], []
    for line in body:
        parts = line.split("\t")
        if len(parts) <= max(i1, i2, isc):
            continue
        s1.append(parts[i1])
        s2.append(parts[i2])
        sc.append(float(parts[isc]))
    return StsData(s1, s2, np.asarray(sc, dtype=np.float64))


def _read_tsv(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        return [line.rstrip("\n").split("\t") for line in f][1:]


def _find(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.tsv.gz", f"{stem}.tsv"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"{directory}: no {stem}.tsv(.gz)")


def has_retrieval(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a retrieval set in either layout :func:`load_retrieval` reads."""
    d = Path(directory)
    return any((d / n).exists() for n in ("qrels.tsv.gz", "qrels.tsv", "qrels/test.tsv"))


def _load_beir(d: Path) -> RetrievalData:
    """BEIR layout: ``corpus.jsonl`` (title + text, joined by a space as BEIR does), ``queries.jsonl``,
    ``qrels/test.tsv``; only queries with a positive judgment are kept, as BEIR evaluates."""
    import json

    qrels: dict[str, set[str]] = {}
    for qid, did, score, *_ in _read_tsv(d / "qrels" / "test.tsv"):
        if float(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    docs = [
        json.loads(line) for line in (d / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]
    queries = [
        json.loads(line) for line in (d / "queries.jsonl").read_text(encoding="utf-8").splitlines() if line
    ]
    queries = [q for q in queries if q["_id"] in qrels]
    doc_text = [" ".join(t for t in (x.get("title") or "", x.get("text") or "") if t).strip() for x in docs]
    return RetrievalData(
        [q["_id"] for q in queries], [q["text"] for q in queries], [x["_id"] for x in docs], doc_text, qrels
    )


def load_retrieval(directory: str | os.PathLike[str]) -> RetrievalData:
    """Read ``queries``/``corpus``/``qrels`` ``.tsv(.gz)`` (headers; id<TAB>text, query_id<TAB>doc_id),
    or a BEIR directory (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``)."""
    d = Path(directory)
    if (d / "corpus.jsonl").exists():
        return _load_beir(d)
    q = _read_tsv(_find(d, "queries"))
    c = _read_tsv(_find(d, "corpus"))
    qrels: dict[str, set[str]] = {}
    for qid, did, *_ in _read_tsv(_find(d, "qrels")):
        qrels.setdefault(qid, set()).add(did)
    return RetrievalData([r[0] for r in q], [r[1] for r in q], [r[0] for r in c], [r[1] for r in c], qrels)


# --------------------------------------------------------------------------- evaluation


def sts_spearman_by_dim(encode: EncodeFn, data: StsData, dims: Iterable[int]) -> dict[int, float]:
    """Spearman(cosine, gold) x100 at each truncation dim; encodes each unique sentence once."""
    uniq = list(dict.fromkeys(data.s1 + data.s2))
    index = {t: i for i, t in enumerate(uniq)}
    emb = np.asarray(encode(uniq), dtype=np.float32)
    i1 = np.array([index[t] for t in data.s1])
    i2 = np.array([index[t] for t in data.s2])
    out = {}
    for dim in dims:
        e = truncate(emb, dim)
        out[dim] = 100.0 * spearman(cosine_pairs(e[i1], e[i2]), data.scores)
    return out


def retrieval_by_dim(
    encode: EncodeFn, data: RetrievalData, dims: Iterable[int], k_ndcg: int = 10, k_recall: int = 100
) -> dict[int, dict[str, float]]:
    """nDCG@10 and recall@100 (x100) at each truncation dim (exact cosine search)."""
    qe = np.asarray(encode(data.queries), dtype=np.float32)
    de = np.asarray(encode(data.docs), dtype=np.float32)
    rel = [data.qrels.get(q, set()) for q in data.query_ids]
    out = {}
    for dim in dims:
        idx = top_k(truncate(qe, dim), truncate(de, dim), max(k_ndcg, k_recall))
        ranked = [[data.doc_ids[j] for j in row] for row in idx]
        out[dim] = {
            f"ndcg@{k_ndcg}": 100.0 * ndcg_at_k(ranked, rel, k_ndcg),
            f"recall@{k_recall}": 100.0 * recall_at_k(ranked, rel, k_recall),
        }
    return out


def evaluate_encoder(
    encode: EncodeFn,
    dims: Sequence[int],
    *,
    sts: StsData | None,
    retrieval: RetrievalData | None,
    model: str = "",
    variant: str = "",
    extra_retrieval: dict[str, RetrievalData] | None = None,
) -> list[dict[str, Any]]:
    """One row per dim for an arbitrary encode function (used by the trainer and by ``evaluate``).

    ``extra_retrieval`` (name -> set, e.g. out-of-domain sets) adds ``<name>:ndcg@10`` and
    ``<name>:recall@100`` to each row.
    """
    sts_scores = sts_spearman_by_dim(encode, sts, dims) if sts is not None else {}
    ret = retrieval_by_dim(encode, retrieval, dims) if retrieval is not None else {}
    extra = {name: retrieval_by_dim(encode, d, dims) for name, d in (extra_retrieval or {}).items()}
    rows = []
    for dim in dims:
        r = ret.get(dim, {})
        row: dict[str, Any] = {
            "model": model,
            "variant": variant,
            "dim": int(dim),
            "stsb_spearman": sts_scores.get(dim),
            "ndcg@10": r.get("ndcg@10"),
            "recall@100": r.get("recall@100"),
        }
        for name, by_dim in extra.items():
            for key, value in by_dim[dim].items():
                row[f"{name}:{key}"] = value
        rows.append(row)
    return rows


def _resolve_sts(data_dir: str | os.PathLike[str] | None, split: str) -> Path | None:
    """STS-B ``split`` from ``data_dir`` (or ``$MRL_QUALITY_DATA``) when given, else the packaged copy
    (test) or a checkout's ``../shared/data``."""
    explicit = data_dir or os.environ.get("MRL_QUALITY_DATA")
    bases = [Path(explicit)] if explicit else [DEFAULT_DATA_DIR]
    for base in bases:
        for name in (f"stsb/{split}.tsv", f"{split}.tsv", f"stsb/sts-{split}.csv", f"sts-{split}.csv"):
            for cand in (base / name, base / f"{name}.gz"):
                if cand.exists():
                    return cand
    if not explicit and split in PACKAGED_STS and PACKAGED_STS[split].exists():
        return PACKAGED_STS[split]
    return None


def evaluate(
    model: str,
    *,
    dims: Sequence[int] | None = None,
    variants: Sequence[str] = ("fp32", "int8"),
    data_dir: str | os.PathLike[str] | None = None,
    retrieval_dir: str | os.PathLike[str] | None = None,
    split: str = "test",
    batch_size: int = 64,
    threads: int | None = None,
    extra_retrieval: dict[str, str | os.PathLike[str]] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a model directory (or hub id) with mrl_infer at each dim and variant.

    Rows: model, variant, dim, stsb_spearman, ndcg@10, recall@100 (scores x100; None where the
    data set was not found). STS-B is read from ``data_dir`` (``<data_dir>/stsb/<split>.tsv`` or
    ``<data_dir>/<split>.tsv``, or the official ``sts-<split>.csv``; ``.gz`` allowed) or
    ``$MRL_QUALITY_DATA``; without either, the packaged test split (``mrl_infer/eval_data``). The retrieval
    set comes from ``retrieval_dir`` (default: the packaged MNLI-val set). A missing data set and a
    variant the model does not ship are each logged as a warning on ``mrl_infer.eval``; if none of
    ``variants`` exists, :class:`~mrl_infer.errors.ModelFormatError`. ``extra_retrieval`` (name ->
    directory, either layout of :func:`load_retrieval`) adds ``<name>:ndcg@10`` / ``<name>:recall@100``
    columns; a missing one is an error, since the caller asked for it by name.
    """
    from mrl_infer import Embedder  # late import: keeps this module importable without the runtime
    from mrl_infer.errors import ModelFormatError

    sts_path = _resolve_sts(data_dir, split)
    sts = load_sts(sts_path) if sts_path else None
    where = data_dir or os.environ.get("MRL_QUALITY_DATA") or DEFAULT_DATA_DIR
    rdir = Path(retrieval_dir) if retrieval_dir else DEFAULT_RETRIEVAL_DIR
    retrieval = load_retrieval(rdir) if has_retrieval(rdir) else None
    extra: dict[str, RetrievalData] = {}
    for name, path in (extra_retrieval or {}).items():
        if not has_retrieval(path):
            raise FileNotFoundError(f"retrieval set {name!r}: no qrels.tsv[.gz] or qrels/test.tsv in {path}")
        extra[name] = load_retrieval(path)
    if sts is None and retrieval is None:
        raise FileNotFoundError(
            f"no evaluation data: no STS-B {split} split under {where} and no retrieval set "
            f"(queries/corpus/qrels.tsv[.gz]) in {rdir}. STS-B is {STS_SOURCE_HINT}; pass --data DIR "
            "(data_dir=) and retrieval_dir="
        )
    if sts is None:
        logger.warning(
            "note: STS-B columns are empty: no STS-B %s split under %s (looked for stsb/%s.tsv, %s.tsv, "
            "sts-%s.csv). Get %s and pass --data DIR",
            split,
            where,
            split,
            split,
            split,
            STS_SOURCE_HINT,
        )
    if retrieval is None:
        logger.warning("note: retrieval columns are empty: no queries/corpus/qrels.tsv[.gz] in %s", rdir)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for variant in variants:
        try:
            emb = Embedder(model, variant=variant, threads=threads, allow_any_dim=True)
        except ModelFormatError as exc:  # a variant this model does not ship
            if "variant" in str(exc):
                logger.warning("note: variant %s skipped: the model does not ship it (%s)", variant, exc)
                skipped.append(variant)
                continue
            raise
        use_dims = list(dims) if dims else list(emb.dims)

        def encode(texts: list[str], _emb: Any = emb) -> np.ndarray:
            return _emb.encode(
                texts, batch_size=batch_size, normalize_embeddings=False, show_progress_bar=False
            )

        rows += evaluate_encoder(
            encode,
            use_dims,
            sts=sts,
            retrieval=retrieval,
            model=str(model),
            variant=variant,
            extra_retrieval=extra,
        )
    if not rows and skipped:
        raise ModelFormatError(f"{model}: none of the variants {list(variants)} exists in this model")
    return rows


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of evaluation rows, with each dim's STS-B score as % of that model's full dim."""
    full: dict[tuple[str, str], float] = {}
    for r in rows:
        key = (r["model"], r["variant"])
        if r.get("stsb_spearman") is not None and r["dim"] == max(
            x["dim"] for x in rows if (x["model"], x["variant"]) == key
        ):
            full[key] = r["stsb_spearman"]
    extra = list(dict.fromkeys(k for r in rows for k in r if k.endswith(":ndcg@10")))
    lines = [
        "| model | variant | dim | STS-B Spearman | % of full dim | nDCG@10 | recall@100 |"
        + "".join(f" {k.split(':')[0]} nDCG@10 |" for k in extra),
        "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(extra),
    ]
    for r in rows:
        f = full.get((r["model"], r["variant"]))
        s = r.get("stsb_spearman")
        pct = f"{100.0 * s / f:.1f}%" if s is not None and f else "–"
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['dim']} | {_fmt(s)} | {pct} | "
            f"{_fmt(r.get('ndcg@10'))} | {_fmt(r.get('recall@100'))} |"
            + "".join(f" {_fmt(r.get(k))} |" for k in extra)
        )
    return "\n".join(lines)
