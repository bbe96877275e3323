"""An index on disk: a directory with a versioned manifest, written atomically, memory-mapped on load.

Layout (format version 1)::

    DIR/index.json                       manifest: format, version, model, dims, tiers, count, files
    DIR/shortlist_{dim}_{precision}.npy  each shortlist tier (read into RAM on load)
    DIR/shortlist_{dim}_int8.scale.npy   an int8 tier's per-dim scale
    DIR/rerank.npy                       the rerank tier (memory-mapped; only shortlisted rows are read)
    DIR/ids.npy | DIR/ids.json           int64 ids, or string ids
    DIR/fields.jsonl + fields.offsets.npy  stored fields, one JSON object per row (optional)
    DIR/hnsw_{dim}.faiss                 the HNSW graph of ``Index.add_hnsw`` (optional; faiss' format)

``"shortlist"`` lists every shortlist tier (``Index.add_tier``), ``{"dim", "precision", "file"}``
(+ ``"scale_file"`` for int8); ``"shortlist_config"`` names the default tier. Several tiers came
after format version 1 was fixed and stay version 1, both ways compatible: an index with one tier
is written as before, and the default tier is written *last*, so a reader that predates several
tiers (it keeps the last entry it reads) searches the default tier and ignores the others. An empty
index writes 0-row tier files; on load their tiers are rebuilt with the first rows added.
``"hnsw"`` (``{"dim", "m", "ef_construction", "count", "file"}``; ``file`` null for an empty
index) came later too: a reader that predates it ignores the key and the file.

A build goes to a hidden sibling directory that is renamed onto ``DIR`` only once every file is
written and synced, so ``DIR`` is either absent, the old index, or the complete new one. The
manifest records every file's size: a truncated file is named on load, before it is used.
"""

from __future__ import annotations

import json
import mmap as _mmap
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import IndexFormatError

FORMAT = "mrl-infer-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Written:
    """What :func:`write_index` needs: the manifest body and the arrays and rows to write."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]
    segments: list[np.ndarray]  # rerank tier, in order
    rerank_dtype: str
    ids: list[Any] | np.ndarray
    fields: list[dict[str, Any]] | None
    #: other files, each written by its function given the file's path (the HNSW graph)
    extra: dict[str, Callable[[Path], None]] = field(default_factory=dict)


def _write_rerank(path: Path, segments: list[np.ndarray], dtype: str, dim: int) -> None:
    n = sum(len(s) for s in segments)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=(n, dim))
    offset = 0
    for seg in segments:
        for start in range(0, len(seg), 65_536):
            block = seg[start : start + 65_536]
            out[offset + start : offset + start + len(block)] = block
        offset += len(seg)
    out.flush()
    del out


def _write_fields(tmp: Path, fields: list[dict[str, Any]]) -> None:
    offsets = np.zeros(len(fields) + 1, np.int64)
    with open(tmp / "fields.jsonl", "wb") as fh:
        for i, row in enumerate(fields):
            fh.write(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
            offsets[i + 1] = fh.tell()
    np.save(tmp / "fields.offsets.npy", offsets)


def write_index(target: Path, w: Written, *, overwrite: bool) -> None:
    """Write the index to ``target`` atomically (see the module docstring)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=True to replace it)")
    if target.exists() and not (target / MANIFEST).is_file():
        raise FileExistsError(f"{target} exists and is not an index directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, arr in w.arrays.items():
            np.save(tmp / name, arr)
        for name, write in w.extra.items():
            write(tmp / name)
        dim = w.manifest["rerank"]["dim"]
        _write_rerank(tmp / "rerank.npy", w.segments, w.rerank_dtype, dim)
        if isinstance(w.ids, np.ndarray):
            np.save(tmp / "ids.npy", w.ids)
        else:
            (tmp / "ids.json").write_text(json.dumps(list(w.ids), ensure_ascii=False), encoding="utf-8")
        if w.fields is not None:
            _write_fields(tmp, w.fields)
        manifest = dict(w.manifest)
        manifest["files"] = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        for p in tmp.iterdir():
            _fsync(p)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _fsync(tmp / MANIFEST)
        _fsync(tmp)
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the index at ``path``, checked for format, version and file sizes."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise IndexFormatError(f"{path}: no such index directory")
    if not mpath.is_file():
        raise IndexFormatError(f"{mpath}: missing (not an index directory, or an incomplete build)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{mpath}: not an mrl-infer index manifest (format != {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise IndexFormatError(
            f"{mpath}: format_version {version!r} was written by a newer mrl-infer; this version reads "
            f"up to {FORMAT_VERSION} (upgrade mrl-infer)"
        )
    for key in ("count", "dim", "shortlist", "rerank", "files"):
        if key not in manifest:
            raise IndexFormatError(f"{mpath}: missing field {key!r}")
    for name, size in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise IndexFormatError(f"{f}: missing (the index directory is incomplete)")
        actual = f.stat().st_size
        if actual != size:
            raise IndexFormatError(
                f"{f}: {actual} bytes, the manifest says {size} (truncated or overwritten; rebuild the index)"
            )
    return manifest


def load_array(path: Path, *, mmap: bool, rows: int, width: int | None = None) -> np.ndarray:
    """``np.load`` of one index file, with its shape checked against the manifest."""
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{path}: unreadable ({exc})") from None
    if len(arr) != rows or (width is not None and (arr.ndim != 2 or arr.shape[1] != width)):
        raise IndexFormatError(f"{path}: shape {arr.shape}, expected {rows} rows of width {width}")
    raw = getattr(arr, "_mmap", None)
    if mmap and raw is not None and hasattr(raw, "madvise") and hasattr(_mmap, "MADV_RANDOM"):
        # rows are read a few at a time, scattered: ask the kernel not to read ahead around them
        raw.madvise(_mmap.MADV_RANDOM)
    return arr


def load_ids(path: Path, count: int) -> list[Any] | np.ndarray:
    if (path / "ids.npy").is_file():
        return load_array(path / "ids.npy", mmap=False, rows=count)
    f = path / "ids.json"
    try:
        ids = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{f}: unreadable ({exc})") from None
    if not isinstance(ids, list) or len(ids) != count:
        raise IndexFormatError(f"{f}: expected a list of {count} ids")
    return ids


class FieldFile:
    """Stored fields read on demand: row ``i`` is line ``i`` of ``fields.jsonl``.

    The file is memory-mapped on first read (once, not opened per row), so looking up the fields of
    a search's hits costs a slice and a ``json.loads`` each, and ``to_list`` one pass over the file.
    """

    def __init__(self, path: Path, count: int) -> None:
        self.path = path / "fields.jsonl"
        self.offsets = load_array(path / "fields.offsets.npy", mmap=False, rows=count + 1)
        self._data: Any = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _bytes(self) -> Any:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    with open(self.path, "rb") as fh:
                        empty = os.fstat(fh.fileno()).st_size == 0
                        self._data = b"" if empty else _mmap.mmap(fh.fileno(), 0, access=_mmap.ACCESS_READ)
        return self._data

    def __getitem__(self, i: int) -> dict[str, Any]:
        line = self._bytes()[int(self.offsets[i]) : int(self.offsets[i + 1])]
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise IndexFormatError(f"{self.path}: row {i} is not valid JSON ({exc})") from None
        return value  # type: ignore[no-any-return]

    def to_list(self) -> list[dict[str, Any]]:
        return [self[i] for i in range(len(self))]
