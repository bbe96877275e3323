"""The training recipe's data plumbing (export/train.py); the training itself runs as a recipe, not a test."""

from __future__ import annotations

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
