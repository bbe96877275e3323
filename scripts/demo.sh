#!/usr/bin/env bash
# Fresh machine, one command: set up a runtime-only environment (no torch) and run the main job,
# embedding a text file with the embedded default model, at 128 dims, into Parquet.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-run/bin/python ]; then
    "$PY" -m venv .venv-run
fi
. .venv-run/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[files]"
export HF_HUB_OFFLINE=1
mkdir -p out
mrl-embed info
mrl-embed embed tests/data/corpus_sample.txt -o out/demo.parquet --dim 128 --include-text --overwrite
python - <<'PY'
import sys

import numpy as np
import pyarrow.parquet as pq
from mrl_infer import Embedder

t = pq.read_table("out/demo.parquet")
print(f"out/demo.parquet: {t.num_rows} rows, columns {t.column_names}")
emb = Embedder(dim=128)
q = emb.encode_query("A man is playing a guitar.")
docs = t.column("text").to_pylist()
vecs = np.stack(t.column("embedding").to_pylist()).astype("float32")
best = np.argsort(-(vecs @ q))[:3]
print("top 3 for 'A man is playing a guitar.':")
for i in best:
    print(f"  {float(vecs[i] @ q):.3f}  {docs[i][:90]}")
print("torch imported:", "torch" in sys.modules)
PY
