"""The two tiers of an :class:`~mrl_infer.search.Index` in Qdrant: named vectors and a prefetch.

For corpora that outgrow one machine, the funnel maps onto an existing vector database instead of
a home-made distributed index:

- the shortlist tier becomes a small named vector per prefix dim (``"mrl128"``: the first 128 dims,
  renormalized, cosine), the one Qdrant indexes and scans;
- the rerank tier becomes the named vector ``"full"`` (all ``rerank_dim`` dims, cosine), read only
  for the prefetched candidates;
- ``oversample`` becomes the prefetch ``limit`` (``k * oversample``) of the Query API.

:func:`to_qdrant` copies an index into a collection; :func:`qdrant_search` sends the prefetch query
and returns a :class:`~mrl_infer.search.SearchResult`. Point ids are row positions (Qdrant ids must
be unsigned ints or UUIDs; ours may be any str), and each payload is ``{"id": <our id>, **fields}``.

What the collection holds is recorded in its **collection metadata** (key ``"mrl_infer"``: the
index's model info with its fingerprint, the dims, the vector names, the index's oversample, and a
``complete`` flag set only once every row is written). Collection metadata is stored by Qdrant
itself (server >= 1.16, and qdrant-client's local mode, which is what the tests run), so nothing
in the collection is a fake point that a search or a count could trip over.

qdrant-client is imported inside the functions only: ``import mrl_infer.search`` never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mrl_infer.errors import DimError, InputError
from mrl_infer.search._index import SearchResult, _as_vectors, model_fingerprint
from mrl_infer.search._scan import prefix_normalize

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

    from mrl_infer.search._index import Index

#: Key of this module's record in the collection metadata.
METADATA_KEY = "mrl_infer"
#: Name and version of that record's layout.
FORMAT = "mrl-infer-qdrant"
FORMAT_VERSION = 1
#: Name of the named vector that holds the rerank tier.
FULL_VECTOR = "full"
#: Queries per ``query_batch_points`` request (bounds one request's body for a server).
QUERY_BATCH = 64


def shortlist_vector_name(dim: int) -> str:
    """The named vector of the ``dim``-dim shortlist prefix: ``"mrl128"``."""
    return f"mrl{dim}"


def _missing_qdrant() -> ImportError:
    return ImportError("the Qdrant bridge needs qdrant-client: pip install 'mrl-infer[qdrant]'")


def _models() -> Any:
    try:
        from qdrant_client import models
    except ImportError:
        raise _missing_qdrant() from None
    return models


def _shortlist_dims(index: Index, dims: Sequence[int] | None) -> list[int]:
    if dims is None:
        dims = [d for d, _precision in index.tiers]
    out: list[int] = []
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)):
            raise DimError(f"shortlist_dims must be ints, got {d!r}")
        if not 1 <= int(d) <= index.rerank_dim:
            raise DimError(
                f"shortlist dim {d} must be between 1 and the index's rerank tier's {index.rerank_dim} "
                f"dims (the shortlist vectors are cut from the full vectors)"
            )
        if int(d) not in out:
            out.append(int(d))
    if not out:
        raise DimError("shortlist_dims is empty: give at least one prefix dim")
    return out


def _record(client: QdrantClient, collection: str) -> dict[str, Any] | None:
    """This module's metadata record of ``collection``, or None if it has none."""
    config = client.get_collection(collection).config
    meta = getattr(config, "metadata", None) or {}
    record = meta.get(METADATA_KEY)
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def to_qdrant(
    index: Index,
    client: QdrantClient,
    collection: str,
    *,
    shortlist_dims: Sequence[int] | None = None,
    batch_size: int = 512,
    overwrite: bool = False,
    vector_params: Mapping[str, Mapping[str, Any]] | None = None,
    collection_params: Mapping[str, Any] | None = None,
) -> None:
    """Copy ``index`` into a new Qdrant collection: one named vector per shortlist dim, plus ``"full"``.

    Args:
        index: the index to copy; its full vectors are read from the rerank tier (memory-mapped
            once saved), ``batch_size`` rows at a time, so memory stays bounded for any size.
        client: a ``qdrant_client.QdrantClient`` (local mode, ``QdrantClient(":memory:")`` or
            ``QdrantClient(path=...)``, or a server, ``QdrantClient(url=...)``).
        collection: the collection to create.
        shortlist_dims: prefix dims to store as shortlist vectors ``"mrl{dim}"`` (default: the
            dims of the index's shortlist tiers, the default tier's first). Stored as float32
            (cosine); Qdrant's own quantization can be added per vector with ``vector_params``.
        batch_size: rows per upsert request.
        overwrite: replace an existing collection, only one that ``to_qdrant`` wrote.
        vector_params: extra ``VectorParams`` keywords per vector name, e.g.
            ``{"full": {"on_disk": True}, "mrl128": {"quantization_config": ...}}`` (a server
            uses them; local mode searches exhaustively and ignores them).
        collection_params: extra ``create_collection`` keywords (a server's ``shard_number``,
            ``replication_factor``, ``on_disk_payload`` ...); not ``vectors_config`` or ``metadata``.

    Raises:
        DimError: a shortlist dim outside ``1..index.rerank_dim``.
        InputError: the collection exists (without ``overwrite``, or not written by ``to_qdrant``),
            a stored field is named ``"id"`` (the payload key of our id), an unknown
            ``vector_params`` name, ``collection_params`` that set the vectors or the metadata,
            or ``batch_size < 1``.

    On any error while writing rows the new collection is deleted again, and a collection whose
    metadata does not say ``complete`` is refused by :func:`qdrant_search`.
    """
    models = _models()
    dims = _shortlist_dims(index, shortlist_dims)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    names = {shortlist_vector_name(d): d for d in dims}
    names[FULL_VECTOR] = index.rerank_dim
    extra = dict(vector_params or {})
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise InputError(f"vector_params names {unknown}; this collection's vectors are {sorted(names)}")
    create = dict(collection_params or {})
    clash = sorted({"collection_name", "vectors_config", "metadata"} & set(create))
    if clash:
        raise InputError(f"collection_params cannot set {clash}: to_qdrant writes them")
    if client.collection_exists(collection):
        if not overwrite:
            raise InputError(f"Qdrant collection {collection!r} already exists (pass overwrite=True)")
        if _record(client, collection) is None:
            raise InputError(
                f"Qdrant collection {collection!r} exists and was not written by to_qdrant; "
                "refusing to replace it"
            )
        client.delete_collection(collection)
    from mrl_infer import __version__

    record: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"mrl-infer {__version__}",
        "model": index.model,
        "dim": index.dim,
        "full_vector": FULL_VECTOR,
        "full_dim": index.rerank_dim,
        "shortlist": [{"dim": d, "vector": shortlist_vector_name(d)} for d in dims],
        "oversample": index.oversample,
        "count": len(index),
        "id_key": "id",
        "complete": False,
    }
    client.create_collection(
        collection,
        vectors_config={
            name: models.VectorParams(size=size, distance=models.Distance.COSINE, **extra.get(name, {}))
            for name, size in names.items()
        },
        metadata={METADATA_KEY: record},
        **create,
    )
    try:
        has_fields = index._fields is not None
        for start, block in index._store.chunks(batch_size):
            stop = start + len(block)
            vectors = {FULL_VECTOR: prefix_normalize(block, index.rerank_dim)}
            for d in dims:
                vectors[shortlist_vector_name(d)] = prefix_normalize(block, d)
            fields = index.fields(range(start, stop)) if has_fields else [{}] * len(block)
            payloads = []
            for pos, (row_id, row) in enumerate(zip(index._ids[start:stop], fields, strict=True), start):
                if "id" in row:
                    raise InputError(
                        f"row {pos} has a field named 'id', the payload key that holds the index's id; "
                        "rename that field"
                    )
                payloads.append({"id": row_id, **row})
            client.upsert(
                collection,
                points=models.Batch(
                    ids=list(range(start, stop)),
                    vectors={name: v.tolist() for name, v in vectors.items()},
                    payloads=payloads,
                ),
                wait=True,
            )
        client.update_collection(collection, metadata={METADATA_KEY: {**record, "complete": True}})
    except BaseException:
        client.delete_collection(collection)
        raise


