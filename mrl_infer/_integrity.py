"""sha256 check of a model's ONNX file (and external-data files) against its manifest, kept off the
cold-start path.

A file is hashed in full once; its stat signature (real path, size, mtime_ns, ctime_ns, inode,
device) and hash are then remembered in a small JSON cache in the user cache dir, and a later load
whose stat signature matches skips the hash. A changed file (rewritten, touched, replaced) no longer
matches and is hashed again. An unwritable cache only means hashing on every load.

An external-data model's weights live outside the .onnx file: each of its ``external_data`` files is
checked the same way against ``external_data_sha256`` in the manifest (a file without one there is
not verified; the debug log says so).

Environment: ``MRL_INFER_VERIFY=0`` turns the check off; ``MRL_INFER_CACHE_DIR`` moves the cache
(default ``$XDG_CACHE_HOME/mrl_infer`` or ``~/.cache/mrl_infer``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from mrl_infer._manifest import Variant
from mrl_infer.errors import ModelFormatError

logger = logging.getLogger("mrl_infer")

CACHE_FILE = "verified.json"
_BLOCK = 1 << 20
# Entries kept in the cache; the oldest are dropped beyond this (a few models per user is typical).
_MAX_ENTRIES = 256
_FALSE = ("0", "false", "no", "off")


def verify_enabled(verify: bool | None) -> bool:
    """An explicit ``verify=`` wins; otherwise ``MRL_INFER_VERIFY`` (on unless 0/false/no/off)."""
    if verify is not None:
        return bool(verify)
    return os.environ.get("MRL_INFER_VERIFY", "1").strip().lower() not in _FALSE


def cache_dir() -> Path:
    """Where the verified-files cache lives (``MRL_INFER_CACHE_DIR`` overrides)."""
    override = os.environ.get("MRL_INFER_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mrl_infer"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    import hashlib  # here, not at the top: a cached load never hashes (OpenSSL's import is ~4 ms)

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def _signature(st: os.stat_result) -> dict[str, int]:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
        "device": st.st_dev,
    }


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(key: str, entry: dict[str, Any]) -> None:
    """Add one entry to the cache, written atomically (temp file + rename); failures are only logged."""
    import tempfile  # only when a file was hashed: off the usual (cached) load's import path

    directory = cache_dir()
    target = directory / CACHE_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        data = _read_cache(target)
        data.pop(key, None)
        data[key] = entry
        while len(data) > _MAX_ENTRIES:
            data.pop(next(iter(data)))
        fd, tmp = tempfile.mkstemp(prefix=".verified-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        logger.debug("mrl_infer: cannot write the verified-files cache %s (%s)", target, exc)


def verify_file(path: Path, expected: str | None) -> None:
    """Raise ModelFormatError unless ``path`` hashes to ``expected`` (skipped when the cache vouches)."""
    if not expected:
        logger.debug("mrl_infer: %s has no sha256 in the manifest; not verified", path)
        return
    expected = expected.lower()
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise ModelFormatError(f"{path}: ONNX file is missing or unreadable ({exc})") from exc
    signature = _signature(st)
    cached = _read_cache(cache_dir() / CACHE_FILE).get(real)
    if (
        isinstance(cached, dict)
        and cached.get("sha256") == expected
        and all(cached.get(k) == v for k, v in signature.items())
    ):
        logger.debug("mrl_infer: %s verified before (same stat signature); hash skipped", path)
        return
    actual = sha256_file(Path(real))
    if actual != expected:
        raise ModelFormatError(
            f"{path}: sha256 mismatch, the file is damaged or was changed after export "
            f"(expected {expected}, actual {actual}). Re-download or re-export the model; if you "
            "edited the file on purpose, pass verify=False to Embedder or set MRL_INFER_VERIFY=0"
        )
    # Stat again: a file rewritten while it was being hashed must not be remembered as verified.
    try:
        if _signature(os.stat(real)) != signature:
            return
    except OSError:
        return
    _remember(real, {**signature, "sha256": actual})


def verify_variant(model_dir: Path, variant: Variant) -> None:
    """Verify a variant's ONNX file and each external-data file that has a sha256 in the manifest."""
    verify_file(model_dir / variant.file, variant.sha256)
    for name in variant.external_data:
        digest = variant.external_data_sha256.get(name)
        if digest:
            verify_file(model_dir / name, digest)
        else:
            logger.debug("mrl_infer: %s has no sha256 in the manifest; not verified", model_dir / name)
