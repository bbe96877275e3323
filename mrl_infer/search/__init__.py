"""Matryoshka funnel search: ``Index`` (shortlist on a small prefix, rerank with the full vectors).

Used by ``mrl-embed index`` / ``mrl-embed search``; needs only numpy and onnxruntime. The public
names load on first use (PEP 562), so registering the CLI's options costs no numpy.
``to_qdrant`` / ``qdrant_search`` put the same two tiers into Qdrant (needs qdrant-client, loaded
only when they are called).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrl_infer.search._index import Index, SearchResult
    from mrl_infer.search._qdrant import qdrant_search, to_qdrant
    from mrl_infer.search._util import semantic_search, similarity

_LAZY = {
    "Index": "mrl_infer.search._index",
    "SearchResult": "mrl_infer.search._index",
    "semantic_search": "mrl_infer.search._util",
    "similarity": "mrl_infer.search._util",
    "to_qdrant": "mrl_infer.search._qdrant",  # needs qdrant-client ([qdrant]), imported on first call
    "qdrant_search": "mrl_infer.search._qdrant",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrl_infer.search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Index", "SearchResult", "qdrant_search", "semantic_search", "similarity", "to_qdrant"]
