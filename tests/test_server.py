"""``mrl-embed serve`` as a real process on 127.0.0.1, driven by the official openai client and httpx:
equality with ``Embedder.encode`` (MiniLM fp32, every Matryoshka dim), errors, auth, 32 concurrent
clients, overload (429s while accepted requests complete) and SIGTERM during load."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MINILM_DIMS, corpus_texts

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from mrl_infer import Embedder  # noqa: E402

TEXTS = ["Hello, world!", "A man is playing a guitar.", "日本語のテキストも埋め込めます。", "word " * 400]


@dataclass
class Server:
    proc: subprocess.Popen[str]
    url: str
    log: list[str]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_server(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """Start ``mrl-embed serve --port 0`` and wait for its port (from uvicorn's log) and /health 200."""
    cmd = [sys.executable, "-m", "mrl_infer.cli", "serve", "--model", str(model_dir), "--variant", "fp32"]
    cmd += ["--port", "0", "--threads", "1", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    log: list[str] = []
    port: list[int] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            m = re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line)
            if m:
                port.append(int(m.group(1)))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("server exited:\n" + "".join(log))
        if port:
            url = f"http://127.0.0.1:{port[0]}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return Server(proc, url, log)
            except httpx.TransportError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not become healthy:\n" + "".join(log))


@pytest.fixture(scope="module")
def ref(minilm_model_dir: Path) -> Iterator[Embedder]:
    with Embedder(minilm_model_dir, variant="fp32", threads=1) as e:
        yield e


@pytest.fixture(scope="module")
def server(minilm_model_dir: Path) -> Iterator[Server]:
    s = start_server(minilm_model_dir, "--max-body-mb", "0.25", "--served-model-name", "minilm")
    yield s
    assert s.stop() == 0


def _client(s: Server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def _vectors(resp: object) -> np.ndarray:
    """Rows of a response; a base64 row (the client leaves an explicit base64 request undecoded) too."""
    rows = [d.embedding for d in resp.data]  # type: ignore[attr-defined]
    return np.array(
        [np.frombuffer(base64.b64decode(r), "<f4") if isinstance(r, str) else r for r in rows],
        dtype=np.float32,
    )


# ---------------------------------------------------------------------- the openai client
def test_openai_float_every_dim_equals_encode(server: Server, ref: Embedder) -> None:
    client = _client(server)
    for d in MINILM_DIMS:
        resp = client.embeddings.create(model="minilm", input=TEXTS, dimensions=d, encoding_format="float")
        got = _vectors(resp)
        assert got.shape == (len(TEXTS), d)
        np.testing.assert_allclose(got, ref.encode(TEXTS, dim=d), atol=1e-6, rtol=0)
    tokens = sum(len(ids) for ids in ref._tokenizer.encode(TEXTS).ids)
    assert resp.usage.prompt_tokens == tokens == resp.usage.total_tokens
    assert resp.model == "minilm"


def test_openai_base64_default_and_explicit(server: Server, ref: Embedder) -> None:
    client = _client(server)
    want = ref.encode(TEXTS[:2], dim=64)
    for kwargs in ({}, {"encoding_format": "base64"}):
        resp = client.embeddings.create(model="minilm", input=TEXTS[:2], dimensions=64, **kwargs)
        np.testing.assert_allclose(_vectors(resp), want, atol=1e-6, rtol=0)
    raw = httpx.post(
        server.url + "/v1/embeddings", json={"input": TEXTS[0], "encoding_format": "base64", "dimensions": 32}
    ).json()["data"][0]["embedding"]
    np.testing.assert_allclose(
        np.frombuffer(base64.b64decode(raw), "<f4"),
        ref.encode(TEXTS[0], dim=32),
        atol=1e-6,
    )


def test_openai_native_dim_no_dim_and_invalid_dim(server: Server, ref: Embedder) -> None:
    client = _client(server)
    full = ref.encode(TEXTS[:1], dim=384)
    np.testing.assert_allclose(
        _vectors(client.embeddings.create(model="minilm", input=TEXTS[:1], dimensions=384)), full, atol=1e-6
    )
    np.testing.assert_allclose(
        _vectors(client.embeddings.create(model="minilm", input=TEXTS[:1])), full, atol=1e-6
    )
    with pytest.raises(openai.BadRequestError, match="384, 256, 128, 64, 32") as info:
        client.embeddings.create(model="minilm", input="x", dimensions=100)
    assert info.value.body["param"] == "dimensions"  # type: ignore[index]


def test_openai_other_model_name_is_accepted_and_logged_once(server: Server) -> None:
    client = _client(server)
    for _ in range(2):
        assert len(client.embeddings.create(model="text-embedding-3-small", input="x").data) == 1
    time.sleep(0.1)
    assert sum("'text-embedding-3-small'" in line for line in server.log) == 1


# ---------------------------------------------------------------------- raw HTTP
def test_http_endpoints_and_extras(server: Server, ref: Embedder) -> None:
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "minilm"
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    url = server.url + "/v1/embeddings"
    ids = ref._tokenizer.encode(["A man is playing a guitar."]).ids[0]
    r = httpx.post(url, json={"input": ids, "dimensions": 128})
    np.testing.assert_allclose(r.json()["data"][0]["embedding"], ref.encode(TEXTS[1], dim=128), atol=1e-6)
    r = httpx.post(url, json={"input": [ids, ids[:3]], "dimensions": 32})
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = httpx.post(url, json={"input": TEXTS, "dimensions": 64, "precision": "binary"})
    want = ref.encode(TEXTS, dim=64, precision="binary")
    assert [d["embedding"] for d in r.json()["data"]] == want.tolist()
    assert r.headers["x-truncated-inputs"] == "1"  # the 400-word text
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "mrl_requests_total",
        "mrl_batch_size_bucket",
        "mrl_inference_duration_seconds",
        "mrl_queue_size",
    ):
        assert name in metrics
    assert re.search(r"mrl_truncated_inputs_total [1-9]", metrics)
    assert any("POST /v1/embeddings 200" in line and "inputs=4" in line for line in server.log)


@pytest.mark.parametrize(
    ("content", "status", "match"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"input": 3}', 400, "got int"),
        (b'{"input": []}', 400, "must not be empty"),
        (b'{"input": "x", "dimensions": "64"}', 400, "must be an integer"),
        (b'{"input": ["x", 1]}', 400, "not mixed"),
        (b'{"input": [' + b",".join([b'"a"'] * 2049) + b"]}", 400, "at most 2048"),
        (b'{"input": "' + b"a " * 200_000 + b'"}', 413, "exceeds the limit"),
    ],
)
def test_http_malformed(server: Server, content: bytes, status: int, match: str) -> None:
    r = httpx.post(
        server.url + "/v1/embeddings", content=content, headers={"content-type": "application/json"}
    )
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert match in err["message"] and err["type"] == "invalid_request_error"


