"""The Embedder: texts in, Matryoshka embeddings at the requested dim out, without torch."""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from mrl_infer._hub import HubModel, default_model_dir, is_local, local_model_dir
from mrl_infer._integrity import verify_enabled, verify_variant
from mrl_infer._manifest import Manifest, load_manifest
from mrl_infer._precision import (
    check_precision,
    output_dtype,
    output_width,
    quantize_embeddings,
    truncate,
)
from mrl_infer._session import OnnxSession, cuda_available, parse_device
from mrl_infer._tokenize import TextTokenizer
from mrl_infer.errors import (
    DeviceError,
    DimError,
    EmbedderClosedError,
    InputError,
    ModelFormatError,
    NonFiniteEmbeddingError,
)

logger = logging.getLogger("mrl_infer")

VARIANTS = ("auto", "fp32", "int8", "fp16")
# Largest number of texts tokenized and length-sorted together by ``encode``; bounds tokenizer memory.
_ENCODE_CHUNK = 65536
_VARIANT_PREFERENCE = {"cpu": ("fp32", "int8", "fp16"), "cuda": ("fp16", "fp32", "int8")}
_DOCUMENT_PROMPTS = ("document", "passage", "corpus")


# Batches hold at most ``batch_size`` texts and at most ``batch_size * _TOKENS_PER_TEXT`` padded tokens:
# a batch of long texts is split so that its activations (and the arena's peak) stay bounded. Measured
# (docs/benchmarks.md): MiniLM int8, batch 32, 4,000-text corpus: peak RSS 331 -> 293 MB, same speed.
_TOKENS_PER_TEXT = 128
# On CPU the budget is also capped absolutely: bigger batches only cost memory there. MiniLM int8,
# 2,000 corpus texts, batch 32, quiet 2-core machine, alternating runs (docs/benchmarks.md):
# cap 4,096 tokens 203-222 sent/s, peak RSS 377 MB; 2,048: 188-239, 265-273 MB; 1,024: 218-229, 208 MB.
# Before any cap, batch 128 and 512 peaked at 950 MB and 3.5 GB and were slower. GPUs keep the budget.
_CPU_MAX_BATCH_TOKENS = 1024
# Experiment knob (benchmarks): let batches of short texts grow past ``batch_size`` up to the same token
# budget. Off: no measured gain on the 2-core reference machine.
_GROW_SHORT = False


def _plan_batches(
    sorted_lengths: np.ndarray, batch_size: int, max_tokens: int | None = None
) -> list[tuple[int, int]]:
    """[start, stop) ranges over length-sorted (longest first) texts, capped by count and token budget."""
    n = len(sorted_lengths)
    budget = batch_size * _TOKENS_PER_TEXT
    if max_tokens is not None:
        budget = min(budget, max_tokens)
    ranges = []
    start = 0
    while start < n:
        width = max(int(sorted_lengths[start]), 1)
        cap = budget // width if _GROW_SHORT else min(batch_size, budget // width)
        stop = min(n, start + max(1, cap))
        ranges.append((start, stop))
        start = stop
    return ranges


def _check_text(item: object, index: int) -> str:
    if not isinstance(item, str):
        raise TypeError(f"texts[{index}] is {type(item).__name__}, expected str")
    return item


def _check_texts_arg(texts: object, *, allow_str: bool) -> None:
    """Refuse arguments that iterate into something other than texts (see Embedder's docstring)."""
    if texts is None:
        raise TypeError("texts is None; pass a str (one text) or a list of str")
    if isinstance(texts, (bytes, bytearray, memoryview)):
        raise TypeError("texts is bytes; decode it to str first (e.g. data.decode('utf-8'))")
    if isinstance(texts, Mapping):
        raise TypeError(
            f"texts is a mapping ({type(texts).__name__}); iterating it would embed its keys. "
            "Pass a list of texts, e.g. list(d.values())"
        )
    if isinstance(texts, str):
        if allow_str:
            return
        raise TypeError(
            "encode_iter takes an iterable of texts; pass a list of texts: a str would be embedded "
            "character by character (use encode(text) for one text)"
        )
    if not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a str or an iterable of str, got {type(texts).__name__}")


