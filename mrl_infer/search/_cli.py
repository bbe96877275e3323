"""``mrl-embed index build`` and ``mrl-embed search``: argparse setup and the two commands.

Imports nothing heavy at module level, so ``mrl-embed --help`` stays cheap.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

_TUNING = ("shortlist_dim", "shortlist_precision", "rerank_dim", "rerank_precision", "oversample")


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


_PRECISIONS = ("float16", "int8", "ubinary")  # mrl_infer.search._scan.SHORTLIST_PRECISIONS


def _tier(value: str) -> tuple[int, str]:
    """``DIM:PRECISION`` (``64:float16``) for ``--tier``; the error names the bad value."""
    dim_s, sep, precision = value.partition(":")
    try:
        dim = int(dim_s)
    except ValueError:
        dim = 0
    if not sep or dim < 1 or precision not in _PRECISIONS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not DIM:PRECISION with DIM a positive int and PRECISION one of "
            f"{', '.join(_PRECISIONS)} (e.g. 64:float16)"
        )
    if precision == "ubinary" and dim % 8:
        raise argparse.ArgumentTypeError(f"{value!r}: a ubinary tier needs DIM divisible by 8")
    return dim, precision


def add_parsers(sub: Any) -> None:
    """Register ``index`` (with ``build``) and ``search`` on the top-level subparsers."""
    from mrl_infer.search import _defaults as defaults

    index = sub.add_parser("index", help="build a funnel-search index (see: mrl-embed index build --help)")
    isub = index.add_subparsers(dest="index_command", required=True, metavar="{build}")
    b = isub.add_parser(
        "build",
        help="embed files (or take embeddings) and write an index directory",
        description="Embed INPUT files with the embed job (checkpointed, --resume) and write a funnel-search "
        "index to DIR, or index an existing mrl-embed output with --from-embeddings.",
        epilog="rules: DIR is written atomically (a hidden sibling, renamed when complete); an existing DIR "
        "needs --overwrite. The embeddings are full-dim; the job's work files live in DIR.mrl-index/ until "
        "the index is written. --store-text (default) keeps each text for search output and needs the "
        "[files] extra (Parquet).",
    )
    b.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="text/JSONL/CSV/TSV/Parquet files, as for embed"
    )
    b.add_argument("-o", "--output", required=True, metavar="DIR", help="index directory to write")
    b.add_argument(
        "--from-embeddings", metavar="FILE", help="index an mrl-embed embed output (.npy or .parquet)"
    )
    b.add_argument("--model", help="model directory or Hub id (default: the embedded model)")
    b.add_argument("--text-field", help="text field/column (JSONL, CSV, Parquet)")
    b.add_argument("--id-field", help="id field/column (default: row numbers)")
    b.add_argument("--input-format", help="input format, when the extension does not say")
    b.add_argument("--batch-size", type=_positive, default=32)
    b.add_argument(
        "--store-text",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store each text in the index (default: on)",
    )
    b.add_argument("--resume", action="store_true", help="continue an interrupted build")
    b.add_argument("--overwrite", action="store_true", help="replace an existing index directory")
    b.add_argument("--shortlist-dim", type=_positive, default=defaults.DEFAULT_SHORTLIST_DIM)
    b.add_argument(
        "--shortlist-precision",
        choices=("float16", "int8", "ubinary"),
        default=defaults.DEFAULT_SHORTLIST_PRECISION,
    )
    b.add_argument(
        "--tier",
        type=_tier,
        action="append",
        default=[],
        metavar="DIM:PRECISION",
        help="an extra shortlist tier (repeatable, e.g. --tier 64:float16 --tier 256:ubinary); "
        "--shortlist-dim/--shortlist-precision is the default one, mrl-embed search "
        "--shortlist-dim/--shortlist-precision picks another",
    )
    b.add_argument("--rerank-dim", type=_positive, help="rerank-tier dims (default: all)")
    b.add_argument(
        "--rerank-precision", choices=("float16", "float32"), default=defaults.DEFAULT_RERANK_PRECISION
    )
    b.add_argument(
        "--oversample",
        type=_positive,
        default=defaults.DEFAULT_OVERSAMPLE,
        help="default candidates per result for searches of this index",
    )
    b.add_argument(
        "--hnsw",
        action="store_true",
        help="also build an HNSW graph over the rerank dims, for mrl-embed search --engine hnsw "
        "(the [faiss] extra; about 150 s and 640 MB of RAM per million 384-d rows)",
    )
    b.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    b.set_defaults(handler=cmd_index_build)

    s = sub.add_parser(
        "search",
        help="search an index with query texts",
        description="Search index DIR; queries are the arguments, or stdin (one per line) if none.",
    )
    s.add_argument("index", metavar="DIR", help="index directory (mrl-embed index build)")
    s.add_argument("queries", nargs="*", metavar="QUERY")
    s.add_argument("-k", type=_positive, default=10, help="results per query (default 10)")
    s.add_argument("--json", action="store_true", help="one JSON object per query")
    s.add_argument("--oversample", type=_positive)
    s.add_argument(
        "--shortlist-dim", type=_positive, help="the shortlist tier to scan (default: the index's)"
    )
    s.add_argument("--shortlist-precision", choices=_PRECISIONS, help="the shortlist tier's precision")
    s.add_argument("--rerank-dim", type=_positive)
    s.add_argument("--exact", action="store_true", help="brute-force full-dim search (the reference)")
    s.add_argument(
        "--engine",
        choices=("onnxruntime", "faiss", "hnsw"),
        default="onnxruntime",
        help="shortlist: onnxruntime (default), faiss (ubinary tiers, Hamming) or hnsw (the index's HNSW "
        "graph, approximate; index build --hnsw); faiss and hnsw need the [faiss] extra",
    )
    s.add_argument("--ef-search", type=_positive, help="--engine hnsw: the graph search's candidate list")
    s.set_defaults(handler=cmd_search)


def _tuning(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in _TUNING if getattr(args, k) is not None}


def _add_tiers(index: Any, tiers: list[tuple[int, str]], hnsw: bool = False) -> None:
    for dim, precision in tiers:
        index.add_tier(dim, precision)
    if hnsw:
        index.add_hnsw()


def cmd_index_build(args: argparse.Namespace) -> int:
    from mrl_infer.errors import DimError, InputError
    from mrl_infer.search import Index

    target = Path(args.output)
    if target.exists() and not args.overwrite:
        raise InputError(f"{target} already exists (pass --overwrite to replace it)")
    if args.hnsw:  # before embedding, not after
        from mrl_infer.search._hnsw import faiss_module

        faiss_module()
    for dim, precision in args.tier:  # what can be checked before embedding
        if args.rerank_dim is not None and dim > args.rerank_dim:
            raise DimError(f"--tier {dim}:{precision}: DIM must be <= --rerank-dim {args.rerank_dim}")
    model = args.model or "default"
    if args.from_embeddings:
        if args.inputs:
            raise InputError("give either INPUT files or --from-embeddings, not both")
        index = Index.from_file(args.from_embeddings, model=model, **_tuning(args))
        _add_tiers(index, args.tier, args.hnsw)
        index.save(target, overwrite=args.overwrite)
        print(f"indexed {len(index)} rows from {args.from_embeddings} into {target}", file=sys.stderr)
        return 0
    if not args.inputs:
        raise InputError("no INPUT files (or --from-embeddings FILE) given")
    from mrl_infer.jobs._job import JobOptions, run_job

    work = target.parent / f"{target.name}.mrl-index"
    work.mkdir(parents=True, exist_ok=True)
    parquet = args.store_text or args.id_field is not None
    output = work / ("embeddings.parquet" if parquet else "embeddings.npy")
    opts = JobOptions(
        inputs=list(args.inputs),
        output=str(output),
        model=args.model,
        batch_size=args.batch_size,
        text_field=args.text_field,
        id_field=args.id_field,
        input_format=args.input_format,
        include_text=args.store_text,
        resume=args.resume,
        overwrite=not args.resume and output.exists(),
        progress=not args.quiet,
    )
    summary = run_job(opts)
    print(summary.describe(), file=sys.stderr)
    index = Index.from_file(output, model=model, store_text=args.store_text, **_tuning(args))
    _add_tiers(index, args.tier, args.hnsw)  # a DimError here keeps the embeddings: --resume reuses them
    index.save(target, overwrite=args.overwrite)
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote index {target}: {index!r}", file=sys.stderr)
    return 0


def _read_queries(args: argparse.Namespace) -> list[str]:
    from mrl_infer.errors import InputError

    queries = list(args.queries)
    if not queries:
        queries = [line.strip() for line in sys.stdin if line.strip()]
    if not queries:
        raise InputError("no queries given (as arguments or on stdin, one per line)")
    return queries


def cmd_search(args: argparse.Namespace) -> int:
    from mrl_infer.search import Index

    index = Index.load(args.index)
    queries = _read_queries(args)
    result = index.search(
        queries,
        args.k,
        oversample=args.oversample,
        shortlist_dim=args.shortlist_dim,
        shortlist_precision=args.shortlist_precision,
        rerank_dim=args.rerank_dim,
        exact=args.exact,
        engine=args.engine,
        ef_search=args.ef_search,
    )
    out = sys.stdout
    for query, ids, scores, positions in zip(
        queries, result.ids, result.scores.tolist(), result.positions.tolist(), strict=True
    ):
        fields = index.fields(positions)
        if args.json:
            hits = [{"id": i, "score": round(s, 6), **f} for i, s, f in zip(ids, scores, fields, strict=True)]
            out.write(json.dumps({"query": query, "results": hits}, ensure_ascii=False) + "\n")
            continue
        out.write(f"# {query}\n")
        for rank, (i, s, f) in enumerate(zip(ids, scores, fields, strict=True), 1):
            text = f.get("text", "")
            text = text if len(text) <= 100 else text[:97] + "..."
            out.write(f"{rank:>3}  {s:.4f}  {i}  {text}\n".rstrip() + "\n")
    return 0
