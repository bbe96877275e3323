"""The funnel-search defaults, in a module of their own so that ``mrl-embed --help`` needs no numpy.

Chosen from the Pareto table of benchmarks/search.py (docs/search.md): on the default model's real
embeddings (101,915 texts, 1,000 held-out queries) the 128-dim int8 prefix with 32x oversampling is
the cheapest setting with recall@10 >= 0.99 against exact full-dim search (0.993); 64-dim prefixes
need > 100x oversampling for 0.98. Its tier is 128 B per row, 1/12 of float32 full vectors.
"""

DEFAULT_SHORTLIST_DIM = 128
DEFAULT_SHORTLIST_PRECISION = "int8"
DEFAULT_OVERSAMPLE = 32
DEFAULT_RERANK_PRECISION = "float16"
