"""Matryoshka funnel search: ``Index`` (shortlist on a small prefix, rerank with the full vectors).

Used by ``mrl-embed index`` / ``mrl-embed search``; needs only numpy and onnxruntime.
"""

from mrl_infer.search._index import Index, SearchResult
from mrl_infer.search._util import semantic_search, similarity

__all__ = ["Index", "SearchResult", "semantic_search", "similarity"]
