"""Parity verification of exported graphs against the PyTorch Sentence Transformers model.

Texts are tokenized with the *saved* ``tokenizer.json`` exactly as the runtime does (truncation to
max_seq_length, padding on the model's side with its pad id), run through onnxruntime on CPU, and
compared with ``SentenceTransformer.encode`` after truncation to each Matryoshka dim and L2
renormalization. For int8, STS-B dev Spearman (numpy ranks, no scipy) is compared with fp32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer._quality import load_sts
from mrl_infer._quality import spearman as spearman  # re-exported for _pipeline and _bench

#: Built-in verification texts: short, longer than any max_seq_length, empty, non-Latin scripts, emoji.
BUILTIN_TEXTS: list[str] = [
    "Hello world",
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "?",
    "Café, naïve, résumé, Ångström, Straße.",
    "Mixed CASE Text With NUMBERS 12345 and punctuation!?;:",
    "机器学习是人工智能的一个分支。",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "مرحبا بالعالم، كيف حالك؟",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "한국어 문장입니다.",
    "Το γρήγορο καφέ αλεπού.",
    "🙂🚀🎉",
    "I love 🍕 and 🍣 👨‍👩‍👧‍👦!",
    "Tabs\tand\nnewlines\n\nin text",
    " ".join(["A very long sentence that keeps going well past the maximum sequence length."] * 60),
    "lorem ipsum " * 400,
    "短" * 700,
]

#: Default rows of STS-B dev used for verification (pairs; twice as many sentences).
STSB_PAIRS = 200

#: fp32 must reach this min cosine at every dim, else the export fails.
FP32_MIN_COSINE = 0.99999


@dataclass
class Tokenized:
    """Padded model inputs as numpy int64 arrays, plus the unpadded ids per text."""

    arrays: dict[str, np.ndarray]
    ids: list[list[int]]


def find_stsb_dev(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """STS-B dev path: the explicit one, else ``../shared/data/stsb/dev.tsv`` relative to cwd or the repo."""
    if explicit is not None:
        p = Path(explicit)
        if not p.is_file():
            raise FileNotFoundError(f"validation data {p} not found")
        return p
    repo = Path(__file__).resolve().parent.parent
    for base in (Path.cwd(), repo):
        p = base.parent / "shared" / "data" / "stsb" / "dev.tsv"
        if p.is_file():
            return p
    return None


def load_stsb(path: Path, n_pairs: int = STSB_PAIRS) -> tuple[list[str], list[str], np.ndarray]:
    """First ``n_pairs`` rows of an STS-B TSV (header sentence1/sentence2/score, no quoting)."""
    data = load_sts(path)
    return data.s1[:n_pairs], data.s2[:n_pairs], data.scores[:n_pairs]


def truncate_normalize(emb: np.ndarray, dim: int) -> np.ndarray:
    """First ``dim`` components, L2-normalized (what the runtime does)."""
    x = np.asarray(emb[:, :dim], dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def compare(ref: np.ndarray, got: np.ndarray, dims: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per dim: min cosine and max abs diff between truncated+renormalized ``ref`` and ``got``."""
    out: dict[str, dict[str, float]] = {}
    for d in dims:
        r, g = truncate_normalize(ref, d), truncate_normalize(got, d)
        cos = (r * g).sum(axis=1)
        # Rows that are exactly zero in both (e.g. a pad-id token embedding) agree; cosine is undefined.
        both_zero = (np.abs(ref[:, :d]).max(axis=1) == 0) & (np.abs(got[:, :d]).max(axis=1) == 0)
        cos = np.where(both_zero, 1.0, cos)
        out[str(d)] = {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(r - g).max())}
    return out


def load_tokenizer(tokenizer_json: Path, max_seq_length: int) -> Any:
    """``tokenizers.Tokenizer`` from tokenizer.json with truncation on and padding off (runtime settings)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_seq_length)
    return tok


def tokenize(
    tokenizer_json: Path | Any,
    texts: Sequence[str],
    max_seq_length: int,
    padding_side: str,
    pad_token_id: int,
    input_names: Sequence[str],
) -> Tokenized:
    """Tokenize as the runtime does: tokenizer.json, truncation to max_seq_length, own padding.

    ``tokenizer_json`` is a path or a tokenizer from :func:`load_tokenizer`.
    """
    tok = tokenizer_json
    if isinstance(tok, Path):
        tok = load_tokenizer(tok, max_seq_length)
    encs = tok.encode_batch(list(texts))
    ids = [list(e.ids) for e in encs]
    type_ids = [list(e.type_ids) for e in encs]
    width = max((len(x) for x in ids), default=1) or 1
    n = len(ids)
    input_ids = np.full((n, width), pad_token_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    ttype = np.zeros((n, width), dtype=np.int64)
    for i, (row, trow) in enumerate(zip(ids, type_ids, strict=True)):
        sl = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        input_ids[i, sl] = row
        mask[i, sl] = 1
        ttype[i, sl] = trow
    arrays = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": ttype}
    return Tokenized(arrays={k: v for k, v in arrays.items() if k in input_names}, ids=ids)


def run_onnx(
    path: Path,
    tokenizer_json: Path,
    texts: Sequence[str],
    *,
    max_seq_length: int,
    padding_side: str,
    pad_token_id: int,
    input_names: Sequence[str],
    prompt_length: int | None = None,
    batch_size: int = 16,
    threads: int | None = None,
    weight_range: str | None = None,
) -> np.ndarray:
    """Embed ``texts`` with the ONNX graph at ``path`` on CPU, in batches of mixed lengths.

    ``weight_range`` (int8 graphs): the runtime's kernel choice for it on this CPU applies here too, so
    the parity measured is what ``Embedder`` computes (mrl_infer._session.int8_kernel)."""
    import onnxruntime as ort

    from mrl_infer._session import apply_int8_kernel, int8_kernel_here

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if weight_range is not None:
        apply_int8_kernel(so, int8_kernel_here(weight_range))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    tokenizer = load_tokenizer(tokenizer_json, max_seq_length)
    outs: list[np.ndarray] = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        tok = tokenize(tokenizer, chunk, max_seq_length, padding_side, pad_token_id, input_names)
        feed: dict[str, Any] = dict(tok.arrays)
        if "prompt_length" in input_names:
            feed["prompt_length"] = np.full((len(chunk),), prompt_length or 0, dtype=np.int64)
        outs.append(np.asarray(sess.run(["sentence_embedding"], feed)[0], dtype=np.float32))
    return np.concatenate(outs, axis=0)


def format_table(variants: dict[str, dict[str, Any]], dims: Sequence[int]) -> str:
    """Plain-text verification table: variant x dim -> min cosine, max abs diff, STS-B Spearman delta."""
    head = f"{'variant':<8} {'dim':>6} {'min cosine':>12} {'max abs diff':>13} {'STS-B Δρ vs fp32':>17}"
    lines = [head, "-" * len(head)]
    for name, parity in variants.items():
        per_dim = parity.get("dims", {})
        sts = parity.get("stsb_spearman_delta_vs_fp32", {})
        for d in dims:
            m = per_dim.get(str(d))
            if m is None:
                continue
            delta = sts.get(str(d))
            delta_s = f"{delta:+.5f}" if isinstance(delta, float) else "-"
            lines.append(
                f"{name:<8} {d:>6} {m['min_cosine']:>12.7f} {m['max_abs_diff']:>13.3e} {delta_s:>17}"
            )
    return "\n".join(lines)
