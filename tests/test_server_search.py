"""POST /v1/search over the server's index: TestClient on a fake backend, then a real server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from mrl_infer import Embedder, Index  # noqa: E402
from mrl_infer.server import BatchConfig, ServerConfig, create_app  # noqa: E402
from tests.test_server import start_server  # noqa: E402
from tests.test_server_batcher import FakeBackend  # noqa: E402

DOCS = [f"document number {i} about topic {i % 7} and item {i * 13 % 101}" for i in range(300)]


def _client(fake: FakeBackend, index: Index | None) -> TestClient:
    cfg = ServerConfig(max_inputs=8, batching=BatchConfig(max_queue=16))
    return TestClient(create_app(fake, cfg, index=index))


def test_search_equals_index_search_on_the_same_query_vectors() -> None:
    fake = FakeBackend()
    index = Index.from_embeddings(
        fake.expected(DOCS, fake.embedding_dim),
        [f"d{i}" for i in range(300)],
        fields=[{"text": t} for t in DOCS],
        shortlist_dim=8,
    )
    queries = ["topic 3 item", "document number 12"]
    expect = index.search(fake.expected(queries, fake.embedding_dim), 5, oversample=4)
    with _client(fake, index) as c:
        r = c.post("/v1/search", json={"query": queries, "k": 5, "oversample": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [[h["id"] for h in d["results"]] for d in body["data"]] == expect.ids
        np.testing.assert_allclose(
            [[h["score"] for h in d["results"]] for d in body["data"]], expect.scores, atol=1e-6
        )
        first = body["data"][0]["results"][0]
        assert first["fields"] == {"text": DOCS[int(expect.positions[0][0])]}
        assert [d["query"] for d in body["data"]] == queries
        assert body["usage"]["prompt_tokens"] == fake.tokenize(queries, None).num_tokens
        one = c.post("/v1/search", json={"input": "topic 3 item", "k": 500, "exact": True}).json()
        assert len(one["data"][0]["results"]) == 300  # k > len(index): every row, sorted
        for body, param in (
            ({"query": "x", "k": 0}, "k"),
            ({"query": ""}, "query"),
            ({"query": []}, "query"),
            ({"query": "x", "exact": "yes"}, "exact"),
            ({"query": "x", "rerank_dim": 999}, None),
            ({"query": ["q"] * 9}, "query"),
            ({"query": "x", "colour": 1}, "colour"),
        ):
            r = c.post("/v1/search", json=body)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param, (body, err)


TIERS = [(8, "int8"), (16, "float16"), (8, "ubinary"), (4, "float16")]


def _multi_tier(fake: FakeBackend) -> Index:
    index = Index.from_embeddings(
        fake.expected(DOCS, fake.embedding_dim), [f"d{i}" for i in range(300)], shortlist_dim=8, oversample=3
    )
    for dim, precision in TIERS[1:]:
        index.add_tier(dim, precision)
    return index


def test_search_picks_a_tier_and_reports_stats() -> None:
    fake = FakeBackend()
    index = _multi_tier(fake)
    queries = ["topic 3 item", "document number 12", "about topic"]
    qv = fake.expected(queries, fake.embedding_dim)
    with _client(fake, index) as c:
        for dim, precision in TIERS:
            for body in ({"shortlist_dim": dim, "shortlist_precision": precision},) + (
                ({"shortlist_dim": dim},) if dim != 8 or precision == "int8" else ()
            ):
                r = c.post("/v1/search", json={"query": queries, "k": 4, **body})
                assert r.status_code == 200, (body, r.text)
                expect = index.search(qv, 4, shortlist_dim=dim, shortlist_precision=precision)
                got = r.json()
                assert [[h["id"] for h in d["results"]] for d in got["data"]] == expect.ids, body
                np.testing.assert_allclose(
                    [[h["score"] for h in d["results"]] for d in got["data"]], expect.scores, atol=1e-6
                )
                stats = got["stats"]
                assert set(stats) == {"embed_ms", "shortlist", "rerank"}
                assert stats["shortlist"] == {
                    "dim": dim,
                    "precision": precision,
                    "rows": 300,
                    "candidates": 12,
                    "engine": "onnxruntime",
                    "ms": stats["shortlist"]["ms"],
                }
                assert stats["rerank"] == {
                    "dim": 16,
                    "precision": "float16",
                    "rows": 12,
                    "kept": 4,
                    "ms": stats["rerank"]["ms"],
                }
                for ms in (stats["embed_ms"], stats["shortlist"]["ms"], stats["rerank"]["ms"]):
                    assert isinstance(ms, float) and ms > 0 and round(ms, 3) == ms
        default = c.post("/v1/search", json={"query": queries[0], "k": 200}).json()["stats"]
        assert (default["shortlist"]["dim"], default["shortlist"]["precision"]) == (8, "int8")
        assert default["shortlist"]["candidates"] == 300 and default["rerank"]["kept"] == 200
        exact = c.post("/v1/search", json={"query": queries[0], "k": 5, "exact": True, "rerank_dim": 8})
        stats = exact.json()["stats"]
        assert set(stats) == {"embed_ms", "exact"}
        assert stats["exact"] == {
            "dim": 8,
            "precision": "float16",
            "rows": 300,
            "kept": 5,
            "ms": stats["exact"]["ms"],
        }
        assert stats["exact"]["ms"] > 0
        for body, param, message in (
            ({"shortlist_dim": 12}, "shortlist_dim", "no 12-d shortlist tier"),
            ({"shortlist_dim": 12, "shortlist_precision": "int8"}, "shortlist_dim", "no 12-d int8"),
            ({"shortlist_dim": 16, "shortlist_precision": "int8"}, "shortlist_precision", "no 16-d int8"),
            ({"shortlist_precision": "ubinary", "shortlist_dim": 4}, "shortlist_precision", "no 4-d ubinary"),
            ({"shortlist_precision": "int4"}, "shortlist_precision", "must be one of float16, int8, ubinary"),
            ({"shortlist_precision": 8}, "shortlist_precision", "must be one of"),
            ({"shortlist_dim": 0}, "shortlist_dim", "positive integer"),
            ({"shortlist_dim": "8"}, "shortlist_dim", "positive integer"),
        ):
            r = c.post("/v1/search", json={"query": "x", **body})
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["type"] == "invalid_request_error" and err["param"] == param, (body, err)
            assert message in err["message"], (body, err)
            if "tier" in message:
                assert "8-d int8 (default), 16-d float16, 8-d ubinary, 4-d float16" in err["message"]
                assert "add_tier" in err["message"]
        two = Index.from_embeddings(fake.expected(DOCS, 16), shortlist_dim=16, shortlist_precision="int8")
        two.add_tier(8, "float16")
        two.add_tier(8, "ubinary")
    with _client(fake, two) as c:  # two 8-d tiers, neither at the default precision: ambiguous
        err = c.post("/v1/search", json={"query": "x", "shortlist_dim": 8}).json()["error"]
        assert err["param"] == "shortlist_dim" and "2 8-d shortlist tiers" in err["message"], err


def test_index_endpoint() -> None:
    fake = FakeBackend()
    index = _multi_tier(fake)
    with _client(fake, index) as c:
        r = c.get("/v1/index")
        assert r.status_code == 200, r.text
        assert r.json() == {
            "object": "index",
            "count": 300,
            "dim": 16,
            "tiers": [
                {"dim": 8, "precision": "int8", "bytes": 300 * 8 + 8 * 4},
                {"dim": 16, "precision": "float16", "bytes": 300 * 16 * 2},
                {"dim": 8, "precision": "ubinary", "bytes": 300 * 1},
                {"dim": 4, "precision": "float16", "bytes": 300 * 4 * 2},
            ],
            "default_tier": {"dim": 8, "precision": "int8"},
            "rerank": {"dim": 16, "precision": "float16", "bytes": 300 * 16 * 2},
            "oversample": 3,
            "model": None,  # built from bare vectors
        }
    with _client(FakeBackend(), None) as c:
        r = c.get("/v1/index")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "no_index"
        assert "mrl-embed serve --index DIR" in r.json()["error"]["message"]


def test_search_without_an_index_is_404() -> None:
    with _client(FakeBackend(), None) as c:
        r = c.post("/v1/search", json={"query": "x"})
        assert r.status_code == 404
        assert "mrl-embed serve --index DIR" in r.json()["error"]["message"]


def test_real_server_search(minilm_model_dir: Path, tmp_path: Path) -> None:
    with Embedder(minilm_model_dir, variant="fp32", threads=1) as emb:
        texts = [
            "A man is playing a guitar.",
            "A chef is cooking pasta.",
            "Stocks fell sharply on Monday.",
            "A child rides a bicycle.",
            "The orchestra played Beethoven.",
        ]
        index = Index.build(emb, texts, ids=[f"t{i}" for i in range(5)], store_text=True)
        index.save(tmp_path / "ix")
        expect = index.search(["someone plays music", "the market dropped"], 2)
    Index.from_embeddings(Embedder().encode(texts), model=Embedder()).save(tmp_path / "other")
    s = start_server(minilm_model_dir, "--index", str(tmp_path / "ix"))
    try:
        r = httpx.post(
            s.url + "/v1/search",
            json={"query": ["someone plays music", "the market dropped"], "k": 2},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        assert [[h["id"] for h in d["results"]] for d in data] == expect.ids
        np.testing.assert_allclose(
            [[h["score"] for h in d["results"]] for d in data], expect.scores, atol=1e-5
        )
        assert data[1]["results"][0]["fields"]["text"] == "Stocks fell sharply on Monday."
        stats = r.json()["stats"]
        assert stats["embed_ms"] > 0 and stats["shortlist"]["rows"] == 5 and stats["rerank"]["kept"] == 2
        info = httpx.get(s.url + "/v1/index", timeout=30).json()
        assert info["count"] == 5 and info["model"] == index.model["name"]
        assert info["tiers"] == [{"dim": 128, "precision": "int8", "bytes": index.memory["shortlist"]}]
    finally:
        assert s.stop() == 0
    s = start_server(minilm_model_dir, "--index", str(tmp_path / "other"))  # built by the default model
    try:
        r = httpx.post(s.url + "/v1/search", json={"query": "music"}, timeout=30)
        assert r.status_code == 400
        assert "not comparable" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0
