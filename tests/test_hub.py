"""Hub ids resolve through huggingface_hub's cache with HF_HUB_OFFLINE=1 (no test downloads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import Embedder, ModelFormatError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_cache(model_dir: Path, cache: Path, repo: str, files: list[str]) -> Path:
    """Lay out huggingface_hub's cache (refs + snapshots) as a real download of ``files`` would."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for name in files:
        os.link(model_dir / name, snap / name)
    return snap


def test_hub_id_from_cache_offline(minilm_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    man = json.loads((minilm_model_dir / "mrl_infer.json").read_text())
    # only what the int8 variant needs: the fp32 file is absent, as after a selective download
    files = ["mrl_infer.json", *man["tokenizer"]["files"], "model_int8.onnx"]
    _fake_hub_cache(minilm_model_dir, tmp_path, "acme/minilm-mrl", files)
    emb = Embedder("acme/minilm-mrl", dim=64, variant="int8", cache_dir=tmp_path)
    local = Embedder(minilm_model_dir, dim=64, variant="int8")
    np.testing.assert_array_equal(emb.encode(["a", "b c"]), local.encode(["a", "b c"]))
    assert emb.model_dir.name == COMMIT
    # fp32 was never downloaded, and offline it cannot be: the error names the file
    with pytest.raises(ModelFormatError, match=r"model\.onnx"):
        Embedder("acme/minilm-mrl", variant="fp32", cache_dir=tmp_path)
    # an explicit revision that is cached by commit hash works as well
    assert Embedder("acme/minilm-mrl", revision=COMMIT, variant="int8", cache_dir=tmp_path).dim == 384


def test_hub_repo_without_manifest(minilm_st_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(minilm_st_dir, tmp_path, "acme/plain-st", ["config.json"])
    with pytest.raises(ModelFormatError, match=r"acme/plain-st.*mrl_infer.json"):
        Embedder("acme/plain-st", cache_dir=tmp_path)


def test_unknown_id_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelFormatError, match=r"nobody/nothing.*not in the Hugging Face cache"):
        Embedder("nobody/nothing", cache_dir=tmp_path)
