"""int8 embedding tables: a large ``Gather`` over a float table becomes a gather of int8 rows and scales.

onnxruntime's dynamic quantization leaves ``Gather`` alone when asked for MatMul/Attention/Gemm only, and
its own ``Gather`` quantization uses one scale for the whole table. For a BERT-style model the word
embedding table is about half the weights (all-MiniLM-L6-v2: 30,522 x 384 floats, 46.9 MB of 90 MB), so
the int8 file stays twice the size it could be. Here each row (token) gets its own symmetric scale,
``max|row| / 127``: the table is stored as int8 ``[V, D]`` plus float ``[V, 1]`` scales, and the graph
gathers both and multiplies, ``Mul(Cast(Gather(q, ids)), Gather(scale, ids))``, so only the looked-up rows
are dequantized. The per-element error is at most half a step, ``max|row| / 254``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def quantize_gathers(model: onnx.ModelProto, min_rows: int = 4096) -> int:
    """Rewrite, in place, each ``Gather`` (axis 0) over a 2-D float initializer of at least ``min_rows`` rows
    and 8 columns that nothing else reads; returns how many were rewritten (0 on a rewritten graph)."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes: list[onnx.NodeProto] = []
    done = 0
    drop: set[str] = set()
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            table is None
            or table.data_type != TensorProto.FLOAT
            or len(table.dims) != 2
            or table.dims[0] < min_rows
            or table.dims[1] < 8  # narrower rows gain little (and this keeps our own scales as they are)
            or axis != 0
            or readers.get(table.name, 0) != 1
        ):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(table).astype(np.float32)
        scale = np.abs(w).max(axis=1, keepdims=True) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        base, ids, out = table.name, node.input[1], node.output[0]
        graph.initializer.extend(
            [numpy_helper.from_array(q, base + "_int8"), numpy_helper.from_array(scale, base + "_row_scale")]
        )
        nodes += [
            helper.make_node("Gather", [base + "_int8", ids], [out + "_int8"], name=node.name + "_int8"),
            helper.make_node(
                "Gather", [base + "_row_scale", ids], [out + "_scale"], name=node.name + "_scale"
            ),
            helper.make_node(
                "Cast", [out + "_int8"], [out + "_f"], to=TensorProto.FLOAT, name=node.name + "_cast"
            ),
            helper.make_node("Mul", [out + "_f", out + "_scale"], [out], name=node.name + "_dequant"),
        ]
        drop.add(base)
        done += 1
    if done:
        kept = [t for t in graph.initializer if t.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def gatherquant_file(src: Path, dst: Path, external: bool = False, min_rows: int = 4096) -> str:
    """Rewrite the ONNX file ``src`` into ``dst`` (may be the same path); returns a one-line note."""
    from ._onnx import save_model

    model = onnx.load(str(src))
    n = quantize_gathers(model, min_rows)
    if n == 0:
        raise ValueError(f"{src}: no Gather over a float table of >= {min_rows} rows to quantize")
    if not external:
        onnx.checker.check_model(model)
    save_model(model, dst, external)
    return f"{n} embedding table(s) int8 with a scale per row (Gather of int8 rows and scales, then Mul)"
