"""``mrl-embed serve`` under load on localhost vs offline ``Embedder.encode`` on the same texts, same run.

Starts the server as a subprocess on 127.0.0.1 (port 0), then for concurrency 1/4/16/64 sends bench-corpus
texts as single-text requests and as batches of 32 (each client a thread with its own httpx.Client,
float responses, full dim), then the same with wrk (C, one thread: a load generator that costs the 2
cores far less than Python clients); reports texts/s, p50/p99 request latency, and throughput as a
share of offline ``encode`` (batch 32, this process, the best of two passes measured just before each
cell with the server drained: this VM's speed drifts by up to 30% within minutes). Idle latency: one
short text, sequential requests, median, vs ``encode`` on that one text. Bounded: ``--texts`` per cell.

    python benchmarks/serve.py --texts 512 --out benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.corpus import load  # noqa: E402
from mrl_infer import Embedder  # noqa: E402

SHORT = "a short query"


def _start(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "mrl_infer.cli", "serve", "--port", "0", "--log-level", "info"]
    cmd += ["--variant", args.variant, "--max-wait-ms", str(args.max_wait_ms)]
    cmd += ["--ort-spinning", args.ort_spinning]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--parallel-calls", str(args.parallel_calls)] if args.parallel_calls else []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        m = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
            break
    else:
        raise SystemExit("server did not start")
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit("server not healthy")


def _machine() -> dict[str, object]:
    """CPU model, the ISA flags that matter for int8 GEMM, cores, load (compare only within one run)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count(),
        "load_1min": os.getloadavg()[0],
    }


def _wrk_idle_ms(url: str, seconds: int) -> float | None:
    """Mean latency (ms) of wrk sending one short text at a time: the idle latency without the
    Python client's own per-request cost; None without wrk."""
    r = _wrk_run(url, [SHORT], 1, seconds)
    if r is None:
        return None
    m = re.search(r"Latency\s+([\d.]+)(us|ms|s)\b", r)
    if not m:
        return None
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def _wrk(url: str, texts: list[str], concurrency: int, seconds: int, per_request: int = 1) -> float | None:
    """Requests/s of wrk (C, one thread) POSTing ``per_request`` texts at a time; None without wrk."""
    out = _wrk_run(url, texts, concurrency, seconds, per_request)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out or "")
    return float(m.group(1)) if m else None


def _wrk_run(url: str, texts: list[str], concurrency: int, seconds: int, per_request: int = 1) -> str | None:
    """wrk's report for POSTing ``texts`` in turn, ``per_request`` per request; None without wrk."""
    import tempfile

    if shutil.which("wrk") is None:
        return None
    inputs = (
        texts if per_request == 1 else [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    )
    bodies = ",\n".join("[==[" + json.dumps({"input": t}) + "]==]" for t in inputs)
    script = (
        f"bodies = {{\n{bodies}\n}}\ncounter = 0\nrequest = function()\n  counter = counter + 1\n"
        '  return wrk.format("POST", "/v1/embeddings", {["Content-Type"]="application/json"}, '
        "bodies[(counter % #bodies) + 1])\nend\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s", "-s", f.name, url + "/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return out


def _cell(url: str, texts: list[str], per_request: int, concurrency: int) -> dict[str, float]:
    requests = [texts[i : i + per_request] for i in range(0, len(texts), per_request)]
    latencies: list[float] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=120) as c:
            for batch in requests[k::concurrency]:
                t0 = time.perf_counter()
                r = c.post(url + "/v1/embeddings", json={"input": batch})
                dt = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "texts_per_s": len(texts) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "requests": len(requests),
    }


def _offline(emb: Embedder, texts: list[str]) -> float:
    """Offline ``encode`` texts/s over ``texts`` (batch 32): the best of two passes."""
    best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        emb.encode(texts, batch_size=32)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    return best


