"""Incremental, resumable output writers for the batch CLI: .npy, Parquet and JSONL.

Each writer appends to a partial file inside the job's work directory (next to the output, so
the final rename is atomic), makes its data durable on :meth:`sync` and returns a small position
dict that the checkpoint records. Reopening with that position truncates whatever was written
after the checkpoint, so a resumed job continues exactly where the durable data ends.
:meth:`finalize` builds the finished file in the work directory and renames it onto the output
path: a file under the final name is always complete.

- ``.npy``: rows are appended after a header written for shape ``(0, dim)``; at the end the
  header is rewritten in place with the real row count. numpy pads ``.npy`` headers so that the
  row count can grow without moving the data, so the result is byte for byte what ``np.save``
  writes. (``open_memmap`` needs the row count up front, which a stream cannot know.)
- Parquet: rows go to numbered part files, one closed at every checkpoint (a Parquet file is
  only readable once its footer is written), and the parts are merged into one file with
  fixed-size row groups at the end, so the final file does not depend on where a job stopped.
- JSONL: one ``{"id": ..., ["text": ...,] "embedding": [...]}`` object per line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import InputError

OUTPUT_FORMATS = ("npy", "parquet", "jsonl")
_EXT_FORMAT = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# Embedding bytes per row group in the merged Parquet file (a deterministic function of the row size).
_ROW_GROUP_BYTES = 32 << 20


def output_format(path: str, override: str | None = None) -> str:
    """The output format from ``--format`` or the output's extension."""
    if override is not None:
        if override not in OUTPUT_FORMATS:
            raise InputError(
                f"unknown output format '{override}'; expected one of {', '.join(OUTPUT_FORMATS)}"
            )
        return override
    fmt = _EXT_FORMAT.get(Path(path).suffix.lower())
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the output format from the extension; "
            f"use .npy/.parquet/.jsonl or --format {{{','.join(OUTPUT_FORMATS)}}}"
        )
    return fmt


def embedding_dtype(precision: str) -> np.dtype:
    """The numpy dtype of stored embeddings for an output precision (sentence-transformers names)."""
    table = {
        "float32": np.float32,
        "int8": np.int8,
        "uint8": np.uint8,
        "binary": np.int8,
        "ubinary": np.uint8,
    }
    if precision not in table:
        raise InputError(f"unknown precision '{precision}'; expected one of {', '.join(table)}")
    return np.dtype(table[precision])


def embedding_width(precision: str, dim: int) -> int:
    """Columns per stored row: ``dim``, or ``dim / 8`` packed bytes for (u)binary."""
    if precision in ("binary", "ubinary"):
        if dim % 8:
            raise InputError(f"{precision} precision packs 8 dims per byte; dim {dim} is not a multiple of 8")
        return dim // 8
    return dim


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or file creation in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(fh: io.BufferedWriter) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def _open_append(path: Path, length: int) -> io.BufferedWriter:
    """Open ``path`` for appending after truncating it to ``length`` bytes (0 creates it)."""
    fh = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115
    actual = fh.seek(0, os.SEEK_END)
    if actual < length:
        fh.close()
        raise InputError(f"{path}: holds {actual} bytes, the checkpoint expects {length}; cannot resume")
    fh.truncate(length)
    fh.seek(length)
    return fh


