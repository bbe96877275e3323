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
    finally:
        assert s.stop() == 0
    s = start_server(minilm_model_dir, "--index", str(tmp_path / "other"))  # built by the default model
    try:
        r = httpx.post(s.url + "/v1/search", json={"query": "music"}, timeout=30)
        assert r.status_code == 400
        assert "not comparable" in r.json()["error"]["message"]
    finally:
        assert s.stop() == 0