def qdrant_search(
    client: QdrantClient,
    collection: str,
    queries: str | Sequence[str] | np.ndarray,
    k: int = 10,
    *,
    shortlist_dim: int | None = None,
    oversample: int | None = None,
    embedder: Any = None,
    prefetch_params: Any = None,
) -> SearchResult:
    """Top ``k`` points per query from a :func:`to_qdrant` collection: prefetch, then rerank.

    Each query sends one Query API request: a ``Prefetch`` of ``k * oversample`` candidates on the
    ``"mrl{shortlist_dim}"`` vector with the query's renormalized prefix, and a main query on
    ``"full"`` with the full query vector that rescores only those candidates. Results mirror
    :meth:`Index.search`: ``ids`` (the index's ids, from the payload), ``scores`` (float32
    cosine, ``[n_queries, k']`` with ``k' = min(k, count)``) and ``positions`` (the point ids:
    row numbers of the index). A row with fewer than ``k'`` hits (a server's approximate index
    may return fewer) is padded with id None, position -1 and score NaN.

    Args:
        queries: query embeddings float ``[n, dim]`` / ``[dim]`` at the index's full dim, or texts
            (embedded with ``embedder`` and the model's query prompt).
        shortlist_dim: the prefix vector to prefetch on (default: the index's default tier's dim).
        oversample: candidates per result (default: the index's ``oversample``).
        embedder: an :class:`~mrl_infer.Embedder`, needed for text queries; refused (InputError)
            if it is not the model that built the index (by fingerprint).
        prefetch_params: ``qdrant_client.models.SearchParams`` for the prefetch (a server's
            ``hnsw_ef`` or quantization settings; local mode ignores them).

    Raises:
        InputError: no such collection, one not written by :func:`to_qdrant` or left incomplete,
            ``k`` or ``oversample`` not a positive int, no/NaN/zero queries, text without
            ``embedder``, another model's embedder.
        DimError: queries of another dim, or a ``shortlist_dim`` the collection lacks (the
            message lists the ones it has).
    """
    models = _models()
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    if not client.collection_exists(collection):
        raise InputError(f"no Qdrant collection {collection!r}")
    record = _record(client, collection)
    if record is None:
        raise InputError(f"Qdrant collection {collection!r} was not written by to_qdrant (no metadata)")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"Qdrant collection {collection!r} was written by a newer mrl-infer (format_version "
            f"{record['format_version']}, this version reads {FORMAT_VERSION}); upgrade mrl-infer"
        )
    if not record.get("complete"):
        raise InputError(
            f"Qdrant collection {collection!r} is incomplete (to_qdrant did not finish): "
            "rerun to_qdrant(..., overwrite=True)"
        )
    available = {int(e["dim"]): str(e["vector"]) for e in record["shortlist"]}
    sdim = int(record["shortlist"][0]["dim"]) if shortlist_dim is None else shortlist_dim
    if sdim not in available:
        have = ", ".join(f"{d} ({name!r})" for d, name in available.items())
        raise DimError(
            f"Qdrant collection {collection!r} has no {sdim}-d shortlist vector; it has: {have} "
            "(add one with to_qdrant(..., shortlist_dims=[...]))"
        )
    over = int(record.get("oversample", 1)) if oversample is None else oversample
    if isinstance(over, bool) or not isinstance(over, (int, np.integer)) or over < 1:
        raise InputError(f"oversample must be a positive int, got {over!r}")
    model = record.get("model")
    if embedder is not None and model is not None:
        fp = model_fingerprint(embedder.manifest)
        if fp != model["fingerprint"]:
            raise InputError(
                f"Qdrant collection {collection!r} was built by model {model['name']} (fingerprint "
                f"{model['fingerprint'][:12]}), but the embedder is {embedder.manifest.name} "
                f"(fingerprint {fp[:12]}): their embeddings are not comparable"
            )
    stats: dict[str, Any] = {}
    if isinstance(queries, str) or (
        isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries)
    ):
        if embedder is None:
            raise InputError("text queries need embedder= (the model that built the index)")
        texts = [queries] if isinstance(queries, str) else list(queries)
        t0 = time.perf_counter()
        prompt = (model or {}).get("query_prompt_name")
        q = np.asarray(embedder.encode(texts, dim=embedder.embedding_dim, prompt_name=prompt), np.float32)
        q = q.reshape(len(texts), -1)
        stats["embed_seconds"] = time.perf_counter() - t0
    elif isinstance(queries, (list, tuple)) and not queries:
        raise InputError("no queries given")
    else:
        q = _as_vectors(queries, "query embeddings")
    if q.shape[1] != record["dim"]:
        raise DimError(
            f"query embeddings have dim {q.shape[1]}, Qdrant collection {collection!r} holds "
            f"dim {record['dim']}"
        )
    count = int(record["count"])
    if count == 0:
        raise InputError(f"Qdrant collection {collection!r} is empty")
    kk = int(k) * int(over)
    width = min(int(k), count)
    small = prefix_normalize(q, sdim)
    full = prefix_normalize(q, int(record["full_dim"]))
    t0 = time.perf_counter()
    points: list[list[Any]] = []
    for b in range(0, len(q), QUERY_BATCH):
        requests = [
            models.QueryRequest(
                prefetch=models.Prefetch(
                    query=s.tolist(), using=available[sdim], limit=kk, params=prefetch_params
                ),
                query=f.tolist(),
                using=record["full_vector"],
                limit=int(k),
                with_payload=[record["id_key"]],
            )
            for s, f in zip(small[b : b + QUERY_BATCH], full[b : b + QUERY_BATCH], strict=True)
        ]
        points.extend(r.points for r in client.query_batch_points(collection, requests=requests))
    seconds = time.perf_counter() - t0
    ids: list[list[Any]] = []
    scores = np.full((len(q), width), np.nan, np.float32)
    positions = np.full((len(q), width), -1, np.int64)
    for i, hits in enumerate(points):
        hits = hits[:width]
        ids.append([(h.payload or {}).get(record["id_key"]) for h in hits] + [None] * (width - len(hits)))
        scores[i, : len(hits)] = [h.score for h in hits]
        positions[i, : len(hits)] = [int(h.id) for h in hits]
    stats.update(  # both stages run in one request: one time for both
        {
            "queries": len(q),
            "engine": "qdrant",
            "shortlist": {"dim": sdim, "vector": available[sdim], "candidates": kk},
            "rerank": {"dim": int(record["full_dim"]), "vector": record["full_vector"], "kept": width},
            "seconds": seconds,
        }
    )
    return SearchResult(ids, scores, positions, stats)
