"""The machine's fp32 GEMM peak, measured with numpy's BLAS (the yardstick for effective GFLOP/s).

Run it with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset (``benchmarks.run`` does), so OpenBLAS picks the
kernel for the real CPU; the kernel actually used is reported via threadpoolctl.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np


def gemm_peak(sizes: tuple[int, ...] = (1024, 2048, 3072), repeats: int = 5) -> dict:
    """Best GFLOP/s of ``a @ b`` (fp32, n x n) over a few sizes, with the BLAS facts."""
    best: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        a @ b  # warm-up: thread pool, page faults
        t = min(_timed(a, b) for _ in range(repeats))
        best[str(n)] = round(2 * n**3 / t / 1e9, 1)
    try:
        from threadpoolctl import threadpool_info

        blas = [
            {k: d.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
    except ImportError:
        blas = []
    return {
        "gflop_s": max(best.values()),
        "by_size": best,
        "blas": blas,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS")},
    }


def _timed(a: np.ndarray, b: np.ndarray) -> float:
    t = time.perf_counter()
    a @ b
    return time.perf_counter() - t


if __name__ == "__main__":
    print(json.dumps(gemm_peak()))
