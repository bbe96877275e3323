"""mrl_export: turn a Sentence Transformers / Hugging Face model into a verified mrl-infer model directory.

``export()`` traces the ST pipeline (encoder, pooling, Dense/LayerNorm; not Normalize) to ONNX, writes fp32 /
int8 / fp16 variants, verifies each against PyTorch and writes ``mrl_infer.json``. See ``docs/export.md``.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrl_export._errors import ExportError

__all__ = ["DEFAULT_ATOL", "DEFAULT_OPTIMIZE", "DEFAULT_VARIANTS", "ExportError", "export"]

DEFAULT_VARIANTS: tuple[str, ...] = ("fp32", "int8")
#: Chosen by measurement on the 2-core dev box (docs/export.md): the plain export was faster than O2/O3.
DEFAULT_OPTIMIZE = "none"
#: Default fp32 threshold on max abs diff is informational; min cosine >= FP32_MIN_COSINE is enforced.
DEFAULT_ATOL = 1e-4

_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
_TARGETS = {"fp32": "cpu", "int8": "cpu", "fp16": "cuda"}


def export(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    revision: str | None = None,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    optimize: str = DEFAULT_OPTIMIZE,
    quantize: str = "auto",
    dims: Sequence[int] | None = None,
    max_seq_length: int | None = None,
    trust_remote_code: bool = False,
    opset: int | None = None,
    validate: bool = True,
    atol: float = DEFAULT_ATOL,
    overwrite: bool = False,
    show_progress: bool = True,
    pooling: str | None = None,
    validation_data: str | os.PathLike[str] | None = None,
    preoptimize: bool = False,
) -> dict[str, Any]:
    """Export ``source`` (model dir or Hub id) to the mrl-infer model directory ``out_dir``.

    ``preoptimize``: save the CPU variants (fp32, int8) with onnxruntime's extended graph optimizations
    applied and mark them ``graph_optimization: "extended"``, so that sessions skip the optimizers
    (same embeddings, faster session creation; tied to the onnxruntime version that wrote them).

    Returns the manifest as a dict. Raises :class:`ExportError` on a bad source, an unsupported model, or
    an fp32 graph whose min cosine against PyTorch is below 0.99999 (or whose max abs diff exceeds
    ``atol``) at any dim. The directory appears only when everything succeeded (written to a temporary
    sibling, then renamed).
    """
    from mrl_export._pipeline import run_export

    variants = tuple(dict.fromkeys(v.strip() for v in variants if v.strip()))
    bad = [v for v in variants if v not in _FILES]
    if not variants or bad:
        raise ExportError(f"variants must be a non-empty subset of {tuple(_FILES)}, got {list(variants)}")
    from mrl_export._onnx import OPTIMIZE_LEVELS, QUANTIZE_TARGETS

    if optimize not in OPTIMIZE_LEVELS:
        raise ExportError(f"optimize must be one of {OPTIMIZE_LEVELS}, got {optimize!r}")
    if quantize not in QUANTIZE_TARGETS:
        raise ExportError(f"quantize must be one of {QUANTIZE_TARGETS}, got {quantize!r}")
    if dims is not None and (not dims or any(int(d) <= 0 for d in dims)):
        raise ExportError(f"dims must be positive integers, got {list(dims)}")
    if max_seq_length is not None and max_seq_length <= 0:
        raise ExportError(f"max_seq_length must be positive, got {max_seq_length}")

    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the final directory gets normal permissions
    started = time.perf_counter()
    try:
        manifest = run_export(
            str(source),
            work,
            revision=revision,
            variants=variants,
            files={v: _FILES[v] for v in variants},
            targets={v: _TARGETS[v] for v in variants},
            optimize=optimize,
            quantize=quantize,
            dims=[int(d) for d in dims] if dims is not None else None,
            max_seq_length=max_seq_length,
            trust_remote_code=trust_remote_code,
            opset=opset,
            validate=validate,
            atol=atol,
            show_progress=show_progress,
            pooling=pooling,
            validation_data=validation_data,
            preoptimize=preoptimize,
            started=started,
            exported_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        _install(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


def _install(work: Path, out: Path) -> None:
    """Move the finished ``work`` dir to ``out``, replacing an existing ``out`` only at the last moment."""
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / "old")
        try:
            os.replace(work, out)
        except BaseException:
            os.replace(trash / "old", out)
            raise
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(work, out)
