"""The README's "memory does not grow with the input": peak RSS of a job on a large input stays
that of the same job on a small one (the tiny NaN model keeps the model's own cost negligible)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_JOB = """
import json, resource, sys
from mrl_infer.jobs._job import JobOptions, run_job
src, out, model = sys.argv[1:4]
s = run_job(JobOptions(inputs=[src], output=out, model=model, workers=1, threads=1, chunk_size=256,
                       checkpoint_seconds=5, progress=False))
print(json.dumps({"rows": s.rows, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def _peak(src: Path, out: Path, model: Path) -> dict[str, int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", _JOB, str(src), str(out), str(model)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _write(path: Path, rows: int) -> Path:
    # One 150-character word per line: many bytes, cheap to tokenize (one [UNK] token).
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(rows):
            fh.write(f"{i % 10}" * 150 + f" {i}\n")
    return path


def test_peak_memory_does_not_grow_with_the_input(tmp_path: Path, nan_model_dir: Path) -> None:
    fmt = "npy"
    small = _write(tmp_path / "small.txt", 10_000)  # 1.5 MB
    big = _write(tmp_path / "big.txt", 250_000)  # 39 MB: 25 times more, and ~4x the growth bound below
    a = _peak(small, tmp_path / f"small.{fmt}", nan_model_dir)
    b = _peak(big, tmp_path / f"big.{fmt}", nan_model_dir)
    assert (a["rows"], b["rows"]) == (10_000, 250_000)
    growth_mib = (b["peak_kib"] - a["peak_kib"]) / 1024
    big_mib = big.stat().st_size / (1 << 20)
    # An eager reader (or a writer that buffers) would hold the whole input: > big_mib of growth.
    print(f"peak RSS {a['peak_kib'] / 1024:.0f} MiB -> {b['peak_kib'] / 1024:.0f} MiB")
    assert growth_mib < 10, f"peak RSS grew {growth_mib:.1f} MiB for a {big_mib:.0f} MiB larger input"
