"""One system, one precision, in its own process: cold start, throughput per batch size, RSS, parity rows.

Run by :mod:`benchmarks.run`; prints one JSON object on the last line of stdout. Nothing of the
other systems is imported here, so import time, cold start and RSS are the system's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

EncodeFn = Callable[[list[str], int], np.ndarray]
#: What each system imports before it can load a model (timed as its import time).
IMPORTS = {
    "mrl_infer": ("mrl_infer",),
    "st_torch": ("sentence_transformers",),
    "st_onnx": ("sentence_transformers", "optimum.onnxruntime"),
    "fastembed": ("fastembed",),
    "bare": ("onnxruntime", "tokenizers"),
    "bare_peer": ("onnxruntime", "tokenizers"),
    "bare_sorted": ("onnxruntime", "tokenizers"),
    "bare_peer_sorted": ("onnxruntime", "tokenizers"),
}


def _rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    VmHWM, not ru_maxrss: a child's ru_maxrss starts at the parent's peak (fork), VmHWM is reset by exec.
    """
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bare_loop(onnx_path: Path, tokenizer_path: Path, max_length: int, sort: bool = False) -> EncodeFn:
    """The floor: tokenizers ``encode_batch`` with padding, onnxruntime defaults, input order.

    ``sort``: batch longest text first by characters and restore the order afterwards, as
    sentence-transformers' ``encode`` does (so padding is not what the comparison measures).
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def encode(t: list[str], bs: int) -> np.ndarray:
        if sort:
            order = np.argsort([-len(x) for x in t], kind="stable")
            y = encode_in_order([t[i] for i in order], bs)
            out = np.empty_like(y)
            out[order] = y
            return out
        return encode_in_order(t, bs)

    def encode_in_order(t: list[str], bs: int) -> np.ndarray:
        out = []
        for i in range(0, len(t), bs):
            enc = tok.encode_batch(t[i : i + bs])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            y = sess.run(None, feeds)[0]
            out.append(y if y.ndim == 2 else _mean_pool(y, mask))
        return _normalize(np.concatenate(out))

    return encode


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)


# ----------------------------------------------------------------------------- systems
def load_system(system: str, precision: str, ours: Path, peer: Path, device: str) -> tuple[EncodeFn, dict]:
    """Import and build one system; returns ``encode(texts, batch_size) -> [n, 384] normalized``."""
    from benchmarks.models import OUR_FILES, PEER_FILES

    info: dict = {}
    if system == "mrl_infer":
        from mrl_infer import Embedder

        emb = Embedder(ours, variant=precision, device=device)
        info["file"] = str(ours / emb.manifest.variants[precision].file)
        info["providers"] = emb.providers
        return (lambda t, bs: emb.encode(t, batch_size=bs, show_progress_bar=False)), info

    if system in ("st_torch", "st_onnx"):
        from sentence_transformers import SentenceTransformer

        if system == "st_torch":
            from benchmarks.models import source_model_dir

            dev = "cuda" if device == "cuda" else "cpu"
            model = SentenceTransformer(str(source_model_dir()), device=dev)
            if precision == "fp16":
                model = model.half()
            info["file"] = str(source_model_dir() / "model.safetensors")
            import torch

            info["torch_threads"] = torch.get_num_threads()
        else:
            model = SentenceTransformer(
                str(peer), backend="onnx", device="cpu", model_kwargs={"file_name": PEER_FILES[precision]}
            )
            info["file"] = str(peer / PEER_FILES[precision])

        def st_encode(t: list[str], bs: int) -> np.ndarray:
            return model.encode(t, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True)

        return st_encode, info

    if system == "fastembed":
        from fastembed import TextEmbedding
        from fastembed.common.model_description import ModelSource, PoolingType

        name = f"bench/all-MiniLM-L6-v2-{precision}"
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType.MEAN,
            normalization=True,
            sources=ModelSource(hf="bench/none"),
            dim=384,
            model_file=PEER_FILES[precision],
        )
        model = TextEmbedding(model_name=name, specific_model_path=str(peer))
        info["file"] = str(peer / PEER_FILES[precision])

        def fe_encode(t: list[str], bs: int) -> np.ndarray:
            return np.stack(list(model.embed(t, batch_size=bs)))

        return fe_encode, info

    if system in ("bare", "bare_peer", "bare_sorted", "bare_peer_sorted"):
        mine = system in ("bare", "bare_sorted")
        path = ours / OUR_FILES[precision] if mine else peer / PEER_FILES[precision]
        info["file"] = str(path)
        sort = system.endswith("_sorted")
        return bare_loop(path, ours / "tokenizer.json", max_length=256, sort=sort), info

    raise ValueError(f"unknown system {system!r}")


# ----------------------------------------------------------------------------- measurement
def _summary(idx: np.ndarray, times: list[float], lengths: np.ndarray, flops: np.ndarray) -> dict:
    med = statistics.median(times)
    n = len(idx)
    return {
        "texts": n,
        "tokens": int(lengths[idx].sum()),
        "pass_s": [round(x, 3) for x in times],
        "sent_s": round(n / med, 1),
        "sent_s_min": round(n / max(times), 1),
        "sent_s_max": round(n / min(times), 1),
        "tok_s": round(lengths[idx].sum() / med, 1),
        "gflop_s": round(flops[idx].sum() / med / 1e9, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--system", required=True)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ours", type=Path, required=True)
    p.add_argument("--peer", type=Path, required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--batch-sizes", default="1,32,128")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--b1-texts", type=int, default=400, help="texts per pass at batch size 1")
    p.add_argument("--parity-texts", type=int, default=256)
    p.add_argument("--parity-out", type=Path)
    p.add_argument("--serve", action="store_true", help="take 'pass <bs>' / 'end' commands on stdin")
    p.add_argument("--spawned", type=float, required=True, help="time.time() when the parent spawned us")
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    for mod in IMPORTS[a.system]:
        __import__(mod)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode, info = load_system(a.system, a.precision, a.ours, a.peer, a.device)
    t_load = time.perf_counter() - t0
    encode(["The first embedding after process start."], 1)
    cold = time.time() - a.spawned
    rss_cold = _rss_mb()

    texts = a.corpus.read_text(encoding="utf-8").splitlines()
    from tokenizers import Tokenizer

    from benchmarks.models import flops_per_text

    tok = Tokenizer.from_file(str(a.ours / "tokenizer.json"))
    tok.enable_truncation(max_length=256)
    lengths = np.array([len(e.ids) for e in tok.encode_batch(texts)])
    flops = np.array([flops_per_text(int(n)) for n in lengths])

    parity = None
    if a.parity_texts:
        parity = encode(texts[: a.parity_texts], 32)
        if a.parity_out:
            np.save(a.parity_out, np.asarray(parity, dtype=np.float32))

    result: dict = {
        "system": a.system,
        "precision": a.precision,
        "device": a.device,
        **info,
        "import_s": round(t_import, 3),
        "load_s": round(t_load, 3),
        "cold_start_s": round(cold, 3),
        "rss_after_first_mb": round(rss_cold, 1),
        "batches": {},
    }
    times: dict[int, list[float]] = {}
    subsets: dict[int, np.ndarray] = {}

    def one_pass(bs: int) -> float:
        if bs not in subsets:
            n = min(a.b1_texts, len(texts)) if bs == 1 else len(texts)
            # Batch 1 runs an evenly spaced subset, so it keeps the corpus' length mix.
            subsets[bs] = np.linspace(0, len(texts) - 1, n).astype(int)
            encode([texts[i] for i in subsets[bs][: max(bs, 16)]], bs)  # warm-up: one batch
        sub = [texts[i] for i in subsets[bs]]
        t = time.perf_counter()
        out = encode(sub, bs)
        dt = time.perf_counter() - t
        assert len(out) == len(sub)
        times.setdefault(bs, []).append(dt)
        result["batches"][str(bs)] = _summary(subsets[bs], times[bs], lengths, flops)
        return dt

    if a.serve:
        # Driven by benchmarks.run: one pass per "pass <bs>" line, so that the passes of all systems
        # interleave and share the machine's load alike; "end" prints the result.
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = line.split()
            if cmd and cmd[0] == "pass":
                dt = one_pass(int(cmd[1]))
                print(json.dumps({"s": round(dt, 3), "rss": round(_rss_mb(), 1)}), flush=True)
            elif cmd and cmd[0] == "end":
                break
    else:
        for bs in [int(b) for b in a.batch_sizes.split(",")]:
            for _ in range(a.passes):
                one_pass(bs)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
