"""The model directory contract shared by the export step and the runtime.

A model directory holds ``mrl_infer.json`` (this manifest), ``tokenizer.json``
(plus its special-token files) and one ONNX file per variant. Each graph takes
``input_ids`` and ``attention_mask`` (and ``token_type_ids`` where the model
needs them, and ``prompt_length`` when pooling excludes the prompt), with dynamic
batch and sequence axes, and outputs the pooled, *unnormalized* sentence
embedding ``[batch, embedding_dim]`` named ``sentence_embedding``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mrl_infer.errors import ModelFormatError

MANIFEST_NAME = "mrl_infer.json"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8", "fp16")
TARGETS = ("cpu", "cuda")


@dataclass
class TokenizerInfo:
    """What the runtime needs to tokenize exactly as the source model did."""

    files: list[str] = field(default_factory=lambda: ["tokenizer.json"])
    padding_side: str = "right"
    pad_token_id: int = 0
    pad_token: str | None = None
    do_lower_case: bool = False


@dataclass
class Variant:
    """One ONNX file of the model: its precision, intended device and measured parity."""

    file: str
    precision: str
    target: str
    sha256: str | None = None
    parity: dict[str, Any] = field(default_factory=dict)
    notes: str | None = None
    external_data: list[str] = field(default_factory=list)
    # sha256 of each external-data file (name -> hex): the graph's ``sha256`` covers only the .onnx
    # file, so without these the weights of an external-data model are not verified.
    external_data_sha256: dict[str, str] = field(default_factory=dict)
    # "extended": the file already holds onnxruntime's extended CPU graph optimizations (written by
    # ``mrl-export --preoptimize``), so a CPU session skips the optimizers (faster session creation,
    # the same numbers); None: the runtime optimizes the graph when it loads it.
    graph_optimization: str | None = None
    # int8 only: "full" = s8 weights use the whole [-127, 127] range, so on x86 CPUs without VNNI the
    # runtime has onnxruntime widen them to u8 at load (its u8s8 kernel there saturates int16 pair sums);
    # "reduced" = 7-bit weights (``reduce_range``), safe with every kernel; None: not recorded (treated
    # as "reduced", what exports before this field wrote for their default avx2 target).
    weight_range: str | None = None

    @property
    def int8_weight_range(self) -> str | None:
        """``weight_range`` of an int8 variant with the unrecorded case read as "reduced"; None for
        float variants."""
        return (self.weight_range or "reduced") if self.precision == "int8" else None


#: Values of ``Variant.graph_optimization`` besides None.
GRAPH_OPTIMIZATIONS = ("extended",)
#: Values of ``Variant.weight_range`` besides None.
WEIGHT_RANGES = ("full", "reduced")


@dataclass
class Manifest:
    """Parsed ``mrl_infer.json``; unknown keys are kept in ``extra`` so newer minor fields survive."""

    embedding_dim: int
    max_seq_length: int
    variants: dict[str, Variant]
    inputs: list[str] = field(default_factory=lambda: ["input_ids", "attention_mask"])
    output: str = "sentence_embedding"
    matryoshka_dims: list[int] | None = None
    normalize: bool = True
    similarity_fn_name: str = "cosine"
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    pooling: dict[str, Any] = field(default_factory=dict)
    tokenizer: TokenizerInfo = field(default_factory=TokenizerInfo)
    source: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        for v in data["variants"].values():
            if not v["external_data_sha256"]:
                del v["external_data_sha256"]  # optional: absent rather than empty
            if v["graph_optimization"] is None:
                del v["graph_optimization"]
            if v["weight_range"] is None:
                del v["weight_range"]
        return data

    @property
    def dims(self) -> list[int]:
        """Supported output dims, largest first (the full dim alone for non-Matryoshka models)."""
        return list(self.matryoshka_dims) if self.matryoshka_dims else [self.embedding_dim]


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    if key not in data:
        raise ModelFormatError(f"{path}: missing required field '{key}'")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ModelFormatError(f"{path}: field '{key}' has the wrong type ({type(value).__name__})")
    return value


def parse_manifest(data: dict[str, Any], path: Path) -> Manifest:
    """Validate a manifest dict; every error names the file and the field."""
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: the manifest must be a JSON object")
    version = _require(data, "format_version", int, path)
    if version > FORMAT_VERSION:
        raise ModelFormatError(
            f"{path}: format_version {version} is newer than this mrl_infer supports "
            f"({FORMAT_VERSION}); upgrade mrl-infer"
        )
    embedding_dim = _require(data, "embedding_dim", int, path)
    max_seq_length = _require(data, "max_seq_length", int, path)
    raw_variants = _require(data, "variants", dict, path)
    if not raw_variants:
        raise ModelFormatError(f"{path}: 'variants' is empty; the directory has no ONNX graph")
    variants: dict[str, Variant] = {}
    for name, v in raw_variants.items():
        if not isinstance(v, dict) or "file" not in v:
            raise ModelFormatError(f"{path}: variants.{name} needs a 'file'")
        precision = v.get("precision", name)
        if precision not in PRECISIONS:
            raise ModelFormatError(
                f"{path}: variants.{name}.precision is '{precision}', expected one of {PRECISIONS}"
            )
        target = v.get("target", "cuda" if precision == "fp16" else "cpu")
        if target not in TARGETS:
            raise ModelFormatError(f"{path}: variants.{name}.target is '{target}', expected one of {TARGETS}")
        external = list(v.get("external_data") or [])
        digests = v.get("external_data_sha256") or {}
        if not isinstance(digests, dict) or not all(
            isinstance(k, str) and isinstance(h, str) for k, h in digests.items()
        ):
            raise ModelFormatError(
                f"{path}: variants.{name}.external_data_sha256 must map file names to sha256"
            )
        unlisted = sorted(set(digests) - set(external))
        if unlisted:
            raise ModelFormatError(
                f"{path}: variants.{name}.external_data_sha256 names {unlisted}, not in its external_data"
            )
        graph_opt = v.get("graph_optimization")
        if graph_opt is not None and graph_opt not in GRAPH_OPTIMIZATIONS:
            raise ModelFormatError(
                f"{path}: variants.{name}.graph_optimization is {graph_opt!r}, expected one of "
                f"{GRAPH_OPTIMIZATIONS} or absent"
            )
        weight_range = v.get("weight_range")
        if weight_range is not None and weight_range not in WEIGHT_RANGES:
            raise ModelFormatError(
                f"{path}: variants.{name}.weight_range is {weight_range!r}, expected one of "
                f"{WEIGHT_RANGES} or absent"
            )
        variants[name] = Variant(
            file=v["file"],
            precision=precision,
            target=target,
            sha256=v.get("sha256"),
            parity=dict(v.get("parity") or {}),
            notes=v.get("notes"),
            external_data=external,
            external_data_sha256=dict(digests),
            graph_optimization=graph_opt,
            weight_range=weight_range,
        )
    dims = data.get("matryoshka_dims")
    if dims is not None:
        if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ModelFormatError(f"{path}: matryoshka_dims must be a list of positive integers")
        if any(d > embedding_dim for d in dims):
            raise ModelFormatError(f"{path}: matryoshka_dims {dims} exceed embedding_dim {embedding_dim}")
        dims = sorted(set(dims), reverse=True)
    tok = data.get("tokenizer") or {}
    known = {f.name for f in Manifest.__dataclass_fields__.values()} - {"extra"}
    return Manifest(
        format_version=version,
        name=data.get("name"),
        embedding_dim=embedding_dim,
        max_seq_length=max_seq_length,
        matryoshka_dims=dims,
        normalize=bool(data.get("normalize", True)),
        similarity_fn_name=data.get("similarity_fn_name", "cosine"),
        prompts=dict(data.get("prompts") or {}),
        default_prompt_name=data.get("default_prompt_name"),
        pooling=dict(data.get("pooling") or {}),
        tokenizer=TokenizerInfo(
            files=list(tok.get("files", ["tokenizer.json"])),
            padding_side=tok.get("padding_side", "right"),
            pad_token_id=int(tok.get("pad_token_id", 0)),
            pad_token=tok.get("pad_token"),
            do_lower_case=bool(tok.get("do_lower_case", False)),
        ),
        inputs=list(data.get("inputs", ["input_ids", "attention_mask"])),
        output=data.get("output", "sentence_embedding"),
        variants=variants,
        source=dict(data.get("source") or {}),
        extra={k: v for k, v in data.items() if k not in known},
    )


def load_manifest(model_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate ``mrl_infer.json`` from a model directory."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ModelFormatError(
            f"{model_dir} has no {MANIFEST_NAME}: it is not an mrl-infer model directory. "
            f"Export one with: mrl-export <model id or path> <out dir>  (pip install 'mrl-infer[export]')"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path}: not valid JSON ({exc})") from exc
    return parse_manifest(data, path)


def write_manifest(manifest: Manifest, model_dir: str | os.PathLike[str]) -> Path:
    """Write ``mrl_infer.json`` (validated by a round trip first)."""
    path = Path(model_dir) / MANIFEST_NAME
    data = manifest.to_dict()
    parse_manifest(json.loads(json.dumps(data)), path)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
