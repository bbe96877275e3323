"""Per-row (per-token) dynamic activation quantization: a graph edit of onnxruntime's dynamic int8 graph.

onnxruntime's ``quantize_dynamic`` emits, for every quantized MatMul::

    x ──DynamicQuantizeLinear──> (xq u8, xs scalar, xzp scalar u8)
    MatMulInteger(xq, Wq, xzp, Wzp) ─Cast(float)─> Mul(·, Mul(xs, w_scale)) ─> (Add bias ...)

``DynamicQuantizeLinear`` takes one scale for the whole ``[batch, seq, hidden]`` tensor, so one
batch-mate with a large activation coarsens the quantization of every other text in the batch: the same
text gets a different embedding depending on what it is batched with. :func:`rowquant_model` gives each
row of ``x`` (each token) its own scale instead, so a row's result depends on that row alone.

Modes (``levels`` = L):

``sym``   scale_r = max|x_r| / L, xq = Cast<u8>(Clip(Round(x / scale_r) + (L + 1), 0, 255)), integer GEMM
          with the scalar a_zero_point L + 1.
``asym``  scale_r = (max(x_r, 0) - min(x_r, 0)) / (2L + 1), zp_r = Round(-min(x_r, 0) / scale_r),
          xq = Cast<u8>(Clip(Round(x / scale_r) + zp_r, 0, 255)); onnxruntime's MatMulInteger accepts only a
          scalar ``a_zero_point``, so the GEMM runs with a_zero_point 0 and the graph subtracts
          ``zp_r * colsum(Wq - Wzp)`` (a constant per output channel) afterwards.

The dequantization becomes ``Mul(Mul(acc, w_scale), scale_r)`` (same per-channel weight scale as before, the
per-row scale in place of the per-tensor one). ``fused`` (default): the quantization is one QuantizeLinear
(per axis, over x flattened to ``[rows, K]``) and the GEMM with its ``w_scale`` is onnxruntime's
MatMulIntegerToFloat (com.microsoft); ``fused=False`` emits standard ONNX ops only (Div, Round, Add, Clip,
Cast, MatMulInteger, Cast, Mul), ~20% slower.

``levels=127`` uses the full u8 range. ``levels=63`` keeps raw u8 activation values ≤ 127 (≤ 128 after a
rounding tie in asym): on x86 without VNNI, onnxruntime's u8s8 GEMM multiplies with VPMADDUBSW, whose int16
pair sums ``a0*b0 + a1*b1`` of the *raw* u8 values saturate outside [-32768, 32767]; raw values ≤ 128
against the symmetric s8 weights of quantize_dynamic (|w| ≤ 127) stay ≤ 32512, so a 7-bit activation
range is safe with full-range weights, whereas ``reduce_range`` (7-bit weights, |w| ≤ 64) is what makes
the 8-bit activation range safe (≤ 32640). A zero point of 128 does not help: the kernel multiplies raw
values and corrects for zero points afterwards. (Measured by emulating the pair sums on all-MiniLM-L6-v2's
real activations, 64 texts: full-range weights with 8-bit activations saturate 2.6e-3 of the GEMM outputs
per tensor, 1.1e-2 ``sym`` and 6.1e-2 ``asym`` per row; none with ``reduce_range`` or ``levels=63``.)
The u8u8 GEMM (QUInt8 weights) widens to int16 before multiplying and cannot saturate.

Every other node is kept; a ``DynamicQuantizeLinear`` whose outputs are used in any other way is left as
it is (and counted in the note).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Mode = Literal["sym", "asym"]
MODES: tuple[Mode, ...] = ("sym", "asym")
#: a row of zeros gets this scale (any positive value gives xq = zero point, so the row's result is 0)
_EPS = 1e-12


def _opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise ValueError("model has no default-domain opset")


class _Builder:
    """Adds nodes and initializers with unique names under a prefix."""

    def __init__(self, graph: onnx.GraphProto, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names = {i.name for i in graph.initializer} | {
            o for n in graph.node for o in list(n.output) + list(n.input)
        }

    def name(self, base: str) -> str:
        cand, k = base, 0
        while cand in self._names:
            k += 1
            cand = f"{base}_{k}"
        self._names.add(cand)
        return cand

    def const(self, base: str, value: np.ndarray) -> str:
        n = self.name(base)
        self.inits.append(numpy_helper.from_array(value, n))
        return n

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: object) -> str:
        out = self.name(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(base + "_node"), **attrs))
        return out

    def reduce(self, op_type: str, x: str, base: str) -> str:
        """ReduceMax/ReduceMin over the last axis, keepdims (axes is an input from opset 18)."""
        if self.opset >= 18:
            axes = self.const(base + "_axes", np.array([-1], dtype=np.int64))
            return self.op(op_type, [x, axes], base, keepdims=1)
        return self.op(op_type, [x], base, axes=[-1], keepdims=1)


def _row_quantize(
    b: _Builder, x: str, mode: Mode, levels: int, tag: str, fused: bool
) -> tuple[str, str, str | None]:
    """Nodes quantizing ``x`` per row: (xq u8 shaped like x, scale_r float [..,1], zp_r float [..,1] or
    None for sym). ``fused``: one QuantizeLinear (per-axis over x flattened to [rows, K]) instead of
    Div, Round, Add, Clip and Cast."""
    eps = b.const(f"{tag}_eps", np.array(_EPS, dtype=np.float32))
    rmax = b.reduce("ReduceMax", x, f"{tag}_max")
    rmin = b.reduce("ReduceMin", x, f"{tag}_min")
    zp: str | None = None
    if mode == "sym":
        amax = b.op("Max", [rmax, b.op("Neg", [rmin], f"{tag}_negmin")], f"{tag}_absmax")
        amax = b.op("Max", [amax, eps], f"{tag}_absmax_pos")
        scale = b.op(
            "Div", [amax, b.const(f"{tag}_levels", np.array(float(levels), np.float32))], f"{tag}_scale"
        )
    else:
        zero = b.const(f"{tag}_zero", np.array(0.0, dtype=np.float32))
        xmax = b.op("Max", [rmax, zero], f"{tag}_max0")
        xmin = b.op("Min", [rmin, zero], f"{tag}_min0")
        rng = b.op("Max", [b.op("Sub", [xmax, xmin], f"{tag}_range"), eps], f"{tag}_range_pos")
        hi = b.const(f"{tag}_steps", np.array(float(2 * levels + 1), dtype=np.float32))
        scale = b.op("Div", [rng, hi], f"{tag}_scale")
        zp = b.op(
            "Round", [b.op("Div", [b.op("Neg", [xmin], f"{tag}_negmin"), scale], f"{tag}_zpdiv")], f"{tag}_zp"
        )
    if fused:
        flat = b.const(f"{tag}_flat", np.array([-1], dtype=np.int64))
        x2 = b.op("Flatten", [x], f"{tag}_x2d", axis=-1)
        s1 = b.op("Reshape", [scale, flat], f"{tag}_scale1d")
        if zp is None:  # the constant zero point, one per row
            zp1 = b.op(
                "Expand",
                [b.const(f"{tag}_zpu8", np.array(levels + 1, np.uint8)), b.op("Shape", [s1], f"{tag}_rows")],
                f"{tag}_zp1d",
            )
        else:
            zp1 = b.op(
                "Cast", [b.op("Reshape", [zp, flat], f"{tag}_zp1df")], f"{tag}_zp1d", to=TensorProto.UINT8
            )
        q2 = b.op("QuantizeLinear", [x2, s1, zp1], f"{tag}_q2d", axis=0)
        xq = b.op("Reshape", [q2, b.op("Shape", [x], f"{tag}_shape")], f"{tag}_quantized")
        return xq, scale, zp
    lo = b.const(f"{tag}_qmin", np.array(0.0, dtype=np.float32))
    hi255 = b.const(f"{tag}_qmax", np.array(255.0, dtype=np.float32))
    zp_f = zp if zp is not None else b.const(f"{tag}_zpf", np.array(float(levels + 1), dtype=np.float32))
    rounded = b.op("Round", [b.op("Div", [x, scale], f"{tag}_div")], f"{tag}_round")
    clipped = b.op("Clip", [b.op("Add", [rounded, zp_f], f"{tag}_shift"), lo, hi255], f"{tag}_clip")
    xq = b.op("Cast", [clipped], f"{tag}_quantized", to=TensorProto.UINT8)
    return xq, scale, zp


def rowquant_model(
    model: onnx.ModelProto, mode: Mode = "sym", levels: int = 127, fused: bool = True
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Rewrite ``model`` in place; returns it and counts {"rewritten", "matmuls", "skipped"}.

    ``fused`` (default): QuantizeLinear and onnxruntime's MatMulIntegerToFloat (com.microsoft) instead of
    the element-wise chain and MatMulInteger -> Cast -> Mul; ``fused=False`` emits standard ONNX ops only.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if not 1 <= levels <= 127:
        raise ValueError("levels must be in 1..127")
    g = model.graph
    b = _Builder(g, _opset(model))
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    counts = {"rewritten": 0, "matmuls": 0, "skipped": 0}
    drop: set[int] = set()
    # new nodes are placed where the node they replace or follow was; a stable sort fixes the order
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)

    def sole(name: str, op_type: str) -> onnx.NodeProto | None:
        c = consumers[name]
        ok = len(c) == 1 and c[0].op_type == op_type and name not in graph_outputs
        return c[0] if ok else None

    for dq in g.node:
        if dq.op_type != "DynamicQuantizeLinear" or dq.domain not in ("", "ai.onnx"):
            continue
        xq, xs, xzp = dq.output
        # each use: MatMulInteger(xq, W, xzp, Wzp) -> Cast(float) -> Mul(·, Mul(xs, w_scale))
        chains = []
        for m in consumers[xq]:
            if m.op_type != "MatMulInteger" or m.input[0] != xq or len(m.input) < 3 or m.input[2] != xzp:
                break
            cast = sole(m.output[0], "Cast")
            mul = sole(cast.output[0], "Mul") if cast is not None else None
            if mul is None:
                break
            sm_name = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
            sm = producer.get(sm_name)
            if sm is None or sm.op_type != "Mul" or xs not in sm.input or sole(sm_name, "Mul") is not mul:
                break
            ws = sm.input[1] if sm.input[0] == xs else sm.input[0]
            if mode == "asym" and (
                m.input[1] not in inits
                or ws not in inits
                or (len(m.input) > 3 and m.input[3] not in ("", *inits))
            ):
                break
            chains.append((m, cast, mul, sm, ws))
        else:
            uses = {id(n) for c in chains for n in (c[0], c[3])}
            if (
                chains
                and not ({xq, xs, xzp} & graph_outputs)
                and all(id(n) in uses for o in (xq, xs, xzp) for n in consumers[o])
            ):
                _rewrite(b, dq, chains, mode, levels, inits, after, drop, fused)
                drop.update(id(n) for n in (dq, *(c[2] for c in chains), *(c[3] for c in chains)))
                counts["rewritten"] += 1
                counts["matmuls"] += len(chains)
                continue
        counts["skipped"] += 1
    nodes: list[onnx.NodeProto] = []
    for n in g.node:
        if id(n) not in drop:
            nodes.append(n)
        nodes.extend(after.get(id(n), []))
    # new nodes sit where the node they replace (or follow) was; a stable sort makes the order valid
    del g.node[:]
    g.node.extend(_toposort(nodes, {i.name for i in g.input} | set(inits) | {i.name for i in b.inits}))
    g.initializer.extend(b.inits)
    if fused and counts["rewritten"] and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model, counts


def _rewrite(
    b: _Builder,
    dq: onnx.NodeProto,
    chains: list[tuple[onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, onnx.NodeProto, str]],
    mode: Mode,
    levels: int,
    inits: dict[str, onnx.TensorProto],
    after: dict[int, list[onnx.NodeProto]],
    drop: set[int],
    fused: bool,
) -> None:
    """Emit the per-row quantization of ``dq``'s input and rewire each MatMulInteger -> Cast -> Mul chain.

    The dequantization becomes Mul(Mul(Cast(acc), w_scale), scale_r) instead of Mul(Cast(acc),
    Mul(xs, w_scale)): onnxruntime fuses the latter into MatMulIntegerToFloat, which reads a per-row
    ``a_scale`` as a per-tensor one (measured: wrong results at ORT_ENABLE_ALL, onnxruntime 1.32).
    """
    x = dq.input[0]
    tag = b.name(f"{x}_rowq")
    b.nodes = after[id(dq)]
    q, scale, zp = _row_quantize(b, x, mode, levels, tag, fused)
    zp_scalar = b.const(f"{tag}_zero_point", np.array(levels + 1 if mode == "sym" else 0, dtype=np.uint8))
    one = b.const(f"{tag}_one", np.array(1.0, dtype=np.float32)) if fused else ""
    for m, cast, mul, _sm, ws in chains:
        m.input[0] = q
        m.input[2] = zp_scalar
        b.nodes = after[id(cast)]
        if fused:  # MatMulInteger -> Cast -> Mul(·, w_scale) in one kernel, then the per-row scale
            drop.update((id(m), id(cast)))
            acc = b.name(f"{m.output[0]}_wscaled")
            wzp = m.input[3] if len(m.input) > 3 else ""
            b.nodes.append(
                helper.make_node(
                    "MatMulIntegerToFloat", [q, m.input[1], one, ws, zp_scalar, wzp], [acc],
                    name=b.name(f"{m.name}_rowq"), domain="com.microsoft",
                )
            )  # fmt: skip
        else:
            acc = b.op("Mul", [cast.output[0], ws], f"{mul.output[0]}_wscaled")
        if zp is not None:  # asym: remove zp_r * sum_k (W - Wzp) (times w_scale, already applied)
            w = numpy_helper.to_array(inits[m.input[1]]).astype(np.int64)
            wzp_v = np.zeros((), np.int64)
            if len(m.input) > 3 and m.input[3]:
                wzp_v = numpy_helper.to_array(inits[m.input[3]]).astype(np.int64)
            colsum = (w - wzp_v).sum(axis=-2).astype(np.float32)
            colsum = colsum * numpy_helper.to_array(inits[ws]).astype(np.float32)
            corr = b.op("Mul", [zp, b.const(f"{tag}_colsum", colsum)], f"{acc}_zpcorr")
            acc = b.op("Sub", [acc, corr], f"{acc}_rowq")
        b.nodes.append(
            helper.make_node("Mul", [acc, scale], [mul.output[0]], name=b.name(f"{mul.name}_rowq"))
        )


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (Kahn), keeping the given order wherever it is already valid."""
    have = set(available) | {""}
    pending = list(nodes)
    out: list[onnx.NodeProto] = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all(i in have for i in n.input):
                out.append(n)
                have.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = sorted({i for n in rest for i in n.input if i not in have})[:5]
            raise ValueError(f"graph has a cycle or undefined inputs after the rewrite: {missing}")
        pending = rest
    return out


def rowquant_file(
    src: Path, dst: Path, mode: Mode = "sym", levels: int = 127, external: bool = False, fused: bool = True
) -> str:
    """Rewrite the dynamic-int8 ONNX file ``src`` into ``dst``; returns a one-line note."""
    from ._onnx import save_model

    model = onnx.load(str(src))
    model, counts = rowquant_model(model, mode, levels, fused)
    if counts["rewritten"] == 0:
        raise ValueError(f"{src}: no DynamicQuantizeLinear -> MatMulInteger pattern to rewrite")
    if not external:
        onnx.checker.check_model(model)
    save_model(model, dst, external)
    return (
        f"per-row dynamic activation quantization ({mode}, {levels} levels each side"
        f"{', QuantizeLinear + MatMulIntegerToFloat' if fused else ', standard ops'}; "
        f"{counts['rewritten']} DynamicQuantizeLinear -> {counts['matmuls']} MatMulInteger rewritten"
        + (f", {counts['skipped']} left per-tensor" if counts["skipped"] else "")
        + ")"
    )
