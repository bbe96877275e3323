"""The batch embedding job behind ``mrl-embed embed``: streaming, checkpointed, resumable.

A reader streams input records; valid rows are grouped into chunks of ``chunk_size`` rows (the
unit the Embedder length-sorts and batches, so chunk boundaries fix the numerics); chunks are
embedded in this process or by ``workers`` processes, written in input order, and every
``checkpoint_seconds`` the data is fsync'ed and ``state.json`` is atomically replaced with the
position reached. ``--resume`` truncates the partial output to that position and continues at
the same chunk boundary, so a resumed job writes the same bytes as an uninterrupted one.

Everything in flight lives in the work directory ``OUTPUT.mrl-job/`` next to the output; the
finished file is renamed onto ``OUTPUT`` at the very end, so a file under the final name is
always complete.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer._integrity import sha256_file
from mrl_infer.errors import InputError, NonFiniteEmbeddingError
from mrl_infer.jobs._readers import STDIN, ReadProgress, Record, detect_format, expand_inputs, read_inputs
from mrl_infer.jobs._writers import (
    SkipLog,
    Writer,
    embedding_dtype,
    embedding_width,
    fsync_dir,
    open_writer,
    output_format,
)

STATE_VERSION = 1
WORKDIR_SUFFIX = ".mrl-job"
SKIPPED_SUFFIX = ".skipped.jsonl"
RANGES_SUFFIX = ".ranges.json"
_QUANTIZED = ("int8", "uint8")


@dataclass
class JobOptions:
    """Everything ``mrl-embed embed`` was asked to do (the CLI flags, one to one)."""

    inputs: list[str]
    output: str
    model: str | None = None
    dim: int | None = None
    allow_any_dim: bool = False
    variant: str = "auto"
    device: str = "auto"
    batch_size: int = 32
    chunk_size: int = 1024
    precision: str = "float32"
    prompt_name: str | None = None
    prompt: str | None = None
    normalize: bool = True
    max_seq_length: int | None = None
    text_field: str | None = None
    id_field: str | None = None
    input_format: str | None = None
    output_format: str | None = None
    include_text: bool = False
    workers: int | str = 1
    threads: int | None = None
    resume: bool = False
    overwrite: bool = False
    on_error: str = "fail"
    calibration_rows: int = 10_000
    checkpoint_seconds: float = 10.0
    progress: bool = True


@dataclass
class JobSummary:
    """What a finished job did; ``rows``/``skipped``/``truncated`` count the whole job across resumes."""

    output: str
    format: str
    rows: int
    skipped: int
    truncated: int | None
    seconds: float
    rows_this_run: int
    resumed_at: int = 0
    skipped_file: str | None = None
    ranges_file: str | None = None
    complete: bool = False  # --resume found the output already finished: nothing was done
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows_this_run / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The one-paragraph summary printed at the end of a job."""
        if self.complete:
            rows = "" if self.rows < 0 else f" ({self.rows} rows)"
            return f"{self.output} is already complete{rows}; nothing to resume"
        lines = [
            f"wrote {self.rows} rows to {self.output} ({self.format}) in {self.seconds:.1f} s "
            f"({self.rows_per_s:.1f} rows/s"
            + (f"; resumed at row {self.resumed_at}" if self.resumed_at else "")
            + ")",
            "truncated inputs: "
            + ("not counted by this engine" if self.truncated is None else str(self.truncated)),
            f"skipped rows: {self.skipped}"
            + (f" (listed in {self.skipped_file})" if self.skipped_file else ""),
        ]
        if self.ranges_file:
            lines.append(f"quantization ranges: {self.ranges_file}")
        return "\n".join(lines)


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Inputs smaller than this are embedded by one worker: starting more costs more than it saves.
_AUTO_WORKERS_MIN_BYTES = 1 << 20


