"""Tokenization with the Rust ``tokenizers`` batch API, padded per batch in numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from mrl_infer._manifest import TokenizerInfo
from mrl_infer.errors import ModelFormatError


@dataclass
class Encoded:
    """Unpadded token ids of a chunk of texts, plus how many were cut at max_seq_length."""

    ids: list[list[int]]
    type_ids: list[list[int]]
    lengths: np.ndarray
    num_truncated: int


class TextTokenizer:
    """Loads ``tokenizer.json`` and turns texts into padded model inputs.

    Truncation is set to ``max_seq_length`` (special tokens included, as in sentence-transformers);
    padding is done per batch so that a batch of short texts stays short.
    """

    def __init__(self, model_dir: Path, info: TokenizerInfo, max_seq_length: int) -> None:
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ModelFormatError(f"{path}: tokenizer file is missing")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelFormatError(f"{path}: cannot load tokenizer ({exc})") from exc
        tok.no_padding()
        tok.enable_truncation(max_length=max_seq_length)
        self._tok = tok
        self.max_seq_length = max_seq_length
        self.pad_id = info.pad_token_id
        self.left_pad = info.padding_side == "left"
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize a chunk of texts without padding, counting the ones that were truncated."""
        encodings: list[Encoding] = self._encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        type_ids = [e.type_ids for e in encodings]
        lengths = np.fromiter((len(i) for i in ids), dtype=np.int64, count=len(ids))
        num_truncated = sum(1 for e in encodings if e.overflowing)
        return Encoded(ids, type_ids, lengths, num_truncated)

    def prompt_length(self, prompt: str) -> int:
        """Tokens the prompt occupies at the start of a text, as sentence-transformers counts them:
        the tokenized prompt, less a trailing special token (EOS/SEP) when the tokenizer appends one."""
        enc = self._tok.encode(prompt, add_special_tokens=True)
        n = len(enc.ids)
        if n and enc.special_tokens_mask[-1]:
            n -= 1
        return n

    def pad(
        self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], need_type_ids: bool
    ) -> dict[str, np.ndarray]:
        """Pad one batch to its longest member (left or right, as the model was trained)."""
        n = len(ids)
        width = max((len(row) for row in ids), default=0)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64) if need_type_ids else None
        for i, row in enumerate(ids):
            k = len(row)
            sl = slice(width - k, width) if self.left_pad else slice(0, k)
            input_ids[i, sl] = row
            mask[i, sl] = 1
            if types is not None:
                types[i, sl] = type_ids[i]
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if types is not None:
            feeds["token_type_ids"] = types
        return feeds
