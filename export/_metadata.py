"""Discovery of model facts for the manifest: Matryoshka dims, prompts, tokenizer facts, source hashes."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

#: Packages whose versions are recorded in ``source.versions``.
VERSIONED_PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "tokenizers",
)

_DIMS_RE = re.compile(r"""["']?matryoshka_dims["']?\s*[:=]\s*[\[\(]([\d,\s]+)[\]\)]""")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the export set (None where a package is absent)."""
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def source_file_hashes(model_dir: Path) -> dict[str, str]:
    """sha256 of every regular file of the source model directory (relative paths; hidden files skipped)."""
    out: dict[str, str] = {}
    for p in sorted(model_dir.rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = sha256_file(p)
    return out


#: Printed by the export and recorded in the manifest when a model declares no Matryoshka dims.
NO_DIMS_NOTE = "no Matryoshka dims declared; pass --dims"


def _clean_dims(values: Any, embedding_dim: int) -> list[int] | None:
    """Positive ints <= embedding_dim, deduplicated, largest first; None when nothing usable remains."""
    if not isinstance(values, (list, tuple)):
        return None
    try:
        ints = {int(v) for v in values if not isinstance(v, bool)}
    except (TypeError, ValueError):
        return None
    dims = sorted((d for d in ints if 0 < d <= embedding_dim), reverse=True)
    return dims or None


def _dims_from_text(text: str, embedding_dim: int) -> list[int] | None:
    for match in _DIMS_RE.finditer(text):
        values = [x for x in match.group(1).split(",") if x.strip()]
        dims = _clean_dims(values, embedding_dim)
        if dims:
            return dims
    return None


def discover_matryoshka_dims(
    model_dir: Path | None,
    st_config: dict[str, Any],
    embedding_dim: int,
    hf_config: dict[str, Any] | None = None,
) -> tuple[list[int] | None, str | None]:
    """``(dims, where)``: the Matryoshka dims the model declares and where from, else ``(None, None)``.

    Looked up, in order: ``matryoshka_dimensions`` in ``config.json`` (the convention vLLM reads),
    ``matryoshka_dims`` in ``config_sentence_transformers.json``, the model card ``README.md`` (Sentence
    Transformers renders a ``MatryoshkaLoss``'s parameters there as a JSON block with ``"matryoshka_dims"``),
    and any ``training_args.json`` / ``trainer_state.json`` in the directory.
    """
    if hf_config is None and model_dir is not None:
        hf_config = read_json(model_dir / "config.json")
    dims = _clean_dims((hf_config or {}).get("matryoshka_dimensions"), embedding_dim)
    if dims:
        return dims, "config.json (matryoshka_dimensions)"
    dims = _clean_dims(st_config.get("matryoshka_dims"), embedding_dim)
    if dims:
        return dims, "config_sentence_transformers.json (matryoshka_dims)"
    if model_dir is None:
        return None, None
    for name in ("README.md", "training_args.json", "trainer_state.json"):
        path = model_dir / name
        if path.is_file():
            dims = _dims_from_text(path.read_text(encoding="utf-8", errors="replace"), embedding_dim)
            if dims:
                card = name == "README.md"
                return dims, "model card README.md (MatryoshkaLoss matryoshka_dims)" if card else name
    return None, None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, or ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}
