"""Ray engine: a local 2-CPU Ray gives the same rows, ids and embeddings as the single-process job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

from mrl_infer.cli import main  # noqa: E402
from mrl_infer.jobs._job import JobOptions, run_job  # noqa: E402

# Starting Ray and its actors takes ~1 min on 2 cores: CI runs these with the slow suites.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _texts(n: int, tag: str) -> list[str]:
    return [f"{tag} document {i}: " + "words " * (i % 13) for i in range(n)]


def _emb(table: Any) -> np.ndarray:
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False))


def test_embed_dataset_matches_embedder(local_ray: Any, minilm_model_dir: Path) -> None:
    from mrl_infer import Embedder
    from mrl_infer.jobs.ray import embed_dataset

    texts = _texts(70, "ds")
    ds = ray.data.from_items([{"text": t, "n": i} for i, t in enumerate(texts)])
    out = embed_dataset(ds, str(minilm_model_dir), dim=32, variant="fp32", rows_per_call=16, concurrency=1)
    rows = sorted(out.take_all(), key=lambda r: r["n"])
    got = np.stack([np.asarray(r["embedding"]) for r in rows])
    want = Embedder(minilm_model_dir, dim=32, variant="fp32").encode(texts)
    assert got.shape == (70, 32) and np.allclose(got, want, atol=1e-5)
    assert [r["text"] for r in rows] == texts


@pytest.mark.parametrize("fmt,variant", [("parquet", "int8"), ("jsonl", "fp32")])
def test_cli_engine_ray_equals_local(
    local_ray: Any, tmp_path: Path, minilm_model_dir: Path, fmt: str, variant: str
) -> None:
    d = tmp_path / "in"
    d.mkdir()
    parts = {"part-0": _texts(96, "a"), "part-1": _texts(64, "b"), "part-2": _texts(32, "c")}
    for name, texts in parts.items():
        ids = [f"{name}-{i}" for i in range(len(texts))]
        if fmt == "parquet":
            pq.write_table(pa.table({"id": ids, "body": texts}), d / f"{name}.parquet")
        else:
            (d / f"{name}.jsonl").write_text(
                "".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in zip(ids, texts, strict=True))
            )
    flags = [
        "--model",
        str(minilm_model_dir),
        "--dim",
        "64",
        "--variant",
        variant,
        "--chunk-size",
        "32",
        "--column",
        "body",
        "--id-field",
        "id",
        "--include-text",
        "-q",
    ]
    assert main(["embed", str(d), "-o", str(tmp_path / "ray.parquet"), "--engine", "ray", *flags]) == 0
    local = tmp_path / "local.parquet"
    run_job(
        JobOptions(
            inputs=[str(d)],
            output=str(local),
            model=str(minilm_model_dir),
            dim=64,
            variant=variant,
            chunk_size=32,
            text_field="body",
            id_field="id",
            include_text=True,
            progress=False,
        )
    )
    a, b = pq.read_table(local), pq.read_table(tmp_path / "ray.parquet")
    assert a.schema.remove_metadata() == b.schema.remove_metadata()
    assert b.column("id").to_pylist() == [f"{n}-{i}" for n, t in parts.items() for i in range(len(t))]
    assert a.column("text").equals(b.column("text"))
    if fmt == "parquet":
        # Ray's batches line up with the local 32-row chunks here (one block per file), so even the
        # int8 graph, which quantizes activations per batch, gives the same bits
        assert np.array_equal(_emb(a), _emb(b))
    else:
        # JSON blocks are cut where Ray likes: the batches differ, fp32 agrees to float precision
        assert np.allclose(_emb(a), _emb(b), atol=1e-5)
    assert b.schema.field("embedding").type == pa.list_(pa.float32(), 64)


def test_cli_engine_ray_refuses_unsupported(
    local_ray: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "a.txt"
    f.write_text("x\n")
    assert main(["embed", str(f), "-o", str(tmp_path / "o.parquet"), "--engine", "ray", "-q"]) == 2
    assert "Parquet or JSONL" in capsys.readouterr().err
    assert main(["embed", str(f), "-o", str(tmp_path / "o.npy"), "--engine", "ray", "-q"]) == 2
    assert "writes Parquet" in capsys.readouterr().err
