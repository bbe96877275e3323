"""Two server trees side by side: wrk single-text throughput of each, interleaved, in one run.

This VM's speed drifts by up to 30% within minutes, so a change to the server is judged by starting
the servers of two source trees in turn (round 1: A then B, round 2: A then B, ...), each cell with
offline ``encode`` re-measured just before it (``benchmarks/serve.py``'s helpers). A tree is any
directory holding an ``mrl_infer`` package (for example ``git worktree add /tmp/base HEAD~1``); its
server runs with that directory as the working directory, so ``python -m mrl_infer.cli`` imports it.

    python benchmarks/serve_ab.py base=/tmp/base new=. --connections 16,64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import chdir
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import serve  # noqa: E402
from benchmarks.corpus import load  # noqa: E402
from mrl_infer import Embedder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs=2, metavar="NAME=DIR", help="two source trees to compare")
    ap.add_argument("--connections", default="16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8, help="per wrk cell")
    ap.add_argument("--per-request", type=int, default=1, help="texts per request")
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees)
    for name, tree in trees.items():
        if not (Path(tree) / "mrl_infer" / "__init__.py").is_file():
            raise SystemExit(f"{name}={tree}: no mrl_infer package in that directory")
    conns = [int(c) for c in args.connections.split(",")]
    texts, corpus = load(n=args.texts)
    emb = Embedder()
    emb.encode(texts[:64])
    server_args = argparse.Namespace(
        model=None, variant="auto", threads=None, parallel_calls=None, max_wait_ms=0.0, ort_spinning="on"
    )
    cells = []
    for r in range(args.rounds):
        for name, tree in trees.items():
            with chdir(tree):
                proc, url = serve._start(server_args)
            try:
                for c in conns:
                    serve._drain(url)
                    offline = serve._offline(emb, texts)
                    rps = serve._wrk(url, texts, c, args.seconds, args.per_request)
                    if rps is None:
                        raise SystemExit("wrk is not installed (apt-get install wrk)")
                    tps = rps * args.per_request
                    cells.append(dict(round=r, tree=name, connections=c, offline=offline, texts_per_s=tps))
                    print(
                        f"round {r} {name:>8} c={c:<3} {tps:7.1f} texts/s  {tps / offline:6.1%} of offline "
                        f"({offline:.0f})",
                        flush=True,
                    )
            finally:
                proc.terminate()
                proc.wait()
    for name in trees:
        for c in conns:
            mine = [x for x in cells if x["tree"] == name and x["connections"] == c]
            print(
                f"{name:>8} c={c:<3} texts/s "
                + " / ".join(f"{x['texts_per_s']:.0f}" for x in mine)
                + "  share "
                + " / ".join(f"{x['texts_per_s'] / x['offline']:.0%}" for x in mine)
            )
    if args.out:
        meta = {
            "corpus": corpus,
            "trees": trees,
            "machine": serve._machine(),
            "load_1min": os.getloadavg()[0],
        }
        args.out.write_text(json.dumps({**meta, "cells": cells}, indent=2) + "\n")


if __name__ == "__main__":
    main()