def resolve_workers(workers: int | str, files: list[str]) -> int:
    """``auto``: two processes on a machine with 2+ cores, unless the input is small (see docs/cli.md)."""
    if workers != "auto":
        return int(workers)
    cores = available_cores()
    if cores < 2:
        return 1
    if STDIN not in files and sum(os.path.getsize(f) for f in files) < _AUTO_WORKERS_MIN_BYTES:
        return 1
    return 2


def worker_threads(workers: int, threads: int | None = None) -> int | None:
    """ONNX Runtime threads per worker: ``threads`` if given, else the cores split between workers."""
    if threads is not None:
        return threads
    if workers <= 1:
        return None  # the Embedder's default: all physical cores
    return max(1, available_cores() // workers)


# --------------------------------------------------------------------------- embedding backends
_WORKER_EMBEDDER: Any = None


def _embedder_kwargs(opts: JobOptions, threads: int | None) -> dict[str, Any]:
    return {
        "model": opts.model,
        "dim": opts.dim,
        "allow_any_dim": opts.allow_any_dim,
        "variant": opts.variant,
        "device": opts.device,
        "threads": threads,
        "max_seq_length": opts.max_seq_length,
    }


def _encode_kwargs(opts: JobOptions) -> dict[str, Any]:
    return {
        "batch_size": opts.batch_size,
        "prompt_name": opts.prompt_name,
        "prompt": opts.prompt,
        "normalize_embeddings": opts.normalize,
        "precision": "float32",
        "show_progress_bar": False,
    }


def _make_embedder(kwargs: dict[str, Any]) -> Any:
    from mrl_infer import Embedder

    return Embedder(**kwargs)


def _exit_with_parent(parent: int) -> None:
    """End this worker when the main process ``parent`` dies, even by SIGKILL (which leaves no chance
    to clean up), including when it died while this worker was still starting (spawn imports take
    a while): then the worker is already re-parented and leaves at once."""
    if os.getppid() != parent:
        os._exit(1)
    with contextlib.suppress(Exception):  # Linux: the kernel delivers SIGKILL when the parent dies
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # died between the check above and prctl
            os._exit(1)

    def watch() -> None:  # elsewhere: notice being re-parented
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="mrl-embed-parent-watch").start()


def _init_worker(kwargs: dict[str, Any], parent: int) -> None:
    global _WORKER_EMBEDDER
    _exit_with_parent(parent)
    _WORKER_EMBEDDER = _make_embedder(kwargs)


_Encoded = tuple[np.ndarray, int, list[int]]  # float rows, truncated count, positions dropped as NaN/inf


def _encode_chunk(
    emb: Any, texts: list[str], encode_kwargs: dict[str, Any], skip_nonfinite: bool
) -> _Encoded:
    """Embed one chunk; never returns a NaN/inf row.

    A non-finite row raises NonFiniteEmbeddingError with positions in ``texts``; with
    ``skip_nonfinite`` those rows are dropped (their positions returned) and the rest of the chunk
    is embedded again without them, so the vectors depend only on the chunk's rows (resume-safe).
    """
    keep = list(range(len(texts)))
    bad: list[int] = []
    while True:
        before = getattr(emb, "num_truncated", 0)
        try:
            if keep:
                out = np.ascontiguousarray(emb.encode([texts[i] for i in keep], **encode_kwargs), np.float32)
            else:
                out = np.empty((0, int(encode_kwargs["dim"])), np.float32)
            rows = np.flatnonzero(~np.isfinite(out).all(axis=1))  # cheap; also guards any embedder
            if rows.size:
                raise NonFiniteEmbeddingError("the model produced NaN/inf embeddings", rows.tolist())
        except NonFiniteEmbeddingError as exc:
            positions = sorted({keep[i] for i in exc.indices})
            if not skip_nonfinite or not positions:
                raise NonFiniteEmbeddingError(str(exc), positions) from None
            bad += positions
            dropped = set(positions)
            keep = [i for i in keep if i not in dropped]
            continue
        return out, getattr(emb, "num_truncated", 0) - before, sorted(bad)


