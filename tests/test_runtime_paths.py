"""Runtime paths beyond the default load: variant choice, fp16 and external-data files through
Embedder, default prompts, the max_seq_length= and threads= overrides, physical_cores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mrl_infer import Embedder, ModelFormatError
from mrl_infer import _session as session_mod
from mrl_infer._embedder import Embedder as _E
from mrl_infer._manifest import parse_manifest
from tests.conftest import corpus_texts, linked_copy

TEXTS = [*corpus_texts(40), "", "word " * 300]
LONG = "The quick brown fox jumps over the lazy dog near the river bank. " * 8


def _edit_manifest(d: Path, **changes: Any) -> dict[str, Any]:
    man = json.loads((d / "mrl_infer.json").read_text())
    man.update(changes)
    (d / "mrl_infer.json").write_text(json.dumps(man))
    return man


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def add_fp16_variant(model_dir: Path) -> Path:
    """Add an fp16 variant (export's own convert_fp16 of the fp32 graph) to ``model_dir``."""
    from mrl_export import _onnx

    out = model_dir / "model_fp16.onnx"
    _onnx.convert_fp16(model_dir / "model.onnx", out)
    man = json.loads((model_dir / "mrl_infer.json").read_text())
    man["variants"]["fp16"] = {"file": out.name, "precision": "fp16", "target": "cuda", "sha256": _sha(out)}
    (model_dir / "mrl_infer.json").write_text(json.dumps(man))
    return model_dir


@pytest.fixture(scope="module")
def fp16_dir(minilm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mrl_export")
    return add_fp16_variant(linked_copy(minilm_model_dir, tmp_path_factory.mktemp("fp16") / "m"))


@pytest.fixture(scope="module")
def fp32(minilm_model_dir: Path) -> Embedder:
    return Embedder(minilm_model_dir, variant="fp32", device="cpu")


# ---------------------------------------------------------------- variant choice
def _manifest(variants: list[str], **extra: Any) -> Any:
    data = {
        "format_version": 1,
        "embedding_dim": 8,
        "max_seq_length": 16,
        "variants": {v: {"file": f"{v}.onnx", "precision": v} for v in variants},
        **extra,
    }
    return parse_manifest(data, Path("mrl_infer.json"))


@pytest.mark.parametrize(
    ("variants", "kind", "expected"),
    [
        (["fp32", "int8", "fp16"], "cpu", "fp32"),
        (["int8", "fp16"], "cpu", "int8"),
        (["fp16"], "cpu", "fp16"),
        (["fp32", "int8", "fp16"], "cuda", "fp16"),
        (["int8", "fp32"], "cuda", "fp32"),
        (["int8"], "cuda", "int8"),
    ],
)
def test_auto_variant_order(variants: list[str], kind: str, expected: str) -> None:
    assert _E._choose_variant(_manifest(variants), "auto", kind, Path(".")) == expected


def test_default_variant_in_manifest_wins_per_device() -> None:
    m = _manifest(["fp32", "int8", "fp16"], default_variant={"cpu": "int8"})
    assert _E._choose_variant(m, "auto", "cpu", Path(".")) == "int8"
    assert _E._choose_variant(m, "auto", "cuda", Path(".")) == "fp16"  # no cuda entry: the usual order
    assert _E._choose_variant(m, "fp32", "cpu", Path(".")) == "fp32"  # explicit beats the default
    missing = _manifest(["fp32"], default_variant={"cpu": "int8"})
    assert _E._choose_variant(missing, "auto", "cpu", Path(".")) == "fp32"  # absent default ignored


def test_default_variant_through_embedder(minilm_model_dir: Path, tmp_path: Path) -> None:
    d = linked_copy(minilm_model_dir, tmp_path / "m")
    assert Embedder(d, device="cpu").variant == "fp32"
    _edit_manifest(d, default_variant={"cpu": "int8"})
    emb = Embedder(d, device="cpu")
    assert emb.variant == "int8"
    ref = Embedder(minilm_model_dir, variant="int8", device="cpu").encode(TEXTS[:10])
    np.testing.assert_array_equal(emb.encode(TEXTS[:10]), ref)


# ---------------------------------------------------------------- fp16 and external data
def test_fp16_variant_loads_and_embeds_on_cpu(fp16_dir: Path, fp32: Embedder) -> None:
    emb = Embedder(fp16_dir, variant="fp16", device="cpu")
    assert emb.variant == "fp16" and emb.device == "cpu"
    out = emb.encode(TEXTS, dim=128)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    cos = np.sum(out * fp32.encode(TEXTS, dim=128), axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_external_data_model_through_embedder(minilm_model_dir: Path, tmp_path: Path, fp32: Embedder) -> None:
    import onnx

    d = linked_copy(minilm_model_dir, tmp_path / "m")
    model = onnx.load(str(minilm_model_dir / "model.onnx"))
    (d / "model.onnx").unlink()
    onnx.save(model, str(d / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    assert (d / "model.onnx").stat().st_size < 1_000_000 < (d / "model.onnx.data").stat().st_size
    man = json.loads((d / "mrl_infer.json").read_text())
    man["variants"]["fp32"].update(sha256=_sha(d / "model.onnx"), external_data=["model.onnx.data"])
    (d / "mrl_infer.json").write_text(json.dumps(man))
    emb = Embedder(d, variant="fp32", device="cpu")
    assert emb.manifest.variants["fp32"].external_data == ["model.onnx.data"]
    np.testing.assert_allclose(emb.encode(TEXTS, dim=64), fp32.encode(TEXTS, dim=64), atol=1e-6)
    (d / "model.onnx.data").unlink()
    with pytest.raises(ModelFormatError, match=r"model\.onnx"):
        Embedder(d, variant="fp32", device="cpu")


# ---------------------------------------------------------------- prompts and overrides
def test_default_prompt_name_applied_automatically(minilm_model_dir: Path, tmp_path: Path) -> None:
    d = linked_copy(minilm_model_dir, tmp_path / "m")
    _edit_manifest(d, prompts={"query": "query: "}, default_prompt_name="query")
    emb = Embedder(d, variant="fp32", device="cpu", dim=64)
    assert emb.default_prompt_name == "query"
    x = ["what is a matryoshka doll", "embeddings"]
    np.testing.assert_array_equal(emb.encode(x), emb.encode(x, prompt="query: "))
    np.testing.assert_allclose(emb.encode(x), emb.encode(["query: " + t for t in x], prompt=""), atol=1e-6)
    assert not np.allclose(emb.encode(x), emb.encode(x, prompt=""), atol=1e-3)  # the prompt matters


def test_max_seq_length_override_matches_pytorch(minilm_model_dir: Path, st_model, fp32: Embedder) -> None:
    emb = Embedder(minilm_model_dir, variant="fp32", device="cpu", max_seq_length=32)
    assert emb.max_seq_length == 32
    texts = [LONG, "short text", *corpus_texts(10)]
    before = st_model.max_seq_length
    st_model.max_seq_length = 32
    try:
        ref = st_model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    finally:
        st_model.max_seq_length = before
    out = emb.encode(texts)
    assert np.sum(out * ref, axis=1).min() >= 0.99999
    assert float(np.dot(out[0], fp32.encode(LONG))) < 0.999  # the default length embeds more of it
    for bad in (0, 257):
        with pytest.raises(ValueError, match="max_seq_length"):
            Embedder(minilm_model_dir, variant="fp32", device="cpu", max_seq_length=bad)


def test_threads_override_sets_intra_op_threads(minilm_model_dir: Path) -> None:
    emb = Embedder(minilm_model_dir, variant="fp32", device="cpu", threads=3)
    assert emb.threads == 3
    assert emb._session.session.get_session_options().intra_op_num_threads == 3
    default = Embedder(minilm_model_dir, variant="fp32", device="cpu")
    assert default.threads == session_mod.physical_cores()
    with pytest.raises(ValueError, match="threads"):
        Embedder(minilm_model_dir, threads=0)


# ---------------------------------------------------------------- physical_cores
def _cpuinfo(sockets: int, cores: int, threads: int) -> str:
    blocks, n = [], 0
    for _ in range(threads):
        for s in range(sockets):
            for c in range(cores):
                blocks.append(f"processor\t: {n}\nmodel name\t: X\nphysical id\t: {s}\ncore id\t\t: {c}\n")
                n += 1
    return "\n".join(blocks)


def test_count_physical_cores_ignores_hyperthreads() -> None:
    text = _cpuinfo(sockets=2, cores=4, threads=2)  # 16 processors, 8 cores; 8..15 are siblings of 0..7
    assert session_mod.count_physical_cores(text, set(range(16))) == 8
    assert session_mod.count_physical_cores(text, {0, 8}) == 1  # two threads of one core
    assert session_mod.count_physical_cores(text, {0, 1, 4}) == 3  # 4 is socket 1 core 0
    vm = "processor\t: 0\n\nprocessor\t: 1\n\nprocessor\t: 2\n"  # no topology fields
    assert session_mod.count_physical_cores(vm, {0, 1, 2}) == 3
    assert session_mod.count_physical_cores("", {0, 1}) == 2
    assert session_mod.count_physical_cores("processor: x\n", {0, 1, 2}) == 3  # unparsable


def test_physical_cores_reads_cpuinfo_and_affinity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(_cpuinfo(sockets=1, cores=4, threads=2))
    monkeypatch.setattr(session_mod, "CPUINFO", str(info))
    monkeypatch.setattr(session_mod.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert session_mod.physical_cores() == 4
    monkeypatch.setattr(session_mod.os, "sched_getaffinity", lambda pid: {0, 1, 4}, raising=False)
    assert session_mod.physical_cores() == 2
    monkeypatch.setattr(session_mod, "CPUINFO", str(tmp_path / "missing"))
    assert session_mod.physical_cores() == 3
