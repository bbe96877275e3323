"""``mrl-embed``: embed files (``embed``), describe a model (``info``), measure its quality (``eval``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrl_infer.errors import DimError, MrlInferError

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _workers(value: str) -> int | str:
    return "auto" if value == "auto" else _positive(value)


_EMBED_EPILOG = """\
rules:
  inputs     .txt (one text per line; an empty line is an empty text), .jsonl/.ndjson (one JSON
             object per line), .csv/.tsv (header row), .parquet; text formats may be .gz/.zst.
             Files are read in the order given; a glob or directory expands to its files sorted
             by path (directories recursively, skipping names starting with '.' or '_').
  order, ids output row i is input row i across all inputs. The id is --id-field's value (as a
             string) or else the row's 0-based index across all inputs, counting skipped rows.
  outputs    .npy ([rows, dim], exactly what np.save writes), .parquet (id, [text,] embedding;
             metadata: model, variant, dim, precision, ranges), .jsonl ({"id", ["text",]
             "embedding"}). int8/uint8 ranges are the per-dim min/max of the first
             --calibration-rows rows, also written to OUTPUT.ranges.json.
  bad rows   (malformed JSON, missing field, invalid UTF-8, a NaN/inf embedding, ...) stop the job
             with FILE:LINE and exit 2; with --on-error skip they are left out and listed in
             OUTPUT.skipped.jsonl. Nothing is ever dropped silently.
  crashes    the job works in OUTPUT.mrl-job/ and renames the finished file onto OUTPUT at the
             end: a file under the final name is complete. After a crash or Ctrl-C (exit 130)
             rerun with --resume: the output is byte for byte that of an uninterrupted run.
             --resume with other inputs or options refuses and lists the differences; --resume
             on a finished output says it is complete and exits 0. An existing OUTPUT is only
             replaced with --overwrite, and never when it is one of the inputs.
  workers    auto: 2 processes on a machine with 2+ cores, 1 if the inputs total under 1 MiB or
             there is one core; the output does not depend on the number of workers.
  exit       0 done, 2 error (one line: 'mrl-embed: error: ...'), 130 interrupted.