def _worker_encode(texts: list[str], encode_kwargs: dict[str, Any], skip_nonfinite: bool) -> _Encoded:
    return _encode_chunk(_WORKER_EMBEDDER, texts, encode_kwargs, skip_nonfinite)


NONFINITE_REASON = "the model produced a NaN/inf embedding for this row"


@dataclass
class _Chunk:
    """Consecutive valid rows plus the rejected records read along with them."""

    texts: list[str]
    ids: list[Any]
    skips: list[tuple[Record, int]]
    end_record: int  # global index of the first record after this chunk
    where: list[tuple[str, int, int]] = field(default_factory=list)  # (file, line, index) per text
    read_pos: int = 0  # input bytes read when the chunk was complete (for the progress bar)

    def drop(self, positions: list[int]) -> _Chunk:
        """This chunk without the texts at ``positions``, which become skips (NaN/inf rows)."""
        if not positions:
            return self
        gone = set(positions)
        skips = self.skips + [
            (Record(self.where[i][0], self.where[i][1], None, None, NONFINITE_REASON), self.where[i][2])
            for i in positions
        ]
        skips.sort(key=lambda s: s[1])
        return _Chunk(
            [t for i, t in enumerate(self.texts) if i not in gone],
            [x for i, x in enumerate(self.ids) if i not in gone],
            skips,
            self.end_record,
            [w for i, w in enumerate(self.where) if i not in gone],
            self.read_pos,
        )

    def nonfinite_error(self, exc: NonFiniteEmbeddingError) -> NonFiniteEmbeddingError:
        """``exc`` (positions in this chunk) restated with the input files and lines."""
        rows = [self.where[i] for i in exc.indices if 0 <= i < len(self.where)]
        shown = ", ".join(f"{f}:{line}" for f, line, _ in rows[:5])
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        return NonFiniteEmbeddingError(
            f"{shown}{more}: the model produced a NaN/inf embedding (a damaged model file, or a graph "
            "numerically unstable for this text); nothing was written. Use --on-error skip to skip such "
            "rows and list them in a sidecar file",
            [index for _, _, index in rows],
        )


def _chunks(
    records: Iterator[Record],
    start: int,
    size: int,
    opts: JobOptions,
    progress: ReadProgress | None = None,
) -> Iterator[_Chunk]:
    """Group records into chunks of ``size`` valid rows; bad rows fail the job or ride along as skips."""
    texts: list[str] = []
    ids: list[Any] = []
    skips: list[tuple[Record, int]] = []
    where: list[tuple[str, int, int]] = []
    index = start

    def pos() -> int:
        return progress.position() if progress is not None else 0

    for rec in records:
        if rec.error is not None:
            if opts.on_error == "fail":
                raise InputError(
                    f"{rec.file}:{rec.line}: {rec.error} (use --on-error skip to skip such rows and list "
                    "them in a sidecar file)"
                )
            skips.append((rec, index))
        else:
            texts.append(rec.text)  # type: ignore[arg-type]
            ids.append(rec.id if opts.id_field is not None else index)
            where.append((rec.file, rec.line, index))
        index += 1
        if len(texts) == size:
            yield _Chunk(texts, ids, skips, index, where, pos())
            texts, ids, skips, where = [], [], [], []
    if texts or skips:
        yield _Chunk(texts, ids, skips, index, where, pos())


# --------------------------------------------------------------------------- checkpoint state
_RUNTIME_MODULES = ("_embedder.py", "_session.py", "_tokenize.py", "_precision.py")


def _runtime_identity() -> dict[str, Any]:
    """The code that computes the vectors: a resume under another version could change the bits."""
    import onnxruntime

    import mrl_infer

    h = hashlib.sha256()
    for name in _RUNTIME_MODULES:
        path = Path(mrl_infer.__file__).parent / name
        if path.exists():
            h.update(path.read_bytes())
    return {
        "mrl_infer": mrl_infer.__version__,
        "onnxruntime": onnxruntime.__version__,
        "code_sha256": h.hexdigest(),
    }


