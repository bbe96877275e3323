"""The demo page (``mrl-embed demo``) in a real browser: Debian's headless Chromium driven by Selenium.

The server is the real ``mrl-embed demo`` process on the default model; every number the page shows
is checked against numpy over the same model's embeddings from ``Embedder`` (top-k at each dim,
overlap@10, Spearman, nDCG@10/recall@10, the int8/binary scans with and without the funnel), and the
server funnel against ``/v1/search`` itself. Any JavaScript console error fails the test.

Screenshots (laptop and phone width, two dims) go to ``$MRL_DEMO_SCREENSHOTS`` or ``.artifacts/demo``.
Without Chromium the browser tests skip locally; under CI (``CI`` set) they fail instead, since
``scripts/test.sh`` installs ``chromium`` and ``chromium-driver`` there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette")

from mrl_infer import Embedder
from mrl_infer._quality import ndcg_at_k
from mrl_infer.server._demo import (
    DEMO_DOCUMENTS,
    DEMO_QUERIES,
    MAX_CUSTOM_LINES,
    load_demo_corpus,
)

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
K = 10
QUERY = "The kids were playing in the park all afternoon."


# ---------------------------------------------------------------------- data and server (no browser)
def test_demo_corpus_is_a_fixed_labelled_sample_of_the_packaged_set() -> None:
    from mrl_infer._quality import DEFAULT_RETRIEVAL_DIR, load_retrieval

    c = load_demo_corpus()
    full = load_retrieval(DEFAULT_RETRIEVAL_DIR)
    assert (len(c.queries), len(c.docs)) == (DEMO_QUERIES, DEMO_DOCUMENTS)
    assert len(set(c.doc_ids)) == len(c.doc_ids) and len(set(c.query_ids)) == len(c.query_ids)
    docs = dict(zip(full.doc_ids, full.docs, strict=True))
    queries = dict(zip(full.query_ids, full.queries, strict=True))
    assert all(docs[i] == t for i, t in zip(c.doc_ids, c.docs, strict=True))
    assert all(queries[i] == t for i, t in zip(c.query_ids, c.queries, strict=True))
    in_corpus = set(c.doc_ids)
    for q in c.query_ids:  # every judgment of a sampled query is in the sample, none invented
        assert set(c.qrels[q]) == full.qrels[q] and set(c.qrels[q]) <= in_corpus
    load_demo_corpus.cache_clear()
    again = load_demo_corpus()
    assert (again.doc_ids, again.query_ids) == (c.doc_ids, c.query_ids)
    other = load_demo_corpus(seed=1)
    assert other.query_ids != c.query_ids


def test_demo_page_is_one_self_contained_file() -> None:
    from mrl_infer.server._demo import demo_page

    html = demo_page().decode()
    assert "<script>" in html and "<style>" in html
    # no CDN, no fetch of anything outside this server: every src/href is local or data:
    for url in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html):
        assert url.startswith(("data:", "/", "#")), url
    assert not re.search(r"""fetch\(\s*["'`]https?:""", html)
    assert "import " not in html.split("<script>", 1)[1].split("</script>", 1)[0].split("\n", 3)[1]


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    url: str
    log: list[str]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)


def start_demo(*args: str) -> Demo:
    """Start ``mrl-embed demo --port 0`` and wait for the URL it prints and /health 200."""
    cmd = [sys.executable, "-m", "mrl_infer.cli", "demo", "--port", "0", *args]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    log: list[str] = []
    urls: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            m = re.match(r"mrl-embed demo: open (http://127\.0\.0\.1:\d+/)$", line.strip())
            if m:
                urls.append(m.group(1))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("mrl-embed demo exited:\n" + "".join(log))
        if urls and httpx.get(urls[0] + "health", timeout=5).status_code == 200:
            return Demo(proc, urls[0], log)
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("mrl-embed demo did not start:\n" + "".join(log))


@pytest.fixture(scope="module")
def demo(minilm_model_dir: Path) -> Iterator[Demo]:
    """The demo on all-MiniLM-L6-v2 fp32: its embeddings do not depend on what shares a batch, so
    the page's numbers can be checked against ``Embedder.encode`` to float rounding. (An int8 model's
    dynamic activation scale is per batch: the default model's vectors move by ~1e-2 in cosine with
    their batch-mates; ``test_default_model_demo`` covers that model.)"""
    d = start_demo("--model", str(minilm_model_dir), "--variant", "fp32", "--log-level", "warning")
    yield d
    assert d.stop() == 0, "".join(d.log)


