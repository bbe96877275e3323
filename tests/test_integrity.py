"""A damaged model file never loads, and a NaN/inf embedding is never returned (issue 11, item 1)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import Embedder, ModelFormatError, NonFiniteEmbeddingError, _integrity
from mrl_infer import _embedder as embedder_mod
from mrl_infer._hub import DEFAULT_MODEL_DIR
from tests.conftest import NAN_TRIGGER, make_nan_model


@pytest.fixture(autouse=True)
def verify_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private verified-files cache, and MRL_INFER_VERIFY at its default."""
    cache = tmp_path / "verify-cache"
    monkeypatch.setenv("MRL_INFER_CACHE_DIR", str(cache))
    monkeypatch.delenv("MRL_INFER_VERIFY", raising=False)
    return cache


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every full hash of a file, in order (the cache is proven by what is *not* hashed)."""
    calls: list[Path] = []
    real = _integrity.sha256_file

    def counting(path: Path) -> str:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(_integrity, "sha256_file", counting)
    return calls


def _real_copy(src: Path, dst: Path) -> Path:
    """A copy with its own bytes (no hard links): a test may damage it without touching ``src``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _largest_tensor_span(onnx_path: Path) -> tuple[Path, int, int]:
    """(file, offset, length) of the largest float initializer's raw bytes (the position embeddings of
    the int8 default, whose word embeddings and weights are int8): in the .onnx file itself, or in its
    external-data file (the shipped default keeps them there). Random bytes there decode to NaN/inf."""
    import onnx

    model = onnx.load(str(onnx_path))  # external data loaded too
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    tensor = max(floats, key=lambda t: len(t.raw_data))
    raw = tensor.raw_data
    for path in (onnx_path, *sorted(onnx_path.parent.glob(onnx_path.name + ".data"))):
        offset = path.read_bytes().find(raw[:4096])
        if offset >= 0:
            assert len(raw) > 100_000
            return path, offset, len(raw)
    raise AssertionError(f"{onnx_path}: the largest tensor's bytes are in no file")


@pytest.fixture(scope="module")
def damaged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model with its largest float tensor's bytes overwritten at random (same size, still a
    valid ONNX file): what a bad disk or a truncated-then-padded download leaves behind."""
    d = _real_copy(DEFAULT_MODEL_DIR, tmp_path_factory.mktemp("damaged") / "m")
    path, offset, length = _largest_tensor_span(d / "model_int8.onnx")
    size = path.stat().st_size
    noise = np.random.default_rng(11).integers(0, 256, size=length, dtype=np.uint8).tobytes()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(noise)
    assert path.stat().st_size == size
    return d


def _no_session(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record (and refuse) any ONNX Runtime session creation."""
    opened: list[Path] = []

    def refuse(path: Path, *args: object) -> None:
        opened.append(path)
        raise AssertionError(f"a session was opened on {path}")

    monkeypatch.setattr(embedder_mod, "OnnxSession", refuse)
    return opened


