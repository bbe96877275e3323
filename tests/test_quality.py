"""The quality tool's metrics against scipy and hand-computed references on small inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import _quality as q

DATA = Path(__file__).parent / "data"


def test_rankdata_average_ties() -> None:
    assert q.rankdata(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert q.rankdata(np.array([1.0, 1.0, 1.0])).tolist() == [2.0, 2.0, 2.0]


def test_spearman_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=50)
        y = x + rng.normal(size=50)
        y[::7] = y[0]  # ties
        x[::5] = np.round(x[::5], 1)
        assert q.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_hand_values() -> None:
    assert q.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert q.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # d = [0, -1, 1] -> rho = 1 - 6*2/(3*8) = 0.5
    assert q.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_ndcg_and_recall_hand_values() -> None:
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    rel = [{"b"}, {"x", "z"}, {"s"}]
    n1 = 1 / math.log2(3)
    n2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert q.ndcg_at_k(ranked, rel, k=10) == pytest.approx((n1 + n2 + 0.0) / 3)
    # k cuts: only the first doc counts
    assert q.ndcg_at_k(ranked, rel, k=1) == pytest.approx((0 + 1 / (1) + 0) / 3 * 1.0)
    assert q.recall_at_k(ranked, rel, k=2) == pytest.approx((1 + 0.5 + 0) / 3)
    assert q.recall_at_k(ranked, rel, k=100) == pytest.approx((1 + 1 + 0) / 3)
    # queries without judgements are skipped
    assert q.recall_at_k([["a"]], [set()], k=1) != q.recall_at_k([["a"]], [set()], k=1)  # nan


def test_top_k_matches_full_sort() -> None:
    rng = np.random.default_rng(1)
    qe = q.truncate(rng.normal(size=(7, 16)), 16)
    de = q.truncate(rng.normal(size=(40, 16)), 16)
    got = q.top_k(qe, de, 5, chunk=3)
    want = np.argsort(-(qe @ de.T), axis=1, kind="stable")[:, :5]
    assert (got == want).all()


def test_truncate_renormalizes() -> None:
    e = np.array([[3.0, 4.0, 12.0]])
    t = q.truncate(e, 2)
    assert t.shape == (1, 2)
    assert np.allclose(t, [[0.6, 0.8]])


def test_evaluate_encoder_with_a_toy_encoder(tmp_path: Path) -> None:
    """End to end with a deterministic encoder: perfect retrieval, perfect STS ranking at full dim."""
    texts = ["a b", "c d", "e f", "g h"]
    table = {t: np.eye(4)[i] for i, t in enumerate(texts)}

    def encode(xs: list[str]) -> np.ndarray:
        return np.stack([table[x] for x in xs])

    sts = q.StsData(["a b", "a b", "c d"], ["a b", "c d", "c d"], np.array([5.0, 0.0, 4.0]))
    ret = q.RetrievalData(["q0"], ["a b"], ["d0", "d1"], ["c d", "a b"], {"q0": {"d1"}})
    rows = q.evaluate_encoder(encode, [4], sts=sts, retrieval=ret, model="toy", variant="fp32")
    assert rows[0]["ndcg@10"] == pytest.approx(100.0)
    assert rows[0]["recall@100"] == pytest.approx(100.0)
    assert rows[0]["stsb_spearman"] == pytest.approx(100.0 * q.spearman([1.0, 0.0, 1.0], [5.0, 0.0, 4.0]))
    table_md = q.format_table(rows)
    assert "| toy | fp32 | 4 |" in table_md


def test_load_sts_keeps_quotes(tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_text('sentence1\tsentence2\tscore\n"Hi," he said.\tHello\t4.5\n', encoding="utf-8")
    d = q.load_sts(p)
    assert d.s1 == ['"Hi," he said.'] and d.s2 == ["Hello"] and d.scores.tolist() == [4.5]


def test_committed_subset_and_retrieval_set_load() -> None:
    d = q.load_sts(DATA / "stsb_dev_subset.tsv")
    assert len(d.s1) == 300 and d.scores.min() >= 0 and d.scores.max() <= 5
    r = q.load_retrieval(q.DEFAULT_RETRIEVAL_DIR)
    assert len(r.queries) == 1681 and len(r.docs) == 5000
    assert sum(len(v) for v in r.qrels.values()) == 1784
    assert all(d in set(r.doc_ids) for v in r.qrels.values() for d in v)


def test_ndcg_and_recall_mix_skipped_and_judged_queries() -> None:
    """Queries without judgements are left out of the mean, not counted as 0 (nor do they shift the rest)."""
    ranked = [["a", "b"], ["x", "y"], ["p", "q"], ["m", "n"]]
    rel: list[set[str]] = [{"a"}, set(), {"q"}, set()]
    ndcg_q2 = (1 / math.log2(3)) / 1.0
    assert q.ndcg_at_k(ranked, rel, k=10) == pytest.approx((1.0 + ndcg_q2) / 2)
    assert q.recall_at_k(ranked, rel, k=1) == pytest.approx((1.0 + 0.0) / 2)
    assert q.recall_at_k(ranked, rel, k=2) == pytest.approx(1.0)
    # The same two judged queries alone give the same figures.
    judged = [0, 2]
    assert q.ndcg_at_k([ranked[i] for i in judged], [rel[i] for i in judged]) == q.ndcg_at_k(ranked, rel)


def test_packaged_eval_data() -> None:
    """The data `mrl-embed eval` uses in a plain install: official STS-B test and the MNLI-val copy."""
    import hashlib

    sts = q.load_sts(q.PACKAGED_STS["test"])
    assert len(sts.s1) == 1379 and sts.scores.min() >= 0 and sts.scores.max() <= 5
    assert sts.s1[0] == "A girl is styling her hair." and sts.s2[0] == "A girl is brushing her hair."
    assert (q.PACKAGED_DATA_DIR / "stsb" / "LICENSE.txt").is_file()
    assert "CC BY-SA" in (q.PACKAGED_DATA_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    repo_copy = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "retrieval"
    for name in ("queries.tsv.gz", "corpus.tsv.gz", "qrels.tsv.gz"):
        packaged = (q.DEFAULT_RETRIEVAL_DIR / name).read_bytes()
        assert hashlib.sha256(packaged).digest() == hashlib.sha256((repo_copy / name).read_bytes()).digest()
    # Without data_dir / $MRL_QUALITY_DATA the test split always resolves (packaged or ../shared copy).
    assert q._resolve_sts(None, "test") is not None


def test_packaged_sts_used_without_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A clone or pip install has no ../shared: the packaged STS-B test split is used, not '–'."""
    monkeypatch.delenv("MRL_QUALITY_DATA", raising=False)
    monkeypatch.setattr(q, "DEFAULT_DATA_DIR", tmp_path / "no-shared")
    assert q._resolve_sts(None, "test") == q.PACKAGED_STS["test"]
    assert q._resolve_sts(None, "dev") is None  # only the test split ships
    assert q._resolve_sts(tmp_path / "explicit", "test") is None  # an explicit dir is not second-guessed


