"""Input readers: every format and compression, row order, and errors that name the file and line."""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from mrl_infer.errors import InputError
from mrl_infer.jobs._readers import Record, detect_format, expand_inputs, read_file, read_inputs

TEXTS = ["first text", "", "  spaces kept  ", "日本語のテキスト", "emoji 😀", 'a "quoted", comma']


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    elif path.suffix == ".zst":
        zstd = pytest.importorskip("zstandard")
        data = zstd.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def _txt(texts: list[str]) -> bytes:
    return ("\n".join(texts) + "\n").encode("utf-8")


def _jsonl(texts: list[str]) -> bytes:
    return "".join(
        json.dumps({"id": f"d{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)
    ).encode()


def _csv(texts: list[str], sep: str) -> bytes:
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=sep, lineterminator="\n")
    w.writerow(["id", "text"])
    for i, t in enumerate(texts):
        w.writerow([f"d{i}", t])
    return buf.getvalue().encode()


@pytest.mark.parametrize("compression", ["", ".gz", ".zst"])
@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "tsv"])
def test_text_formats_round_trip(tmp_path: Path, fmt: str, compression: str) -> None:
    data = {"txt": _txt, "jsonl": _jsonl, "csv": lambda t: _csv(t, ","), "tsv": lambda t: _csv(t, "\t")}[fmt](
        TEXTS
    )
    path = _write(tmp_path / f"in.{fmt}{compression}", data)
    recs = list(read_file(str(path), id_field=None if fmt == "txt" else "id"))
    assert [r.text for r in recs] == TEXTS
    assert all(r.error is None for r in recs)
    if fmt != "txt":
        assert [r.id for r in recs] == [f"d{i}" for i in range(len(TEXTS))]
    if fmt in ("txt", "jsonl"):
        assert [r.line for r in recs] == list(range(1, len(TEXTS) + 1))


def test_compression_detected_by_magic_bytes(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(gzip.compress(_txt(["a", "b"])))  # gzip without a .gz name
    assert [r.text for r in read_file(str(path))] == ["a", "b"]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc": [1, 2, 3], "body": ["x", None, "z"]}), path, row_group_size=2)
    recs = list(read_file(str(path), text_field="body", id_field="doc"))
    assert [(r.line, r.text, r.id) for r in recs] == [(1, "x", "1"), (2, None, None), (3, "z", "3")]
    assert recs[1].error == "column 'body' is null"
    with pytest.raises(InputError, match=r"no text column 'text' \(columns present: 'doc', 'body'\)"):
        list(read_file(str(path)))
    with pytest.raises(InputError, match="type int64, expected a string"):
        list(read_file(str(path), text_field="doc"))


def test_txt_lines_crlf_bom_and_no_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfone\r\n\r\ntwo\n  \nthree")
    assert [r.text for r in read_file(str(path))] == ["one", "", "two", "  ", "three"]


def test_jsonl_row_errors_name_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"text": "ok"}\n{"text": "broken"\n{"title": "t", "body": "b"}\n{"text": null}\n{"text": 3}\n[1]\n\n'
        '{"text": "fine", "id": null}\n',
        encoding="utf-8",
    )
    recs = list(read_file(str(path)))
    assert recs[0] == Record(str(path), 1, "ok", None, None)
    errors = {r.line: r.error for r in recs if r.error}
    assert errors[2].startswith("malformed JSON")
    assert errors[3] == "no field 'text' (fields present: 'title', 'body')"
    assert errors[4] == "field 'text' is null"
    assert errors[5] == "field 'text' is int, expected a string"
    assert errors[6] == "expected a JSON object, got list"
    assert errors[7] == "empty line (expected a JSON object)"
    recs = list(read_file(str(path), id_field="id"))
    assert recs[7].error == "field 'id' (the id) is null"


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "in.txt"
    path.write_bytes(b"good\nbad \xff\xfe here\nalso good\n")
    recs = list(read_file(str(path)))
    assert [r.text for r in recs] == ["good", None, "also good"]
    assert recs[1].line == 2 and recs[1].error is not None and "invalid UTF-8" in recs[1].error


@pytest.mark.parametrize("name", ["e.txt", "e.jsonl", "e.csv", "e.txt.gz"])
def test_empty_file_is_an_error(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, b"")
    with pytest.raises(InputError, match=r"e\..*: the file is empty"):
        list(read_file(str(path)))


def test_binary_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "b.txt"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"b\.txt: looks like a binary file"):
        list(read_file(str(path)))
    pq = tmp_path / "fake.parquet"
    pq.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="not a Parquet file"):
        list(read_file(str(pq)))


