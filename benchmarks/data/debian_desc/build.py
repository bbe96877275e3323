"""Build the Debian package-description retrieval set (synopsis -> long description) deterministically.

Why: an out-of-domain retrieval check (software descriptions, unlike STS-B, SNLI and MNLI) that no
training recipe reads. Never train on it.

Input: ``apt-cache dumpavail`` output (run here unless ``--packages FILE`` is given) for Debian
bookworm main amd64. Debian's Packages indexes carry only the synopsis (plus ``Description-md5``); the
long descriptions live in the ``Translation-en`` index, which is read too (``--translations FILE``, else
the file apt reports via ``apt-get indextargets``) and joined on (package, Description-md5), each
joined description checked against its md5. A stanza that already holds a long description uses it.
PROVENANCE.md gives the exact apt commands.

Steps: keep stanzas with a synopsis of >= 3 words and a long description of >= 25 words; keep one
package per source (the one named like the source, else the longest long description); drop long
descriptions and synopses that occur more than once (lowercased, whitespace collapsed); drop docs
whose long description contains the synopsis (case-insensitive); sample 5,000 docs and, from them,
1,000 queries with random.Random(seed). Ids are opaque (``d<N>``, ``q<N>``); rerunning this script on
the same input reproduces the id -> package mapping (``--mapping FILE`` writes it, not committed).

Run: python benchmarks/data/debian_desc/build.py [--packages DUMPAVAIL] [--translations TRANSLATION_EN]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import re
import statistics
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
_FIELD = re.compile(r"^([^\s:][^:]*):[ \t]?(.*)$")


@dataclass(frozen=True)
class Pkg:
    name: str
    source: str
    synopsis: str  # one line, whitespace collapsed
    long: str  # paragraphs joined by a space, whitespace collapsed


def collapse(text: str) -> str:
    """Whitespace (tabs, newlines, any Unicode space) collapsed to single spaces."""
    return " ".join(text.split())


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 stanzas as field -> raw value (continuation lines kept, with their leading space)."""
    out: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur, key = {}, ""
        elif line[0] in " \t":
            if key:
                cur[key] += "\n" + line
        else:
            m = _FIELD.match(line)
            if m:
                key = m.group(1)
                cur[key] = m.group(2)
    if cur:
        out.append(cur)
    return out


def split_description(raw: str) -> tuple[str, list[str]]:
    """(synopsis, raw continuation lines) of a Description field value."""
    first, *rest = raw.split("\n")
    return first.strip(), rest


def md5_ok(raw: str, md5: str) -> bool:
    """Whether ``raw`` (synopsis + continuation lines) is the description ``Description-md5`` names."""
    return hashlib.md5((raw + "\n").encode("utf-8")).hexdigest() == md5


def long_text(lines: list[str]) -> str:
    """Continuation lines -> one line: ``.`` paragraph separators dropped, paragraphs joined by a space."""
    return collapse(" ".join(ln for ln in (x.strip() for x in lines) if ln != "."))


def read_packages(path: Path | None) -> str:
    if path is not None:
        return path.read_text(encoding="utf-8", errors="replace")
    return subprocess.run(
        ["apt-cache", "dumpavail"], check=True, capture_output=True, text=True, errors="replace"
    ).stdout


def default_translations() -> Path | None:
    res = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(FILENAME)", "Created-By: Translations", "Language: en"],
        capture_output=True,
        text=True,
    )
    files = [Path(p) for p in res.stdout.split() if Path(p).exists()]
    return files[0] if len(files) == 1 else None


def read_translations(path: Path | None) -> dict[tuple[str, str], str]:
    """(package, Description-md5) -> raw Description-en value."""
    if path is None:
        return {}
    if path.suffix in (".gz", ".xz", ".lz4", ".bz2", ".zst"):
        text = subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", str(path)], check=True, capture_output=True
        ).stdout.decode("utf-8", errors="replace")
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
    out = {}
    for st in parse_stanzas(text):
        if "Package" in st and "Description-md5" in st and "Description-en" in st:
            out[(st["Package"].strip(), st["Description-md5"].strip())] = st["Description-en"]
    return out


def packages(stanzas: list[dict[str, str]], trans: dict[tuple[str, str], str], stats: dict) -> list[Pkg]:
    """Each stanza with a description as a Pkg (long description from the stanza or Translation-en)."""
    out = []
    for st in stanzas:
        if "Package" not in st or "Description" not in st:
            continue
        name = st["Package"].strip()
        synopsis, lines = split_description(st["Description"])
        if not lines:
            md5 = st.get("Description-md5", "").strip()
            raw = trans.get((name, md5))
            if raw is None:
                stats["no_long_description"] += 1
                continue
            if not md5_ok(raw, md5):
                stats["translation_md5_mismatch"] += 1
                continue
            synopsis, lines = split_description(raw)
        source = st.get("Source", name).split("(")[0].strip() or name
        out.append(Pkg(name, source, collapse(synopsis), long_text(lines)))
    return out


