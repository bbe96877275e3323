"""Side-by-side benchmark: every system in its own process, same model, corpus and precision.

    python -m benchmarks.run --quick          # ~500 texts, a few minutes
    python -m benchmarks.run --full           # the 4,000-text corpus; what results/latest.* hold
    python -m benchmarks.run --cuda           # GPU mode (fp16 + IOBinding vs sentence-transformers fp16)

Writes ``<out>/latest.json`` and ``<out>/latest.md``. FastEmbed pins its own dependencies, so it runs
from a separate interpreter (``--bench-python``, default ``.venv-bench/bin/python`` when present) and is
skipped when no interpreter can import it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import corpus as corpus_mod
from benchmarks import models

REPO = Path(__file__).resolve().parents[1]
CPU_SYSTEMS = (
    "mrl_infer",
    "bare",
    "bare_sorted",
    "bare_peer",
    "bare_peer_sorted",
    "st_onnx",
    "fastembed",
    "st_torch",
)
LABELS = {
    "mrl_infer": "mrl_infer",
    "bare": "bare onnxruntime loop (our graph)",
    "bare_peer": "bare onnxruntime loop (transformer-only graph)",
    "bare_sorted": "bare onnxruntime loop, length-sorted (our graph)",
    "bare_peer_sorted": "bare onnxruntime loop, length-sorted (transformer-only graph)",
    "st_onnx": "sentence-transformers, ONNX backend",
    "fastembed": "FastEmbed (custom local model)",
    "st_torch": "sentence-transformers, torch",
}


def machine_facts() -> dict:
    """CPU model, cores, ISA flags that matter for int8, memory, versions."""
    facts: dict = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "?")
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
        facts["cpu"] = model
        facts["isa"] = [
            f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags
        ]
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        facts["mem_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    facts["logical_cpus"] = os.cpu_count()
    from mrl_infer._session import physical_cores

    facts["physical_cores"] = physical_cores()
    versions = {}
    for mod in ("onnxruntime", "tokenizers", "numpy", "torch", "sentence_transformers", "transformers"):
        with contextlib.suppress(ImportError):
            versions[mod] = __import__(mod).__version__
    facts["versions"] = versions
    return facts


def busy_processes(exclude: set[int]) -> list[str]:
    """Other processes using CPU right now (for the load note next to the numbers)."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
        ).stdout
    except OSError:
        return []
    busy = []
    for line in out.splitlines()[:8]:
        pid, pcpu, comm = line.split(None, 2)
        if int(pid) not in exclude and float(pcpu) >= 10 and comm != "ps":
            busy.append(f"{comm}({pcpu}%)")
    return busy


def run_gemm() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gemm"], capture_output=True, text=True, env=env, cwd=REPO
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.splitlines()[-1])


def find_bench_python(explicit: str | None) -> str | None:
    """An interpreter that can import fastembed: the explicit one, .venv-bench, or this one."""
    candidates = [explicit] if explicit else [str(REPO / ".venv-bench" / "bin" / "python"), sys.executable]
    for py in candidates:
        if py and Path(py).exists():
            ok = subprocess.run([py, "-c", "import fastembed"], capture_output=True).returncode == 0
            if ok:
                return py
    return None


