"""Real texts and their embeddings for the search benchmarks (recall is only ever measured on these).

The corpus is every distinct sentence in ``../shared/data``: SNLI dev/test pairs, triplets and raw
CSVs, the MultiNLI subset, STS-B train/dev/test, the bench corpus, and the CISI titles, queries and
documents; a multi-sentence text is also split into its sentences (~103k texts).
1,000 of them, drawn with a fixed seed, are held out as queries and are not
in the corpus. Embeddings (default model, full 384 dims, float32) are cached under ``.cache/search/``.

    python -m benchmarks.search_data          # embeds once (~2 min on 2 cores), then reuses the cache
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CACHE = REPO / ".cache" / "search"
N_QUERIES = 1000
SEED = 20261202
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _tsv_columns(path: Path, columns: tuple[int, ...]) -> list[str]:
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            parts = line.rstrip("\n").split("\t")
            out.extend(parts[c] for c in columns if c < len(parts))
    return out


def real_texts() -> list[str]:
    """Distinct real sentences from ../shared/data, in a fixed order."""
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the search benchmark needs the shared real data")
    found: list[str] = []
    nli = SHARED / "nli"
    found += _tsv_columns(nli / "snli_dev_test_pairs.tsv.gz", (0, 1))
    found += _tsv_columns(nli / "snli_dev_test_triplets.tsv.gz", (0, 1, 2))
    found += _tsv_columns(nli / "extra_mnli_tokenized" / "mnli_subset_pairs_tokenized.tsv.gz", (0, 1))
    for f in sorted(glob.glob(str(nli / "raw" / "*.csv.gz"))):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                found += row[1:3]
    for f in ("train.tsv", "dev.tsv", "test.tsv"):
        with open(SHARED / "stsb" / f, encoding="utf-8") as fh:
            header = next(fh).rstrip("\n").split("\t")
            cols = [header.index(c) for c in ("sentence1", "sentence2") if c in header]
            for line in fh:
                parts = line.rstrip("\n").split("\t")
                found += [parts[c] for c in cols if c < len(parts)]
    found += (SHARED / "bench" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    with open(SHARED / "retrieval" / "cisi" / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            found.append(doc["title"])
            found += _SENTENCE.split(" ".join(doc["text"].split()))
    with open(SHARED / "retrieval" / "cisi" / "queries.jsonl", encoding="utf-8") as fh:
        found += [" ".join(json.loads(line)["text"].split()) for line in fh]
    seen: dict[str, None] = {}
    for text in found:
        # a multi-sentence text counts once whole and once per sentence
        for t in [text, *_SENTENCE.split(text)]:
            t = t.strip()
            if len(t) >= 8 and t.lower() != "sentence1":
                seen.setdefault(t, None)
    return list(seen)


def load(refresh: bool = False) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """(corpus texts, corpus embeddings [N, 384], query texts, query embeddings [1000, 384])."""
    texts = real_texts()
    rng = np.random.default_rng(SEED)
    q_idx = np.sort(rng.choice(len(texts), N_QUERIES, replace=False))
    mask = np.ones(len(texts), bool)
    mask[q_idx] = False
    corpus = [t for t, keep in zip(texts, mask, strict=True) if keep]
    queries = [texts[i] for i in q_idx]
    path = CACHE / f"embeddings_{len(texts)}.npy"
    if refresh or not path.is_file():
        from mrl_infer import Embedder

        CACHE.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        emb = Embedder().encode(texts, batch_size=64, show_progress_bar=sys.stderr.isatty())
        print(f"embedded {len(texts)} texts in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        np.save(path, emb.astype(np.float32))
    allv = np.load(path)
    return corpus, allv[mask], queries, allv[q_idx]


if __name__ == "__main__":
    c, cv, q, qv = load()
    print(f"corpus {len(c)} texts {cv.shape}, queries {len(q)} {qv.shape}")