"""


def _add_embed(sub: Any) -> None:
    p = sub.add_parser(
        "embed",
        help="embed text files into .npy / Parquet / JSONL, streaming and resumable",
        description=(
            "Embed every row of the inputs, in order, into one output file; streaming (memory does "
            "not grow with the input), checkpointed and resumable."
        ),
        epilog=_EMBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files, globs, directories, or '-' for stdin")
    p.add_argument("-o", "--output", required=True, help="output file (.npy, .parquet or .jsonl)")
    p.add_argument("--model", help="model directory or Hub id (default: the embedded default model)")
    p.add_argument("--dim", type=_positive, help="output dim, one of the model's Matryoshka dims")
    p.add_argument(
        "--allow-any-dim",
        action="store_true",
        help="accept a --dim the model does not declare as a Matryoshka dim (quality not guaranteed)",
    )
    p.add_argument("--variant", default="auto", help="model variant: auto, fp32, int8, fp16 (default auto)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--batch-size", type=_positive, default=32, help="texts per model call (default 32)")
    p.add_argument(
        "--chunk-size",
        type=_positive,
        default=1024,
        help="rows embedded, length-sorted and written together; a checkpoint falls on a chunk boundary "
        "(default 1024)",
    )
    p.add_argument(
        "--precision", default="float32", choices=PRECISIONS, help="stored precision (default float32)"
    )
    p.add_argument(
        "--calibration-rows",
        type=_positive,
        default=10_000,
        help="int8/uint8: per-dim ranges come from the first N rows' embeddings (default 10000)",
    )
    p.add_argument("--prompt-name", help="one of the model's prompts (default: the model's default prompt)")
    p.add_argument("--prompt", help="a literal prompt prefix (overrides --prompt-name)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", help="do not L2-normalize")
    p.add_argument(
        "--max-seq-length", type=_positive, help="truncate inputs to fewer tokens than the model's max"
    )
    field = p.add_mutually_exclusive_group()
    field.add_argument(
        "--text-field", help="JSONL field / CSV, TSV or Parquet column with the text (default 'text')"
    )
    field.add_argument("--column", dest="text_field", help="alias of --text-field")
    p.add_argument("--id-field", help="field/column carried into the output as the row id")
    p.add_argument(
        "--input-format",
        choices=("txt", "jsonl", "csv", "tsv", "parquet"),
        help="input format when the extension does not say (e.g. stdin; default for stdin: txt)",
    )
    p.add_argument(
        "--format", dest="output_format", choices=("npy", "parquet", "jsonl"), help="output format"
    )
    p.add_argument(
        "--include-text", action="store_true", help="Parquet/JSONL: store the text next to the embedding"
    )
    p.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        help="processes embedding in parallel, the cores split between them; auto (default): 2 on a "
        "machine with 2+ cores unless the inputs total under 1 MiB",
    )
    p.add_argument(
        "--threads", type=_positive, help="ONNX Runtime threads per worker (default: cores / workers)"
    )
    p.add_argument("--resume", action="store_true", help="finish an interrupted job from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (or interrupted job)")
    p.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="bad rows: stop with file and line (fail, default) or list them in OUTPUT.skipped.jsonl (skip)",
    )
    p.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=10.0,
        help="seconds between durable checkpoints (default 10; 0 checkpoints after every chunk)",
    )
    p.add_argument(
        "--engine", choices=("local", "ray"), default="local", help="local processes or a Ray cluster"
    )
    p.add_argument("--ray-address", help="Ray cluster address for --engine ray (default: start a local Ray)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _cmd_embed(args: argparse.Namespace) -> int:
    from mrl_infer.jobs._job import options_from_dict, run_job

    if args.engine == "ray":
        from mrl_infer.jobs.ray import embed_files

        summary = embed_files(args)
    else:
        if args.ray_address:
            raise MrlInferError("--ray-address needs --engine ray")
        opts = options_from_dict(vars(args) | {"progress": not args.quiet})
        summary = run_job(opts)
    print(summary.describe(), file=sys.stderr)
    return 0


def _cli_message(exc: BaseException) -> str:
    """An error's message in CLI terms (the runtime names Python arguments)."""
    msg = str(exc)
    if isinstance(exc, DimError):
        msg = msg.replace("pass allow_any_dim=True", "pass --allow-any-dim").replace(
            "allow_any_dim=True", "--allow-any-dim"
        )
    return msg


def _human_size(n: int | None) -> str:
    if n is None:
        return "missing"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


def _resolve_model_dir(model: str | None) -> Path:
    """A local model directory for ``model`` (None: the embedded default; else a path or Hub id)."""
    from mrl_infer._hub import HubModel, default_model_dir, is_local, local_model_dir

    if model is None:
        return default_model_dir()
    if is_local(model):
        return local_model_dir(model)
    return HubModel(model, None, None).fetch("mrl_infer.json").parent


def format_info(model_dir: Path) -> str:
    """Dims, prompts, variants (precision, target, file size, parity) and the runtime's providers."""
    import onnxruntime as ort

    from mrl_infer._manifest import load_manifest

    m = load_manifest(model_dir)
    lines = [
        f"model:            {m.name or model_dir.name}",
        f"directory:        {model_dir}",
        f"embedding dim:    {m.embedding_dim}",
        "matryoshka dims:  "
        + (
            ", ".join(map(str, m.dims))
            if m.matryoshka_dims and list(m.matryoshka_dims) != [m.embedding_dim]
            else f"{m.embedding_dim} only: no Matryoshka dims declared; pass --dims to mrl-export"
        ),
        f"max seq length:   {m.max_seq_length}",
        f"normalize:        {m.normalize} (similarity: {m.similarity_fn_name})",
        f"pooling:          {m.pooling or '-'}",
        "prompts:          "
        + (
            ", ".join(
                f"{k}={v!r}" + (" (default)" if k == m.default_prompt_name else "")
                for k, v in m.prompts.items()
            )
            or "none"
        ),
        "variants:",
    ]
    for name, v in m.variants.items():
        files = [model_dir / f for f in (v.file, *v.external_data)]
        size = sum(f.stat().st_size for f in files) if all(f.exists() for f in files) else None
        data = f" + {', '.join(v.external_data)}" if v.external_data else ""
        lines.append(
            f"  {name:<6} precision={v.precision} target={v.target} file={v.file}{data} ({_human_size(size)})"
        )
        wr = v.int8_weight_range
        if wr is not None:
            from mrl_infer._session import int8_kernel_here

            lines.append(f"         int8 weights: {wr} range; on this CPU: {int8_kernel_here(wr)} kernel")
        if v.parity:
            lines += _parity_lines(v.parity)
        if v.notes:
            lines.append(f"         notes: {v.notes}")
    extra_parity = m.extra.get("parity")
    if extra_parity:
        lines.append(f"parity:           {extra_parity}")
    if m.source:  # the scalar facts only; hashes and timings stay in the manifest
        keys = ("model", "revision", "model_type", "exported_at")
        lines.append("source:           " + ", ".join(f"{k}={m.source[k]}" for k in keys if k in m.source))
    providers = ", ".join(ort.get_available_providers())
    lines.append(f"onnxruntime:      {ort.__version__}; providers available: {providers}")
    return "\n".join(lines)