def _unencodable(texts: Sequence[str], offset: int) -> InputError | None:
    """An InputError naming the first text that is not valid Unicode (a lone surrogate), if any."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            return InputError(
                f"texts[{offset + i}] cannot be tokenized: it is not valid Unicode ({exc.reason} "
                f"{text[exc.start : exc.end]!r} at character {exc.start}; lone surrogates often come "
                "from decoding bytes with errors='surrogateescape')"
            )
    return None


def _check_finite(pooled: np.ndarray, offset: int) -> None:
    """Raise NonFiniteEmbeddingError naming the rows (offset-based indices) that hold NaN or inf."""
    finite = np.isfinite(pooled).all(axis=1)
    if finite.all():
        return
    bad = (np.flatnonzero(~finite) + offset).tolist()
    shown = ", ".join(f"texts[{i}]" for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise NonFiniteEmbeddingError(
        f"the model produced NaN/inf embeddings for {len(bad)} input(s): {shown}. The model file may be "
        "damaged (re-download or re-export it) or the graph is numerically unstable for these texts",
        bad,
    )


class Embedder:
    """Embeds texts with an exported Matryoshka model, truncated to ``dim`` and renormalized.

    ``model`` is a model directory, a Hugging Face Hub id of one, or None for the embedded default.
    ``dim`` must be one of the model's Matryoshka dims (``allow_any_dim=True`` lifts that).
    A ``model`` that looks like a path (absolute, starting with ``.`` or ``~``, with more than one
    ``/``, or existing) is always a local directory; ``~`` is expanded.
    ``verify`` (default: on unless ``MRL_INFER_VERIFY=0``) checks the ONNX file (and its external-data
    files) against the manifest's sha256 before first use; a verified file is remembered by its stat
    signature, so later loads skip the hash. Pass ``verify=False`` for a file edited on purpose.
    ``session_config``: extra ONNX Runtime session config entries (``SessionOptions.
    add_session_config_entry``), e.g. ``{"session.intra_op.allow_spinning": "0"}``, which
    ``mrl-embed serve`` sets so that idle inference threads leave the CPU to the event loop.
    ``encode`` takes one str (one text, returns ``[dim]``) or a sequence of str; ``encode_iter`` takes
    an iterable of str and refuses a bare str. A NaN/inf embedding is never returned: it raises
    NonFiniteEmbeddingError naming the inputs.
    One Embedder may be shared by several threads; ``close()`` (or a ``with`` block) releases the
    ONNX Runtime session.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        dim: int | None = None,
        *,
        device: str = "auto",
        variant: str = "auto",
        threads: int | None = None,
        max_seq_length: int | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        allow_any_dim: bool = False,
        verify: bool | None = None,
        session_config: Mapping[str, str] | None = None,
    ) -> None:
        self._closed = False
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        kind, device_id = parse_device(device)

        hub: HubModel | None = None
        if model is None:
            model_dir = default_model_dir()
        elif is_local(model):
            model_dir = local_model_dir(model)
        else:
            hub = HubModel(str(model), revision, cache_dir)
            model_dir = hub.fetch("mrl_infer.json").parent
        manifest = load_manifest(model_dir)

        reason = "requested"
        if kind == "auto":
            if cuda_available():
                kind, reason = "cuda", "auto: CUDAExecutionProvider is available"
            else:
                kind, reason = "cpu", "auto: no CUDAExecutionProvider in this onnxruntime"
        elif kind == "cuda" and not cuda_available():
            raise DeviceError(
                f"device={device!r} was requested but this onnxruntime has no CUDAExecutionProvider "
                "(install onnxruntime-gpu: pip install 'mrl-infer[cuda]')"
            )
        variant_name = self._choose_variant(manifest, variant, kind, model_dir)
        if hub is not None:
            v = manifest.variants[variant_name]
            model_dir = hub.snapshot([*manifest.tokenizer.files, v.file, *v.external_data])

        if max_seq_length is not None and not 0 < max_seq_length <= manifest.max_seq_length:
            raise ValueError(
                f"max_seq_length must be between 1 and the model's {manifest.max_seq_length}, "
                f"got {max_seq_length}"
            )
        self.manifest: Manifest = manifest
        self.model_dir: Path = model_dir
        self.variant: str = variant_name
        self.allow_any_dim = allow_any_dim
        self.max_seq_length: int = max_seq_length or manifest.max_seq_length
        self.dim: int = self._check_dim(dim)
        self._tokenizer = TextTokenizer(model_dir, manifest.tokenizer, self.max_seq_length)
        chosen = manifest.variants[variant_name]
        path = model_dir / chosen.file
        preopt = chosen.graph_optimization == "extended"
        weight_range = chosen.int8_weight_range
        if verify_enabled(verify):
            verify_variant(model_dir, chosen)
        try:
            self._session = OnnxSession(path, kind, device_id, threads, session_config, preopt, weight_range)
        except DeviceError:
            if reason.startswith("auto"):
                logger.warning("CUDA is available but failed to start; auto falls back to CPU")
                kind, reason = "cpu", "auto: CUDA failed to start"
                self._session = OnnxSession(
                    path, kind, device_id, threads, session_config, preopt, weight_range
                )
            else:
                raise
        self._device_reason = reason
        missing = set(self._session.input_names) - set(manifest.inputs) - {"prompt_length"}
        if missing or manifest.output not in self._session.output_names:
            raise ModelFormatError(
                f"{path}: graph inputs {self._session.input_names} / outputs {self._session.output_names} "
                f"do not match the manifest ({manifest.inputs} -> {manifest.output})"
            )
        self._needs_type_ids = "token_type_ids" in self._session.input_names
        self._needs_prompt_length = "prompt_length" in self._session.input_names
        self._lock = threading.Lock()
        self._num_truncated = 0
        logger.info(
            "mrl_infer: %s on %s (%s), variant %s%s",
            model_dir,
            self.device,
            reason,
            variant_name,
            f", int8 kernel {self.int8_kernel}" if self.int8_kernel else "",
        )

    # ----------------------------------------------------------------- properties
    @property
    def embedding_dim(self) -> int:
        """Full output dim of the model (before truncation)."""
        return self.manifest.embedding_dim

    @property
    def dims(self) -> list[int]:
        """Matryoshka dims the model was trained for, largest first."""
        return self.manifest.dims

    @property
    def prompts(self) -> dict[str, str]:
        return dict(self.manifest.prompts)

    @property
    def default_prompt_name(self) -> str | None:
        return self.manifest.default_prompt_name

    @property
    def device(self) -> str:
        """The device actually in use: 'cpu' or 'cuda:N'."""
        return "cpu" if self._session.kind == "cpu" else f"cuda:{self._session.device_id}"

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime execution providers attached to the session, in priority order."""
        return list(self._session.providers)

    @property
    def threads(self) -> int:
        return self._session.threads

    @property
    def int8_kernel(self) -> str | None:
        """The integer GEMM of an int8 variant on CPU: "u8s8", or "u8u8" where the file's full-range
        weights would saturate this CPU's u8s8 kernel (x86 without VNNI); None for float variants and
        CUDA. ``$MRL_INFER_INT8_KERNEL`` (auto, u8s8, u8u8) overrides the choice."""
        return self._session.int8_kernel

    @property
    def num_truncated(self) -> int:
        """Inputs cut at ``max_seq_length`` since this Embedder was created (all calls, all threads)."""
        with self._lock:
            return self._num_truncated

    def __repr__(self) -> str:
        return (
            f"Embedder(model={str(self.model_dir)!r}, dim={self.dim}, device={self.device!r}, "
            f"variant={self.variant!r})"
        )

    # ----------------------------------------------------------------- checks
    @staticmethod
    def _choose_variant(manifest: Manifest, variant: str, kind: str, model_dir: Path) -> str:
        if variant != "auto":
            if variant not in manifest.variants:
                raise ModelFormatError(
                    f"{model_dir}: no '{variant}' variant; available: {sorted(manifest.variants)}"
                )
            return variant
        preferred = manifest.extra.get("default_variant", {}).get(kind)
        if preferred in manifest.variants:
            return str(preferred)
        for name in _VARIANT_PREFERENCE[kind]:
            if name in manifest.variants:
                return name
        return next(iter(manifest.variants))

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return getattr(self, "dim", self.manifest.embedding_dim)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        dim = int(dim)
        valid = self.manifest.dims
        if dim < 1 or dim > self.manifest.embedding_dim:
            raise DimError(
                f"dim {dim} is out of range: the model's embedding_dim is {self.manifest.embedding_dim}; "
                f"supported dims: {valid}"
            )
        if dim not in valid and not self.allow_any_dim:
            if valid == [self.manifest.embedding_dim]:
                raise DimError(
                    f"dim {dim} is refused: no Matryoshka dims declared (the model supports only its "
                    f"full dim {valid}); re-export with --dims (or pass allow_any_dim=True; quality is "
                    "not guaranteed)"
                )
            raise DimError(
                f"dim {dim} is not one of the model's Matryoshka dims {valid}; "
                "pass allow_any_dim=True to use it anyway (quality is not guaranteed)"
            )
        return dim

    def _resolve_prompt(self, prompt_name: str | None, prompt: str | None) -> str:
        if prompt is not None:
            return prompt
        if prompt_name is None:
            prompt_name = self.manifest.default_prompt_name
            if prompt_name is None:
                return ""
        if prompt_name not in self.manifest.prompts:
            raise ValueError(
                f"unknown prompt_name {prompt_name!r}; the model's prompts are "
                f"{sorted(self.manifest.prompts) or 'none'}"
            )
        return self.manifest.prompts[prompt_name]

    # ----------------------------------------------------------------- core
    def _embed_chunk(self, texts: Sequence[str], batch_size: int, prompt: str) -> tuple[np.ndarray, int]:
        """Pooled, unnormalized embeddings of one chunk, in input order, and how many texts were cut
        at max_seq_length (counted per call: other threads may share this Embedder)."""
        if prompt:
            texts = [prompt + t for t in texts]
        enc = self._tokenizer.encode(texts)
        if enc.num_truncated:
            with self._lock:
                self._num_truncated += enc.num_truncated
        # Longest first: neighbours in length share a batch, so padding is minimal.
        order = np.argsort(-enc.lengths, kind="stable")
        out = np.empty((len(texts), self.manifest.embedding_dim), dtype=np.float32)
        prompt_len = self._tokenizer.prompt_length(prompt) if prompt and self._needs_prompt_length else 0
        max_tokens = _CPU_MAX_BATCH_TOKENS if self.device == "cpu" else None
        for start, stop in _plan_batches(enc.lengths[order], batch_size, max_tokens):
            idx = order[start:stop]
            feeds = self._tokenizer.pad(
                [enc.ids[i] for i in idx], [enc.type_ids[i] for i in idx], self._needs_type_ids
            )
            if self._needs_prompt_length:
                feeds["prompt_length"] = np.full(len(idx), prompt_len, dtype=np.int64)
            out[idx] = self._session.run(self.manifest.output, feeds)
        return out, int(enc.num_truncated)

    def _finish(self, pooled: np.ndarray, dim: int, normalize_embeddings: bool) -> np.ndarray:
        return truncate(
            pooled, dim, normalize_embeddings=normalize_embeddings, model_normalizes=self.manifest.normalize
        )

    def _embed_block(
        self, texts: Sequence[str], batch_size: int, prompt: str, dim: int, normalize: bool, offset: int
    ) -> tuple[np.ndarray, int]:
        """Finished float32 rows of one block and its truncation count; bad texts and NaN/inf rows
        are named by their index in the whole call (``offset`` is the index of ``texts[0]``)."""
        try:
            pooled, truncated = self._embed_chunk(texts, batch_size, prompt)
        except Exception as exc:
            bad = _unencodable(texts, offset)
            if bad is None:
                raise
            raise bad from exc
        _check_finite(pooled, offset)
        return self._finish(pooled, dim, normalize), truncated

    def _check_open(self) -> None:
        if self._closed:
            raise EmbedderClosedError(f"{self!r} was closed; create a new Embedder to embed again")

    def _report_truncated(self, n: int, total: int) -> None:
        """Warn once per call about the ``n`` of its ``total`` inputs that were truncated."""
        if n > 0:
            logger.warning(
                "%d of %d inputs were longer than max_seq_length=%d tokens and were truncated",
                n,
                total,
                self.max_seq_length,
            )

    # ----------------------------------------------------------------- public API
    def encode(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int = 32,
        dim: int | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = True,
        precision: str = "float32",
        show_progress_bar: bool | None = None,
        ranges: np.ndarray | None = None,
        calibration_embeddings: np.ndarray | None = None,
    ) -> np.ndarray:
        """Embed texts; returns ``[n, dim]`` (``[dim]`` for a single string).

        int8/uint8 ``precision`` computes calibration ranges over the whole input, exactly as
        sentence-transformers does, unless ``ranges`` or ``calibration_embeddings`` are given.
        """
        self._check_open()
        _check_texts_arg(texts, allow_str=True)
        check_precision(precision)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        single = isinstance(texts, str)
        items: list[str] = [texts] if single else list(texts)  # type: ignore[list-item]
        for i, item in enumerate(items):
            _check_text(item, i)
        dim = self._check_dim(dim)
        text_prompt = self._resolve_prompt(prompt_name, prompt)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() <= logging.INFO and len(items) > batch_size
        if not items:
            return np.empty((0, output_width(dim, precision)), dtype=output_dtype(precision))

        truncated = 0
        chunks: list[np.ndarray] = []
        bar = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="Embedding", unit="text")
        try:
            for start in range(0, len(items), _ENCODE_CHUNK):
                chunk = items[start : start + _ENCODE_CHUNK]
                rows, n_cut = self._embed_block(
                    chunk, batch_size, text_prompt, dim, normalize_embeddings, start
                )
                chunks.append(rows)
                truncated += n_cut
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        self._report_truncated(truncated, len(items))
        result = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if precision != "float32":
            result = quantize_embeddings(result, precision, ranges, calibration_embeddings)
        return result[0] if single else result

    def encode_iter(
        self,
        texts: Iterable[str],
        *,
        batch_size: int = 32,
        chunk_size: int = 2048,
        dim: int | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        normalize_embeddings: bool = True,
        precision: str = "float32",
        ranges: np.ndarray | None = None,
    ) -> Iterator[np.ndarray]:
        """Embed an iterable of any length with bounded memory.

        Yields consecutive blocks of rows in input order, ``chunk_size`` texts at a time (sorted by
        length inside each block). int8/uint8 need explicit ``ranges`` here: ranges taken from each
        block would make the same text quantize differently depending on its neighbours.
        A bare str is refused (TypeError): it would be embedded character by character.
        """
        self._check_open()
        _check_texts_arg(texts, allow_str=False)
        check_precision(precision)
        if batch_size < 1 or chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")
        if precision in ("int8", "uint8") and ranges is None:
            raise ValueError(
                f"precision={precision!r} while streaming needs explicit `ranges` (shape [2, dim]); "
                "compute them once with quantize ranges over a calibration sample, e.g. "
                "mrl_infer.compute_ranges(embedder.encode(sample, dim=dim))"
            )
        dim = self._check_dim(dim)
        text_prompt = self._resolve_prompt(prompt_name, prompt)
        return self._iter(
            texts, batch_size, chunk_size, dim, text_prompt, normalize_embeddings, precision, ranges
        )

    def _iter(
        self,
        texts: Iterable[str],
        batch_size: int,
        chunk_size: int,
        dim: int,
        prompt: str,
        normalize_embeddings: bool,
        precision: str,
        ranges: np.ndarray | None,
    ) -> Iterator[np.ndarray]:
        truncated = 0
        it = iter(texts)
        seen = 0
        while True:
            chunk = list(itertools.islice(it, chunk_size))
            if not chunk:
                break
            for i, item in enumerate(chunk):
                _check_text(item, seen + i)
            out, n_cut = self._embed_block(chunk, batch_size, prompt, dim, normalize_embeddings, seen)
            truncated += n_cut
            seen += len(chunk)
            if precision != "float32":
                out = quantize_embeddings(out, precision, ranges)
            yield out
        self._report_truncated(truncated, seen)

    def close(self) -> None:
        """Release the ONNX Runtime session (and its memory arena); later encode calls raise
        EmbedderClosedError. Closing twice is harmless."""
        with self._lock:
            self._closed = True
            self._session.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def encode_query(self, texts: str | Sequence[str], **kwargs: object) -> np.ndarray:
        """Embed search queries with the model's 'query' prompt (none if the model has none)."""
        if "query" in self.manifest.prompts:
            kwargs.setdefault("prompt_name", "query")
        return self.encode(texts, **kwargs)  # type: ignore[arg-type]

    def encode_document(self, texts: str | Sequence[str], **kwargs: object) -> np.ndarray:
        """Embed documents with the model's 'document' (or 'passage'/'corpus') prompt, if any."""
        for name in _DOCUMENT_PROMPTS:
            if name in self.manifest.prompts:
                kwargs.setdefault("prompt_name", name)
                break
        return self.encode(texts, **kwargs)  # type: ignore[arg-type]


__all__ = ["Embedder"]