# ---------------------------------------------------------------- the sha256 check
def test_damaged_bytes_refused_before_any_session(damaged_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    variant = json.loads((damaged_dir / "mrl_infer.json").read_text())["variants"]["int8"]
    damaged, _, _ = _largest_tensor_span(damaged_dir / "model_int8.onnx")
    digests = {variant["file"]: variant["sha256"], **variant.get("external_data_sha256", {})}
    expected = digests[damaged.name]  # the file holding the overwritten weights
    actual = _integrity.sha256_file(damaged)
    opened = _no_session(monkeypatch)
    with pytest.raises(ModelFormatError) as info:
        Embedder(damaged_dir)
    msg = str(info.value)
    assert damaged.name in msg and expected in msg and actual in msg
    assert "verify=False" in msg and "MRL_INFER_VERIFY=0" in msg
    assert opened == []


@pytest.mark.parametrize("how", ["kwarg", "env"])
def test_opt_out_loads_the_damaged_file_and_nan_is_still_refused(
    damaged_dir: Path, monkeypatch: pytest.MonkeyPatch, hash_calls: list[Path], how: str
) -> None:
    """Opting out skips the hash; the non-finite guard still refuses the damaged weights' NaN rows."""
    if how == "env":
        monkeypatch.setenv("MRL_INFER_VERIFY", "0")
        emb = Embedder(damaged_dir)
    else:
        emb = Embedder(damaged_dir, verify=False)
    assert hash_calls == []
    texts = [f"sentence number {i} about a topic" for i in range(20)]
    with pytest.raises(NonFiniteEmbeddingError) as info:
        emb.encode(texts)
    assert info.value.indices and all(0 <= i < len(texts) for i in info.value.indices)


def test_explicit_verify_true_beats_the_env(damaged_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRL_INFER_VERIFY", "0")
    with pytest.raises(ModelFormatError, match="sha256 mismatch"):
        Embedder(damaged_dir, verify=True)


def test_cache_skips_rehash_until_the_file_changes(
    tmp_path: Path, hash_calls: list[Path], verify_cache: Path
) -> None:
    d = make_nan_model(tmp_path / "m")
    onnx_file = d / "model.onnx"
    Embedder(d)
    assert hash_calls == [onnx_file.resolve()]
    assert (verify_cache / _integrity.CACHE_FILE).is_file()
    Embedder(d)
    Embedder(d, dim=4)
    assert len(hash_calls) == 1, "a file with the same stat signature must not be hashed again"

    st = onnx_file.stat()
    os.utime(onnx_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched
    Embedder(d)
    assert len(hash_calls) == 2
    Embedder(d)
    assert len(hash_calls) == 2

    # rewritten with other bytes of the same size: the new signature forces a hash, which fails
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="sha256 mismatch"):
        Embedder(d)
    assert len(hash_calls) == 3
    with pytest.raises(ModelFormatError, match="sha256 mismatch"):
        Embedder(d)  # a failed check is never remembered


def test_unwritable_cache_dir_only_costs_a_hash(
    tmp_path: Path, hash_calls: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MRL_INFER_CACHE_DIR", str(blocker / "cache"))
    d = make_nan_model(tmp_path / "m")
    Embedder(d)
    Embedder(d)
    assert len(hash_calls) == 2


def test_variant_without_sha256_loads_unchecked(tmp_path: Path, hash_calls: list[Path]) -> None:
    d = make_nan_model(tmp_path / "m")
    Embedder(d)
    assert len(hash_calls) == 1
    man = json.loads((d / "mrl_infer.json").read_text())
    del man["variants"]["fp32"]["sha256"]
    (d / "mrl_infer.json").write_text(json.dumps(man))
    st = (d / "model.onnx").stat()
    os.utime(d / "model.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    Embedder(d)  # a changed file, but nothing to check it against: loaded, not hashed
    assert len(hash_calls) == 1


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MRL_INFER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _integrity.cache_dir() == tmp_path / "xdg" / "mrl_infer"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _integrity.cache_dir() == tmp_path / "home" / ".cache" / "mrl_infer"


# ---------------------------------------------------------------- non-finite embeddings
@pytest.fixture(scope="module")
def nan_emb(nan_model_dir: Path) -> Embedder:
    return Embedder(nan_model_dir, verify=False)


def _texts(bad: set[int], n: int) -> list[str]:
    # lengths differ a lot, so the length sort reorders rows: indices must still be input positions
    return [
        f"{'long ' * (i % 7)}text {i} {NAN_TRIGGER}" if i in bad else f"{'word ' * (i % 5)}ok {i}"
        for i in range(n)
    ]


def test_encode_names_the_nan_rows(nan_emb: Embedder) -> None:
    texts = _texts({1, 6}, 10)
    assert np.isfinite(nan_emb.encode([t for i, t in enumerate(texts) if i not in (1, 6)])).all()
    with pytest.raises(NonFiniteEmbeddingError) as info:
        nan_emb.encode(texts, batch_size=3)
    assert info.value.indices == [1, 6]
    assert "2 input(s): texts[1], texts[6]" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert again.indices == [1, 6]
    with pytest.raises(NonFiniteEmbeddingError) as one:
        nan_emb.encode(f"a single {NAN_TRIGGER}")
    assert one.value.indices == [0]


def test_encode_message_shows_first_few_and_the_count(nan_emb: Embedder) -> None:
    bad = set(range(3, 30, 3))
    with pytest.raises(NonFiniteEmbeddingError) as info:
        nan_emb.encode(_texts(bad, 30), normalize_embeddings=False, precision="int8")
    assert info.value.indices == sorted(bad)
    msg = str(info.value)
    assert f"{len(bad)} input(s): texts[3], texts[6], texts[9], texts[12], texts[15] and 4 more" in msg
    assert "texts[18]" not in msg


def test_encode_iter_names_indices_in_the_whole_iterable(nan_emb: Embedder) -> None:
    texts = _texts({7, 8}, 12)
    blocks: list[np.ndarray] = []
    with pytest.raises(NonFiniteEmbeddingError) as info:
        for block in nan_emb.encode_iter(iter(texts), chunk_size=3, batch_size=2):
            blocks.append(block)
    assert info.value.indices == [7, 8]
    assert "texts[7], texts[8]" in str(info.value)
    assert len(blocks) == 2 and all(np.isfinite(b).all() for b in blocks)  # rows 0..5 came out


def test_inf_is_refused_too(nan_emb: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    session = nan_emb._session
    real_run: Callable[..., np.ndarray] = session.run

    def with_inf(output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = real_run(output, feeds)
        out[0, 0] = np.inf
        return out

    monkeypatch.setattr(session, "run", with_inf)
    with pytest.raises(NonFiniteEmbeddingError) as info:
        nan_emb.encode(["a", "b"], batch_size=1)
    assert info.value.indices == [0, 1]
