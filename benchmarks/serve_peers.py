"""``mrl-embed serve`` beside Infinity (``infinity-emb``), the same ONNX graph, the same wrk load, one run.

Both servers serve all-MiniLM-L6-v2 from one export (``benchmarks/models.py``): ours the mrl_infer model
directory, Infinity the Sentence Transformers layout whose ``onnx/`` holds the same graph cut before
pooling (optimum engine, CPU, its ONNX optimizer off so that both run the graph as exported). Each
server runs alone (started, measured, stopped), in alternating order over ``--rounds``; each cell is
wrk (one thread) POSTing bench-corpus texts to ``/v1/embeddings`` (single texts, and 32 a request),
with offline ``Embedder.encode`` on the same texts measured right before each server's cells, for scale.
Before its cells each server's embeddings of 16 texts are checked against ``encode`` (min cosine).

Infinity pins its own dependencies (numpy < 2, optimum < 2, transformers < 4.49), so it runs from its
own interpreter (``--infinity-python``); see docs/server.md for the environment used.

    python benchmarks/serve_peers.py --infinity-python /tmp/venv-inf/bin/python \
        --out benchmarks/results/serve_peers.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import models  # noqa: E402
from benchmarks.corpus import load  # noqa: E402
from benchmarks.serve import _machine, _offline, _wrk  # noqa: E402
from mrl_infer import Embedder  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, path: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was healthy ({url})")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not healthy after {timeout:.0f} s ({url})")


def start(name: str, a: argparse.Namespace, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    if name == "mrl_infer":
        cmd = [sys.executable, "-m", "mrl_infer.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--model", str(a.ours), "--variant", a.precision, "--log-level", "warning"]
        health = "/health"
        env = os.environ.copy()
    else:
        cmd = [a.infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id", str(a.peer)]
        cmd += ["--engine", "optimum", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--url-prefix", "/v1", "--onnx-disable-optimize", "--log-level", "warning"]
        cmd += ["--pooling-method", "mean"]  # the model's (1_Pooling); Infinity's auto gave CLS here
        cmd += ["--onnx-do-not-prefer-quantized"] if a.precision == "fp32" else []
        health = "/health"
        env = os.environ | {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    _wait_healthy(proc, url, health)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def agreement(url: str, emb: Embedder, texts: list[str]) -> float:
    """Min cosine between the server's embeddings of ``texts`` and ``encode``'s."""
    r = httpx.post(url + "/v1/embeddings", json={"input": texts, "model": "m"}, timeout=60)
    r.raise_for_status()
    got = np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    return float(np.min(np.sum(got * emb.encode(texts), axis=1)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinity-python", help="an interpreter with infinity-emb[server,optimum] installed")
    ap.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    ap.add_argument("--ours", type=Path, default=models.DEFAULT_WORK)
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--connections", default="1,4,16,64")
    ap.add_argument("--per-request", default="1,32")
    ap.add_argument("--seconds", type=int, default=8, help="per wrk cell")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    a.ours = models.ensure_ours(a.ours)
    a.peer = models.ensure_peer(a.ours)
    systems = ["mrl_infer"] + (["infinity"] if a.infinity_python else [])
    if not a.infinity_python:
        print("no --infinity-python: measuring mrl_infer alone", file=sys.stderr)
    texts, corpus_name = load(n=a.texts)
    emb = Embedder(a.ours, variant=a.precision, device="cpu")
    conns = [int(c) for c in a.connections.split(",")]
    per = [int(p) for p in a.per_request.split(",")]
    log = Path("/tmp") / "serve_peers.log"
    cells: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    offline: dict[str, list[float]] = {s: [] for s in systems}
    agree: dict[str, float] = {}
    load0 = os.getloadavg()[0]
    for r in range(a.rounds):
        for name in systems if r % 2 == 0 else systems[::-1]:
            offline[name].append(_offline(emb, texts))
            proc, url = start(name, a, log)
            try:
                agree[name] = min(agree.get(name, 1.0), agreement(url, emb, texts[:16]))
                _wrk(url, texts, 4, 2)  # warm-up
                for p in per:
                    for c in conns:
                        rps = _wrk(url, texts, c, a.seconds, p)
                        if rps is None:
                            raise SystemExit("wrk is needed (apt-get install wrk)")
                        cells[name].setdefault(f"{p}x{c}", []).append(rps * p)
                        print(
                            f"round {r} {name:9s} {p:2d} texts x {c:2d} conn: {rps * p:7.1f} texts/s",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                stop(proc)
    out = {
        "machine": _machine(),
        "load": [load0, os.getloadavg()[0]],
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "precision": a.precision,
        "texts": len(texts),
        "corpus": corpus_name,
        "seconds_per_cell": a.seconds,
        "rounds": a.rounds,
        "files": {
            "mrl_infer": str(a.ours / models.OUR_FILES[a.precision]),
            "infinity": str(a.peer / models.PEER_FILES[a.precision]),
        },
        "min_cosine_vs_encode": agree,
        "offline_texts_per_s": {s: statistics.median(v) for s, v in offline.items()},
        "texts_per_s": {s: {k: statistics.median(v) for k, v in c.items()} for s, c in cells.items()},
        "texts_per_s_rounds": cells,
    }
    if a.infinity_python:
        out["infinity_version"] = subprocess.run(
            [a.infinity_python, "-c", "import infinity_emb; print(infinity_emb.__version__)"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    print(markdown(out))
    if a.out:
        a.out.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    return 0


def markdown(out: dict) -> str:
    systems = list(out["texts_per_s"])
    lines = [
        "| texts a request | connections | " + " | ".join(f"{s} texts/s" for s in systems) + " | ratio |",
        "|---|---|" + "---|" * (len(systems) + 1),
    ]
    first = out["texts_per_s"][systems[0]]
    for key in first:
        p, c = key.split("x")
        vals = [out["texts_per_s"][s][key] for s in systems]
        ratio = f"{vals[0] / vals[1]:.2f}x" if len(vals) > 1 else "-"
        lines.append(f"| {p} | {c} | " + " | ".join(f"{v:.0f}" for v in vals) + f" | {ratio} |")
    off = ", ".join(f"{s} {v:.0f}" for s, v in out["offline_texts_per_s"].items())
    agree = ", ".join(f"{s} {v:.6f}" for s, v in out["min_cosine_vs_encode"].items())
    return (
        "\n".join(lines)
        + f"\n\noffline encode texts/s before each server's cells (median): {off}; "
        + (f"min cosine of 16 served embeddings vs encode: {agree}\n")
    )


if __name__ == "__main__":
    raise SystemExit(main())
