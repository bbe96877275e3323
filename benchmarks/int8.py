"""Compare int8 quantization options on speed and STS-B quality (mrl_infer, same fp32 source graph).

    python -m benchmarks.int8 [--options a,b,...] [--texts 2000] [--stsb ../shared/data/stsb/dev.tsv]

Each option (export/_int8_options.py) quantizes our fp32 ``model.onnx``; each resulting model dir is
measured in its own process: sentences/s at batch 32 (median of 3 passes), STS-B Spearman x100 at
dims 384/128/64, and min cosine against the fp32 graph. Writes ``<out>/int8.json`` and ``int8.md``.

Per-row activation quantization (export/_rowquant.py), against onnxruntime's per-tensor one::

    python -m benchmarks.int8 --rowquant quality [--model-dir DIR] [--st-dir ST_DIR] [--variants ...]
    flock /tmp/mrl-cpu.lock python -m benchmarks.int8 --rowquant speed [--model-dir DIR] [--variants ...]

``quality``: at every Matryoshka dim, min / mean cosine against PyTorch fp32 (sentence-transformers,
when ``--st-dir`` is given) over the first 500 corpus texts, batch independence (min cosine between
``encode(batch_size=1)`` and ``encode(batch_size=128)``) and STS-B dev Spearman x100. ``speed``:
sentences/s at batch 32 over 1,000 corpus texts, all variants in one process, interleaved passes
(``fp32``: the dir's fp32 file, for scale). ``saturation``: how often AVX2's u8s8 kernel (VPMADDUBSW, int16
pair sums) would saturate on the graph's real u8 activations over 64 texts (an emulation in numpy).
A variant is ``BASE:ROWQ``: BASE ``own`` (the model dir's int8 file) or an option of
export/_int8_options.py (quantized from the dir's fp32 ``model.onnx``); ROWQ ``pt`` (unchanged,
per-tensor) or ``sym127``, ``sym63``, ``asym127``, ``asym63`` (the rewrite's mode and levels; ``-std``
suffix on the 127 ones: standard ONNX ops only). In ``speed``, ``BASE:ROWQ@u8u8`` (or ``@u8s8``) forces
that int8 kernel (``$MRL_INFER_INT8_KERNEL``) for the variant.
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


def _scratch_dir(src: Path, out: Path) -> tuple[Path, dict]:
    """A fresh hidden sibling of ``out`` holding ``src``'s tokenizer files, and ``src``'s manifest."""
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    manifest = json.loads((src / "mrl_infer.json").read_text())
    for f in manifest["tokenizer"]["files"]:
        shutil.copy(src / f, tmp / f)
    return tmp, manifest


def _weight_range(option: str) -> str:
    """The manifest's ``weight_range`` of an option's int8 file: it picks the runtime's int8 kernel
    (full-range s8 weights run as u8u8 on x86 without VNNI, mrl_infer._session.int8_kernel)."""
    from mrl_export._int8_options import OPTIONS

    o = OPTIONS[option]
    return "full" if o["weight"] == "QInt8" and not o["reduce_range"] else "reduced"


def build(option: str, ours: Path, root: Path) -> Path:
    """A model dir identical to ``ours`` except that its int8 file is quantized with ``option``."""
    from mrl_export._int8_options import quantize_option

    out = root / option
    if (out / "mrl_infer.json").is_file():
        return out
    tmp, manifest = _scratch_dir(ours, out)
    calibration = None
    if option.startswith("static"):
        calibration = _calibration_feeds(ours)
    t = time.perf_counter()
    note = quantize_option(ours / "model.onnx", tmp / "model_int8.onnx", option, calibration)
    v = manifest["variants"]["int8"]
    v.update(file="model_int8.onnx", sha256=None, notes=note, weight_range=_weight_range(option))
    for key in ("external_data", "external_data_sha256"):
        v.pop(key, None)
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


#: ROWQ -> (mode, levels, fused); "-std": standard ONNX ops only (no QuantizeLinear/MatMulIntegerToFloat)
ROWQ = {"pt": None, "sym127": ("sym", 127, True), "sym63": ("sym", 63, True), "asym127": ("asym", 127, True),
        "asym63": ("asym", 63, True), "sym127-std": ("sym", 127, False),
        "asym127-std": ("asym", 127, False)}  # fmt: skip
ROWQ_DEFAULT_VARIANTS = "own:pt,own:sym127,own:asym127,own:sym63,own:asym63"


def rowquant_dir(variant: str, model_dir: Path, root: Path) -> Path:
    """A model dir like ``model_dir`` whose int8 file is ``variant`` (``BASE:ROWQ``, see the docstring)."""
    from mrl_export._rowquant import rowquant_file

    base, rq = variant.split(":")
    src = model_dir / "model_int8.onnx"
    if base != "own":
        src = build(base, model_dir, root) / "model_int8.onnx"
    if ROWQ[rq] is None and base == "own":
        return model_dir
    out = root / variant.replace(":", "_")
    if (out / "mrl_infer.json").is_file():
        return out
    tmp, manifest = _scratch_dir(model_dir, out)
    if ROWQ[rq] is None:
        shutil.copy(src, tmp / "model_int8.onnx")
        note = f"{base}, per-tensor activations"
    else:
        mode, levels, fused = ROWQ[rq]
        note = rowquant_file(src, tmp / "model_int8.onnx", mode=mode, levels=levels, fused=fused)
    v = dict(manifest["variants"]["int8"], file="model_int8.onnx", sha256=None, notes=note)
    for key in ("parity", "external_data", "external_data_sha256"):  # one self-contained file now
        v.pop(key, None)
    if base != "own":  # the option's weights, not the source dir's, decide the runtime's kernel
        v["weight_range"] = _weight_range(base)
    manifest["variants"] = {"int8": v}
    (tmp / "mrl_infer.json").write_text(json.dumps(manifest, indent=1))
    tmp.rename(out)
    return out


def _st_reference(st_dir: Path, texts: list[str], cache: Path) -> np.ndarray:
    """PyTorch fp32 embeddings (sentence-transformers, CPU), cached by the texts' hash."""
    import hashlib

    key = hashlib.sha256(("\n".join(texts) + str(st_dir)).encode()).hexdigest()[:16]
    path = cache / f"st-ref-{key}.npy"
    if path.is_file():
        return np.load(path)
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_dir), device="cpu")
    ref = st.encode(texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    np.save(path, ref)
    return np.asarray(ref)


def _cos(a: np.ndarray, b: np.ndarray, dim: int) -> np.ndarray:
    from mrl_infer._quality import truncate

    return np.sum(truncate(a, dim) * truncate(b, dim), axis=1)


def rowquant_quality(
    variants: list[str], model_dir: Path, st_dir: Path | None, stsb: Path | None, work: Path, n: int
) -> list[dict]:
    from mrl_infer import Embedder
    from mrl_infer._quality import load_sts, sts_spearman_by_dim

    texts, _ = corpus_mod.load(None, n)
    dims = json.loads((model_dir / "mrl_infer.json").read_text())["matryoshka_dims"]
    ref = _st_reference(st_dir, texts, work) if st_dir else None
    sts = load_sts(stsb) if stsb is not None and stsb.is_file() else None
    rows = []
    for variant in variants:
        d = rowquant_dir(variant, model_dir, work)
        t = time.perf_counter()
        emb = Embedder(d, variant="int8", device="cpu")
        e1 = emb.encode(texts, batch_size=1, normalize_embeddings=False)
        e128 = emb.encode(texts, batch_size=128, normalize_embeddings=False)
        note = json.loads((d / "mrl_infer.json").read_text())["variants"]["int8"]["notes"]
        row: dict = {"variant": variant, "note": note,
                     "size_mb": round((d / "model_int8.onnx").stat().st_size / 1e6, 1)}  # fmt: skip
        for dim in dims:
            r = row.setdefault(str(dim), {})
            r["batch_indep_min"] = round(float(_cos(e1, e128, dim).min()), 5)
            if ref is not None:
                for name, e in (("bs128", e128), ("bs1", e1)):
                    c = _cos(e, ref, dim)
                    r[f"vs_torch_min_{name}"] = round(float(c.min()), 5)
                    r[f"vs_torch_mean_{name}"] = round(float(c.mean()), 5)
        if sts is not None:
            scores = sts_spearman_by_dim(
                lambda t, emb=emb: emb.encode(t, normalize_embeddings=False), sts, dims
            )
            for dim, v in scores.items():
                row[str(dim)]["stsb"] = round(v, 2)
        row["seconds"] = round(time.perf_counter() - t, 1)
        row["load"] = round(os.getloadavg()[0], 2)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    if ref is not None and sts is not None and st_dir is not None:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(st_dir), device="cpu")
        scores = sts_spearman_by_dim(lambda t: st.encode(t, batch_size=32, convert_to_numpy=True), sts, dims)
        rows.append({"variant": "torch-fp32", **{str(k): {"stsb": round(v, 2)} for k, v in scores.items()}})
    return rows


