"""mrl_infer: fast, torch-free inference for Matryoshka embedding models.

>>> from mrl_infer import Embedder
>>> emb = Embedder(dim=128)            # the embedded default model, no download
>>> vectors = emb.encode(["a text", "another text"])   # [2, 128], L2-normalized
>>> index = Index.build(Embedder(), texts)          # funnel search: small-prefix shortlist, full rerank
>>> index.search("a query", k=10).ids
"""

from mrl_infer._embedder import Embedder
from mrl_infer._manifest import Manifest, load_manifest
from mrl_infer._precision import compute_ranges, quantize_embeddings
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
from mrl_infer.search import Index, SearchResult, semantic_search, similarity

__version__ = "0.1.0"

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
