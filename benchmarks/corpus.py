"""The benchmark corpus: the shared STS-B-derived file when present, else a deterministic generated one.

The shared corpus (``../shared/data/bench/corpus.txt``, 4,000 texts joined from STS-B sentences to
log-normal lengths of 5-120 words; see its README) is preferred. A fresh clone without it gets
:func:`generate`: the same length law (log-normal words, median 21, clipped to 5-120) over
``tests/data/corpus_sample.txt`` (400 STS-B-derived texts committed in this repo, same provenance),
so runs are reproducible anywhere. Speed depends on token counts, which the generator matches.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "bench" / "corpus.txt"
SAMPLE = REPO / "tests" / "data" / "corpus_sample.txt"


def generate(n: int = 4000, seed: int = 1234) -> list[str]:
    """``n`` texts of log-normal word counts (median 21, 5-120 words) drawn from the committed sample."""
    words = SAMPLE.read_text(encoding="utf-8").split()
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(mean=np.log(21), sigma=0.6, size=n)), 5, 120).astype(int)
    starts = rng.integers(0, len(words) - 121, size=n)
    return [" ".join(words[s : s + k]) for s, k in zip(starts, lengths, strict=True)]


def load(path: Path | None = None, n: int | None = None) -> tuple[list[str], str]:
    """Texts and a name saying where they came from; ``n`` keeps the first ``n`` (cycled if short)."""
    if path is None and SHARED.is_file():
        path = SHARED
    if path is not None:
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        name = str(path.name if path == SHARED else path)
        if path == SHARED:
            name = "shared/data/bench/corpus.txt (STS-B-derived)"
    else:
        texts, name = generate(max(n or 4000, 1)), "generated (benchmarks/corpus.py, seed 1234)"
    if n is not None:
        texts = [texts[i % len(texts)] for i in range(n)]
    return texts, name
