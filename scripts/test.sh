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
python -m pip install -q -e ".[export,dev,files,ray,bench]"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
all=0
if [ "${1:-}" = "--all" ]; then all=1; shift; fi
ruff check mrl_infer export tests benchmarks
python -m pytest -m "not slow and not cuda" "$@"
if [ "$all" = 1 ]; then
    # cuda tests run here too: they skip only where no GPU is present.
    set +e
    python -m pytest -m "slow or cuda" "$@"
    rc=$?
    set -e
    # exit 5 = nothing collected; fail loudly instead of passing silently
    if [ $rc -ne 0 ]; then exit $rc; fi
fi
