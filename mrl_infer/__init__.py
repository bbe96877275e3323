"""mrl_infer: fast, torch-free inference for Matryoshka embedding models.

>>> from mrl_infer import Embedder
>>> emb = Embedder(dim=128)            # the embedded default model, no download
>>> vectors = emb.encode(["a text", "another text"])   # [2, 128], L2-normalized
>>> index = Index.build(Embedder(), texts)          # funnel search: small-prefix shortlist, full rerank
>>> index.search("a query", k=10).ids

Importing the package is cheap: the public names below are imported on first use (PEP 562
``__getattr__``), so ``import mrl_infer`` (and ``mrl-embed --help``) loads neither numpy nor
onnxruntime until an Embedder, an Index or a precision helper is actually needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mrl_infer.errors import (
    DeviceError,
    DimError,
    EmbedderClosedError,
    HubConnectionError,
    IndexFormatError,
    InputError,
    ModelFormatError,
    MrlInferError,
    NonFiniteEmbeddingError,
)

if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from mrl_infer._embedder import Embedder
    from mrl_infer._manifest import Manifest, load_manifest
    from mrl_infer._precision import compute_ranges, quantize_embeddings
    from mrl_infer.search import Index, SearchResult, semantic_search, similarity

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first attribute access)
_LAZY: dict[str, str] = {
    "Embedder": "mrl_infer._embedder",
    "Manifest": "mrl_infer._manifest",
    "load_manifest": "mrl_infer._manifest",
    "compute_ranges": "mrl_infer._precision",
    "quantize_embeddings": "mrl_infer._precision",
    "Index": "mrl_infer.search",
    "SearchResult": "mrl_infer.search",
    "semantic_search": "mrl_infer.search",
    "similarity": "mrl_infer.search",
}


# subpackages that ``import mrl_infer`` used to import eagerly: ``mrl_infer.search`` keeps working
_SUBPACKAGES = ("search",)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"mrl_infer.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mrl_infer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DeviceError",
    "DimError",
    "Embedder",
    "EmbedderClosedError",
    "HubConnectionError",
    "Index",
    "IndexFormatError",
    "InputError",
    "Manifest",
    "ModelFormatError",
    "MrlInferError",
    "NonFiniteEmbeddingError",
    "SearchResult",
    "__version__",
    "compute_ranges",
    "load_manifest",
    "quantize_embeddings",
    "semantic_search",
    "similarity",
]
