#!/usr/bin/env bash
# Run the test suite on a fresh machine: creates .venv (if absent), installs the package with the
# extras the tests need (torch 2.13.0 CPU comes from local disk), then runs pytest.
#   bash scripts/test.sh            default suite (< 15 min on 2 cores)
#   bash scripts/test.sh --all      default suite, then the suites marked slow (what CI runs)
#   bash scripts/test.sh -k parity  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[export,dev,files,ray,bench,server]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Where a GPU is present, onnxruntime-gpu (the [cuda] pin) replaces onnxruntime, and the CUDA tests
# must then pass: MRL_INFER_EXPECT_CUDA=1 turns a CUDA provider that does not attach into a failure.
# Both packages own the onnxruntime module, so both are removed and the GPU one installed alone
# (--no-deps: the runtime's own onnxruntime dependency would otherwise come back over it).
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    ortgpu=$(python -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb"))
print(next(r for r in d["project"]["optional-dependencies"]["cuda"] if r.startswith("onnxruntime-gpu")))')
    python -m pip uninstall -q -y onnxruntime onnxruntime-gpu
    python -m pip install -q --no-deps "$ortgpu"
    export MRL_INFER_EXPECT_CUDA=1
fi
# The demo page's browser tests drive Debian's Chromium (a browser that a test tool downloads itself
# does not install here). Installed when missing and apt-get can run (CI runs as root); elsewhere
# tests/test_demo.py skips its browser tests, except under CI, where it fails instead.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get install -y -q chromium chromium-driver >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }
    fi
fi
all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi
ruff check mrl_infer export tests benchmarks
python -m pytest -m "not slow and not cuda" "$@"
if [ "$all" = 1 ]; then
    # cuda tests run here too: they skip only where no GPU is present (see MRL_INFER_EXPECT_CUDA above).
    set +e
    python -m pytest -m "slow or cuda" "$@"
    rc=$?
    set -e
    # exit 5 = nothing collected; fail loudly instead of passing silently
    if [ $rc -ne 0 ]; then exit $rc; fi
fi
