"""Where a model directory comes from: the embedded default, a local path, or the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from mrl_infer._manifest import MANIFEST_NAME
from mrl_infer.errors import ModelFormatError

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"


def default_model_dir() -> Path:
    """The model shipped inside the package, so the main job runs with no download."""
    if not (DEFAULT_MODEL_DIR / MANIFEST_NAME).is_file():
        raise ModelFormatError(
            f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; "
            "reinstall mrl-infer or pass a model directory or Hub id"
        )
    return DEFAULT_MODEL_DIR


def is_local(model: str | os.PathLike[str]) -> bool:
    return Path(model).expanduser().exists()


class HubModel:
    """A model on the Hub: fetches only the files it is asked for, honouring HF_HUB_OFFLINE and the cache."""

    def __init__(self, repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir

    def fetch(self, filename: str) -> Path:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return Path(
                hf_hub_download(self.repo_id, filename, revision=self.revision, cache_dir=self.cache_dir)
            )
        # LocalEntryNotFoundError subclasses EntryNotFoundError: it must come first.
        except LocalEntryNotFoundError as exc:
            raise ModelFormatError(
                f"'{self.repo_id}' ({filename}) is not a local directory and is not in the Hugging Face "
                f"cache, and the Hub cannot be reached (HF_HUB_OFFLINE or no network): {exc}"
            ) from exc
        except EntryNotFoundError as exc:
            if filename == MANIFEST_NAME:
                raise ModelFormatError(
                    f"Hub repo '{self.repo_id}' has no {MANIFEST_NAME}: it is not an mrl-infer model "
                    f"directory. Export it first: mrl-export {self.repo_id} <out dir>  "
                    "(pip install 'mrl-infer[export]'), then load the directory"
                ) from exc
            raise ModelFormatError(f"Hub repo '{self.repo_id}' lacks {filename}") from exc
        except RepositoryNotFoundError as exc:
            raise ModelFormatError(
                f"'{self.repo_id}' is neither a local directory nor a Hub repo that can be found"
            ) from exc
        except RevisionNotFoundError as exc:
            raise ModelFormatError(f"Hub repo '{self.repo_id}' has no revision '{self.revision}'") from exc

    def snapshot(self, files: list[str]) -> Path:
        """Fetch ``files`` (manifest first) and return the local snapshot directory holding them."""
        manifest_path = self.fetch(MANIFEST_NAME)
        for name in files:
            self.fetch(name)
        return manifest_path.parent
