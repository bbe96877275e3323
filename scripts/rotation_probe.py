"""Probe (issue 16): can an orthogonal rotation of the output, before truncation, lift the small dims?

On the frozen base model (all-MiniLM-L6-v2, PyTorch): embed ~12,000 training-pool texts (NLI / STS-B
train sentences, WordNet glosses, Python-docs prose; evaluation text excluded as in export/train.py) and
STS-B dev. Then compare STS-B dev Spearman at 384..32 dims for the raw coordinates, a PCA rotation
(fit on the pool), and an orthogonal 384x384 rotation trained on the pool with the recipe's objective
(MatryoshkaLoss-weighted MSE between truncated and full-dim cosine matrices), optionally plus CoSENT
on STS-B train. A rotation leaves full-dim cosines unchanged exactly, so only the prefixes move.

    python scripts/rotation_probe.py --lr 1e-3 --cosent 0 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DIMS = (384, 256, 128, 64, 32)
WEIGHTS = (1.0, 1.0, 1.0, 4.0, 8.0)


def embed_all(data: Path, cache: Path) -> dict[str, np.ndarray]:
    if cache.exists():
        return dict(np.load(cache))
    from mrl_export import _pool
    from mrl_export.train import base_model_path, load_data
    from sentence_transformers import SentenceTransformer

    from mrl_infer._quality import load_sts

    d = load_data(data)
    fit = random.Random(0).sample(d["distill"], 6000)
    for groups in (_pool.wordnet_groups(), _pool.pydoc_groups()):
        fit += [t for g in _pool.sample_groups(groups, 3000, 42, d["banned"]) for t in g]
    model = SentenceTransformer(base_model_path(), device="cpu")

    def enc(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=128, normalize_embeddings=True)

    dev, train = load_sts(data / "stsb/dev.tsv"), load_sts(data / "stsb/train.tsv")
    out = {
        "F": enc(fit),
        "A": enc(dev.s1),
        "B": enc(dev.s2),
        "y": dev.scores,
        "TA": enc(train.s1),
        "TB": enc(train.s2),
        "ty": train.scores,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def spearman_at(a: np.ndarray, b: np.ndarray, y: np.ndarray, k: int) -> float:
    from scipy.stats import spearmanr

    a, b = a[:, :k], b[:, :k]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return round(100 * float(spearmanr(cos, y).statistic), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data")
    ap.add_argument("--cache", type=Path, default=Path("artifacts/cache/rotation_probe.npz"))
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--cosent", type=float, default=0.0, help="weight of CoSENT on STS-B train")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    e = embed_all(args.data, args.cache)
    A, B, y = e["A"], e["B"], e["y"]

    def row(name: str, R: np.ndarray) -> None:
        print(name, [spearman_at(A @ R, B @ R, y, k) for k in DIMS], flush=True)

    row("raw", np.eye(384))
    _, _, vt = np.linalg.svd(e["F"] - e["F"].mean(0), full_matrices=False)
    row("pca", vt.T)
    torch.manual_seed(0)
    lin = torch.nn.Linear(384, 384, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(384))
    torch.nn.utils.parametrizations.orthogonal(lin)
    opt = torch.optim.Adam(lin.parameters(), lr=args.lr)
    fit = torch.from_numpy(e["F"])
    ta, tb = torch.from_numpy(e["TA"]), torch.from_numpy(e["TB"])
    ty = torch.from_numpy(e["ty"] / 5).float()

    def cosent(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        s = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1) * 20
        diff = s[None, :] - s[:, None] - (labels[:, None] <= labels[None, :]).float() * 1e12
        return torch.logsumexp(torch.cat([torch.zeros(1), diff.flatten()]), 0)

    for epoch in range(args.epochs):
        perm = torch.randperm(len(fit))
        for s in range(0, len(perm) - 127, 128):
            x = fit[perm[s : s + 128]]
            target, out = x @ x.T, lin(x)
            loss = torch.zeros(())
            for k, w in zip(DIMS, WEIGHTS, strict=True):
                ek = F.normalize(out[:, :k], dim=-1)
                loss = loss + w * ((ek @ ek.T - target) ** 2).mean()
            if args.cosent:
                j = torch.randint(0, len(ta), (32,))
                a, b = lin(ta[j]), lin(tb[j])
                for k, w in zip(DIMS, WEIGHTS, strict=True):
                    loss = loss + args.cosent * w * cosent(a[:, :k], b[:, :k], ty[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            row(f"rotation epoch {epoch + 1}", lin.weight.numpy().T)


if __name__ == "__main__":
    main()
