"""int8 embedding tables (export/_gatherquant.py): the rewritten graph, run by onnxruntime, against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mrl_export._gatherquant import gatherquant_file, quantize_gathers
from onnx import TensorProto, helper, numpy_helper


def _graph(table: np.ndarray, small: np.ndarray) -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["b", "s", table.shape[1]])
    nodes = [
        helper.make_node("Gather", ["word", "ids"], ["w"]),
        helper.make_node("Gather", ["pos", "ids"], ["p"]),  # a small table: left as it is
        helper.make_node("Add", ["w", "p"], ["out"]),
    ]
    inits = [numpy_helper.from_array(table, "word"), numpy_helper.from_array(small, "pos")]
    g = helper.make_graph(nodes, "g", [ids], [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"ids": ids})[0]


def test_rows_are_int8_with_a_scale_each_and_match_numpy() -> None:
    rng = np.random.default_rng(0)
    table = (rng.standard_normal((5000, 16)) * rng.uniform(0.01, 2.0, (5000, 1))).astype(np.float32)
    table[7] = 0.0  # an all-zero row must not divide by zero
    small = rng.standard_normal((100, 16)).astype(np.float32)
    ids = rng.integers(0, 100, (3, 9)).astype(np.int64)
    ids[0, 0] = 7
    model = _graph(table, small)
    ref = _run(model, ids)
    assert quantize_gathers(model) == 1
    names = {t.name: t for t in model.graph.initializer}
    assert "word" not in names and names["word_int8"].data_type == TensorProto.INT8
    assert list(names["word_row_scale"].dims) == [5000, 1] and "pos" in names
    got = _run(model, ids)
    step = np.abs(table).max(axis=1) / 127.0
    err = np.abs(got - ref)
    # at most half a quantization step of each looked-up row, and exact for the zero row
    assert np.all(err <= step[ids][..., None] / 2 + 1e-6)
    assert np.all(got[0, 0] == small[7])
    assert err.max() > 0  # it did quantize


def test_table_read_twice_is_left_alone_and_file_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    table = rng.standard_normal((5000, 16)).astype(np.float32)
    model = _graph(table, table[:10].copy())
    model.graph.node.append(helper.make_node("Identity", ["word"], ["unused"]))
    assert quantize_gathers(model) == 0
    src = tmp_path / "m.onnx"
    onnx.save_model(_graph(table, table[:10].copy()), str(src))
    note = gatherquant_file(src, src, external=True)
    assert "1 embedding table" in note and (tmp_path / "m.onnx.data").exists()
    # int8 rows plus one float scale each: (16 + 4) / 64 of the float table
    assert src.stat().st_size + (tmp_path / "m.onnx.data").stat().st_size < table.nbytes * 0.35
    with pytest.raises(ValueError, match="no Gather"):
        gatherquant_file(src, tmp_path / "again.onnx")
