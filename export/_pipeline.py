"""The export job, step by step: load, trace, optimize, quantize, verify, write the manifest."""

from __future__ import annotations

import gc
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mrl_export import _metadata, _onnx, _source, _verify
from mrl_export._errors import ExportError

_TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, unit="step", desc="export", leave=True)


def run_export(
    source: str,
    work: Path,
    *,
    revision: str | None,
    variants: Sequence[str],
    files: dict[str, str],
    targets: dict[str, str],
    optimize: str,
    quantize: str,
    dims: list[int] | None,
    max_seq_length: int | None,
    trust_remote_code: bool,
    opset: int | None,
    validate: bool,
    atol: float,
    show_progress: bool,
    pooling: str | None,
    validation_data: str | os.PathLike[str] | None,
    started: float,
    exported_at: str,
    preoptimize: bool = False,
) -> dict[str, Any]:
    """Write a complete model directory into ``work``; returns the manifest dict."""
    import torch

    from mrl_infer._manifest import Manifest, TokenizerInfo, Variant, write_manifest

    n_builds = len([v for v in variants if v != "fp32"])
    bar = _progress(7 + n_builds + (len(variants) if validate else 0), show_progress)
    timings: dict[str, float] = {}

    def step(desc: str) -> None:
        bar.set_description(desc)

    def done(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        bar.update(1)

    try:
        # 1. source
        t0 = time.perf_counter()
        step("resolve source")
        model_dir, provenance = _source.resolve_source(source, revision)
        config = _source.check_source(model_dir, trust_remote_code=trust_remote_code, pooling=pooling)
        done("resolve", t0)

        # 2. reference model (as users load it) + pipeline facts
        t0 = time.perf_counter()
        step("load PyTorch model")
        ref_model = _source.load_model(
            model_dir,
            trust_remote_code=trust_remote_code,
            pooling=pooling,
            max_seq_length=max_seq_length,
            eager=False,
        )
        transformer, pooling_mod, post, normalize = _source.split_pipeline(ref_model)
        tokenizer = transformer.tokenizer
        if tokenizer is None or not getattr(tokenizer, "is_fast", False):
            raise ExportError(
                "the model has no fast (Rust) tokenizer, so no tokenizer.json can be written for the runtime"
            )
        seq_len = _resolve_max_seq_length(ref_model, transformer, max_seq_length)
        ref_model.max_seq_length = seq_len
        padding_side = str(tokenizer.padding_side or "right")
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            raise ExportError(
                "the tokenizer has no pad token; set one (tokenizer.pad_token) and re-save the model"
            )
        input_names = _graph_inputs(transformer, pooling_mod)
        prompts = dict(getattr(ref_model, "prompts", None) or {})
        default_prompt_name = getattr(ref_model, "default_prompt_name", None)
        prompt_lengths = {
            name: int(transformer._get_prompt_length(p) or 0) for name, p in prompts.items() if p
        }
        done("load", t0)

        # 3. tokenizer files
        t0 = time.perf_counter()
        step("save tokenizer")
        tok_files = _save_tokenizer(tokenizer, work)
        done("tokenizer", t0)

        # 4. reference embeddings (built-in texts + STS-B dev sentences)
        t0 = time.perf_counter()
        step("PyTorch reference")
        prompt, prompt_length = _verification_prompt(
            prompts, default_prompt_name, pooling_mod, prompt_lengths
        )
        texts = list(_verify.BUILTIN_TEXTS)
        stsb = None
        stsb_path = _verify.find_stsb_dev(validation_data) if validate else None
        if stsb_path is not None:
            s1, s2, gold = _verify.load_stsb(stsb_path)
            stsb = (len(texts), len(s1), gold)
            texts += s1 + s2
        with torch.no_grad():
            ref = ref_model.encode(
                texts,
                prompt=prompt or None,
                batch_size=32,
                convert_to_numpy=True,
                normalize_embeddings=False,
                show_progress_bar=False,
            )
        ref = np.asarray(ref, dtype=np.float32)
        embedding_dim = int(ref.shape[1])
        full_texts = [(prompt or "") + t for t in texts]
        _check_tokenizer(tokenizer, work / "tokenizer.json", full_texts, seq_len)
        done("reference", t0)

        st_config = _metadata.read_json(model_dir / "config_sentence_transformers.json")
        if dims is not None:
            too_big = [d for d in dims if d > embedding_dim]
            if too_big:
                raise ExportError(f"--dims {too_big} exceed the model's embedding_dim {embedding_dim}")
            matryoshka_dims: list[int] | None = sorted(set(dims), reverse=True)
            dims_source = "--dims"
        else:
            matryoshka_dims, dims_source = _metadata.discover_matryoshka_dims(
                model_dir, st_config, embedding_dim, config
            )
            if matryoshka_dims is None:
                warnings.warn(
                    f"{_metadata.NO_DIMS_NOTE} (searched config.json matryoshka_dimensions, "
                    "config_sentence_transformers.json and the model card's MatryoshkaLoss parameters); "
                    f"the model is exported at its full dim {embedding_dim} only",
                    UserWarning,
                    stacklevel=2,
                )
        check_dims = sorted({embedding_dim, *(matryoshka_dims or [])}, reverse=True)

        # 5. trace to ONNX with a model loaded for tracing (eager attention when the model supports it)
        t0 = time.perf_counter()
        step("export ONNX")
        trace_model = _trace_model(model_dir, ref_model, trust_remote_code, pooling, seq_len)
        tt, tp, tpost, _ = _source.split_pipeline(trace_model)
        from mrl_export._wrapper import EmbeddingGraph

        graph = EmbeddingGraph(tt, tp, tpost, input_names).eval()
        example = _verify.tokenize(
            work / "tokenizer.json",
            ["export example one", "a somewhat longer second example text here"],
            seq_len,
            padding_side,
            pad_id,
            input_names,
        ).arrays
        example_inputs = [torch.from_numpy(example[n]) for n in input_names if n != "prompt_length"]
        if "prompt_length" in input_names:
            example_inputs.append(torch.tensor([1, 2], dtype=torch.int64))
        (work / "_raw").mkdir()
        raw = work / "_raw" / "model.onnx"
        try:
            external = _onnx.export_onnx(graph, example_inputs, input_names, raw, opset)
        except Exception as exc:
            raise ExportError(f"torch.onnx.export failed for {config.get('model_type')}: {exc}") from exc
        del graph, trace_model, tt, tp, tpost
        gc.collect()
        done("onnx_export", t0)

        # 6. variants
        model_type = str(getattr(transformer.auto_model.config, "model_type", config.get("model_type", "")))
        hf_cfg = transformer.auto_model.config
        num_heads = int(getattr(hf_cfg, "num_attention_heads", 0) or 0)
        hidden = int(getattr(hf_cfg, "hidden_size", 0) or 0)
        notes: dict[str, str] = {}
        fp32_path = work / files.get("fp32", "_fp32.onnx")
        t0 = time.perf_counter()
        step(f"optimize fp32 ({optimize})")
        notes["fp32"] = _onnx.optimize_fp32(raw, fp32_path, model_type, optimize, num_heads, hidden, external)
        shutil.rmtree(work / "_raw")
        done("optimize", t0)
        weight_ranges: dict[str, str] = {}
        for v in variants:
            if v == "fp32":
                continue
            t0 = time.perf_counter()
            step(f"build {v}")
            if v == "int8":
                notes[v] = _onnx.quantize_int8(fp32_path, work / files[v], quantize, external)
                reduced = _onnx.quantize_options(quantize)["reduce_range"]
                weight_ranges[v] = "reduced" if reduced else "full"
                notes[v] += f"; base: {notes['fp32']}"
            else:
                notes[v] = _onnx.convert_fp16(fp32_path, work / files[v], external)
                notes[v] += f"; base: {notes['fp32']}"
            done(f"build_{v}", t0)
        if "fp32" not in variants:
            fp32_path.unlink()
            fp32_path.with_name(fp32_path.name + ".data").unlink(missing_ok=True)
        preoptimized = {v for v in variants if preoptimize and targets[v] == "cpu"}
        for v in sorted(preoptimized):  # after quantizing: the quantizer reads the plain fp32 graph
            notes[v] += "; " + _onnx.preoptimize_cpu(work / files[v], external)

        # 7. verification
        parity: dict[str, dict[str, Any]] = {v: {} for v in variants}
        onnx_out: dict[str, np.ndarray] = {}
        if validate:
            for v in variants:
                t0 = time.perf_counter()
                step(f"verify {v}")
                emb = _verify.run_onnx(
                    work / files[v],
                    work / "tokenizer.json",
                    full_texts,
                    max_seq_length=seq_len,
                    padding_side=padding_side,
                    pad_token_id=pad_id,
                    input_names=input_names,
                    prompt_length=prompt_length,
                    weight_range=weight_ranges.get(v),
                )
                onnx_out[v] = emb
                parity[v] = {
                    "reference": "sentence-transformers (PyTorch, CPU, fp32)",
                    "texts": len(texts),
                    "stsb_pairs": 0 if stsb is None else stsb[1],
                    "prompt": prompt or None,
                    "dims": _verify.compare(ref, emb, check_dims),
                }
                if v == "fp32":
                    _enforce_fp32(parity[v]["dims"], atol)
                done(f"verify_{v}", t0)
            if stsb is not None:
                _stsb_figures(parity, ref, onnx_out, stsb, check_dims)

        # 8. manifest
        step("write manifest")
        external = {v: _onnx.uses_external_data(work / files[v]) for v in variants}
        manifest_variants = {
            v: Variant(
                file=files[v],
                precision=v,
                target=targets[v],
                sha256=_metadata.sha256_file(work / files[v]),
                parity=parity[v],
                notes=notes[v],
                external_data=external[v],
                # the graph's sha256 covers only the .onnx file: hash its weights files too
                external_data_sha256={n: _metadata.sha256_file(work / n) for n in external[v]},
                graph_optimization="extended" if v in preoptimized else None,
                weight_range=weight_ranges.get(v),
            )
            for v in variants
        }
        timings["total"] = round(time.perf_counter() - started, 2)
        manifest = Manifest(
            name=provenance["model"].rstrip("/").split("/")[-1]
            if provenance.get("path") is None
            else model_dir.name,
            embedding_dim=embedding_dim,
            max_seq_length=seq_len,
            variants=manifest_variants,
            inputs=list(input_names),
            matryoshka_dims=matryoshka_dims,
            normalize=normalize,
            similarity_fn_name=str(getattr(ref_model, "similarity_fn_name", None) or "cosine"),
            prompts=prompts,
            default_prompt_name=default_prompt_name,
            pooling=_pooling_info(pooling_mod, post, prompt_lengths),
            tokenizer=TokenizerInfo(
                files=tok_files,
                padding_side=padding_side,
                pad_token_id=int(pad_id),
                pad_token=tokenizer.pad_token,
                do_lower_case=bool(getattr(transformer, "do_lower_case", False)),
            ),
            source={
                **provenance,
                "model_type": model_type,
                "architectures": config.get("architectures"),
                "trust_remote_code": trust_remote_code,
                "files_sha256": _metadata.source_file_hashes(model_dir),
                "versions": _metadata.package_versions(),
                "exported_at": exported_at,
                "export": {
                    "opset": opset or _onnx.DEFAULT_OPSET,
                    "optimize": optimize,
                    "quantize": quantize,
                    "exporter": "torch.onnx.export (TorchScript, dynamo=False)",
                    "matryoshka_dims_from": dims_source,
                    **({} if matryoshka_dims else {"matryoshka_dims_note": _metadata.NO_DIMS_NOTE}),
                    "seconds": timings,
                },
            },
        )
        write_manifest(manifest, work)
        bar.update(1)
    finally:
        bar.close()
    data = manifest.to_dict()
    if validate and show_progress:
        print(_verify.format_table({v: parity[v] for v in variants}, check_dims))
        print(f"export took {timings['total']:.1f} s")
    return data


def _resolve_max_seq_length(model: Any, transformer: Any, override: int | None) -> int:
    if override is not None:
        return int(override)
    value = model.max_seq_length
    if value is None or value > 1_000_000:
        limit = getattr(transformer.auto_model.config, "max_position_embeddings", None)
        tok_max = getattr(transformer.tokenizer, "model_max_length", None)
        value = min(x for x in (limit, tok_max, 10**9) if isinstance(x, int) and x > 0)
        if value >= 10**9:
            raise ExportError("the model declares no max sequence length; pass --max-seq-length N")
    return int(value)


def _graph_inputs(transformer: Any, pooling_mod: Any) -> list[str]:
    """Graph inputs: ids + mask, token_type_ids where the model uses them, prompt_length if needed."""
    names = ["input_ids", "attention_mask"]
    tok_inputs = set(getattr(transformer.tokenizer, "model_input_names", []) or [])
    import inspect

    forward_params = set(inspect.signature(transformer.auto_model.forward).parameters)
    type_vocab = getattr(transformer.auto_model.config, "type_vocab_size", 2)
    if "token_type_ids" in tok_inputs and "token_type_ids" in forward_params and (type_vocab or 0) > 1:
        names.append("token_type_ids")
    if not pooling_mod.include_prompt:
        names.append("prompt_length")
    return names


def _save_tokenizer(tokenizer: Any, work: Path) -> list[str]:
    """tokenizer.json without truncation/padding (the runtime sets both) plus the special-token files."""
    import tempfile

    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_truncation()
    backend.no_padding()
    backend.save(str(work / "tokenizer.json"))
    written = ["tokenizer.json"]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for name in _TOKENIZER_SIDE_FILES:
            src = Path(tmp) / name
            if src.is_file():
                (work / name).write_bytes(src.read_bytes())
                written.append(name)
    return written


def _check_tokenizer(tokenizer: Any, tokenizer_json: Path, texts: Sequence[str], seq_len: int) -> None:
    """The saved tokenizer.json must give the HF tokenizer's ids (same truncation) for every text."""
    hf = tokenizer(list(texts), truncation=True, max_length=seq_len, padding=False)["input_ids"]
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.enable_truncation(seq_len)
    got = [e.ids for e in tok.encode_batch(list(texts))]
    for i, (a, b) in enumerate(zip(hf, got, strict=True)):
        if list(a) != list(b):
            raise ExportError(
                f"saved tokenizer.json disagrees with the HF tokenizer on text {i} {texts[i][:40]!r}: "
                f"{list(a)[:12]}... vs {list(b)[:12]}..."
            )


def _verification_prompt(
    prompts: dict[str, str], default_name: str | None, pooling_mod: Any, lengths: dict[str, int]
) -> tuple[str, int | None]:
    """Prompt used during verification: the default prompt, else the first one when pooling excludes it."""
    name = default_name if default_name in prompts else None
    if name is None and not pooling_mod.include_prompt and prompts:
        name = next(iter(prompts))
    if name is None:
        return "", 0 if not pooling_mod.include_prompt else None
    return prompts[name], lengths.get(name, 0)


def _trace_model(
    model_dir: Path, ref_model: Any, trust_remote_code: bool, pooling: str | None, seq_len: int
) -> Any:
    """A copy loaded with eager attention (plain ops trace to ONNX most reliably); else the reference."""
    try:
        return _source.load_model(
            model_dir,
            trust_remote_code=trust_remote_code,
            pooling=pooling,
            max_seq_length=seq_len,
            eager=True,
        )
    except Exception:
        return ref_model


def _enforce_fp32(per_dim: dict[str, dict[str, float]], atol: float) -> None:
    bad = {
        d: m
        for d, m in per_dim.items()
        if not (m["min_cosine"] >= _verify.FP32_MIN_COSINE and m["max_abs_diff"] <= atol)
    }
    if bad:
        detail = "; ".join(
            f"dim {d}: min cosine {m['min_cosine']:.7f}, max abs diff {m['max_abs_diff']:.2e}"
            for d, m in bad.items()
        )
        raise ExportError(
            f"fp32 ONNX graph does not match PyTorch (need min cosine >= {_verify.FP32_MIN_COSINE} and "
            f"max abs diff <= {atol:g} after truncation+normalization): {detail}"
        )


def _stsb_figures(
    parity: dict[str, dict[str, Any]],
    ref: np.ndarray,
    outs: dict[str, np.ndarray],
    stsb: tuple[int, int, np.ndarray],
    dims: Sequence[int],
) -> None:
    """STS-B dev Spearman per dim for PyTorch and each variant, and each variant's delta vs fp32."""
    start, n, gold = stsb

    def rho(emb: np.ndarray, d: int) -> float:
        a = _verify.truncate_normalize(emb[start : start + n], d)
        b = _verify.truncate_normalize(emb[start + n : start + 2 * n], d)
        return _verify.spearman((a * b).sum(axis=1), gold)

    torch_rho = {str(d): rho(ref, d) for d in dims}
    base = outs.get("fp32", ref)
    for v, emb in outs.items():
        parity[v]["stsb_spearman"] = {str(d): rho(emb, d) for d in dims}
        parity[v]["stsb_spearman_torch"] = torch_rho
        parity[v]["stsb_spearman_delta_vs_fp32"] = {
            str(d): parity[v]["stsb_spearman"][str(d)] - rho(base, d) for d in dims
        }


def _pooling_info(pooling_mod: Any, post: Sequence[Any], prompt_lengths: dict[str, int]) -> dict[str, Any]:
    from mrl_export._wrapper import pooling_modes

    info: dict[str, Any] = {
        "modes": list(pooling_modes(pooling_mod)),
        "include_prompt": bool(pooling_mod.include_prompt),
        "post_pooling": [_describe(m) for m in post],
        "normalize_in_graph": False,
    }
    if not pooling_mod.include_prompt:
        info["prompt_lengths"] = prompt_lengths
        info["prompt_length_rule"] = (
            "tokens of the tokenized prompt excluding a trailing special token (Sentence Transformers rule); "
            "feed it per row as input 'prompt_length' (0 without a prompt)"
        )
    return info


def _describe(module: Any) -> str:
    name = type(module).__name__
    if name == "Dense":
        act = type(module.activation_function).__name__
        return f"Dense({module.linear.in_features}->{module.linear.out_features}, {act})"
    return name
