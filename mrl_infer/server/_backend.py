"""The model behind the server: tokenization and one model call over already-tokenized rows.

``EmbedderBackend`` wraps an :class:`~mrl_infer.Embedder` and uses its tokenizer and ONNX session
directly (the same pieces ``encode`` uses, so rows equal ``encode``'s), because the server needs what
``encode`` does not expose: token counts for ``usage``, token-id inputs, and model calls formed
across requests. Tests plug in any object with the same methods (``Backend``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mrl_infer._embedder import Embedder, _unencodable
from mrl_infer._precision import truncate


@dataclass(frozen=True)
class Row:
    """One tokenized input: token ids (special tokens included), type ids, and its prompt's length."""

    ids: Sequence[int]
    type_ids: Sequence[int] | None = None
    prompt_length: int = 0


@dataclass(frozen=True)
class Tokenized:
    """A request's rows, its real token count (``usage``), and how many inputs were truncated."""

    rows: list[Row]
    num_tokens: int
    num_truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(r.ids) for r in self.rows]


class Backend(Protocol):
    """What the server needs from a model."""

    name: str
    embedding_dim: int
    dims: list[int]
    max_seq_length: int
    vocab_size: int
    prompts: dict[str, str]
    default_prompt_name: str | None

    def tokenize(self, texts: Sequence[str], prompt_name: str | None) -> Tokenized: ...

    def from_ids(self, ids: Sequence[Sequence[int]]) -> Tokenized: ...

    def run(self, rows: list[Row]) -> np.ndarray: ...

    def finish(self, pooled: np.ndarray, dim: int) -> np.ndarray: ...


class EmbedderBackend:
    """A :class:`Backend` over an Embedder (its tokenizer, session and manifest)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        m = embedder.manifest
        self.name: str = m.name or embedder.model_dir.name
        self.embedding_dim: int = m.embedding_dim
        self.dims: list[int] = sorted({*m.dims, m.embedding_dim}, reverse=True)
        self.max_seq_length: int = embedder.max_seq_length
        self.prompts: dict[str, str] = dict(m.prompts)
        self.default_prompt_name: str | None = m.default_prompt_name
        self._tok = embedder._tokenizer
        self.vocab_size: int = self._tok._tok.get_vocab_size()

    def tokenize(self, texts: Sequence[str], prompt_name: str | None) -> Tokenized:
        """Tokenize texts as ``encode`` does (prompt prepended, cut at max_seq_length).

        Raises:
            ValueError: unknown ``prompt_name``.
            InputError: a text is not valid Unicode (a lone surrogate).
        """
        prompt = self.embedder._resolve_prompt(prompt_name, None)
        full = [prompt + t for t in texts] if prompt else list(texts)
        try:
            enc = self._tok.encode(full)
        except Exception as exc:
            bad = _unencodable(full, 0)
            if bad is None:
                raise
            raise bad from exc
        plen = self._tok.prompt_length(prompt) if prompt and self.embedder._needs_prompt_length else 0
        rows = [Row(i, t, plen) for i, t in zip(enc.ids, enc.type_ids, strict=True)]
        return Tokenized(rows, int(enc.lengths.sum()), int(enc.num_truncated))

    def from_ids(self, ids: Sequence[Sequence[int]]) -> Tokenized:
        """Rows from token ids taken as the complete model input; longer than max_seq_length is cut."""
        cut = sum(1 for r in ids if len(r) > self.max_seq_length)
        rows = [Row(list(r[: self.max_seq_length])) for r in ids]
        return Tokenized(rows, sum(len(r.ids) for r in rows), cut)

    def run(self, rows: list[Row]) -> np.ndarray:
        """One model call: pooled, unnormalized float32 ``[len(rows), embedding_dim]``."""
        emb = self.embedder
        emb._check_open()
        ids = [r.ids for r in rows]
        types = [r.type_ids if r.type_ids is not None else [0] * len(r.ids) for r in rows]
        feeds = self._tok.pad(ids, types, emb._needs_type_ids)
        if emb._needs_prompt_length:
            feeds["prompt_length"] = np.array([r.prompt_length for r in rows], dtype=np.int64)
        return emb._session.run(emb.manifest.output, feeds)

    def finish(self, pooled: np.ndarray, dim: int) -> np.ndarray:
        """Cut to ``dim`` and L2-renormalize, exactly as ``encode(dim=dim)``."""
        return truncate(
            pooled, dim, normalize_embeddings=True, model_normalizes=self.embedder.manifest.normalize
        )
