"""The export step's exception."""

from __future__ import annotations

from mrl_infer.errors import MrlInferError


class ExportError(MrlInferError, RuntimeError):
    """The export failed: bad source, unsupported model, or a graph that does not match PyTorch."""
