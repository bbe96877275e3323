"""The int8 kernel choice: full-range s8 weights run as u8s8 on VNNI CPUs and as u8u8 on other x86.

onnxruntime's u8s8 GEMM on x86 without VNNI multiplies with VPMADDUBSW, whose int16 pair sums saturate
with full-range weights; with ``session.x64quantprecision`` onnxruntime adds 128 to the weights at load
and runs its u8u8 GEMM instead: the same integers, no saturation. These tests check the rule, that the
option really rewrites the shipped graph's weights, and that both kernels give the same embeddings.
"""

from __future__ import annotations

import collections
import json
import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mrl_infer import Embedder, ModelFormatError, load_manifest
from mrl_infer._manifest import parse_manifest
from mrl_infer._session import INT8_KERNEL_ENV, apply_int8_kernel, cpu_flags, int8_kernel, this_cpu_flags

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "mrl_infer" / "models" / "default"
X86 = platform.machine().lower() in ("x86_64", "amd64")

# First-processor flag lines as /proc/cpuinfo prints them (abridged), from the machine kinds measured.
ZEN3_AVX2 = "flags\t\t: fpu sse4_2 avx f16c fma bmi2 avx2 sha_ni"
ZEN4_VNNI = "flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni avx512_bitalg"
SKYLAKE_AVX512 = "flags\t\t: fpu avx avx2 avx512f avx512dq avx512bw avx512vl"
SPR_AMX = "flags\t\t: avx2 avx512f avx_vnni amx_tile amx_int8 amx_bf16"
ALDER_AVX_VNNI = "flags\t\t: avx avx2 avx_vnni"


def test_cpu_flags_reads_the_first_processor() -> None:
    text = f"processor\t: 0\n{ZEN4_VNNI}\n\nprocessor\t: 1\nflags\t\t: other\n"
    assert "avx512_vnni" in cpu_flags(text)
    assert "other" not in cpu_flags(text)
    assert cpu_flags("processor\t: 0\n") == set()


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (ZEN3_AVX2, "u8u8"),
        (SKYLAKE_AVX512, "u8u8"),  # AVX-512 without VNNI still multiplies with VPMADDUBSW
        (ZEN4_VNNI, "u8s8"),
        (SPR_AMX, "u8s8"),
        (ALDER_AVX_VNNI, "u8s8"),
    ],
)
def test_full_range_weights_need_u8u8_only_without_vnni(flags: str, expected: str) -> None:
    assert int8_kernel("full", "x86_64", cpu_flags(flags), None) == expected


def test_kernel_rule_edges() -> None:
    # 7-bit weights never saturate: u8s8 everywhere, and forcing u8u8 does not apply to them
    assert int8_kernel("reduced", "x86_64", cpu_flags(ZEN3_AVX2), None) == "u8s8"
    assert int8_kernel("reduced", "x86_64", cpu_flags(ZEN3_AVX2), "u8u8") == "u8s8"
    # unknown flags (not Linux): assume no VNNI, the safe side
    assert int8_kernel("full", "AMD64", None, None) == "u8u8"
    # Arm's int8 kernels have no such saturation
    assert int8_kernel("full", "aarch64", set(), None) == "u8s8"
    # the environment forces either kernel for full-range files, case and spaces aside
    assert int8_kernel("full", "x86_64", cpu_flags(ZEN4_VNNI), " U8U8 ") == "u8u8"
    assert int8_kernel("full", "x86_64", cpu_flags(ZEN3_AVX2), "u8s8") == "u8s8"
    assert int8_kernel("full", "x86_64", cpu_flags(ZEN3_AVX2), "auto") == "u8u8"


def test_bad_kernel_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=INT8_KERNEL_ENV):
        int8_kernel("full", "x86_64", set(), "vnni")
    monkeypatch.setenv(INT8_KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match=rf"\${INT8_KERNEL_ENV} is 'fast'"):
        Embedder()


