"""Writes the shortlist-scan graphs shipped in mrl_infer/search/graphs/ (needs the onnx package).

Each graph scores one chunk of the shortlist tier against a batch of queries and returns the chunk's
top ``kk`` (exact): scores ``[n, Q]`` are max-reduced over groups of ``G`` rows, the top ``kk`` groups
are kept (every top-``kk`` row lies in one of them), and the best ``kk`` rows of those groups are
returned. This keeps the selection ~G times cheaper than a TopK over all scores, in compiled code.
Both TopKs are unsorted (``sorted=0``: a selection, no sort; ``_scan`` merges and sorts the chunks'
results): at 64 queries x 480 candidates over 1M 128-d int8 rows the scan took 128-140 ms against
154-211 ms sorted (same scores; only the choice among rows tied at the cut differs).

The ``scan_*_above`` graphs take the chunks after the first: given ``below``, for each query the
largest score under its running cut (the ``kk``-th best score so far), they return only the groups
whose max is above it, as ``(group, query)`` pairs with the group's ``G`` scores. No row under the
cut can enter the final top ``kk``, and past the first chunks few rows reach it, so the selection
costs a compare and a NonZero over the group maxima instead of two TopKs of ``kk``.

    python scripts/build_scan_graphs.py            # rewrite the shipped files
    python scripts/build_scan_graphs.py --check    # exit 1 if they differ from what this writes
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import onnx
from onnx import TensorProto as TP
from onnx import helper

GROUP = 8
OUT = Path(__file__).resolve().parents[1] / "mrl_infer" / "search" / "graphs"


def _i64(name: str, values: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TP.INT64, [len(values)], values)


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    """The graph as a checked opset-18 model (IR 8, which onnxruntime 1.32 reads)."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 18)],
        producer_name="mrl_infer scripts/build_scan_graphs.py",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build(precision: str, above: bool = False) -> onnx.ModelProto:
    """The scan graph for a tier stored as float16, int8 (as uint8 = int8 + 128) or ubinary.

    Scores are ``t @ q``: ``t`` the tier chunk ``[n, d]`` as the big GEMM operand, ``q`` the
    pre-transposed query block ``[d, Q]``. int8 and ubinary tiers are multiplied as uint8 against
    int8 queries (MatMulInteger, int32 scores): the +128 offset of the uint8 rows adds a constant
    per query, and ubinary's {0, 1} rows give ``q . b``, both order-preserving for each query.
    """
    nodes = []
    inits = [
        _i64("axis0", [0]),
        _i64("axis1", [1]),
        _i64("two", [2]),
        _i64("minus1", [-1]),
        _i64("expand", [1, GROUP, 1]),
        _i64("group", [GROUP]),
    ]
    if precision == "float16":
        tin = helper.make_tensor_value_info("t", TP.FLOAT16, ["n", "d"])
        qin = helper.make_tensor_value_info("q", TP.FLOAT, ["d", "Q"])
        nodes += [
            helper.make_node("Cast", ["t"], ["tf"], to=TP.FLOAT),
            helper.make_node("MatMul", ["tf", "q"], ["s"]),
        ]  # [n, Q] float
    else:
        qin = helper.make_tensor_value_info("q", TP.INT8, ["d", "Q"])
        rows = "t"
        if precision == "ubinary":
            # t: uint8 [n, d/8], MSB first (numpy.packbits) -> uint8 {0, 1} [n, d]
            tin = helper.make_tensor_value_info("t", TP.UINT8, ["n", "b"])
            inits += [
                helper.make_tensor("shifts", TP.UINT8, [8], [7, 6, 5, 4, 3, 2, 1, 0]),
                helper.make_tensor("one", TP.UINT8, [], [1]),
                _i64("axis2", [2]),
                _i64("bits_shape", [0, -1]),
            ]
            nodes += [
                helper.make_node("Unsqueeze", ["t", "axis2"], ["t3"]),  # [n, b, 1]
                helper.make_node("BitShift", ["t3", "shifts"], ["sh"], direction="RIGHT"),  # [n, b, 8]
                helper.make_node("BitwiseAnd", ["sh", "one"], ["bits"]),
                helper.make_node("Reshape", ["bits", "bits_shape"], ["tb"]),  # [n, d]
            ]
            rows = "tb"
        else:
            tin = helper.make_tensor_value_info("t", TP.UINT8, ["n", "d"])
        nodes.append(helper.make_node("MatMulInteger", [rows, "q"], ["s"]))  # [n, Q] int32
    nodes += [
        helper.make_node("Shape", ["s"], ["s_shape"]),
        helper.make_node("Slice", ["s_shape", "axis1", "two"], ["qdim"]),  # [1] = Q
        helper.make_node("Concat", ["minus1", "group", "qdim"], ["shape3"], axis=0),
        *([] if above else [helper.make_node("Concat", ["minus1", "qdim"], ["flat"], axis=0)]),
        helper.make_node("Reshape", ["s", "shape3"], ["s3"]),  # [n/G, G, Q]
        helper.make_node("ReduceMax", ["s3", "axis1"], ["gmax"], keepdims=0),  # [n/G, Q]
    ]
    inputs = [tin, qin]
    if above:
        score_type = TP.FLOAT if precision == "float16" else TP.INT32
        inputs.append(helper.make_tensor_value_info("below", score_type, ["Q"]))
        inits.append(helper.make_tensor("within", TP.INT64, [GROUP], list(range(GROUP))))
        nodes += [
            # compared as [Q, n/G] against [Q, 1]: onnxruntime broadcasts over long rows fast, but
            # [n/G, Q] against [Q] at one query costs ~8 ns a group (70 of 470 us a chunk)
            helper.make_node("Transpose", ["gmax"], ["gmaxt"], perm=[1, 0]),  # [Q, n/G]
            helper.make_node("Unsqueeze", ["below", "axis1"], ["belowc"]),  # [Q, 1]
            helper.make_node("Greater", ["gmaxt", "belowc"], ["hitt"]),
            helper.make_node("Transpose", ["hitt"], ["hit"], perm=[1, 0]),  # [n/G, Q]
            # by group, not by query: the gather below then reads the score block in order
            helper.make_node("NonZero", ["hit"], ["nz"]),  # [2, M]: (group, query)
            helper.make_node("Transpose", ["nz"], ["pairs"], perm=[1, 0]),  # [M, 2]
            helper.make_node("Split", ["nz"], ["g2", "q2"], axis=0, num_outputs=2),  # [1, M] each
            helper.make_node("Squeeze", ["g2", "axis0"], ["g"]),
            helper.make_node("Squeeze", ["q2", "axis0"], ["qi"]),
            # flat index of s3[g, j, qi] = (g * G + j) * Q + qi
            helper.make_node("Mul", ["g", "group"], ["g0"]),
            helper.make_node("Unsqueeze", ["g0", "axis1"], ["g0c"]),  # [M, 1]
            helper.make_node("Add", ["g0c", "within"], ["rowsg"]),  # [M, G]
            helper.make_node("Mul", ["rowsg", "qdim"], ["off"]),
            helper.make_node("Unsqueeze", ["qi", "axis1"], ["qic"]),
            helper.make_node("Add", ["off", "qic"], ["flat_idx"]),  # [M, G]
            helper.make_node("Reshape", ["s", "minus1"], ["sflat"]),
            helper.make_node("Gather", ["sflat", "flat_idx"], ["blk"], axis=0),  # [M, G]
            helper.make_node("Cast", ["blk"], ["scores"], to=TP.FLOAT),
        ]
        outputs = [
            helper.make_tensor_value_info("scores", TP.FLOAT, ["M", GROUP]),
            helper.make_tensor_value_info("pairs", TP.INT64, ["M", 2]),
        ]
    else:
        inputs.append(helper.make_tensor_value_info("kk", TP.INT64, [1]))
        nodes += [
            helper.make_node("Transpose", ["gmax"], ["gmaxt"], perm=[1, 0]),  # [Q, n/G]
            helper.make_node("TopK", ["gmaxt", "kk"], ["gval", "gidxt"], axis=1, sorted=0),  # [Q, kk]
            helper.make_node("Transpose", ["gidxt"], ["gidx"], perm=[1, 0]),  # [kk, Q]
            helper.make_node("Unsqueeze", ["gidx", "axis1"], ["gidx3"]),  # [kk, 1, Q]
            helper.make_node("Expand", ["gidx3", "expand"], ["gidxe"]),  # [kk, G, Q]
            helper.make_node("GatherElements", ["s3", "gidxe"], ["blk"], axis=0),  # [kk, G, Q]
            helper.make_node("Reshape", ["blk", "flat"], ["cand"]),  # [kk*G, Q]
            helper.make_node("Transpose", ["cand"], ["candt"], perm=[1, 0]),  # [Q, kk*G]
            helper.make_node("TopK", ["candt", "kk"], ["top", "local"], axis=1, sorted=0),  # [Q, kk]
            helper.make_node("Cast", ["top"], ["scores"], to=TP.FLOAT),
            helper.make_node("Div", ["local", "group"], ["slot"]),
            helper.make_node("Mod", ["local", "group"], ["within"]),
            helper.make_node("GatherElements", ["gidxt", "slot"], ["grp"], axis=1),  # [Q, kk]
            helper.make_node("Mul", ["grp", "group"], ["base"]),
            helper.make_node("Add", ["base", "within"], ["rows"]),  # [Q, kk] rows in chunk
        ]
        outputs = [
            helper.make_tensor_value_info("scores", TP.FLOAT, ["Q", "k"]),
            helper.make_tensor_value_info("rows", TP.INT64, ["Q", "k"]),
        ]
    graph = helper.make_graph(
        nodes,
        f"mrl_infer_scan_{precision}{'_above' if above else ''}",
        inputs,
        outputs,
        inits,
    )
    return _model(graph)


