"""How mrl_infer's throughput and memory grow with batch size, input length and corpus size.

    python -m benchmarks.scaling --precision int8 [--axes batch,length,corpus]
        [--corpus-sizes 10000,100000,1000000] [--quick]

Each point runs in a fresh process (so peak RSS is that point's own). Input length: texts of exactly
N tokens (special tokens included). Points up to MiniLM's max_seq_length (256) run mrl_infer; 384 and
512 (the position-embedding limit) run the bare onnxruntime loop on the same graph, since mrl_infer
caps inputs at the model's max_seq_length. Corpus size: the corpus cycled to an N-line text file, run
through the real job, ``mrl-embed embed FILE -o OUT.npy --dim 128`` on the shipped default model
(same architecture and int8 graph as the exported MiniLM), timed end to end, with the peak RSS summed
over the job's process tree (``--workers auto`` starts worker processes). Writes ``<out>/scaling.json``,
``scaling.md`` and ``scaling.png``, rewritten after every point; axes not in ``--axes`` keep their
previous points.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import corpus as corpus_mod
from benchmarks import models
from benchmarks.worker import EncodeFn, _rss_mb, bare_loop

REPO = Path(__file__).resolve().parents[1]


def exact_length_texts(tok_path: Path, n_tokens: int, count: int) -> list[str]:
    """``count`` distinct texts of exactly ``n_tokens`` tokens, [CLS] and [SEP] included."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    words = corpus_mod.SAMPLE.read_text(encoding="utf-8").split()
    out = []
    rng = np.random.default_rng(n_tokens)
    for _ in range(count):
        s = int(rng.integers(0, len(words) - 2 * n_tokens))
        text = " ".join(words[s : s + n_tokens])
        ids = tok.encode(text).ids[1 : n_tokens - 1]
        out.append(tok.decode(ids))
    return out


