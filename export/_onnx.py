"""ONNX steps: trace the wrapper to ONNX, graph-optimize, quantize to int8, convert to fp16."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import onnx
import torch

#: Opset used when none is given; 17 has LayerNormalization and is supported by every ORT >= 1.14.
DEFAULT_OPSET = 17

#: HF ``model_type`` -> onnxruntime transformer-optimizer model type, where the optimizer knows the layout.
ORT_OPTIMIZER_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "mpnet": "bert",
}

OPTIMIZE_LEVELS = ("none", "O1", "O2", "O3", "O4")

#: Graphs with more weight bytes than this keep them in ``<file>.data`` (protobuf's limit is 2 GiB).
LARGE_BYTES = 1_800_000_000

#: ``--quantize`` targets -> quantize_dynamic options (see :func:`quantize_int8`).
QUANTIZE_TARGETS = ("auto", "avx512_vnni", "avx512", "avx2", "arm64")


def export_onnx(
    graph: torch.nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
    opset: int | None = None,
) -> bool:
    """Trace ``graph`` with the TorchScript exporter (``dynamo=False``) and write ``path``.

    The dynamo exporter of torch 2.13 needs ``onnxscript``, which is not part of the pinned export set;
    the TorchScript exporter traces every supported family here. Batch and sequence axes are dynamic.
    ``path`` should be alone in its folder: for models over 2 GiB torch writes one file per tensor next to
    it, which are gathered into ``<name>.data``. Returns whether the graph uses external data.
    """
    weight_bytes = sum(t.numel() * t.element_size() for t in graph.state_dict().values())
    dynamic_axes: dict[str, dict[int, str]] = {}
    for name in input_names:
        dynamic_axes[name] = {0: "batch"} if name == "prompt_length" else {0: "batch", 1: "sequence"}
    dynamic_axes["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad(), traceable_masks():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            tuple(example_inputs),
            str(path),
            input_names=list(input_names),
            output_names=["sentence_embedding"],
            dynamic_axes=dynamic_axes,
            opset_version=opset or DEFAULT_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    external = weight_bytes > LARGE_BYTES or len(list(path.parent.iterdir())) > 1
    if external:
        save_model(onnx.load(str(path)), path, external=True)
        for stray in path.parent.iterdir():
            if stray.name not in (path.name, path.name + ".data"):
                stray.unlink()
    return external


def save_model(model: onnx.ModelProto, path: Path, external: bool) -> None:
    """Save ``model``; with ``external`` all weights go to one ``<name>.data`` file beside it."""
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def uses_external_data(path: Path) -> list[str]:
    """External data files referenced by the graph at ``path`` (file names, relative to its folder)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    names = {ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)}
    return sorted(names)


@contextlib.contextmanager
def traceable_masks():  # type: ignore[no-untyped-def]
    """Swap transformers' vmap-based attention-mask builders for vectorized ones while tracing.

    transformers >= 4.53 builds decoder masks (Qwen3, Gemma3, ...) with ``torch.vmap``, which the
    TorchScript tracer cannot record (``RuntimeError: unordered_map::at``). optimum-onnx's model patcher
    does the same swap; we reuse its vmap-free functions and restore the originals afterwards.
    """
    try:
        import transformers.masking_utils as mu
        from optimum.exporters.onnx.model_patcher import (
            eager_mask_without_vmap,
            find_packed_sequence_indices_patched,
            sdpa_mask_without_vmap,
        )
    except ImportError:  # older transformers: masks are traceable as they are
        yield
        return
    registry = mu.ALL_MASK_ATTENTION_FUNCTIONS
    saved = {k: registry[k] for k in ("sdpa", "eager") if k in registry}
    saved_find = getattr(mu, "find_packed_sequence_indices", None)
    registry.register("sdpa", sdpa_mask_without_vmap)
    registry.register("eager", eager_mask_without_vmap)
    if saved_find is not None:
        mu.find_packed_sequence_indices = find_packed_sequence_indices_patched
    try:
        yield
    finally:
        for k, fn in saved.items():
            registry.register(k, fn)
        if saved_find is not None:
            mu.find_packed_sequence_indices = saved_find


