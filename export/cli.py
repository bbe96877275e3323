"""``mrl-export``: command-line front end of :func:`mrl_export.export`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from collections.abc import Sequence

from mrl_export import DEFAULT_ATOL, DEFAULT_OPTIMIZE, export
from mrl_export._errors import ExportError

#: Modules the export needs beyond the runtime, with the distribution that provides each.
EXPORT_MODULES: tuple[tuple[str, str], ...] = (
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("sentence_transformers", "sentence-transformers"),
    ("optimum", "optimum"),
    ("optimum.exporters.onnx", "optimum-onnx"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("tqdm", "tqdm"),
)
INSTALL_HINT = "pip install 'mrl-infer[export]'"


def missing_export_modules() -> list[str]:
    """Distributions of the ``[export]`` extra whose modules cannot be imported here (empty when complete)."""
    missing: list[str] = []
    for module, dist in EXPORT_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing, or a module is blocked
            found = False
        if not found and dist not in missing:
            missing.append(dist)
    return missing


def _missing_message(names: Sequence[str]) -> str:
    return (
        f"mrl-export: error: the export needs the [export] extra, which is not installed "
        f"(missing: {', '.join(names)}). Install it with: {INSTALL_HINT}"
    )


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from mrl_export._onnx import OPTIMIZE_LEVELS, QUANTIZE_TARGETS
    from mrl_export._wrapper import POOLING_MODES

    p = argparse.ArgumentParser(
        prog="mrl-export",
        description="Export a Sentence Transformers model (local dir or Hub id) to a verified mrl-infer "
        "ONNX model directory.",
    )
    p.add_argument("source", help="model directory or Hugging Face model id")
    p.add_argument("out_dir", help="output model directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    p.add_argument("--variants", default="fp32,int8", help="comma-separated subset of fp32,int8,fp16")
    p.add_argument(
        "--optimize", default=DEFAULT_OPTIMIZE, choices=OPTIMIZE_LEVELS, help="fp32 graph optimization"
    )
    p.add_argument("--quantize", default="auto", choices=QUANTIZE_TARGETS, help="int8 target CPU ISA")
    p.add_argument(
        "--preoptimize",
        action="store_true",
        help="save the CPU graphs pre-optimized by onnxruntime, so sessions skip the optimizers "
        "(same embeddings, faster start; tied to this onnxruntime version)",
    )
    p.add_argument("--dims", type=_int_list, help="Matryoshka dims, e.g. 768,512,256,128,64")
    p.add_argument("--max-seq-length", type=int, help="override the model's max sequence length")
    p.add_argument(
        "--pooling", choices=POOLING_MODES, help="pooling for a plain HF encoder (no modules.json)"
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own modeling code")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17)")
    p.add_argument("--no-validate", action="store_true", help="skip parity verification (not recommended)")
    p.add_argument("--validation-data", help="STS-B style TSV (sentence1, sentence2, score) for verification")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL, help="fp32 max abs diff allowed (normalized)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; exit status 0 on success, 1 on an export error, 2 on bad arguments or missing extra."""
    missing = missing_export_modules()
    if missing:
        print(_missing_message(missing), file=sys.stderr)
        return 2
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:  # a dependency present but broken or partial
        print(_missing_message([exc.name or str(exc)]), file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            manifest = export(
                args.source,
                args.out_dir,
                revision=args.revision,
                variants=[v for v in args.variants.split(",") if v.strip()],
                optimize=args.optimize,
                quantize=args.quantize,
                dims=args.dims,
                max_seq_length=args.max_seq_length,
                trust_remote_code=args.trust_remote_code,
                opset=args.opset,
                validate=not args.no_validate,
                atol=args.atol,
                overwrite=args.overwrite,
                show_progress=not args.quiet,
                pooling=args.pooling,
                validation_data=args.validation_data,
                preoptimize=args.preoptimize,
            )
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in {m.split(".")[0] for m, _ in EXPORT_MODULES}:
            raise  # e.g. a module the model's own code needs: not ours to name
        print(_missing_message([exc.name or str(exc)]), file=sys.stderr)
        return 2
    except ExportError as exc:
        print(f"mrl-export: error: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"mrl-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mrl-export: interrupted; nothing was written", file=sys.stderr)
        return 130
    for w in caught:
        if issubclass(w.category, UserWarning) and "Matryoshka" in str(w.message):
            print(f"mrl-export: note: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if not args.quiet:
        dims = manifest.get("matryoshka_dims")
        shown = ", ".join(map(str, dims)) if dims else "none declared"
        print(f"wrote {args.out_dir} (matryoshka dims: {shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
