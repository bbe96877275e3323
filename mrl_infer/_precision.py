"""Matryoshka truncation, renormalization and output precision (quantization)."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger("mrl_infer")

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization; all-zero rows stay zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def truncate(
    pooled: np.ndarray, dim: int, *, normalize_embeddings: bool, model_normalizes: bool
) -> np.ndarray:
    """Cut the pooled (unnormalized) model output to ``dim`` values.

    With ``normalize_embeddings`` the first ``dim`` values are taken and then L2-renormalized
    (never the other way round). Without it the result equals sentence-transformers'
    ``encode(truncate_dim=dim, normalize_embeddings=False)``: the model's own output
    (normalized over the full dim when the model ends in a Normalize module), then cut.
    """
    pooled = np.asarray(pooled, dtype=np.float32)
    if normalize_embeddings:
        return l2_normalize(pooled[:, :dim])
    if model_normalizes:
        return np.ascontiguousarray(l2_normalize(pooled)[:, :dim])
    return np.ascontiguousarray(pooled[:, :dim])


def compute_ranges(embeddings: np.ndarray) -> np.ndarray:
    """Per-dimension [min; max] calibration ranges, shape ``[2, dim]``."""
    return np.vstack((embeddings.min(axis=0), embeddings.max(axis=0))).astype(np.float32)


def output_width(dim: int, precision: str) -> int:
    """Columns of the output array for ``dim`` values at ``precision`` (bits are packed 8 per byte)."""
    return (dim + 7) // 8 if precision in ("binary", "ubinary") else dim


def output_dtype(precision: str) -> np.dtype:
    return np.dtype(
        {
            "float32": np.float32,
            "float16": np.float16,
            "int8": np.int8,
            "uint8": np.uint8,
            "binary": np.int8,
            "ubinary": np.uint8,
        }[precision]
    )


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """Quantize float embeddings with the semantics of sentence-transformers' ``quantize_embeddings``.

    int8/uint8 map each dimension's [min, max] range onto 256 buckets. The range comes from
    ``ranges`` (shape ``[2, dim]``), else from ``calibration_embeddings``, else from
    ``embeddings`` themselves. binary/ubinary pack the sign bits (``x > 0``) 8 per byte.
    float16 is a plain cast (an mrl_infer addition).
    """
    check_precision(precision)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.int8, np.uint8):
        raise TypeError("embeddings to quantize must be float, not int8 or uint8")
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [n, dim], got shape {embeddings.shape}")
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision == "float16":
        return embeddings.astype(np.float16)
    if precision in ("int8", "uint8"):
        if ranges is None:
            source = calibration_embeddings if calibration_embeddings is not None else embeddings
            if len(source) < 100:
                logger.warning(
                    "computing %s quantization ranges from only %d embeddings; pass `ranges` or "
                    "`calibration_embeddings` computed from more data for stable buckets",
                    precision,
                    len(source),
                )
            ranges = compute_ranges(np.asarray(source))
        ranges = np.asarray(ranges)
        if ranges.shape != (2, embeddings.shape[1]):
            raise ValueError(
                f"ranges must have shape (2, {embeddings.shape[1]}) for {embeddings.shape[1]}-dim "
                f"embeddings, got {ranges.shape}"
            )
        starts = ranges[0, :]
        steps = (ranges[1, :] - ranges[0, :]) / 255
        steps = np.where(steps == 0, 1, steps)
        q_vals = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        if precision == "uint8":
            return q_vals.astype(np.uint8)
        return (q_vals - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1).reshape(embeddings.shape[0], -1)
    if precision == "binary":
        return (packed - 128).astype(np.int8)
    return packed