class SkipLog:
    """The ``--on-error skip`` sidecar: one JSON line per skipped row (file, line, index, reason)."""

    def __init__(self, workdir: Path, position: dict[str, Any] | None = None) -> None:
        self.path = workdir / "skipped.jsonl"
        self.count = int((position or {}).get("count", 0))
        self._fh = _open_append(self.path, int((position or {}).get("bytes", 0)))

    def add(self, file: str, line: int, index: int, reason: str) -> None:
        rec = {"file": file, "line": line, "index": index, "reason": reason}
        self._fh.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self.count += 1

    def sync(self) -> dict[str, Any]:
        _fsync_file(self._fh)
        return {"bytes": self._fh.tell(), "count": self.count}

    def finalize(self, final: Path) -> None:
        """Rename onto ``final`` if any row was skipped; otherwise drop the empty log (and a stale one)."""
        self.close()
        if self.count:
            os.replace(self.path, final)
        else:
            self.path.unlink(missing_ok=True)
            final.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class NpyWriter:
    """Append rows to a ``.npy`` body; the header gets the real row count at the end."""

    def __init__(self, workdir: Path, width: int, dtype: np.dtype, position: dict[str, Any] | None = None):
        self.path = workdir / "data.npy.partial"
        self.width = width
        self.dtype = np.dtype(dtype)
        self.row_bytes = width * self.dtype.itemsize
        self.header_len = len(self._header(0))
        if len(self._header(10**18)) != self.header_len:  # pragma: no cover - numpy < 1.24 pads less
            raise RuntimeError("this numpy's .npy header length depends on the row count; upgrade numpy")
        self.rows = int((position or {}).get("rows", 0))
        new = not self.path.exists() or position is None
        if new:
            self.path.unlink(missing_ok=True)
        self._fh = _open_append(self.path, 0 if new else self.header_len + self.rows * self.row_bytes)
        if new:
            self._fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        buf = io.BytesIO()
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (rows, self.width),
        }
        np.lib.format.write_array_header_1_0(buf, header)
        return buf.getvalue()

    def write(self, ids: list[Any], texts: list[str] | None, emb: np.ndarray) -> None:
        emb = np.ascontiguousarray(emb, dtype=self.dtype)
        assert emb.ndim == 2 and emb.shape[1] == self.width, emb.shape
        self._fh.write(emb.tobytes())
        self.rows += emb.shape[0]

    def sync(self) -> dict[str, Any]:
        _fsync_file(self._fh)
        return {"rows": self.rows}

    def finalize(self, final: Path) -> None:
        self._fh.seek(0)
        self._fh.write(self._header(self.rows))
        _fsync_file(self._fh)
        self._fh.close()
        os.replace(self.path, final)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


class JsonlWriter:
    """One JSON object per output row; floats are written so that they read back exactly."""

    def __init__(
        self,
        workdir: Path,
        width: int,
        dtype: np.dtype,
        include_text: bool,
        position: dict[str, Any] | None = None,
    ):
        self.path = workdir / "data.jsonl.partial"
        self.include_text = include_text
        self.dtype = np.dtype(dtype)
        self.rows = int((position or {}).get("rows", 0))
        if position is None:
            self.path.unlink(missing_ok=True)
        self._fh = _open_append(self.path, int((position or {}).get("bytes", 0)))

    def write(self, ids: list[Any], texts: list[str] | None, emb: np.ndarray) -> None:
        lines = []
        values = emb.astype(self.dtype, copy=False).tolist()
        for i, vec in enumerate(values):
            rec: dict[str, Any] = {"id": ids[i]}
            if self.include_text and texts is not None:
                rec["text"] = texts[i]
            rec["embedding"] = vec
            lines.append(json.dumps(rec, ensure_ascii=False))
        if lines:
            self._fh.write(("\n".join(lines) + "\n").encode("utf-8"))
        self.rows += len(values)

    def sync(self) -> dict[str, Any]:
        _fsync_file(self._fh)
        return {"bytes": self._fh.tell(), "rows": self.rows}

    def finalize(self, final: Path) -> None:
        _fsync_file(self._fh)
        self._fh.close()
        os.replace(self.path, final)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(
            "Parquet needs pyarrow, which is not installed: pip install 'mrl-infer[files]'"
        ) from exc
    return pa, pq


def parquet_schema(
    width: int, dtype: np.dtype, id_type: str, include_text: bool, metadata: dict[str, str] | None = None
) -> Any:
    """``id`` (int64 row index or string), optional ``text``, ``embedding`` as a fixed-size list."""
    pa, _ = _pyarrow()
    fields = [pa.field("id", pa.int64() if id_type == "int" else pa.string(), nullable=False)]
    if include_text:
        fields.append(pa.field("text", pa.string(), nullable=False))
    fields.append(
        pa.field("embedding", pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), width), nullable=False)
    )
    return pa.schema(fields, metadata=metadata)


