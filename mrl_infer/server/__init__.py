"""``mrl-embed serve``: an OpenAI-compatible embeddings server (needs ``pip install 'mrl-infer[server]'``).

>>> from mrl_infer import Embedder
>>> from mrl_infer.server import ServerConfig, create_app
>>> app = create_app(Embedder(), ServerConfig())       # an ASGI app; run it with uvicorn

Importing this package is cheap: starlette and uvicorn are imported only when ``create_app`` is
first used, so ``mrl-embed --help`` stays light; a missing extra raises ImportError naming it.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from mrl_infer.server._config import BatchConfig, ServerConfig

EXTRA_HINT = "pip install 'mrl-infer[server]'"


def require_extra() -> None:
    """Raise ImportError naming the ``[server]`` extra if one of its packages is missing."""
    missing = [
        m
        for m in ("starlette", "uvicorn", "prometheus_client", "orjson")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ImportError(f"mrl_infer.server needs {', '.join(missing)}: {EXTRA_HINT}")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require_extra()
        from mrl_infer.server._app import create_app

        return create_app
    raise AttributeError(f"module 'mrl_infer.server' has no attribute {name!r}")


__all__ = ["BatchConfig", "ServerConfig", "create_app"]
