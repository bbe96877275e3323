"""Streaming readers for the batch CLI: .txt, .jsonl, .csv, .tsv and .parquet, plain, gzip or zstd.

Every reader yields :class:`Record` objects one input row at a time, so memory stays bounded
whatever the file size. A row that cannot be used (malformed JSON, missing field, null or
non-string value, invalid UTF-8) is yielded with ``error`` set instead of raising, so the job
can either fail with the file and line in the message or record the row in the skip sidecar.
Problems with a whole file (missing, empty, binary, a column that does not exist) raise
:class:`~mrl_infer.errors.InputError` with the file name.

Line numbers are 1-based physical lines of the (decompressed) text; for Parquet, which has no
lines, ``line`` is the 1-based row number in the file.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mrl_infer.errors import InputError

FORMATS = ("txt", "jsonl", "csv", "tsv", "parquet")
_EXT_FORMAT = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_COMPRESSION_EXT = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_PARQUET_MAGIC = b"PAR1"
STDIN = "-"
DEFAULT_TEXT_FIELD = "text"


@dataclass(frozen=True)
class Record:
    """One input row: its text and id, or the reason it cannot be embedded."""

    file: str
    line: int
    text: str | None
    id: str | None = None
    error: str | None = None


class ReadProgress:
    """How far the readers have got, in bytes of the input files as stored (compressed sizes).

    Text files report the position of the file under the decompressor; a Parquet file counts its
    size times the share of its rows read. Cheap to ask (one ``tell()``), so a progress bar can.
    """

    def __init__(self) -> None:
        self.done = 0  # bytes of the files finished
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._rows = (0, 0)  # Parquet: rows read, rows in the file

    def position(self) -> int:
        """Bytes read so far across all files."""
        if self._fh is not None:
            try:
                return self.done + min(self._size, self._fh.tell())
            except (OSError, ValueError):
                return self.done
        read, total = self._rows
        return self.done + (self._size * read // total if total else 0)

    def _start(self, path: str, fh: IO[bytes] | None) -> None:
        self._size = os.path.getsize(path) if path != STDIN else 0
        self._fh = fh if path != STDIN else None
        self._rows = (0, 0)

    def _finish(self) -> None:
        self.done += self._size
        self._fh, self._size, self._rows = None, 0, (0, 0)


def missing_extra(module: str, extra: str = "files") -> InputError:
    """The error raised when an optional dependency of an input/output format is not installed."""
    return InputError(
        f"this needs the '{module}' package, which is not installed: pip install 'mrl-infer[{extra}]'"
    )


def _import_optional(module: str, extra: str = "files") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(module.split(".")[0], extra) from exc


def detect_format(path: str, override: str | None = None) -> tuple[str, str | None]:
    """Return ``(format, compression)`` for a path from its extensions (``data.jsonl.zst``)."""
    if override is not None and override not in FORMATS:
        raise InputError(f"unknown input format '{override}'; expected one of {', '.join(FORMATS)}")
    name = Path(path).name.lower()
    stem, ext = os.path.splitext(name)
    compression = _COMPRESSION_EXT.get(ext)
    if compression:
        ext = os.path.splitext(stem)[1]
    if override is not None:
        return override, compression
    if path == STDIN:
        return "txt", None
    fmt = _EXT_FORMAT.get(ext)
    if fmt is None:
        raise InputError(
            f"{path}: cannot tell the input format from the extension '{ext or '(none)'}'; "
            f"use .txt/.jsonl/.csv/.tsv/.parquet (optionally .gz/.zst) or --input-format"
        )
    if fmt == "parquet" and compression:
        raise InputError(f"{path}: compressed Parquet files are not supported (Parquet compresses itself)")
    return fmt, compression


def expand_inputs(inputs: Iterable[str], input_format: str | None = None) -> list[str]:
    """Expand globs and directories into a list of files, in the order given (globs and dirs sorted).

    A directory contributes its files with a known extension (recursively, sorted by path),
    skipping every file or directory whose name starts with ``.`` or ``_`` (``.git/``,
    ``_temporary/``, ``_SUCCESS``); a glob or directory that matches nothing is an error, never
    silently empty.
    """
    files: list[str] = []
    for item in inputs:
        if item == STDIN:
            files.append(item)
        elif os.path.isdir(item):
            root = Path(item)
            found = sorted(
                str(p)
                for p in root.rglob("*")
                if p.is_file()
                and not any(part.startswith((".", "_")) for part in p.relative_to(root).parts)
                and _known(str(p), input_format)
            )
            if not found:
                raise InputError(f"{item}: directory has no input files (.txt/.jsonl/.csv/.tsv/.parquet)")
            files.extend(found)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not found:
                raise InputError(f"{item}: the pattern matches no file")
            files.extend(found)
        elif os.path.isfile(item):
            files.append(item)
        else:
            raise InputError(f"{item}: no such file")
    if files.count(STDIN) > 1:
        raise InputError("'-' (stdin) can be given only once")
    for f in files:
        detect_format(f, input_format)  # fail early on an unknown extension
    return files


def _known(path: str, input_format: str | None) -> bool:
    try:
        detect_format(path, input_format)
    except InputError:
        return False
    return True


def _open_binary(path: str, compression: str | None, progress: ReadProgress | None = None) -> IO[bytes]:
    """Open a file (or stdin) as a decompressed binary stream; the magic bytes win over the extension."""
    raw: IO[bytes] = sys.stdin.buffer if path == STDIN else open(path, "rb")  # noqa: SIM115
    if progress is not None:
        progress._start(path, raw)
    head = raw.peek(4)[:4] if hasattr(raw, "peek") else b""
    if head.startswith(_GZIP_MAGIC):
        compression = "gzip"
    elif head.startswith(_ZSTD_MAGIC):
        compression = "zstd"
    if compression == "gzip":
        return _Closing(gzip.GzipFile(fileobj=raw, mode="rb"), raw)
    if compression == "zstd":
        zstd = _import_optional("zstandard")
        return io.BufferedReader(zstd.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def _lines(path: str, stream: IO[bytes]) -> Iterator[tuple[int, str | None, str | None]]:
    """Yield ``(line_no, text, error)`` for each line, without its line terminator.

    Raises for an empty or binary file (a NUL byte in the first 8 KiB); a line that is not
    valid UTF-8 comes back with ``error`` set.
    """
    try:
        first = stream.read(8192)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    except Exception as exc:  # zstandard.ZstdError and friends
        raise InputError(f"{path}: cannot decompress ({exc})") from exc
    if not first:
        raise InputError(f"{path}: the file is empty")
    if b"\x00" in first:
        raise InputError(f"{path}: looks like a binary file (NUL bytes), not text")
    rest = io.BufferedReader(_Prepend(first, stream), buffer_size=1 << 20)
    line_no = 0
    while True:
        try:
            raw = rest.readline()
        except (OSError, EOFError) as exc:
            raise InputError(f"{path}: cannot read after line {line_no} ({exc})") from exc
        except Exception as exc:
            raise InputError(f"{path}: cannot decompress after line {line_no} ({exc})") from exc
        if not raw:
            return
        line_no += 1
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # UTF-8 byte-order mark
        if raw.endswith(b"\n"):
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        try:
            yield line_no, raw.decode("utf-8"), None
        except UnicodeDecodeError as exc:
            yield line_no, None, f"invalid UTF-8 at byte {exc.start}: {raw[exc.start : exc.start + 4]!r}"


class _Closing(io.RawIOBase):
    """A decompressing stream that also closes the file under it (GzipFile leaves it open)."""

    def __init__(self, stream: IO[bytes], under: IO[bytes]) -> None:
        self._stream = stream
        self._under = under

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)

    def readinto(self, buf: Any) -> int:
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        if self._under is not sys.stdin.buffer:
            self._under.close()
        super().close()


class _Prepend(io.RawIOBase):
    """A raw stream that replays already-read bytes before the rest of another stream."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self._stream is not sys.stdin.buffer:
            self._stream.close()
        super().close()