class Worker:
    """One system in its own process, driven pass by pass (see ``benchmarks.worker --serve``)."""

    def __init__(self, py: str, system: str, precision: str, args: argparse.Namespace, paths: dict) -> None:
        self.system, self.precision = system, precision
        self.parity_out = paths["tmp"] / f"parity_{system}_{precision}.npy"
        self.log = paths["tmp"] / f"worker_{system}_{precision}.log"
        cmd = [
            py, "-m", "benchmarks.worker", "--serve",
            "--system", system, "--precision", precision, "--device", args.device,
            "--ours", str(paths["ours"]), "--peer", str(paths["peer"]), "--corpus", str(paths["corpus"]),
            "--batch-sizes", args.batch_sizes, "--passes", str(args.passes), "--b1-texts", str(args.b1_texts),
            "--parity-texts", str(args.parity_texts), "--parity-out", str(self.parity_out),
        ]  # fmt: skip
        # TOKENIZERS_PARALLELISM is left as the user has it: each library tokenizes with its own defaults.
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
        self.loads: list[float] = [os.getloadavg()[0]]
        self.busy = busy_processes({os.getpid()})
        cmd += ["--spawned", repr(time.time())]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("w"),
            text=True, env=env, cwd=REPO,
        )  # fmt: skip
        self.error: str | None = None
        self._read()  # {"ready": true} once loaded, cold start measured and parity rows written

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
        self.error = self.log.read_text()[-2000:] or f"exited with {self.proc.wait()}"
        raise RuntimeError(self.error)

    def send(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def one_pass(self, bs: int) -> None:
        self.send(f"pass {bs}")
        self.loads.append(os.getloadavg()[0])

    def finish(self) -> dict:
        if self.error is not None:
            return {"system": self.system, "precision": self.precision, "error": self.error}
        try:
            res = self.send("end")
        except RuntimeError:
            return {"system": self.system, "precision": self.precision, "error": self.error}
        self.proc.wait()
        res["load_before"] = round(min(self.loads), 2)
        res["load_after"] = round(max(self.loads), 2)
        res["busy_before"] = self.busy
        res["parity_file"] = str(self.parity_out)
        return res


def add_parity(results: list[dict]) -> None:
    """Min cosine of each system's embeddings against sentence-transformers (PyTorch, fp32)."""
    ref = next((r for r in results if r["system"] == "st_torch" and "error" not in r), None)
    if ref is None:
        return
    a = np.load(ref["parity_file"])
    for r in results:
        if "error" in r or not Path(r["parity_file"]).is_file():
            continue
        b = np.load(r["parity_file"])
        r["min_cos_vs_torch"] = float(np.sum(a * b, axis=1).min())


def markdown(report: dict) -> str:
    """The README table: one row per system and precision."""
    peak = report["gemm"]["gflop_s"]
    m = report["machine"]
    lines = [
        f"Machine: {m.get('cpu', '?')}, {m['physical_cores']} cores ({', '.join(m.get('isa', []))}), "
        f"{m.get('mem_gib', '?')} GiB; numpy fp32 GEMM peak {peak} GFLOP/s "
        f"({', '.join(b['internal_api'] + ' ' + str(b['architecture']) for b in report['gemm']['blas'])}). "
        f"Corpus: {report['corpus']['name']} ({report['corpus']['texts']} texts, "
        f"{report['corpus']['mean_tokens']:.1f} tokens mean). "
        f"onnxruntime {m['versions'].get('onnxruntime')}. "
        f"{report['mode']} run, {report['finished']}.",
        "",
        "| system | prec | b=1 sent/s | b=32 sent/s (min–max) | b=32 tok/s | b=128 sent/s (min–max) "
        "| b=32 GFLOP/s (% peak) | cold start s | import s | peak RSS b≤32 MB | min cos vs torch | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(
                f"| {LABELS.get(r['system'], r['system'])} | {r['precision']} | error | | | | | | | | | |"
            )
            continue
        b = r["batches"]

        def cell(bs: str, b: dict = b) -> str:
            if bs not in b:
                return "–"
            x = b[bs]
            return f"{x['sent_s']:.0f} ({x['sent_s_min']:.0f}–{x['sent_s_max']:.0f})"

        b32 = b.get("32", {})
        one = f"{b['1']['sent_s']:.0f}" if "1" in b else "–"
        g = b32.get("gflop_s")
        gcell = f"{g:.0f} ({100 * g / peak:.0f}%)" if g else "–"
        cos = r.get("min_cos_vs_torch")
        lines.append(
            f"| {LABELS.get(r['system'], r['system'])} | {r['precision']} | "
            f"{one} | {cell('32')} | {b32.get('tok_s', 0):.0f} | {cell('128')} | {gcell} | "
            f"{r['cold_start_s']:.2f} | {r.get('import_s', 0):.2f} | {b32.get('peak_rss_mb', 0):.0f} | "
            f"{'–' if cos is None else f'{cos:.5f}'} | {r['load_before']:.2f}→{r['load_after']:.2f} |"
        )
    lines += [
        "",
        "Files: "
        + "; ".join(
            sorted(
                {
                    f"{r['system']}/{r['precision']}: `{_short(r.get('file', ''))}`"
                    for r in report["results"]
                    if "file" in r
                }
            )
        ),
        "",
        "Effective GFLOP/s counts real (unpadded) tokens only: per text of L tokens, "
        "6 layers x L x (2 x (4h² + 2hi) + 4Lh) FLOPs with h=384, i=1536 (~21.2 MFLOP/token + attention). "
        "Cold start = process spawn to first embedding (interpreter start, imports, model load, one text). "
        "Batch 1 runs an evenly spaced subset of "
        f"{report['settings']['b1_texts']} texts. Passes interleave across systems (round robin, each system "
        "in its own process); load = min→max 1-min load average over the system's passes.",
    ]
    return "\n".join(lines) + "\n"


def _short(path: str) -> str:
    p = Path(path)
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="500 texts, batch-1 subset of 100")
    mode.add_argument("--full", action="store_true", help="the whole corpus (default)")
    p.add_argument("--cuda", action="store_true", help="GPU mode: fp16, batch 128 and 512")
    p.add_argument("--systems", default=",".join(CPU_SYSTEMS))
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument(
        "--corpus", type=Path, help="one text per line (default: ../shared bench corpus or generated)"
    )
    p.add_argument("--texts", type=int, help="use only the first N texts")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--parity-texts", type=int, default=256)
    p.add_argument("--ours", type=Path, default=models.DEFAULT_WORK)
    p.add_argument("--bench-python", help="interpreter with fastembed installed")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--name", default="latest")
    p.add_argument("--no-gemm", action="store_true")
    p.add_argument("--batch-sizes", help="override, e.g. 1,32,128")
    p.add_argument("--b1-texts", type=int, help="texts per pass at batch size 1")
    a = p.parse_args(argv)
    a.device = "cuda" if a.cuda else "cpu"
    a.batch_sizes = a.batch_sizes or ("128,512" if a.cuda else "1,32,128")
    a.b1_texts = a.b1_texts or (100 if a.quick else 400)
    n_texts = a.texts or (500 if a.quick else None)
    if a.cuda:
        a.systems, a.precisions = "mrl_infer,st_torch", "fp16"

    ours = models.ensure_ours(a.ours, with_fp16=a.cuda)
    peer = models.ensure_peer(ours)
    tmp = a.out / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    texts, corpus_name = corpus_mod.load(a.corpus, n_texts)
    corpus_path = tmp / "corpus.txt"
    corpus_path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    paths = {"ours": ours, "peer": peer, "corpus": corpus_path, "tmp": tmp}

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ours / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])

    report: dict = {
        "mode": "cuda" if a.cuda else ("quick" if a.quick else "full"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine_facts(),
        "corpus": {
            "name": corpus_name,
            "texts": len(texts),
            "mean_tokens": float(lengths.mean()),
            "p50_tokens": float(np.median(lengths)),
            "p99_tokens": float(np.percentile(lengths, 99)),
            "max_tokens": int(lengths.max()),
        },
        "settings": {"passes": a.passes, "b1_texts": a.b1_texts, "batch_sizes": a.batch_sizes},
        "models": {"ours": str(ours), "peer": str(peer),
                   "peer_source": json.loads((peer / "bench_source.json").read_text())},
        "load_start": os.getloadavg(),
    }  # fmt: skip
    report["gemm"] = {"gflop_s": float("nan"), "blas": []} if a.no_gemm else run_gemm()
    print(f"GEMM peak: {report['gemm']['gflop_s']} GFLOP/s", file=sys.stderr)
    fe_python = find_bench_python(a.bench_python)
    order = [s for s in CPU_SYSTEMS if s in a.systems.split(",")] if not a.cuda else a.systems.split(",")
    workers: list[Worker] = []
    results = []
    for system in order:  # start (and cold-start) each system while the others sit idle
        for precision in a.precisions.split(","):
            if system == "st_torch" and precision == "int8":
                continue  # no int8 torch path; the reference row is fp32
            py = sys.executable
            if system == "fastembed":
                if fe_python is None:
                    print("fastembed: not importable here, skipped", file=sys.stderr)
                    continue
                py = fe_python
            try:
                workers.append(Worker(py, system, precision, a, paths))
                print(f"{system:10s} {precision}: loaded", file=sys.stderr)
            except RuntimeError as exc:
                results.append({"system": system, "precision": precision, "error": str(exc)})
    # Passes interleave across systems (round robin), so each system's median sees the same load.
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        for i in range(a.passes):
            for w in workers:
                if w.error is None:
                    with contextlib.suppress(RuntimeError):
                        w.one_pass(bs)
            print(f"batch {bs}: pass {i + 1}/{a.passes} done", file=sys.stderr)
    results += [w.finish() for w in workers]
    results.sort(key=lambda r: (order.index(r["system"]), r["precision"]))
    # the torch reference first in the parity comparison, wherever it ran
    add_parity(results)
    report["results"] = results
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    report["load_end"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{a.name}.json").write_text(json.dumps(report, indent=1, default=str))
    (a.out / f"{a.name}.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
