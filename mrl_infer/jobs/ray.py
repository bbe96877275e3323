"""Ray Data integration (``pip install 'mrl-infer[ray]'``): embed a column of a ``ray.data.Dataset``.

:func:`embed_dataset` runs :class:`EmbedBatch` with ``map_batches`` on an actor pool: each actor
loads the Embedder once and embeds Arrow batches, appending a fixed-size-list ``embedding``
column. :func:`embed_files` is ``mrl-embed embed --engine ray``: it reads Parquet or JSONL files
(or directories of them) with Ray, embeds them on the cluster with the input order preserved,
and streams the results back into one Parquet file with the same schema as the local engine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import InputError


def _ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise InputError("the Ray engine needs Ray Data: pip install 'mrl-infer[ray]'") from exc
    return ray


class EmbedBatch:
    """A Ray Data callable class: loads the Embedder once per actor, embeds one Arrow batch per call."""

    def __init__(
        self,
        model: str | None = None,
        *,
        column: str = "text",
        output_column: str = "embedding",
        dim: int | None = None,
        allow_any_dim: bool = False,
        variant: str = "auto",
        device: str = "cpu",
        threads: int | None = 1,
        max_seq_length: int | None = None,
        batch_size: int = 32,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize: bool = True,
        precision: str = "float32",
        ranges: list[list[float]] | None = None,
    ) -> None:
        from mrl_infer import Embedder

        self.emb = Embedder(
            model,
            dim,
            device=device,
            variant=variant,
            threads=threads,
            max_seq_length=max_seq_length,
            allow_any_dim=allow_any_dim,
        )
        self.column = column
        self.output_column = output_column
        self.batch_size = batch_size
        self.prompt_name = prompt_name
        self.prompt = prompt
        self.normalize = normalize
        self.precision = precision
        self.ranges = np.asarray(ranges, dtype=np.float32) if ranges is not None else None
        if precision in ("int8", "uint8") and self.ranges is None:
            raise ValueError(f"precision {precision!r} needs calibration `ranges` (shape [2, dim])")

    def __call__(self, batch: Any) -> Any:
        from mrl_infer import quantize_embeddings
        from mrl_infer.jobs._writers import embedding_array, embedding_dtype

        if self.column not in batch.column_names:
            raise InputError(f"no column '{self.column}' (columns present: {', '.join(batch.column_names)})")
        texts = batch.column(self.column).to_pylist()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(
                    f"column '{self.column}', row {i} of a batch: {type(t).__name__}, expected a string"
                )
        out = self.emb.encode(
            texts,
            batch_size=self.batch_size,
            prompt_name=self.prompt_name,
            prompt=self.prompt,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )
        if self.precision != "float32":
            out = quantize_embeddings(out, self.precision, ranges=self.ranges)
        return batch.append_column(self.output_column, embedding_array(out, embedding_dtype(self.precision)))


def embed_dataset(
    ds: Any,
    model: str | None = None,
    *,
    column: str = "text",
    output_column: str = "embedding",
    dim: int | None = None,
    allow_any_dim: bool = False,
    variant: str = "auto",
    device: str = "cpu",
    batch_size: int = 32,
    rows_per_call: int = 1024,
    precision: str = "float32",
    ranges: np.ndarray | None = None,
    prompt_name: str | None = None,
    prompt: str | None = None,
    normalize: bool = True,
    max_seq_length: int | None = None,
    concurrency: int | tuple[int, int] = 1,
    num_cpus: float = 1,
    threads: int | None = None,
) -> Any:
    """Add an ``output_column`` of embeddings of ``column`` to a Ray Dataset (lazy, like any map).

    Each of ``concurrency`` actors reserves ``num_cpus`` CPUs and runs ONNX Runtime with
    ``threads`` threads (default: ``num_cpus``). Rows keep their order when the Dataset's
    ``DataContext.execution_options.preserve_order`` is set. int8/uint8 need ``ranges``.
    """
    _ray()
    kwargs = {
        "column": column,
        "output_column": output_column,
        "dim": dim,
        "allow_any_dim": allow_any_dim,
        "variant": variant,
        "device": device,
        "threads": threads or max(1, int(num_cpus)),
        "max_seq_length": max_seq_length,
        "batch_size": batch_size,
        "prompt_name": prompt_name,
        "prompt": prompt,
        "normalize": normalize,
        "precision": precision,
        "ranges": np.asarray(ranges).tolist() if ranges is not None else None,
    }
    return ds.map_batches(
        EmbedBatch,
        fn_constructor_args=(model,),
        fn_constructor_kwargs=kwargs,
        batch_size=rows_per_call,
        batch_format="pyarrow",
        concurrency=concurrency,
        num_cpus=num_cpus,
    )


def _read(files: list[str], text_field: str, id_field: str | None) -> Any:
    """One Ray Dataset over the files in the order given (all Parquet or all JSONL)."""
    from mrl_infer.jobs._readers import detect_format

    ray = _ray()
    formats = {detect_format(f)[0] for f in files}
    if len(formats) != 1 or formats - {"parquet", "jsonl"}:
        raise InputError(
            f"--engine ray reads Parquet or JSONL inputs, one format per job; got {sorted(formats)}"
        )
    columns = [text_field] + ([id_field] if id_field and id_field != text_field else [])
    if formats == {"parquet"}:
        return ray.data.read_parquet(files).select_columns(columns)
    ds = ray.data.read_json(files, lines=True)
    return ds.select_columns(columns)


def embed_files(args: argparse.Namespace) -> Any:
    """``mrl-embed embed --engine ray``: Parquet/JSONL in, one Parquet file out, in input order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mrl_infer import compute_ranges
    from mrl_infer.jobs._job import WORKDIR_SUFFIX, JobSummary, available_cores
    from mrl_infer.jobs._readers import DEFAULT_TEXT_FIELD, expand_inputs
    from mrl_infer.jobs._writers import embedding_dtype, fsync_dir, open_writer, output_format

    t0 = time.monotonic()
    # Refuse what the engine cannot do before importing (let alone starting) Ray.
    if args.resume:
        raise InputError(
            "--engine ray does not checkpoint; rerun without --resume (Ray retries failed tasks)"
        )
    if args.on_error != "fail":
        raise InputError("--engine ray supports only --on-error fail; use the local engine to skip bad rows")
    ray = _ray()
    if output_format(args.output, args.output_format) != "parquet":
        raise InputError("--engine ray writes Parquet; give a .parquet output")
    files = expand_inputs(args.inputs, args.input_format)
    if "-" in files:
        raise InputError("--engine ray cannot read stdin")
    final = Path(args.output).absolute()
    workdir = final.with_name(final.name + WORKDIR_SUFFIX)
    if final.exists() and not args.overwrite:
        raise InputError(f"{final} already exists; pass --overwrite to replace it")
    if workdir.exists():
        if not args.overwrite:
            raise InputError(f"{workdir} exists (an interrupted job); pass --overwrite to start over")
        shutil.rmtree(workdir)
    text_field = args.text_field or DEFAULT_TEXT_FIELD

    if not ray.is_initialized():
        if args.ray_address:
            ray.init(address=args.ray_address)
        else:
            ray.init(num_cpus=available_cores(), include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    if args.quiet:
        ctx.enable_progress_bars = False

    # Each actor reserves one Ray CPU and leaves one CPU of the cluster to the read and list tasks
    # (an actor pool holding every CPU starves them: the job would hang); ONNX Runtime threads
    # split the cores between the actors.
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = int(args.workers) if args.workers not in (None, "auto") else max(1, cpus - 1)
    threads = args.threads or max(1, cpus // actors)
    common = {
        "column": text_field,
        "dim": args.dim,
        "allow_any_dim": getattr(args, "allow_any_dim", False),
        "variant": args.variant,
        "device": "cpu" if args.device == "auto" else args.device,
        "batch_size": args.batch_size,
        "rows_per_call": args.chunk_size,
        "prompt_name": args.prompt_name,
        "prompt": args.prompt,
        "normalize": args.normalize,
        "max_seq_length": args.max_seq_length,
        "num_cpus": 1,
        "threads": threads,
    }
    ds = _read(files, text_field, args.id_field)
    ranges = None
    if args.precision in ("int8", "uint8"):
        sample = embed_dataset(ds.limit(args.calibration_rows), args.model, concurrency=1, **common)
        emb = np.concatenate(
            [
                np.stack(b["embedding"].to_numpy(zero_copy_only=False))
                for b in sample.iter_batches(batch_format="pyarrow")
            ]
        )
        ranges = compute_ranges(emb)
    out = embed_dataset(ds, args.model, precision=args.precision, ranges=ranges, concurrency=actors, **common)

    workdir.mkdir()
    dtype = embedding_dtype(args.precision)
    writer = None
    rows = 0
    try:
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            if writer is None:
                width = batch.column("embedding").type.list_size
                meta = {"mrl_infer.engine": "ray", "mrl_infer.precision": args.precision}
                if ranges is not None:
                    meta["mrl_infer.ranges"] = json.dumps(np.asarray(ranges).tolist())
                writer = open_writer(
                    "parquet",
                    workdir,
                    width=width,
                    dtype=dtype,
                    include_text=args.include_text,
                    id_type="str" if args.id_field else "int",
                    metadata=meta,
                )
            n = batch.num_rows
            if args.id_field:
                ids = pc.cast(batch.column(args.id_field), pa.string()).to_pylist()
                if any(i is None for i in ids):
                    raise InputError(f"the id column '{args.id_field}' has null values")
            else:
                ids = list(range(rows, rows + n))
            texts = batch.column(text_field).to_pylist()
            emb = batch.column("embedding").combine_chunks()
            values = emb.flatten().to_numpy(zero_copy_only=False).reshape(n, -1) if n else np.empty((0, 1))
            writer.write(ids, texts, values)
            rows += n
        if writer is None:
            raise InputError("the inputs hold no rows")
        writer.finalize(final)
        fsync_dir(final.parent)
    finally:
        if writer is not None:
            writer.close()
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - t0
    return JobSummary(
        output=str(final),
        format="parquet",
        rows=rows,
        skipped=0,
        truncated=None,
        seconds=seconds,
        rows_this_run=rows,
        extra={"actors": actors},
    )


__all__ = ["EmbedBatch", "embed_dataset", "embed_files"]
