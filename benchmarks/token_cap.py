"""A/B of mrl_infer's CPU token cap per batch: sentences/s and peak RSS for each cap, alternating runs.

    python -m benchmarks.token_cap [--caps 4096,2048,1024] [--rounds 2] [--texts 2000] [--batch-size 32]

Each run is a fresh process (so its VmHWM is its own): the exported MiniLM int8, one warm-up batch,
then 3 timed passes over the first N corpus texts; the median pass is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import corpus as corpus_mod
from benchmarks import models
from benchmarks.worker import _rss_mb

REPO = Path(__file__).resolve().parents[1]


def one(cap: int, texts: int, batch_size: int, ours: Path) -> dict:
    """One run in this process with ``_CPU_MAX_BATCH_TOKENS = cap``."""
    import mrl_infer._embedder as emb_mod

    emb_mod._CPU_MAX_BATCH_TOKENS = cap
    data = corpus_mod.load(None, texts)[0]
    emb = emb_mod.Embedder(ours, variant="int8", device="cpu")
    emb.encode(data[: 4 * batch_size], batch_size=batch_size)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        emb.encode(data, batch_size=batch_size)
        times.append(time.perf_counter() - t)
    return {
        "cap": cap,
        "sent_s": round(len(data) / float(np.median(times)), 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "load": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caps", default="4096,2048,1024")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ours", type=Path, default=models.DEFAULT_WORK)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    ours = models.ensure_ours(a.ours)
    if a.one is not None:
        print(json.dumps(one(a.one, a.texts, a.batch_size, ours)))
        return 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for _ in range(a.rounds):
        for cap in a.caps.split(","):
            cmd = [sys.executable, "-m", "benchmarks.token_cap", "--one", cap, "--texts", str(a.texts),
                   "--batch-size", str(a.batch_size), "--ours", str(ours)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
