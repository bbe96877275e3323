"""Exceptions raised by mrl_infer; each message names the file, field, index or dim at fault.

MrlInferError
├── ModelFormatError (ValueError)
│   └── IndexFormatError
├── DeviceError (RuntimeError)
├── DimError (ValueError)
├── InputError (ValueError)
├── HubConnectionError (ConnectionError)
├── NonFiniteEmbeddingError (ValueError)
├── EmbedderClosedError (RuntimeError)
└── OverloadedError (RuntimeError)
"""

from __future__ import annotations


class MrlInferError(Exception):
    """Base class of every mrl_infer error."""


class ModelFormatError(MrlInferError, ValueError):
    """A model directory, manifest, ONNX or tokenizer file is missing or invalid."""


class DeviceError(MrlInferError, RuntimeError):
    """The requested device or execution provider is not available."""


class DimError(MrlInferError, ValueError):
    """The requested output dim is not one the model supports."""


class InputError(MrlInferError, ValueError):
    """An input file or row is malformed; the message names the file and line."""


class HubConnectionError(MrlInferError, ConnectionError):
    """A Hub id was given but the Hub cannot be reached; says how to run offline."""


class NonFiniteEmbeddingError(MrlInferError, ValueError):
    """The model produced NaN or inf for some inputs (a damaged or numerically broken graph).

    ``indices`` are the positions of the offending inputs in the call that raised (for
    ``encode_iter``: positions in the whole iterable).
    """

    def __init__(self, message: str, indices: list[int]) -> None:
        super().__init__(message)
        self.indices = indices

    def __reduce__(self) -> tuple[type, tuple[str, list[int]]]:
        # Crosses process boundaries (worker pools): keep ``indices`` when pickled.
        return (type(self), (str(self), self.indices))


class EmbedderClosedError(MrlInferError, RuntimeError):
    """The Embedder was closed (``close()`` or the end of a ``with`` block) and cannot embed any more."""


class IndexFormatError(ModelFormatError):
    """A search index directory is incomplete, from a newer format version, or damaged; names the file."""


class OverloadedError(MrlInferError, RuntimeError):
    """A bounded queue (the server's batcher) is full; ``retry_after`` is a suggested wait in seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[type, tuple[str, float]]:
        return (type(self), (str(self), self.retry_after))
