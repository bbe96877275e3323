"""Where a model directory comes from: the embedded default, a local path, or the Hugging Face Hub.

A model argument that looks like a path (absolute, starting with ``.`` or ``~``, with more than one
``/`` or a backslash, or naming something that exists) is a path, never a Hub id: a mistyped
directory says "no such model directory" instead of sending a Hub request. huggingface_hub is
imported only when a Hub id is actually used.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from mrl_infer._manifest import MANIFEST_NAME
from mrl_infer.errors import HubConnectionError, ModelFormatError

logger = logging.getLogger("mrl_infer")

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"
# Seconds the reachability probe of the Hub may take (DNS, connect, first byte) before the Hub counts
# as unreachable; ``MRL_INFER_HUB_TIMEOUT`` overrides. huggingface_hub itself retries a failed
# connection 5 times with backoff (about 23 s) before giving up, hence the probe.
HUB_PROBE_TIMEOUT = 1.5
_OFFLINE_HINT = (
    "To run offline, set HF_HUB_OFFLINE=1 (the model must be in the Hugging Face cache) "
    "or pass a local model directory"
)


def default_model_dir() -> Path:
    """The model shipped inside the package, so the main job runs with no download."""
    if not (DEFAULT_MODEL_DIR / MANIFEST_NAME).is_file():
        raise ModelFormatError(
            f"the embedded default model is missing from {DEFAULT_MODEL_DIR}; "
            "reinstall mrl-infer or pass a model directory or Hub id"
        )
    return DEFAULT_MODEL_DIR


def _check_model_arg(model: object) -> str | os.PathLike[str]:
    if isinstance(model, os.PathLike):
        return model
    if not isinstance(model, str):
        raise TypeError(
            f"model must be a str (a directory or a Hub id), a path or None, got {type(model).__name__}"
        )
    if not model.strip():
        raise ModelFormatError(
            "model is an empty string; pass a model directory (e.g. '.' for the current one), "
            "a Hub id, or None for the embedded default model"
        )
    return model


def looks_like_path(model: str | os.PathLike[str]) -> bool:
    """True when ``model`` must be a local path: never a Hub id (see the module docstring)."""
    model = _check_model_arg(model)
    if isinstance(model, os.PathLike):
        return True
    return (
        os.path.isabs(model)
        or model.startswith((".", "~"))
        or model.count("/") > 1
        or "\\" in model
        or Path(model).exists()
    )


def _expand(model: str | os.PathLike[str]) -> Path:
    try:
        return Path(model).expanduser()
    except RuntimeError:  # '~nobody/x': no such user; keep it as written
        return Path(model)


def is_local(model: str | os.PathLike[str]) -> bool:
    """True for a path (existing or not); False for what should be looked up on the Hub."""
    return looks_like_path(model)


def local_model_dir(model: str | os.PathLike[str]) -> Path:
    """The directory a path-like ``model`` names, ``~`` expanded; ModelFormatError if it is missing."""
    path = _expand(model)
    if not path.exists():
        full = os.path.abspath(path)
        shown = f"{full} (from {str(model)!r})" if full != str(model) else full
        raise ModelFormatError(
            f"no such model directory: {shown}; pass an existing directory, a Hub id such as "
            "'org/name', or None for the embedded default model"
        )
    if not path.is_dir():
        raise ModelFormatError(f"{path} is a file; pass the model directory that holds it")
    return path


def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
    """huggingface_hub.hf_hub_download, imported on first use so that ``import mrl_infer`` stays light."""
    from huggingface_hub import hf_hub_download as download

    return str(download(repo_id, filename, **kwargs))


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub sees it (it reads the variable once, at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "no connection", for the HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import requests

        errors += [requests.ConnectionError, requests.Timeout]
    except ImportError:  # huggingface_hub >= 1.0 uses httpx
        pass
    try:
        import httpx

        errors += [httpx.TransportError]
    except ImportError:
        pass
    return tuple(errors)


def probe_hub(timeout: float | None = None) -> str | None:
    """None if the Hub endpoint answers within ``timeout`` seconds, else why it does not.

    One HEAD request with the standard library, without retries (any HTTP status counts as
    reachable), run in a daemon thread so that a hanging DNS lookup is bounded too. Honours
    HF_ENDPOINT (as huggingface_hub read it) and the proxy variables.
    """
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if timeout is None:
        try:
            timeout = float(os.environ.get("MRL_INFER_HUB_TIMEOUT") or HUB_PROBE_TIMEOUT)
        except ValueError:
            timeout = HUB_PROBE_TIMEOUT
    url = constants.ENDPOINT.rstrip("/") + "/"
    result: list[str | None] = []

    def head() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
            result.append(None)
        except urllib.error.HTTPError:  # the server answered
            result.append(None)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, bad URL
            result.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=head, name="mrl_infer-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return f"no answer from {url} within {timeout:g} s"
    return result[0]


class HubModel:
    """A model on the Hub: fetches only the files it is asked for, honouring HF_HUB_OFFLINE and the cache.

    When the Hub is not reachable (checked once, quickly) files come from the local Hugging Face
    cache; a file that is not cached raises HubConnectionError at once instead of after retries.
    """

    def __init__(self, repo_id: str, revision: str | None, cache_dir: str | os.PathLike[str] | None) -> None:
        if looks_like_path(repo_id):
            local_model_dir(repo_id)  # raises "no such model directory"
            raise ModelFormatError(f"{repo_id!r} is a local directory, not a Hub id")
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(repo_id)
        except HFValidationError as exc:
            raise ModelFormatError(
                f"{repo_id!r} is neither a local directory nor a valid Hub id ('name' or 'org/name'; "
                f"letters, digits, '-', '_', '.'): {exc}"
            ) from exc
        self.repo_id = repo_id
        self.revision = revision
        self.cache_dir = cache_dir
        self._fetched: dict[str, Path] = {}
        # None: not known yet; str: why the Hub is unreachable (files then come from the cache).
        self._unreachable: str | None = None
        self._probed = False

    def _local_only(self) -> bool:
        if _hub_offline():
            return True
        if not self._probed:
            self._unreachable = probe_hub()
            self._probed = True
        return self._unreachable is not None

    def fetch(self, filename: str) -> Path:
        """Local path of one file of the repo (downloaded, or from the cache when offline)."""
        if filename in self._fetched:
            return self._fetched[filename]
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        local_only = self._local_only()
        try:
            path = Path(
                hf_hub_download(
                    self.repo_id,
                    filename,
                    revision=self.revision,
                    cache_dir=self.cache_dir,
                    local_files_only=local_only,
                )
            )
        # LocalEntryNotFoundError subclasses EntryNotFoundError: it must come first.
        except LocalEntryNotFoundError as exc:
            if self._unreachable is not None:
                raise HubConnectionError(
                    f"cannot reach the Hugging Face Hub to fetch '{self.repo_id}' ({filename}), and it is "
                    f"not in the local cache ({self._unreachable}). {_OFFLINE_HINT}"
                ) from exc
            cause = exc.__cause__
            if not local_only and isinstance(cause, _connection_errors()):
                raise HubConnectionError(
                    f"lost the connection to the Hugging Face Hub while fetching '{self.repo_id}' "
                    f"({filename}): {cause}. {_OFFLINE_HINT}"
                ) from exc
            if local_only:
                raise ModelFormatError(
                    f"'{self.repo_id}' ({filename}) is not a local directory and is not in the Hugging "
                    "Face cache, and HF_HUB_OFFLINE is set; unset it to download the file, or pass a "
                    "local model directory"
                ) from exc
            raise ModelFormatError(
                f"'{self.repo_id}' ({filename}) could not be fetched from the Hugging Face Hub and is "
                f"not in the local cache: {cause or exc}"
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
                f"'{self.repo_id}' is neither a local directory nor a Hub repo that can be found "
                "(private or gated repos need a token: huggingface-cli login)"
            ) from exc
        except RevisionNotFoundError as exc:
            raise ModelFormatError(f"Hub repo '{self.repo_id}' has no revision '{self.revision}'") from exc
        except HFValidationError as exc:
            raise ModelFormatError(f"invalid Hub request for '{self.repo_id}' ({filename}): {exc}") from exc
        except HfHubHTTPError as exc:
            raise ModelFormatError(f"the Hub refused '{self.repo_id}' ({filename}): {exc}") from exc
        if self._unreachable is not None and not self._fetched:
            logger.warning(
                "mrl_infer: the Hugging Face Hub is unreachable (%s); using the cached files of %s",
                self._unreachable,
                self.repo_id,
            )
        self._fetched[filename] = path
        return path

    def snapshot(self, files: list[str]) -> Path:
        """Fetch ``files`` (manifest first) and return the local snapshot directory holding them."""
        manifest_path = self.fetch(MANIFEST_NAME)
        for name in files:
            self.fetch(name)
        return manifest_path.parent
