"""The interactive Matryoshka demo: its bundled corpus, its routes, and ``mrl-embed demo``.

The page itself is one static file (``static/index.html``: plain JavaScript and inline SVG, no
CDN, no build step) served at ``/`` by every ``mrl-embed serve``. It embeds a corpus once at full
dim through ``/v1/embeddings`` and re-slices it in the browser. Two routes feed it:

- ``GET /demo/config.json``: the model's dims and prompts, the corpus' size, and whether the
  server's index is that corpus (then the page's funnel mode calls ``/v1/search``);
- ``GET /demo/corpus.json``: the bundled labelled corpus (documents, queries, judgments).

The bundled corpus is a fixed sample of the packaged MNLI-val retrieval set
(``mrl_infer/eval_data/retrieval``, provenance in its PROVENANCE.md): ``DEMO_QUERIES`` queries, all
their relevant documents, and other documents of the set up to ``DEMO_DOCUMENTS``.
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass
from typing import Any

DEMO_QUERIES = 300
DEMO_DOCUMENTS = 2000
DEMO_SEED = 0
MAX_CUSTOM_LINES = 2000
"""How many lines "use your own texts" takes; more is refused by the page with a message."""

# The shortlist tiers the demo index holds, so the page's funnel mode can shortlist at any of the
# model's smaller dims in each precision (the corpus is small: all of them together are ~2 MB).
DEMO_TIER_PRECISIONS = ("float16", "int8", "ubinary")


@dataclass(frozen=True)
class DemoCorpus:
    """A labelled corpus: documents, queries and, per query id, the relevant document ids."""

    name: str
    source: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, list[str]]

    def payload(self) -> dict[str, Any]:
        """The JSON the page reads from ``/demo/corpus.json``."""
        return {
            "name": self.name,
            "source": self.source,
            "documents": [{"id": i, "text": t} for i, t in zip(self.doc_ids, self.docs, strict=True)],
            "queries": [{"id": i, "text": t} for i, t in zip(self.query_ids, self.queries, strict=True)],
            "qrels": self.qrels,
        }


@functools.lru_cache(maxsize=1)
def load_demo_corpus(
    n_queries: int = DEMO_QUERIES, n_docs: int = DEMO_DOCUMENTS, seed: int = DEMO_SEED
) -> DemoCorpus:
    """The bundled sample of the MNLI-val retrieval set (deterministic for a given seed)."""
    import random

    from mrl_infer._quality import DEFAULT_RETRIEVAL_DIR, load_retrieval

    data = load_retrieval(DEFAULT_RETRIEVAL_DIR)
    rng = random.Random(seed)
    judged = [i for i, q in enumerate(data.query_ids) if data.qrels.get(q)]
    picked = sorted(rng.sample(judged, min(n_queries, len(judged))))
    query_ids = [data.query_ids[i] for i in picked]
    relevant = {d for q in query_ids for d in data.qrels[q]}
    others = [d for d in data.doc_ids if d not in relevant]
    fill = rng.sample(others, max(0, min(len(others), n_docs - len(relevant))))
    keep = relevant | set(fill)
    doc_pos = [i for i, d in enumerate(data.doc_ids) if d in keep]  # the set's own order
    return DemoCorpus(
        name="MNLI-val retrieval sample",
        source=(
            f"{len(query_ids)} queries and {len(doc_pos)} documents sampled (seed {seed}) from the "
            "MNLI-val retrieval set shipped in mrl_infer/eval_data (MultiNLI 1.0 validation; OANC and "
            "CC BY-SA 3.0 / CC BY 3.0 texts; Williams, Nangia, Bowman, NAACL 2018)"
        ),
        doc_ids=[data.doc_ids[i] for i in doc_pos],
        docs=[data.docs[i] for i in doc_pos],
        query_ids=query_ids,
        queries=[data.queries[i] for i in picked],
        qrels={q: sorted(data.qrels[q]) for q in query_ids},
    )


def demo_page() -> bytes:
    """The page's HTML (package data)."""
    from importlib import resources

    return resources.files("mrl_infer.server").joinpath("static", "index.html").read_bytes()


def demo_routes(state: Any, corpus_indexed: bool) -> list[Any]:
    """``/``, ``/demo/config.json`` and ``/demo/corpus.json`` for the app in ``_app``.

    ``corpus_indexed``: the server's index holds the bundled corpus (``mrl-embed demo``).
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from mrl_infer.server._errors import error_response

    page = demo_page()

    async def index_page(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> Response:
        try:
            backend = state.require_backend()
        except Exception as exc:
            return error_response(exc)
        corpus = load_demo_corpus()
        index = state.index
        return JSONResponse(
            {
                "model": state.model_name,
                "embedding_dim": backend.embedding_dim,
                "dims": sorted(backend.dims, reverse=True),
                "prompts": sorted(backend.prompts),
                "max_custom_lines": MAX_CUSTOM_LINES,
                "max_inputs": state.config.max_inputs,
                "corpus": {
                    "name": corpus.name,
                    "documents": len(corpus.docs),
                    "queries": len(corpus.queries),
                    "indexed": bool(corpus_indexed and index is not None),
                },
            }
        )

    async def corpus_json(request: Request) -> Response:
        return JSONResponse(load_demo_corpus().payload())

    return [
        Route("/", index_page, methods=["GET"]),
        Route("/demo/config.json", config, methods=["GET"]),
        Route("/demo/corpus.json", corpus_json, methods=["GET"]),
    ]


def build_demo_index(embedder: Any) -> Any:
    """An :class:`~mrl_infer.Index` over the bundled corpus with a shortlist tier at each of the
    model's dims below full, in each of ``DEMO_TIER_PRECISIONS``; ids are the documents' ids."""
    from mrl_infer.search import Index

    corpus = load_demo_corpus()
    full = embedder.embedding_dim
    small = sorted(d for d in embedder.manifest.dims if d < full)
    first = small[-1] if small else full
    index = Index.build(embedder, corpus.docs, ids=corpus.doc_ids, shortlist_dim=first)
    for dim in small:
        for precision in DEMO_TIER_PRECISIONS:
            if (dim, precision) not in index.tiers and not (precision == "ubinary" and dim % 8):
                index.add_tier(dim, precision)
    return index


def add_parser(sub: Any, add_common: Any) -> None:
    """Register ``demo`` on the ``mrl-embed`` subparsers (``add_common`` adds serve's model flags)."""
    p = sub.add_parser(
        "demo",
        help="open the interactive Matryoshka demo page (needs the [server] extra)",
        description=(
            "Serve the demo page on the default model (or --model) with a bundled labelled corpus "
            "indexed for /v1/search, and print its URL. Move the dim slider to see what each "
            "Matryoshka dim keeps and costs. See docs/demo.md."
        ),
    )
    add_common(p)
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Embed and index the bundled corpus, then serve the page until SIGTERM/SIGINT."""
    from mrl_infer.server._cli import load_embedder, require_server_extra, serve_app

    require_server_extra("demo")
    embedder = load_embedder(args)
    corpus = load_demo_corpus()
    print(f"mrl-embed demo: indexing {len(corpus.docs)} documents of the bundled corpus ...", flush=True)
    index = build_demo_index(embedder)
    return serve_app(args, embedder, index=index, demo_corpus=True, announce=True)