def test_build_parser_does_not_import_the_server_stack() -> None:
    code = (
        "import sys; from mrl_infer.cli import build_parser; build_parser()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn', 'prometheus_client')]\n"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ---------------------------------------------------------------------- concurrency
def test_32_concurrent_clients_get_their_own_embeddings(server: Server, ref: Embedder) -> None:
    corpus = corpus_texts(96)
    jobs = [(corpus[i * 3 : i * 3 + 3], MINILM_DIMS[i % len(MINILM_DIMS)]) for i in range(32)]

    def call(job: tuple[list[str], int]) -> np.ndarray:
        texts, dim = job
        r = httpx.post(server.url + "/v1/embeddings", json={"input": texts, "dimensions": dim}, timeout=60)
        assert r.status_code == 200, r.text
        return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, jobs))
    for (texts, dim), got in zip(jobs, results, strict=True):
        np.testing.assert_allclose(got, ref.encode(texts, dim=dim), atol=1e-6, rtol=0)


def test_auth_and_strict_model_name(minilm_model_dir: Path) -> None:
    s = start_server(minilm_model_dir, "--strict-model-name", env={"MRL_EMBED_API_KEY": "s3cret"})
    try:
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/v1/models").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            _client(s, "wrong").embeddings.create(model="model", input="x")
        good = _client(s, "s3cret")
        name = good.models.list().data[0].id
        assert len(good.embeddings.create(model=name, input="x").data) == 1
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            good.embeddings.create(model="text-embedding-3-small", input="x")
    finally:
        assert s.stop() == 0


def test_overload_flood_gets_429_while_accepted_requests_complete(
    minilm_model_dir: Path, ref: Embedder
) -> None:
    s = start_server(minilm_model_dir, "--max-queue", "24", "--max-inputs", "8")
    long_texts = [f"{i} " + "the quick brown fox jumps over the lazy dog " * 20 for i in range(8 * 24)]
    health: list[int] = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            health.append(httpx.get(s.url + "/health", timeout=30).status_code)
            time.sleep(0.02)

    def call(i: int) -> tuple[int, httpx.Response]:
        return i, httpx.post(
            s.url + "/v1/embeddings", json={"input": long_texts[i * 8 : i * 8 + 8]}, timeout=60
        )

    try:
        poller = threading.Thread(target=poll_health)
        poller.start()
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(call, range(24)))
        stop.set()
        poller.join()
        codes = [r.status_code for _, r in results]
        assert set(codes) <= {200, 429}, codes
        assert 429 in codes and 200 in codes, codes
        for i, r in results:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["type"] == "rate_limit_error"
            else:
                got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
                np.testing.assert_allclose(got, ref.encode(long_texts[i * 8 : i * 8 + 8]), atol=1e-6, rtol=0)
        assert health and set(health) == {200}
        assert httpx.post(s.url + "/v1/embeddings", json={"input": "after"}).status_code == 200
    finally:
        stop.set()
        assert s.stop() == 0


