"""CUDA: never a silent CPU run. GPU tests skip only where onnxruntime has no CUDA provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mrl_infer import DeviceError, Embedder

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="no CUDAExecutionProvider: no GPU on this machine")


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


@pytest.mark.cuda
@needs_gpu
def test_cuda_attaches_and_matches_cpu(minilm_model_dir: Path) -> None:
    texts = ["a short text", "a somewhat longer text about embeddings " * 5, ""]
    gpu = Embedder(minilm_model_dir, device="cuda", variant="fp32")
    assert gpu.providers[0] == "CUDAExecutionProvider" and gpu.device == "cuda:0"
    cpu = Embedder(minilm_model_dir, device="cpu", variant="fp32")
    cos = np.sum(gpu.encode(texts, dim=128) * cpu.encode(texts, dim=128), axis=1)
    assert cos.min() >= 0.9999


@pytest.mark.cuda
@needs_gpu
def test_auto_prefers_cuda(minilm_model_dir: Path) -> None:
    assert Embedder(minilm_model_dir).device == "cuda:0"
