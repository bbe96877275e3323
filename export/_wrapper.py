"""The torch module that goes into the ONNX graph: encoder, pooling and post-pooling modules.

Everything of the Sentence Transformers pipeline up to (and excluding) ``Normalize`` is traced, so the
graph outputs the pooled, unnormalized embedding. Pooling is re-implemented here (mirroring
``sentence_transformers`` 5.7 ``Pooling._forward_padded``) because the ST version turns ``prompt_length``
into a Python int and branches on data, which tracing would freeze; ours is per row and branch-free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: Post-pooling ST module classes that are plain tensor functions of ``sentence_embedding`` and trace cleanly.
TRACEABLE_POST_MODULES = ("Dense", "LayerNorm", "Dropout")

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def pooling_modes(pooling: Any) -> tuple[str, ...]:
    """The pooling modes of an ST ``Pooling`` module as a tuple (several modes are concatenated)."""
    mode = pooling.pooling_mode
    return (mode,) if isinstance(mode, str) else tuple(mode)


def pool(
    token_embeddings: Tensor,
    attention_mask: Tensor,
    modes: Sequence[str],
    prompt_length: Tensor | None = None,
) -> Tensor:
    """Pool ``[batch, seq, hidden]`` token embeddings with the ST pooling ``modes`` (concatenated).

    ``prompt_length`` (``[batch]``) excludes that many real tokens at the start of each row (after any left
    padding) from pooling, as ST's ``include_prompt=False`` does.
    """
    dtype = token_embeddings.dtype
    seq_len = token_embeddings.shape[1]
    hidden = token_embeddings.shape[-1]
    mask_i = attention_mask.to(torch.int32)
    if prompt_length is not None:
        # First real token of each row: 0 with right padding, the pad count with left padding.
        first = mask_i.argmax(dim=1)
        positions = torch.arange(seq_len, device=attention_mask.device).unsqueeze(0)
        keep = positions >= (first + prompt_length.to(first.dtype)).unsqueeze(1)
        mask_i = mask_i * keep.to(torch.int32)
    mask = mask_i.unsqueeze(-1).to(dtype)  # [batch, seq, 1]
    out: list[Tensor] = []
    mean_sum: Tensor | None = None
    mean_den: Tensor | None = None
    for mode in modes:
        if mode == "cls":
            first_idx = mask_i.argmax(dim=1)
            idx = first_idx.unsqueeze(-1).unsqueeze(1).expand(-1, 1, hidden)
            out.append(torch.gather(token_embeddings, 1, idx).squeeze(1))
        elif mode == "max":
            out.append(token_embeddings.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            if mean_sum is None or mean_den is None:
                mean_sum = (token_embeddings * mask).sum(dim=1)
                mean_den = torch.clamp(mask.sum(dim=1), min=1e-9)
            out.append(mean_sum / mean_den if mode == "mean" else mean_sum / torch.sqrt(mean_den))
        elif mode == "weightedmean":
            weights = torch.arange(1, seq_len + 1, device=token_embeddings.device).to(dtype)
            weighted_mask = mask * weights.view(1, -1, 1)
            sums = (token_embeddings * weighted_mask).sum(dim=1)
            out.append(sums / torch.clamp(weighted_mask.sum(dim=1), min=1e-9))
        elif mode == "lasttoken":
            # Last real token per row, for right or left padding (ST's flip/max formulation).
            values, indices = mask_i.flip(1).max(1)
            indices = torch.where(values == 0, torch.full_like(indices, seq_len - 1), indices)
            idx = (seq_len - indices - 1).unsqueeze(-1).unsqueeze(1).expand(-1, 1, hidden)
            out.append(torch.gather(token_embeddings * mask, 1, idx).squeeze(1))
        else:
            raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


class EmbeddingGraph(nn.Module):
    """ST pipeline up to Normalize, as a positional-input module suitable for ``torch.onnx.export``.

    ``input_names`` fixes the order of the positional inputs (``input_ids``, ``attention_mask``, optionally
    ``token_type_ids`` and ``prompt_length``); the output is ``sentence_embedding`` ``[batch, dim]``.
    """

    def __init__(
        self,
        transformer: nn.Module,
        pooling: nn.Module,
        post_modules: Sequence[nn.Module],
        input_names: Sequence[str],
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling
        self.post = nn.ModuleList(post_modules)
        self.input_names = list(input_names)
        self.modes = pooling_modes(pooling)

    def forward(self, *inputs: Tensor) -> Tensor:
        named = dict(zip(self.input_names, inputs, strict=True))
        prompt_length = named.pop("prompt_length", None)
        features: dict[str, Any] = dict(named)
        features = self.transformer(features)
        token_embeddings = features["token_embeddings"]
        attention_mask = features["attention_mask"]
        emb = pool(token_embeddings, attention_mask, self.modes, prompt_length)
        features = {"sentence_embedding": emb}
        for module in self.post:
            features = module(features)
        return features["sentence_embedding"].to(torch.float32)
