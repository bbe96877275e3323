"""The server without a network: the batcher with a fake model call, and the app through TestClient
on a fake backend (request validation, error shapes, auth, metrics)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
import time
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("prometheus_client")

from starlette.testclient import TestClient

from mrl_infer.errors import OverloadedError
from mrl_infer.server import BatchConfig, ServerConfig, create_app
from mrl_infer.server._backend import Row, Tokenized
from mrl_infer.server._batcher import Batcher

D = 16


# ---------------------------------------------------------------------- batcher
class FakeRun:
    """A model call that records each batch and returns rows [item, item, ...] (routing is checkable)."""

    def __init__(self, delay: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> np.ndarray:
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return np.repeat(np.asarray(items, dtype=np.float32)[:, None], 3, axis=1)


def _run(coro):
    return asyncio.run(coro)


async def _with_batcher(run: FakeRun, cfg: BatchConfig, body):
    b: Batcher[int] = Batcher(run, cfg)
    await b.start()
    try:
        return await body(b)
    finally:
        await b.stop()


@pytest.mark.parametrize("parallel_calls", [1, 3])
def test_results_routed_to_their_requests(parallel_calls: int) -> None:
    run = FakeRun()
    cfg = BatchConfig(max_batch_size=8, max_batch_tokens=64, max_wait_ms=1, parallel_calls=parallel_calls)

    async def body(b: Batcher[int]) -> None:
        reqs = [list(range(i * 100, i * 100 + 1 + i % 7)) for i in range(40)]
        lengths = [[1 + (x % 5) for x in r] for r in reqs]
        outs = await asyncio.gather(*(b.embed(r, ls) for r, ls in zip(reqs, lengths, strict=True)))
        for r, out in zip(reqs, outs, strict=True):
            np.testing.assert_array_equal(out[:, 0], np.asarray(r, dtype=np.float32))
        assert b.admitted == 0 and b.queued == 0

    _run(_with_batcher(run, cfg, body))
    assert len(run.batches) < 40 * 2, "requests were not batched together"
    assert any(len({x // 100 for x in batch}) > 1 for batch in run.batches), "no cross-request batch"


def test_batches_respect_count_and_token_budget_and_are_length_sorted() -> None:
    run = FakeRun()
    cfg = BatchConfig(max_batch_size=8, max_batch_tokens=40, max_step_inputs=64, max_wait_ms=5)
    length_of = {i: 1 + (i * 7) % 19 for i in range(200)}

    async def body(b: Batcher[int]) -> None:
        items = list(range(200))
        chunks = [items[i : i + 25] for i in range(0, 200, 25)]
        await asyncio.gather(*(b.embed(c, [length_of[x] for x in c]) for c in chunks))

    _run(_with_batcher(run, cfg, body))
    assert sorted(x for batch in run.batches for x in batch) == list(range(200))
    for batch in run.batches:
        lens = [length_of[x] for x in batch]
        assert len(batch) <= 8
        assert len(batch) == 1 or len(batch) * max(lens) <= 40, batch
        assert lens == sorted(lens, reverse=True), "a model call is not longest first"


def _brute_force_cost(lengths: list[int], max_rows: int, budget: int, call_tokens: int) -> float:
    """The cheapest cost over every way of cutting ``lengths`` into contiguous calls (2^(n-1) ways)."""
    n, best = len(lengths), float("inf")
    for cuts in itertools.product((False, True), repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        cost = 0.0
        for a, z in itertools.pairwise(bounds):
            rows, width = z - a, lengths[a]
            if rows > 1 and (rows > max_rows or rows * width > budget):
                cost = float("inf")
                break
            cost += call_tokens + rows * width
        best = min(best, cost)
    return best


def test_plan_calls_is_the_cheapest_valid_cut() -> None:
    from mrl_infer.server._batcher import plan_calls

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 11))
        lengths = sorted((int(x) for x in rng.integers(1, 200, size=n)), reverse=True)
        max_rows, budget = int(rng.integers(1, 9)), int(rng.integers(50, 800))
        call_tokens = int(rng.integers(0, 80))
        ranges = plan_calls(lengths, max_rows, budget, call_tokens)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), ranges
        cost = 0.0
        for a, z in ranges:
            rows = z - a
            assert rows == 1 or (rows <= max_rows and rows * lengths[a] <= budget), (ranges, lengths)
            cost += call_tokens + rows * lengths[a]
        assert cost == _brute_force_cost(lengths, max_rows, budget, call_tokens), (lengths, ranges)


def test_plan_calls_splits_a_mixed_round_where_padding_costs_more_than_a_call() -> None:
    from mrl_infer.server._batcher import plan_calls

    # one long text with six short ones: padding the short ones to 120 would cost 6 x 100 tokens
    assert plan_calls([120, 20, 20, 18, 15, 12, 10], 32, 1024, 32) == [(0, 1), (1, 7)]
    # equal lengths: one call, up to the caps
    assert plan_calls([16] * 40, 32, 1024, 32) in ([(0, 32), (32, 40)], [(0, 8), (8, 40)])
    assert plan_calls([2000], 32, 1024, 32) == [(0, 1)]  # one row always fits


def test_long_request_does_not_starve_short_ones() -> None:
    run = FakeRun(delay=0.002)
    cfg = BatchConfig(max_batch_size=32, max_batch_tokens=1024, max_step_inputs=64, max_wait_ms=0)

    async def body(b: Batcher[int]) -> None:
        long_fut = b.submit(list(range(2048)), [20] * 2048)
        await asyncio.sleep(0.01)  # the long request is being embedded
        t0 = time.perf_counter()
        short = await b.embed([99999], [5])
        waited = time.perf_counter() - t0
        assert not long_fut.done(), "the short request waited for the whole long one"
        assert short[0, 0] == 99999
        assert waited < 0.5
        out = await long_fut
        np.testing.assert_array_equal(out[:, 0], np.arange(2048, dtype=np.float32))

    _run(_with_batcher(run, cfg, body))


def test_bounded_queue_counts_inputs_and_recovers() -> None:
    run = FakeRun(delay=0.02)
    cfg = BatchConfig(max_batch_size=4, max_queue=10, max_wait_ms=0)

    async def body(b: Batcher[int]) -> None:
        first = b.submit(list(range(8)), [3] * 8)
        with pytest.raises(OverloadedError, match="queue is full") as info:
            b.submit([100, 101, 102], [3] * 3)
        assert info.value.retry_after >= 1
        small = b.submit([200, 201], [3, 3])  # 8 + 2 = 10 still fits
        await asyncio.gather(first, small)
        assert b.admitted == 0
        out = await b.embed(list(range(300, 310)), [3] * 10)
        assert out.shape == (10, 3)

    _run(_with_batcher(run, cfg, body))


def test_cancelled_requests_are_skipped() -> None:
    run = FakeRun(delay=0.03)
    cfg = BatchConfig(max_batch_size=2, max_step_inputs=2, max_wait_ms=0)

    async def body(b: Batcher[int]) -> None:
        busy = b.submit([1, 2], [1, 1])
        doomed = b.submit([500, 501, 502, 503], [1] * 4)
        await asyncio.sleep(0.005)
        doomed.cancel()
        later = await b.embed([7], [1])
        await busy
        assert later[0, 0] == 7
        assert b.admitted == 0 and b.queued == 0

    _run(_with_batcher(run, cfg, body))
    assert not any(x >= 500 for batch in run.batches for x in batch)


def test_a_failed_model_call_fails_only_its_requests() -> None:
    run = FakeRun(fail_on=13)
    cfg = BatchConfig(max_batch_size=2, max_step_inputs=2, max_wait_ms=0)

    async def body(b: Batcher[int]) -> None:
        bad = b.submit([13], [1])
        good = b.submit([20, 21, 22], [1, 1, 1])
        with pytest.raises(RuntimeError, match="bad item 13"):
            await bad
        out = await good
        assert out[:, 0].tolist() == [20, 21, 22]

    _run(_with_batcher(run, cfg, body))


@pytest.mark.parametrize("parallel_calls", [1, 2])
def test_stop_finishes_admitted_requests_and_refuses_new_ones(parallel_calls: int) -> None:
    run = FakeRun(delay=0.01)

    async def body() -> None:
        cfg = BatchConfig(max_batch_size=2, max_wait_ms=0, parallel_calls=parallel_calls)
        b: Batcher[int] = Batcher(run, cfg)
        await b.start()
        futs = [b.submit([i, i + 1000], [2, 2]) for i in range(5)]
        await b.stop()
        assert all(f.done() and not f.cancelled() for f in futs)
        assert [f.result()[0, 0] for f in futs] == list(range(5))
        with pytest.raises(OverloadedError, match="shutting down"):
            b.submit([1], [1])

    _run(body())


class CountingRun(FakeRun):
    """A FakeRun that records the most calls that ran at the same time."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def __call__(self, items: list[int]) -> np.ndarray:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().__call__(items)
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize("parallel_calls", [1, 2, 4])
def test_parallel_calls_run_at_once_up_to_the_limit(parallel_calls: int) -> None:
    run = CountingRun(delay=0.02)
    cfg = BatchConfig(max_batch_size=2, max_wait_ms=0, parallel_calls=parallel_calls)

    async def body(b: Batcher[int]) -> None:
        reqs = [list(range(i * 10, i * 10 + 4)) for i in range(6)]  # 24 inputs: 12 calls of 2
        outs = await asyncio.gather(*(b.embed(r, [3] * 4) for r in reqs))
        for r, out in zip(reqs, outs, strict=True):
            np.testing.assert_array_equal(out[:, 0], np.asarray(r, dtype=np.float32))
        # a request that arrives while every worker is busy starts as soon as one is free
        late = await b.embed([999], [1])
        assert late[0, 0] == 999

    _run(_with_batcher(run, cfg, body))
    assert run.most == parallel_calls
    assert sorted(x for batch in run.batches for x in batch) == sorted(
        [x for i in range(6) for x in range(i * 10, i * 10 + 4)] + [999]
    )


