"""The funnel's two tiers in Qdrant (mrl_infer.search._qdrant), in qdrant-client's local mode.

Real embeddings of the shipped default model (MNLI-val texts from mrl_infer/eval_data): the Qdrant
prefetch-then-rerank query against ``Index.search``. Local mode is an exhaustive Python engine
(about 15-50 ms per query here), so the sets are small: 2,000 documents, 100 queries.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrl_infer import DimError, Embedder, InputError
from mrl_infer.search import Index, qdrant_search, to_qdrant
from mrl_infer.search._qdrant import METADATA_KEY

qdrant_client = pytest.importorskip("qdrant_client")  # in [dev]: CI has it; skips only without it
models = qdrant_client.models

RETRIEVAL = Path(__file__).resolve().parents[1] / "mrl_infer" / "eval_data" / "retrieval"
N_DOCS, N_QUERIES = 2000, 100


def recall(found: np.ndarray, ref: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), ref.tolist(), strict=True)])
    )


def agreement(a: list[list], b: list[list]) -> float:
    """Share of queries whose top-k ids are identical, in the same order."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.fixture(scope="module")
def mnli() -> tuple[list[str], list[str], np.ndarray, np.ndarray, Embedder]:
    """Document ids, texts, document and query embeddings (full 384 dims), and the embedder."""

    def read(name: str) -> list[list[str]]:
        with gzip.open(RETRIEVAL / f"{name}.tsv.gz", "rt", encoding="utf-8") as fh:
            next(fh)
            return [line.rstrip("\n").split("\t") for line in fh]

    docs = read("corpus")[:N_DOCS]
    queries = [text for _, text in read("queries")[:N_QUERIES]]
    emb = Embedder()
    dv = emb.encode([text for _, text in docs], batch_size=64)
    qv = emb.encode(queries, batch_size=64)
    return [i for i, _ in docs], [t for _, t in docs], dv, qv, emb


@pytest.fixture(scope="module")
def default_index(mnli) -> Index:
    """The default funnel (128-d int8 shortlist, oversample 32, float16 rerank) with string ids and
    the texts as fields, plus a 128-d float16 and a 64-d int8 tier."""
    ids, texts, dv, _qv, emb = mnli
    index = Index.from_embeddings(dv, ids, model=emb, fields=[{"text": t} for t in texts])
    index.add_tier(128, "float16")
    index.add_tier(64, "int8")
    return index


@pytest.fixture(scope="module")
def client(default_index: Index):
    """A local-mode client holding the default index as collection "docs"."""
    c = qdrant_client.QdrantClient(":memory:")
    to_qdrant(default_index, c, "docs")
    yield c
    c.close()


