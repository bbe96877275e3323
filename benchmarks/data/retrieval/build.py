"""Build the MNLI-val retrieval set (premise -> entailed hypothesis) deterministically.

Why: a small "general text" retrieval check, in genres unlike STS-B/SNLI, that the
default model's recipe never trains on, so fine-tuning cannot buy it with overfitting.
Run: python benchmarks/data/retrieval/build.py [--src PATH_TO_mnli_subset_pairs_tokenized.tsv.gz]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parents[3] / "shared/data/nli/extra_mnli_tokenized/mnli_subset_pairs_tokenized.tsv.gz"


def build(src: Path, out: Path) -> tuple[int, int, int]:
    """Write queries/corpus/qrels .tsv.gz: queries are premises, corpus all hypotheses of mnli_val."""
    with gzip.open(src, "rt", encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    val = [r for r in rows if r[4] == "mnli_val.tsv"]
    corpus: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: list[tuple[str, str]] = []
    for _s1, s2, _label, _genre, _src in val:
        if s2 not in corpus:
            corpus[s2] = f"d{len(corpus)}"
    for s1, s2, label, _genre, _src in val:
        if label != "entailment":
            continue
        if s1 not in queries:
            queries[s1] = f"q{len(queries)}"
        pair = (queries[s1], corpus[s2])
        if pair not in qrels:
            qrels.append(pair)
    out.mkdir(parents=True, exist_ok=True)

    def write(name: str, lines: list[str]) -> None:
        # mtime=0 keeps the gzip bytes reproducible.
        with open(out / name, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(("\n".join(lines) + "\n").encode("utf-8"))

    write("queries.tsv.gz", ["id\ttext"] + [f"{i}\t{t}" for t, i in queries.items()])
    write("corpus.tsv.gz", ["id\ttext"] + [f"{i}\t{t}" for t, i in corpus.items()])
    write("qrels.tsv.gz", ["query_id\tdoc_id"] + [f"{q}\t{d}" for q, d in qrels])
    return len(queries), len(corpus), len(qrels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    nq, nd, nr = build(args.src, args.out)
    print(f"queries {nq}, corpus {nd}, qrels {nr} -> {args.out}")


if __name__ == "__main__":
    main()
