"""int8 quantization options for CPU, side by side (owned by the benchmarks; see benchmarks/int8.py).

Each option turns an fp32 graph into an int8 one with onnxruntime's quantizer. The export step keeps
its own default (:func:`mrl_export._onnx.quantize_int8`); :data:`RECOMMENDED` names the option the
benchmark recommends, and :func:`quantize_option` builds any of them, so the export step can adopt one
by calling it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: option -> (kind, settings). "dynamic": quantize_dynamic (weights offline, activations per batch at run
#: time). "static": quantize_static in QDQ format with activation ranges calibrated on sample texts.
OPTIONS: dict[str, dict[str, Any]] = {
    # the export step's current AVX2 default: s8 weights per channel, 7-bit range (VPMADDUBSW-safe)
    "dyn_u8s8_pc_rr": {"kind": "dynamic", "weight": "QInt8", "per_channel": True, "reduce_range": True},
    "dyn_u8s8_pc": {"kind": "dynamic", "weight": "QInt8", "per_channel": True, "reduce_range": False},
    "dyn_u8s8_pt_rr": {"kind": "dynamic", "weight": "QInt8", "per_channel": False, "reduce_range": True},
    "dyn_u8u8_pc": {"kind": "dynamic", "weight": "QUInt8", "per_channel": True, "reduce_range": False},
    "dyn_u8u8_pt": {"kind": "dynamic", "weight": "QUInt8", "per_channel": False, "reduce_range": False},
    # per-row (per-token) activations, a graph edit of the dynamic graph (export/_rowquant.py)
    "dyn_u8s8_pc_rr_rowasym": {"kind": "dynamic", "weight": "QInt8", "per_channel": True,
                               "reduce_range": True, "rowquant": ("asym", 127)},
    "dyn_u8s8_pc_rr_rowsym": {"kind": "dynamic", "weight": "QInt8", "per_channel": True,
                              "reduce_range": True, "rowquant": ("sym", 127)},
    # full-range weights with 8-bit raw activations can saturate VPMADDUBSW: VNNI CPUs only
    "dyn_u8s8_pc_rowasym_vnni": {"kind": "dynamic", "weight": "QInt8", "per_channel": True,
                                 "reduce_range": False, "rowquant": ("asym", 127)},
    # u8 weights: onnxruntime's u8u8 GEMM widens to int16 first (no VPMADDUBSW), safe everywhere, but it has
    # no VNNI kernel (as slow as fp32 on the AVX-512 VNNI machine measured)
    "dyn_u8u8_pc_rowasym": {"kind": "dynamic", "weight": "QUInt8", "per_channel": True,
                            "reduce_range": False, "rowquant": ("asym", 127)},
    # 7-bit raw activations (<= 127): safe on AVX2 with full-range weights
    "dyn_u8s8_pc_rowasym7": {"kind": "dynamic", "weight": "QInt8", "per_channel": True,
                             "reduce_range": False, "rowquant": ("asym", 63)},
    "static_qdq_minmax": {
        "kind": "static", "weight": "QInt8", "activation": "QUInt8", "per_channel": True,
        "reduce_range": True, "method": "MinMax",
    },
    "static_qdq_percentile": {
        "kind": "static", "weight": "QInt8", "activation": "QUInt8", "per_channel": True,
        "reduce_range": True, "method": "Percentile",
    },
}  # fmt: skip

#: The option the benchmark recommends as the CPU int8 default (speed and STS-B quality; see
#: docs/benchmarks.md). Updated from the measurements in benchmarks/results/int8.*.
RECOMMENDED = "dyn_u8s8_pc_rr"


def quantize_option(
    src: Path, dst: Path, option: str, calibration: Sequence[dict[str, Any]] | None = None
) -> str:
    """Quantize fp32 ``src`` into ``dst`` with ``option``; returns a one-line note.

    ``calibration``: model feeds (``input_ids``, ``attention_mask``, ...) for static options.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ._onnx import dynamic_int8

    o = OPTIONS[option]
    if o["kind"] == "dynamic":
        row = o.get("rowquant")
        tmp = dst.with_name(dst.stem + ".per-tensor" + dst.suffix) if row else dst
        dynamic_int8(
            src,
            tmp,
            per_channel=o["per_channel"],
            reduce_range=o["reduce_range"],
            weight_type=getattr(QuantType, o["weight"]),
        )
        note = (
            f"{option}: dynamic, weights {o['weight']}, per_channel={o['per_channel']}, "
            f"reduce_range={o['reduce_range']}"
        )
        if row:
            from ._rowquant import rowquant_file

            try:
                note += "; " + rowquant_file(tmp, dst, mode=row[0], levels=row[1])
            finally:
                tmp.unlink(missing_ok=True)
        return note
    if not calibration:
        raise ValueError(f"{option} is static: pass calibration feeds")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[dict[str, Any]] = iter(calibration)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=o["per_channel"],
        reduce_range=o["reduce_range"],
        activation_type=getattr(QuantType, o["activation"]),
        weight_type=getattr(QuantType, o["weight"]),
        calibrate_method=getattr(CalibrationMethod, o["method"]),
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return f"{option}: static QDQ, {o['method']} calibration over {len(calibration)} batches"
