"""Compare int8 quantization options on speed and STS-B quality (mrl_infer, same fp32 source graph).

    python -m benchmarks.int8 [--options a,b,...] [--texts 2000] [--stsb ../shared/data/stsb/dev.tsv]

Each option (export/_int8_options.py) quantizes our fp32 ``model.onnx``; each resulting model dir is
measured in its own process: sentences/s at batch 32 (median of 3 passes), STS-B Spearman x100 at
dims 384/128/64, and min cosine against the fp32 graph. Writes ``<out>/int8.json`` and ``int8.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import corpus as corpus_mod
from benchmarks import models

REPO = Path(__file__).resolve().parents[1]
STSB = REPO.parent / "shared" / "data" / "stsb" / "dev.tsv"


def build(option: str, ours: Path, root: Path) -> Path:
    """A model dir identical to ``ours`` except that its int8 file is quantized with ``option``."""
    from mrl_export._int8_options import quantize_option

    out = root / option
    if (out / "mrl_infer.json").is_file():
        return out
    tmp = root / f".{option}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = json.loads((ours / "mrl_infer.json").read_text())
    for f in manifest["tokenizer"]["files"]:
        shutil.copy(ours / f, tmp / f)
    calibration = None
    if option.startswith("static"):
        calibration = _calibration_feeds(ours)
    t = time.perf_counter()
    note = quantize_option(ours / "model.onnx", tmp / "model_int8.onnx", option, calibration)
    v = manifest["variants"]["int8"]
    v.update(file="model_int8.onnx", sha256=None, notes=note)
    manifest["variants"] = {"int8": v}
    manifest["bench_quantize_s"] = round(time.perf_counter() - t, 1)
    (tmp / "mrl_infer.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(out)
    return out


def _calibration_feeds(ours: Path, n: int = 256, batch: int = 32, width: int = 128) -> list[dict]:
    """Feeds of ``n`` benchmark-corpus texts (not STS-B, the quality test), all padded to ``width``.

    One width for every batch: the Percentile/Entropy calibrators stack activations across batches.
    """
    from tokenizers import Tokenizer

    texts, _ = corpus_mod.load()
    texts = texts[-n:]
    tok = Tokenizer.from_file(str(ours / "tokenizer.json"))
    tok.enable_truncation(max_length=width)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=width)
    feeds = []
    for i in range(0, len(texts), batch):
        enc = tok.encode_batch(texts[i : i + batch])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return feeds


def measure(model_dir: Path, ours: Path, texts_file: Path, stsb: Path | None, passes: int) -> dict:
    """Speed and quality of one int8 model dir, or of our fp32 graph when it is ``ours``."""
    from mrl_infer import Embedder

    texts = texts_file.read_text(encoding="utf-8").splitlines()
    emb = Embedder(model_dir, variant="fp32" if model_dir == ours else "int8", device="cpu")
    emb.encode(texts[:128], batch_size=32)
    times = []
    for _ in range(passes):
        t = time.perf_counter()
        emb.encode(texts, batch_size=32)
        times.append(time.perf_counter() - t)
    res: dict = {"sent_s": round(len(texts) / statistics.median(times), 1),
                 "sent_s_range": [round(len(texts) / max(times), 1), round(len(texts) / min(times), 1)],
                 "load": round(os.getloadavg()[0], 2)}  # fmt: skip
    ref = Embedder(ours, variant="fp32", device="cpu")
    sample = texts[:256]
    res["min_cos_vs_fp32"] = float(np.sum(emb.encode(sample) * ref.encode(sample), axis=1).min())
    if stsb is not None and stsb.is_file():
        from mrl_infer._quality import load_sts, sts_spearman_by_dim

        data = load_sts(stsb)
        scores = sts_spearman_by_dim(
            lambda t: emb.encode(t, normalize_embeddings=False), data, [384, 128, 64]
        )
        res["stsb_spearman"] = {str(k): round(v, 2) for k, v in scores.items()}
    return res


def main(argv: list[str] | None = None) -> int:
    from mrl_export._int8_options import OPTIONS, RECOMMENDED

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--options", default=",".join(["fp32", *OPTIONS]), help="fp32 = reference row")
    p.add_argument("--texts", type=int, default=2000)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--stsb", type=Path, default=STSB if STSB.is_file() else None)
    p.add_argument("--ours", type=Path, default=models.DEFAULT_WORK)
    p.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-int8")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--measure", nargs=2, metavar=("MODEL_DIR", "TEXTS_FILE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    ours = models.ensure_ours(a.ours)
    if a.measure:
        print(json.dumps(measure(Path(a.measure[0]), ours, Path(a.measure[1]), a.stsb, a.passes)))
        return 0
    texts, corpus_name = corpus_mod.load(None, a.texts)
    a.work.mkdir(parents=True, exist_ok=True)
    texts_file = a.work / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    rows = []
    for option in a.options.split(","):
        t = time.perf_counter()
        try:
            d = ours if option == "fp32" else build(option, ours, a.work)
        except Exception as exc:  # a quantizer failure is a result, not a crash of the comparison
            rows.append({"option": option, "error": f"{type(exc).__name__}: {exc}"[:400]})
            continue
        cmd = [sys.executable, "-m", "benchmarks.int8", "--passes", str(a.passes), "--ours", str(ours),
               "--measure", str(d), str(texts_file)]  # fmt: skip
        cmd += ["--stsb", str(a.stsb)] if a.stsb else []
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            rows.append({"option": option, "error": proc.stderr[-400:]})
            continue
        row = {
            "option": option,
            **OPTIONS.get(option, {}),
            **json.loads(proc.stdout.strip().splitlines()[-1]),
        }
        row["size_mb"] = round(
            (d / ("model.onnx" if d == ours else "model_int8.onnx")).stat().st_size / 1e6, 1
        )
        rows.append(row)
        took = time.perf_counter() - t
        print(f"{option}: {row['sent_s']} sent/s, {row.get('stsb_spearman')} ({took:.0f}s)", file=sys.stderr)
    report = {"corpus": corpus_name, "texts": len(texts), "stsb": str(a.stsb), "recommended": RECOMMENDED,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rows": rows}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "int8.json").write_text(json.dumps(report, indent=1))
    lines = [f"int8 options, mrl_infer batch 32 over {len(texts)} texts ({corpus_name}); "
             f"STS-B dev Spearman x100 ({a.stsb.name if a.stsb else 'n/a'})", "",
             "| option | sent/s (min–max) | STS-B 384 | 128 | 64 | min cos vs fp32 | MB | load |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['option']} | error: {r['error'][:80]} | | | | | | |")
            continue
        s = r.get("stsb_spearman", {})
        lines.append(
            f"| {r['option']} | {r['sent_s']:.0f} ({r['sent_s_range'][0]:.0f}–{r['sent_s_range'][1]:.0f}) | "
            f"{s.get('384', '–')} | {s.get('128', '–')} | {s.get('64', '–')} | {r['min_cos_vs_fp32']:.4f} | "
            f"{r['size_mb']} | {r['load']} |"
        )
    (a.out / "int8.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
