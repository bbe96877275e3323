"""Cold start in fresh processes: the first embedding of the default model, and ``mrl-embed --help``.

Each sample is a new Python process (interpreter start included). Two figures per configuration:

- **first vector**: from the parent spawning the process to the child holding the first vector of
  ``Embedder().encode(["hello"])`` (the child reports the wall-clock time once it has it); the child
  also reports its own phases (``import mrl_infer``, ``Embedder()``, first ``encode``), and the
  parent the time until the process has exited (interpreter and ONNX Runtime teardown included);
- **help**: the ``mrl-embed --help`` console script, spawn to exit.

The configurations run interleaved (round-robin), so machine load hits all of them alike:

- ``before``: a checkout given by ``--before`` (e.g. ``git archive <commit> mrl_infer | tar -x -C DIR``),
  on ``PYTHONPATH``;
- ``verified-cached``: this tree, the file already verified once (the usual load);
- ``verify-every-load``: this tree with an empty verification cache each time (a first load);
- ``verify-off``: this tree with ``MRL_INFER_VERIFY=0``.

Byte code: an installed wheel ships compiled ``.pyc`` files, so by default every configuration runs
with byte code cached in a private ``PYTHONPYCACHEPREFIX`` (written by the warm-up runs;
``PYTHONDONTWRITEBYTECODE`` is cleared for the children). ``--no-bytecode`` keeps the environment as
it is (with ``PYTHONDONTWRITEBYTECODE=1`` every mrl_infer module is compiled on every start).

    flock /tmp/mrl-cpu.lock python benchmarks/cold_start.py --before /tmp/coldstart-before --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The child prints its phases and the wall-clock time at which it holds the first vector.
SNIPPET = (
    "import time\n"
    "t0 = time.perf_counter()\n"
    "from mrl_infer import Embedder\n"
    "t1 = time.perf_counter()\n"
    "e = Embedder({model_arg})\n"
    "t2 = time.perf_counter()\n"
    "v = e.encode(['hello'])\n"
    "t3 = time.perf_counter()\n"
    "wall = time.time()\n"
    "import json, sys\n"
    "assert v.shape[0] == 1\n"
    "print(json.dumps({{'wall': wall, 'import': t1 - t0, 'init': t2 - t1, 'encode': t3 - t2}}))\n"
)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def machine() -> dict[str, Any]:
    """CPU model, ISA flags, core count and the versions that shape a cold start."""
    name, flags = platform.processor() or "?", []
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        name = next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), name
        )
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    except OSError:
        pass
    out: dict[str, Any] = {
        "cpu": name,
        "cpus": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "python": platform.python_version(),
    }
    for mod in ("onnxruntime", "numpy", "tokenizers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:  # pragma: no cover
            out[mod] = None
    return out


def _env(root: Path, extra: dict[str, str], pycache: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", **extra}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def first_vector(
    root: Path, model: str | None, extra: dict[str, str], pycache: Path | None
) -> dict[str, float]:
    """One fresh process: spawn -> first vector, its phases, and spawn -> exit (seconds)."""
    code = SNIPPET.format(model_arg="" if model is None else repr(model))
    env = _env(root, extra, pycache)
    spawned = time.time()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
    )
    exited = time.perf_counter() - start
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "first_vector": child["wall"] - spawned,
        "exit": exited,
        "import": child["import"],
        "init": child["init"],
        "encode": child["encode"],
    }


def help_command() -> list[str]:
    """``mrl-embed --help`` as the console script runs it (the venv's script, else its two lines)."""
    script = Path(sys.executable).with_name("mrl-embed")
    if script.is_file():
        return [sys.executable, str(script), "--help"]
    found = shutil.which("mrl-embed")
    if found:
        return [sys.executable, found, "--help"]
    return [sys.executable, "-c", "import sys\nfrom mrl_infer.cli import main\nsys.exit(main())", "--help"]


def help_time(root: Path, pycache: Path | None) -> float:
    env = _env(root, {}, pycache)
    start = time.perf_counter()
    subprocess.run(help_command(), env=env, check=True, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="a checkout to compare with (its mrl_infer/ on PYTHONPATH)")
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default)")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per configuration (default 5)")
    ap.add_argument(
        "--no-bytecode", action="store_true", help="keep the environment's byte-code setting (see above)"
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cold_start.json")
    a = ap.parse_args(argv)

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="mrl-coldstart-"))
    pycache = None if a.no_bytecode else work / "pycache"
    cache = work / "verified"
    configs: dict[str, tuple[Path, dict[str, str]]] = {}
    if a.before is not None:
        configs["before"] = (a.before, {"MRL_INFER_CACHE_DIR": str(work / "verified-before")})
    configs["verified-cached"] = (REPO, {"MRL_INFER_CACHE_DIR": str(cache)})
    configs["verify-every-load"] = (REPO, {})
    configs["verify-off"] = (REPO, {"MRL_INFER_VERIFY": "0"})
    help_roots = {"before": a.before} if a.before is not None else {}
    help_roots["this tree"] = REPO

    # Warm-up: page cache, byte code, and the verification caches of the cached configurations.
    for name, (root, env) in configs.items():
        if name != "verify-every-load":
            first_vector(root, a.model, env, pycache)
    for root in help_roots.values():
        help_time(root, pycache)

    samples: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    helps: dict[str, list[float]] = {name: [] for name in help_roots}
    for _ in range(a.runs):
        for name, (root, env) in configs.items():
            if name == "verify-every-load":
                env = {"MRL_INFER_CACHE_DIR": tempfile.mkdtemp(prefix="empty-", dir=work)}
            samples[name].append(first_vector(root, a.model, env, pycache))
        for name, root in help_roots.items():
            helps[name].append(help_time(root, pycache))
    load_after = os.getloadavg()
    shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {
        "machine": machine(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "runs": a.runs,
        "model": a.model or "embedded default",
        "snippet": "Embedder().encode(['hello'])"
        if a.model is None
        else f"Embedder({a.model!r}).encode(['hello'])",
        "bytecode": "environment" if a.no_bytecode else "cached (.pyc, as an installed wheel)",
        "before": str(a.before) if a.before is not None else None,
        "seconds": {
            name: {key: _summary([s[key] for s in runs]) for key in runs[0]} for name, runs in samples.items()
        },
        "help_seconds": {name: _summary(t) for name, t in helps.items()},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