def _check_value(value: Any, field: str, kind: str) -> str | None:
    if value is None:
        return f"{kind} '{field}' is null"
    if not isinstance(value, str):
        return f"{kind} '{field}' is {type(value).__name__}, expected a string"
    return None


def _id_value(value: Any, field: str, kind: str) -> tuple[str | None, str | None]:
    """Ids are carried as strings (numbers are converted) so that files can mix id types."""
    if value is None:
        return None, f"{kind} '{field}' (the id) is null"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"{kind} '{field}' (the id) is {type(value).__name__}, expected a string or number"
    return str(value), None


def _read_txt(path: str, stream: IO[bytes]) -> Iterator[Record]:
    for line_no, text, error in _lines(path, stream):
        yield Record(path, line_no, text, None, error)


def _read_jsonl(path: str, stream: IO[bytes], text_field: str, id_field: str | None) -> Iterator[Record]:
    for line_no, line, error in _lines(path, stream):
        if error is not None:
            yield Record(path, line_no, None, None, error)
            continue
        assert line is not None
        if not line.strip():
            yield Record(path, line_no, None, None, "empty line (expected a JSON object)")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            # json's messages may end in "at" ("Unterminated string starting at"): do not double it
            where = "column" if exc.msg.endswith(" at") else "at column"
            yield Record(path, line_no, None, None, f"malformed JSON ({exc.msg} {where} {exc.colno})")
            continue
        if not isinstance(obj, dict):
            yield Record(path, line_no, None, None, f"expected a JSON object, got {type(obj).__name__}")
            continue
        if text_field not in obj:
            present = ", ".join(map(repr, obj)) or "none"
            yield Record(path, line_no, None, None, f"no field '{text_field}' (fields present: {present})")
            continue
        err = _check_value(obj[text_field], text_field, "field")
        rid = None
        if err is None and id_field is not None:
            if id_field not in obj:
                present = ", ".join(map(repr, obj)) or "none"
                err = f"no id field '{id_field}' (fields present: {present})"
            else:
                rid, err = _id_value(obj[id_field], id_field, "field")
        if err is not None:
            yield Record(path, line_no, None, None, err)
        else:
            yield Record(path, line_no, obj[text_field], rid, None)


