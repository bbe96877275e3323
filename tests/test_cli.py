"""``mrl-embed`` end to end with the real exported MiniLM: embed, kill -9 / --resume, info, eval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mrl_infer.cli import main

pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, stdin: bytes | None = None, timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "mrl_infer.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def _lines(n: int) -> list[str]:
    """Short, varied, deterministic texts (quick to embed, different lengths)."""
    words = ["river", "stone", "light", "paper", "garden", "winter", "engine", "music", "harbor", "cloud"]
    return [" ".join(words[(i * 7 + k) % 10] for k in range(1 + i % 9)) + f" {i}" for i in range(n)]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(_lines(900)) + "\n", encoding="utf-8")
    return path


def _base(model: Path) -> list[str]:
    return ["--model", str(model), "--variant", "int8", "--dim", "64", "--chunk-size", "32", "-q"]


def test_embed_npy_and_jsonl_and_stdin(tmp_path: Path, minilm_model_dir: Path) -> None:
    from mrl_infer import Embedder

    a = tmp_path / "a.txt"
    a.write_text("first\n\nthird\n", encoding="utf-8")
    b = tmp_path / "b.jsonl"
    b.write_text('{"text": "fourth", "id": "x4"}\n{"text": "fifth", "id": "x5"}\n', encoding="utf-8")
    r = _cli("embed", str(a), str(b), "-o", str(tmp_path / "o.npy"), *_base(minilm_model_dir))
    assert r.returncode == 0, r.stderr.decode()
    err = r.stderr.decode()
    assert (
        "wrote 5 rows" in err
        and "rows/s" in err
        and "truncated inputs: 0" in err
        and "skipped rows: 0" in err
    )
    emb = Embedder(minilm_model_dir, dim=64, variant="int8")
    want = emb.encode(["first", "", "third", "fourth", "fifth"])  # one chunk: same bits as the job
    assert np.array_equal(np.load(tmp_path / "o.npy"), want)

    r = _cli(
        "embed",
        "-",
        "-o",
        str(tmp_path / "s.jsonl"),
        "--input-format",
        "jsonl",
        "--id-field",
        "id",
        *_base(minilm_model_dir),
        stdin=b.read_bytes(),
    )
    assert r.returncode == 0, r.stderr.decode()
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [x["id"] for x in rows] == ["x4", "x5"]
    assert np.allclose([x["embedding"] for x in rows], emb.encode(["fourth", "fifth"]), atol=1e-6)


def test_embed_errors_are_clear(tmp_path: Path, minilm_model_dir: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n', encoding="utf-8")
    out = tmp_path / "o.npy"
    r = _cli("embed", str(bad), "-o", str(out), *_base(minilm_model_dir))
    assert r.returncode == 2
    assert f"{bad}:2: no field 'text' (fields present: 'txt')" in r.stderr.decode()
    assert not out.exists()
    r = _cli("embed", str(bad), "-o", str(out), "--on-error", "skip", *_base(minilm_model_dir))
    assert r.returncode == 0 and "skipped rows: 1" in r.stderr.decode()
    assert np.load(out).shape == (1, 64)
    skipped = json.loads((tmp_path / "o.npy.skipped.jsonl").read_text())
    assert skipped == {
        "file": str(bad),
        "line": 2,
        "index": 1,
        "reason": "no field 'text' (fields present: 'txt')",
    }
    r = _cli("embed", str(bad), "-o", str(out), *_base(minilm_model_dir))
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr.decode()
    r = _cli("embed", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "x.npy"), *_base(minilm_model_dir))
    assert r.returncode == 2 and "nope.txt: no such file" in r.stderr.decode()


def _state_rows(workdir: Path) -> int:
    try:
        return int(json.loads((workdir / "state.json").read_text())["rows"])
    except (OSError, ValueError, KeyError):
        return -1


def _run_until(args: list[str], workdir: Path, min_rows: int | None, delay: float = 0.0) -> None:
    """Start the CLI and SIGKILL it once the checkpoint holds ``min_rows`` rows (or after ``delay`` s)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    log = workdir.parent / "killed.log"
    with open(log, "wb") as err:  # a file, not a pipe: nothing can hold it open after the kill
        proc = subprocess.Popen(
            [sys.executable, "-m", "mrl_infer.cli", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        deadline = time.monotonic() + 240
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if min_rows is None:
                    time.sleep(delay)
                    break
                if _state_rows(workdir) >= min_rows:
                    break
                time.sleep(0.01)
        finally:
            kids = _children(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode in (0, -signal.SIGKILL), log.read_text()
    _wait_gone(kids)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _wait_gone(pids: list[int], timeout: float = 20) -> None:
    """Worker processes must not outlive a killed job (they would hold its pipes and CPU)."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids):
        assert time.monotonic() < deadline, "a worker of the killed job is still alive"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("fmt,extra", [("npy", []), ("parquet", ["--include-text", "--workers", "2"])])
def test_kill9_then_resume_is_identical(
    tmp_path: Path, corpus: Path, minilm_model_dir: Path, fmt: str, extra: list[str]
) -> None:
    common = [str(corpus), *_base(minilm_model_dir), "--checkpoint-seconds", "0", *extra]
    ref = tmp_path / f"ref.{fmt}"
    r = _cli("embed", *common, "-o", str(ref))
    assert r.returncode == 0, r.stderr.decode()

    out = tmp_path / f"out.{fmt}"
    workdir = tmp_path / f"out.{fmt}.mrl-job"
    args = ["embed", *common, "-o", str(out)]
    _run_until(args, workdir, None, delay=0.3)  # during start-up, before any checkpoint
    assert not out.exists()
    _run_until([*args, "--resume"], workdir, 64)  # after a couple of checkpoints
    assert not out.exists() and _state_rows(workdir) >= 64
    first = _state_rows(workdir)
    _run_until([*args, "--resume"], workdir, first + 300)  # resumed, then killed again further on
    assert not out.exists()
    r = _cli(*args)  # a plain rerun refuses to clobber the interrupted job
    assert r.returncode == 2 and "--resume" in r.stderr.decode()
    r = _cli(*args, "--resume", "--batch-size", "16")
    assert r.returncode == 2 and "options.batch_size: 32 -> 16" in r.stderr.decode()
    r = _cli(*args, "--resume")
    assert r.returncode == 0, r.stderr.decode()
    assert "resumed at row" in r.stderr.decode() and "wrote 900 rows" in r.stderr.decode()
    assert not workdir.exists()
    if fmt == "npy":
        assert out.read_bytes() == ref.read_bytes()
    else:
        assert pq.read_table(out).equals(pq.read_table(ref))
        assert out.read_bytes() == ref.read_bytes()


def test_info(minilm_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mrl_infer._manifest import load_manifest

    assert main(["info", str(minilm_model_dir)]) == 0
    out = capsys.readouterr().out
    m = load_manifest(minilm_model_dir)
    assert f"matryoshka dims:  {', '.join(map(str, m.dims))}" in out
    for name, v in m.variants.items():
        assert f"{name:<6} precision={v.precision} target={v.target} file={v.file}" in out
        for key in v.parity:  # every parity figure is shown (per-dim tables one line per dim)
            assert f"{key}=" in out or f"{key} " in out or f"{key}: " in out
    assert "MiB)" in out and "CPUExecutionProvider" in out


def test_info_counts_external_data_in_the_variant_size(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped default keeps its weights beside the graph: the size shown is graph + weights."""
    from mrl_infer import load_manifest
    from mrl_infer._hub import DEFAULT_MODEL_DIR as d

    v = load_manifest(d).variants["int8"]
    assert v.external_data
    assert main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    total = sum((d / f).stat().st_size for f in (v.file, *v.external_data)) / 2**20
    assert f"file={v.file} + {', '.join(v.external_data)} ({total:.1f} MiB)" in out, out


def test_info_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tmp_path)]) == 2
    assert "mrl_infer.json" in capsys.readouterr().err


