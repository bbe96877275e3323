"""CUDA: never a silent CPU run. GPU tests skip only where no GPU is present.

"GPU present" means ``MRL_INFER_EXPECT_CUDA=1`` (scripts/test.sh sets it when ``nvidia-smi -L``
lists a GPU, after installing onnxruntime-gpu) or ``nvidia-smi -L`` listing one. On such a machine a
CUDAExecutionProvider that does not attach FAILS these tests; it never skips them. The device logic
itself (fallbacks, IOBinding, cuda:N, token budget) is covered on CPU by tests/test_device.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mrl_infer import DeviceError, Embedder
from tests.conftest import EDGE_TEXTS, corpus_texts, linked_copy

CUDA = "CUDAExecutionProvider"


def gpu_present() -> bool:
    """True where a GPU is present: MRL_INFER_EXPECT_CUDA=1, or nvidia-smi -L lists a GPU."""
    if os.environ.get("MRL_INFER_EXPECT_CUDA") == "1":
        return True
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and any(line.startswith("GPU ") for line in proc.stdout.splitlines())


GPU = gpu_present()
HAS_CUDA = CUDA in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(
    not GPU, reason="no GPU present (MRL_INFER_EXPECT_CUDA unset, nvidia-smi none)"
)
TEXTS = [*corpus_texts(120), *EDGE_TEXTS]


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_an_error(minilm_model_dir: Path) -> None:
    with pytest.raises(DeviceError, match="CUDA"):
        Embedder(minilm_model_dir, device="cuda")
    with pytest.raises(DeviceError, match="CUDA"):
        Embedder(minilm_model_dir, device="cuda:1")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_auto_without_cuda_uses_cpu(minilm_model_dir: Path) -> None:
    emb = Embedder(minilm_model_dir)
    assert emb.device == "cpu" and emb.providers == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def cpu_fp32(minilm_model_dir: Path) -> Embedder:
    return Embedder(minilm_model_dir, device="cpu", variant="fp32")


@pytest.mark.cuda
@needs_gpu
def test_cuda_provider_is_installed() -> None:
    assert HAS_CUDA, (
        f"a GPU is present but onnxruntime {ort.__version__} offers only {ort.get_available_providers()}: "
        "install onnxruntime-gpu in place of onnxruntime (scripts/test.sh does)"
    )


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_cuda_fp32_matches_cpu_on_mixed_length_batches(
    minilm_model_dir: Path, cpu_fp32: Embedder, batch_size: int
) -> None:
    gpu = Embedder(minilm_model_dir, device="cuda", variant="fp32")
    assert gpu.providers[0] == CUDA and gpu.device == "cuda:0"
    rng = np.random.default_rng(batch_size)
    texts = [TEXTS[i] for i in rng.permutation(len(TEXTS))]  # long and short texts mixed
    for dim in (384, 64):
        cos = np.sum(
            gpu.encode(texts, dim=dim, batch_size=batch_size) * cpu_fp32.encode(texts, dim=dim), axis=1
        )
        assert cos.min() >= 0.9999, (batch_size, dim, cos.min())


@pytest.mark.cuda
@needs_gpu
def test_cuda_explicit_device_0_uses_iobinding(minilm_model_dir: Path, cpu_fp32: Embedder) -> None:
    gpu = Embedder(minilm_model_dir, device="cuda:0", variant="fp32")
    assert gpu.device == "cuda:0" and gpu.providers[0] == CUDA
    session = gpu._session.session
    calls = {"io_binding": 0}
    real_io_binding = session.io_binding

    def counting_io_binding():  # type: ignore[no-untyped-def]
        calls["io_binding"] += 1
        return real_io_binding()

    def no_plain_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("a CUDA session ran without IOBinding")

    session.io_binding = counting_io_binding  # type: ignore[method-assign]
    session.run = no_plain_run  # type: ignore[method-assign]
    out = gpu.encode(TEXTS, dim=128, batch_size=16)
    assert calls["io_binding"] >= len(TEXTS) // 16
    assert np.sum(out * cpu_fp32.encode(TEXTS, dim=128), axis=1).min() >= 0.9999


@pytest.mark.cuda
@needs_gpu
def test_cuda_fp16_variant(minilm_model_dir: Path, cpu_fp32: Embedder, tmp_path: Path) -> None:
    """fp16 (made by the export's convert_fp16, as the test model ships fp32 + int8 only)."""
    from tests.test_runtime_paths import add_fp16_variant

    d = add_fp16_variant(linked_copy(minilm_model_dir, tmp_path / "m"))
    auto = Embedder(d, device="cuda")
    assert auto.variant == "fp16" and auto.providers[0] == CUDA  # fp16 is CUDA's first choice
    for batch_size in (1, 32):
        out = auto.encode(TEXTS, dim=128, batch_size=batch_size)
        cos = np.sum(out * cpu_fp32.encode(TEXTS, dim=128), axis=1)
        assert cos.min() >= 0.999, (batch_size, cos.min())


@pytest.mark.cuda
@needs_gpu
def test_auto_prefers_cuda(minilm_model_dir: Path) -> None:
    emb = Embedder(minilm_model_dir)
    assert emb.device == "cuda:0" and emb.providers[0] == CUDA
