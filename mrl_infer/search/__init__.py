"""Matryoshka funnel search: ``Index`` (shortlist on a small prefix, rerank with the full vectors).

Used by ``mrl-embed index`` / ``mrl-embed search``; needs only numpy and onnxruntime. The public
names load on first use (PEP 562), so registering the CLI's options costs no numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrl_infer.search._index import Index, SearchResult
    from mrl_infer.search._util import semantic_search, similarity

_LAZY = {
    "Index": "mrl_infer.search._index",
    "SearchResult": "mrl_infer.search._index",
    "semantic_search": "mrl_infer.search._util",
    "similarity": "mrl_infer.search._util",
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


__all__ = ["Index", "SearchResult", "semantic_search", "similarity"]
