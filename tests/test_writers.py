"""Output writers: round trips, byte-exact .npy, resume truncation, Parquet part merging."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from mrl_infer.errors import InputError
from mrl_infer.jobs._writers import (
    JsonlWriter,
    NpyWriter,
    ParquetWriter,
    SkipLog,
    embedding_dtype,
    embedding_width,
    output_format,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _data(n: int, dim: int, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(dtype) if dtype == "float32" else rng.integers(-128, 127, (n, dim)).astype(dtype)


def _np_save_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


@pytest.mark.parametrize("dtype", ["float32", "int8", "uint8"])
def test_npy_is_byte_identical_to_np_save(tmp_path: Path, dtype: str) -> None:
    x = _data(1000, 24, dtype)
    w = NpyWriter(tmp_path, 24, np.dtype(dtype))
    for start in range(0, 1000, 333):
        w.write([], None, x[start : start + 333])
    w.finalize(tmp_path / "out.npy")
    assert (tmp_path / "out.npy").read_bytes() == _np_save_bytes(x)
    assert not (tmp_path / "data.npy.partial").exists()
    m = np.lib.format.open_memmap(tmp_path / "out.npy", mode="r")
    assert m.shape == (1000, 24) and np.array_equal(m, x)


def test_npy_zero_rows(tmp_path: Path) -> None:
    w = NpyWriter(tmp_path, 8, np.dtype(np.float32))
    w.finalize(tmp_path / "o.npy")
    assert np.load(tmp_path / "o.npy").shape == (0, 8)


def test_npy_resume_truncates_after_checkpoint(tmp_path: Path) -> None:
    x = _data(300, 16)
    w = NpyWriter(tmp_path, 16, np.dtype(np.float32))
    w.write([], None, x[:100])
    pos = w.sync()
    w.write([], None, x[100:150] + 1)  # written after the checkpoint, then "killed"
    w.close()
    w = NpyWriter(tmp_path, 16, np.dtype(np.float32), position=pos)
    w.write([], None, x[100:])
    w.finalize(tmp_path / "o.npy")
    assert (tmp_path / "o.npy").read_bytes() == _np_save_bytes(x)


def test_npy_resume_refuses_short_file(tmp_path: Path) -> None:
    w = NpyWriter(tmp_path, 4, np.dtype(np.float32))
    w.write([], None, _data(2, 4))
    w.close()
    with pytest.raises(InputError, match="the checkpoint expects"):
        NpyWriter(tmp_path, 4, np.dtype(np.float32), position={"rows": 10})


def test_jsonl_round_trip_and_resume(tmp_path: Path) -> None:
    x = _data(10, 4)
    w = JsonlWriter(tmp_path, 4, np.dtype(np.float32), include_text=True)
    w.write(list(range(5)), [f"t{i}" for i in range(5)], x[:5])
    pos = w.sync()
    w.write([99], ["junk"], x[:1])
    w.close()
    w = JsonlWriter(tmp_path, 4, np.dtype(np.float32), include_text=True, position=pos)
    w.write(list(range(5, 10)), [f"t{i}" for i in range(5, 10)], x[5:])
    w.finalize(tmp_path / "o.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(10))
    assert [r["text"] for r in rows] == [f"t{i}" for i in range(10)]
    assert np.array_equal(np.asarray([r["embedding"] for r in rows], dtype=np.float32), x)  # floats exact


def _parquet(tmp_path: Path, **kw: object) -> ParquetWriter:
    return ParquetWriter(tmp_path, 8, np.dtype(np.float32), include_text=True, id_type="str", **kw)  # type: ignore[arg-type]


def test_parquet_parts_merge_independent_of_checkpoints(tmp_path: Path) -> None:
    x = _data(5000, 8)
    ids = [f"id{i}" for i in range(5000)]
    texts = [f"text {i}" for i in range(5000)]
    outs = []
    for every in (1, 3, 100):
        d = tmp_path / str(every)
        d.mkdir()
        w = _parquet(d, metadata={"k": "v"})
        w.row_group_rows = 1500
        for n, start in enumerate(range(0, 5000, 250)):
            w.write(ids[start : start + 250], texts[start : start + 250], x[start : start + 250])
            if n % every == 0:
                w.sync()
        w.finalize(d / "o.parquet")
        outs.append((d / "o.parquet").read_bytes())
        t = pq.read_table(d / "o.parquet")
        assert t.column("id").to_pylist() == ids and t.column("text").to_pylist() == texts
        assert np.array_equal(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)), x)
        assert t.schema.field("embedding").type == pa.list_(pa.float32(), 8)
        assert t.schema.metadata[b"k"] == b"v"
        assert [pq.ParquetFile(d / "o.parquet").metadata.row_group(i).num_rows for i in range(4)] == [
            1500,
            1500,
            1500,
            500,
        ]
    assert outs[0] == outs[1] == outs[2]  # the same bytes wherever the checkpoints fell


def test_parquet_resume_drops_unfinished_parts(tmp_path: Path) -> None:
    x = _data(30, 8)
    w = _parquet(tmp_path)
    w.write(["a"] * 10, ["t"] * 10, x[:10])
    pos = w.sync()
    w.write(["junk"] * 10, ["t"] * 10, x[10:20])
    w.sync()  # a part closed after the recorded checkpoint must go too
    w.write(["junk"] * 5, ["t"] * 5, x[:5])
    w.close()
    w = _parquet(tmp_path, position=pos)
    w.write(["b"] * 20, ["t"] * 20, x[10:])
    w.finalize(tmp_path / "o.parquet")
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.column("id").to_pylist() == ["a"] * 10 + ["b"] * 20


def test_skiplog(tmp_path: Path) -> None:
    log = SkipLog(tmp_path)
    log.add("f.jsonl", 3, 2, "malformed JSON")
    pos = log.sync()
    log.add("f.jsonl", 9, 8, "after the checkpoint")
    log.close()
    log = SkipLog(tmp_path, pos)
    log.add("g.jsonl", 1, 10, "field 'text' is null")
    log.finalize(tmp_path / "o.skipped.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "o.skipped.jsonl").read_text().splitlines()]
    assert rows == [
        {"file": "f.jsonl", "line": 3, "index": 2, "reason": "malformed JSON"},
        {"file": "g.jsonl", "line": 1, "index": 10, "reason": "field 'text' is null"},
    ]
    (tmp_path / "x").mkdir()
    empty = SkipLog(tmp_path / "x")
    empty.finalize(tmp_path / "none.skipped.jsonl")
    assert not (tmp_path / "none.skipped.jsonl").exists()


def test_formats_and_precisions() -> None:
    assert output_format("a.NPY") == "npy" and output_format("a.pq") == "parquet"
    assert output_format("a.bin", "jsonl") == "jsonl"
    with pytest.raises(InputError, match="cannot tell the output format"):
        output_format("a.bin")
    assert embedding_dtype("binary") == np.int8 and embedding_dtype("ubinary") == np.uint8
    assert embedding_width("binary", 128) == 16 and embedding_width("int8", 128) == 128
    with pytest.raises(InputError, match="multiple of 8"):
        embedding_width("ubinary", 12)
