"""Device logic on CPU: a fake onnxruntime.InferenceSession stands in for CUDA.

The fake wraps a real CPU session over the same graph (so embeddings are real) but reports the
providers a test asks for, can fail to start CUDA, and records every IOBinding call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mrl_infer import DeviceError, Embedder
from mrl_infer import _session as session_mod
from tests.conftest import corpus_texts

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
REAL_SESSION = ort.InferenceSession
TEXTS = [*corpus_texts(60), "", "word " * 300, "word " * 300, "a short one"]


@dataclass
class Recorder:
    """What the fake sessions saw: constructor providers, bindings and plain runs."""

    providers: list[Any] = field(default_factory=list)
    bound_inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    bound_outputs: list[tuple[str, str, int]] = field(default_factory=list)
    copies: int = 0
    plain_runs: int = 0


class FakeBinding:
    def __init__(self, real: ort.InferenceSession, rec: Recorder) -> None:
        self.real, self.rec = real, rec
        self.inputs: dict[str, np.ndarray] = {}
        self.output: str | None = None
        self.result: list[np.ndarray] | None = None

    def bind_cpu_input(self, name: str, value: np.ndarray) -> None:
        assert isinstance(value, np.ndarray)
        self.inputs[name] = value

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0) -> None:
        self.output = name
        self.rec.bound_outputs.append((name, device_type, device_id))

    def run(self) -> None:
        assert self.output is not None, "output not bound before run_with_iobinding"
        self.rec.bound_inputs.append(dict(self.inputs))
        self.result = self.real.run([self.output], self.inputs)

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        assert self.result is not None, "copy_outputs_to_cpu before run_with_iobinding"
        self.rec.copies += 1
        return self.result


def fake_ort(
    monkeypatch: pytest.MonkeyPatch,
    *,
    available: list[str],
    attach: list[str] | None = None,
    start_error: str | None = None,
) -> Recorder:
    """Patch onnxruntime: ``available`` providers; a CUDA session attaches ``attach`` or raises
    ``start_error``."""
    rec = Recorder()

    class FakeSession:
        def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
            rec.providers.append(providers)
            wants_cuda = any((p[0] if isinstance(p, tuple) else p) == CUDA for p in providers)
            if wants_cuda and start_error is not None:
                raise RuntimeError(start_error)
            self.real = REAL_SESSION(path, sess_options=sess_options, providers=[CPU])
            self.attached = list(attach or [CUDA, CPU]) if wants_cuda else [CPU]

        def get_providers(self) -> list[str]:
            return self.attached

        def get_inputs(self) -> Any:
            return self.real.get_inputs()

        def get_outputs(self) -> Any:
            return self.real.get_outputs()

        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            rec.plain_runs += 1
            return self.real.run(outputs, feeds)

        def io_binding(self) -> FakeBinding:
            return FakeBinding(self.real, rec)

        def run_with_iobinding(self, binding: FakeBinding) -> None:
            binding.run()

    monkeypatch.setattr(session_mod.ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: list(available))
    return rec


@pytest.fixture(scope="module")
def cpu_reference(minilm_model_dir: Path) -> np.ndarray:
    return Embedder(minilm_model_dir, variant="fp32", device="cpu").encode(TEXTS, batch_size=8, dim=128)


# ---------------------------------------------------------------- no silent CPU run
def test_cuda_requested_but_cpu_attached_raises(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = fake_ort(monkeypatch, available=[CUDA, CPU], attach=[CPU])
    with pytest.raises(DeviceError, match=r"attached \['CPUExecutionProvider'\]"):
        Embedder(minilm_model_dir, device="cuda", variant="fp32")
    assert rec.providers == [[(CUDA, {"device_id": 0}), CPU]]


def test_cuda_without_cuda_provider_raises_before_any_session(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = fake_ort(monkeypatch, available=[CPU])
    for device in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
            Embedder(minilm_model_dir, device=device, variant="fp32")
    assert rec.providers == []  # no session at all, so no CPU run


def test_explicit_cuda_start_error_raises(minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ort(monkeypatch, available=[CUDA, CPU], start_error="CUDA failure 100: no CUDA-capable device")
    with pytest.raises(DeviceError, match="CUDA could not start"):
        Embedder(minilm_model_dir, device="cuda", variant="fp32")


@pytest.mark.parametrize("failure", ["start_error", "cpu_attached"])
def test_auto_falls_back_to_cpu_with_a_warning(
    minilm_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cpu_reference: np.ndarray,
    failure: str,
) -> None:
    if failure == "start_error":
        rec = fake_ort(monkeypatch, available=[CUDA, CPU], start_error="CUDA failure 100: no device")
    else:
        rec = fake_ort(monkeypatch, available=[CUDA, CPU], attach=[CPU])
    with caplog.at_level(logging.WARNING, logger="mrl_infer"):
        emb = Embedder(minilm_model_dir, variant="fp32")
    assert any("falls back to CPU" in r.getMessage() for r in caplog.records)
    assert emb.device == "cpu" and emb.providers == [CPU]
    assert rec.providers == [[(CUDA, {"device_id": 0}), CPU], [CPU]]
    np.testing.assert_array_equal(emb.encode(TEXTS, batch_size=8, dim=128), cpu_reference)
    assert rec.bound_inputs == [] and rec.plain_runs > 0


def test_auto_uses_cuda_when_it_attaches(minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ort(monkeypatch, available=[CUDA, CPU])
    emb = Embedder(minilm_model_dir, variant="fp32")
    assert emb.device == "cuda:0" and emb.providers[0] == CUDA


# ---------------------------------------------------------------- IOBinding
def test_iobinding_binds_every_input_and_copies_outputs(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch, cpu_reference: np.ndarray
) -> None:
    rec = fake_ort(monkeypatch, available=[CUDA, CPU])
    emb = Embedder(minilm_model_dir, device="cuda", variant="fp32")
    assert emb.device == "cuda:0"
    out = emb.encode(TEXTS, batch_size=8, dim=128)
    graph_inputs = set(emb._session.input_names)
    assert graph_inputs >= {"input_ids", "attention_mask"}
    assert rec.plain_runs == 0  # every batch went through the binding
    assert len(rec.bound_inputs) >= len(TEXTS) // 8
    assert all(set(feeds) == graph_inputs for feeds in rec.bound_inputs)
    assert rec.bound_outputs == [("sentence_embedding", "cuda", 0)] * len(rec.bound_inputs)
    assert rec.copies == len(rec.bound_inputs)
    assert sum(len(f["input_ids"]) for f in rec.bound_inputs) == len(TEXTS)
    np.testing.assert_allclose(out, cpu_reference, atol=1e-6)


def test_cuda_n_passes_device_id(minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = fake_ort(monkeypatch, available=[CUDA, CPU])
    emb = Embedder(minilm_model_dir, device="cuda:3", variant="fp32")
    assert emb.device == "cuda:3"
    assert rec.providers == [[(CUDA, {"device_id": 3}), CPU]]
    emb.encode(["one", "two"])
    assert rec.bound_outputs == [("sentence_embedding", "cuda", 3)]


# ---------------------------------------------------------------- GPU token budget
def test_cuda_batches_use_the_gpu_budget_without_the_cpu_cap(
    minilm_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On CUDA a batch holds batch_size x 128 padded tokens, with no absolute 1,024 cap."""
    rec = fake_ort(monkeypatch, available=[CUDA, CPU])
    emb = Embedder(minilm_model_dir, device="cuda", variant="fp32")
    texts = ["word " * 300] * 70 + [f"short {i}" for i in range(100)]
    emb.encode(texts, batch_size=64, dim=32)
    shapes = [f["input_ids"].shape for f in rec.bound_inputs]
    assert shapes[:2] == [(32, 256), (32, 256)], shapes  # 64 x 128 = 8,192 tokens = 32 rows of 256
    assert max(b * w for b, w in shapes) == 8192
    assert max(b for b, _ in shapes) == 64  # short texts: the count cap
    assert sum(b for b, _ in shapes) == len(texts)
