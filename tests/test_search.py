"""Funnel search (mrl_infer.search): exactness, recall on real embeddings, persistence, bad input, CLI."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import DimError, Embedder, IndexFormatError, InputError
from mrl_infer.search import Index, SearchResult, _scan, _store, semantic_search, similarity

REPO = Path(__file__).resolve().parents[1]
RETRIEVAL = REPO / "benchmarks" / "data" / "retrieval"


def mrl_like(n: int, dim: int = 96, seed: int = 0) -> np.ndarray:
    """Unit vectors with a decaying per-dim scale and clusters, as Matryoshka embeddings have."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(1 + np.arange(dim) / 6)
    centers = rng.standard_normal((max(2, n // 50), dim)) * scale
    x = centers[rng.integers(0, len(centers), n)] + 0.7 * rng.standard_normal((n, dim)) * scale
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: full sort of all float64 scores."""
    s = queries.astype(np.float64) @ corpus.astype(np.float64).T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), ref.tolist(), strict=True)])
    )


# ----------------------------------------------------------------------------- the scan


@pytest.mark.parametrize("precision", _scan.SHORTLIST_PRECISIONS)
@pytest.mark.parametrize("n", [7, 1000, _scan.CHUNK + 1003])
@pytest.mark.parametrize("few_query_chunks", [True, False])
def test_scan_graph_equals_numpy_top_k(
    precision: str, n: int, few_query_chunks: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 5 queries scan in chunks of up to CHUNK_MAX rows (one call here); at CHUNK, in two
    if not few_query_chunks:
        monkeypatch.setattr(_scan, "CHUNK_MAX", _scan.CHUNK)
    x = mrl_like(n, 64, seed=n)
    q = mrl_like(5, 64, seed=1)
    tier = _scan.make_tier(x, 32, precision)
    kk = min(n, 40)
    scores, rows = _scan.shortlist(tier, q, kk)
    ref = (tier.decode(0, n) @ tier.query(q).astype(np.float32)).T
    expect = -np.sort(-ref, axis=1)[:, :kk]
    np.testing.assert_allclose(scores, expect, rtol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), scores, rtol=1e-6)
    assert all(len(set(r)) == kk for r in rows.tolist())


@pytest.mark.parametrize("precision", _scan.SHORTLIST_PRECISIONS)
def test_scan_past_the_first_chunk_keeps_every_row_that_beats_the_running_cut(
    precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_scan, "CHUNK_MAX", _scan.CHUNK)  # 3 queries: chunks of CHUNK rows, as at 64
    # After the first chunk only rows at or above each query's running cut come back from the
    # graph. Rows sorted by query 0's score, ascending, make every later chunk beat the cut for
    # query 0 (and miss it for query 1, whose order is the reverse); duplicated rows make ties.
    n = 4 * _scan.CHUNK + 13  # a first chunk of 2 * CHUNK, two more; a tail of 13 rows goes through numpy
    x = mrl_like(n // 2 + 1, 64, seed=3)
    x = np.concatenate([x, x])[:n]
    q = mrl_like(3, 64, seed=4)
    q[1] = -q[0]
    tier = _scan.make_tier(x, 64, precision)
    ref = (tier.decode(0, n) @ tier.query(q).astype(np.float32)).T
    tier = _scan.make_tier(x[np.argsort(ref[0], kind="stable")], 64, precision)
    ref = (tier.decode(0, n) @ tier.query(q).astype(np.float32)).T
    kk = 300
    scores, rows = _scan.shortlist(tier, q, kk)
    # int8 and ubinary scores are sums of integers, exact in float32; float16 goes through
    # onnxruntime's GEMM, whose summation order differs from numpy's by an ulp on some CPUs
    # (seen on an Intel Xeon with AMX), so there the comparison allows that much.
    rtol = 1e-6 if precision == "float16" else 0
    np.testing.assert_allclose(scores, -np.sort(-ref, axis=1)[:, :kk], rtol=rtol, atol=0)
    np.testing.assert_allclose(np.take_along_axis(ref, rows, 1), scores, rtol=rtol, atol=0)
    assert all(len(set(r)) == kk for r in rows.tolist())


def test_chunks_grow_at_few_queries_within_their_bounds() -> None:
    assert _scan.chunk_rows(64) == _scan.CHUNK
    assert _scan.chunk_rows(_scan.QUERY_BLOCK) == _scan.CHUNK
    assert _scan.chunk_rows(1) == _scan.CHUNK_MAX
    assert _scan.CHUNK < _scan.chunk_rows(12) < _scan.CHUNK_MAX
    assert all(_scan.chunk_rows(q) % _scan.GROUP == 0 for q in range(1, 300))


def test_shipped_scan_graphs_are_what_the_builder_writes() -> None:
    pytest.importorskip("onnx")
    r = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_scan_graphs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("precision", _scan.SHORTLIST_PRECISIONS)
@pytest.mark.parametrize("rerank_precision", ["float16", "float32"])
def test_funnel_equals_exact_when_the_shortlist_covers_the_index(
    precision: str, rerank_precision: str
) -> None:
    x = mrl_like(3000)
    q = mrl_like(20, seed=5)
    index = Index.from_embeddings(
        x, shortlist_dim=16, shortlist_precision=precision, rerank_precision=rerank_precision
    )
    full = index.search(q, 10, oversample=300)  # 10 x 300 = every row
    exact = index.search(q, 10, exact=True)
    np.testing.assert_array_equal(full.positions, exact.positions)
    np.testing.assert_allclose(full.scores, exact.scores, atol=1e-6)
    order, ref_scores = brute(x, q, 10)
    tol = 1e-6 if rerank_precision == "float32" else 2e-3
    np.testing.assert_allclose(exact.scores, ref_scores, atol=tol)
    if rerank_precision == "float32":
        np.testing.assert_array_equal(exact.positions, order)


def test_rerank_dim_prefix_matches_brute_force_at_that_dim() -> None:
    x = mrl_like(2000)
    q = mrl_like(10, seed=9)
    index = Index.from_embeddings(x, rerank_precision="float32")
    got = index.search(q, 5, rerank_dim=48, exact=True)
    xp = x[:, :48] / np.linalg.norm(x[:, :48], axis=1, keepdims=True)
    qp = q[:, :48] / np.linalg.norm(q[:, :48], axis=1, keepdims=True)
    order, scores = brute(xp, qp, 5)
    np.testing.assert_array_equal(got.positions, order)
    np.testing.assert_allclose(got.scores, scores, atol=1e-6)


def test_smaller_shortlists_lose_recall_and_oversampling_recovers_it() -> None:
    x = mrl_like(20_000)
    q = mrl_like(50, seed=3)
    index = Index.from_embeddings(x, shortlist_dim=16, shortlist_precision="int8")
    ref = index.search(q, 10, exact=True).positions
    r1 = recall(index.search(q, 10, oversample=1).positions, ref)
    r32 = recall(index.search(q, 10, oversample=32).positions, ref)
    assert r1 < 0.6 and r32 > 0.85 and r32 - r1 > 0.3, (r1, r32)


# ----------------------------------------------------------------------------- real embeddings


@pytest.fixture(scope="module")
def mnli() -> tuple[list[str], list[str], np.ndarray, np.ndarray, Embedder]:
    def read(name: str) -> list[str]:
        with gzip.open(RETRIEVAL / f"{name}.tsv.gz", "rt", encoding="utf-8") as fh:
            next(fh)
            return [line.rstrip("\n").split("\t")[1] for line in fh]

    docs, queries = read("corpus"), read("queries")[:300]
    emb = Embedder()
    return docs, queries, emb.encode(docs, batch_size=64), emb.encode(queries, batch_size=64), emb


def test_default_funnel_recall_on_real_embeddings(mnli) -> None:
    _docs, _, dv, qv, emb = mnli
    index = Index.from_embeddings(dv, model=emb)
    ref, _ = brute(dv, qv, 10)
    assert recall(index.search(qv, 10).positions, ref) >= 0.99
    # the same check fails for a setting known to be too coarse on this model
    coarse = Index.from_embeddings(dv, shortlist_dim=16, shortlist_precision="ubinary")
    assert recall(coarse.search(qv, 10, oversample=1).positions, ref) < 0.5


def test_text_queries_embed_with_the_index_model(mnli, tmp_path: Path) -> None:
    docs, queries, _dv, _qv, emb = mnli
    index = Index.build(emb, docs[:500], ids=[f"d{i}" for i in range(500)], store_text=True)
    by_text = index.search(queries[:5], 3)
    by_vec = index.search(emb.encode(queries[:5]), 3)  # the same batch: bit-identical vectors
    assert by_text.ids == by_vec.ids
    np.testing.assert_allclose(by_text.scores, by_vec.scores, atol=1e-6)
    assert index.fields(by_text.positions[0])[0]["text"] == docs[int(by_text.positions[0][0])]
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")  # opens the default model itself on the first text query
    assert loaded.search(queries[:5], 3).ids == by_text.ids


def test_another_models_embedder_is_refused(mnli, nan_model_dir: Path, tmp_path: Path) -> None:
    _docs, _, dv, _, emb = mnli
    Index.from_embeddings(dv[:100], model=emb).save(tmp_path / "ix")
    other = Embedder(nan_model_dir)
    with pytest.raises(InputError, match=r"built by model .* not comparable"):
        Index.load(tmp_path / "ix", embedder=other)
    bare = Index.from_embeddings(dv[:100])
    with pytest.raises(InputError, match="bare vectors with no model"):
        bare.search("a query")


# ----------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("ids", [None, "str"])
def test_save_load_round_trip(tmp_path: Path, ids: str | None) -> None:
    x = mrl_like(5000)
    q = mrl_like(30, seed=4)
    row_ids = [f"doc-{i}" for i in range(5000)] if ids else None
    fields = [{"n": i, "tag": "é" * (i % 3)} for i in range(5000)]
    index = Index.from_embeddings(x, row_ids, fields=fields, shortlist_precision="ubinary", shortlist_dim=64)
    before = index.search(q, 7)
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    after = loaded.search(q, 7)
    assert after.ids == before.ids
    np.testing.assert_array_equal(after.scores, before.scores)
    assert loaded.ids == (row_ids or list(range(5000)))
    assert loaded.fields(range(5000)) == fields
    assert (loaded.shortlist_dim, loaded.shortlist_precision, loaded.oversample) == (
        64,
        "ubinary",
        index.oversample,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temporary directories left


def test_loaded_fields_survive_resaving_and_a_bad_line_is_named(tmp_path: Path) -> None:
    fields = [{"i": i, "text": f"row {i} é"} for i in range(2000)]
    Index.from_embeddings(mrl_like(2000), fields=fields).save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    assert loaded.fields([1999, 0, 7]) == [fields[1999], fields[0], fields[7]]
    loaded.add(mrl_like(10, seed=9), fields=[{"late": j} for j in range(10)])
    loaded.save(
        tmp_path / "ix", overwrite=True
    )  # onto its own directory, while its fields file is still mapped
    again = Index.load(tmp_path / "ix")
    assert again.fields(range(2010)) == fields + [{"late": j} for j in range(10)]
    data = bytearray((tmp_path / "ix" / "fields.jsonl").read_bytes())
    data[data.index(b'"i": 5,') + 3] = ord("#")  # same size: only the JSON of row 5 is broken
    (tmp_path / "ix" / "fields.jsonl").write_bytes(bytes(data))
    broken = Index.load(tmp_path / "ix")
    assert broken.fields([4]) == [fields[4]]
    with pytest.raises(IndexFormatError, match=r"fields.jsonl: row 5 is not valid JSON"):
        broken.fields([5])


def test_add_then_search_finds_new_rows(tmp_path: Path) -> None:
    x = mrl_like(4000)
    index = Index.from_embeddings(x[:3000], [f"a{i}" for i in range(3000)])
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    loaded.add(x[3000:], [f"b{i}" for i in range(1000)], fields=[{"new": True}] * 1000)
    hits = loaded.search(x[3500], 1)
    assert hits.ids == [["b500"]]
    assert loaded.fields(hits.positions[0]) == [{"new": True}]
    assert loaded.fields([0]) == [{}]
    with pytest.raises(InputError, match="already in the index"):
        loaded.add(x[:1], ["a0"])
    loaded.save(tmp_path / "ix", overwrite=True)
    again = Index.load(tmp_path / "ix")
    assert len(again) == 4000 and again.search(x[3500], 1).ids == [["b500"]]


def test_memory_mapped_load_does_not_read_the_rerank_tier(tmp_path: Path) -> None:
    n = 250_000
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 384), dtype=np.float32)
    Index.from_embeddings(x, shortlist_dim=32, rerank_precision="float32").save(tmp_path / "ix")
    rerank_mb = (tmp_path / "ix" / "rerank.npy").stat().st_size / 2**20
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from mrl_infer.search import Index
        def rss():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon"):  # private memory; file pages mapped in are page cache
                    return int(line.split()[1]) / 1024
        q = np.random.default_rng(1).standard_normal((8, 384)).astype(np.float32)
        Index.from_embeddings(q).search(q, 3)  # warm up onnxruntime and the scan session
        base = rss()
        index = Index.load({str(tmp_path / "ix")!r}, mmap=sys.argv[1] == "mmap")
        index.search(q, 10)
        print(rss() - base)
    """)
    grown = {}
    for mode in ("mmap", "ram"):
        r = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        grown[mode] = float(r.stdout.split()[-1])
    assert rerank_mb > 350
    # growth = the shortlist tier (8 MB) and ids as Python objects; the 366 MB rerank tier stays in
    # the page cache, not in the process's own memory
    assert grown["mmap"] < 0.25 * rerank_mb, grown
    assert grown["ram"] - grown["mmap"] > 0.9 * rerank_mb, grown  # the same probe sees a tier read into RAM


# ----------------------------------------------------------------------------- several tiers

TIERS = [(32, "int8"), (16, "float16"), (64, "ubinary"), (32, "float16"), (96, "int8")]


def _multi(x: np.ndarray, **params: object) -> Index:
    index = Index.from_embeddings(x, shortlist_dim=32, shortlist_precision="int8", **params)
    for dim, precision in TIERS[1:]:
        index.add_tier(dim, precision)
    return index


@pytest.mark.parametrize("rerank_precision", ["float32", "float16"])
def test_each_tier_of_a_multi_tier_index_equals_a_single_tier_index(rerank_precision: str) -> None:
    x = mrl_like(3000)
    q = mrl_like(20, seed=5)
    multi = _multi(x, rerank_precision=rerank_precision)
    assert multi.tiers == TIERS
    for dim, precision in TIERS:
        # the reference tier is built from the vectors as the rerank tier holds them, which is
        # what add_tier builds from (float16 rounding included)
        ref_x = multi._store.gather(np.arange(len(multi))) if rerank_precision == "float16" else x
        single = Index.from_embeddings(
            ref_x, shortlist_dim=dim, shortlist_precision=precision, rerank_precision=rerank_precision
        )
        want = single.search(q, 10, oversample=4)
        got = multi.search(q, 10, oversample=4, shortlist_dim=dim, shortlist_precision=precision)
        assert got.ids == want.ids, (dim, precision)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert got.stats["shortlist"]["dim"] == dim and got.stats["shortlist"]["precision"] == precision
    # the tiers really differ: a coarse tier finds fewer of the exact neighbours than a fine one
    ref = multi.search(q, 10, exact=True).positions
    coarse = recall(multi.search(q, 10, oversample=1, shortlist_dim=16).positions, ref)
    fine = recall(multi.search(q, 10, oversample=1, shortlist_dim=96).positions, ref)
    assert fine > coarse + 0.2, (coarse, fine)


def test_tier_picking_rules() -> None:
    x = mrl_like(500)
    multi = _multi(x)
    q = x[:3]
    pick = lambda **kw: tuple(multi.search(q, 3, **kw).stats["shortlist"][f] for f in ("dim", "precision"))  # noqa: E731
    assert pick() == (32, "int8")  # the default
    assert pick(shortlist_dim=32) == (32, "int8")  # two 32-d tiers: the default precision's
    assert pick(shortlist_dim=16) == (16, "float16")  # the only 16-d tier
    assert pick(shortlist_precision="ubinary") == (64, "ubinary")
    assert pick(shortlist_precision="float16") == (32, "float16")  # two float16: the default dim's
    assert pick(shortlist_dim=32, shortlist_precision="float16") == (32, "float16")
    with pytest.raises(
        DimError,
        match=r"no 8-d shortlist tier \(its tiers: 32-d int8 \(default\), 16-d float16, "
        r"64-d ubinary, 32-d float16, 96-d int8\); add one with index.add_tier\(8, 'int8'\)",
    ):
        multi.search(q, shortlist_dim=8)
    with pytest.raises(DimError, match=r"no 16-d int8 shortlist tier .*add_tier\(16, 'int8'\)"):
        multi.search(q, shortlist_dim=16, shortlist_precision="int8")
    with pytest.raises(DimError, match="no 16-d int8 shortlist tier"):
        multi.search(q, exact=True, shortlist_dim=16, shortlist_precision="int8")  # checked for exact too
    with pytest.raises(ValueError, match="shortlist_precision must be one of"):
        multi.search(q, shortlist_precision="int4")
    two = Index.from_embeddings(x, shortlist_dim=32, shortlist_precision="int8")
    two.add_tier(64, "float16")
    two.add_tier(64, "ubinary")
    with pytest.raises(
        DimError,
        match=r"2 64-d shortlist tiers .*pass shortlist_dim=64, shortlist_precision="
        r"'float16' or shortlist_dim=64, shortlist_precision='ubinary'",
    ):
        two.search(q, shortlist_dim=64)


def test_add_tier_checks_its_arguments() -> None:
    x = mrl_like(200)
    index = Index.from_embeddings(x, rerank_dim=48)
    with pytest.raises(DimError, match="between 1 and the rerank tier's 48 dims"):
        index.add_tier(64, "float16")
    with pytest.raises(DimError, match="ubinary tier needs dim divisible by 8, got 12"):
        index.add_tier(12, "ubinary")
    with pytest.raises(ValueError, match="precision must be one of"):
        index.add_tier(16, "int4")
    with pytest.raises(DimError, match="between 1 and"):
        index.add_tier(0, "int8")
    index.add_tier(16, "float16")
    before = index._tiers[(16, "float16")]
    index.add_tier(16, "float16")  # an existing tier: a no-op
    assert index.tiers == [(96, "int8"), (16, "float16")] and index._tiers[(16, "float16")] is before
    assert index.tier_bytes == {(96, "int8"): 200 * 96 + 96 * 4, (16, "float16"): 200 * 16 * 2}
    assert index.memory["shortlist"] == sum(index.tier_bytes.values())


def test_add_after_add_tier_extends_every_tier(tmp_path: Path) -> None:
    x = mrl_like(3000)
    q = mrl_like(10, seed=8)
    multi = _multi(x[:2000], rerank_precision="float32")
    multi.add(x[2000:])
    assert all(len(multi._tiers[t]) == 3000 for t in TIERS)
    for dim, precision in TIERS:
        # the same history in a single-tier index: int8 scales fitted to the first 2000 rows
        single = Index.from_embeddings(
            x[:2000], shortlist_dim=dim, shortlist_precision=precision, rerank_precision="float32"
        )
        single.add(x[2000:])
        kw = {"shortlist_dim": dim, "shortlist_precision": precision}
        got = multi.search(q, 10, oversample=4, **kw)
        want = single.search(q, 10, oversample=4)
        assert got.ids == want.ids, (dim, precision)
        np.testing.assert_array_equal(got.scores, want.scores)
        assert multi.search(x[2500], 1, **kw).ids == [[2500]]  # a new row, found through this tier
    # an empty index takes tiers too; they are built with its first rows
    empty = Index(96, shortlist_dim=32)
    empty.add_tier(16, "float16")
    empty.save(tmp_path / "empty")
    loaded = Index.load(tmp_path / "empty")
    assert loaded.tiers == [(32, "int8"), (16, "float16")] and loaded.memory["shortlist"] == 0
    loaded.add(x[:2000])
    want = Index.from_embeddings(x[:2000], shortlist_dim=16, shortlist_precision="float16")
    assert loaded.search(q, 5, shortlist_dim=16).ids == want.search(q, 5).ids


def test_multi_tier_save_load_round_trip(tmp_path: Path) -> None:
    x = mrl_like(3000)
    q = mrl_like(20, seed=6)
    multi = _multi(x, oversample=8)
    before = {t: multi.search(q, 7, shortlist_dim=t[0], shortlist_precision=t[1]) for t in TIERS}
    multi.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["shortlist_config"] == {"dim": 32, "precision": "int8"}
    assert sorted((e["dim"], e["precision"]) for e in manifest["shortlist"]) == sorted(TIERS)
    # the default tier is the last entry: a reader from before add_tier keeps the last one it reads
    assert (manifest["shortlist"][-1]["dim"], manifest["shortlist"][-1]["precision"]) == (32, "int8")
    loaded = Index.load(tmp_path / "ix")
    assert loaded.tiers == TIERS
    assert (loaded.shortlist_dim, loaded.shortlist_precision, loaded.oversample) == (32, "int8", 8)
    assert loaded.tier_bytes == multi.tier_bytes
    for t in TIERS:
        after = loaded.search(q, 7, shortlist_dim=t[0], shortlist_precision=t[1])
        assert after.ids == before[t].ids, t
        np.testing.assert_array_equal(after.scores, before[t].scores)
    # an index written before add_tier existed (one entry, the default) still loads
    single = Index.from_embeddings(x, shortlist_dim=64, shortlist_precision="ubinary")
    single.save(tmp_path / "one")
    assert len(json.loads((tmp_path / "one" / "index.json").read_text())["shortlist"]) == 1
    assert Index.load(tmp_path / "one").tiers == [(64, "ubinary")]
    # a manifest whose default tier has no entry is named
    manifest["shortlist"] = manifest["shortlist"][:-1]
    (tmp_path / "ix" / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"invalid 'shortlist' .*default tier \(32, 'int8'\)"):
        Index.load(tmp_path / "ix")


def test_search_stats() -> None:
    x = mrl_like(1000)
    q = mrl_like(4, seed=2)
    index = Index.from_embeddings(x, shortlist_dim=32, oversample=8)
    st = index.search(q, 10).stats
    assert st["queries"] == 4 and "embed_seconds" not in st and "exact" not in st
    assert {k: v for k, v in st["shortlist"].items() if k != "seconds"} == {
        "dim": 32,
        "precision": "int8",
        "rows": 1000,
        "candidates": 80,
        "engine": "onnxruntime",
    }
    assert {k: v for k, v in st["rerank"].items() if k != "seconds"} == {
        "dim": 96,
        "precision": "float16",
        "rows": 80,
        "kept": 10,
    }
    assert st["shortlist"]["seconds"] > 0 and st["rerank"]["seconds"] > 0
    st = index.search(q, 300, rerank_dim=48).stats  # 300 x 8 > 1000: the shortlist keeps every row
    assert st["shortlist"]["candidates"] == 1000 and st["rerank"]["rows"] == 1000
    assert st["rerank"]["kept"] == 300 and st["rerank"]["dim"] == 48
    st = index.search(q, 2000, exact=True).stats
    assert set(st) == {"queries", "exact"}
    assert {k: v for k, v in st["exact"].items() if k != "seconds"} == {
        "dim": 96,
        "precision": "float16",
        "rows": 1000,
        "kept": 1000,
    }
    assert st["exact"]["seconds"] > 0


def test_text_query_stats_time_the_embedding() -> None:
    emb = Embedder()
    texts = ["a cat sits on the mat", "a dog runs in the park", "the stock market fell today"]
    index = Index.build(emb, texts)
    hits = index.search(["a kitten", "shares dropped"], 2)
    assert hits.ids[1][0] == 2
    st = hits.stats
    assert st["queries"] == 2 and st["embed_seconds"] > 0
    assert st["shortlist"]["rows"] == 3 and st["shortlist"]["candidates"] == 3 and st["rerank"]["kept"] == 2


def test_search_result_constructors_without_stats() -> None:
    r = SearchResult([[1]], np.ones((1, 1), np.float32), np.zeros((1, 1), np.int64))
    assert r.stats == {} and len(r) == 1


# ----------------------------------------------------------------------------- bad input


def test_bad_queries_and_k() -> None:
    x = mrl_like(50)
    index = Index.from_embeddings(x)
    for k in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="k must be a positive int"):
            index.search(x[:1], k)  # type: ignore[arg-type]
    everything = index.search(x[:2], 500)
    assert everything.scores.shape == (2, 50)
    assert (np.diff(everything.scores, axis=1) <= 0).all()
    q = x[:3].copy()
    q[1, 4] = np.nan
    with pytest.raises(InputError, match=r"rows \[1\] contain NaN"):
        index.search(q)
    with pytest.raises(DimError, match="query embeddings have dim 95, this index holds dim 96"):
        index.search(x[:2, :95])
    with pytest.raises(DimError, match="shortlist tier holds 96 dims, not 32"):
        Index.from_embeddings(x, shortlist_dim=96).search(x[:1], shortlist_dim=32)
    with pytest.raises(DimError, match="rerank_dim must be between 1 and"):
        index.search(x[:1], rerank_dim=200)
    with pytest.raises(InputError, match="index is empty"):
        Index(96).search(x[:1])
    with pytest.raises(DimError, match="ubinary shortlist needs shortlist_dim divisible by 8"):
        Index(96, shortlist_dim=12, shortlist_precision="ubinary")
    with pytest.raises(InputError, match="contain duplicates"):
        Index.from_embeddings(x[:2], ["a", "a"])
    with pytest.raises(InputError, match="rows \\[0\\] are all zeros"):
        Index.from_embeddings(np.zeros((1, 8)))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    Index.from_embeddings(mrl_like(300), fields=[{"i": i} for i in range(300)]).save(tmp_path / "ix")
    return tmp_path / "ix"


def test_damaged_index_directories_are_named(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError, match="no such index directory"):
        Index.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match=r"empty/index.json: missing"):
        Index.load(tmp_path / "empty")
    rerank = saved / "rerank.npy"
    data = rerank.read_bytes()
    rerank.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=r"rerank.npy: \d+ bytes, the manifest says \d+ \(truncated"):
        Index.load(saved)
    rerank.write_bytes(data)
    (saved / "fields.jsonl").unlink()
    with pytest.raises(IndexFormatError, match=r"fields.jsonl: missing"):
        Index.load(saved)


