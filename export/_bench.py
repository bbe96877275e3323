"""Speed/accuracy comparison of graph options on one exported model (how the defaults were chosen).

``python -m mrl_export._bench MODEL_DIR CORPUS [--stsb DEV_TSV]`` takes an mrl-infer model directory
exported with ``--optimize none``, builds fp32 O1/O2/O3 graphs and int8 graphs (QInt8 with and without
reduce_range, QUInt8; from the plain and the O2 graph) in a scratch folder, then measures sentences/s in a
bare onnxruntime loop (texts sorted by length, batch 32, intra-op threads 2; rounds interleaved, best of
rounds reported, since the CPU is shared) and agreement with the plain fp32 graph.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mrl_export import _onnx, _verify


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # No spin-waiting: CPU time then measures work, which stays comparable when the CPU is shared.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _batches(manifest: dict[str, Any], model_dir: Path, texts: list[str], batch: int) -> list[dict[str, Any]]:
    tok = _verify.load_tokenizer(model_dir / "tokenizer.json", manifest["max_seq_length"])
    return [
        _verify.tokenize(
            tok,
            texts[i : i + batch],
            manifest["max_seq_length"],
            manifest["tokenizer"]["padding_side"],
            manifest["tokenizer"]["pad_token_id"],
            manifest["inputs"],
        ).arrays
        for i in range(0, len(texts), batch)
    ]


def _run(sess: Any, batches: list[dict[str, Any]]) -> tuple[float, float, np.ndarray]:
    """Wall seconds, process CPU seconds, embeddings."""
    t0, c0 = time.perf_counter(), time.process_time()
    outs = [sess.run(["sentence_embedding"], b)[0] for b in batches]
    return time.perf_counter() - t0, time.process_time() - c0, np.concatenate(outs)


def build_candidates(
    model_dir: Path, scratch: Path, model_type: str, heads: int, hidden: int
) -> dict[str, Path]:
    """fp32 optimize levels and int8 weight-type options as separate ONNX files."""
    from onnxruntime.quantization import QuantType

    plain = model_dir / "model.onnx"
    out: dict[str, Path] = {"fp32-plain": plain}
    for level in ("O1", "O2", "O3"):
        p = scratch / f"fp32_{level}.onnx"
        _onnx.optimize_fp32(plain, p, model_type, level, heads, hidden)
        out[f"fp32-{level}"] = p
    for base_name, base in (("plain", plain), ("O2", out["fp32-O2"])):
        for wname, wt, rr in (
            ("QInt8-rr", QuantType.QInt8, True),
            ("QInt8", QuantType.QInt8, False),
            ("QUInt8", QuantType.QUInt8, False),
        ):
            p = scratch / f"int8_{base_name}_{wname}.onnx"
            with _onnx._quiet():
                _onnx.dynamic_int8(base, p, per_channel=True, reduce_range=rr, weight_type=wt)
            out[f"int8-{base_name}-{wname}"] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--stsb", type=Path)
    ap.add_argument("--every", type=int, default=4, help="use every n-th corpus text (after sorting)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--stsb-pairs", type=int, default=300)
    args = ap.parse_args()
    manifest = json.loads((args.model_dir / "mrl_infer.json").read_text(encoding="utf-8"))
    texts = [t for t in args.corpus.read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = sorted(texts, key=len)[:: args.every]
    batches = _batches(manifest, args.model_dir, texts, args.batch)
    stsb = None
    if args.stsb:
        s1, s2, gold = _verify.load_stsb(args.stsb, n_pairs=args.stsb_pairs)
        stsb = (_batches(manifest, args.model_dir, s1, 64), _batches(manifest, args.model_dir, s2, 64), gold)
    with tempfile.TemporaryDirectory(dir=args.model_dir.parent) as tmp:
        # num_heads/hidden_size 0: the optimizer reads them from the graph.
        cands = build_candidates(
            args.model_dir, Path(tmp), manifest["source"].get("model_type", "bert"), 0, 0
        )
        sessions = {name: _session(p, args.threads) for name, p in cands.items()}
        best = {name: float("inf") for name in sessions}
        cpu = {name: float("inf") for name in sessions}
        outs: dict[str, np.ndarray] = {}
        for sess in sessions.values():  # warm-up
            _run(sess, batches[:2])
        for _ in range(args.rounds):
            for name, sess in sessions.items():
                dt, ct, emb = _run(sess, batches)
                best[name] = min(best[name], dt)
                cpu[name] = min(cpu[name], ct)
                outs[name] = emb
        ref = outs["fp32-plain"]
        print(
            f"{len(texts)} texts, batch {args.batch}, intra_op {args.threads}, best of {args.rounds} rounds"
        )
        print("sent/s: best wall-clock round; sent/CPU-s: sentences per CPU-second (all threads), best round")
        print(
            f"{'graph':<22} {'sent/s':>8} {'sent/CPU-s':>10} {'MB':>7} "
            f"{'min cos vs fp32':>16} {'STS-B rho':>10}"
        )
        for name in sessions:
            cos = _verify.compare(ref, outs[name], [ref.shape[1]])[str(ref.shape[1])]["min_cosine"]
            rho = ""
            if stsb is not None:
                a = np.concatenate([sessions[name].run(["sentence_embedding"], b)[0] for b in stsb[0]])
                b = np.concatenate([sessions[name].run(["sentence_embedding"], b)[0] for b in stsb[1]])
                an, bn = _verify.truncate_normalize(a, a.shape[1]), _verify.truncate_normalize(b, b.shape[1])
                rho = f"{_verify.spearman((an * bn).sum(1), stsb[2]):.5f}"
            mb = cands[name].stat().st_size / 1e6
            print(
                f"{name:<22} {len(texts) / best[name]:>8.1f} {len(texts) / cpu[name]:>10.1f} {mb:>7.1f} "
                f"{cos:>16.6f} {rho:>10}",
                flush=True,
            )


if __name__ == "__main__":
    main()