def _check_config_and_index(demo: Demo) -> dict[str, Any]:
    cfg = httpx.get(demo.url + "demo/config.json").json()
    assert cfg["dims"] == [384, 256, 128, 64, 32] and cfg["embedding_dim"] == 384
    assert cfg["corpus"] == {
        "name": "MNLI-val retrieval sample",
        "documents": DEMO_DOCUMENTS,
        "queries": DEMO_QUERIES,
        "indexed": True,
    }
    assert cfg["max_custom_lines"] == MAX_CUSTOM_LINES
    corpus = httpx.get(demo.url + "demo/corpus.json").json()
    c = load_demo_corpus()
    assert [d["id"] for d in corpus["documents"]] == c.doc_ids
    assert corpus["qrels"] == c.qrels
    info = httpx.get(demo.url + "v1/index").json()
    assert info["count"] == DEMO_DOCUMENTS
    tiers = {(t["dim"], t["precision"]) for t in info["tiers"]}
    assert tiers == {(d, p) for d in (32, 64, 128, 256) for p in ("float16", "int8", "ubinary")}
    page = httpx.get(demo.url)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    return cfg


def test_demo_serves_config_corpus_and_an_index_with_every_tier(demo: Demo) -> None:
    _check_config_and_index(demo)


# ---------------------------------------------------------------------- numpy references
@pytest.fixture(scope="module")
def ref(minilm_model_dir: Path) -> Iterator[dict[str, Any]]:
    c = load_demo_corpus()
    with Embedder(minilm_model_dir, variant="fp32") as emb:
        docs = emb.encode(c.docs, dim=384, prompt_name="document")
        queries = emb.encode(c.queries, dim=384, prompt_name="query")
        yield {"emb": emb, "docs": docs, "queries": queries, "corpus": c}


def _unit(x: np.ndarray, d: int) -> np.ndarray:
    p = np.asarray(x[..., :d], np.float64)
    return p / np.linalg.norm(p, axis=-1, keepdims=True)


def scan_scores(docs: np.ndarray, q: np.ndarray, d: int, precision: str) -> np.ndarray:
    """What the page computes for its scan: cosine, int8 (per-dim peak scale) or sign bits."""
    p, qu = _unit(docs, d), _unit(q, d)
    if precision == "float32":
        return p @ qu
    if precision == "int8":
        scale = np.maximum(np.abs(p).max(axis=0), 1e-6) / 127
        codes = np.clip(np.rint(p / scale), -127, 127)
        return codes @ (qu * scale)
    return (p > 0).astype(np.float64) @ qu


def ref_search(
    docs: np.ndarray, q: np.ndarray, d: int, precision: str = "float32", rescore: bool = False, over: int = 4
) -> tuple[list[int], np.ndarray]:
    """The page's result rows (positions, best first) and the scores it ranks them by."""
    scan = scan_scores(docs, q, d, precision)
    order = np.argsort(-scan, kind="stable")
    if not rescore:
        return order[:K].tolist(), scan
    cand = order[: K * over]
    full = _unit(docs, docs.shape[1]) @ _unit(q, docs.shape[1])
    best = cand[np.argsort(-full[cand], kind="stable")][:K]
    return best.tolist(), full


def assert_same_ranking(got: list[str], want: list[str], score: dict[str, float], tol: float = 2e-4) -> None:
    """Equal lists, except that two places may swap where the reference scores tie within ``tol``
    (the page's embeddings come from the server's batches, the reference from ``encode``'s)."""
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want, strict=True):
        if g != w:
            assert g in score and abs(score[g] - score[w]) < tol, (got, want, g, w)


# ---------------------------------------------------------------------- the browser
def _chromium_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        msg = f"needs {missing} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser tests: " + msg)
        pytest.skip(msg)


def _open_page(url: str) -> Any:
    """Headless Chromium on ``url``, once the page has embedded its corpus."""
    _chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_window_size(1280, 900)
    try:
        driver.get(url)
        _wait(driver, lambda: _status(driver) in ("ready", "error"), 240, "the page to embed its corpus")
        assert _status(driver) == "ready", driver.find_element("id", "status").text
        _wait_idle(driver)
    except BaseException:
        driver.quit()
        raise
    return driver


@pytest.fixture(scope="module")
def browser(demo: Demo) -> Iterator[Any]:
    driver = _open_page(demo.url)
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def _no_console_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "browser" in request.fixturenames:
        driver = request.getfixturevalue("browser")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, f"JavaScript console errors: {errors}"


