"""Export + verification of tiny random models of every supported family and every ST pooling mode."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mrl_export
from mrl_export import ExportError
from mrl_export._testing import make_custom_code_model, make_tiny_st_model

from mrl_infer import Embedder
from mrl_infer._quality import truncate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sts_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small STS-style file, so the int8 Spearman path runs without ../shared (and fast)."""
    path = tmp_path_factory.mktemp("sts") / "dev.tsv"
    words = ["cat", "dog", "car", "tree", "music", "river", "bread", "city"]
    rows = ["sentence1\tsentence2\tscore"]
    for i in range(40):
        a, b = words[i % 8], words[(i * 3) % 8]
        rows.append(f"A {a} is near the {b}.\tThe {b} sees a {a} {i}.\t{(i * 7) % 6}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _check_parity(manifest: dict[str, Any], int8_min: float = 0.95, fp16_min: float = 0.999) -> None:
    for name, variant in manifest["variants"].items():
        dims = variant["parity"]["dims"]
        assert dims, f"{name}: no parity figures"
        for d, m in dims.items():
            floor = {"fp32": 0.99999, "int8": int8_min, "fp16": fp16_min}[name]
            assert m["min_cosine"] >= floor, f"{name} dim {d}: {m}"


RUNTIME_TEXTS = [
    "a short one",
    "A somewhat longer sentence, so that the batch is padded for the others.",
    "x",
    "Numbers 1 2 3 and punctuation!? mixed in with words " * 3,
]


def _check_runtime(
    src: Path, out: Path, manifest: dict[str, Any], prompt_name: str | None = None, **st_kwargs: Any
) -> None:
    """The export through the runtime (mrl_infer.Embedder, fp32) vs sentence-transformers (PyTorch) itself.

    Not the export's own parity figures: the runtime's tokenizer, batching, padding side and
    prompt_length handling, against the PyTorch model, at each declared dim (truncated, renormalized).
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(src), device="cpu", **st_kwargs)
    ref = model.encode(
        RUNTIME_TEXTS, prompt_name=prompt_name, normalize_embeddings=False, convert_to_numpy=True
    )
    with Embedder(out, variant="fp32", device="cpu") as emb:
        for d in manifest["matryoshka_dims"] or [manifest["embedding_dim"]]:
            got = emb.encode(RUNTIME_TEXTS, dim=d, prompt_name=prompt_name)
            cos = (truncate(got, d) * truncate(ref, d)).sum(axis=1)
            assert cos.min() >= 0.9999, f"dim {d}: runtime vs PyTorch cosines {np.round(cos, 6)}"


FAMILIES: dict[str, dict[str, Any]] = {
    "bert": {"inputs": ["input_ids", "attention_mask", "token_type_ids"]},
    "mpnet": {"inputs": ["input_ids", "attention_mask"]},
    "xlm-roberta": {"inputs": ["input_ids", "attention_mask"]},
    "modernbert": {"inputs": ["input_ids", "attention_mask"]},
    # EmbeddingGemma layout: bidirectional Gemma3TextModel, mean pooling, two Dense layers, Normalize.
    "gemma3": {"inputs": ["input_ids", "attention_mask"], "dense": [(64, "identity"), (24, "identity")]},
    # Qwen3-Embedding layout: decoder, last-token pooling, left padding, EOS appended.
    "qwen3": {"inputs": ["input_ids", "attention_mask"], "padding_side": "left"},
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_exports_and_verifies(tmp_path: Path, family: str, sts_tsv: Path) -> None:
    spec = FAMILIES[family]
    src = make_tiny_st_model(tmp_path / "st", family, dense=spec.get("dense", ()))
    manifest = mrl_export.export(
        src,
        tmp_path / "out",
        variants=("fp32", "int8", "fp16"),
        dims=[16, 8],
        validation_data=sts_tsv,
        show_progress=False,
    )
    assert manifest["inputs"] == spec["inputs"]
    assert manifest["tokenizer"]["padding_side"] == spec.get("padding_side", "right")
    expected_dim = spec["dense"][-1][0] if "dense" in spec else 32
    assert manifest["embedding_dim"] == expected_dim
    _check_parity(manifest)
    assert set(manifest["variants"]["fp32"]["parity"]["dims"]) == {str(expected_dim), "16", "8"}
    assert "stsb_spearman_delta_vs_fp32" in manifest["variants"]["int8"]["parity"]
    assert manifest["variants"]["fp16"]["target"] == "cuda"
    _check_runtime(src, tmp_path / "out", manifest)
    if family == "gemma3":
        assert manifest["pooling"]["post_pooling"] == ["Dense(32->64, Identity)", "Dense(64->24, Identity)"]
    if family == "qwen3":
        assert manifest["pooling"]["modes"] == ["lasttoken"]


def test_custom_code_needs_trust_remote_code(tmp_path: Path, sts_tsv: Path) -> None:
    src = make_custom_code_model(tmp_path / "custom")
    with pytest.raises(ExportError, match="trust-remote-code"):
        mrl_export.export(src, tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()
    manifest = mrl_export.export(
        src, tmp_path / "out", trust_remote_code=True, validation_data=sts_tsv, show_progress=False
    )
    assert manifest["source"]["trust_remote_code"] is True
    assert manifest["source"]["model_type"] == "tiny_encoder"
    _check_parity(manifest)
    _check_runtime(src, tmp_path / "out", manifest, trust_remote_code=True)


POOLINGS: list[tuple[str, Any, dict[str, Any]]] = [
    ("bert", "cls", {}),
    ("bert", "max", {}),
    ("bert", "mean", {}),
    ("bert", "mean_sqrt_len_tokens", {}),
    ("bert", "weightedmean", {}),
    ("bert", "lasttoken", {}),  # right padding
    ("qwen3", "cls", {}),  # first real token under left padding
    ("qwen3", "max", {}),  # max over real tokens under left padding
    # (weightedmean under left padding is not tested: ST weights absolute positions, pads included, so the
    # ST embedding itself depends on how much padding the batch adds; the graph reproduces that formula.)
    ("bert", ("cls", "mean"), {}),  # several modes, concatenated
    ("bert", "mean", {"layer_norm": True, "dense": [(16, "tanh")]}),  # nomic-style LayerNorm, Dense+Tanh
    ("bert", "mean", {"include_prompt": False}),
    ("qwen3", "lasttoken", {"include_prompt": False}),
    ("qwen3", "mean", {"include_prompt": False}),  # prompt exclusion under left padding
]


@pytest.mark.parametrize(("family", "mode", "extra"), POOLINGS, ids=lambda x: str(x))
def test_pooling_modes(tmp_path: Path, family: str, mode: Any, extra: dict[str, Any], sts_tsv: Path) -> None:
    kwargs = dict(extra)
    if not kwargs.get("include_prompt", True):
        kwargs["prompts"] = {"query": "Represent this query for retrieving documents: "}
    src = make_tiny_st_model(tmp_path / "st", family, pooling_mode=mode, **kwargs)
    manifest = mrl_export.export(
        src, tmp_path / "out", variants=("fp32",), validation_data=sts_tsv, show_progress=False
    )
    _check_parity(manifest)
    prompt_name = None if kwargs.get("include_prompt", True) else "query"
    _check_runtime(src, tmp_path / "out", manifest, prompt_name=prompt_name)
    modes = [mode] if isinstance(mode, str) else list(mode)
    assert manifest["pooling"]["modes"] == modes
    if not kwargs.get("include_prompt", True):
        assert manifest["inputs"][-1] == "prompt_length"
        assert manifest["pooling"]["include_prompt"] is False
        lengths = manifest["pooling"]["prompt_lengths"]
        assert lengths["query"] > 0
        parity = manifest["variants"]["fp32"]["parity"]
        assert parity["prompt"] == kwargs["prompts"]["query"]
    else:
        assert "prompt_length" not in manifest["inputs"]
    if extra.get("layer_norm"):
        assert manifest["pooling"]["post_pooling"] == ["Dense(32->16, Tanh)", "LayerNorm"]