def embedding_array(emb: np.ndarray, dtype: np.dtype) -> Any:
    """A ``[n, width]`` array as an Arrow fixed-size list array (zero-copy for contiguous input)."""
    pa, _ = _pyarrow()
    emb = np.ascontiguousarray(emb, dtype=dtype)
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])


class ParquetWriter:
    """Parts closed at each checkpoint, merged into one file with fixed-size row groups at the end."""

    def __init__(
        self,
        workdir: Path,
        width: int,
        dtype: np.dtype,
        include_text: bool,
        id_type: str,
        metadata: dict[str, str] | None = None,
        position: dict[str, Any] | None = None,
    ):
        self.pa, self.pq = _pyarrow()
        self.dir = workdir / "parts"
        self.width = width
        self.dtype = np.dtype(dtype)
        self.include_text = include_text
        self.schema = parquet_schema(width, self.dtype, id_type, include_text, metadata)
        self.parts = int((position or {}).get("parts", 0))
        self.rows = int((position or {}).get("rows", 0))
        if position is None and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob("part-*.parquet"):  # parts begun after the checkpoint
            if int(stale.stem.split("-")[1]) >= self.parts:
                stale.unlink()
        self._writer: Any = None
        self.row_group_rows = max(1024, _ROW_GROUP_BYTES // max(1, width * self.dtype.itemsize))

    def _part(self, i: int) -> Path:
        return self.dir / f"part-{i:06d}.parquet"

    def table(self, ids: list[Any], texts: list[str] | None, emb: np.ndarray) -> Any:
        pa = self.pa
        cols = [pa.array(ids, type=self.schema.field("id").type)]
        if self.include_text:
            cols.append(pa.array(texts, type=pa.string()))
        cols.append(embedding_array(emb, self.dtype))
        return pa.Table.from_arrays(cols, schema=self.schema)

    def write(self, ids: list[Any], texts: list[str] | None, emb: np.ndarray) -> None:
        if self._writer is None:
            self._writer = self.pq.ParquetWriter(str(self._part(self.parts)), self.schema)
        self._writer.write_table(self.table(ids, texts, emb))
        self.rows += emb.shape[0]

    def sync(self) -> dict[str, Any]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            with open(self._part(self.parts), "rb+") as fh:
                os.fsync(fh.fileno())
            fsync_dir(self.dir)
            self.parts += 1
        return {"parts": self.parts, "rows": self.rows}

    def finalize(self, final: Path) -> None:
        """Merge the parts in order into row groups of ``row_group_rows`` rows, then rename."""
        self.sync()
        tmp = self.dir.parent / "final.parquet.partial"
        pending: list[Any] = []
        pending_rows = 0
        with self.pq.ParquetWriter(str(tmp), self.schema) as out:
            for i in range(self.parts):
                for batch in self.pq.ParquetFile(str(self._part(i))).iter_batches(
                    batch_size=self.row_group_rows
                ):
                    pending.append(batch)
                    pending_rows += batch.num_rows
                    while pending_rows >= self.row_group_rows:
                        table = self.pa.Table.from_batches(pending, schema=self.schema)
                        out.write_table(
                            table.slice(0, self.row_group_rows), row_group_size=self.row_group_rows
                        )
                        rest = table.slice(self.row_group_rows)
                        pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows or self.rows == 0:
                out.write_table(
                    self.pa.Table.from_batches(pending, schema=self.schema),
                    row_group_size=self.row_group_rows,
                )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


Writer = NpyWriter | ParquetWriter | JsonlWriter


def open_writer(
    fmt: str,
    workdir: Path,
    *,
    width: int,
    dtype: np.dtype,
    include_text: bool = False,
    id_type: str = "int",
    metadata: dict[str, str] | None = None,
    position: dict[str, Any] | None = None,
) -> Writer:
    """Open (or reopen at a checkpoint ``position``) the writer for an output format."""
    if fmt == "npy":
        return NpyWriter(workdir, width, dtype, position)
    if fmt == "jsonl":
        return JsonlWriter(workdir, width, dtype, include_text, position)
    if fmt == "parquet":
        return ParquetWriter(workdir, width, dtype, include_text, id_type, metadata, position)
    raise InputError(f"unknown output format '{fmt}'")
