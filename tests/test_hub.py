"""Hub ids: through huggingface_hub's cache offline, fast failure when the Hub is unreachable, and the
online path with hf_hub_download mocked. No test sends traffic anywhere but 127.0.0.1.

huggingface_hub reads HF_HUB_OFFLINE once, at import: tests set ``constants.HF_HUB_OFFLINE`` instead
of the environment variable.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import Embedder, HubConnectionError, ModelFormatError, _hub
from mrl_infer._hub import DEFAULT_MODEL_DIR
from tests.conftest import linked_copy

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any socket connection to a host other than the loopback fails the test."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in _LOCAL_HOSTS and self.family != socket.AF_UNIX:
            raise AssertionError(f"a test tried to connect to {address!r}")
        return real_connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", guarded)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as huggingface_hub sees it (the variable itself is read at import)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unreachable(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Online mode, with the Hub endpoint on a closed loopback port: what a machine without network sees.

    huggingface_hub's cached HTTP sessions are dropped on both sides, so that none made in offline
    mode (which fails at once) hides the real connection attempts, and none made here outlives the test.
    """
    from huggingface_hub import constants, file_download
    from huggingface_hub.utils import reset_sessions

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    reset_sessions()
    yield endpoint
    reset_sessions()


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


def test_hub_id_from_cache_offline(minilm_model_dir: Path, tmp_path: Path, offline: None) -> None:
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


def test_hub_repo_without_manifest(minilm_st_dir: Path, tmp_path: Path, offline: None) -> None:
    _fake_hub_cache(minilm_st_dir, tmp_path, "acme/plain-st", ["config.json"])
    with pytest.raises(ModelFormatError, match=r"acme/plain-st.*mrl_infer.json"):
        Embedder("acme/plain-st", cache_dir=tmp_path)


def test_unknown_id_offline(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_probe() -> None:
        raise AssertionError("offline mode must not probe the Hub")

    monkeypatch.setattr(_hub, "probe_hub", no_probe)
    with pytest.raises(
        ModelFormatError, match=r"nobody/nothing.*not in the Hugging Face cache.*HF_HUB_OFFLINE"
    ):
        Embedder("nobody/nothing", cache_dir=tmp_path)


# ---------------------------------------------------------------- no network
def test_unreachable_hub_fails_fast(tmp_path: Path, unreachable: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(HubConnectionError) as info:
        Embedder("acme/not-cached", cache_dir=tmp_path / "hf")
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"took {elapsed:.1f} s"
    msg = str(info.value)
    assert "acme/not-cached" in msg and "HF_HUB_OFFLINE=1" in msg and "local model directory" in msg
    assert isinstance(info.value, ConnectionError)


def test_unreachable_hub_uses_the_cache(
    minilm_model_dir: Path, tmp_path: Path, unreachable: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Like huggingface_hub, a cached model still loads without network, but without its ~23 s of retries."""
    man = json.loads((minilm_model_dir / "mrl_infer.json").read_text())
    files = ["mrl_infer.json", *man["tokenizer"]["files"], "model_int8.onnx"]
    _fake_hub_cache(minilm_model_dir, tmp_path, "acme/minilm-mrl", files)
    t0 = time.monotonic()
    with caplog.at_level("WARNING", logger="mrl_infer"):
        emb = Embedder("acme/minilm-mrl", variant="int8", cache_dir=tmp_path)
    assert time.monotonic() - t0 < 2.0
    assert emb.model_dir.name == COMMIT
    assert [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()][:1]
    with pytest.raises(HubConnectionError, match=r"model\.onnx"):
        Embedder("acme/minilm-mrl", variant="fp32", cache_dir=tmp_path)


def test_probe_timeout_bounds_a_silent_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint that accepts the connection but never answers is given up on after the timeout."""
    from huggingface_hub import constants

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        t0 = time.monotonic()
        why = _hub.probe_hub(timeout=0.3)
        assert why is not None and time.monotonic() - t0 < 1.5


# ---------------------------------------------------------------- online path (mocked)
def test_online_fetches_only_what_the_variant_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    src = linked_copy(DEFAULT_MODEL_DIR, tmp_path / "repo")
    man = json.loads((src / "mrl_infer.json").read_text())
    assert man["variants"]["int8"]["external_data"] == ["model_int8.onnx.data"]  # the weights
    calls: list[tuple[str, str, dict[str, object]]] = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append((repo_id, filename, kwargs))
        return str(src / filename)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(_hub, "probe_hub", lambda timeout=None: None)
    monkeypatch.setattr(_hub, "hf_hub_download", fake_download)
    cache = tmp_path / "hf-cache"
    emb = Embedder("acme/default-mrl", dim=64, revision="v1.0", cache_dir=cache)
    assert emb.model_dir == src and emb.variant == "int8"
    assert emb.encode("hello").shape == (64,)
    expected = ["mrl_infer.json", *man["tokenizer"]["files"], "model_int8.onnx", "model_int8.onnx.data"]
    assert [name for _, name, _ in calls] == expected
    for repo_id, _, kwargs in calls:
        assert repo_id == "acme/default-mrl"
        assert kwargs == {"revision": "v1.0", "cache_dir": cache, "local_files_only": False}
