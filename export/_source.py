"""Source resolution and loading: local dir or Hub id -> checked SentenceTransformer model."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mrl_export._errors import ExportError
from mrl_export._wrapper import TRACEABLE_POST_MODULES

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

#: Architecture suffixes of HF heads that are not sentence encoders.
_HEAD_SUFFIXES = (
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
    "ForMultipleChoice",
    "ForConditionalGeneration",
    "ForSeq2SeqLM",
    "ForSpeechSeq2Seq",
)


def resolve_source(source: str, revision: str | None) -> tuple[Path, dict[str, Any]]:
    """Local directory of ``source`` (a path, or a Hub id from the local cache / Hub) and its provenance."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ExportError(
                f"source {source!r} is a file; expected a model directory or a Hugging Face model id"
            )
        return path.resolve(), {"model": source, "path": str(path.resolve()), "revision": revision}
    if not _HUB_ID.match(source) or source.startswith((".", "/", "~")):
        raise ExportError(f"source {source!r} does not exist and is not a Hugging Face model id")
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(repo_id=source, revision=revision))
    except Exception as exc:  # network, auth, missing repo or missing cache entry offline
        raise ExportError(
            f"source {source!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"(revision {revision or 'main'}): {type(exc).__name__}: {exc}"
        ) from exc
    commit = local.name if re.fullmatch(r"[0-9a-f]{40}", local.name) else revision
    return local, {"model": source, "path": None, "revision": commit}


def check_source(model_dir: Path, *, trust_remote_code: bool, pooling: str | None) -> dict[str, Any]:
    """Refuse what cannot be exported before loading anything; returns ``config.json`` contents."""
    config_path = model_dir / "config.json"
    modules_path = model_dir / "modules.json"
    if not config_path.is_file() and not modules_path.is_file():
        raise ExportError(
            f"{model_dir} is not a model directory: it has neither modules.json (Sentence Transformers) "
            "nor config.json (Hugging Face)"
        )
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("auto_map") and not trust_remote_code:
        raise ExportError(
            f"{model_dir} uses custom modeling code (config.json auto_map: {sorted(config['auto_map'])}); "
            "review the code and pass --trust-remote-code (trust_remote_code=True) to run it"
        )
    if modules_path.is_file():
        modules = json.loads(modules_path.read_text(encoding="utf-8"))
        custom = [
            m["type"] for m in modules if not str(m.get("type", "")).startswith("sentence_transformers.")
        ]
        if custom and not trust_remote_code:
            raise ExportError(
                f"{model_dir} uses custom Sentence Transformers modules {custom}; review them and pass "
                "--trust-remote-code to run them"
            )
        return config
    # A plain Hugging Face directory: only an encoder/decoder *base* model, and only with explicit pooling.
    archs = config.get("architectures") or []
    head = [a for a in archs if a.endswith(_HEAD_SUFFIXES) or "LMHead" in a]
    if config.get("is_encoder_decoder") or head:
        raise ExportError(
            f"{model_dir} is a {', '.join(archs) or config.get('model_type', 'seq2seq')} model "
            f"({'encoder-decoder' if config.get('is_encoder_decoder') else 'task head'}), not a sentence "
            "embedding model. Expected a Sentence Transformers model (modules.json: Transformer + Pooling), "
            "or a plain encoder base model with an explicit --pooling mode"
        )
    if pooling is None:
        raise ExportError(
            f"{model_dir} has no modules.json, so it is not a Sentence Transformers model and its pooling is "
            "unknown. Pass --pooling mean|cls|max|lasttoken|... to export the bare encoder with that pooling"
        )
    return config


def load_model(
    model_dir: Path,
    *,
    trust_remote_code: bool,
    pooling: str | None,
    max_seq_length: int | None,
    eager: bool,
) -> Any:
    """Load the SentenceTransformer on CPU (``eager`` attention for tracing, when the model allows it)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    model_kwargs: dict[str, Any] = {"attn_implementation": "eager"} if eager else {}
    try:
        if (model_dir / "modules.json").is_file():
            model = SentenceTransformer(
                str(model_dir), device="cpu", trust_remote_code=trust_remote_code, model_kwargs=model_kwargs
            )
        else:
            tr = Transformer(
                str(model_dir),
                model_kwargs={**model_kwargs, "trust_remote_code": trust_remote_code},
                processor_kwargs={"trust_remote_code": trust_remote_code},
                config_kwargs={"trust_remote_code": trust_remote_code},
            )
            model = SentenceTransformer(
                modules=[tr, Pooling(tr.get_embedding_dimension(), pooling_mode=pooling)],  # type: ignore[arg-type]
                device="cpu",
            )
    except ExportError:
        raise
    except Exception as exc:
        if eager:
            raise
        raise ExportError(f"could not load {model_dir} as a Sentence Transformers model: {exc}") from exc
    model.eval()
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def split_pipeline(model: Any) -> tuple[Any, Any, list[Any], bool]:
    """(transformer, pooling, post-pooling modules, ends_with_normalize) of an ST pipeline, or ExportError."""
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if not modules or not isinstance(modules[0], Transformer):
        raise ExportError(f"expected the pipeline to start with a Transformer module, got {names}")
    pool_idx = [i for i, m in enumerate(modules) if isinstance(m, Pooling)]
    if not pool_idx:
        raise ExportError(
            f"pipeline {names} has no Pooling module: not a sentence-embedding model (a CrossEncoder or "
            "SparseEncoder?). Expected Transformer -> Pooling [-> Dense ...] [-> Normalize]"
        )
    if pool_idx[0] != 1:
        raise ExportError(f"unsupported pipeline {names}: only Transformer -> Pooling -> ... can be exported")
    if modules[0].transformer_task != "feature-extraction":
        raise ExportError(
            f"the Transformer module has task {modules[0].transformer_task!r}; only 'feature-extraction' "
            "(sentence embedding) models can be exported"
        )
    post = modules[2:]
    normalize = bool(post) and isinstance(post[-1], Normalize)
    if normalize:
        post = post[:-1]
    bad = [type(m).__name__ for m in post if type(m).__name__ not in TRACEABLE_POST_MODULES]
    if bad:
        raise ExportError(
            f"pipeline {names}: modules {bad} after Pooling cannot be put in the graph "
            f"(supported: {', '.join(TRACEABLE_POST_MODULES)}, then an optional final Normalize)"
        )
    return modules[0], modules[1], post, normalize