def point(kind: str, value: int, precision: str, ours: Path, texts_file: Path, passes: int) -> dict:
    """One measurement, in this process (called in a child by :func:`main`)."""
    texts = texts_file.read_text(encoding="utf-8").splitlines()
    if kind == "length" and value > 256:
        encode = _bare_long(ours, precision)  # truncation at the position limit (512), not 256
        bs = 32
    else:
        from mrl_infer import Embedder

        emb = Embedder(ours, variant=precision, device="cpu")
        bs = value if kind == "batch" else 32

        def encode(t: list[str], b: int) -> np.ndarray:
            return emb.encode(t, batch_size=b, show_progress_bar=False)

    rss0 = _rss_mb()
    encode(texts[: min(len(texts), 4 * bs)], bs)  # warm-up
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        out = encode(texts, bs)
        times.append(time.perf_counter() - t)
    assert len(out) == len(texts)
    med = float(np.median(times))
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ours / "tokenizer.json"))
    tok.enable_truncation(max_length=512 if kind == "length" else 256)
    sample = texts[:20000]
    mean_tok = float(np.mean([len(e.ids) for e in tok.encode_batch(sample)]))
    return {
        "kind": kind,
        "value": value,
        "texts": len(texts),
        "batch_size": bs,
        "sent_s": round(len(texts) / med, 1),
        "tok_s": round(len(texts) * mean_tok / med, 1),
        "mean_tokens": round(mean_tok, 1),
        "seconds": round(med, 2),
        "rss_after_load_mb": round(rss0, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "load": round(os.getloadavg()[0], 2),
    }


def _tree_rss_mb(root: int) -> float:
    """Current RSS summed over ``root`` and all its descendants, MB (Linux /proc)."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            parent[int(d.name)] = int(fields[1])
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
    total = 0
    for pid, size in rss.items():
        q = pid
        while q not in (0, 1, root) and q in parent:
            q = parent[q]
        if q == root:
            total += size
    return total / 2**20


def cli_point(
    n: int, texts_file: Path, out_dir: Path, precision: str, dim: int = 128, workers: str = "auto"
) -> dict:
    """One corpus-size point: the ``mrl-embed embed`` job end to end, peak RSS over its process tree."""
    out = out_dir / f"corpus_{n}.npy"
    cmd = [sys.executable, "-m", "mrl_infer.cli", "embed", str(texts_file), "-o", str(out), "--dim",
           str(dim), "--variant", precision, "--workers", workers, "--overwrite"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0.0]
    loads: list[float] = []

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            loads.append(os.getloadavg()[0])
            time.sleep(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode:
        raise RuntimeError(f"mrl-embed failed on {texts_file}:\n{err[-1500:]}")
    rows = np.load(out, mmap_mode="r").shape[0]
    if rows != n:
        raise RuntimeError(f"{out}: {rows} rows, expected {n}")
    summary = [ln for ln in err.splitlines() if ln.startswith("wrote ")]
    out.unlink()
    return {
        "kind": "corpus",
        "value": n,
        "texts": n,
        "batch_size": 32,
        "engine": f"mrl-embed embed (default model, --workers {workers})",
        "sent_s": round(n / wall, 1),
        "tok_s": None,
        "seconds": round(wall, 1),
        "peak_rss_mb": round(peak[0], 1),
        "summary": summary[-1] if summary else "",
        "load": round(float(np.median(loads)) if loads else os.getloadavg()[0], 2),
    }


def _bare_long(ours: Path, precision: str) -> EncodeFn:
    """The bare loop, truncating at the position-embedding limit (512) instead of max_seq_length."""
    return bare_loop(ours / models.OUR_FILES[precision], ours / "tokenizer.json", max_length=512)


def plot(points: list[dict], path: Path, precision: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [("batch", "batch size", "sent_s"), ("length", "tokens per text", "tok_s"),
             ("corpus", "corpus size (texts)", "sent_s")]  # fmt: skip
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (kind, xlabel, metric) in enumerate(kinds):
        pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["value"])
        if not pts:
            continue
        x = [p["value"] for p in pts]
        axes[0, col].plot(x, [p[metric] for p in pts], "o-")
        axes[0, col].set_ylabel("sentences/s" if metric == "sent_s" else "tokens/s")
        axes[1, col].plot(x, [p["peak_rss_mb"] for p in pts], "o-", color="C1")
        axes[1, col].set_ylabel("peak RSS (MB)")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2 if kind != "corpus" else 10)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        if kind == "length":
            for ax in axes[:, col]:
                ax.axvline(256, ls="--", color="grey")
                ax.text(256, ax.get_ylim()[1], " max_seq_length", va="top", fontsize=8)
    fig.suptitle(f"mrl_infer scaling, all-MiniLM-L6-v2 {precision}, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(points: list[dict], precision: str) -> str:
    lines = [f"mrl_infer scaling (all-MiniLM-L6-v2 {precision}; lengths > 256 run the bare loop; corpus "
             "points are whole `mrl-embed embed` jobs at dim 128, RSS summed over the process tree; "
             "load = 1-min load average during the point)", "",
             "| axis | value | texts | batch | sent/s | tok/s | peak RSS MB | load |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        lines.append(
            f"| {p['kind']} | {p['value']} | {p['texts']} | {p['batch_size']} | {p['sent_s']:.0f} | "
            f"{'-' if p['tok_s'] is None else format(p['tok_s'], '.0f')} | {p['peak_rss_mb']:.0f} | "
            f"{p['load']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", default="int8")
    p.add_argument("--batch-sizes", default="1,8,32,128,512")
    p.add_argument("--lengths", default="16,32,64,128,256,384,512")
    p.add_argument("--axes", default="batch,length,corpus", help="which axes to measure")
    p.add_argument("--corpus-sizes", default="10000,100000,1000000")
    p.add_argument("--workers", default="auto", help="--workers of the corpus-size jobs")
    p.add_argument("--texts", type=int, default=2000, help="texts per batch-size point")
    p.add_argument("--length-texts", type=int, default=256)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ours", type=Path, default=models.DEFAULT_WORK)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--point", nargs=3, metavar=("KIND", "VALUE", "TEXTS_FILE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    ours = models.ensure_ours(a.ours)
    if a.point:
        print(json.dumps(point(a.point[0], int(a.point[1]), a.precision, ours, Path(a.point[2]), a.passes)))
        return 0
    if a.quick:
        a.batch_sizes, a.lengths, a.corpus_sizes, a.texts, a.length_texts, a.passes = (
            "1,32", "16,512", "200", 64, 16, 1)  # fmt: skip
    axes = set(a.axes.split(","))
    tmp = a.out / ".tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    base, _ = corpus_mod.load()
    plan: list[tuple[str, int, list[str]]] = []
    if "batch" in axes:
        for b in a.batch_sizes.split(","):
            plan.append(("batch", int(b), corpus_mod.load(None, a.texts)[0]))
    if "length" in axes:
        for n in a.lengths.split(","):
            texts = exact_length_texts(ours / "tokenizer.json", int(n), a.length_texts)
            plan.append(("length", int(n), texts))
    if "corpus" in axes:
        for n in a.corpus_sizes.split(","):
            plan.append(("corpus", int(n), []))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    a.out.mkdir(parents=True, exist_ok=True)
    name = "scaling" if not a.quick else "scaling_quick"
    # Axes not measured this time keep their points from the previous run (re-measure one axis).
    points: list[dict] = []
    previous = a.out / f"{name}.json"
    if previous.is_file():
        points = [p for p in json.loads(previous.read_text())["points"] if p["kind"] not in axes]
    for kind, value, texts in plan:
        f = tmp / f"scaling_{kind}_{value}.txt"
        if kind == "corpus":
            with f.open("w", encoding="utf-8") as fh:
                for i in range(value):
                    fh.write(base[i % len(base)] + "\n")
            try:
                pt = cli_point(value, f, tmp, a.precision, workers=a.workers)
            except RuntimeError as e:
                print(f"corpus={value}: failed\n{e}", file=sys.stderr)
                continue
            finally:
                f.unlink()
            print(f"corpus={value}: {pt['sent_s']} rows/s, {pt['peak_rss_mb']} MB", file=sys.stderr)
            points.append(pt)
            _write(a.out, name, points, a.precision)
            continue
        f.write_text("\n".join(texts) + "\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "benchmarks.scaling", "--precision", a.precision, "--passes",
               str(a.passes), "--ours", str(ours), "--point", kind, str(value), str(f)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            print(f"{kind}={value}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        pt = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{kind}={value}: {pt['sent_s']} sent/s, {pt['peak_rss_mb']} MB", file=sys.stderr)
        points.append(pt)
        _write(a.out, name, points, a.precision)
    return 0


def _write(out: Path, name: str, points: list[dict], precision: str) -> None:
    """Rewrite the JSON, markdown and plot (after every point, so a long run keeps what it has)."""
    order = {"batch": 0, "length": 1, "corpus": 2}
    points = sorted(points, key=lambda p: (order[p["kind"]], p["value"]))
    (out / f"{name}.json").write_text(json.dumps({"precision": precision, "points": points}, indent=1))
    (out / f"{name}.md").write_text(markdown(points, precision))
    plot(points, out / f"{name}.png", precision)


if __name__ == "__main__":
    sys.exit(main())