def build_cast() -> onnx.ModelProto:
    """float16 ``[n, d]`` -> float32: the rerank tier's rows. onnxruntime converts with F16C
    (1.8 ms for 30,000 x 384 rows, bit-identical) where numpy's astype took 18 ms on Zen 5."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TP.FLOAT)],
        "mrl_infer_cast_float16",
        [helper.make_tensor_value_info("x", TP.FLOAT16, ["n", "d"])],
        [helper.make_tensor_value_info("y", TP.FLOAT, ["n", "d"])],
    )
    return _model(graph)


def build_gemm(rows_type: int = TP.FLOAT) -> onnx.ModelProto:
    """``q @ rows.T`` (float32 ``[Q, d]`` x ``[U, d]`` -> ``[Q, U]``): the rerank's scores; float16 rows
    are cast inside the graph (no float32 copy of the gathered rows). In onnxruntime rather than
    numpy: OpenBLAS's threads spin after each GEMM and took the cores from the scan's pool (64
    queries x 480 candidates over 1M rows: 138 vs 180 ms a batch, Intel Xeon with AMX)."""
    name = "float16" if rows_type == TP.FLOAT16 else "float32"
    operand = "rows_f" if rows_type == TP.FLOAT16 else "rows"
    nodes = [helper.make_node("Gemm", ["q", operand], ["s"], transB=1)]
    if rows_type == TP.FLOAT16:
        nodes.insert(0, helper.make_node("Cast", ["rows"], ["rows_f"], to=TP.FLOAT))
    graph = helper.make_graph(
        nodes,
        f"mrl_infer_gemm_{name}",
        [
            helper.make_tensor_value_info("q", TP.FLOAT, ["Q", "d"]),
            helper.make_tensor_value_info("rows", rows_type, ["U", "d"]),
        ],
        [helper.make_tensor_value_info("s", TP.FLOAT, ["Q", "U"])],
    )
    return _model(graph)


def main() -> int:
    check = "--check" in sys.argv[1:]
    OUT.mkdir(parents=True, exist_ok=True)
    stale = []
    graphs = {
        f"scan_{precision}{'_above' if above else ''}.onnx": build(precision, above)
        for precision, above in itertools.product(("float16", "int8", "ubinary"), (False, True))
    }
    graphs["cast_float16.onnx"] = build_cast()
    graphs["gemm_float32.onnx"] = build_gemm()
    graphs["gemm_float16.onnx"] = build_gemm(TP.FLOAT16)
    for name, model in graphs.items():
        data = model.SerializeToString()
        path = OUT / name
        if check:
            if not path.is_file() or path.read_bytes() != data:
                stale.append(str(path))
        else:
            path.write_bytes(data)
    if stale:
        print("stale scan graphs (run python scripts/build_scan_graphs.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
