"""``Index``: Matryoshka funnel search (shortlist with a small prefix, rerank with the full vectors)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import DimError, IndexFormatError, InputError
from mrl_infer.search import _hnsw, _scan, _store
from mrl_infer.search._defaults import (  # the defaults and why (measured)
    DEFAULT_OVERSAMPLE,
    DEFAULT_RERANK_PRECISION,
    DEFAULT_SHORTLIST_DIM,
    DEFAULT_SHORTLIST_PRECISION,
)

logger = logging.getLogger(__name__)


def model_fingerprint(manifest: Any) -> str:
    """A stable id of the model that produced the vectors: weights, dims, pooling and prompts."""
    weights = (manifest.source or {}).get("files_sha256") or sorted(
        v.sha256 or v.file for v in manifest.variants.values()
    )
    ident = {
        "name": manifest.name,
        "embedding_dim": manifest.embedding_dim,
        "dims": manifest.dims,
        "pooling": manifest.pooling,
        "prompts": manifest.prompts,
        "weights": weights,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def model_info(embedder: Any) -> dict[str, Any]:
    """What an index records of the embedder that built it (to refuse another model's queries)."""
    from mrl_infer._hub import default_model_dir

    m = embedder.manifest
    default = Path(embedder.model_dir).resolve() == Path(default_model_dir()).resolve()
    prompts = m.prompts or {}
    return {
        "name": m.name or (m.source or {}).get("model") or Path(embedder.model_dir).name,
        "fingerprint": model_fingerprint(m),
        "location": None if default else str(embedder.model_dir),
        "default": default,
        "embedding_dim": m.embedding_dim,
        "dims": m.dims,
        "query_prompt_name": "query" if "query" in prompts else None,
        "document_prompt_name": "document" if "document" in prompts else None,
    }


@dataclass
class SearchResult:
    """Results of :meth:`Index.search`, one row per query, best first.

    ``ids``: ``[n_queries][k']`` ids; ``scores``: float32 ``[n_queries, k']`` cosine similarities;
    ``positions``: int64 ``[n_queries, k']`` row numbers in the index. ``k' = min(k, len(index))``.
    ``stats``: what each stage did, filled by :meth:`Index.search` (``time.perf_counter`` seconds)::

        {"queries": n, "embed_seconds": s,                      # embed_seconds: text queries only
         "shortlist": {"dim", "precision", "rows", "candidates", "engine", "seconds"},
                                                                # + "ef_search" (engine="hnsw"),
                                                                # "exact_queries" (see search())
         "rerank": {"dim", "precision", "rows", "kept", "seconds"}}
        {"queries": n, "exact": {"dim", "precision", "rows", "kept", "seconds"}}   # exact=True

    ``shortlist.rows`` is the rows scanned per query (``len(index)``), ``candidates`` the rows kept
    per query (``min(len(index), k' * oversample)``); ``rerank.rows`` is those candidates and
    ``kept`` is ``k'``. ``rerank.dim`` / ``exact.dim`` is the rerank dim used (``rerank_dim``).
    """

    ids: list[list[Any]]
    scores: np.ndarray
    positions: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _as_vectors(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what} must be a float array [n, dim], got shape {arr.shape} ({arr.dtype})")
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{what}: rows {bad[:10].tolist()} contain NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise InputError(f"{what}: rows {np.flatnonzero(norms == 0)[:10].tolist()} are all zeros")
    return arr / norms[:, None]


class Index:
    """Matryoshka funnel search over unit vectors: shortlist on a small prefix, rerank on the full one.

    Two kinds of tier per row:

    - a **shortlist tier**, in RAM: the first ``shortlist_dim`` dims, renormalized, stored as
      float16, int8 (per-dim scale, folded into the query) or ubinary (packed sign bits, scored
      asymmetrically against the float query). Scanned in full for every query batch, in
      onnxruntime (compiled GEMM + grouped top-k), ``oversample * k`` candidates kept per query.
      The constructor's ``shortlist_dim``/``shortlist_precision`` is the *default* tier;
      :meth:`add_tier` adds more (``search(shortlist_dim=..., shortlist_precision=...)`` picks one);
    - the **rerank tier**: the first ``rerank_dim`` dims (default: all), float16 or float32,
      memory-mapped once saved; only the shortlisted rows are read and rescored exactly.

    Defaults (``shortlist_dim=128``, ``int8``, ``oversample=48``, float16 rerank) come from the
    Pareto table in docs/search.md, measured on the default model's real embeddings: the cheapest
    setting with recall@10 >= 0.99 against exact full-dim search (0.9936 over 101,915 texts) whose
    tier is at most 1/12 of float32 full vectors (128 B per row) and runs in the core scan. Smaller
    prefixes of this model rank near neighbours too loosely: 64 dims reach 0.92 at 32x.
    ``engine="faiss"`` (the ``[faiss]`` extra) scans ubinary tiers by Hamming distance instead.
    ``exact=True`` searches the whole rerank tier by brute force (the reference).

    ``shortlist_dim=None`` means 128, or the vectors' dim if smaller.
    ``k`` larger than the index returns every row, sorted; results always have
    ``min(k, len(index))`` columns.

    >>> index = Index.build(Embedder(), texts)          # or Index.from_embeddings(vectors, ids=...)
    >>> hits = index.search("a query", k=10)            # hits.ids[0], hits.scores[0]
    >>> index.save("my-index"); index = Index.load("my-index")
    """

    def __init__(
        self,
        dim: int,
        *,
        shortlist_dim: int | None = None,
        shortlist_precision: str = DEFAULT_SHORTLIST_PRECISION,
        rerank_dim: int | None = None,
        rerank_precision: str = DEFAULT_RERANK_PRECISION,
        oversample: int = DEFAULT_OVERSAMPLE,
        model: dict[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        if dim < 1:
            raise DimError(f"dim must be >= 1, got {dim}")
        rerank_dim = dim if rerank_dim is None else rerank_dim
        shortlist_dim = min(DEFAULT_SHORTLIST_DIM, dim) if shortlist_dim is None else shortlist_dim
        for name, value in (("shortlist_dim", shortlist_dim), ("rerank_dim", rerank_dim)):
            if not 1 <= value <= dim:
                raise DimError(f"{name} must be between 1 and the vectors' dim {dim}, got {value}")
        if shortlist_precision not in _scan.SHORTLIST_PRECISIONS:
            raise ValueError(
                f"shortlist_precision must be one of {_scan.SHORTLIST_PRECISIONS}, "
                f"got {shortlist_precision!r}"
            )
        if shortlist_precision == "ubinary" and shortlist_dim % 8:
            raise DimError(f"a ubinary shortlist needs shortlist_dim divisible by 8, got {shortlist_dim}")
        if oversample < 1:
            raise ValueError(f"oversample must be >= 1, got {oversample}")
        self.dim = dim
        self.shortlist_dim = shortlist_dim
        self.shortlist_precision = shortlist_precision
        self.oversample = oversample
        self.model = model
        self.threads = threads
        # tier specs, the default first; a spec's Tier is built with the first rows (int8 scales
        # are fitted to them), so an empty index holds specs only
        self._tier_specs: list[tuple[int, str]] = [(shortlist_dim, shortlist_precision)]
        self._tiers: dict[tuple[int, str], _scan.Tier] = {}
        self._store = _scan.RowStore(rerank_dim, rerank_precision)
        self._graph: _hnsw.Graph | None = None  # add_hnsw()
        self._ids: list[Any] = []
        self._id_set: set[Any] = set()
        self._fields: list[dict[str, Any]] | _store.FieldFile | None = None
        self._embedder: Any = None
        self._embedder_lock = threading.Lock()

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        embedder: Any,
        texts: Iterable[str],
        ids: Sequence[Any] | None = None,
        *,
        fields: Sequence[dict[str, Any]] | None = None,
        store_text: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        **params: Any,
    ) -> Index:
        """Embed ``texts`` (full dim, the model's document prompt) and index them.

        Args:
            embedder: an :class:`~mrl_infer.Embedder`; queries given as text are embedded with it.
            texts: the documents.
            ids: one id per text (int or str, distinct); default: 0..n-1.
            fields: one JSON-serializable dict per text, returned by :meth:`fields`.
            store_text: store each text as field ``"text"``.
            params: the :class:`Index` constructor's keywords (``shortlist_dim`` ...).
        """
        texts = list(texts)
        index = cls(embedder.embedding_dim, model=model_info(embedder), **params)
        index._embedder = embedder
        index.add(
            texts,
            ids,
            fields=fields,
            store_text=store_text,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
        )
        return index

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        ids: Sequence[Any] | None = None,
        *,
        model: Any = None,
        fields: Sequence[dict[str, Any]] | None = None,
        **params: Any,
    ) -> Index:
        """Index vectors already computed (float ``[n, dim]``; rows are renormalized).

        ``model``: the :class:`~mrl_infer.Embedder` (or a model directory / Hub id / None for bare
        vectors) that produced them; text queries need it, vector queries do not.
        """
        vectors = _as_vectors(embeddings, "embeddings")
        info = None
        embedder = None
        if model is not None:
            if not hasattr(model, "manifest"):
                from mrl_infer import Embedder

                model = Embedder(None if model == "default" else model)
            embedder = model
            info = model_info(model)
            if info["embedding_dim"] != vectors.shape[1]:
                raise DimError(
                    f"embeddings have dim {vectors.shape[1]}, but model {info['name']} embeds at "
                    f"{info['embedding_dim']} (index the full-dim output)"
                )
        index = cls(vectors.shape[1], model=info, **params)
        index._embedder = embedder
        index.add(vectors, ids, fields=fields)
        return index

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], *, model: Any = None, store_text: bool = True, **params: Any
    ) -> Index:
        """Index an ``mrl-embed embed`` output: ``.npy`` (ids 0..n-1) or Parquet (its ``id`` column,
        and its ``text`` column stored as a field when present and ``store_text``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such embeddings file")
        if path.suffix == ".npy":
            try:
                vectors = np.load(path, mmap_mode="r")
            except ValueError as exc:
                raise InputError(f"{path}: not a readable .npy file ({exc})") from None
            return cls.from_embeddings(vectors, model=model, **params)
        if path.suffix != ".parquet":
            raise InputError(f"{path}: expected a .npy or .parquet output of mrl-embed embed")
        from mrl_infer.jobs._readers import missing_extra

        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise missing_extra("pyarrow", "files") from None
        table = pq.read_table(path)
        if "embedding" not in table.column_names:
            raise InputError(f"{path}: no 'embedding' column (columns: {table.column_names})")
        col = table.column("embedding").combine_chunks()
        width = col.type.list_size if hasattr(col.type, "list_size") else None
        if width is None:
            raise InputError(f"{path}: column 'embedding' is not a fixed-size list ({col.type})")
        vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(len(table), width)
        ids = table.column("id").to_pylist() if "id" in table.column_names else None
        fields = None
        if store_text and "text" in table.column_names:
            fields = [{"text": t} for t in table.column("text").to_pylist()]
        return cls.from_embeddings(vectors, ids, model=model, fields=fields, **params)

    def add(
        self,
        items: np.ndarray | Sequence[str],
        ids: Sequence[Any] | None = None,
        *,
        fields: Sequence[dict[str, Any]] | None = None,
        store_text: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
    ) -> None:
        """Append rows: texts (embedded with the index's model) or unit vectors ``[n, dim]``."""
        texts = None
        if isinstance(items, np.ndarray) or (len(items) and not isinstance(items[0], str)):
            vectors = _as_vectors(items, "embeddings")
        else:
            texts = list(items)
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("add() takes texts (a sequence of str) or an embeddings array")
            emb = self._query_embedder()
            prompt = (self.model or {}).get("document_prompt_name")
            vectors = (
                emb.encode(
                    texts,
                    dim=emb.embedding_dim,
                    prompt_name=prompt,
                    batch_size=batch_size,
                    show_progress_bar=show_progress_bar,
                )
                if texts
                else np.empty((0, self.dim))
            )
            vectors = vectors.reshape(len(texts), -1).astype(np.float32)
        n = len(vectors)
        if vectors.shape[1] != self.dim:
            raise DimError(f"embeddings have dim {vectors.shape[1]}, this index holds dim {self.dim}")
        new_ids = self._check_ids(ids, n)
        rows = self._check_fields(fields, texts if store_text else None, n)
        if n == 0:
            return
        for spec in self._tier_specs:
            tier = self._tiers.get(spec)
            if tier is None:
                self._tiers[spec] = _scan.make_tier(vectors, *spec)
            else:
                tier.append(vectors)
        self._store.append(vectors)
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        graph = self._graph
        if graph is not None and (graph.index is not None or graph.path is None):
            graph.ensure(self._store)  # a graph not yet read from disk takes the new rows when read
        if rows is not None or self._fields is not None:  # rows without fields get {}
            old = self._fields or [{} for _ in range(len(self._ids) - n)]
            old = old.to_list() if isinstance(old, _store.FieldFile) else old
            self._fields = old + (rows or [{} for _ in range(n)])

    def add_tier(self, dim: int, precision: str) -> None:
        """Add a shortlist tier: the first ``dim`` dims of every row at ``precision``.

        Built now over all current rows, from the rerank tier's vectors (decoded to float32; so
        from float16 values if the rerank tier is float16, and an int8 tier's scale is fitted to
        these rows); later :meth:`add` calls append to it as to every tier. Adding a tier the
        index already has is a no-op. Searches pick it with
        ``search(shortlist_dim=dim, shortlist_precision=precision)``; :attr:`tiers` lists them.

        Raises:
            DimError: ``dim`` outside ``1..rerank_dim`` (the tier is built from the rerank tier),
                or a ubinary ``dim`` not divisible by 8.
            ValueError: ``precision`` not one of float16, int8, ubinary.
        """
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise DimError(f"add_tier: dim must be an int, got {dim!r}")
        dim = int(dim)
        if precision not in _scan.SHORTLIST_PRECISIONS:
            raise ValueError(
                f"add_tier: precision must be one of {_scan.SHORTLIST_PRECISIONS}, got {precision!r}"
            )
        if not 1 <= dim <= self.rerank_dim:
            raise DimError(
                f"add_tier: dim must be between 1 and the rerank tier's {self.rerank_dim} dims "
                f"(tiers are built from it), got {dim}"
            )
        if precision == "ubinary" and dim % 8:
            raise DimError(f"add_tier: a ubinary tier needs dim divisible by 8, got {dim}")
        spec = (dim, precision)
        if spec in self._tier_specs:
            return
        if len(self):
            vectors = np.concatenate(
                [np.asarray(seg[:, :dim], dtype=np.float32) for seg in self._store.segments]
            )
            self._tiers[spec] = _scan.make_tier(vectors, dim, precision)
        self._tier_specs.append(spec)

    def add_hnsw(
        self, dim: int | None = None, *, m: int = _hnsw.M, ef_construction: int = _hnsw.EF_CONSTRUCTION
    ) -> None:
        """Build an HNSW graph over the first ``dim`` dims of every row (default: the rerank dims),
        for ``search(engine="hnsw")``: an approximate shortlist whose cost grows with about
        ``log(N)``, for large indexes (needs ``pip install 'mrl-infer[faiss]'``).

        Built now from the rerank tier (150 s per million 384-d rows on 2 cores, ~``dim + 8 m``
        bytes of RAM per row); later :meth:`add` calls extend it; :meth:`save` writes it with the
        index. Replaces a graph the index already has. ``m`` is the graph degree (faiss' ``M``),
        ``ef_construction`` the candidate list while building: larger is slower to build and to
        search, and finds more of the true neighbours. See :mod:`mrl_infer.search._hnsw`.

        Raises:
            DimError: ``dim`` outside ``1..rerank_dim``.
            InputError: ``m`` < 2 or ``ef_construction`` < 1.
            ImportError: faiss-cpu is not installed.
        """
        dim = self.rerank_dim if dim is None else dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise DimError(f"add_hnsw: dim must be an int, got {dim!r}")
        if not 1 <= dim <= self.rerank_dim:
            raise DimError(
                f"add_hnsw: dim must be between 1 and the rerank tier's {self.rerank_dim} dims "
                f"(the graph is built from it), got {dim}"
            )
        for name, value, low in (("m", m, 2), ("ef_construction", ef_construction, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"add_hnsw: {name} must be an int >= {low}, got {value!r}")
        _hnsw.faiss_module()  # the ImportError now, not at the first search
        graph = _hnsw.Graph(int(dim), int(m), int(ef_construction))
        if len(self):
            graph.ensure(self._store)
        self._graph = graph

    @property
    def hnsw(self) -> dict[str, int] | None:
        """The HNSW graph's settings (``dim``, ``m``, ``ef_construction``), or None without one."""
        g = self._graph
        return None if g is None else {"dim": g.dim, "m": g.m, "ef_construction": g.ef_construction}

    def _check_ids(self, ids: Sequence[Any] | None, n: int) -> list[Any]:
        if ids is None:
            if self._ids and not isinstance(self._ids[-1], int):
                raise InputError("this index has string ids: pass ids= for the new rows")
            start = len(self._ids)
            return list(range(start, start + n))
        ids = [i.item() if isinstance(i, np.generic) else i for i in ids]
        if len(ids) != n:
            raise InputError(f"got {len(ids)} ids for {n} rows")
        for i, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise InputError(f"ids[{i}] is {type(value).__name__}; ids must be int or str")
        if len(set(ids)) != n:
            raise InputError("ids contain duplicates")
        clash = self._id_set.intersection(ids)
        if clash:
            raise InputError(f"ids already in the index: {sorted(map(str, clash))[:5]}")
        return ids

    @staticmethod
    def _check_fields(
        fields: Sequence[dict[str, Any]] | None, texts: list[str] | None, n: int
    ) -> list[dict[str, Any]] | None:
        if fields is None and texts is None:
            return None
        rows = [dict(f) for f in fields] if fields is not None else [{} for _ in range(n)]
        if len(rows) != n:
            raise InputError(f"got {len(rows)} fields for {n} rows")
        if texts is not None:
            for row, text in zip(rows, texts, strict=True):
                row["text"] = text
        try:
            json.dumps(rows)
        except TypeError as exc:
            raise InputError(f"fields must be JSON-serializable: {exc}") from None
        return rows

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        name = (self.model or {}).get("name", "bare vectors")
        graph = "" if self._graph is None else f", hnsw {self._graph.dim}-d m={self._graph.m}"
        return (
            f"Index({len(self)} rows of dim {self.dim}, model {name}, shortlist {self._describe_tiers()}, "
            f"rerank {self.rerank_dim}-d {self.rerank_precision}{graph})"
        )

    def _describe_tiers(self) -> str:
        return ", ".join(
            f"{d}-d {p}" + (" (default)" if i == 0 and len(self._tier_specs) > 1 else "")
            for i, (d, p) in enumerate(self._tier_specs)
        )

    @property
    def tiers(self) -> list[tuple[int, str]]:
        """``(dim, precision)`` of each shortlist tier, the default tier first."""
        return list(self._tier_specs)

    @property
    def tier_bytes(self) -> dict[tuple[int, str], int]:
        """Bytes (RAM) of each shortlist tier, keyed as :attr:`tiers`; 0 before the first rows."""
        return {spec: self._tiers[spec].nbytes if spec in self._tiers else 0 for spec in self._tier_specs}

    @property
    def ids(self) -> list[Any]:
        return list(self._ids)

    @property
    def rerank_dim(self) -> int:
        return self._store.dim

    @property
    def rerank_precision(self) -> str:
        return self._store.precision

    @property
    def memory(self) -> dict[str, int]:
        """Bytes of ``shortlist`` (all shortlist tiers, RAM; per tier: :attr:`tier_bytes`),
        ``rerank`` (on disk once saved, memory-mapped) and, with :meth:`add_hnsw`, ``hnsw`` (RAM
        once used; an estimate: the codes and the base level's links)."""
        out = {"shortlist": sum(self.tier_bytes.values()), "rerank": self._store.nbytes}
        if self._graph is not None:
            out["hnsw"] = self._graph.nbytes(len(self))
        return out

    def fields(self, positions: Iterable[int]) -> list[dict[str, Any]]:
        """Stored fields of rows at ``positions`` (``SearchResult.positions``); ``{}`` if none stored."""
        out = []
        for p in positions:
            p = int(p)
            if not 0 <= p < len(self):
                raise InputError(f"position {p} is outside the index (0..{len(self) - 1})")
            out.append({} if self._fields is None else dict(self._fields[p]))
        return out

    # ------------------------------------------------------------------ searching
    def _query_embedder(self) -> Any:
        with self._embedder_lock:
            if self._embedder is None:
                info = self.model
                if info is None:
                    raise InputError(
                        "this index was built from bare vectors with no model: pass query embeddings, "
                        "or build it with model=..."
                    )
                from mrl_infer import Embedder

                location = None if info.get("default") else info.get("location")
                if not info.get("default") and not location:
                    raise InputError(f"index model {info['name']} has no location: pass embedder= to load()")
                self._embedder = Embedder(location)
                self._check_model(self._embedder)
            return self._embedder

    def _check_model(self, embedder: Any) -> None:
        if self.model is None:
            return
        fp = model_fingerprint(embedder.manifest)
        if fp != self.model["fingerprint"]:
            raise InputError(
                f"this index was built by model {self.model['name']} (fingerprint "
                f"{self.model['fingerprint'][:12]}), but the embedder is {embedder.manifest.name} "
                f"(fingerprint {fp[:12]}): their embeddings are not comparable"
            )

    def _queries(self, queries: Any) -> tuple[np.ndarray, float | None]:
        """Unit query vectors, and the seconds spent embedding them (None for vector queries)."""
        if isinstance(queries, str) or (
            isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries)
        ):
            texts = [queries] if isinstance(queries, str) else list(queries)
            emb = self._query_embedder()
            prompt = (self.model or {}).get("query_prompt_name")
            t0 = time.perf_counter()
            q = emb.encode(texts, dim=emb.embedding_dim, prompt_name=prompt)
            seconds = time.perf_counter() - t0
            return np.asarray(q, np.float32).reshape(len(texts), -1), seconds
        if isinstance(queries, (list, tuple)) and not queries:
            raise InputError("no queries given")
        q = _as_vectors(queries, "query embeddings")
        if q.shape[1] != self.dim:
            raise DimError(f"query embeddings have dim {q.shape[1]}, this index holds dim {self.dim}")
        return q, None

    def _pick_tier(self, dim: int | None, precision: str | None) -> tuple[int, str]:
        """The tier spec ``search`` uses for these arguments (see :meth:`search`)."""
        default = self._tier_specs[0]
        if dim is None and precision is None:
            return default
        if precision is not None and precision not in _scan.SHORTLIST_PRECISIONS:
            raise ValueError(
                f"shortlist_precision must be one of {_scan.SHORTLIST_PRECISIONS}, got {precision!r}"
            )
        if dim is not None and precision is not None:
            matches = [(dim, precision)] if (dim, precision) in self._tier_specs else []
            want = f"{dim}-d {precision}"
        elif dim is not None:
            matches = [s for s in self._tier_specs if s[0] == dim]
            if len(matches) > 1:
                matches = [s for s in matches if s[1] == default[1]] or matches
            want = f"{dim}-d"
        else:
            matches = [s for s in self._tier_specs if s[1] == precision]
            if len(matches) > 1:
                matches = [s for s in matches if s[0] == default[0]] or matches
            want = str(precision)
        if len(matches) == 1:
            return matches[0]
        listing = f"its tiers: {self._describe_tiers()}"
        if matches:
            choices = " or ".join(f"shortlist_dim={d}, shortlist_precision={p!r}" for d, p in matches)
            raise DimError(
                f"this index has {len(matches)} {want} shortlist tiers ({listing}): pass {choices}"
            )
        if len(self._tier_specs) == 1 and dim is not None and dim != default[0]:
            head = f"this index's shortlist tier holds {default[0]} dims, not {dim}"
        else:
            head = f"this index has no {want} shortlist tier"
        raise DimError(
            f"{head} ({listing}); add one with index.add_tier({dim if dim is not None else 'dim'}, "
            f"{precision or default[1]!r})"
        )

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        *,
        oversample: int | None = None,
        shortlist_dim: int | None = None,
        shortlist_precision: str | None = None,
        rerank_dim: int | None = None,
        exact: bool = False,
        engine: str = "onnxruntime",
        ef_search: int | None = None,
    ) -> SearchResult:
        """Top ``k`` rows for each query, best first.

        Args:
            queries: a string or list of strings (embedded with the index's model and its query
                prompt), or query embeddings float ``[n, dim]`` / ``[dim]``.
            k: results per query (``k`` > ``len(index)`` returns every row).
            oversample: shortlist ``oversample * k`` candidates to rerank (default: the index's;
                with ``engine="hnsw"``, 4).
            shortlist_dim, shortlist_precision: the shortlist tier to scan (:attr:`tiers`; more
                are added with :meth:`add_tier`). Neither: the default tier. Only a dim: the tier
                of that dim (of several, the one at the default tier's precision); only a
                precision: likewise, preferring the default tier's dim. Checked with ``exact``
                too, though the exact search does not use a tier.
            rerank_dim: rerank on a prefix of the rerank tier (default: all of it).
            exact: brute force over the rerank tier, no shortlist (the reference).
            engine: ``"onnxruntime"`` (default) scores the tier as stored (float16/int8 dot
                products; ubinary asymmetrically, float query against the row's bits).
                ``"faiss"`` (ubinary tiers only; ``pip install 'mrl-infer[faiss]'``) ranks by
                Hamming distance between the query's sign bits and the row's, in faiss'
                ``IndexBinaryFlat``: faster per row but a looser ranking, so it needs more
                oversampling for the same recall (docs/search.md: 256 bits x 128 for recall 0.99
                on the default model). faiss keeps its own copy of the codes (the tier's bytes
                once more) and uses all cores.
                ``"hnsw"`` (after :meth:`add_hnsw`; the ``[faiss]`` extra) takes the candidates
                from the HNSW graph instead of scanning a tier: approximate, and far faster on
                large indexes (docs/search.md: recall@10 0.995 on the default model's 100k real
                embeddings at the defaults; at 10M rows raise ``ef_search``).
                ``shortlist_dim``/``shortlist_precision`` do not apply to it.
            ef_search: ``engine="hnsw"`` only: the graph search's candidate list (at least the
                candidates asked for; default ``4 * k * oversample``, at most ``len(index)``).
                Larger finds more of the true neighbours, slower. A query for which the graph
                finds fewer than ``k`` rows is answered by exact search (counted in the stats'
                ``shortlist.exact_queries``).

        Raises:
            InputError: empty index, no queries, NaN queries, text queries without a model;
                ``engine="hnsw"`` without a graph, or with a shortlist tier named; ``ef_search``
                with another engine, or < 1.
            DimError: query dim, ``rerank_dim`` or a shortlist tier the index cannot serve (the
                message lists the index's tiers).
            ValueError: ``shortlist_precision`` not one of float16, int8, ubinary; an unknown
                ``engine``; ``engine="faiss"`` on a tier that is not ubinary (the message lists
                the index's tiers).
            ImportError: ``engine="faiss"`` without faiss-cpu installed.

        The result's ``stats`` say what each stage did and how long it took (:class:`SearchResult`).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        if len(self) == 0:
            raise InputError("the index is empty: add rows before searching")
        if engine not in _scan.ENGINES:
            raise ValueError(f"engine must be one of {_scan.ENGINES}, got {engine!r}")
        if ef_search is not None and (engine != "hnsw" or exact):
            raise InputError(f"ef_search applies to engine='hnsw' only (this search: engine={engine!r})")
        if ef_search is not None and (
            isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer)) or ef_search < 1
        ):
            raise InputError(f"ef_search must be a positive int, got {ef_search!r}")
        if engine == "hnsw" and not exact:
            if shortlist_dim is not None or shortlist_precision is not None:
                raise InputError(
                    "engine='hnsw' takes its candidates from the HNSW graph: shortlist_dim and "
                    "shortlist_precision name a shortlist tier and do not apply"
                )
            if self._graph is None:
                raise InputError(
                    "engine='hnsw' needs an HNSW graph, and this index has none: build one with "
                    "index.add_hnsw() (pip install 'mrl-infer[faiss]'), then save the index"
                )
        spec = self._pick_tier(shortlist_dim, shortlist_precision)
        if engine == "faiss" and spec[1] != "ubinary" and not exact:
            raise InputError(
                f"engine='faiss' scans ubinary tiers only, and this search would use the {spec[0]}-d "
                f"{spec[1]} tier (its tiers: {self._describe_tiers()}); pass shortlist_precision="
                f"'ubinary' or add a tier with index.add_tier({spec[0] - spec[0] % 8 or 8}, 'ubinary')"
            )
        rdim = self.rerank_dim if rerank_dim is None else rerank_dim
        if not 1 <= rdim <= self.rerank_dim:
            raise DimError(
                f"rerank_dim must be between 1 and the rerank tier's {self.rerank_dim}, got {rdim}"
            )
        if oversample is None:
            over = _hnsw.OVERSAMPLE if engine == "hnsw" else self.oversample
        else:
            over = oversample
        if over < 1:
            raise InputError(f"oversample must be >= 1, got {over}")
        q, embed_seconds = self._queries(queries)
        k = min(int(k), len(self))
        n = len(self)
        stats: dict[str, Any] = {"queries": len(q)}
        if embed_seconds is not None:
            stats["embed_seconds"] = embed_seconds
        rerank = {"dim": rdim, "precision": self.rerank_precision}
        if exact:
            t0 = time.perf_counter()
            scores, rows = _scan.exact(self._store, q, k, rdim)
            stats["exact"] = rerank | {"rows": n, "kept": k, "seconds": time.perf_counter() - t0}
        else:
            kk = min(n, k * over)
            t0 = time.perf_counter()
            short: dict[str, Any] = {"dim": spec[0], "precision": spec[1]}
            if engine == "hnsw":
                assert self._graph is not None
                ef = min(_hnsw.EF_FACTOR * kk, n) if ef_search is None else int(ef_search)
                ef = max(kk, ef)
                cand = _hnsw.shortlist(self._graph, self._store, q, kk, ef)
                short = {"dim": self._graph.dim, "precision": "int8", "ef_search": ef}
            elif engine == "faiss":
                _, cand = _scan.shortlist_hamming(self._tiers[spec], q, kk)
            else:
                _, cand = _scan.shortlist(self._tiers[spec], q, kk, self.threads)
            t1 = time.perf_counter()
            scores, rows = _scan.rerank(self._store, q, cand, k, rdim)
            short_q = np.flatnonzero((cand >= 0).sum(axis=1) < k)
            if len(short_q):  # a graph search that found fewer than k rows: answer those exactly
                scores[short_q], rows[short_q] = _scan.exact(self._store, q[short_q], k, rdim)
                short["exact_queries"] = len(short_q)
            t2 = time.perf_counter()
            stats["shortlist"] = short | {"rows": n, "candidates": kk, "engine": engine, "seconds": t1 - t0}
            stats["rerank"] = rerank | {"rows": kk, "kept": k, "seconds": t2 - t1}
        ids = [[self._ids[r] for r in row] for row in rows.tolist()]
        return SearchResult(ids, scores, rows, stats)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the index to directory ``path`` atomically (see ``mrl_infer.search._store``)."""
        tiers = []
        arrays: dict[str, np.ndarray] = {}
        # the default tier goes last: a reader from before add_tier keeps the last entry it reads
        for spec in [*self._tier_specs[1:], self._tier_specs[0]]:
            tier = self._tiers.get(spec)
            if tier is None:  # an empty index: an empty tier (load rebuilds it with the first rows)
                tier = _scan.make_tier(np.empty((0, self.dim), np.float32), *spec)
            base = f"shortlist_{tier.dim}_{tier.precision}"
            arrays[f"{base}.npy"] = tier.data
            entry = {"dim": tier.dim, "precision": tier.precision, "file": f"{base}.npy"}
            if tier.scale is not None:
                arrays[f"{base}.scale.npy"] = tier.scale
                entry["scale_file"] = f"{base}.scale.npy"
            tiers.append(entry)
        int_ids = all(isinstance(i, int) for i in self._ids)
        from mrl_infer import __version__

        manifest = {
            "format": _store.FORMAT,
            "format_version": _store.FORMAT_VERSION,
            "created_by": f"mrl-infer {__version__}",
            "count": len(self),
            "dim": self.dim,
            "model": self.model,
            "shortlist": tiers,
            "shortlist_config": {"dim": self.shortlist_dim, "precision": self.shortlist_precision},
            "oversample": self.oversample,
            "rerank": {"dim": self.rerank_dim, "precision": self.rerank_precision, "file": "rerank.npy"},
            "ids": "int64" if int_ids else "str",
            "fields": self._fields is not None,
        }
        extra = {}
        graph = self._graph
        if graph is not None:
            name = f"hnsw_{graph.dim}.faiss" if len(self) else None
            manifest["hnsw"] = {
                "dim": graph.dim,
                "m": graph.m,
                "ef_construction": graph.ef_construction,
                "count": len(self),
                "file": name,
            }
            if name is not None:
                extra[name] = lambda target, graph=graph: graph.write(target, self._store)
        fields = None
        if self._fields is not None:
            fields = self._fields.to_list() if isinstance(self._fields, _store.FieldFile) else self._fields
        _store.write_index(
            Path(path),
            _store.Written(
                manifest,
                arrays,
                self._store.segments,
                self.rerank_precision,
                np.asarray(self._ids, np.int64) if int_ids else self._ids,
                fields,
                extra,
            ),
            overwrite=overwrite,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, embedder: Any = None, mmap: bool = True) -> Index:
        """Open a saved index; the rerank tier is memory-mapped (``mmap=False`` reads it into RAM).

        ``embedder``: the Embedder for text queries (default: opened from the recorded model on
        first text query); refused if it is not the model that built the index.
        """
        path = Path(path)
        m = _store.read_manifest(path)
        try:
            cfg = m["shortlist_config"]
            index = cls(
                m["dim"],
                shortlist_dim=cfg["dim"],
                shortlist_precision=cfg["precision"],
                rerank_dim=m["rerank"]["dim"],
                rerank_precision=m["rerank"]["precision"],
                oversample=m["oversample"],
                model=m["model"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFormatError(f"{path / _store.MANIFEST}: invalid field ({exc})") from None
        count = m["count"]
        default = index._tier_specs[0]
        seen: set[tuple[int, str]] = set()
        try:
            for entry in m["shortlist"]:
                spec = (entry["dim"], entry["precision"])
                if spec in seen:
                    raise ValueError(f"shortlist tier {spec} is listed twice")
                seen.add(spec)
                if spec != default:
                    index.add_tier(*spec)  # checks dim and precision; the index has no rows yet
                if not count:
                    continue  # an empty tier: built with the first rows, as in a new index
                width = spec[0] // 8 if spec[1] == "ubinary" else spec[0]
                data = _store.load_array(path / entry["file"], mmap=False, rows=count, width=width)
                scale = None
                if "scale_file" in entry:
                    scale = _store.load_array(path / entry["scale_file"], mmap=False, rows=spec[0])
                index._tiers[spec] = _scan.Tier(spec[0], spec[1], data, scale)
            if count and default not in seen:
                raise ValueError(f"the default tier {default} (shortlist_config) has no entry")
        except (KeyError, TypeError, ValueError, DimError) as exc:
            raise IndexFormatError(f"{path / _store.MANIFEST}: invalid 'shortlist' ({exc})") from None
        rerank = _store.load_array(path / "rerank.npy", mmap=mmap, rows=count, width=index.rerank_dim)
        index._store.segments = [rerank]
        ids = _store.load_ids(path, count)
        index._ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        index._id_set = set(index._ids)
        if m.get("fields"):
            index._fields = _store.FieldFile(path, count)
        if m.get("hnsw") is not None:
            index._graph = _load_graph(path, m["hnsw"], count)
        if embedder is not None:
            index._check_model(embedder)
            index._embedder = embedder
        return index


def _load_graph(path: Path, entry: Any, count: int) -> _hnsw.Graph:
    """The manifest's ``"hnsw"`` entry as a graph read on first use (checked here, read later)."""
    try:
        dim, m, efc = (entry[key] for key in ("dim", "m", "ef_construction"))
        file = entry["file"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (dim, m, efc)):
            raise ValueError(f"dim, m and ef_construction must be positive ints, got {dim!r}, {m!r}, {efc!r}")
        if file is not None and (not isinstance(file, str) or Path(file).name != file):
            raise ValueError(f"file must be a file name inside the index directory, got {file!r}")
        if entry["count"] != count or (file is None) != (count == 0):
            raise ValueError(f"a graph of {entry['count']} rows (file {file!r}) in an index of {count}")
    except (KeyError, TypeError, ValueError) as exc:
        raise IndexFormatError(f"{path / _store.MANIFEST}: invalid 'hnsw' ({exc})") from None
    return _hnsw.Graph(dim, m, efc, path=None if file is None else path / file, count=count)
