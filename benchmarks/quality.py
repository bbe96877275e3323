"""What each Matryoshka dim costs: STS-B Spearman and retrieval quality per dim, per model, per variant.

    python benchmarks/quality.py MODEL_DIR [MODEL_DIR ...] --variants fp32,int8 --out benchmarks/results/

Writes ``quality.md`` (markdown table), ``quality.json`` (rows) and ``quality.png`` (score vs dim,
one line per model and variant, like the Matryoshka paper's headline figure). STS-B is read from
``--data`` (default ``../shared/data``); the retrieval set is the committed MNLI-val set
(``benchmarks/data/retrieval``, see its PROVENANCE.md) unless ``--retrieval`` says otherwise.
``--ood NAME=DIR`` (repeatable) adds an out-of-domain retrieval set (e.g. CISI, Debian descriptions):
a ``NAME nDCG@10`` column and a panel in the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrl_infer._quality import evaluate, format_table


def plot(rows: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Score vs dim (log2 x axis): STS-B Spearman and nDCG@10, one line per model/variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("stsb_spearman", "STS-B test Spearman x100"), ("ndcg@10", "MNLI-val retrieval nDCG@10 x100")]
    extra = dict.fromkeys(k for r in rows for k in r if k.endswith(":ndcg@10"))
    metrics += [(k, f"{k.split(':')[0]} nDCG@10 x100 (out of domain)") for k in extra]
    metrics = [m for m in metrics if any(r.get(m[0]) is not None for r in rows)]
    ncol = min(len(metrics), 2)
    nrow = -(-len(metrics) // ncol)
    fig, grid = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False)
    axes = [list(grid.flat)[: len(metrics)]]
    for ax in list(grid.flat)[len(metrics) :]:
        ax.set_visible(False)
    keys = list(dict.fromkeys((r["model"], r["variant"]) for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(models)}
    for ax, (metric, label) in zip(axes[0], metrics, strict=True):
        for model, variant in keys:
            pts = sorted(
                (r["dim"], r.get(metric)) for r in rows if (r["model"], r["variant"]) == (model, variant)
            )
            pts = [p for p in pts if p[1] is not None]
            if not pts:
                continue
            style = "-" if variant in ("fp32", "") else "--"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                color=colors[model],
                marker="o" if style == "-" else "s",
                label=f"{model} ({variant})",
            )
        ax.set_xscale("log", base=2)
        dims = sorted({r["dim"] for r in rows})
        ax.set_xticks(dims)
        ax.set_xticklabels([str(d) for d in dims])
        ax.set_xlabel("embedding dim (truncated, renormalized)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="model directories (mrl_infer.json) or hub ids")
    ap.add_argument("--names", default="", help="comma-separated display names, one per model")
    ap.add_argument("--variants", default="fp32,int8")
    ap.add_argument("--dims", default="", help="comma-separated dims (default: each model's own)")
    ap.add_argument("--data", default=None, help="dir with stsb/test.tsv (default ../shared/data)")
    ap.add_argument("--retrieval", default=None, help="retrieval set dir (default benchmarks/data/retrieval)")
    ap.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an out-of-domain retrieval set (BEIR or tsv layout); repeatable",
    )
    ap.add_argument("--split", default="test", help="STS-B split: test (report) or dev (selection)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--include", action="append", default=[], help="quality.json of an earlier run to merge")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = args.names.split(",") if args.names else [Path(m).name for m in args.models]
    if len(names) != len(args.models):
        ap.error("--names needs one name per model")
    dims = [int(d) for d in args.dims.split(",")] if args.dims else None
    ood: dict[str, str] = {}
    for item in args.ood:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            ap.error(f"--ood {item!r}: expected NAME=DIR")
        ood[name] = path
    rows: list[dict[str, Any]] = []
    for path in args.include:
        rows += json.loads(Path(path).read_text(encoding="utf-8"))
    for model, name in zip(args.models, names, strict=True):
        t0 = time.time()
        got = evaluate(
            model,
            dims=dims,
            variants=[v for v in args.variants.split(",") if v],
            data_dir=args.data,
            retrieval_dir=args.retrieval,
            split=args.split,
            threads=args.threads,
            extra_retrieval=ood,
        )
        for r in got:
            r["model"] = name
        rows += got
        print(f"{name}: {len(got)} rows in {time.time() - t0:.0f}s", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    header = (
        f"STS-B {args.split} Spearman (cosine) x100 and MNLI-val retrieval (1,681 queries, 5,000 docs) x100, "
        "per truncation dim."
        + "".join(f" {n}: out-of-domain retrieval ({p})." for n, p in ood.items())
        + "\n\n"
    )
    (out / "quality.md").write_text(header + table + "\n", encoding="utf-8")
    (out / "quality.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    plot(
        rows, out / "quality.png", title=f"Quality vs Matryoshka dim (STS-B {args.split}, MNLI-val retrieval)"
    )
    print(table)
    print(f"wrote {out / 'quality.md'}, {out / 'quality.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