def test_help_lists_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out.split("{", 1)[1].split("}", 1)[0].split(",")
    assert {"embed", "index", "search", "info", "eval"} <= set(listed), listed
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    for flag in ("--resume", "--overwrite", "--on-error", "--workers", "--id-field", "--column", "--engine"):
        assert flag in out


def test_eval(
    tmp_path: Path,
    minilm_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quality = pytest.importorskip("mrl_infer._quality")
    monkeypatch.setattr(quality, "DEFAULT_RETRIEVAL_DIR", tmp_path / "no-retrieval")
    lines = (REPO / "tests" / "data" / "stsb_dev_subset.tsv").read_text(encoding="utf-8").splitlines()
    (tmp_path / "test.tsv").write_text("\n".join(lines[:81]) + "\n", encoding="utf-8")
    assert (
        main(
            ["eval", str(minilm_model_dir), "--dims", "64,32", "--variants", "int8", "--data", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| model | variant | dim |" in out
    assert out.count("| int8 |") == 2


# --------------------------------------------------------------------------- issue 11 / 17: CLI guarantees
def _ls(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _poison_file(tmp_path: Path) -> tuple[Path, list[int]]:
    bad = [3, 17, 18, 41]
    src = tmp_path / "in.txt"
    src.write_text("".join((f"row {i} poison" if i in bad else f"row {i} fine") + "\n" for i in range(50)))
    return src, bad


@pytest.mark.parametrize("workers", ["1", "2"])
def test_embed_nonfinite_rows(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str], workers: str
) -> None:
    src, bad = _poison_file(tmp_path)
    out = tmp_path / "o.jsonl"
    args = ["embed", str(src), "-o", str(out), "--model", str(nan_model_dir), "--chunk-size", "16", "-q"]
    assert main([*args, "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert f"mrl-embed: error: {src}:4: the model produced a NaN/inf embedding" in err
    assert "--on-error skip" in err
    assert _ls(tmp_path) == ["in.txt"]
    assert main([*args, "--workers", workers, "--on-error", "skip"]) == 0
    assert "skipped rows: 4" in capsys.readouterr().err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [i for i in range(50) if i not in bad]
    assert np.isfinite([r["embedding"] for r in rows]).all()
    skipped = [json.loads(x) for x in (tmp_path / "o.jsonl.skipped.jsonl").read_text().splitlines()]
    assert [s["line"] for s in skipped] == [i + 1 for i in bad]
    assert _ls(tmp_path) == ["in.txt", "o.jsonl", "o.jsonl.skipped.jsonl"]


def test_failed_starts_leave_nothing(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    src, _ = _poison_file(tmp_path)
    src.write_text("a\nb\n")
    base = ["embed", str(src), "-o", str(tmp_path / "o.npy"), "--model", str(nan_model_dir), "-q"]
    cases = [(["--dim", "77"], "out of range"), (["--prompt-name", "nope"], "unknown prompt_name 'nope'")]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        cases.append((["--device", "cuda"], "no CUDAExecutionProvider"))
    cases.append((["--dim", "3"], "pass --allow-any-dim"))
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "allow_any_dim=True" not in err, err
        assert _ls(tmp_path) == ["in.txt"], extra  # no OUTPUT.mrl-job/lock left behind
    assert main([*base, "--dim", "3", "--allow-any-dim"]) == 0
    assert np.load(tmp_path / "o.npy").shape == (2, 3)


def test_output_that_is_an_input_is_refused(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "data.jsonl"
    src.write_text('{"text": "a"}\n{"text": "b"}\n')
    before = src.read_bytes()
    assert main(["embed", str(src), "-o", str(src), "--overwrite", "--model", str(nan_model_dir), "-q"]) == 2
    assert "is an input of this job" in capsys.readouterr().err
    assert src.read_bytes() == before and _ls(tmp_path) == ["data.jsonl"]


def test_resume_of_finished_output_exits_0(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n")
    args = ["embed", str(src), "-o", str(tmp_path / "o.npy"), "--model", str(nan_model_dir), "-q"]
    assert main(args) == 0
    capsys.readouterr()
    for _ in range(2):  # a rerun script is idempotent
        assert main([*args, "--resume"]) == 0
        assert "o.npy is already complete (3 rows); nothing to resume" in capsys.readouterr().err
    assert _ls(tmp_path) == ["in.txt", "o.npy"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import mrl_infer

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"mrl-embed {mrl_infer.__version__}"


def test_embed_help_stands_alone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = capsys.readouterr().out
    assert "docs/" not in out  # a pip install has no docs directory
    for rule in (
        "--allow-any-dim",
        "OUTPUT.skipped.jsonl",
        "0-based index across all inputs",
        "under 1 MiB",
        "--calibration-rows",
        "exit 130",
        "byte for byte",
        "skipping names starting with '.' or '_'",
    ):
        assert rule in out, rule


@pytest.mark.parametrize("dims", [None, [8]])
def test_info_without_matryoshka_dims(
    tmp_path: Path, nan_model_dir: Path, capsys: pytest.CaptureFixture[str], dims: list[int] | None
) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(nan_model_dir, model)
    manifest = json.loads((model / "mrl_infer.json").read_text())
    manifest["matryoshka_dims"] = dims
    (model / "mrl_infer.json").write_text(json.dumps(manifest))
    assert main(["info", str(model)]) == 0
    out = capsys.readouterr().out
    assert "matryoshka dims:  8 only: no Matryoshka dims declared; pass --dims to mrl-export" in out
    assert main(["info", str(nan_model_dir)]) == 0
    assert "matryoshka dims:  8, 4\n" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag,message",
    [("--resume", "does not checkpoint"), ("--on-error=skip", "supports only --on-error fail")],
)
def test_ray_refusals_do_not_start_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, message: str
) -> None:
    pa = pytest.importorskip("pyarrow")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["a"]}), src)
    ray_loaded = "ray" in sys.modules
    assert main(["embed", str(src), "-o", str(tmp_path / "o.parquet"), "--engine", "ray", flag, "-q"]) == 2
    assert message in capsys.readouterr().err
    assert ("ray" in sys.modules) == ray_loaded  # refused before Ray was even imported
    if ray_loaded:
        assert not sys.modules["ray"].is_initialized()
    assert _ls(tmp_path) == ["in.parquet"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_exits_130_and_resumes(tmp_path: Path, nan_model_dir: Path, workers: str) -> None:
    """SIGINT to the job's process group, as a terminal's Ctrl-C sends it: exit 130, resumable."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"line {i} " + "word " * (i % 7) + "\n" for i in range(200_000)))
    common = [
        str(src),
        "--model",
        str(nan_model_dir),
        "--chunk-size",
        "32",
        "--checkpoint-seconds",
        "0",
        "-q",
    ]
    ref = tmp_path / "ref.npy"
    r = _cli("embed", *common, "--workers", workers, "-o", str(ref))
    assert r.returncode == 0, r.stderr.decode()
    out = tmp_path / "o.npy"
    workdir = tmp_path / "o.npy.mrl-job"
    args = [sys.executable, "-m", "mrl_infer.cli", "embed", *common, "--workers", workers, "-o", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    while _state_rows(workdir) < 64 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the job finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "interrupted; rerun with --resume" in err.decode()
    assert not out.exists() and (workdir / "state.json").exists()
    r = _cli("embed", *common, "--workers", workers, "-o", str(out), "--resume")
    assert r.returncode == 0, r.stderr.decode()
    assert "resumed at row" in r.stderr.decode()
    assert out.read_bytes() == ref.read_bytes()


def test_info_on_a_mistyped_path_says_no_such_model_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "./no/such/model"]) == 2
    err = capsys.readouterr().err
    assert "no such model directory" in err and "no/such/model" in err


def test_worker_started_after_its_parent_died_exits_at_once() -> None:
    """A spawn worker whose parent died while it was still importing is already re-parented: it must
    leave at once (PR_SET_PDEATHSIG set after the parent's death would never fire)."""
    import multiprocessing

    from mrl_infer.jobs._job import _exit_with_parent

    ctx = multiprocessing.get_context("spawn")
    orphan = ctx.Process(target=_exit_with_parent, args=(1_000_000_007,))  # not its parent
    orphan.start()
    orphan.join(60)
    assert orphan.exitcode == 1
    child = ctx.Process(target=_exit_with_parent, args=(os.getpid(),))  # its real parent: carries on
    child.start()
    child.join(60)
    assert child.exitcode == 0
