"""ONNX Runtime session: device and provider choice, session options, CUDA IOBinding."""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mrl_infer.errors import DeviceError, EmbedderClosedError, ModelFormatError

logger = logging.getLogger("mrl_infer")

#: Session config entries for CPU sessions (see benchmarks/ for the measurements behind each).
CPU_CONFIG: dict[str, str] = {}

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


#: Where physical_cores reads the CPU topology (a test points it elsewhere).
CPUINFO = "/proc/cpuinfo"


def count_physical_cores(cpuinfo: str, allowed: set[int]) -> int:
    """Distinct (physical id, core id) pairs among the ``allowed`` processors of a /proc/cpuinfo text;
    ``len(allowed)`` where the text names none (or cannot be parsed)."""
    cores: set[tuple[str, str]] = set()
    try:
        for block in cpuinfo.split("\n\n"):
            fields = dict(
                (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in block.splitlines())
            )
            if "processor" in fields and int(fields["processor"]) in allowed:
                cores.add((fields.get("physical id", "0"), fields.get("core id", fields["processor"])))
    except ValueError:
        cores = set()
    return max(1, len(cores) if cores else len(allowed))


def physical_cores() -> int:
    """Physical cores this process may run on (hyperthreads make ONNX Runtime slower, not faster)."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        allowed = set(range(os.cpu_count() or 1))
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        text = ""
    return count_physical_cores(text, set(allowed))


#: Overrides the int8 GEMM kernel choice for full-range int8 files (see :func:`int8_kernel`).
INT8_KERNEL_ENV = "MRL_INFER_INT8_KERNEL"
INT8_KERNELS = ("auto", "u8s8", "u8u8")
#: CPU flags (Linux /proc/cpuinfo names) with which onnxruntime's u8s8 GEMM accumulates in int32
#: (VPDPBUSD, AMX) instead of VPMADDUBSW's saturating int16 pair sums.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ISA flags of the first processor in a /proc/cpuinfo text (empty if it has none)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def int8_kernel(weight_range: str | None, machine: str, flags: set[str] | None, env: str | None) -> str:
    """The integer GEMM onnxruntime should use for an int8 file on this CPU: "u8s8" or "u8u8".

    onnxruntime multiplies u8 activations by s8 weights. On x86 without VNNI (AVX2, AVX-512 without
    VNNI) that kernel uses VPMADDUBSW, whose int16 sums of two products saturate when the weights use
    the full s8 range, so a ``weight_range="full"`` file runs there as u8u8: onnxruntime adds 128 to
    the weights when the session loads (``session.x64quantprecision``), the same integers, no saturation,
    somewhat slower. VNNI CPUs, other architectures and 7-bit (``reduced``) files keep u8s8. ``flags``
    None means the CPU's flags are unknown (not Linux): no VNNI is assumed, the safe side. ``env``
    (``$MRL_INFER_INT8_KERNEL``) forces either kernel for full-range files.
    """
    choice = (env or "auto").strip().lower()
    if choice not in INT8_KERNELS:
        raise ValueError(f"${INT8_KERNEL_ENV} is {env!r}; expected one of {INT8_KERNELS}")
    if weight_range != "full":
        return "u8s8"
    if choice != "auto":
        return choice
    if machine.lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "u8s8"
    return "u8s8" if flags is not None and flags & VNNI_FLAGS else "u8u8"


def this_cpu_flags() -> set[str] | None:
    """This machine's CPU flags from /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            flags = cpu_flags(f.read())
    except OSError:
        return None
    return flags or None


def int8_kernel_here(weight_range: str | None) -> str:
    """:func:`int8_kernel` for this machine and environment."""
    return int8_kernel(weight_range, platform.machine(), this_cpu_flags(), os.environ.get(INT8_KERNEL_ENV))


def apply_int8_kernel(opts: ort.SessionOptions, kernel: str) -> None:
    """Session options for ``kernel``: for "u8u8", onnxruntime's s8-to-u8 weight rewrite, which runs
    among its extended graph optimizations (so the level is raised to at least that)."""
    if kernel != "u8u8":
        return
    opts.add_session_config_entry("session.x64quantprecision", "1")
    if opts.graph_optimization_level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ):
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


@dataclass(frozen=True)
class DeviceChoice:
    """The device actually in use, and why it was chosen."""

    kind: str  # "cpu" or "cuda"
    device_id: int
    reason: str

    def __str__(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.device_id}"


def parse_device(device: str) -> tuple[str, int]:
    if device in ("auto", "cpu", "cuda"):
        return device, 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def cuda_available() -> bool:
    return CUDA in ort.get_available_providers()


class OnnxSession:
    """One ONNX Runtime session over one variant file; ``run`` is safe to call from several threads."""

    def __init__(
        self,
        path: Path,
        kind: str,
        device_id: int,
        threads: int | None,
        config: Mapping[str, str] | None = None,
        preoptimized: bool = False,
        weight_range: str | None = None,
    ) -> None:
        """``preoptimized``: the file already holds onnxruntime's CPU graph optimizations, so a CPU
        session skips them (measured: session creation 41-64 ms instead of 68-146 ms for the shipped
        per-row int8 graph, embeddings bit-identical). ``weight_range``: the int8 variant's (see
        :func:`int8_kernel`); the kernel chosen is ``self.int8_kernel`` (None for float graphs)."""
        if not path.is_file():
            raise ModelFormatError(f"{path}: ONNX file is missing")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            if preoptimized and kind == "cpu"
            else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_cpu_mem_arena = True
        opts.enable_mem_pattern = True
        opts.intra_op_num_threads = threads or physical_cores()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.int8_kernel: str | None = None
        if kind == "cpu":
            for key, value in CPU_CONFIG.items():
                opts.add_session_config_entry(key, value)
            if weight_range is not None:
                self.int8_kernel = int8_kernel_here(weight_range)
                apply_int8_kernel(opts, self.int8_kernel)
        for key, value in (config or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        if kind == "cuda":
            providers: list[str | tuple[str, dict[str, object]]] = [
                (CUDA, {"device_id": device_id}),
                CPU,
            ]
        else:
            providers = [CPU]
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            if kind == "cuda" and "CUDA" in str(exc):
                raise DeviceError(
                    f"device='cuda:{device_id}' was requested but CUDA could not start for {path}: {exc}"
                ) from exc
            raise ModelFormatError(f"{path}: cannot load ONNX graph ({exc})") from exc
        self.session: ort.InferenceSession | None = session
        self.providers = session.get_providers()
        if kind == "cuda" and self.providers[0] != CUDA:
            raise DeviceError(
                f"device='cuda:{device_id}' was requested but onnxruntime attached {self.providers} "
                f"for {path}. "
                "Check that onnxruntime-gpu (pip install 'mrl-infer[cuda]') and matching CUDA/cuDNN "
                "libraries are installed."
            )
        self.kind = kind
        self.device_id = device_id
        self.path = path
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.threads = opts.intra_op_num_threads

    def close(self) -> None:
        """Drop the ONNX Runtime session (its memory goes once no run still holds it)."""
        self.session = None

    def run(self, output: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self.session
        if session is None:
            raise EmbedderClosedError(f"{self.path}: the session was closed")
        if self.kind == "cuda":
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            binding.bind_output(output, "cuda", self.device_id)
            session.run_with_iobinding(binding)
            result = binding.copy_outputs_to_cpu()[0]
        else:
            result = session.run([output], feeds)[0]
        return np.asarray(result, dtype=np.float32)