def rowquant_speed(variants: list[str], model_dir: Path, work: Path, n: int, passes: int) -> list[dict]:
    """sentences/s at batch 32, every variant in this process, passes interleaved (A B C A B C ...)."""
    from mrl_infer import Embedder
    from mrl_infer._session import INT8_KERNEL_ENV

    texts, _ = corpus_mod.load(None, n)
    embs = {}
    for v in variants:
        if v == "fp32":
            embs[v] = Embedder(model_dir, variant="fp32", device="cpu")
            continue
        name, _, kernel = v.partition("@")  # BASE:ROWQ@u8u8 forces that int8 kernel
        old = os.environ.pop(INT8_KERNEL_ENV, None)
        if kernel:
            os.environ[INT8_KERNEL_ENV] = kernel
        try:
            embs[v] = Embedder(rowquant_dir(name, model_dir, work), variant="int8", device="cpu")
        finally:
            os.environ.pop(INT8_KERNEL_ENV, None)
            if old is not None:
                os.environ[INT8_KERNEL_ENV] = old
    for e in embs.values():
        e.encode(texts[:128], batch_size=32)
    times: dict[str, list[float]] = {v: [] for v in variants}
    load0 = os.getloadavg()[0]
    for _ in range(passes):
        for v, e in embs.items():
            t = time.perf_counter()
            e.encode(texts, batch_size=32)
            times[v].append(time.perf_counter() - t)
    load1 = os.getloadavg()[0]
    return [{"variant": v, "sent_s": round(n / statistics.median(ts), 1),
             "sent_s_range": [round(n / max(ts), 1), round(n / min(ts), 1)], "passes": passes,
             "threads": embs[v].threads if hasattr(embs[v], "threads") else None,
             "int8_kernel": embs[v].int8_kernel,
             "load_before": round(load0, 2), "load_after": round(load1, 2)}
            for v, ts in times.items()]  # fmt: skip


