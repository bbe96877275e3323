"""Mistyped paths and loose input types get clear errors (issue 11, items 2, 4, 8, 9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import (
    DeviceError,
    DimError,
    Embedder,
    EmbedderClosedError,
    InputError,
    ModelFormatError,
    MrlInferError,
    _hub,
)
from mrl_infer._hub import DEFAULT_MODEL_DIR
from mrl_infer._session import cuda_available
from tests.conftest import linked_copy


@pytest.fixture(autouse=True)
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing in this file may reach for the Hub."""

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError(f"hf_hub_download called with {args} {kwargs}")

    monkeypatch.setattr(_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(_hub, "probe_hub", refuse)


@pytest.fixture(scope="module")
def emb() -> Embedder:
    return Embedder(dim=64)


# ---------------------------------------------------------------- paths vs Hub ids
@pytest.mark.parametrize("model", ["/nonexistent/dir", "./nope", "a/b/c", "../nope/", "~nobody-here/x"])
def test_missing_path_is_no_such_directory(
    model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelFormatError, match=r"no such model directory: "):
        Embedder(model)


def test_tilde_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelFormatError) as info:
        Embedder("~/nope")
    assert f"no such model directory: {tmp_path / 'nope'} (from '~/nope')" in str(info.value)
    linked_copy(DEFAULT_MODEL_DIR, tmp_path / "m")
    assert Embedder("~/m", dim=32).model_dir == tmp_path / "m"


def test_empty_string_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEFAULT_MODEL_DIR)  # "" must not silently mean the current directory
    for model in ("", "   "):
        with pytest.raises(ModelFormatError, match="empty string"):
            Embedder(model)


@pytest.mark.parametrize("model", ["bad id!", "org/na me", "a--b", "x/.git"])
def test_invalid_hub_id_is_ours_not_hfvalidationerror(model: str) -> None:
    with pytest.raises(ModelFormatError, match="neither a local directory nor a valid Hub id") as info:
        Embedder(model)
    assert isinstance(info.value, MrlInferError)
    assert type(info.value).__module__ == "mrl_infer.errors"


def test_model_of_wrong_type() -> None:
    with pytest.raises(TypeError, match="model must be a str"):
        Embedder(3)  # type: ignore[arg-type]


def test_is_local_rule() -> None:
    for path in ("/abs", "./x", "../x", "~/x", ".x", "a/b/c", "a\\b", Path("org/name")):
        assert _hub.looks_like_path(path), path
    for hub_id in ("org/name", "name", "sentence-transformers/all-MiniLM-L6-v2"):
        assert not _hub.looks_like_path(hub_id), hub_id


# ---------------------------------------------------------------- input types
def test_str_is_one_text_and_encode_iter_refuses_it(emb: Embedder) -> None:
    one = emb.encode("abc")
    assert one.shape == (64,)
    np.testing.assert_allclose(one, emb.encode(["abc"])[0], atol=1e-6)
    with pytest.raises(TypeError, match="a str would be embedded character by character"):
        emb.encode_iter("abc")  # refused at the call, not at the first next()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (None, "texts is None"),
        ({"a": 1}, "mapping"),
        ({"a": "text"}.keys().mapping, "mapping"),  # a read-only mappingproxy
        (b"bytes", "bytes; decode it"),
        (bytearray(b"x"), "bytes; decode it"),
        (3, "str or an iterable of str, got int"),
    ],
)
def test_loose_types_refused(emb: Embedder, bad: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        emb.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=match):
        emb.encode_iter(bad)  # type: ignore[arg-type]


def test_lone_surrogate_names_its_index(emb: Embedder) -> None:
    with pytest.raises(InputError, match=r"texts\[2\].*not valid Unicode") as info:
        emb.encode(["ok", "fine", "bro\ud800ken", "also fine"])
    assert isinstance(info.value, ValueError)
    with pytest.raises(InputError, match=r"texts\[4\]"):
        list(emb.encode_iter(iter(["a", "b", "c", "d", "\udcff"]), chunk_size=2))
    with pytest.raises(InputError, match=r"texts\[0\]"):
        emb.encode("\ud83d")  # half of a surrogate pair


# ---------------------------------------------------------------- close, device message, dims
def test_close_and_context_manager() -> None:
    with Embedder(dim=32) as e:
        assert e.encode("x").shape == (32,)
    with pytest.raises(EmbedderClosedError, match="closed"):
        e.encode("x")
    with pytest.raises(EmbedderClosedError):
        e.encode_iter(["x"])
    assert e._session.session is None  # the ONNX Runtime session is released
    e.close()  # twice is harmless
    assert e.device == "cpu" and "Embedder(" in repr(e)


@pytest.mark.skipif(cuda_available(), reason="this onnxruntime has CUDA")
def test_cuda_device_message_echoes_the_device() -> None:
    with pytest.raises(DeviceError, match=r"device='cuda:1' was requested"):
        Embedder(device="cuda:1")


def test_dim_refused_without_declared_dims_says_how(tmp_path: Path) -> None:
    d = linked_copy(DEFAULT_MODEL_DIR, tmp_path / "m")
    man = json.loads((d / "mrl_infer.json").read_text())
    for dims in (None, [384]):
        man["matryoshka_dims"] = dims
        (d / "mrl_infer.json").write_text(json.dumps(man))
        with pytest.raises(DimError, match=r"no Matryoshka dims declared.*--dims.*allow_any_dim=True"):
            Embedder(d, dim=128)
    with pytest.raises(DimError, match="not one of the model's Matryoshka dims") as info:
        Embedder(dim=100)  # dims declared: the usual message
    assert "--dims" not in str(info.value)