def test_import_does_not_load_qdrant_client() -> None:
    code = (
        "import sys, mrl_infer, mrl_infer.search\n"
        "from mrl_infer.search import to_qdrant, qdrant_search\n"
        "print('qdrant_client' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert r.stdout.strip() == "False", r.stdout + r.stderr


def test_collection_layout(default_index: Index, client) -> None:
    info = client.get_collection("docs")
    sizes = {name: p.size for name, p in info.config.params.vectors.items()}
    assert sizes == {"mrl128": 128, "mrl64": 64, "full": 384}  # one vector per distinct tier dim
    assert {p.distance for p in info.config.params.vectors.values()} == {models.Distance.COSINE}
    assert info.points_count == N_DOCS
    record = info.config.metadata[METADATA_KEY]
    assert record["complete"] is True and record["count"] == N_DOCS
    assert record["model"]["fingerprint"] == default_index.model["fingerprint"]
    assert [e["dim"] for e in record["shortlist"]] == [128, 64]  # the default tier's dim first
    # the stored vectors are the renormalized prefixes of the rerank tier's rows
    (p,) = client.retrieve("docs", [7], with_vectors=True)
    row = np.asarray(default_index._store.gather(np.array([7])), np.float32)[0]
    for name, d in (("mrl128", 128), ("mrl64", 64), ("full", 384)):
        want = row[:d] / np.linalg.norm(row[:d])
        np.testing.assert_allclose(p.vector[name], want, atol=1e-6)


def test_covering_prefetch_equals_exact_search(mnli) -> None:
    """``k * oversample >= n``: the prefetch keeps every point, so the rerank is exact search.

    A float32 rerank tier: with float16 Qdrant (cosine) renormalizes the float16-rounded rows,
    which ``Index`` scores as stored, so scores differ by up to ~5e-5 and near-ties can swap.
    """
    ids, _texts, dv, qv, _emb = mnli
    q = qv[:50]  # a covering prefetch is the slow case of local mode (every point through the filter)
    for index in (
        Index.from_embeddings(dv, ids, rerank_precision="float32"),
        Index.from_embeddings(dv[:500], ids[:500], rerank_precision="float32", rerank_dim=256),
    ):
        c = qdrant_client.QdrantClient(":memory:")
        to_qdrant(index, c, "c")
        n = len(index)
        got = qdrant_search(c, "c", q, 10, oversample=-(-n // 10))
        exact = index.search(q, 10, exact=True)
        assert got.ids == exact.ids
        np.testing.assert_array_equal(got.positions, exact.positions)
        np.testing.assert_allclose(got.scores, exact.scores, atol=1e-5)
        assert got.stats["shortlist"]["candidates"] >= n and got.stats["rerank"]["dim"] == index.rerank_dim


def test_default_setting_recall_and_agreement_with_index(default_index: Index, client, mnli) -> None:
    """shortlist 128, oversample 32, k 10: recall against exact search, and the same ids as ``Index``.

    Measured here (2,000 docs, 100 queries): recall@10 0.998 for both (0.999 with the 7-bit int8
    default); the ids (same order) equal ``Index.search``'s on 99/100 queries for its int8 tier and
    its float16 tier (100/100). At oversample 4
    the int8 tier's candidates differ more from Qdrant's float32 prefix: 92/100 queries agree with
    the full-range int8 default (98/100 with the 7-bit file before it), recall 0.881 for both
    (0.895); the float16 tier rounds far less and agrees on 99/100 (100/100). The thresholds
    leave room for a near-tie or two across BLAS builds. They fail for a wrong prefetch: one on
    dims 1..128 of the query instead of 0..127 gave recall 0.19 and 0/100 agreeing at both
    settings, and the 64-d vector agrees with the 128-d float16 tier on 11/100 (the last assert).
    """
    _ids, _texts, _dv, qv, _emb = mnli
    exact = default_index.search(qv, 10, exact=True)
    got = qdrant_search(client, "docs", qv, 10, shortlist_dim=128, oversample=32)
    ours = default_index.search(qv, 10, shortlist_dim=128, oversample=32)
    assert recall(got.positions, exact.positions) >= 0.99
    assert recall(ours.positions, exact.positions) >= 0.99
    assert agreement(got.ids, ours.ids) >= 0.97
    assert got.stats["shortlist"] == {"dim": 128, "vector": "mrl128", "candidates": 320}

    low = qdrant_search(client, "docs", qv, 10, shortlist_dim=128, oversample=4)
    ours_int8 = default_index.search(qv, 10, shortlist_dim=128, oversample=4)
    ours_f16 = default_index.search(qv, 10, shortlist_dim=128, shortlist_precision="float16", oversample=4)
    assert agreement(low.ids, ours_int8.ids) >= 0.9
    assert agreement(low.ids, ours_f16.ids) >= 0.98
    assert abs(recall(low.positions, exact.positions) - recall(ours_int8.positions, exact.positions)) < 0.01
    # the defaults are the index's: its default tier's dim (128) and its oversample (32)
    assert qdrant_search(client, "docs", qv[:10], 10).ids == got.ids[:10]
    # a smaller prefix is a different shortlist: it must not look like the 128-d one
    low64 = qdrant_search(client, "docs", qv, 10, shortlist_dim=64, oversample=4)
    assert agreement(low64.ids, ours_f16.ids) < 0.9


def test_ids_and_fields_round_trip(default_index: Index, client, mnli, tmp_path: Path) -> None:
    ids, texts, _dv, qv, _emb = mnli
    got = qdrant_search(client, "docs", qv[:5], 3)
    assert got.ids == [[ids[p] for p in row] for row in got.positions.tolist()]
    assert got.scores.dtype == np.float32 and got.positions.dtype == np.int64
    points = client.retrieve("docs", [0, 1234, N_DOCS - 1], with_payload=True)
    assert [p.payload for p in points] == [{"id": ids[i], "text": texts[i]} for i in (0, 1234, N_DOCS - 1)]
    # int ids, rows without fields, and an on-disk local collection that is reopened
    small = Index.from_embeddings(_dv[:300], fields=[{"n": i} if i % 2 else {} for i in range(300)])
    c = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))
    to_qdrant(small, c, "small", batch_size=64)  # several upserts, the last one partial
    c.close()
    c = qdrant_client.QdrantClient(path=str(tmp_path / "qdrant"))  # reopened from disk
    try:
        assert [p.payload for p in c.retrieve("small", [0, 1, 299])] == [
            {"id": 0},
            {"id": 1, "n": 1},
            {"id": 299, "n": 299},
        ]
        hits = qdrant_search(c, "small", _dv[[10, 20]], 2)
        assert [row[0] for row in hits.ids] == [10, 20]  # each document finds itself first
        assert c.get_collection("small").config.metadata[METADATA_KEY]["complete"] is True
    finally:
        c.close()


def test_text_queries_and_another_models_embedder(
    default_index: Index, client, mnli, nan_model_dir: Path
) -> None:
    _ids, _texts, _dv, _qv, emb = mnli
    queries = ["a man is playing a guitar", "the weather is cold"]
    by_text = qdrant_search(client, "docs", queries, 5, embedder=emb)
    assert by_text.ids == default_index.search(queries, 5).ids
    assert "embed_seconds" in by_text.stats
    with pytest.raises(InputError, match="text queries need embedder="):
        qdrant_search(client, "docs", queries, 5)
    other = Embedder(nan_model_dir)
    with pytest.raises(InputError, match=r"built by model .* not comparable"):
        qdrant_search(client, "docs", queries, 5, embedder=other)


def test_bad_queries_raise_clear_errors(client, mnli) -> None:
    _ids, _texts, dv, qv, _emb = mnli
    with pytest.raises(DimError, match="dim 128, Qdrant collection 'docs' holds dim 384"):
        qdrant_search(client, "docs", qv[:, :128], 10)
    with pytest.raises(DimError, match=r"no 32-d shortlist vector; it has: 128 \('mrl128'\), 64 \('mrl64'\)"):
        qdrant_search(client, "docs", qv, 10, shortlist_dim=32)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="k must be a positive int"):
            qdrant_search(client, "docs", qv, k)
    with pytest.raises(InputError, match="oversample must be a positive int"):
        qdrant_search(client, "docs", qv, 10, oversample=0)
    with pytest.raises(InputError, match="NaN or inf"):
        qdrant_search(client, "docs", np.full(384, np.nan), 10)
    with pytest.raises(InputError, match="no queries"):
        qdrant_search(client, "docs", [], 10)
    with pytest.raises(InputError, match="no Qdrant collection 'nope'"):
        qdrant_search(client, "nope", qv, 10)
    # k beyond the collection returns every point, sorted
    c = qdrant_client.QdrantClient(":memory:")
    to_qdrant(Index.from_embeddings(dv[:7]), c, "seven")
    hits = qdrant_search(c, "seven", qv[:2], 50)
    assert hits.scores.shape == (2, 7) and (np.diff(hits.scores, axis=1) <= 0).all()


