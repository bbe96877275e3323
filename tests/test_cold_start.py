"""Cold start: what ``import mrl_infer`` and ``mrl-embed --help`` load, the lazy public API, and the
benchmark harness (benchmarks/cold_start.py). No timed asserts: the figures live in the harness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mrl_infer

HEAVY = (
    "numpy",
    "onnxruntime",
    "tokenizers",
    "torch",
    "transformers",
    "pyarrow",
    "ray",
    "starlette",
    "uvicorn",
)


def _loaded_after(code: str) -> list[str]:
    """Top-level packages among HEAVY that a fresh interpreter has imported after running ``code``."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_mrl_infer_loads_no_runtime() -> None:
    """The public names are imported on first use: ``import mrl_infer`` alone loads none of them."""
    assert _loaded_after("import mrl_infer") == []


def test_help_does_not_import_onnxruntime() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from mrl_infer.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, exc.code\n"
        "assert 'embed' in out.getvalue()\n"
    )
    loaded = _loaded_after(code)
    assert "onnxruntime" not in loaded and "tokenizers" not in loaded, loaded
    assert not {"torch", "transformers", "pyarrow", "ray", "starlette", "uvicorn"} & set(loaded), loaded


def test_help_does_not_import_numpy() -> None:
    code = "from mrl_infer.cli import build_parser\nbuild_parser().format_help()\n"
    assert "numpy" not in _loaded_after(code)


def test_version_does_not_import_the_runtime() -> None:
    code = (
        "from mrl_infer.cli import main\n"
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--version'])\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    assert "onnxruntime" not in _loaded_after(code)


def test_lazy_public_api() -> None:
    """Every name in __all__ resolves (attribute and from-import), to the defining module's object."""
    from mrl_infer import Embedder, Index, SearchResult, compute_ranges, load_manifest, similarity
    from mrl_infer._embedder import Embedder as embedder_cls
    from mrl_infer._manifest import load_manifest as load_fn
    from mrl_infer.search import Index as index_cls

    assert Embedder is embedder_cls and Index is index_cls and load_manifest is load_fn
    assert SearchResult is mrl_infer.SearchResult and callable(compute_ranges) and callable(similarity)
    for name in mrl_infer.__all__:
        assert getattr(mrl_infer, name) is not None, name
        assert name in dir(mrl_infer)
    assert _loaded_after("import mrl_infer\nassert mrl_infer.search.Index is mrl_infer.Index") == ["numpy"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mrl_infer.nope  # noqa: B018
    namespace: dict[str, object] = {}
    exec("from mrl_infer import *", namespace)
    assert set(mrl_infer.__all__) <= set(namespace)


def test_cold_start_harness_smoke(tmp_path: Path) -> None:
    """One run of each configuration writes both figures and the machine beside them."""
    from benchmarks import cold_start

    out = tmp_path / "cold.json"
    result = cold_start.main(["--runs", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["seconds"]) == {"verified-cached", "verify-every-load", "verify-off"}
    for figures in result["seconds"].values():
        assert {"first_vector", "exit", "import", "init", "encode"} <= set(figures)
        assert 0 < figures["first_vector"]["median"] <= figures["exit"]["median"]
    assert result["help_seconds"]["this tree"]["median"] > 0
    assert result["machine"]["cpu"] and isinstance(result["machine"]["isa"], list)
    assert result["loadavg_before"] and result["loadavg_after"]


# ---------------------------------------------------------------- external data keeps the hash check
# Weights as external data (memory-mapped by onnxruntime) cut session creation by more than half
# (docs/benchmarks.md); the manifest's ``sha256`` then covers only the small .onnx file, so the data
# files carry their own ``external_data_sha256``.
@pytest.fixture(scope="module")
def external_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    onnx = pytest.importorskip("onnx")
    from mrl_infer._hub import DEFAULT_MODEL_DIR
    from mrl_infer._integrity import sha256_file

    d = tmp_path_factory.mktemp("external") / "m"
    d.mkdir()
    for f in DEFAULT_MODEL_DIR.iterdir():
        if f.suffix != ".onnx":
            shutil.copy(f, d / f.name)
    model = onnx.load(str(DEFAULT_MODEL_DIR / "model_int8.onnx"))
    onnx.save_model(
        model, str(d / "model_int8.onnx"), save_as_external_data=True, location="model_int8.onnx.data"
    )
    man = json.loads((d / "mrl_infer.json").read_text())
    man["variants"]["int8"].update(
        sha256=sha256_file(d / "model_int8.onnx"),
        external_data=["model_int8.onnx.data"],
        external_data_sha256={"model_int8.onnx.data": sha256_file(d / "model_int8.onnx.data")},
    )
    (d / "mrl_infer.json").write_text(json.dumps(man))
    return d


@pytest.fixture
def counted_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from mrl_infer import _integrity

    monkeypatch.setenv("MRL_INFER_CACHE_DIR", str(tmp_path / "verified"))
    monkeypatch.delenv("MRL_INFER_VERIFY", raising=False)
    calls: list[str] = []
    real = _integrity.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(_integrity, "sha256_file", counting)
    return calls


def test_external_data_verified_once_then_cached(external_dir: Path, counted_hashes: list[str]) -> None:
    from mrl_infer import Embedder

    v = Embedder(external_dir, dim=64).encode(["hello"])
    assert counted_hashes == ["model_int8.onnx", "model_int8.onnx.data"]
    np.testing.assert_allclose(v, Embedder(dim=64).encode(["hello"]), atol=1e-5)
    counted_hashes.clear()
    Embedder(external_dir, dim=64)
    assert counted_hashes == []  # both files vouched for by their cached stat signatures


def test_damaged_external_data_refused_before_any_session(
    external_dir: Path, tmp_path: Path, counted_hashes: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mrl_infer import Embedder, ModelFormatError
    from mrl_infer import _embedder as embedder_mod

    d = tmp_path / "damaged"
    shutil.copytree(external_dir, d)
    data = d / "model_int8.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = bytes(4096)
    data.write_bytes(bytes(raw))
    opened: list[object] = []
    monkeypatch.setattr(embedder_mod, "OnnxSession", lambda *a: opened.append(a))
    with pytest.raises(ModelFormatError, match=r"model_int8\.onnx\.data: sha256 mismatch"):
        Embedder(d)
    assert opened == []


def test_external_data_sha256_must_name_listed_files(tmp_path: Path) -> None:
    from mrl_infer import ModelFormatError
    from mrl_infer._hub import DEFAULT_MODEL_DIR
    from mrl_infer._manifest import load_manifest, parse_manifest

    data = json.loads((DEFAULT_MODEL_DIR / "mrl_infer.json").read_text())
    data["variants"]["int8"]["external_data_sha256"] = {"other.data": "ab"}
    with pytest.raises(ModelFormatError, match=r"external_data_sha256 names \['other.data'\]"):
        parse_manifest(data, tmp_path / "mrl_infer.json")
    data["variants"]["int8"]["external_data_sha256"] = ["ab"]
    with pytest.raises(ModelFormatError, match="must map file names"):
        parse_manifest(data, tmp_path / "mrl_infer.json")
    # an optional field: absent from a manifest that has none, as before
    data["variants"]["int8"].pop("external_data_sha256")
    plain = parse_manifest(data, tmp_path / "m.json").to_dict()["variants"]["int8"]
    assert "external_data_sha256" not in plain
    # the shipped default lists its weights file and that file's digest
    shipped = load_manifest(DEFAULT_MODEL_DIR).to_dict()["variants"]["int8"]
    assert list(shipped["external_data_sha256"]) == shipped["external_data"] == ["model_int8.onnx.data"]