class GatedRun(FakeRun):
    """A FakeRun whose calls block until released, one at a time, from the test."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def __call__(self, items: list[int]) -> np.ndarray:
        self.started.release()
        self.release.acquire()
        return super().__call__(items)


def test_a_free_worker_starts_the_next_call_without_the_event_loop() -> None:
    """Workers take their next call themselves: with the loop blocked (as it is while it parses and
    writes other requests), a finished worker still starts the queued call at once."""
    run = GatedRun()
    cfg = BatchConfig(max_batch_size=1, max_step_inputs=1, max_wait_ms=0, parallel_calls=1)

    async def body(b: Batcher[int]) -> None:
        futs = [b.submit([i], [1]) for i in range(3)]
        try:
            assert await asyncio.to_thread(run.started.acquire, True, 5)
            # Block the event loop itself; meanwhile the worker must go from call 0 to call 1 alone.
            run.release.release()
            assert run.started.acquire(timeout=2), "the worker waited for the event loop"
            run.release.release()
            assert run.started.acquire(timeout=2)
        finally:
            for _ in range(3):  # never leave a call blocked (stop() would wait for it)
                run.release.release()
        outs = await asyncio.gather(*futs)
        assert [o[0, 0] for o in outs] == [0, 1, 2]

    _run(_with_batcher(run, cfg, body))
    assert run.batches == [[0], [1], [2]]


@pytest.mark.parametrize("parallel_calls", [1, 3])
def test_concurrent_submits_and_cancels_keep_every_row_and_the_counts(parallel_calls: int) -> None:
    run = FakeRun(delay=0.001)
    cfg = BatchConfig(max_batch_size=4, max_batch_tokens=64, max_wait_ms=0, parallel_calls=parallel_calls)
    rng = np.random.default_rng(7)

    async def body(b: Batcher[int]) -> None:
        reqs = [list(range(i * 1000, i * 1000 + int(rng.integers(1, 12)))) for i in range(60)]
        futs = []
        for k, r in enumerate(reqs):
            futs.append(b.submit(r, [int(x) for x in rng.integers(1, 9, len(r))]))
            if k % 5 == 0:
                await asyncio.sleep(0)  # let calls start while submits go on
        cancelled = set(range(3, 60, 7))
        for k in cancelled:
            futs[k].cancel()
        outs = await asyncio.gather(*futs, return_exceptions=True)
        for k, (r, out) in enumerate(zip(reqs, outs, strict=True)):
            if k in cancelled and isinstance(out, asyncio.CancelledError):
                continue
            np.testing.assert_array_equal(out[:, 0], np.asarray(r, dtype=np.float32))
        assert b.admitted == 0 and b.queued == 0

    _run(_with_batcher(run, cfg, body))
    seen = [x for batch in run.batches for x in batch]
    assert len(seen) == len(set(seen)), "an input was embedded twice"


@pytest.mark.parametrize("parallel_calls", [2, 3])
def test_one_large_request_fills_every_worker(parallel_calls: int) -> None:
    """A round cut into several calls wakes the other workers (a submit wakes only one)."""
    run = CountingRun(delay=0.02)
    cfg = BatchConfig(max_batch_size=2, max_wait_ms=0, parallel_calls=parallel_calls)

    async def body(b: Batcher[int]) -> None:
        out = await b.embed(list(range(24)), [3] * 24)
        np.testing.assert_array_equal(out[:, 0], np.arange(24, dtype=np.float32))

    _run(_with_batcher(run, cfg, body))
    assert run.most == parallel_calls


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="parallel_calls"):
        BatchConfig(parallel_calls=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        BatchConfig(max_batch_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        BatchConfig(max_wait_ms=-1)
    with pytest.raises(ValueError, match="could never be admitted"):
        ServerConfig(max_inputs=100, batching=BatchConfig(max_queue=10))
    assert BatchConfig(max_batch_size=32, max_batch_tokens=None).token_budget == 32 * 128
    assert "secret" not in repr(ServerConfig(api_key="secret"))


# ---------------------------------------------------------------------- app on a fake backend
class FakeBackend:
    """Whitespace tokenizer, vocabulary of 1000 ids, rows drawn from a generator seeded by the ids."""

    name = "fake-model"
    embedding_dim = D
    dims: ClassVar[list[int]] = [16, 8, 4]
    max_seq_length = 6
    vocab_size = 1000
    prompts: ClassVar[dict[str, str]] = {"query": "query: ", "document": ""}
    default_prompt_name = None

    def tokenize(self, texts: Sequence[str], prompt_name: str | None) -> Tokenized:
        prompt = self.prompts[prompt_name] if prompt_name else ""
        ids = [[1] + [1 + sum(map(ord, w)) % 998 for w in (prompt + t).split()] + [2] for t in texts]
        return self.from_ids(ids)

    def from_ids(self, ids: Sequence[Sequence[int]]) -> Tokenized:
        rows = [Row(list(r[: self.max_seq_length])) for r in ids]
        return Tokenized(rows, sum(len(r.ids) for r in rows), sum(len(r) > self.max_seq_length for r in ids))

    def run(self, rows: list[Row]) -> np.ndarray:
        return np.stack([np.random.default_rng(list(r.ids)).standard_normal(D) for r in rows]).astype(
            np.float32
        )

    def finish(self, pooled: np.ndarray, dim: int) -> np.ndarray:
        x = pooled[:, :dim]
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def expected(self, texts: list[str], dim: int, prompt_name: str | None = None) -> np.ndarray:
        return self.finish(self.run(self.tokenize(texts, prompt_name).rows), dim)


@pytest.fixture()
def fake() -> FakeBackend:
    return FakeBackend()


def _client(fake: FakeBackend, **kw: object) -> TestClient:
    cfg = ServerConfig(max_inputs=8, max_body_bytes=4096, batching=BatchConfig(max_queue=16), **kw)  # type: ignore[arg-type]
    return TestClient(create_app(fake, cfg))


def _post(client: TestClient, body: object, **kw: object):
    return client.post("/v1/embeddings", json=body, **kw)  # type: ignore[arg-type]


def _err(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_app_float_base64_dims_usage_and_truncation_header(fake: FakeBackend) -> None:
    texts = ["a b c", "d e f g h i j k", "x"]
    with _client(fake) as c:
        r = _post(c, {"input": texts, "model": "fake-model", "dimensions": 8})
        assert r.status_code == 200
        body = r.json()
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, fake.expected(texts, 8), atol=1e-7)
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        assert body["usage"] == {"prompt_tokens": 5 + 6 + 3, "total_tokens": 14}
        assert r.headers["x-truncated-inputs"] == "1"
        r = _post(c, {"input": "a b c", "encoding_format": "base64"})
        raw = base64.b64decode(r.json()["data"][0]["embedding"])
        np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), fake.expected(["a b c"], 16)[0])
        r = _post(c, {"input": [[1, 5, 9, 2], [1, 2]], "dimensions": 4})
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        want = fake.finish(fake.run([Row([1, 5, 9, 2]), Row([1, 2])]), 4)
        np.testing.assert_allclose(got, want, atol=1e-7)
        r = _post(c, {"input": [1, 5, 9, 2]})
        assert len(r.json()["data"]) == 1
        r = _post(c, {"input": ["a b"], "prompt_name": "query", "precision": "ubinary", "dimensions": 16})
        want = np.packbits(fake.expected(["a b"], 16, "query") > 0, axis=-1)[0]
        assert r.json()["data"][0]["embedding"] == want.tolist()


@pytest.mark.parametrize(
    ("body", "status", "param", "match"),
    [
        ({"input": "x", "dimensions": 5}, 400, "dimensions", "valid dimensions: 16, 8, 4"),
        ({"input": "x", "dimensions": "8"}, 400, "dimensions", "must be an integer"),
        ({"input": "x", "dimensions": True}, 400, "dimensions", "must be an integer"),
        ({"input": []}, 400, "input", "must not be empty"),
        ({"input": 5}, 400, "input", "got int"),
        ({"input": ["a", 3]}, 400, "input", "not mixed"),
        ({"input": [[1, 2], []]}, 400, "input", "not mixed"),
        ({"input": [1, 5000]}, 400, "input", "token id 5000 is out of range"),
        ({"input": ["a"] * 9}, 400, "input", "at most 8"),
        ({"dimensions": 8}, 400, "input", "'input' is required"),
        ({"input": "x", "encoding_format": "hex"}, 400, "encoding_format", "float, base64"),
        ({"input": "x", "precision": "int8"}, 400, "precision", "calibration ranges"),
        ({"input": "x", "prompt_name": "nope"}, 400, "prompt_name", "query"),
        ({"input": [1, 2], "prompt_name": "query"}, 400, "prompt_name", "token ids"),
        ({"input": "x", "model": 3}, 400, "model", "must be a string"),
        (["input", "x"], 400, None, "JSON object"),
    ],
)
def test_app_invalid_requests(
    fake: FakeBackend, body: object, status: int, param: str | None, match: str
) -> None:
    with _client(fake) as c:
        r = _post(c, body)
        assert r.status_code == status, r.text
        err = _err(r)
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert match in err["message"]


def test_app_malformed_json_oversized_body_and_models(fake: FakeBackend) -> None:
    with _client(fake) as c:
        r = c.post("/v1/embeddings", content=b'{"input": [', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in _err(r)["message"]
        r = c.post("/v1/embeddings", content=b"\xff\xfe", headers={"content-type": "application/json"})
        assert r.status_code == 400
        r = _post(c, {"input": "a " * 3000})
        assert r.status_code == 413 and "4096 bytes" in _err(r)["message"]
        assert c.get("/v1/models").json()["data"][0]["id"] == "fake-model"
        assert c.get("/health").json()["status"] == "ok"


def test_app_model_names_and_strict_mode(fake: FakeBackend) -> None:
    with _client(fake) as c:
        assert _post(c, {"input": "x", "model": "text-embedding-3-small"}).status_code == 200
    with _client(fake, strict_model_name=True, served_model_name="mine") as c:
        assert c.get("/v1/models").json()["data"][0]["id"] == "mine"
        r = _post(c, {"input": "x", "model": "text-embedding-3-small"})
        assert r.status_code == 404 and _err(r)["code"] == "model_not_found"
        ok = _post(c, {"input": "x", "model": "mine"})
        assert ok.status_code == 200 and ok.json()["model"] == "mine"


def test_app_api_key(fake: FakeBackend) -> None:
    with _client(fake, api_key="s3cret") as c:
        assert c.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            r = _post(c, {"input": "x"}, headers=headers)
            assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
            assert c.get("/v1/models", headers=headers).status_code == 401
        assert _post(c, {"input": "x"}, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_app_health_503_until_warm_up_and_on_failed_load(fake: FakeBackend) -> None:
    import threading

    gate = threading.Event()

    def slow_load() -> FakeBackend:
        gate.wait(5)
        return fake

    app = create_app(slow_load, ServerConfig())
    with TestClient(app) as c:
        assert c.get("/health").status_code == 503
        r = _post(c, {"input": "x"})
        assert r.status_code == 503 and "loading" in _err(r)["message"]
        gate.set()
        for _ in range(100):
            if c.get("/health").status_code == 200:
                break
            time.sleep(0.02)
        assert c.get("/health").status_code == 200

    def broken() -> FakeBackend:
        raise RuntimeError("no such file")

    with TestClient(create_app(broken, ServerConfig())) as c:
        for _ in range(100):
            if c.get("/health").json()["status"] == "failed":
                break
            time.sleep(0.02)
        r = c.get("/health")
        assert r.status_code == 503 and "no such file" in r.json()["error"]


def test_app_metrics(fake: FakeBackend) -> None:
    with _client(fake) as c:
        _post(c, {"input": ["a b", "c"]})
        _post(c, {"input": "x", "dimensions": 5})
        text = c.get("/metrics").text
    for name in (
        "mrl_request_duration_seconds_bucket",
        "mrl_queue_duration_seconds_bucket",
        "mrl_inference_duration_seconds_bucket",
        "mrl_batch_size_bucket",
        "mrl_batch_tokens_bucket",
        "mrl_queue_size",
        "mrl_tokenization_duration_seconds_bucket",
    ):
        assert name in text, name
    assert 'mrl_requests_total{route="/v1/embeddings",status="200"} 1.0' in text
    assert 'mrl_requests_total{route="/v1/embeddings",status="400"} 1.0' in text
    assert "mrl_inputs_total 2.0" in text