def _read_delimited(
    path: str, stream: IO[bytes], delimiter: str, text_field: str, id_field: str | None
) -> Iterator[Record]:
    lines = _lines(path, stream)
    state = {"line": 0, "error": None}

    def feed() -> Iterator[str]:
        for line_no, text, error in lines:
            state["line"] = line_no
            state["error"] = error
            # csv wants the newline back to tell quoted multi-line fields apart
            yield (text if text is not None else "") + "\n"

    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: the file is empty") from None
    except csv.Error as exc:
        raise InputError(f"{path}:{state['line']}: malformed header ({exc})") from exc
    if state["error"]:
        raise InputError(f"{path}:1: header is not valid UTF-8 ({state['error']})")
    columns = {name: i for i, name in enumerate(header)}
    present = ", ".join(map(repr, header))
    for name, what in ((text_field, "text"), (id_field, "id")):
        if name is not None and name not in columns:
            raise InputError(f"{path}: no {what} column '{name}' in the header (columns present: {present})")
    ti = columns[text_field]
    ii = columns[id_field] if id_field is not None else None
    while True:
        start = state["line"] + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Record(path, start, None, None, f"malformed {delimiter!r}-separated row ({exc})")
            continue
        if state["error"]:
            yield Record(path, start, None, None, str(state["error"]))
            continue
        if not row:
            yield Record(path, start, None, None, "empty line (expected a row)")
            continue
        if len(row) != len(header):
            yield Record(path, start, None, None, f"row has {len(row)} fields, the header has {len(header)}")
            continue
        yield Record(path, start, row[ti], row[ii] if ii is not None else None, None)