def _wait(driver: Any, cond: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; status: {driver.find_element('id', 'status').text}")


def _status(driver: Any) -> str:
    return str(driver.find_element("id", "status").get_attribute("data-state"))


def _body(driver: Any, attr: str) -> str:
    return str(driver.execute_script(f"return document.body.dataset.{attr}"))


def _wait_idle(driver: Any, after: int | None = None) -> None:
    """Wait until the page has rendered (past render number ``after``) and is not busy."""

    def idle() -> bool:
        return _body(driver, "busy") == "0" and (after is None or int(_body(driver, "render")) > after)

    _wait(driver, idle, 120, "the page to render")


def _act(driver: Any, action: Any) -> None:
    before = int(_body(driver, "render"))
    action()
    _wait_idle(driver, before)


def _ids(driver: Any, list_id: str) -> list[str]:
    return [e.get_attribute("data-id") for e in driver.find_elements("css selector", f"#{list_id} li")]


def _value(driver: Any, readout: str) -> float:
    return float(driver.find_element("id", readout).get_attribute("data-value"))


def _dim(driver: Any) -> int:
    return int(driver.find_element("id", "dim-value").text)


def _set_dim(driver: Any, dim: int) -> None:
    """Move the slider with the keyboard (Home, then arrow keys) until it shows ``dim``."""
    from selenium.webdriver.common.keys import Keys

    slider = driver.find_element("id", "dim")
    if _dim(driver) == dim:
        return
    if _dim(driver) != 32:
        _act(driver, lambda: slider.send_keys(Keys.HOME))
    for _ in range(10):
        if _dim(driver) == dim:
            return
        _act(driver, lambda: slider.send_keys(Keys.ARROW_RIGHT))
    assert _dim(driver) == dim


def _set_checkbox(driver: Any, element_id: str, on: bool) -> None:
    box = driver.find_element("id", element_id)
    if box.is_selected() != on:
        _act(driver, box.click)


def _set_precision(driver: Any, precision: str) -> None:
    radio = driver.find_element("css selector", f'input[name="precision"][value="{precision}"]')
    if not radio.is_selected():
        _act(driver, radio.click)


def _type_query(driver: Any, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "query")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    _act(driver, lambda: box.send_keys(text))


def _reset(driver: Any) -> None:
    _set_checkbox(driver, "server", False)
    _set_checkbox(driver, "rescore", False)
    _set_precision(driver, "float32")
    _set_checkbox(driver, "free-dim", False)


def test_page_loads_the_bundled_corpus(browser: Any) -> None:
    assert "2,000 bundled documents" in browser.find_element("id", "status").text
    options = browser.find_elements("css selector", "#labelled-query option")
    assert len(options) == DEMO_QUERIES + 1
    model = httpx.get(browser.current_url + "demo/config.json").json()["model"]
    assert browser.find_element("id", "model-name").text == model


def test_results_readouts_and_marks_follow_the_embeddings_at_every_dim(
    browser: Any, ref: dict[str, Any]
) -> None:
    _reset(browser)
    top_before = browser.find_element("id", "results-dim").location["y"]
    _type_query(browser, QUERY)
    assert browser.find_element("id", "results-dim").location["y"] == top_before  # no layout jump
    c, docs = ref["corpus"], ref["docs"]
    q = ref["emb"].encode([QUERY], dim=384, prompt_name="query")[0]
    full_top, full = ref_search(docs, q, 384)
    full_rank = {int(i): r for r, i in enumerate(np.argsort(-full, kind="stable"))}
    changed = False
    for d in (32, 64, 128, 256, 384):
        _set_dim(browser, d)
        top, scan = ref_search(docs, q, d)
        score = {c.doc_ids[i]: float(scan[i]) for i in range(len(docs))}
        assert_same_ranking(_ids(browser, "results-dim"), [c.doc_ids[i] for i in top], score)
        full_score = {c.doc_ids[i]: float(full[i]) for i in range(len(docs))}
        assert_same_ranking(_ids(browser, "results-full"), [c.doc_ids[i] for i in full_top], full_score)
        overlap = len(set(top) & set(full_top)) / K
        assert _value(browser, "overlap") == pytest.approx(overlap)
        from scipy.stats import spearmanr

        assert _value(browser, "spearman") == pytest.approx(spearmanr(scan, full).statistic, abs=2e-3)
        # the marks: = / up / down / new, against the full-dim rank of each shown item
        marks = [e.text for e in browser.find_elements("css selector", "#results-dim li .mark")]
        want = []
        for r, i in enumerate(top):
            fr = full_rank[i]
            want.append("new" if fr >= K else "=" if fr == r else f"↑{fr - r}" if fr > r else f"↓{r - fr}")
        if _ids(browser, "results-dim") == [c.doc_ids[i] for i in top]:
            assert marks == want
        dropped = [
            e.get_attribute("data-id")
            for e in browser.find_elements("css selector", "#results-full li.dropped")
        ]
        assert len(dropped) == round(K * (1 - overlap))
        changed |= overlap < 1
    assert changed, "the query should change its top 10 at some dim"
    assert _value(browser, "overlap") == 1.0 and _value(browser, "spearman") == pytest.approx(1.0)


def test_labelled_mode_metrics_and_curve(browser: Any, ref: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import Select

    _reset(browser)
    c, docs, queries = ref["corpus"], ref["docs"], ref["queries"]
    _act(browser, lambda: Select(browser.find_element("id", "labelled-query")).select_by_index(3))
    qid = c.query_ids[2]
    assert browser.find_element("id", "query").get_attribute("value") == c.queries[2]
    relevant = {
        e.get_attribute("data-id") for e in browser.find_elements("css selector", "#results-full li.relevant")
    }
    full_top, _ = ref_search(docs, queries[2], 384)
    assert relevant == {c.doc_ids[i] for i in full_top} & set(c.qrels[qid])
    rels = [set(c.qrels[q]) for q in c.query_ids]
    seen = {}
    for d in (384, 64, 32):
        _set_dim(browser, d)
        scores = _unit(queries, d) @ _unit(docs, d).T
        ranked = [[c.doc_ids[i] for i in np.argsort(-s, kind="stable")[:K]] for s in scores]
        ndcg = 100 * ndcg_at_k(ranked, rels, K)
        recall = 100 * float(np.mean([len(set(r) & g) / len(g) for r, g in zip(ranked, rels, strict=True)]))
        assert _value(browser, "ndcg") == pytest.approx(ndcg, abs=0.3)
        assert _value(browser, "recall") == pytest.approx(recall, abs=0.4)
        marker = browser.find_element("id", "curve-marker")
        assert marker.get_attribute("data-dim") == str(d)
        seen[d] = ndcg
    assert seen[32] < seen[384]  # the curve has something to show
    assert len(browser.find_elements("css selector", "#curve polyline")) == 2
    full_text = browser.find_element("id", "ndcg-full").text
    assert full_text.startswith("full dim ") and float(full_text[9:]) == pytest.approx(seen[384], abs=0.3)


def _stages(driver: Any) -> list[dict[str, str]]:
    rows = driver.find_elements("css selector", "#stages tbody tr")
    keys = ("stage", "where", "dim", "precision", "rows", "kept", "ms")
    return [
        dict(zip(keys, [td.text for td in r.find_elements("css selector", "td")], strict=True)) for r in rows
    ]


@pytest.mark.parametrize(
    ("precision", "rescore"), [("binary", True), ("int8", True), ("int8", False), ("binary", False)]
)
def test_quantized_scans_with_and_without_the_funnel(
    browser: Any, ref: dict[str, Any], precision: str, rescore: bool
) -> None:
    _reset(browser)
    c, docs = ref["corpus"], ref["docs"]
    _type_query(browser, QUERY)
    _set_dim(browser, 64)
    _set_precision(browser, precision)
    _set_checkbox(browser, "rescore", rescore)
    q = ref["emb"].encode([QUERY], dim=384, prompt_name="query")[0]
    top, scores = ref_search(docs, q, 64, precision, rescore, over=4)
    score = {c.doc_ids[i]: float(scores[i]) for i in range(len(docs))}
    assert_same_ranking(_ids(browser, "results-dim"), [c.doc_ids[i] for i in top], score)
    stages = _stages(browser)
    if rescore:
        assert [(s["stage"], s["where"], s["dim"], s["precision"], s["rows"], s["kept"]) for s in stages] == [
            ("shortlist", "browser", "64", precision, "2,000", "40"),
            ("rerank", "browser", "384", "float32", "40", "10"),
        ]
    else:
        assert [(s["stage"], s["rows"], s["kept"]) for s in stages] == [("scan", "2,000", "10")]
    assert all(float(s["ms"]) >= 0 for s in stages)
    cost = {
        r.get_attribute("data-precision"): r for r in browser.find_elements("css selector", "#cost tbody tr")
    }
    want_bytes = {"float32": 256, "float16": 128, "int8": 64, "binary": 8}
    for p, b in want_bytes.items():
        cells = [td.text for td in cost[p].find_elements("css selector", "td")]
        assert cells[1] == str(b)
    assert "current" in cost[precision].get_attribute("class")
    # 1,000,000 docs x 8 bytes (binary, 64 dims) = 8.0 MB
    assert [td.text for td in cost["binary"].find_elements("css selector", "td")][2] == "8.0 MB"


def test_funnel_on_the_server_matches_v1_search(browser: Any, demo: Demo) -> None:
    _reset(browser)
    _type_query(browser, QUERY)
    _set_dim(browser, 128)
    _set_precision(browser, "int8")
    _set_checkbox(browser, "rescore", True)
    from selenium.webdriver.common.keys import Keys

    oversample = browser.find_element("id", "oversample")
    oversample.send_keys(Keys.CONTROL, "a")
    _act(browser, lambda: oversample.send_keys("3", Keys.TAB))
    assert oversample.get_attribute("value") == "3"
    _set_checkbox(browser, "server", True)
    body = {"query": QUERY, "k": K, "shortlist_dim": 128, "shortlist_precision": "int8", "oversample": 3}
    want = httpx.post(demo.url + "v1/search", json=body).json()
    assert _ids(browser, "results-dim") == [r["id"] for r in want["data"][0]["results"]]
    stages = _stages(browser)
    assert [(s["stage"], s["where"]) for s in stages] == [
        ("embed query", "server"),
        ("shortlist", "server"),
        ("rerank", "server"),
    ]
    assert (stages[1]["dim"], stages[1]["precision"], stages[1]["rows"], stages[1]["kept"]) == (
        "128",
        "int8",
        "2,000",
        "30",
    )
    assert (stages[2]["dim"], stages[2]["rows"], stages[2]["kept"]) == ("384", "30", "10")
    assert "server" in browser.find_element("id", "mode-title").text
    _set_dim(browser, 384)  # no 384-dim tier: the server toggle turns itself off and says why
    assert not browser.find_element("id", "server").is_selected()
    assert "no 384-dim int8 tier" in browser.find_element("id", "server-note").text
    _set_checkbox(browser, "rescore", False)


def test_custom_texts_and_the_cap(browser: Any, ref: dict[str, Any]) -> None:
    _reset(browser)
    lines = [
        "A dog runs across the beach.",
        "The stock market fell sharply on Monday.",
        "Children are playing football in the park.",
        "She baked bread for the whole family.",
        "The train to Berlin was delayed by an hour.",
        "A cat sleeps on the warm windowsill.",
        "Parliament passed the new budget law.",
        "Kids ran around the playground after school.",
        "He repaired the old bicycle in his garage.",
        "Heavy rain flooded the streets overnight.",
        "The orchestra played Beethoven's fifth symphony.",
        "Two boys kick a ball on the grass.",
    ]
    area = browser.find_element("id", "custom-text")
    area.clear()
    area.send_keys("\n".join(lines))
    assert browser.find_element("id", "custom-count").text == "12 lines"
    _act(browser, browser.find_element("id", "use-custom").click)
    assert "12 of your texts" in browser.find_element("id", "status").text
    _type_query(browser, QUERY)
    emb = ref["emb"]
    vecs = emb.encode(lines, dim=384, prompt_name="document")
    q = emb.encode([QUERY], dim=384, prompt_name="query")[0]
    for d in (384, 32):
        _set_dim(browser, d)
        top, scan = ref_search(vecs, q, d)
        score = {f"line {i + 1}": float(scan[i]) for i in range(len(lines))}
        assert_same_ranking(_ids(browser, "results-dim"), [f"line {i + 1}" for i in top], score)
    assert browser.find_element("id", "ndcg").text == "–"  # no judgments for pasted texts
    assert browser.find_element("id", "server").get_attribute("disabled") is not None
    # over the cap: a message, nothing embedded, the page keeps working on the previous corpus
    too_many = "\n".join(f"line number {i}" for i in range(MAX_CUSTOM_LINES + 1))
    browser.execute_script(
        "const a = document.getElementById('custom-text'); a.value = arguments[0];"
        "a.dispatchEvent(new Event('input'));",
        too_many,
    )
    assert "over the 2,000 cap" in browser.find_element("id", "custom-count").text
    browser.find_element("id", "use-custom").click()
    msg = browser.find_element("id", "custom-message").text
    assert "2,001 lines is over the cap of 2,000" in msg and "Nothing was embedded" in msg
    assert "12 of your texts" in browser.find_element("id", "status").text
    _type_query(browser, "a dog on the sand")
    assert _ids(browser, "results-dim")[0] == "line 1"
    _act(browser, browser.find_element("id", "use-bundled").click)
    assert "2,000 bundled documents" in browser.find_element("id", "status").text
    assert len(_ids(browser, "results-full")) == K


def test_free_dim_mode(browser: Any, ref: dict[str, Any]) -> None:
    from selenium.webdriver.common.keys import Keys

    _reset(browser)
    _type_query(browser, QUERY)
    _set_dim(browser, 64)
    _set_checkbox(browser, "free-dim", True)
    slider = browser.find_element("id", "dim")
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("1", "384")
    _act(browser, lambda: slider.send_keys(Keys.ARROW_LEFT))
    assert _dim(browser) == 63
    c, docs = ref["corpus"], ref["docs"]
    q = ref["emb"].encode([QUERY], dim=384, prompt_name="query")[0]
    top, scan = ref_search(docs, q, 63)
    score = {c.doc_ids[i]: float(scan[i]) for i in range(len(docs))}
    assert_same_ranking(_ids(browser, "results-dim"), [c.doc_ids[i] for i in top], score)
    assert slider.get_attribute("aria-valuetext") == "63 dims"
    _set_checkbox(browser, "free-dim", False)  # snaps back to the nearest trained dim
    assert _dim(browser) == 64


def _screenshots(driver: Any) -> list[Path]:
    """Whole-page screenshots at laptop and phone width, at 64 and 384 dims, with the funnel on."""
    out = Path(os.environ.get("MRL_DEMO_SCREENSHOTS") or REPO / ".artifacts" / "demo")
    out.mkdir(parents=True, exist_ok=True)
    _reset(driver)
    _type_query(driver, QUERY)
    _set_checkbox(driver, "rescore", True)
    shots = []
    for width, height, name in ((1280, 900, "laptop"), (390, 844, "phone")):
        driver.set_window_size(width, height)
        for d in (64, 384):
            _set_dim(driver, d)
            if name == "phone":  # readable at phone width: nothing wider than the screen
                assert driver.execute_script(
                    "return document.documentElement.scrollWidth <= window.innerWidth"
                ), driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
            chrome = height - driver.execute_script("return window.innerHeight")
            driver.set_window_size(width, driver.execute_script("return document.body.scrollHeight") + chrome)
            path = out / f"demo_{name}_{d}.png"
            assert driver.save_screenshot(str(path))
            driver.set_window_size(width, height)
            shots.append(path)
    driver.set_window_size(1280, 900)
    for p in shots:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, p
    return shots


def test_default_model_demo() -> None:
    """``mrl-embed demo`` as a user runs it: the default model, the page, a query."""
    d = start_demo("--log-level", "warning")
    try:
        cfg = _check_config_and_index(d)
        assert cfg["model"] == "mrl-infer/minilm-l6-mrl-default"
        driver = _open_page(d.url)
        try:
            _type_query(driver, QUERY)
            assert len(_ids(driver, "results-dim")) == K and len(_ids(driver, "results-full")) == K
            # the page's corpus vectors are the default model's, within its int8 batch dependence:
            # encode() of 300 of these texts at batch sizes 1, 32 and 128 agrees to min cosine
            # 0.961..0.973 (mean 0.992; dynamic quantization's activation scale is per batch)
            c = load_demo_corpus()
            page = np.array(driver.execute_script("return Array.from(S.corpus.vecs.subarray(0, 384 * 50))"))
            with Embedder() as emb:
                want = emb.encode(c.docs[:50], dim=384, prompt_name="document")
            cos = (page.reshape(50, 384) * want).sum(axis=1)
            assert cos.min() > 0.95 and cos.mean() > 0.985, (cos.min(), cos.mean())
            shots = _screenshots(driver)
            print("screenshots:", json.dumps([str(p) for p in shots]))
            errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
            assert not errors, errors
        finally:
            driver.quit()
    finally:
        assert d.stop() == 0, "".join(d.log)


def test_demo_command_is_listed_and_documented(capsys: pytest.CaptureFixture[str]) -> None:
    from mrl_infer.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"serve", "demo"} <= set(listed), listed
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for flag in ("--model", "--port", "--host", "--variant", "--max-wait-ms"):
        assert flag in out
    assert "--index" not in out  # the demo indexes its own corpus