def _parity_lines(parity: dict[str, Any], indent: str = "         ") -> list[str]:
    """Parity figures: scalars on one line, then one line per entry of nested tables (e.g. per dim)."""
    flat = {k: v for k, v in parity.items() if not isinstance(v, dict)}
    out = [indent + "parity: " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in flat.items())] if flat else []
    for key, table in parity.items():
        if not isinstance(table, dict):
            continue
        if all(isinstance(v, dict) for v in table.values()):
            for sub, v in table.items():
                out.append(
                    f"{indent}  {key} {sub}: " + ", ".join(f"{k}={_fmt_value(x)}" for k, x in v.items())
                )
        else:
            out.append(f"{indent}  {key}: {_fmt_value(table)}")
    return out


def _fmt_value(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_fmt_value(v)}" for k, v in x.items()) + "}"
    return str(x)


def _cmd_info(args: argparse.Namespace) -> int:
    print(format_info(_resolve_model_dir(args.model)))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    try:
        from mrl_infer import _quality
    except ImportError as exc:  # pragma: no cover - the quality module ships with the package
        raise MrlInferError(f"the evaluation module is not available in this install ({exc})") from exc
    dims = [int(d) for d in args.dims.split(",")] if args.dims else None
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    model = args.model if args.model is not None else str(_resolve_model_dir(None))
    rows = _quality.evaluate(model, dims=dims, variants=variants, data_dir=args.data)
    print(_quality.format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mrl-embed", description="Torch-free Matryoshka embeddings over ONNX Runtime, for files."
    )
    from mrl_infer import __version__

    parser.add_argument("-v", "--verbose", action="store_true", help="log what the runtime does")
    parser.add_argument("--version", action="version", version=f"mrl-embed {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)  # argparse lists them in this order
    _add_embed(sub)
    from mrl_infer.search._cli import add_parsers as add_search_parsers

    add_search_parsers(sub)
    from mrl_infer.server._cli import add_parsers as add_server_parsers  # no starlette import

    add_server_parsers(sub)
    info = sub.add_parser("info", help="show a model's dims, prompts, variants, parity and providers")
    info.add_argument("model", nargs="?", help="model directory or Hub id (default: the embedded model)")
    ev = sub.add_parser("eval", help="STS-B / retrieval quality per dim and variant (mrl_infer._quality)")
    ev.add_argument("model", nargs="?", help="model directory or Hub id (default: the embedded model)")
    ev.add_argument("--dims", help="comma-separated dims (default: all of the model's)")
    ev.add_argument("--variants", default="fp32,int8", help="comma-separated variants (default fp32,int8)")
    ev.add_argument("--data", help="directory with the evaluation data (default: see mrl_infer._quality)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mrl-embed`` console script; errors print one clear line and exit 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    handler = (
        getattr(args, "handler", None)
        or {"embed": _cmd_embed, "info": _cmd_info, "eval": _cmd_eval}[args.command]
    )
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(
            "mrl-embed: interrupted; rerun with --resume to continue from the last checkpoint",
            file=sys.stderr,
        )
        return 130
    except (MrlInferError, ValueError, FileNotFoundError) as exc:
        print(f"mrl-embed: error: {_cli_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
