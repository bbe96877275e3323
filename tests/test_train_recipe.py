"""The training recipe's data plumbing (export/train.py); the training itself runs as a recipe, not a test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mrl_export.train import group_related


def test_group_related_keeps_neighbours_together_once_and_drops_eval_text() -> None:
    rows = [
        ("snli\tA man sleeps.", "A man sleeps.", "A person rests."),
        ("snli\tA man sleeps.", "A man sleeps.", "A man runs."),
        ("sts\t0", "A dog barks.", "A person rests."),  # already in the first group
        ("sts\t1", "Banned sentence.", "  "),  # evaluation text and an empty string
        ("mnli\tShe left.", "She left.", "She went away."),
    ]
    groups = group_related(rows, banned={"banned sentence."})
    assert groups == [
        ["A man sleeps.", "A person rests.", "A man runs."],
        ["A dog barks."],
        ["She left.", "She went away."],
    ]


def test_pool_wordnet_groups_parse_synsets(tmp_path: Path) -> None:
    """A synset line: the first lemma, its definitions joined, example sentences of 4+ words kept."""
    from mrl_export import _pool

    header = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    line = (
        "00001740 29 v 04 take_a_breath 0 breathe 0 respire 0 suspire 3 000 | draw air into, and expel out"
        ' of, the lungs; "I can breathe better when the air is clean"; "Go!"  \n'
    )
    (tmp_path / "data.verb").write_text(header + line, encoding="utf-8")
    for pos in ("noun", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(header, encoding="utf-8")
    assert _pool.wordnet_groups(tmp_path) == [
        [
            "take a breath: draw air into, and expel out of, the lungs",
            "I can breathe better when the air is clean",
        ]
    ]


def test_pool_pydoc_groups_keep_prose_drop_code_and_markup(tmp_path: Path) -> None:
    from mrl_export import _pool

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.rst.txt").write_text(
        "Title\n=====\n\n"
        "The :func:`open` function returns a ``file object`` that reads the file named by its argument.\n\n"
        ".. note:: a directive, dropped\n\n"
        ">>> print('code is dropped too, whatever its length is here')\n\n"
        "Too short.\n\n"
        "Next\n----\n\n"
        "A second section has its own paragraph, which is long enough to be kept as a text.\n",
        encoding="utf-8",
    )
    assert _pool.pydoc_groups(tmp_path) == [
        ["The open function returns a file object that reads the file named by its argument."],
        ["A second section has its own paragraph, which is long enough to be kept as a text."],
    ]


def test_pool_sample_groups_is_seeded_capped_and_drops_banned() -> None:
    from mrl_export import _pool

    groups = [[f"g{i} a", f"g{i} b"] for i in range(50)] + [["Banned Text", "g0 a"]]
    a = _pool.sample_groups(groups, 10, seed=1, banned={"banned text"})
    assert a == _pool.sample_groups(groups, 10, seed=1, banned={"banned text"})
    assert a != _pool.sample_groups(groups, 10, seed=2, banned={"banned text"})
    flat = [t for g in a for t in g]
    assert len(flat) == 10 and len(set(flat)) == 10 and "Banned Text" not in flat
    assert all(len(g) == 2 and g[0][:-2] == g[1][:-2] for g in a)  # whole groups, together


def test_rotation_keeps_full_dim_cosines_and_saves_as_a_plain_dense_layer(tmp_path: Path) -> None:
    """``--rotate``: identity at start (the base model's embeddings), orthogonal while trained (full-dim
    cosines unchanged, prefixes changed), the anchor blind to it, and saved as an ordinary Dense layer."""
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("sentence_transformers")
    import torch.nn.utils.parametrize as parametrize
    from mrl_export.train import add_rotation, base_model_path, make_distill_loss

    texts = ["a cat sits on the mat", "the market fell sharply today", "read the docs first"]
    base = st.SentenceTransformer(base_model_path(), device="cpu")
    e0 = base.encode(texts)
    model, rot = add_rotation(st.SentenceTransformer(base_model_path(), device="cpu"))
    assert [type(m).__name__ for m in model._modules.values()][-2:] == ["Dense", "Normalize"]
    np.testing.assert_allclose(model.encode(texts), e0, atol=1e-6)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in rot.parameters():
            p.add_(0.05 * torch.randn_like(p))
    w = rot.linear.weight.detach()
    np.testing.assert_allclose((w @ w.T).numpy(), np.eye(384), atol=1e-4)
    e1 = model.encode(texts)
    np.testing.assert_allclose(e1 @ e1.T, e0 @ e0.T, atol=1e-5)
    assert np.abs(e1[:, :32] - e0[:, :32]).max() > 1e-2
    feats = [model.tokenize(texts)]
    teacher = (torch.from_numpy(e0),)
    plain = make_distill_loss(base, "mse", 0.05, anchor_weight=1.0)([base.tokenize(texts)], teacher)
    rotated = make_distill_loss(model, "mse", 0.05, anchor_weight=1.0, rotation=lambda: rot.linear.weight)
    assert abs(float(rotated(feats, teacher)) - float(plain)) < 1e-5
    parametrize.remove_parametrizations(rot.linear, "weight", leave_parametrized=True)
    model.save(str(tmp_path / "m"))
    np.testing.assert_allclose(
        st.SentenceTransformer(str(tmp_path / "m"), device="cpu").encode(texts), e1, atol=1e-6
    )