def _drain(url: str) -> None:
    """Wait until the server has no admitted inputs left (wrk leaves requests in flight when it stops)."""
    for _ in range(300):
        m = re.search(r"^mrl_queue_size (\S+)", httpx.get(url + "/metrics").text, re.M)
        if m is None or float(m.group(1)) == 0:
            return
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: the embedded default model)")
    ap.add_argument("--variant", default="auto")
    ap.add_argument("--threads", type=int, help="ONNX Runtime threads (offline; per call in the server)")
    ap.add_argument("--parallel-calls", type=int, help="the server's (default: serve's)")
    ap.add_argument("--texts", type=int, default=512, help="texts per cell (bounded)")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--max-wait-ms", type=float, default=0.0, help="the server's (default 0, as serve)")
    ap.add_argument("--ort-spinning", choices=("on", "off"), default="on", help="the server's (default on)")
    ap.add_argument("--idle-runs", type=int, default=50)
    ap.add_argument("--wrk-seconds", type=int, default=10, help="per wrk cell (0: skip wrk)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts, corpus = load(n=args.texts)

    emb = Embedder(args.model, variant=args.variant, threads=args.threads)
    emb.encode(texts[:64])
    offline_runs: list[float] = []
    idle_encode = []
    for _ in range(args.idle_runs):
        t = time.perf_counter()
        emb.encode([SHORT])
        idle_encode.append((time.perf_counter() - t) * 1000)

    proc, url = _start(args)
    try:
        rows = []
        with httpx.Client() as c:
            for _ in range(5):
                c.post(url + "/v1/embeddings", json={"input": SHORT})
            idle_server = []
            for _ in range(args.idle_runs):
                t = time.perf_counter()
                c.post(url + "/v1/embeddings", json={"input": SHORT}).raise_for_status()
                idle_server.append((time.perf_counter() - t) * 1000)
        for per_request in (1, 32):
            for conc in map(int, args.concurrency.split(",")):
                _drain(url)
                offline_runs.append(_offline(emb, texts))
                cell = _cell(url, texts, per_request, conc)
                cell |= {
                    "per_request": per_request,
                    "concurrency": conc,
                    "offline_texts_per_s": offline_runs[-1],
                    "share_of_offline": cell["texts_per_s"] / offline_runs[-1],
                }
                rows.append(cell)
                print(
                    f"httpx batch {per_request:>2}  c={conc:>2}  {cell['texts_per_s']:7.1f} texts/s  "
                    f"p50 {cell['p50_ms']:7.1f} ms  p99 {cell['p99_ms']:7.1f} ms  "
                    f"{100 * cell['share_of_offline']:5.1f}% of offline ({offline_runs[-1]:.1f})",
                    flush=True,
                )
        wrk_idle = _wrk_idle_ms(url, args.wrk_seconds) if args.wrk_seconds else None
        wrk_rows = []
        for per_request in (1, 32) if args.wrk_seconds and shutil.which("wrk") else ():
            for conc in map(int, args.concurrency.split(",")):
                _wrk(url, texts, conc, 2, per_request)  # warm-up
                _drain(url)
                offline_runs.append(_offline(emb, texts))
                rps = _wrk(url, texts, conc, args.wrk_seconds, per_request)
                assert rps is not None, "wrk printed no Requests/sec"
                tps = rps * per_request
                wrk_rows.append(
                    {
                        "per_request": per_request,
                        "concurrency": conc,
                        "requests_per_s": rps,
                        "texts_per_s": tps,
                        "offline_texts_per_s": offline_runs[-1],
                        "share_of_offline": tps / offline_runs[-1],
                    }
                )
                print(
                    f"wrk   batch {per_request:>2}  c={conc:>2}  {tps:7.1f} texts/s  "
                    f"{100 * tps / offline_runs[-1]:5.1f}% of offline ({offline_runs[-1]:.1f})",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait(30)
    emb.close()
    offline = statistics.median(offline_runs)
    result = {
        "corpus": corpus,
        "texts": len(texts),
        "offline_texts_per_s": offline,
        "idle_ms": {
            "encode_p50": statistics.median(idle_encode),
            "server_p50": statistics.median(idle_server),
            "server_wrk_mean": wrk_idle,
        },
        "cells": rows,
        "offline_texts_per_s_runs": offline_runs,
        "wrk": wrk_rows,
        "machine": _machine(),
        "settings": {
            "variant": args.variant,
            "threads": args.threads,
            "parallel_calls": args.parallel_calls,
            "max_wait_ms": args.max_wait_ms,
            "ort_spinning": args.ort_spinning,
        },
    }
    print(
        f"offline encode: {offline:.1f} texts/s (median of the cells'); idle one short text: "
        f"encode {result['idle_ms']['encode_p50']:.2f} ms, "
        f"server {result['idle_ms']['server_p50']:.2f} ms (httpx, median of {args.idle_runs}), "
        f"{wrk_idle if wrk_idle is not None else float('nan'):.2f} ms (wrk, mean)"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
