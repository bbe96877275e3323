"""Cold start of ``Embedder(...).encode([text])`` in fresh processes, before/after the model hash check.

Each sample is a new Python process (interpreter start included) that imports mrl_infer, loads a
model and embeds one text; the figure is the wall time from spawn to the first vector. The
configurations run interleaved (round-robin), so machine load hits all of them alike:

- ``before``: a checkout given by ``--before`` (e.g. the commit before the hash check), on ``PYTHONPATH``;
- ``verified-cached``: this tree, the file already verified once (the usual case);
- ``verify-every-load``: this tree with an empty verification cache each time (a first load);
- ``verify-off``: this tree with ``MRL_INFER_VERIFY=0``.

    python benchmarks/cold_start.py --before /tmp/coldstart-before --runs 15
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNIPPET = (
    "from mrl_infer import Embedder\n"
    "e = Embedder({model!r}, dim=128, device='cpu')\n"
    "e.encode(['a first text to embed'])\n"
)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            info = f.read()
    except OSError:
        return platform.processor()
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    simd = sorted(f for f in flags if f.startswith(("avx2", "avx512f", "avx512_vnni", "avx_vnni")))
    return f"{name} ({os.cpu_count()} CPUs; {' '.join(simd)})"


def _sample(root: Path, model: str | None, env_extra: dict[str, str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **env_extra}
    code = SNIPPET.format(model=model)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="checkout without the hash check")
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default)")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cold_start.json")
    a = ap.parse_args(argv)

    cache = Path(tempfile.mkdtemp(prefix="mrl-verified-"))
    configs: dict[str, tuple[Path, dict[str, str]]] = {
        "before": (a.before, {}),
        "verified-cached": (REPO, {"MRL_INFER_CACHE_DIR": str(cache)}),
        "verify-every-load": (REPO, {}),
        "verify-off": (REPO, {"MRL_INFER_VERIFY": "0"}),
    }
    _sample(REPO, a.model, configs["verified-cached"][1])  # fills the verification cache; page cache warm
    _sample(a.before, a.model, {})
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(a.runs):
        for name, (root, env) in configs.items():
            if name == "verify-every-load":
                env = {"MRL_INFER_CACHE_DIR": tempfile.mkdtemp(prefix="mrl-empty-")}
            times[name].append(_sample(root, a.model, env))
    load = os.getloadavg()
    result = {
        "cpu": _cpu(),
        "loadavg_after": [round(x, 2) for x in load],
        "runs": a.runs,
        "model": a.model or "embedded default",
        "seconds": {
            name: {
                "median": round(statistics.median(t), 4),
                "min": round(min(t), 4),
                "max": round(max(t), 4),
            }
            for name, t in times.items()
        },
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