def test_csv_missing_column_lists_present(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("title,body\nx,y\n")
    with pytest.raises(
        InputError, match=r"in\.csv: no text column 'text' in the header \(columns present: 'title', 'body'\)"
    ):
        list(read_file(str(path)))
    path.write_text("id,text\n1,a\n2,b,extra\n3,c\n")
    recs = list(read_file(str(path), id_field="id"))
    assert [r.text for r in recs] == ["a", None, "c"]
    assert recs[1].line == 3 and recs[1].error == "row has 3 fields, the header has 2"


def test_csv_multiline_field_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text('text\n"two\nlines"\nnext\n')
    recs = list(read_file(str(path)))
    assert [(r.line, r.text) for r in recs] == [(2, "two\nlines"), (4, "next")]


def test_inputs_in_order_across_files_globs_and_dirs(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    for name, texts in {"d/b.txt": ["b1"], "d/a.txt": ["a1", "a2"], "c.jsonl": ["c1"]}.items():
        p = tmp_path / name
        p.write_bytes(_jsonl(texts) if name.endswith("jsonl") else _txt(texts))
    (tmp_path / "d" / "notes.md").write_text("ignored: unknown extension in a directory")
    files = expand_inputs([str(tmp_path / "c.jsonl"), str(tmp_path / "d")])
    assert [Path(f).name for f in files] == ["c.jsonl", "a.txt", "b.txt"]
    assert [r.text for r in read_inputs(files)] == ["c1", "a1", "a2", "b1"]
    assert [Path(f).name for f in expand_inputs([str(tmp_path / "d" / "*.txt")])] == ["a.txt", "b.txt"]
    with pytest.raises(InputError, match="matches no file"):
        expand_inputs([str(tmp_path / "*.nope")])
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.txt")])
    with pytest.raises(InputError, match="cannot tell the input format"):
        expand_inputs([str(tmp_path / "d" / "notes.md")])


def test_detect_format() -> None:
    assert detect_format("x.jsonl.zst") == ("jsonl", "zstd")
    assert detect_format("x.TSV.gz") == ("tsv", "gzip")
    assert detect_format("-") == ("txt", None)
    assert detect_format("-", "jsonl") == ("jsonl", None)
    with pytest.raises(InputError, match="compressed Parquet"):
        detect_format("x.parquet.gz")


def test_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = io.TextIOWrapper(io.BufferedReader(io.BytesIO(_jsonl(["s1", "s2"]))))
    monkeypatch.setattr(sys, "stdin", fake)
    assert [r.text for r in read_file("-", input_format="jsonl")] == ["s1", "s2"]


class _Budget(io.RawIOBase):
    """A file that raises once more than ``limit`` bytes have been read from it."""

    def __init__(self, path: str, limit: int) -> None:
        self._fh = open(path, "rb")  # noqa: SIM115
        self.limit = limit
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        if self.read_bytes >= self.limit:
            raise AssertionError(f"read past {self.limit} bytes: the reader is not lazy")
        n = self._fh.readinto(memoryview(buf)[: self.limit - self.read_bytes])
        self.read_bytes += n
        return n

    def close(self) -> None:
        self._fh.close()
        super().close()


@pytest.mark.parametrize("name", ["big.txt", "big.jsonl.gz", "big.csv.zst"])
def test_reader_streams_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The first record needs at most a few MiB of a much larger file; then the rest streams."""
    import hashlib

    from mrl_infer.jobs import _readers

    n = 300_000  # hex digests: even compressed, the file is several times the 3 MiB budget
    body = [f"line {i} " + hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    data = {"txt": _txt, "jsonl": _jsonl, "csv": lambda t: _csv(t, ",")}[name.split(".")[1]](body)
    path = _write(tmp_path / name, data)
    assert path.stat().st_size > 3 * (3 << 20)
    opened: list[_Budget] = []

    def budget_open(file: str, mode: str = "r", *a: Any, **k: Any) -> Any:
        assert mode == "rb"
        opened.append(_Budget(file, limit=3 << 20))
        return io.BufferedReader(opened[-1])

    monkeypatch.setattr(_readers, "open", budget_open, raising=False)
    it = read_file(str(path), id_field=None if name.endswith("txt") else "id")
    assert next(it).text == body[0]
    assert opened and opened[0].read_bytes <= 3 << 20  # an eager reader raises above
    opened[0].limit = 1 << 40
    assert sum(1 for _ in it) == n - 1


def test_malformed_json_message_has_no_doubled_word(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "unterminated}\n')
    (rec,) = read_file(str(path))
    assert rec.error == "malformed JSON (Unterminated string starting at column 10)"


def test_directory_recursion_skips_dot_and_underscore_names(tmp_path: Path) -> None:
    d = tmp_path / "data"
    for name in ["a.txt", "sub/b.txt", ".hidden.txt", "_SUCCESS.txt", ".git/x.txt", "_temporary/y.txt"]:
        p = d / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("t\n")
    assert [str(Path(f).relative_to(d)) for f in expand_inputs([str(d)])] == ["a.txt", "sub/b.txt"]
    # a directory given explicitly is read even if its own name starts with '_'
    assert [Path(f).name for f in expand_inputs([str(d / "_temporary")])] == ["y.txt"]
