"""Pre-optimized CPU graphs (``graph_optimization: "extended"``): same embeddings, optimizers skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mrl_infer import Embedder, ModelFormatError
from mrl_infer._manifest import load_manifest
from tests.conftest import corpus_texts, linked_copy


def _level(emb: Embedder) -> ort.GraphOptimizationLevel:
    return emb._session.session.get_session_options().graph_optimization_level


def test_preoptimized_int8_gives_identical_embeddings_and_skips_the_optimizers(
    minilm_model_dir: Path, tmp_path: Path
) -> None:
    from mrl_export.train import preoptimize_shipped

    d = linked_copy(minilm_model_dir, tmp_path / "m")
    manifest = json.loads((d / "mrl_infer.json").read_text())
    manifest["variants"]["int8"] = preoptimize_shipped(d, manifest["variants"]["int8"])
    (d / "mrl_infer.json").write_text(json.dumps(manifest))
    variant = load_manifest(d).variants["int8"]
    assert variant.graph_optimization == "extended"
    assert "pre-optimized by onnxruntime" in (variant.notes or "")
    texts = corpus_texts(96)
    plain = Embedder(minilm_model_dir, variant="int8", device="cpu")
    pre = Embedder(d, variant="int8", device="cpu")  # verifies the new sha256 too
    assert _level(plain) == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert _level(pre) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for bs in (1, 32):
        np.testing.assert_array_equal(pre.encode(texts, batch_size=bs), plain.encode(texts, batch_size=bs))


def test_the_shipped_default_is_preoptimized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRL_INFER_INT8_KERNEL", "u8s8")
    emb = Embedder()
    assert emb.manifest.variants[emb.variant].graph_optimization == "extended"
    assert _level(emb) == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    # the u8u8 kernel (x86 without VNNI) needs onnxruntime's extended pass that widens the weights
    monkeypatch.setenv("MRL_INFER_INT8_KERNEL", "u8u8")
    assert _level(Embedder()) == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


def test_an_unknown_graph_optimization_is_refused(minilm_model_dir: Path, tmp_path: Path) -> None:
    d = linked_copy(minilm_model_dir, tmp_path / "m")
    manifest = json.loads((d / "mrl_infer.json").read_text())
    manifest["variants"]["int8"]["graph_optimization"] = "all"
    (d / "mrl_infer.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match=r"variants\.int8\.graph_optimization is 'all'"):
        load_manifest(d)
    # absent is the usual case and is not written back as null
    assert "graph_optimization" not in json.dumps(load_manifest(minilm_model_dir).to_dict()["variants"])