def rowquant_saturation(variants: list[str], model_dir: Path, work: Path, n: int) -> list[dict]:
    """How often AVX2's VPMADDUBSW would saturate: int16 pair sums a[2j]*w[2j,n] + a[2j+1]*w[2j+1,n] of the
    raw u8 activations (captured from the graph on ``n`` corpus texts, real tokens only) and s8 weights."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    texts, _ = corpus_mod.load(None, n)
    rows = []
    for variant in variants:
        d = rowquant_dir(variant, model_dir, work)
        manifest = json.loads((d / "mrl_infer.json").read_text())
        m = onnx.load(str(d / "model_int8.onnx"))
        inits = {i.name: i for i in m.graph.initializer}
        gemms = [x for x in m.graph.node if x.op_type in ("MatMulInteger", "MatMulIntegerToFloat")]
        names = sorted({x.input[0] for x in gemms})
        for name in names:
            m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.UINT8, None))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.enable_padding(
            pad_id=manifest["tokenizer"]["pad_token_id"], pad_token=manifest["tokenizer"]["pad_token"]
        )
        tok.enable_truncation(manifest["max_seq_length"])
        pairs = sat = outs = outs_hit = max_raw = 0
        signed = True
        for i in range(0, len(texts), 32):
            enc = tok.encode_batch(texts[i : i + 32])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            feed = {k: v for k, v in feed.items() if k in manifest["inputs"]}
            acts = dict(zip(names, sess.run(names, feed), strict=True))
            for g in gemms:
                w8 = numpy_helper.to_array(inits[g.input[1]])
                signed = signed and w8.dtype == np.int8
                a = acts[g.input[0]][mask.astype(bool)].astype(np.int32)
                w = w8.astype(np.int32)
                max_raw = max(max_raw, int(a.max()))
                for r0 in range(0, len(a), 128):
                    blk = a[r0 : r0 + 128]
                    p = blk[:, 0::2, None] * w[None, 0::2, :] + blk[:, 1::2, None] * w[None, 1::2, :]
                    over = (p > 32767) | (p < -32768)
                    pairs += p.size
                    sat += int(over.sum())
                    outs += blk.shape[0] * w.shape[1]
                    outs_hit += int(over.any(axis=1).sum())
        rows.append({"variant": variant, "weights_s8": signed, "max_raw_u8": max_raw,
                     "saturating_pairs": sat / pairs, "outputs_hit": outs_hit / outs,
                     "note": "u8u8 GEMM: no VPMADDUBSW" if not signed else ""})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def rowquant_main(a: argparse.Namespace) -> int:
    model_dir = a.model_dir or models.ensure_ours(a.ours)
    work = a.work / ("rowquant-" + model_dir.name)
    work.mkdir(parents=True, exist_ok=True)
    variants = a.variants.split(",")
    if a.rowquant == "quality":
        rows = rowquant_quality(variants, model_dir, a.st_dir, a.stsb, work, a.texts or 500)
    elif a.rowquant == "saturation":
        rows = rowquant_saturation(variants, model_dir, work, a.texts or 64)
    else:
        rows = rowquant_speed(variants, model_dir, work, a.texts or 1000, a.passes)
    out = {"mode": a.rowquant, "model_dir": str(model_dir), "stsb": str(a.stsb),
           "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "rows": rows}  # fmt: skip
    a.out.mkdir(parents=True, exist_ok=True)
    name = a.out / f"int8_rowquant_{a.rowquant}_{model_dir.name}.json"
    name.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


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
    p.add_argument("--rowquant", choices=("quality", "speed", "saturation"), help="per-row activations")
    p.add_argument("--model-dir", type=Path, help="--rowquant: the model dir (default: --ours)")
    p.add_argument("--st-dir", type=Path, help="--rowquant quality: sentence-transformers reference dir")
    p.add_argument("--variants", default=ROWQ_DEFAULT_VARIANTS, help="--rowquant: BASE:ROWQ,...")
    a = p.parse_args(argv)
    if a.rowquant:
        if a.texts == 2000:  # the option comparison's default; --rowquant picks 500 / 1,000
            a.texts = 0
        return rowquant_main(a)
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