def select(pkgs: list[Pkg], stats: dict) -> list[Pkg]:
    """Steps 1-3: length filters, one package per source, no duplicates, no synopsis inside its doc."""
    pool = [p for p in pkgs if len(p.long.split()) >= 25 and len(p.synopsis.split()) >= 3]
    stats["after_length_filter"] = len(pool)

    by_source: dict[str, list[Pkg]] = {}
    for p in pool:
        by_source.setdefault(p.source, []).append(p)
    pool = [
        # max() keeps the first of equals: ties go to the alphabetically first package name.
        max(sorted(group, key=lambda p: p.name), key=lambda p: (p.name == p.source, len(p.long)))
        for _, group in sorted(by_source.items())
    ]
    stats["after_one_per_source"] = len(pool)

    def norm(t: str) -> str:
        return collapse(t.lower())

    n_long = Counter(norm(p.long) for p in pool)
    pool = [p for p in pool if n_long[norm(p.long)] == 1]
    stats["after_unique_long"] = len(pool)
    n_syn = Counter(norm(p.synopsis) for p in pool)
    pool = [p for p in pool if n_syn[norm(p.synopsis)] == 1]
    stats["after_unique_synopsis"] = len(pool)

    pool = [p for p in pool if norm(p.synopsis) not in norm(p.long)]
    stats["after_synopsis_not_in_doc"] = len(pool)
    return sorted(pool, key=lambda p: p.name)


def write(path: Path, header: str, rows: list[str]) -> None:
    # mtime=0 (and no file name in the header) keeps the gzip bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("\n".join([header, *rows]) + "\n").encode("utf-8"))


def percentile(xs: list[int], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def build(
    packages_file: Path | None,
    translations_file: Path | None,
    out: Path,
    n_docs: int,
    n_queries: int,
    seed: int,
    mapping: Path | None = None,
) -> dict:
    stats: dict = Counter()
    stanzas = parse_stanzas(read_packages(packages_file))
    stats["stanzas"] = len(stanzas)
    trans = read_translations(translations_file)
    stats["translation_entries"] = len(trans)
    pkgs = packages(stanzas, trans, stats)
    stats["with_long_description"] = len(pkgs)
    if stats["no_long_description"] > len(stanzas) // 2:
        raise SystemExit(
            f"{stats['no_long_description']} of {len(stanzas)} stanzas have no long description: "
            "give --translations (Debian's Translation-en index); see PROVENANCE.md"
        )
    pool = select(pkgs, stats)
    if len(pool) < n_docs:
        raise SystemExit(f"only {len(pool)} candidate docs, need {n_docs}")

    rng = random.Random(seed)
    docs = rng.sample(pool, n_docs)  # d<i> = docs[i]: sample order, unrelated to names
    query_docs = rng.sample(range(n_docs), n_queries)  # q<j> -> d<query_docs[j]>

    out.mkdir(parents=True, exist_ok=True)
    write(out / "corpus.tsv.gz", "doc_id\ttext", [f"d{i}\t{p.long}" for i, p in enumerate(docs)])
    write(
        out / "queries.tsv.gz",
        "query_id\ttext",
        [f"q{j}\t{docs[i].synopsis}" for j, i in enumerate(query_docs)],
    )
    write(
        out / "qrels.tsv.gz", "query_id\tdoc_id\tscore", [f"q{j}\td{i}\t1" for j, i in enumerate(query_docs)]
    )
    if mapping is not None:
        mapping.write_text(
            "".join(f"d{i}\t{p.name}\t{p.source}\n" for i, p in enumerate(docs))
            + "".join(f"q{j}\t{docs[i].name}\n" for j, i in enumerate(query_docs)),
            encoding="utf-8",
        )

    lens = [len(p.long.split()) for p in docs]
    qlens = [len(docs[i].synopsis.split()) for i in query_docs]
    stats.update(
        docs=n_docs,
        queries=n_queries,
        doc_words_min=min(lens),
        doc_words_median=statistics.median(lens),
        doc_words_mean=round(statistics.fmean(lens), 1),
        doc_words_p90=percentile(lens, 0.9),
        doc_words_max=max(lens),
        query_words_median=statistics.median(qlens),
        query_words_max=max(qlens),
    )
    return dict(stats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packages", type=Path, help="apt-cache dumpavail output (default: run it)")
    ap.add_argument(
        "--translations", type=Path, help="Translation-en index (default: the one apt-get indextargets names)"
    )
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mapping", type=Path, help="also write id -> package (keep it out of the repo)")
    args = ap.parse_args()
    trans = args.translations if args.translations is not None else default_translations()
    stats = build(args.packages, trans, args.out, args.docs, args.queries, args.seed, args.mapping)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