def optimize_fp32(
    src: Path,
    dst: Path,
    model_type: str,
    level: str,
    num_heads: int,
    hidden_size: int,
    external: bool = False,
) -> str:
    """Graph-optimize ``src`` into ``dst`` with onnxruntime's transformer optimizer; returns a note.

    ``level``: ``O1`` basic ORT graph optimizations only; ``O2`` plus transformer fusions (attention,
    LayerNorm, GELU, embedding); ``O3``/``O4`` plus GELU approximation. Architectures the optimizer does
    not know are copied unchanged (the note says so).
    """
    if level == "none":
        _copy_model(src, dst, external)
        return "plain export (no graph optimization)"
    ort_type = ORT_OPTIMIZER_TYPES.get(model_type)
    if ort_type is None:
        _copy_model(src, dst, external)
        return f"plain export: onnxruntime's transformer optimizer does not know model_type '{model_type}'"
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions(ort_type)
    if level in ("O3", "O4"):
        opts.enable_gelu_approximation = True
    with _quiet():
        if level == "O1":
            model = optimize_model(str(src), model_type=ort_type, opt_level=1, only_onnxruntime=True)
        else:
            model = optimize_model(
                str(src),
                model_type=ort_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=opts,
                opt_level=0,
            )
        fused = model.get_fused_operator_statistics()
        model.save_model_to_file(str(dst), use_external_data_format=external)
    fused_str = ", ".join(f"{k}={v}" for k, v in sorted(fused.items()) if v)
    return f"onnxruntime transformer optimizer {level} ({ort_type}); fused: {fused_str or 'none'}"


def detect_quantize_target() -> str:
    """The ``--quantize`` target matching this CPU (used for ``auto``)."""
    import platform

    machine = platform.machine().lower()
    if machine in ("arm64", "aarch64"):
        return "arm64"
    flags = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    if "avx512_vnni" in flags or "avx512vnni" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def quantize_options(target: str) -> dict[str, Any]:
    """quantize_dynamic options for a CPU target.

    Weights QInt8 per channel, activations QUInt8 (u8s8). On x86 without VNNI (avx2, avx512) ORT's u8s8 GEMM
    uses VPMADDUBSW, whose 16-bit intermediate can saturate, so the weights use a reduced 7-bit range there.
    """
    from onnxruntime.quantization import QuantType

    if target == "auto":
        target = detect_quantize_target()
    if target not in QUANTIZE_TARGETS:
        raise ValueError(f"unknown quantize target {target!r}; expected one of {QUANTIZE_TARGETS}")
    return {
        "target": target,
        "weight_type": QuantType.QInt8,
        "per_channel": True,
        "reduce_range": target in ("avx2", "avx512"),
    }


def dynamic_int8(
    src: Path, dst: Path, *, per_channel: bool, reduce_range: bool, weight_type: Any, external: bool = False
) -> None:
    """onnxruntime's dynamic quantization of the MatMul/Attention/Gemm weights of ``src`` into ``dst``."""
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=["MatMul", "Attention", "Gemm"],
        per_channel=per_channel,
        reduce_range=reduce_range,
        weight_type=weight_type,
        use_external_data_format=external,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


#: int8 activation quantization -> the per-row rewrite's (mode, levels) (export/_rowquant.py); "tensor" is
#: onnxruntime's per-tensor DynamicQuantizeLinear, unchanged.
INT8_ACTIVATIONS: dict[str, tuple[Literal["sym", "asym"], int] | None] = {
    "tensor": None,
    "row-sym": ("sym", 127),
    "row-asym": ("asym", 127),
    "row-asym7": ("asym", 63),
}
#: The default stays per-tensor: the per-row rewrite wins on fidelity and batch independence but not on
#: speed. Measured (benchmarks/results/int8_rowquant.md; all-MiniLM-L6-v2, 2-vCPU Xeon with AVX-512 VNNI +
#: AMX, onnxruntime 1.32, batch 32 over 1,000 bench-corpus texts, interleaved; 500 texts vs PyTorch fp32):
#: min cosine bs1 vs bs128 1.0000 per row against 0.961-0.980 per tensor; min / mean cosine vs PyTorch
#: at every dim, reduce_range weights: per tensor 0.966-0.974 / 0.991, "row-asym" 0.988-0.992 / 0.998,
#: "row-sym" 0.985-0.989 / 0.996; STS-B dev within 0.1 of PyTorch; speed 722 sent/s per tensor, 538
#: "row-sym" (-26%), 464 "row-asym" (-36%); fp32 314. Pick it with ``activations=`` or
#: $MRL_EXPORT_INT8_ACTIVATIONS.
DEFAULT_INT8_ACTIVATIONS = "tensor"
#: int8 embedding tables: "fp32" leaves the Gather tables as they are; "row" stores each large table as int8
#: with a scale per row (export/_gatherquant.py), about halving a BERT-style int8 file.
INT8_TABLES = ("fp32", "row")
DEFAULT_INT8_TABLES = "fp32"