def test_load_sts_official_layout(tmp_path: Path) -> None:
    """The official sts-*.csv layout (no header; score is field 5) reads the same as the cleaned TSV."""
    p = tmp_path / "sts-test.csv"
    p.write_text(
        'main-captions\tMSRvid\t2012test\t0024\t2.500\t"A" girl.\tA girl is brushing her hair.\n'
        "main-forums\tanswer-answer\t2016\t0008\t3\tOne.\tTwo.\tStackExchange Network: x\tStackExchange: y\n",
        encoding="utf-8",
    )
    d = q.load_sts(p)
    assert d.s1 == ['"A" girl.', "One."] and d.s2 == ["A girl is brushing her hair.", "Two."]
    assert d.scores.tolist() == [2.5, 3.0]


def test_eval_notes_dropped_variant_and_missing_sts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The default model ships int8 only: fp32 is skipped with a note; absent STS-B data is named."""
    monkeypatch.delenv("MRL_QUALITY_DATA", raising=False)
    ret = tmp_path / "ret"
    ret.mkdir()
    (ret / "queries.tsv").write_text("id\ttext\nq0\ta cat sits on the mat\n", encoding="utf-8")
    (ret / "corpus.tsv").write_text("id\ttext\nd0\ta cat on a mat\nd1\tstock prices fell\n", "utf-8")
    (ret / "qrels.tsv").write_text("query_id\tdoc_id\nq0\td0\n", encoding="utf-8")
    with caplog.at_level("WARNING", logger="mrl_infer.eval"):
        rows = q.evaluate(
            str(Path(q.__file__).parent / "models" / "default"),
            dims=[32],
            data_dir=tmp_path / "empty",
            retrieval_dir=ret,
        )
    assert [r["variant"] for r in rows] == ["int8"]
    assert rows[0]["stsb_spearman"] is None and rows[0]["ndcg@10"] is not None
    text = caplog.text
    assert "variant fp32 skipped" in text
    assert "no STS-B test split" in text and "stswiki" in text and "--data" in text


def _write_beir(d: Path) -> None:
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text(
        '{"_id": "d0", "title": "Cats", "text": "a cat on a mat"}\n'
        '{"_id": "d1", "title": "", "text": "stock prices fell"}\n',
        encoding="utf-8",
    )
    (d / "queries.jsonl").write_text(
        '{"_id": "q0", "text": "cat sits on mat"}\n{"_id": "q1", "text": "no judgment"}\n', encoding="utf-8"
    )
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t0\n", "utf-8")


def test_load_beir_layout(tmp_path: Path) -> None:
    """BEIR: title and text joined by a space, an empty title adds nothing, unjudged queries dropped."""
    _write_beir(tmp_path)
    assert q.has_retrieval(tmp_path) and not q.has_retrieval(tmp_path / "qrels")
    r = q.load_retrieval(tmp_path)
    assert r.query_ids == ["q0"] and r.queries == ["cat sits on mat"]
    assert r.doc_ids == ["d0", "d1"] and r.docs == ["Cats a cat on a mat", "stock prices fell"]
    assert r.qrels == {"q0": {"d0"}}


def test_extra_retrieval_columns(tmp_path: Path) -> None:
    """Out-of-domain sets add their own columns; a wrong encoder scores lower there, not everywhere."""
    texts = ["a b", "c d"]
    table = {t: np.eye(2)[i] for i, t in enumerate(texts)}

    def encode(xs: list[str]) -> np.ndarray:
        return np.stack([table[x] for x in xs])

    good = q.RetrievalData(["q0"], ["a b"], ["d0", "d1"], ["c d", "a b"], {"q0": {"d1"}})
    bad = q.RetrievalData(["q0"], ["a b"], ["d0", "d1"], ["a b", "c d"], {"q0": {"d1"}})
    rows = q.evaluate_encoder(encode, [2], sts=None, retrieval=good, extra_retrieval={"ood": bad})
    assert rows[0]["ndcg@10"] == pytest.approx(100.0)
    assert rows[0]["ood:ndcg@10"] == pytest.approx(100.0 / math.log2(3))
    md = q.format_table(rows)
    assert "ood nDCG@10" in md.splitlines()[0] and md.splitlines()[2].endswith(" 63.09 |")


def test_evaluate_names_a_missing_extra_set(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="'cisi'"):
        q.evaluate(
            str(Path(q.__file__).parent / "models" / "default"),
            dims=[32],
            extra_retrieval={"cisi": tmp_path / "nowhere"},
        )


def test_committed_debian_set_loads() -> None:
    """The committed out-of-domain set: 1,000 queries, one relevant description each, 5,000 docs."""
    r = q.load_retrieval(Path(__file__).resolve().parents[1] / "benchmarks/data/debian_desc")
    assert len(r.queries) == 1000 and len(r.docs) == 5000 and len(set(r.doc_ids)) == 5000
    assert all(len(v) == 1 for v in r.qrels.values()) and len(r.qrels) == 1000
    docs = set(r.doc_ids)
    assert all(d in docs for v in r.qrels.values() for d in v)
