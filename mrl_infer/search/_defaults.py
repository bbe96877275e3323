"""The funnel-search defaults, in a module of their own so that ``mrl-embed --help`` needs no numpy.

Chosen from the Pareto table of benchmarks/search.py (docs/search.md): on the default model's real
embeddings (101,915 texts, 1,000 held-out queries) the 128-dim int8 prefix is the only tier of at most
1/12 of float32 full vectors (128 B per row) that the core scan runs fast, and 48x oversampling is the
cheapest multiple of 16 with recall@10 >= 0.99 against exact full-dim search (0.9936; 32x gave 0.9880
on the round-2 default model, 0.993 on the first one); 64-dim prefixes reach 0.92 at 32x.
"""

DEFAULT_SHORTLIST_DIM = 128
DEFAULT_SHORTLIST_PRECISION = "int8"
DEFAULT_OVERSAMPLE = 48
DEFAULT_RERANK_PRECISION = "float16"