def quantize_int8(
    src: Path,
    dst: Path,
    target: str,
    external: bool = False,
    activations: str | None = None,
    tables: str | None = None,
) -> str:
    """Dynamic int8 quantization of MatMul/Attention/Gemm weights of ``src`` into ``dst``; returns a note.

    ``activations`` (default ``$MRL_EXPORT_INT8_ACTIVATIONS`` or :data:`DEFAULT_INT8_ACTIVATIONS`): a key of
    :data:`INT8_ACTIVATIONS`; the ``row-*`` ones rewrite the graph to quantize activations per row (token),
    so a text's embedding no longer depends on its batch-mates (export/_rowquant.py). ``row-sym`` and
    ``row-asym`` use raw u8 activation values up to 255: safe from VPMADDUBSW saturation on AVX2 only with
    the 7-bit weights of ``reduce_range`` (targets avx2 / avx512); ``row-asym7`` keeps them ≤ 127 and is
    safe with any weights. ``tables`` (default ``$MRL_EXPORT_INT8_TABLES`` or :data:`DEFAULT_INT8_TABLES`):
    ``"row"`` also stores large embedding tables as int8 with a scale per row.
    """
    import os

    act = activations or os.environ.get("MRL_EXPORT_INT8_ACTIVATIONS") or DEFAULT_INT8_ACTIVATIONS
    if act not in INT8_ACTIVATIONS:
        raise ValueError(f"unknown int8 activations {act!r}; expected one of {tuple(INT8_ACTIVATIONS)}")
    tab = tables or os.environ.get("MRL_EXPORT_INT8_TABLES") or DEFAULT_INT8_TABLES
    if tab not in INT8_TABLES:
        raise ValueError(f"unknown int8 tables {tab!r}; expected one of {INT8_TABLES}")
    opts = quantize_options(target)
    row = INT8_ACTIVATIONS[act]
    tmp = dst.with_name(dst.stem + ".per-tensor" + dst.suffix) if row else dst
    with _quiet():
        dynamic_int8(
            src,
            tmp,
            per_channel=opts["per_channel"],
            reduce_range=opts["reduce_range"],
            weight_type=opts["weight_type"],
            external=external,
        )
    note = (
        f"dynamic int8 ({opts['target']}): weights {opts['weight_type'].name} per-channel, "
        f"reduce_range={opts['reduce_range']}, activations QUInt8; MatMul/Attention/Gemm quantized"
    )
    if row:
        from ._rowquant import rowquant_file

        try:
            mode, levels = row
            note += "; " + rowquant_file(tmp, dst, mode=mode, levels=levels, external=external)
        finally:
            extra = [tmp.parent / n for n in uses_external_data(tmp)] if tmp.exists() else []
            for f in [tmp, *extra]:
                if f != dst and f.name != dst.name + ".data":
                    f.unlink(missing_ok=True)
    if tab == "row":
        from ._gatherquant import gatherquant_file

        note += "; " + gatherquant_file(dst, dst, external=external)
    return note


def preoptimize_cpu(path: Path, external: bool = False) -> str:
    """Rewrite ``path`` with onnxruntime's extended CPU graph optimizations applied; returns a note.

    A CPU session of the result can skip the optimizers (the manifest's ``graph_optimization:
    "extended"``): the same numbers, and session creation no longer pays for optimizing a graph of
    a thousand small nodes (the per-row int8 graph: 41-64 ms instead of 68-146 ms). Extended, not
    all: onnxruntime's layout level is hardware-specific, its extended fusions are not.
    """
    import onnxruntime as ort

    work = path.parent / f".{path.name}.preopt"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(work / path.name)
        so.log_severity_level = 3
        if external:
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", path.name + ".data"
            )
            so.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
            )
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for name in uses_external_data(path):
            (path.parent / name).unlink()
        for f in work.iterdir():
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (
        f"graph pre-optimized by onnxruntime {ort.__version__} (ORT_ENABLE_EXTENDED, CPU execution provider)"
    )


def convert_fp16(src: Path, dst: Path, external: bool = False) -> str:
    """fp16 weights and compute, fp32 inputs/outputs (keep_io_types), for CUDA; returns a note."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with _quiet():
        model16 = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    save_model(model16, dst, external)
    return "fp16 weights/compute for CUDA; inputs and output keep fp32 I/O (keep_io_types=True)"


def _copy_model(src: Path, dst: Path, external: bool = False) -> None:
    save_model(onnx.load(str(src)), dst, external)


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """Silence onnxruntime tool logging/warnings for the duration of a step."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "onnxruntime.transformers", "root")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)