def test_newer_format_and_garbage_manifest(saved: Path) -> None:
    manifest = json.loads((saved / "index.json").read_text())
    (saved / "index.json").write_text(json.dumps(manifest | {"format_version": _store.FORMAT_VERSION + 1}))
    with pytest.raises(IndexFormatError, match="written by a newer mrl-infer"):
        Index.load(saved)
    (saved / "index.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        Index.load(saved)


def test_a_failed_save_leaves_no_half_written_index(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = Index.load(saved)
    index.add(mrl_like(10, seed=7))

    def boom(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_store, "_write_fields", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(saved.parent / "new")
    with pytest.raises(OSError, match="disk full"):
        index.save(saved, overwrite=True)
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ix"]
    assert len(Index.load(saved)) == 300  # the old index is untouched
    with pytest.raises(FileExistsError, match="already exists"):
        index.save(saved)


# ----------------------------------------------------------------------------- helpers


def test_similarity_and_semantic_search_match_numpy() -> None:
    a, b = mrl_like(4, seed=1), mrl_like(300, seed=2)
    np.testing.assert_allclose(similarity(a, b), a @ b.T, atol=1e-6)
    with pytest.raises(DimError, match="a has dim 96, b has dim 32"):
        similarity(a, b[:, :32])
    hits = semantic_search(a, b, k=5)
    order, scores = brute(b, a, 5)
    assert [[h["corpus_id"] for h in row] for row in hits] == order.tolist()
    np.testing.assert_allclose([[h["score"] for h in row] for row in hits], scores, atol=1e-6)


# ----------------------------------------------------------------------------- CLI


def test_cli_index_build_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mrl_infer.cli import main

    texts = [
        "a cat sits on the mat",
        "a dog runs in the park",
        "the stock market fell today",
        "rain in Spain",
    ]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "ix"
    assert main(["index", "build", str(src), "-o", str(out), "--id-field", "id", "-q"]) == 0
    assert not (tmp_path / "ix.mrl-index").exists()
    capsys.readouterr()
    assert main(["search", str(out), "a kitten on a rug", "shares dropped", "-k", "1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["results"][0]["id"] for r in lines] == ["t0", "t2"]
    assert lines[0]["results"][0]["text"] == texts[0]
    assert main(["index", "build", str(src), "-o", str(out), "-q"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err

    emb = Embedder().encode(texts)
    np.save(tmp_path / "e.npy", emb)
    assert (
        main(["index", "build", "--from-embeddings", str(tmp_path / "e.npy"), "-o", str(tmp_path / "ix2")])
        == 0
    )
    r = subprocess.run(
        [sys.executable, "-m", "mrl_infer.cli", "search", str(tmp_path / "ix2"), "-k", "2"],
        input="heavy rain\n\nmarkets\n",
        capture_output=True,
        text=True,
        check=True,
    )
    blocks = r.stdout.split("# ")[1:]
    assert [b.splitlines()[0] for b in blocks] == ["heavy rain", "markets"]
    assert blocks[0].splitlines()[1].split()[2] == "3"
    assert main(["search", str(tmp_path / "missing"), "q"]) == 2
    assert "no such index directory" in capsys.readouterr().err


def test_cli_index_build_tiers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mrl_infer.cli import main

    x = Embedder().encode([f"text number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain"] * 20)])
    np.save(tmp_path / "e.npy", x)
    base = ["index", "build", "--from-embeddings", str(tmp_path / "e.npy"), "-q"]
    out = tmp_path / "ix"
    assert main([*base, "-o", str(out), "--tier", "64:float16", "--tier", "256:ubinary"]) == 0
    index = Index.load(out)
    assert index.tiers == [(128, "int8"), (64, "float16"), (256, "ubinary")]
    q = x[[3, 40]]
    want = Index.from_embeddings(x, shortlist_dim=64, shortlist_precision="float16").search(q, 3)
    assert index.search(q, 3, shortlist_dim=64).ids == want.ids
    capsys.readouterr()
    assert main(["search", str(out), "text about rain", "-k", "2", "--json", "--shortlist-dim", "256"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == 2
    assert main(["search", str(out), "q", "--shortlist-dim", "32"]) == 2
    assert "no 32-d shortlist tier" in capsys.readouterr().err
    for bad, message in (
        ("64", "'64' is not DIM:PRECISION"),
        ("64:int4", "'64:int4' is not DIM:PRECISION"),
        ("x:int8", "'x:int8' is not DIM:PRECISION"),
        ("0:int8", "'0:int8' is not DIM:PRECISION"),
        ("12:ubinary", "'12:ubinary': a ubinary tier needs DIM divisible by 8"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*base, "-o", str(tmp_path / "bad"), "--tier", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--tier" in err and message in err, (bad, err)
    assert main([*base, "-o", str(tmp_path / "bad"), "--tier", "512:int8"]) == 2  # above the model's 384
    assert "add_tier: dim must be between 1 and the rerank tier's 384 dims" in capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "bad"), "--rerank-dim", "128", "--tier", "256:int8"]) == 2
    assert "--tier 256:int8: DIM must be <= --rerank-dim 128" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_import_and_search_load_no_heavy_modules() -> None:
    code = (
        "import sys, numpy as np, mrl_infer\n"
        "x = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)\n"
        "mrl_infer.Index.from_embeddings(x).search(x[:2], 3)\n"
        "heavy = ('torch', 'transformers', 'onnx', 'pyarrow', 'ray', 'starlette', 'uvicorn', 'faiss')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


# ----------------------------------------------------------------------------- the faiss engine


def _hamming(tier_codes: np.ndarray, q_codes: np.ndarray) -> np.ndarray:
    """Reference Hamming distances [Q, n] by unpacking bits in numpy."""
    a = np.unpackbits(q_codes, axis=1).astype(np.int32)
    b = np.unpackbits(tier_codes, axis=1).astype(np.int32)
    return a.sum(1, keepdims=True) + b.sum(1)[None, :] - 2 * a @ b.T


def test_faiss_hamming_shortlist_matches_numpy_popcount() -> None:
    pytest.importorskip("faiss")
    x = mrl_like(3000, dim=96)
    q = mrl_like(20, dim=96, seed=5)
    tier = _scan.make_tier(x, 96, "ubinary")
    scores, rows = _scan.shortlist_hamming(tier, q, 50)
    ref = _hamming(tier.data, np.packbits(_scan.prefix_normalize(q, 96) > 0, axis=1))
    # distances tie often, so compare distances, not ids: the 50 best, and each row's own distance
    np.testing.assert_array_equal(-scores, np.sort(ref, axis=1)[:, :50])
    np.testing.assert_array_equal(-scores, np.take_along_axis(ref, rows, 1))


def test_faiss_funnel_equals_exact_when_candidates_cover_the_index() -> None:
    pytest.importorskip("faiss")
    x = mrl_like(500)
    q = mrl_like(30, seed=2)
    index = Index.from_embeddings(x, shortlist_dim=64, shortlist_precision="ubinary")
    got = index.search(q, 10, oversample=50, engine="faiss")
    ref = index.search(q, 10, exact=True)
    np.testing.assert_array_equal(got.positions, ref.positions)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)
    assert got.stats["shortlist"]["engine"] == "faiss"


def test_faiss_engine_on_real_embeddings_ranks_looser_than_the_asymmetric_scan(mnli) -> None:
    pytest.importorskip("faiss")
    _docs, _, dv, qv, _emb = mnli
    index = Index.from_embeddings(dv, shortlist_dim=384, shortlist_precision="ubinary")
    ref, _ = brute(dv, qv, 10)
    hamming = recall(index.search(qv, 10, oversample=4, engine="faiss").positions, ref)
    asym = recall(index.search(qv, 10, oversample=4).positions, ref)
    wide = recall(index.search(qv, 10, oversample=32, engine="faiss").positions, ref)
    # measured with the default model (5,000 MNLI docs, 300 queries): Hamming x4 0.894, asymmetric
    # x4 0.972, Hamming x32 0.998
    assert 0.85 <= hamming < asym - 0.03 and wide >= 0.99, (hamming, asym, wide)


def test_faiss_engine_sees_rows_added_after_its_first_search() -> None:
    pytest.importorskip("faiss")
    x = mrl_like(2000)
    q = mrl_like(5, seed=9)
    index = Index.from_embeddings(x, shortlist_dim=96, shortlist_precision="ubinary")
    index.search(q, 3, engine="faiss")  # builds faiss' copy of the codes
    index.add(q, ids=[f"new{i}" for i in range(5)])
    got = index.search(q, 1, engine="faiss")
    assert [row[0] for row in got.ids] == [f"new{i}" for i in range(5)]


def test_faiss_engine_bad_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    x = mrl_like(200)
    index = Index.from_embeddings(x)  # one 96-d int8 tier
    with pytest.raises(InputError, match=r"ubinary tiers only.*96-d int8.*add_tier\(96, 'ubinary'\)"):
        index.search(x[:2], 5, engine="faiss")
    with pytest.raises(ValueError, match="engine must be one of"):
        index.search(x[:2], 5, engine="annoy")
    index.add_tier(96, "ubinary")
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    with pytest.raises(ImportError, match=r"pip install 'mrl-infer\[faiss\]'"):
        index.search(x[:2], 5, shortlist_precision="ubinary", engine="faiss")


# ----------------------------------------------------------------------------- the hnsw engine


def test_hnsw_funnel_equals_exact_when_candidates_cover_the_index() -> None:
    pytest.importorskip("faiss")
    x = mrl_like(500)
    q = mrl_like(30, seed=2)
    index = Index.from_embeddings(x)
    index.add_hnsw(m=16)
    got = index.search(q, 10, oversample=50, engine="hnsw")  # 500 candidates: every row
    ref = index.search(q, 10, exact=True)
    np.testing.assert_array_equal(got.positions, ref.positions)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)
    assert got.stats["shortlist"] | {"seconds": 0} == {
        "dim": 96,
        "precision": "int8",
        "ef_search": 500,
        "rows": 500,
        "candidates": 500,
        "engine": "hnsw",
        "seconds": 0,
    }


def test_hnsw_engine_on_real_embeddings(mnli) -> None:
    pytest.importorskip("faiss")
    _docs, _, dv, qv, _emb = mnli
    index = Index.from_embeddings(dv)
    index.add_hnsw()
    ref, _ = brute(dv, qv, 10)
    default = recall(index.search(qv, 10, engine="hnsw").positions, ref)
    narrow = recall(index.search(qv, 10, engine="hnsw", oversample=1, ef_search=10).positions, ref)
    index.add_hnsw(64)  # a graph over a 64-d prefix replaces the 384-d one
    prefix = recall(index.search(qv, 10, engine="hnsw").positions, ref)
    # measured with the default model (5,000 MNLI docs, 300 queries): 384-d graph at the defaults
    # (x4, ef_search 160) 0.9993, x1 with ef_search 10 0.925, a 64-d graph at the defaults 0.691
    assert default >= 0.99 and narrow < default - 0.03 and prefix < default - 0.05, (default, narrow, prefix)
    assert index.hnsw == {"dim": 64, "m": 32, "ef_construction": 80}


def test_hnsw_save_load_reads_the_graph_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    x = mrl_like(3000)
    q = mrl_like(20, seed=4)
    index = Index.from_embeddings(x, ids=[f"d{i}" for i in range(3000)])
    index.add_hnsw(m=16, ef_construction=40)
    before = index.search(q, 5, engine="hnsw")
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert manifest["hnsw"] == {
        "dim": 96,
        "m": 16,
        "ef_construction": 40,
        "count": 3000,
        "file": "hnsw_96.faiss",
    }
    assert manifest["files"]["hnsw_96.faiss"] == (tmp_path / "ix" / "hnsw_96.faiss").stat().st_size
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "faiss", None)  # loading and the other engines do not need faiss
        loaded = Index.load(tmp_path / "ix")
        assert loaded.search(q, 5).ids == index.search(q, 5).ids
        with pytest.raises(
            ImportError, match=r"engine='hnsw' needs faiss-cpu: pip install 'mrl-infer\[faiss\]'"
        ):
            loaded.search(q, 5, engine="hnsw")
    after = loaded.search(q, 5, engine="hnsw")
    assert after.ids == before.ids
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)


def test_hnsw_graph_takes_rows_added_after_building_and_after_loading(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    x = mrl_like(2000)
    new = mrl_like(10, seed=11)
    index = Index.from_embeddings(x)
    index.add_hnsw()
    index.add(new[:5], ids=[f"a{i}" for i in range(5)])
    assert [r[0] for r in index.search(new[:5], 1, engine="hnsw").ids] == [f"a{i}" for i in range(5)]
    index.save(tmp_path / "ix")
    loaded = Index.load(tmp_path / "ix")
    loaded.add(new[5:], ids=[f"b{i}" for i in range(5)])  # before the graph is read: added when it is
    assert [r[0] for r in loaded.search(new[5:], 1, engine="hnsw").ids] == [f"b{i}" for i in range(5)]
    loaded.save(tmp_path / "ix", overwrite=True)
    again = Index.load(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["hnsw"]["count"] == 2010
    assert [r[0] for r in again.search(new, 1, engine="hnsw").ids] == [
        *(f"a{i}" for i in range(5)),
        *(f"b{i}" for i in range(5)),
    ]


def test_hnsw_on_an_empty_index_is_built_with_the_first_rows(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    index = Index(96)
    index.add_hnsw(48)
    index.save(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / "index.json").read_text())["hnsw"]["file"] is None
    loaded = Index.load(tmp_path / "ix")
    x = mrl_like(400)
    loaded.add(x)
    got = loaded.search(x[:20], 10, engine="hnsw", oversample=40)
    np.testing.assert_array_equal(got.positions, loaded.search(x[:20], 10, exact=True).positions)
    assert got.stats["shortlist"]["dim"] == 48


def test_rerank_puts_missing_candidates_last() -> None:
    x = mrl_like(50)
    store = _scan.RowStore(96, "float32", [x])
    cand = np.array([[3, -1, 7, 9], [8, -1, -1, 5], [-1, -1, -1, -1]])
    scores, rows = _scan.rerank(store, x[:3], cand, 3, 96)
    assert set(rows[0].tolist()) == {3, 7, 9} and np.isfinite(scores[0]).all()
    assert sorted(rows[1, :2].tolist()) == [5, 8] and np.isfinite(scores[1, :2]).all()
    assert scores[1, 2] == -np.inf and (scores[2] == -np.inf).all()


def test_hnsw_queries_the_graph_cannot_fill_are_answered_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    from mrl_infer.search import _hnsw

    x = mrl_like(1000)
    q = mrl_like(3, seed=3)
    index = Index.from_embeddings(x)
    index.add_hnsw()
    real = _hnsw.shortlist

    def fewer(*args: object) -> np.ndarray:
        rows = real(*args)  # type: ignore[arg-type]
        rows[1, 3:] = -1  # the second query gets 3 rows, fewer than k
        return rows

    monkeypatch.setattr(_hnsw, "shortlist", fewer)
    got = index.search(q, 5, engine="hnsw")
    ref = index.search(q, 5, exact=True)
    np.testing.assert_array_equal(got.positions[1], ref.positions[1])
    assert got.stats["shortlist"]["exact_queries"] == 1


def test_hnsw_bad_arguments_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("faiss")
    x = mrl_like(300)
    index = Index.from_embeddings(x, rerank_dim=64)
    with pytest.raises(InputError, match=r"needs an HNSW graph.*index.add_hnsw\(\)"):
        index.search(x[:2], 5, engine="hnsw")
    with pytest.raises(InputError, match="ef_search applies to engine='hnsw' only"):
        index.search(x[:2], 5, ef_search=100)
    for dim in (0, 65):
        with pytest.raises(DimError, match="add_hnsw: dim must be between 1 and the rerank tier's 64 dims"):
            index.add_hnsw(dim)
    with pytest.raises(InputError, match="add_hnsw: m must be an int >= 2, got 1"):
        index.add_hnsw(m=1)
    with pytest.raises(InputError, match="add_hnsw: ef_construction must be an int >= 1, got 0"):
        index.add_hnsw(ef_construction=0)
    index.add_hnsw()
    with pytest.raises(InputError, match="shortlist_dim and shortlist_precision name a shortlist tier"):
        index.search(x[:2], 5, engine="hnsw", shortlist_dim=96)
    with pytest.raises(InputError, match="ef_search must be a positive int, got 0"):
        index.search(x[:2], 5, engine="hnsw", ef_search=0)
    with monkeypatch.context() as mp:
        mp.setitem(sys.modules, "faiss", None)
        with pytest.raises(ImportError, match=r"pip install 'mrl-infer\[faiss\]'"):
            index.add_hnsw()
    index.save(tmp_path / "ix")
    graph = tmp_path / "ix" / "hnsw_64.faiss"
    data = graph.read_bytes()
    graph.write_bytes(data[:1000])
    with pytest.raises(
        IndexFormatError, match=r"hnsw_64.faiss: 1000 bytes, the manifest says \d+ \(truncated"
    ):
        Index.load(tmp_path / "ix")
    graph.write_bytes(data)
    mpath = tmp_path / "ix" / "index.json"
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps(manifest | {"hnsw": manifest["hnsw"] | {"count": 7}}))
    with pytest.raises(IndexFormatError, match=r"invalid 'hnsw' \(a graph of 7 rows"):
        Index.load(tmp_path / "ix")
    mpath.write_text(json.dumps(manifest | {"hnsw": manifest["hnsw"] | {"file": "../hnsw_64.faiss"}}))
    with pytest.raises(IndexFormatError, match=r"invalid 'hnsw' \(file must be a file name inside"):
        Index.load(tmp_path / "ix")
    mpath.write_text(json.dumps(manifest | {"hnsw": manifest["hnsw"] | {"dim": 32}}))
    loaded = Index.load(tmp_path / "ix")  # the file is read on first use, and checked then
    with pytest.raises(
        IndexFormatError, match=r"hnsw_64.faiss: a IndexHNSWSQ of 300 rows of dim 64, the manifest"
    ):
        loaded.search(x[:2], 5, engine="hnsw")
    graph.write_bytes(b"\0" * len(data))
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match=r"hnsw_64.faiss: unreadable HNSW graph"):
        Index.load(tmp_path / "ix").search(x[:2], 5, engine="hnsw")


def test_cli_index_build_hnsw_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("faiss")
    from mrl_infer.cli import main

    x = Embedder().encode([f"text number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain"] * 20)])
    np.save(tmp_path / "e.npy", x)
    out = tmp_path / "ix"
    assert (
        main(["index", "build", "--from-embeddings", str(tmp_path / "e.npy"), "-o", str(out), "--hnsw"]) == 0
    )
    assert Index.load(out).hnsw == {"dim": 384, "m": 32, "ef_construction": 80}
    capsys.readouterr()
    args = ["search", str(out), "text about rain", "-k", "3", "--json"]
    assert main([*args, "--engine", "hnsw", "--ef-search", "60"]) == 0
    hnsw = json.loads(capsys.readouterr().out)["results"]
    assert main([*args, "--exact"]) == 0
    assert hnsw == json.loads(capsys.readouterr().out)["results"]  # 60 rows: the graph returns all
    assert main(["search", str(tmp_path / "ix"), "q", "--ef-search", "60"]) == 2
    assert "ef_search applies to engine='hnsw' only" in capsys.readouterr().err
