"""``Index``: Matryoshka funnel search (shortlist with a small prefix, rerank with the full vectors)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrl_infer.errors import DimError, IndexFormatError, InputError
from mrl_infer.search import _scan, _store

logger = logging.getLogger(__name__)

# Defaults chosen from the Pareto table of benchmarks/search.py (docs/search.md): on the default
# model's real embeddings (101,915 texts, 1,000 held-out queries) the 128-dim int8 prefix with 32x
# oversampling is the cheapest setting with recall@10 >= 0.99 against exact full-dim search
# (0.993); 64-dim prefixes need > 100x oversampling for 0.98. Its tier is 128 B per row, 1/12 of
# float32 full vectors.
DEFAULT_SHORTLIST_DIM = 128
DEFAULT_SHORTLIST_PRECISION = "int8"
DEFAULT_OVERSAMPLE = 32
DEFAULT_RERANK_PRECISION = "float16"


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
    """

    ids: list[list[Any]]
    scores: np.ndarray
    positions: np.ndarray

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

    Two tiers per row:

    - the **shortlist tier**, in RAM: the first ``shortlist_dim`` dims, renormalized, stored as
      float16, int8 (per-dim scale, folded into the query) or ubinary (packed sign bits, scored
      asymmetrically against the float query). Scanned in full for every query batch, in
      onnxruntime (compiled GEMM + grouped top-k), ``oversample * k`` candidates kept per query;
    - the **rerank tier**: the first ``rerank_dim`` dims (default: all), float16 or float32,
      memory-mapped once saved; only the shortlisted rows are read and rescored exactly.

    Defaults (``shortlist_dim=128``, ``int8``, ``oversample=32``, float16 rerank) come from the
    Pareto table in docs/search.md, measured on the default model's real embeddings: the cheapest
    setting with recall@10 >= 0.99 against exact full-dim search (0.993 over 101,915 texts), with
    a shortlist tier of 128 B per row (1/12 of float32 full vectors). Smaller prefixes of this
    model rank near neighbours too loosely: 64 dims need > 100x oversampling for 0.98.
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
        self._tier: _scan.Tier | None = None
        self._store = _scan.RowStore(rerank_dim, rerank_precision)
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
        if self._tier is None:
            self._tier = _scan.make_tier(vectors, self.shortlist_dim, self.shortlist_precision)
        else:
            self._tier.append(vectors)
        self._store.append(vectors)
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        if rows is not None or self._fields is not None:  # rows without fields get {}
            old = self._fields or [{} for _ in range(len(self._ids) - n)]
            old = old.to_list() if isinstance(old, _store.FieldFile) else old
            self._fields = old + (rows or [{} for _ in range(n)])

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
        return (
            f"Index({len(self)} rows of dim {self.dim}, model {name}, shortlist {self.shortlist_dim}-d "
            f"{self.shortlist_precision}, rerank {self.rerank_dim}-d {self.rerank_precision})"
        )

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
        """Bytes of each tier: ``shortlist`` (RAM) and ``rerank`` (on disk once saved, memory-mapped)."""
        return {"shortlist": 0 if self._tier is None else self._tier.nbytes, "rerank": self._store.nbytes}

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

    def _queries(self, queries: Any) -> np.ndarray:
        if isinstance(queries, str) or (
            isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries)
        ):
            texts = [queries] if isinstance(queries, str) else list(queries)
            emb = self._query_embedder()
            prompt = (self.model or {}).get("query_prompt_name")
            q = emb.encode(texts, dim=emb.embedding_dim, prompt_name=prompt)
            return np.asarray(q, np.float32).reshape(len(texts), -1)
        if isinstance(queries, (list, tuple)) and not queries:
            raise InputError("no queries given")
        q = _as_vectors(queries, "query embeddings")
        if q.shape[1] != self.dim:
            raise DimError(f"query embeddings have dim {q.shape[1]}, this index holds dim {self.dim}")
        return q

    def search(
        self,
        queries: str | Sequence[str] | np.ndarray,
        k: int = 10,
        *,
        oversample: int | None = None,
        shortlist_dim: int | None = None,
        rerank_dim: int | None = None,
        exact: bool = False,
    ) -> SearchResult:
        """Top ``k`` rows for each query, best first.

        Args:
            queries: a string or list of strings (embedded with the index's model and its query
                prompt), or query embeddings float ``[n, dim]`` / ``[dim]``.
            k: results per query (``k`` > ``len(index)`` returns every row).
            oversample: shortlist ``oversample * k`` candidates to rerank (default: the index's).
            shortlist_dim: must be the index's (a tier is built for one prefix; given for clarity).
            rerank_dim: rerank on a prefix of the rerank tier (default: all of it).
            exact: brute force over the rerank tier, no shortlist (the reference).

        Raises:
            InputError: empty index, no queries, NaN queries, text queries without a model.
            DimError: query dim, ``shortlist_dim`` or ``rerank_dim`` the index cannot serve.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive int, got {k!r}")
        if len(self) == 0:
            raise InputError("the index is empty: add rows before searching")
        if shortlist_dim is not None and shortlist_dim != self.shortlist_dim:
            raise DimError(
                f"this index's shortlist tier holds {self.shortlist_dim} dims, not {shortlist_dim}; "
                f"build it with shortlist_dim={shortlist_dim}"
            )
        rdim = self.rerank_dim if rerank_dim is None else rerank_dim
        if not 1 <= rdim <= self.rerank_dim:
            raise DimError(
                f"rerank_dim must be between 1 and the rerank tier's {self.rerank_dim}, got {rdim}"
            )
        over = self.oversample if oversample is None else oversample
        if over < 1:
            raise InputError(f"oversample must be >= 1, got {over}")
        q = self._queries(queries)
        k = min(int(k), len(self))
        if exact:
            scores, rows = _scan.exact(self._store, q, k, rdim)
        else:
            assert self._tier is not None
            kk = min(len(self), k * over)
            _, cand = _scan.shortlist(self._tier, q, kk, self.threads)
            scores, rows = _scan.rerank(self._store, q, cand, k, rdim)
        return SearchResult([[self._ids[r] for r in row] for row in rows.tolist()], scores, rows)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the index to directory ``path`` atomically (see ``mrl_infer.search._store``)."""
        tiers = []
        arrays: dict[str, np.ndarray] = {}
        if self._tier is not None:
            base = f"shortlist_{self._tier.dim}_{self._tier.precision}"
            arrays[f"{base}.npy"] = self._tier.data
            entry = {"dim": self._tier.dim, "precision": self._tier.precision, "file": f"{base}.npy"}
            if self._tier.scale is not None:
                arrays[f"{base}.scale.npy"] = self._tier.scale
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
        for entry in m["shortlist"]:
            width = entry["dim"] // 8 if entry["precision"] == "ubinary" else entry["dim"]
            data = _store.load_array(path / entry["file"], mmap=False, rows=count, width=width)
            scale = None
            if "scale_file" in entry:
                scale = _store.load_array(path / entry["scale_file"], mmap=False, rows=entry["dim"])
            index._tier = _scan.Tier(entry["dim"], entry["precision"], data, scale)
        rerank = _store.load_array(path / "rerank.npy", mmap=mmap, rows=count, width=index.rerank_dim)
        index._store.segments = [rerank]
        ids = _store.load_ids(path, count)
        index._ids = ids.tolist() if isinstance(ids, np.ndarray) else ids
        index._id_set = set(index._ids)
        if m.get("fields"):
            index._fields = _store.FieldFile(path, count)
        if embedder is not None:
            index._check_model(embedder)
            index._embedder = embedder
        return index
