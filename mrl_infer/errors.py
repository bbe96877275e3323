"""Exceptions raised by mrl_infer; each message names the file, field, index or dim at fault."""

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