def _read_parquet(
    path: str, text_field: str, id_field: str | None, batch_rows: int, progress: ReadProgress | None = None
) -> Iterator[Record]:
    pq = _import_optional("pyarrow.parquet")
    pa = _import_optional("pyarrow")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise InputError(f"{path}: the file is empty")
    if head != _PARQUET_MAGIC:
        raise InputError(f"{path}: not a Parquet file (bad magic bytes)")
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read Parquet ({exc})") from exc
    schema = pf.schema_arrow
    present = ", ".join(map(repr, schema.names))
    for name, what in ((text_field, "text"), (id_field, "id")):
        if name is not None and name not in schema.names:
            raise InputError(f"{path}: no {what} column '{name}' (columns present: {present})")
    ttype = schema.field(text_field).type
    if not (pa.types.is_string(ttype) or pa.types.is_large_string(ttype) or pa.types.is_string_view(ttype)):
        raise InputError(f"{path}: column '{text_field}' has type {ttype}, expected a string column")
    columns = [text_field] + ([id_field] if id_field and id_field != text_field else [])
    row = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
        if progress is not None:
            progress._rows = (row + batch.num_rows, pf.metadata.num_rows)
        texts = batch.column(text_field).to_pylist()
        ids = batch.column(id_field).to_pylist() if id_field else [None] * len(texts)
        for text, rid in zip(texts, ids, strict=True):
            row += 1
            err = _check_value(text, text_field, "column")
            sid = None
            if err is None and id_field is not None:
                sid, err = _id_value(rid, id_field, "column")
            if err is not None:
                yield Record(path, row, None, None, err)
            else:
                yield Record(path, row, text, sid, None)
    if row == 0:
        raise InputError(f"{path}: the Parquet file has no rows")


def read_file(
    path: str,
    *,
    text_field: str | None = None,
    id_field: str | None = None,
    input_format: str | None = None,
    batch_rows: int = 4096,
    progress: ReadProgress | None = None,
) -> Iterator[Record]:
    """Stream the records of one input file (``-`` is stdin); see the module docstring.

    ``progress``, if given, follows how many bytes of the file have been read.
    """
    fmt, compression = detect_format(path, input_format)
    field = text_field or DEFAULT_TEXT_FIELD
    if fmt == "txt" and id_field is not None:
        raise InputError(f"{path}: --id-field does not apply to .txt inputs (one text per line, no fields)")
    if fmt == "parquet":
        if path == STDIN:
            raise InputError("Parquet cannot be read from stdin; pass a file")
        if progress is not None:
            progress._start(path, None)
        yield from _read_parquet(path, field, id_field, batch_rows, progress)
        if progress is not None:
            progress._finish()
        return
    try:
        stream = _open_binary(path, compression, progress)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc})") from exc
    try:
        if fmt == "txt":
            yield from _read_txt(path, stream)
        elif fmt == "jsonl":
            yield from _read_jsonl(path, stream, field, id_field)
        else:
            yield from _read_delimited(path, stream, "," if fmt == "csv" else "\t", field, id_field)
    finally:
        if path != STDIN:
            stream.close()
    if progress is not None:
        progress._finish()


def read_inputs(
    files: Iterable[str],
    *,
    text_field: str | None = None,
    id_field: str | None = None,
    input_format: str | None = None,
    progress: ReadProgress | None = None,
) -> Iterator[Record]:
    """Stream the records of several files, one after the other in the order given."""
    for path in files:
        yield from read_file(
            path, text_field=text_field, id_field=id_field, input_format=input_format, progress=progress
        )
