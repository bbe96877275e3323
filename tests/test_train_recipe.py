"""The training recipe's data plumbing (export/train.py); the training itself runs as a recipe, not a test."""

from __future__ import annotations

from pathlib import Path

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
