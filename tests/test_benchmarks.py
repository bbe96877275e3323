"""Smoke test of the benchmark harness: every runner works and agrees with PyTorch (no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import corpus, models, run


def test_corpus_generator_is_deterministic_and_long_tailed() -> None:
    a, b = corpus.generate(500), corpus.generate(500)
    assert a == b
    words = np.array([len(t.split()) for t in a])
    assert words.min() >= 5 and words.max() <= 120 and 15 <= np.median(words) <= 30


MINILM_CONFIG = {
    "num_hidden_layers": 6,
    "hidden_size": 384,
    "intermediate_size": 1536,
    "num_attention_heads": 12,
}


def _matmul_count(n_tokens: int, cfg: dict[str, int]) -> int:
    """FLOPs as 2*m*k*n summed over every matmul of one BERT layer stack, listed shape by shape."""
    L, h, i, heads = n_tokens, cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    dh = h // heads
    per_layer = [(L, h, h)] * 4 + [(L, h, i), (L, i, h)]  # Q, K, V, O projections; FFN up, down
    per_layer += [(L, dh, L)] * heads + [(L, L, dh)] * heads  # Q K^T and softmax(.) V, per head
    return cfg["num_hidden_layers"] * sum(2 * m * k * n for m, k, n in per_layer)


@pytest.mark.parametrize("n_tokens", [1, 7, 128, 256])
def test_flops_formula(n_tokens: int) -> None:
    """At L > 1 the attention's 2 * 2 * L^2 * h terms are visible (at L = 1 they are a 0.1% rounding)."""
    cfg = MINILM_CONFIG
    got = models.flops_per_text(
        n_tokens, layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], inter=cfg["intermediate_size"]
    )
    assert got == _matmul_count(n_tokens, cfg)
    assert models.flops_per_text(n_tokens) == got  # the defaults are all-MiniLM-L6-v2's


def test_flops_formula_against_torch_flop_counter() -> None:
    """An independent count: torch's FlopCounterMode on a BertModel with MiniLM's shapes (random weights)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch.utils.flop_counter import FlopCounterMode

    cfg = transformers.BertConfig(**MINILM_CONFIG, vocab_size=100, attn_implementation="eager")
    model = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    for n_tokens in (9, 64):
        ids = torch.randint(0, 100, (1, n_tokens))
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        assert counter.get_total_flops() == models.flops_per_text(n_tokens), n_tokens


def test_harness_smoke(minilm_model_dir: Path, tmp_path: Path) -> None:
    """Tiny corpus, one pass: mrl_infer, the bare loop, sentence-transformers (torch and ONNX), FastEmbed
    where importable; each runner in its own process, parity checked against PyTorch."""
    pytest.importorskip("sentence_transformers")
    texts = corpus.generate(12)
    f = tmp_path / "corpus.txt"
    f.write_text("\n".join(texts) + "\n", encoding="utf-8")
    systems = ["mrl_infer", "bare", "bare_sorted", "st_onnx", "st_torch"]
    if run.find_bench_python(None) is not None:
        systems.append("fastembed")
    rc = run.main([
        "--corpus", str(f), "--ours", str(minilm_model_dir), "--out", str(tmp_path / "out"),
        "--systems", ",".join(systems), "--precisions", "fp32", "--passes", "1", "--parity-texts", "12",
        "--batch-sizes", "1,4", "--b1-texts", "3", "--no-gemm",
    ])  # fmt: skip
    report = json.loads((tmp_path / "out" / "latest.json").read_text())
    errors = [r for r in report["results"] if "error" in r]
    assert rc == 0 and not errors, errors
    assert {r["system"] for r in report["results"]} == set(systems)
    for r in report["results"]:
        assert r["batches"]["4"]["texts"] == len(texts)
        assert r["min_cos_vs_torch"] > 0.9999, (r["system"], r["min_cos_vs_torch"])
    assert "| mrl_infer | fp32 |" in (tmp_path / "out" / "latest.md").read_text()


def test_peer_graph_is_our_graph_cut_before_pooling(minilm_model_dir: Path) -> None:
    """The transformer-only graph the peers run gives our pooled embedding after mean pooling (int8 too)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    peer = models.ensure_peer(minilm_model_dir)
    tok = Tokenizer.from_file(str(minilm_model_dir / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(corpus.generate(6))
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    for precision in ("fp32", "int8"):
        ours = ort.InferenceSession(str(minilm_model_dir / models.OUR_FILES[precision]))
        theirs = ort.InferenceSession(str(peer / models.PEER_FILES[precision]))
        pooled = ours.run(None, feeds)[0]
        hidden = theirs.run(["last_hidden_state"], feeds)[0]
        m = mask[..., None]
        np.testing.assert_allclose((hidden * m).sum(1) / m.sum(1), pooled, atol=1e-5)


@pytest.mark.skipif(importlib.util.find_spec("fastembed") is None, reason="fastembed is not installed")
def test_fastembed_runner_in_process(minilm_model_dir: Path) -> None:
    from benchmarks.worker import load_system

    peer = models.ensure_peer(minilm_model_dir)
    encode, _ = load_system("fastembed", "fp32", minilm_model_dir, peer, "cpu")
    assert encode(corpus.generate(3), 2).shape == (3, 384)
