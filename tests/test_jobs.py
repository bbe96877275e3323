"""The batch job: order across files, ids, skip sidecar, atomic output, resume, calibration, workers.

Fast tests use a small deterministic stand-in for the Embedder (so crashes can be injected at an
exact chunk); the tests at the end run the real exported all-MiniLM-L6-v2.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mrl_infer._manifest import Manifest, Variant, write_manifest
from mrl_infer.errors import InputError, NonFiniteEmbeddingError
from mrl_infer.jobs import _job as _jobs
from mrl_infer.jobs._job import JobOptions, run_job

pq = pytest.importorskip("pyarrow.parquet")


class FakeEmbedder:
    """Deterministic stand-in: each text maps to a fixed unit vector; can crash on the n-th call."""

    def __init__(self, model_dir: Path, dim: int = 16, crash_after: int | None = None) -> None:
        self.model_dir = model_dir
        self.manifest = Manifest(
            embedding_dim=dim,
            max_seq_length=8,
            variants={"fp32": Variant(file="m.onnx", precision="fp32", target="cpu")},
        )
        self.variant = "fp32"
        self.device = "cpu"
        self.dim = dim
        self.max_seq_length = 8
        self.num_truncated = 0
        self.calls = 0
        self.crash_after = crash_after

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise RuntimeError("simulated crash")
        self.num_truncated += sum(len(t.split()) > self.max_seq_length for t in texts)
        out = (
            np.stack(
                [
                    np.frombuffer(hashlib.sha256(t.encode()).digest()[: self.dim], dtype=np.uint8)
                    for t in texts
                ]
            ).astype(np.float32)
            - 127.5
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture
def fake_model(tmp_path: Path) -> Path:
    d = tmp_path / "fake-model"
    d.mkdir()
    write_manifest(
        Manifest(embedding_dim=16, max_seq_length=8, variants={"fp32": Variant("m.onnx", "fp32", "cpu")}), d
    )
    (d / "m.onnx").write_bytes(b"stand-in")
    return d


def _inputs(tmp_path: Path) -> tuple[list[str], list[str]]:
    a = tmp_path / "a.txt"
    a.write_text(
        "".join(f"alpha line {i}\n" for i in range(130)) + "\n", encoding="utf-8"
    )  # ends in an empty text
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"text": f"beta {i} " * (i % 5), "k": i}) + "\n" for i in range(70)))
    texts = [f"alpha line {i}" for i in range(130)] + [""] + [f"beta {i} " * (i % 5) for i in range(70)]
    return [str(a), str(b)], texts


def _opts(inputs: list[str], out: Path, **kw: Any) -> JobOptions:
    kw.setdefault("chunk_size", 16)
    kw.setdefault("checkpoint_seconds", 0)
    kw.setdefault("progress", False)
    return JobOptions(inputs=inputs, output=str(out), **kw)


def test_order_across_files_npy(tmp_path: Path, fake_model: Path) -> None:
    inputs, texts = _inputs(tmp_path)
    emb = FakeEmbedder(fake_model)
    summary = run_job(_opts(inputs, tmp_path / "o.npy"), embedder=emb)
    got = np.load(tmp_path / "o.npy")
    assert np.array_equal(got, emb.encode(texts))
    assert summary.rows == len(texts) == 201 and summary.skipped == 0
    assert not (tmp_path / "o.npy.mrl-job").exists() and not (tmp_path / "o.npy.skipped.jsonl").exists()
    assert "wrote 201 rows" in summary.describe() and "skipped rows: 0" in summary.describe()


def test_parquet_ids_and_text(tmp_path: Path, fake_model: Path) -> None:
    b = tmp_path / "b.jsonl"
    b.write_text("".join(json.dumps({"body": f"t{i}", "doc": f"D{i}"}) + "\n" for i in range(40)))
    c = tmp_path / "c.csv"
    c.write_text("doc,body\n" + "".join(f"{100 + i},c{i}\n" for i in range(10)))
    emb = FakeEmbedder(fake_model)
    opts = _opts(
        [str(b), str(c)], tmp_path / "o.parquet", text_field="body", id_field="doc", include_text=True
    )
    run_job(opts, embedder=emb)
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.column("id").to_pylist() == [f"D{i}" for i in range(40)] + [str(100 + i) for i in range(10)]
    assert t.column("text").to_pylist() == [f"t{i}" for i in range(40)] + [f"c{i}" for i in range(10)]
    assert t.schema.metadata[b"mrl_infer.dim"] == b"16"
    # without --id-field the id is the row's global index
    run_job(_opts([str(c)], tmp_path / "p.parquet", text_field="body"), embedder=emb)
    assert pq.read_table(tmp_path / "p.parquet").column("id").to_pylist() == list(range(10))


def test_on_error_fail_names_file_and_line(tmp_path: Path, fake_model: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok2"}\n{"text": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:3: malformed JSON"):
        run_job(_opts([str(bad)], tmp_path / "o.npy"), embedder=FakeEmbedder(fake_model))
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "o.npy.mrl-job").exists()


def test_on_error_skip_sidecar(tmp_path: Path, fake_model: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    lines = [
        '{"text": "a"}',
        '{"text": null}',
        "not json",
        '{"text": "b"}',
        '{"title": "c"}',
        '{"text": "d"}',
    ]
    bad.write_text("\n".join(lines) + "\n")
    txt = tmp_path / "t.txt"
    txt.write_bytes(b"x\n\xff bad utf8\ny\n")
    emb = FakeEmbedder(fake_model)
    summary = run_job(
        _opts([str(bad), str(txt)], tmp_path / "o.jsonl", on_error="skip", chunk_size=2), embedder=emb
    )
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 3, 5, 6, 8]  # global indices of the rows kept
    assert np.allclose([r["embedding"] for r in rows], emb.encode(["a", "b", "d", "x", "y"]))
    skipped = [json.loads(x) for x in (tmp_path / "o.jsonl.skipped.jsonl").read_text().splitlines()]
    assert [(s["file"], s["line"], s["index"]) for s in skipped] == [
        (str(bad), 2, 1),
        (str(bad), 3, 2),
        (str(bad), 5, 4),
        (str(txt), 2, 7),
    ]
    assert skipped[0]["reason"] == "field 'text' is null"
    assert skipped[2]["reason"] == "no field 'text' (fields present: 'title')"
    assert "invalid UTF-8" in skipped[3]["reason"]
    assert summary.skipped == 4 and summary.rows == 5
    assert "skipped rows: 4 (listed in" in summary.describe()


def test_refuses_overwrite_and_stale_sidecar_removed(tmp_path: Path, fake_model: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    out = tmp_path / "o.npy"
    out.write_bytes(b"precious")
    (tmp_path / "o.npy.skipped.jsonl").write_text("stale\n")
    with pytest.raises(InputError, match="already exists; pass --overwrite"):
        run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model))
    assert out.read_bytes() == b"precious"
    run_job(_opts(inputs, out, overwrite=True), embedder=FakeEmbedder(fake_model))
    assert np.load(out).shape == (201, 16)
    assert not (tmp_path / "o.npy.skipped.jsonl").exists()


@pytest.mark.parametrize("fmt", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("crash_after", range(13))  # 201 rows / 16: every one of the 13 chunk boundaries
def test_crash_then_resume_is_identical(tmp_path: Path, fake_model: Path, fmt: str, crash_after: int) -> None:
    inputs, _ = _inputs(tmp_path)
    ref = tmp_path / f"ref.{fmt}"
    run_job(_opts(inputs, ref, include_text=fmt != "npy"), embedder=FakeEmbedder(fake_model))
    out = tmp_path / f"o.{fmt}"
    opts = _opts(inputs, out, include_text=fmt != "npy")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_job(opts, embedder=FakeEmbedder(fake_model, crash_after=crash_after))
    assert not out.exists()  # never a partial file under the final name
    if crash_after:  # a checkpoint exists: a plain rerun must not silently start over
        with pytest.raises(InputError, match="--resume"):
            run_job(opts, embedder=FakeEmbedder(fake_model))
    resumed_emb = FakeEmbedder(fake_model)
    summary = run_job(_opts(inputs, out, include_text=fmt != "npy", resume=True), embedder=resumed_emb)
    assert out.read_bytes() == ref.read_bytes()
    assert summary.rows == 201
    assert summary.resumed_at == (16 * crash_after if crash_after else 0)
    assert resumed_emb.calls == -(-201 // 16) - crash_after  # nothing embedded twice


class _Killed(BaseException):
    """A crash nothing in the job may catch."""


@pytest.mark.parametrize("fmt", ["npy", "parquet", "jsonl"])
@pytest.mark.parametrize("kill_at", range(15))  # 13 chunk checkpoints, the last one, 'finalizing'
def test_crash_between_data_fsync_and_state_rename(
    tmp_path: Path, fake_model: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, kill_at: int
) -> None:
    """Die after the data and state.json.tmp are fsync'ed but before the rename: the data files are
    longer than the checkpoint says, and resume must cut them back."""
    import os

    inputs, _ = _inputs(tmp_path)
    ref = tmp_path / f"ref.{fmt}"
    run_job(_opts(inputs, ref, include_text=fmt != "npy"), embedder=FakeEmbedder(fake_model))
    real_replace = os.replace
    renames = []

    def dies(src: Any, dst: Any) -> None:
        if str(dst).endswith("state.json"):
            renames.append(dst)
            if len(renames) == kill_at + 1:
                raise _Killed(f"killed before state rename #{kill_at}")
        real_replace(src, dst)

    out = tmp_path / f"o.{fmt}"
    monkeypatch.setattr(_jobs.os, "replace", dies)
    with pytest.raises(_Killed):
        run_job(_opts(inputs, out, include_text=fmt != "npy"), embedder=FakeEmbedder(fake_model))
    monkeypatch.setattr(_jobs.os, "replace", real_replace)
    assert not out.exists()
    assert (tmp_path / f"o.{fmt}.mrl-job" / "state.json.tmp").exists()
    run_job(_opts(inputs, out, include_text=fmt != "npy", resume=True), embedder=FakeEmbedder(fake_model))
    assert out.read_bytes() == ref.read_bytes()
    assert not (tmp_path / f"o.{fmt}.mrl-job").exists()


def test_crash_during_finalize_resumes(
    tmp_path: Path, fake_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, _ = _inputs(tmp_path)
    run_job(_opts(inputs, tmp_path / "ref.parquet"), embedder=FakeEmbedder(fake_model))
    real_rmtree = shutil.rmtree

    def dies(path: Any, *a: Any, **k: Any) -> None:
        if str(path).endswith(".mrl-job"):
            raise KeyboardInterrupt("killed after the rename")
        real_rmtree(path, *a, **k)

    monkeypatch.setattr(_jobs.shutil, "rmtree", dies)
    out = tmp_path / "o.parquet"
    with pytest.raises(KeyboardInterrupt):
        run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model))
    monkeypatch.setattr(_jobs.shutil, "rmtree", real_rmtree)
    assert (tmp_path / "o.parquet.mrl-job" / "state.json").exists()
    emb = FakeEmbedder(fake_model)
    run_job(_opts(inputs, out, resume=True), embedder=emb)
    assert emb.calls == 0
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "ref.parquet"))
    assert not (tmp_path / "o.parquet.mrl-job").exists()


def test_resume_refuses_changed_options_or_inputs(tmp_path: Path, fake_model: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    out = tmp_path / "o.npy"
    with pytest.raises(RuntimeError):
        run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model, crash_after=3))
    with pytest.raises(InputError, match=r"options\.batch_size: 32 -> 8"):
        run_job(_opts(inputs, out, resume=True, batch_size=8), embedder=FakeEmbedder(fake_model))
    Path(inputs[0]).write_text("changed\n")
    with pytest.raises(InputError, match=r"a\.txt changed since the interrupted run"):
        run_job(_opts(inputs, out, resume=True), embedder=FakeEmbedder(fake_model))
    with pytest.raises(InputError, match="input files"):
        run_job(_opts(inputs[:1], out, resume=True), embedder=FakeEmbedder(fake_model))


def test_resume_without_checkpoint_starts_over(tmp_path: Path, fake_model: Path) -> None:
    inputs, texts = _inputs(tmp_path)
    out = tmp_path / "o.npy"
    with pytest.raises(RuntimeError):  # dies before the first checkpoint
        run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model, crash_after=0))
    shutil.rmtree(tmp_path / "o.npy.mrl-job")
    (tmp_path / "o.npy.mrl-job").mkdir()  # killed right after creating the work directory
    run_job(_opts(inputs, out, resume=True), embedder=FakeEmbedder(fake_model))
    assert np.load(out).shape == (len(texts), 16)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_quantized_ranges_survive_resume(tmp_path: Path, fake_model: Path, precision: str) -> None:
    inputs, texts = _inputs(tmp_path)
    ref = tmp_path / "ref.npy"
    run_job(_opts(inputs, ref, precision=precision, calibration_rows=50), embedder=FakeEmbedder(fake_model))
    out = tmp_path / "o.npy"
    with pytest.raises(RuntimeError):
        run_job(
            _opts(inputs, out, precision=precision, calibration_rows=50),
            embedder=FakeEmbedder(fake_model, crash_after=7),
        )
    state = json.loads((tmp_path / "o.npy.mrl-job" / "state.json").read_text())
    assert state["ranges"] is not None and state["rows"] > 50
    run_job(
        _opts(inputs, out, precision=precision, calibration_rows=50, resume=True),
        embedder=FakeEmbedder(fake_model),
    )
    assert out.read_bytes() == ref.read_bytes()
    from mrl_infer import compute_ranges, quantize_embeddings

    floats = FakeEmbedder(fake_model).encode(texts)
    ranges = compute_ranges(floats[:50])  # the first 50 rows calibrate, as documented
    assert np.array_equal(np.load(out), quantize_embeddings(floats, precision, ranges=ranges))
    saved = json.loads((tmp_path / "o.npy.ranges.json").read_text())
    assert np.array_equal(np.asarray(saved["ranges"], dtype=np.float32), ranges)


def test_binary_precision(tmp_path: Path, fake_model: Path) -> None:
    inputs, texts = _inputs(tmp_path)
    run_job(_opts(inputs, tmp_path / "o.parquet", precision="ubinary"), embedder=FakeEmbedder(fake_model))
    t = pq.read_table(tmp_path / "o.parquet")
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert got.dtype == np.uint8 and got.shape == (201, 2)
    assert np.array_equal(got, np.packbits(FakeEmbedder(fake_model).encode(texts) > 0, axis=-1))


def test_truncated_counted(tmp_path: Path, fake_model: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("short\n" + "many words " * 10 + "\n")
    summary = run_job(_opts([str(f)], tmp_path / "o.npy"), embedder=FakeEmbedder(fake_model))
    assert summary.truncated == 1 and "truncated inputs: 1" in summary.describe()


def test_resume_of_a_finished_output_says_complete(tmp_path: Path, fake_model: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    out = tmp_path / "o.npy"
    run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model))
    before = out.read_bytes()
    emb = FakeEmbedder(fake_model)
    summary = run_job(_opts(inputs, out, resume=True), embedder=emb)
    assert summary.complete and emb.calls == 0 and out.read_bytes() == before
    assert summary.describe() == f"{out} is already complete (201 rows); nothing to resume"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.jsonl", "fake-model", "o.npy"]


def test_refuses_output_that_is_an_input(tmp_path: Path, fake_model: Path) -> None:
    src = tmp_path / "data.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    before = src.read_bytes()
    for out in (src, tmp_path / "link.jsonl"):
        if out.name == "link.jsonl":
            out.symlink_to(src)
        with pytest.raises(InputError, match="is an input of this job and would be replaced"):
            run_job(_opts([str(src)], out, overwrite=True), embedder=FakeEmbedder(fake_model))
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "fake-model", "link.jsonl"]


def test_lock_stops_a_second_job(tmp_path: Path, fake_model: Path) -> None:
    import fcntl

    inputs, _ = _inputs(tmp_path)
    out = tmp_path / "o.npy"
    with pytest.raises(RuntimeError):  # an interrupted job with a checkpoint
        run_job(_opts(inputs, out), embedder=FakeEmbedder(fake_model, crash_after=3))
    workdir = tmp_path / "o.npy.mrl-job"
    state = (workdir / "state.json").read_bytes()
    with open(workdir / "lock", "w") as held:  # ... that another process is still running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for kw in ({"resume": True}, {"overwrite": True}):
            with pytest.raises(InputError, match="another mrl-embed job is writing"):
                run_job(_opts(inputs, out, **kw), embedder=FakeEmbedder(fake_model))
            assert (workdir / "state.json").read_bytes() == state  # its work is untouched
    run_job(_opts(inputs, out, resume=True), embedder=FakeEmbedder(fake_model))
    assert np.load(out).shape == (201, 16)


def test_workers_auto_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "small.txt"
    small.write_text("a\n")
    big = tmp_path / "big.txt"
    with open(big, "wb") as fh:
        fh.truncate(1 << 20)  # exactly 1 MiB (sparse)
    cases = [(1, [big], 1), (2, [small], 1), (2, [big], 2), (8, [big], 2), (2, [small, small], 1)]
    for cores, files, want in cases:
        monkeypatch.setattr(_jobs, "available_cores", lambda c=cores: c)
        assert _jobs.resolve_workers("auto", [str(f) for f in files]) == want, (cores, files)
    monkeypatch.setattr(_jobs, "available_cores", lambda: 2)
    assert _jobs.resolve_workers("auto", ["-"]) == 2  # stdin: size unknown
    assert _jobs.resolve_workers(3, [str(small)]) == 3
    assert _jobs.worker_threads(2) == 1 and _jobs.worker_threads(1) is None


def test_parquet_metadata(tmp_path: Path, fake_model: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    out = tmp_path / "o.parquet"
    run_job(_opts(inputs, out, precision="int8", calibration_rows=50), embedder=FakeEmbedder(fake_model))
    meta = pq.read_schema(out).metadata
    assert meta[b"mrl_infer.model"].decode() == str(fake_model.resolve())
    assert meta[b"mrl_infer.variant"] == b"fp32"
    assert meta[b"mrl_infer.dim"] == b"16"
    assert meta[b"mrl_infer.precision"] == b"int8"
    saved = json.loads((tmp_path / "o.parquet.ranges.json").read_text())
    assert json.loads(meta[b"mrl_infer.ranges"]) == saved["ranges"]
    assert np.asarray(saved["ranges"]).shape == (2, 16)


class WideFakeEmbedder(FakeEmbedder):
    """FakeEmbedder at a dim too wide for sha256 bytes: seeded random rows."""

    def encode(self, texts: list[str], **kw: Any) -> np.ndarray:
        self.calls += 1
        rows = [
            np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8])).standard_normal(
                self.dim, dtype=np.float32
            )
            for t in texts
        ]
        return np.stack(rows) if rows else np.empty((0, self.dim), np.float32)


def test_parquet_default_row_groups(tmp_path: Path, fake_model: Path) -> None:
    """Default sizing (32 MiB of embeddings per group, at least 1024 rows): at dim 8192 float32 a row
    is 32 KiB, so a group holds 1024 rows and 1100 rows are the smallest job that needs two groups."""
    from mrl_infer.jobs import _writers

    assert _writers._ROW_GROUP_BYTES == 32 << 20
    src = tmp_path / "in.txt"
    texts = [f"row {i}" for i in range(1100)]
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "o.parquet"
    emb = WideFakeEmbedder(fake_model, dim=8192)
    run_job(_opts([str(src)], out, chunk_size=300, include_text=True), embedder=emb)  # parts of 300 rows
    f = pq.ParquetFile(out)
    assert [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)] == [1024, 76]
    assert f.schema_arrow.metadata[b"mrl_infer.dim"] == b"8192"
    for g, start in ((0, 0), (1, 1024)):
        t = f.read_row_group(g)
        n = t.num_rows
        assert t.column("id").to_pylist() == list(range(start, start + n))
        assert t.column("text").to_pylist() == texts[start : start + n]
        got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
        assert np.array_equal(got, emb.encode(texts[start : start + n]))


def test_progress_bar_total_and_integer_rows(
    tmp_path: Path, fake_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pyarrow as pa

    inputs, _ = _inputs(tmp_path)
    run_job(_opts(inputs, tmp_path / "o.npy", progress=True), embedder=FakeEmbedder(fake_model))
    size = sum(Path(f).stat().st_size for f in inputs)
    err = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in err.splitlines() if line.startswith("embedding")][-1]
    assert "100%" in last and f"{size / 1024:.2f}k/{size / 1024:.2f}k" in last.replace("kB", "k")
    assert "rows=201" in last
    pqf = tmp_path / "in.parquet"
    pa_table = pa.table({"text": [f"t{i}" for i in range(50)]})
    pq.write_table(pa_table, pqf)
    run_job(_opts([str(pqf)], tmp_path / "p.npy", progress=True), embedder=FakeEmbedder(fake_model))
    err = capsys.readouterr().err.replace("\r", "\n")
    last = [line for line in err.splitlines() if line.startswith("embedding")][-1]
    assert "| 50/50 [" in last and "rows/s" in last and "50.0" not in last


# --------------------------------------------------------------------------- NaN / inf rows
def _poisoned(tmp_path: Path) -> tuple[Path, list[int]]:
    bad = [3, 17, 18, 41]
    src = tmp_path / "in.txt"
    src.write_text(
        "".join((f"row {i} poison here" if i in bad else f"row {i} fine") + "\n" for i in range(50))
    )
    return src, bad


@pytest.mark.parametrize("workers", [1, 2])
def test_nonfinite_rows_fail_with_file_and_line(tmp_path: Path, nan_model_dir: Path, workers: int) -> None:
    src, _ = _poisoned(tmp_path)
    out = tmp_path / "o.npy"
    opts = _opts([str(src)], out, model=str(nan_model_dir), workers=workers, chunk_size=16)
    with pytest.raises(NonFiniteEmbeddingError, match=rf"^{src}:4: the model produced a NaN/inf") as info:
        run_job(opts)
    assert info.value.indices == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no output, no work directory


@pytest.mark.parametrize("workers", [1, 2])
def test_nonfinite_rows_skipped(tmp_path: Path, nan_model_dir: Path, workers: int) -> None:
    from mrl_infer import Embedder

    src, bad = _poisoned(tmp_path)
    out = tmp_path / "o.parquet"
    opts = _opts([str(src)], out, model=str(nan_model_dir), workers=workers, chunk_size=16, on_error="skip")
    summary = run_job(opts)
    keep = [i for i in range(50) if i not in bad]
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == keep
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert np.isfinite(got).all()
    lines = src.read_text().splitlines()
    assert np.allclose(got, Embedder(nan_model_dir).encode([lines[i] for i in keep]))
    skipped = [json.loads(x) for x in (tmp_path / "o.parquet.skipped.jsonl").read_text().splitlines()]
    assert [(s["file"], s["line"], s["index"]) for s in skipped] == [(str(src), i + 1, i) for i in bad]
    assert all("NaN/inf" in s["reason"] for s in skipped)
    assert summary.rows == 46 and summary.skipped == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "o.parquet", "o.parquet.skipped.jsonl"]


def test_nonfinite_skip_resume_is_identical(tmp_path: Path, nan_model_dir: Path) -> None:
    src, _ = _poisoned(tmp_path)
    common = {"model": str(nan_model_dir), "chunk_size": 8, "on_error": "skip"}
    run_job(_opts([str(src)], tmp_path / "ref.npy", **common))
    out = tmp_path / "o.npy"
    real = _jobs._encode_chunk
    calls = []

    def crashes(*a: Any, **k: Any) -> Any:
        calls.append(1)
        if len(calls) > 3:
            raise _Killed("killed in the 4th chunk")
        return real(*a, **k)

    _jobs._encode_chunk = crashes  # type: ignore[assignment]
    try:
        with pytest.raises(_Killed):
            run_job(_opts([str(src)], out, **common))
    finally:
        _jobs._encode_chunk = real
    run_job(_opts([str(src)], out, resume=True, **common))
    assert out.read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert (tmp_path / "o.npy.skipped.jsonl").read_text().replace("o.npy", "") == (
        tmp_path / "ref.npy.skipped.jsonl"
    ).read_text().replace("ref.npy", "")


# --------------------------------------------------------------------------- the real model
def test_real_model_job_matches_encode(tmp_path: Path, minilm_model_dir: Path) -> None:
    from mrl_infer import Embedder

    inputs, texts = _inputs(tmp_path)
    out = tmp_path / "o.parquet"
    opts = _opts(
        inputs, out, model=str(minilm_model_dir), dim=64, variant="fp32", chunk_size=64, include_text=True
    )
    summary = run_job(opts)
    want = Embedder(minilm_model_dir, dim=64, variant="fp32").encode(texts)
    t = pq.read_table(out)
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert got.shape == (201, 64) and np.allclose(got, want, atol=1e-5)
    assert t.column("text").to_pylist() == texts and t.column("id").to_pylist() == list(range(201))
    assert summary.rows == 201


def test_real_model_int8_chunks_are_exact(tmp_path: Path, minilm_model_dir: Path) -> None:
    """The int8 graph quantizes activations per batch, so only the same chunks give the same bits:
    the job embeds fixed chunks of --chunk-size rows, exactly like encode() called chunk by chunk."""
    from mrl_infer import Embedder

    inputs, texts = _inputs(tmp_path)
    run_job(
        _opts(inputs, tmp_path / "o.npy", model=str(minilm_model_dir), dim=64, variant="int8", chunk_size=64)
    )
    emb = Embedder(minilm_model_dir, dim=64, variant="int8")
    want = np.concatenate([emb.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)])
    assert np.array_equal(np.load(tmp_path / "o.npy"), want)


def test_real_model_two_workers_same_output(tmp_path: Path, minilm_model_dir: Path) -> None:
    inputs, _ = _inputs(tmp_path)
    common = {"model": str(minilm_model_dir), "dim": 64, "variant": "int8", "chunk_size": 32}
    run_job(_opts(inputs, tmp_path / "one.npy", workers=1, threads=1, **common))
    run_job(_opts(inputs, tmp_path / "two.npy", workers=2, **common))
    assert (tmp_path / "one.npy").read_bytes() == (tmp_path / "two.npy").read_bytes()