def test_manifest_weight_range_is_validated(tmp_path: Path) -> None:
    data = {
        "format_version": 1,
        "embedding_dim": 8,
        "max_seq_length": 16,
        "variants": {"int8": {"file": "m.onnx", "precision": "int8", "weight_range": "wide"}},
    }
    with pytest.raises(ModelFormatError, match=r"variants\.int8\.weight_range is 'wide'"):
        parse_manifest(data, tmp_path / "mrl_infer.json")
    data["variants"]["int8"]["weight_range"] = "full"
    m = parse_manifest(data, tmp_path / "mrl_infer.json")
    assert m.variants["int8"].weight_range == "full"
    assert m.to_dict()["variants"]["int8"]["weight_range"] == "full"


def test_shipped_default_has_full_range_weights() -> None:
    m = load_manifest(DEFAULT_DIR)
    (v,) = m.variants.values()
    assert v.precision == "int8" and v.weight_range == "full"


def _gemm_weight_types(model_path: Path, kernel: str, tmp_path: Path) -> collections.Counter[str]:
    """The weight dtypes of the integer GEMMs in the graph onnxruntime runs for ``kernel``."""
    onnx = pytest.importorskip("onnx")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as for a pre-optimized file
    so.log_severity_level = 3
    apply_int8_kernel(so, kernel)
    so.optimized_model_filepath = str(tmp_path / f"optimized_{kernel}.onnx")
    ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    model = onnx.load(so.optimized_model_filepath, load_external_data=False)  # dtypes only
    dtypes = {t.name: onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer}
    gemms = ("MatMulIntegerToFloat", "MatMulInteger", "DynamicQuantizeMatMul")
    return collections.Counter(dtypes.get(n.input[1], "?") for n in model.graph.node if n.op_type in gemms)


@pytest.mark.skipif(not X86, reason="onnxruntime compiles its s8-to-u8 weight rewrite for x86 only")
def test_u8u8_really_rewrites_the_shipped_weights(tmp_path: Path) -> None:
    path = DEFAULT_DIR / load_manifest(DEFAULT_DIR).variants["int8"].file
    as_shipped = _gemm_weight_types(path, "u8s8", tmp_path)
    rewritten = _gemm_weight_types(path, "u8u8", tmp_path)
    assert set(as_shipped) == {"INT8"} and as_shipped["INT8"] >= 36, as_shipped  # 6 layers x 6 GEMMs
    assert rewritten == collections.Counter({"UINT8": as_shipped["INT8"]}), rewritten


def test_both_kernels_give_the_same_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding 128 to weights and zero point keeps every integer product, so on a CPU where u8s8 is
    exact (VNNI) the two agree to float rounding; u8u8 meets the shipped PyTorch-parity floor anywhere."""
    data = Path(__file__).parent / "data"
    texts = (data / "default_model_reference_texts.txt").read_text(encoding="utf-8").splitlines()
    ref = np.load(data / "default_model_reference_emb.npy")
    floor = json.loads((data / "default_model_reference.json").read_text())["min_cosine_floor"]
    out = {}
    for kernel in ("u8s8", "u8u8"):
        monkeypatch.setenv(INT8_KERNEL_ENV, kernel)
        with Embedder() as emb:
            assert emb.int8_kernel == kernel
            out[kernel] = emb.encode(texts, batch_size=8)
    assert (out["u8u8"] * ref).sum(axis=1).min() >= floor
    if int8_kernel("full", platform.machine(), this_cpu_flags(), None) == "u8s8":
        np.testing.assert_allclose(out["u8u8"], out["u8s8"], atol=1e-5)


def test_auto_follows_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INT8_KERNEL_ENV, raising=False)
    with Embedder() as emb:
        assert emb.int8_kernel == int8_kernel("full", platform.machine(), this_cpu_flags(), None)
    with Embedder(variant="int8", device="cpu") as emb:
        assert emb.int8_kernel in ("u8s8", "u8u8")