def test_sigterm_during_load_finishes_accepted_requests(minilm_model_dir: Path, ref: Embedder) -> None:
    s = start_server(minilm_model_dir)
    texts = [
        f"{i} " + "a sentence that is long enough to take some time to embed " * 15 for i in range(8 * 16)
    ]

    def call(i: int) -> httpx.Response:
        return httpx.post(s.url + "/v1/embeddings", json={"input": texts[i * 8 : i * 8 + 8]}, timeout=60)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(call, i) for i in range(8)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # all 8 admitted (tokenized) before the signal
            m = re.search(
                r"mrl_tokenization_duration_seconds_count (\d+)", httpx.get(s.url + "/metrics").text
            )
            if m and int(m.group(1)) >= 8:
                break
            time.sleep(0.01)
        pending = sum(not f.done() for f in futures)
        s.proc.send_signal(signal.SIGTERM)
        results = [f.result() for f in futures]
    assert s.proc.wait(timeout=30) == 0
    assert pending > 0, "the load finished before SIGTERM; the test proved nothing"
    for i, r in enumerate(results):
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, ref.encode(texts[i * 8 : i * 8 + 8]), atol=1e-6, rtol=0)
    with pytest.raises(httpx.TransportError):
        httpx.get(s.url + "/health", timeout=2)


def test_serve_ort_spinning_switch_reaches_the_session() -> None:
    """``--ort-spinning off`` sets the ONNX Runtime config entry; the default leaves ORT's (spinning)."""
    from mrl_infer.cli import build_parser
    from mrl_infer.server._cli import load_embedder

    key = "session.intra_op.allow_spinning"
    with load_embedder(build_parser().parse_args(["serve", "--ort-spinning", "off"])) as emb:
        assert emb._session.session.get_session_options().get_session_config_entry(key) == "0"
    default = build_parser().parse_args(["serve"])
    with load_embedder(default) as emb, pytest.raises(RuntimeError, match=key):  # unset: ORT's default
        emb._session.session.get_session_options().get_session_config_entry(key)


def test_serve_splits_the_cores_between_parallel_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU: one single-threaded model call per physical core unless told otherwise; GPU: one call."""
    from mrl_infer import _session
    from mrl_infer.cli import build_parser
    from mrl_infer.server._cli import configs_from_args, load_embedder, parallelism

    monkeypatch.setattr(_session, "physical_cores", lambda: 4)
    parse = build_parser().parse_args
    assert parallelism(parse(["serve"]), False) == (1, 4)
    assert parallelism(parse(["serve", "--threads", "2"]), False) == (2, 2)
    assert parallelism(parse(["serve", "--threads", "8"]), False) == (8, 1)
    assert parallelism(parse(["serve", "--parallel-calls", "1"]), False) == (4, 1)
    assert parallelism(parse(["serve", "--parallel-calls", "3", "--threads", "2"]), False) == (2, 3)
    assert parallelism(parse(["serve"]), True) == (None, 1)
    assert configs_from_args(parse(["serve"]), False).batching.parallel_calls == 4
    with load_embedder(parse(["serve", "--device", "cpu"])) as emb:
        assert emb._session.threads == 1


def test_log_lines_are_written_off_the_event_loop_and_flushed_on_exit() -> None:
    """serve's request log goes through a queue to the original handlers in a thread of their own."""
    import logging

    from mrl_infer.server._cli import logging_off_the_loop

    writers: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            writers.append(threading.current_thread().name)
            lines.append(self.format(record))

    lines: list[str] = []
    root = logging.getLogger()
    capture = Capture()
    capture.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    saved = root.handlers[:]
    root.handlers = [capture]
    try:
        with logging_off_the_loop():
            assert [type(h).__name__ for h in root.handlers] == ["QueueHandler"]
            logging.getLogger("mrl_infer.server").warning("POST %s %d", "/v1/embeddings", 200)
        assert root.handlers == [capture]
    finally:
        root.handlers = saved
    assert lines == ["mrl_infer.server: POST /v1/embeddings 200"]
    assert writers and writers[0] != threading.current_thread().name