def test_collections_that_are_not_ours_or_incomplete_are_refused(mnli) -> None:
    _ids, _texts, dv, qv, _emb = mnli
    index = Index.from_embeddings(dv[:200])
    c = qdrant_client.QdrantClient(":memory:")
    c.create_collection("foreign", vectors_config=models.VectorParams(size=4, distance=models.Distance.DOT))
    with pytest.raises(InputError, match="not written by to_qdrant"):
        qdrant_search(c, "foreign", qv, 10)
    with pytest.raises(InputError, match="already exists"):
        to_qdrant(index, c, "foreign")
    with pytest.raises(InputError, match="not written by to_qdrant; refusing to replace it"):
        to_qdrant(index, c, "foreign", overwrite=True)
    assert c.get_collection("foreign").config.params.vectors.size == 4  # untouched

    to_qdrant(  # a server's settings pass through (local mode accepts and ignores them)
        index,
        c,
        "ours",
        vector_params={"full": {"on_disk": True, "hnsw_config": models.HnswConfigDiff(m=0)}},
        collection_params={"shard_number": 2, "replication_factor": 2},
    )
    hnsw = models.SearchParams(hnsw_ef=64)
    assert qdrant_search(c, "ours", dv[:3], 1, prefetch_params=hnsw).ids == [[0], [1], [2]]
    with pytest.raises(InputError, match="already exists"):
        to_qdrant(index, c, "ours")
    to_qdrant(Index.from_embeddings(dv[:50]), c, "ours", overwrite=True)
    assert c.get_collection("ours").points_count == 50

    record = c.get_collection("ours").config.metadata[METADATA_KEY]
    c.update_collection("ours", metadata={METADATA_KEY: {**record, "complete": False}})
    with pytest.raises(InputError, match="incomplete"):
        qdrant_search(c, "ours", qv, 10)

    # a failure while writing rows leaves no collection behind
    bad = Index.from_embeddings(dv[:100], fields=[{"id": 5} if i == 70 else {} for i in range(100)])
    with pytest.raises(InputError, match="row 70 has a field named 'id'"):
        to_qdrant(bad, c, "bad", batch_size=32)
    assert not c.collection_exists("bad")

    with pytest.raises(DimError, match="between 1 and the index's rerank tier's 128"):
        to_qdrant(Index.from_embeddings(dv[:50], rerank_dim=128), c, "x", shortlist_dims=[256])
    with pytest.raises(InputError, match="vector_params names"):
        to_qdrant(index, c, "x", vector_params={"mrl32": {"on_disk": True}})
    with pytest.raises(InputError, match=r"collection_params cannot set \['metadata'\]"):
        to_qdrant(index, c, "x", collection_params={"metadata": {}})
    assert not c.collection_exists("x")