def _fingerprint(opts: JobOptions, files: list[str], emb: Any, fmt: str) -> dict[str, Any]:
    """What must not change between a run and its resume: inputs, model, and every numeric option."""
    inputs = []
    for f in files:
        if f == STDIN:
            inputs.append({"path": STDIN})
        else:
            st = os.stat(f)
            inputs.append({"path": os.path.abspath(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    model_dir = Path(emb.model_dir)
    variant = emb.manifest.variants[emb.variant]
    variant_path = model_dir / variant.file
    return {
        "inputs": inputs,
        "model": {
            "dir": str(model_dir.resolve()),
            "manifest_sha256": sha256_file(model_dir / "mrl_infer.json"),
            "variant": emb.variant,
            "variant_file_size": variant_path.stat().st_size if variant_path.exists() else None,
            "device": emb.device,
            "runtime": _runtime_identity(),
        },
        "options": {
            "dim": int(emb.dim),
            "precision": opts.precision,
            "prompt_name": opts.prompt_name,
            "prompt": opts.prompt,
            "normalize": opts.normalize,
            "max_seq_length": int(emb.max_seq_length),
            "batch_size": opts.batch_size,
            "chunk_size": opts.chunk_size,
            "calibration_rows": opts.calibration_rows if opts.precision in _QUANTIZED else None,
            "text_field": opts.text_field,
            "id_field": opts.id_field,
            "input_format": opts.input_format,
            "format": fmt,
            "include_text": opts.include_text,
            "on_error": opts.on_error,
        },
    }


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out: list[str] = []
    old_in = {i["path"]: i for i in old["inputs"]}
    new_in = {i["path"]: i for i in new["inputs"]}
    if list(old_in) != list(new_in):
        out.append(f"input files: {list(old_in)} -> {list(new_in)}")
    else:
        for path, info in new_in.items():
            if info != old_in[path]:
                out.append(f"input {path} changed since the interrupted run (size or modification time)")
    for section in ("model", "options"):
        for key in sorted(set(old[section]) | set(new[section])):
            a, b = old[section].get(key), new[section].get(key)
            if a != b:
                out.append(f"{section}.{key}: {a!r} -> {b!r}")
    return out


def _save_state(workdir: Path, state: dict[str, Any]) -> None:
    """Atomically replace ``state.json`` (write, fsync, rename, fsync the directory)."""
    tmp = workdir / "state.json.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, workdir / "state.json")
    fsync_dir(workdir)


def _load_state(workdir: Path) -> dict[str, Any] | None:
    path = workdir / "state.json"
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable checkpoint ({exc}); use --overwrite to start over") from exc
    if state.get("version") != STATE_VERSION:
        raise InputError(f"{path}: checkpoint from another mrl-infer version; use --overwrite to start over")
    return state


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the job
class _Job:
    def __init__(self, opts: JobOptions, embedder: Any | None) -> None:
        if opts.on_error not in ("fail", "skip"):
            raise InputError(f"--on-error must be 'fail' or 'skip', got {opts.on_error!r}")
        self.files = expand_inputs(opts.inputs, opts.input_format)
        opts = dataclasses.replace(opts, workers=resolve_workers(opts.workers, self.files))
        if opts.batch_size < 1 or opts.chunk_size < 1 or int(opts.workers) < 1:
            raise InputError("--batch-size, --chunk-size and --workers must be >= 1")
        self.opts = opts
        self.fmt = output_format(opts.output, opts.output_format)
        if opts.include_text and self.fmt == "npy":
            raise InputError("--include-text needs a Parquet or JSONL output; .npy holds only the embeddings")
        self.dtype = embedding_dtype(opts.precision)
        self.final = Path(opts.output).absolute()
        self.workdir = self.final.with_name(self.final.name + WORKDIR_SUFFIX)
        self.skipped_final = self.final.with_name(self.final.name + SKIPPED_SUFFIX)
        self.ranges_final = self.final.with_name(self.final.name + RANGES_SUFFIX)
        if STDIN in self.files and opts.resume:
            raise InputError("--resume cannot be used with stdin ('-'): stdin cannot be read again")
        for f in self.files:
            for target in (self.final, self.skipped_final, self.ranges_final):
                if f != STDIN and target.exists() and os.path.samefile(f, target):
                    raise InputError(
                        f"{f} is an input of this job and would be replaced by its output {target}; "
                        "write the output elsewhere"
                    )
        self._embedder = embedder

    # -- start-up ------------------------------------------------------------
    def _check_workdir(self) -> bool:
        """Refuse what cannot start, changing nothing; True when there is a checkpoint to resume."""
        opts = self.opts
        if not self.final.parent.is_dir():
            raise InputError(f"{self.final.parent}: the output directory does not exist")
        has_state = (self.workdir / "state.json").exists()
        if has_state and not opts.resume and not opts.overwrite:
            raise InputError(
                f"{self.workdir} holds an interrupted job for {self.final.name}: rerun with --resume to "
                "finish it, or --overwrite to start over"
            )
        if self.final.exists() and not opts.overwrite and not has_state:
            raise InputError(f"{self.final} already exists; pass --overwrite to replace it")
        return has_state and opts.resume

    def _already_complete(self) -> JobSummary | None:
        """``--resume`` of a job that already finished: say so and do nothing (idempotent reruns)."""
        opts = self.opts
        if not opts.resume or opts.overwrite or not self.final.exists():
            return None
        if (self.workdir / "state.json").exists():
            return None
        skips = _count_lines(self.skipped_final) if self.skipped_final.exists() else 0
        return JobSummary(
            output=str(self.final),
            format=self.fmt,
            rows=_count_rows(self.final, self.fmt),
            skipped=skips,
            truncated=None,
            seconds=0.0,
            rows_this_run=0,
            complete=True,
        )

    def _lock(self) -> None:
        self.workdir.mkdir(exist_ok=True)
        self._lock_fh = open(self.workdir / "lock", "w")  # noqa: SIM115 - held for the job's lifetime
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another mrl-embed job is writing {self.final} right now") from None

    def _clear_workdir(self) -> None:
        """Remove everything in the (locked) work directory but the lock."""
        for stale in self.workdir.iterdir():
            if stale.name != "lock":
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()

    def run(self) -> JobSummary:
        t0 = time.monotonic()
        done = self._already_complete()
        if done is not None:
            return done
        resuming = self._check_workdir()
        # Load and check everything (model, device, dim, prompt) before the work directory exists,
        # so that a start that fails leaves nothing behind.
        emb = self._embedder or _make_embedder(
            _embedder_kwargs(self.opts, worker_threads(1, self.opts.threads) if self.opts.workers == 1 else 1)
        )
        if hasattr(emb, "_resolve_prompt"):
            emb._resolve_prompt(self.opts.prompt_name, self.opts.prompt)
        self.dim = int(emb.dim)
        self.width = embedding_width(self.opts.precision, self.dim)
        fingerprint = _fingerprint(self.opts, self.files, emb, self.fmt)
        self._lock()
        state = _load_state(self.workdir) if resuming else None
        if state is not None:
            diffs = _differences(state["fingerprint"], fingerprint)
            if diffs:
                raise InputError(
                    "cannot --resume: the job differs from the interrupted one:\n  - "
                    + "\n  - ".join(diffs)
                    + "\nrerun with the original inputs and options, or pass --overwrite to start over"
                )
            if self.final.exists() and not self.opts.overwrite and state.get("phase") != "finalizing":
                raise InputError(f"{self.final} already exists; pass --overwrite to replace it")
        else:
            self._clear_workdir()  # --overwrite, or a job killed before its first checkpoint
            state = {
                "version": STATE_VERSION,
                "fingerprint": fingerprint,
                "phase": "running",
                "records": 0,
                "rows": 0,
                "writer": None,
                "skips": None,
                "truncated": 0,
                "seconds": 0.0,
                "ranges": None,
            }
        self.state = state
        resumed_at = int(state["rows"])
        if state["phase"] == "finalizing":
            return self._finalize(t0, resumed_at, rows_this_run=0)
        try:
            self._embed_all(emb, t0)
        except (InputError, NonFiniteEmbeddingError):
            # Bad input (or a model that gives NaN for it) cannot be resumed past: the input, the
            # model or --on-error must change. Leave nothing behind.
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        return self._finalize(t0, resumed_at, rows_this_run=int(self.state["rows"]) - resumed_at)

    # -- the streaming loop ----------------------------------------------------
    def _open_writer(self, ranges: np.ndarray | None) -> Writer:
        meta = {
            "mrl_infer.model": self.state["fingerprint"]["model"]["dir"],
            "mrl_infer.variant": self.state["fingerprint"]["model"]["variant"],
            "mrl_infer.dim": str(self.dim),
            "mrl_infer.precision": self.opts.precision,
        }
        if ranges is not None:
            meta["mrl_infer.ranges"] = json.dumps(ranges.tolist())
        return open_writer(
            self.fmt,
            self.workdir,
            width=self.width,
            dtype=self.dtype,
            include_text=self.opts.include_text,
            id_type="str" if self.opts.id_field else "int",
            metadata=meta,
            position=self.state["writer"],
        )

    def _results(self, emb: Any, chunks: Iterator[_Chunk]) -> Iterator[tuple[_Chunk, np.ndarray, int]]:
        """Embed chunks in order, in this process or a pool of worker processes.

        NaN/inf rows fail the job naming their file and line, or (``--on-error skip``) leave the
        chunk as skips.
        """
        opts = self.opts
        enc = _encode_kwargs(opts) | {"dim": self.dim}
        skip = opts.on_error == "skip"
        if opts.workers == 1:
            for ch in chunks:
                try:
                    out, trunc, bad = _encode_chunk(emb, ch.texts, enc, skip)
                except NonFiniteEmbeddingError as exc:
                    raise ch.nonfinite_error(exc) from None
                yield ch.drop(bad), out, trunc
            return
        kwargs = _embedder_kwargs(opts, worker_threads(opts.workers, opts.threads))
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            opts.workers, mp_context=ctx, initializer=_init_worker, initargs=(kwargs, os.getpid())
        ) as pool:
            pending: collections.deque[tuple[_Chunk, cf.Future[_Encoded] | None]] = collections.deque()
            try:
                for ch in chunks:
                    fut = pool.submit(_worker_encode, ch.texts, enc, skip) if ch.texts else None
                    pending.append((ch, fut))
                    while len(pending) > 2 * opts.workers:
                        yield self._take(pending)
                while pending:
                    yield self._take(pending)
            finally:
                for _, fut in pending:
                    if fut is not None:
                        fut.cancel()

    def _take(self, pending: collections.deque[Any]) -> tuple[_Chunk, np.ndarray, int]:
        ch, fut = pending.popleft()
        if fut is None:
            return ch, np.empty((0, self.dim), np.float32), 0
        try:
            out, trunc, bad = fut.result()
        except NonFiniteEmbeddingError as exc:  # pickled across the pool with its indices
            raise ch.nonfinite_error(exc) from None
        return ch.drop(bad), out, trunc

    def _embed_all(self, emb: Any, t0: float) -> None:
        opts, state = self.opts, self.state
        skiplog = SkipLog(self.workdir, state["skips"])
        ranges = np.asarray(state["ranges"], dtype=np.float32) if state["ranges"] is not None else None
        writer: Writer | None = self._open_writer(ranges) if state["writer"] is not None else None
        tracker = ReadProgress()
        records = read_inputs(
            self.files,
            text_field=opts.text_field,
            id_field=opts.id_field,
            input_format=opts.input_format,
            progress=tracker,
        )
        skip_to = int(state["records"])
        if skip_to:
            consumed = sum(1 for _ in itertools.islice(records, skip_to))
            if consumed != skip_to:
                raise InputError(
                    f"cannot --resume: the inputs now hold {consumed} rows, the checkpoint {skip_to}"
                )
        chunks = _chunks(records, skip_to, opts.chunk_size, opts, tracker)
        need_ranges = opts.precision in _QUANTIZED and ranges is None
        held: list[tuple[_Chunk, np.ndarray]] = []  # float chunks waiting for calibration ranges
        held_rows = 0
        bar = _Progress(opts.progress, self.files, opts.input_format, skip_to, int(state["rows"]), tracker)
        last_ckpt = time.monotonic()
        run_start_seconds = float(state["seconds"])

        def emit(ch: _Chunk, out: np.ndarray) -> None:
            nonlocal writer
            if writer is None:
                writer = self._open_writer(ranges)
            for rec, index in ch.skips:
                skiplog.add(rec.file, rec.line, index, rec.error or "")
            if ch.texts:
                q = out if opts.precision == "float32" else _quantize(out, opts.precision, ranges)
                writer.write(ch.ids, ch.texts, q)
            state["rows"] += len(ch.texts)
            state["records"] = ch.end_record
            bar.update(ch, state["rows"], skiplog.count)

        def checkpoint() -> None:
            assert writer is not None
            state["writer"] = writer.sync()
            state["skips"] = skiplog.sync()
            state["ranges"] = ranges.tolist() if ranges is not None else None
            state["seconds"] = run_start_seconds + time.monotonic() - t0
            _save_state(self.workdir, state)

        try:
            for ch, out, trunc in self._results(emb, chunks):
                state["truncated"] += trunc
                if need_ranges:
                    held.append((ch, out))
                    held_rows += len(ch.texts)
                    if held_rows < opts.calibration_rows:
                        continue
                    ranges = _calibrate(held, opts.calibration_rows)
                    need_ranges = False
                    for hch, hout in held:
                        emit(hch, hout)
                    held = []
                else:
                    emit(ch, out)
                if time.monotonic() - last_ckpt >= opts.checkpoint_seconds:
                    checkpoint()
                    last_ckpt = time.monotonic()
            if need_ranges:  # fewer rows than calibration_rows: calibrate on all of them
                ranges = (
                    _calibrate(held, opts.calibration_rows)
                    if held_rows
                    else np.zeros((2, self.dim), np.float32)
                )
                for hch, hout in held:
                    emit(hch, hout)
            if writer is None:
                writer = self._open_writer(ranges)
            checkpoint()
            state["phase"] = "finalizing"
            _save_state(self.workdir, state)
        finally:
            bar.close()
            skiplog.close()
            if writer is not None:
                writer.close()

    # -- the end ---------------------------------------------------------------
    def _finalize(self, t0: float, resumed_at: int, rows_this_run: int) -> JobSummary:
        """Rename sidecars then the output into place (idempotent, so a kill here resumes too)."""
        state = self.state
        if (self.workdir / "skipped.jsonl").exists():
            SkipLog(self.workdir, state["skips"]).finalize(self.skipped_final)
        elif not state["skips"] or not state["skips"].get("count"):
            self.skipped_final.unlink(missing_ok=True)  # a stale log of an overwritten output
        ranges_file = None
        if state["ranges"] is not None and self.opts.precision in _QUANTIZED:
            _write_json_atomic(
                self.ranges_final,
                {
                    "precision": self.opts.precision,
                    "dim": self.dim,
                    "calibration_rows": min(self.opts.calibration_rows, int(state["rows"])),
                    "ranges": state["ranges"],
                },
            )
            ranges_file = str(self.ranges_final)
        partial = any(
            (self.workdir / name).exists() for name in ("data.npy.partial", "data.jsonl.partial", "parts")
        )
        if partial:
            writer = self._open_writer(np.asarray(state["ranges"], np.float32) if state["ranges"] else None)
            writer.finalize(self.final)
        fsync_dir(self.final.parent)
        shutil.rmtree(self.workdir)
        skips = int((state["skips"] or {}).get("count", 0))
        seconds = float(state["seconds"]) if rows_this_run == 0 and resumed_at else time.monotonic() - t0
        return JobSummary(
            output=str(self.final),
            format=self.fmt,
            rows=int(state["rows"]),
            skipped=skips,
            truncated=int(state["truncated"]),
            seconds=seconds,
            rows_this_run=rows_this_run,
            resumed_at=resumed_at,
            skipped_file=str(self.skipped_final) if skips else None,
            ranges_file=ranges_file,
        )


def _calibrate(held: list[tuple[_Chunk, np.ndarray]], rows: int) -> np.ndarray:
    """Per-dim [min, max] over the first ``rows`` embedded rows: deterministic, so it survives resume."""
    from mrl_infer import compute_ranges

    sample = np.concatenate([out for _, out in held])[:rows]
    return np.asarray(compute_ranges(sample), dtype=np.float32)


def _quantize(out: np.ndarray, precision: str, ranges: np.ndarray | None) -> np.ndarray:
    from mrl_infer import quantize_embeddings

    return quantize_embeddings(out, precision, ranges=ranges)


class _Progress:
    """The tqdm bar: bytes of the inputs (text formats), rows (all Parquet), or rows with no total (stdin).

    Advanced as chunks are written; the rows written and skipped are shown as integers.
    """

    def __init__(
        self,
        enabled: bool,
        files: list[str],
        input_format: str | None,
        records: int,
        rows: int,
        tracker: ReadProgress,
    ) -> None:
        self.bar: Any = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            print(
                "mrl-embed: tqdm is not installed, no progress bar (pip install 'mrl-infer[files]')",
                file=sys.stderr,
            )
            return
        common: dict[str, Any] = {"desc": "embedding", "file": sys.stderr, "dynamic_ncols": True}
        if STDIN in files:
            self.mode = "rows"
            self.bar = tqdm(initial=rows, unit=" rows", **common)
        elif all(detect_format(f, input_format)[0] == "parquet" for f in files):
            self.mode = "records"  # Parquet metadata knows the row count: exact rows, integer counts
            total = sum(_parquet_rows(f) for f in files)
            self.bar = tqdm(total=total, initial=records, unit=" rows", **common)
        else:
            self.mode = "bytes"  # text: the input sizes are known, the row count is not
            total = sum(os.path.getsize(f) for f in files)
            self.bar = tqdm(
                total=total,
                initial=tracker.position(),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                **common,
            )
            self.bar.set_postfix(rows=rows, refresh=False)

    def update(self, ch: _Chunk, rows: int, skipped: int) -> None:
        if self.bar is None:
            return
        at = {"rows": rows, "records": ch.end_record, "bytes": ch.read_pos}[self.mode]
        if at > self.bar.n:
            self.bar.update(at - self.bar.n)
        postfix = {"rows": rows} if self.mode == "bytes" else {}
        if skipped:
            postfix["skipped"] = skipped
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _parquet_rows(path: str) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # the reader reports a bad file with its name
        return 0


def _count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def _count_rows(path: Path, fmt: str) -> int:
    """Rows of a finished output (-1 if it cannot be read)."""
    try:
        if fmt == "npy":
            return int(np.load(path, mmap_mode="r").shape[0])
        if fmt == "parquet":
            return _parquet_rows(str(path))
        return _count_lines(path)
    except Exception:
        return -1


def run_job(opts: JobOptions, embedder: Any | None = None) -> JobSummary:
    """Run (or resume) a batch embedding job; ``embedder`` overrides the model for in-process tests."""
    job = _Job(opts, embedder)
    try:
        return job.run()
    finally:
        with contextlib.suppress(Exception):
            job._lock_fh.close()


def options_from_dict(data: dict[str, Any]) -> JobOptions:
    """Build JobOptions from a dict, ignoring unknown keys (argparse namespaces carry extras)."""
    names = {f.name for f in dataclasses.fields(JobOptions)}
    return JobOptions(**{k: v for k, v in data.items() if k in names})
