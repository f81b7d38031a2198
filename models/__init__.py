"""The neural codec: nets, configs, checkpoints and the training loop over tensors."""
import os

# Before torch and faiss load their OpenMP runtimes: idle OpenMP threads sleep instead of
# spinning. faiss's threads spin for a while after every search, and on a 2-core machine
# they took the cores from torch's decoder (a 5-s query: 56 ms spinning, 29 ms sleeping). The user's
# own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Likewise numpy's OpenBLAS, whose threads spin between calls: the small products of a query's re-scoring
# gain nothing from a second thread, which took a core from torch (a 5-s query: 44 ms, 35 ms with one).
# Read when numpy loads, which is here, through torch, unless the caller loaded it first.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def openblas_kernels(flags: set[str]) -> str | None:
    """The OpenBLAS kernels an x86-64 CPU with these /proc/cpuinfo `flags` runs: `SkylakeX` with AVX-512,
    `Haswell` with AVX2 and FMA, else None (OpenBLAS's own choice).

    faiss-cpu's wheels bundle OpenBLAS 0.3.15, which does not know recent Intel CPUs and falls back to its
    oldest kernels (`Prescott`, SSE3): on a 2-core Xeon of family 6 model 207 an exact search of a query's 16
    windows in 47,000 took 12 ms, 5.6 ms with SkylakeX's (BENCHMARKS.md). Newer OpenBLAS (numpy's) picks the
    same kernels itself.
    """
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:
        return set()


_FLAGS = _cpu_flags()

_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory(environ=os.environ) -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the kernel.

    glibc maps a large block (an encoder batch's activations: 10-25 MB) afresh for each allocation, or trims it off
    the heap when it is freed, unless its adaptive threshold has risen past that size, which depends on what the
    process allocated before: indexing 401 tracks through the `muzip-search` command on a 2-core Zen 3 VM faulted
    3.1-3.5 million pages and ran at 357-387x real time, the same code started another way 0.17-0.19 million and
    449-460x. Blocks under 32 MB now come from the heap and up to 256 MB freed stays there (in each of malloc's
    arenas: one per thread that allocates, up to 8 per core; these commands allocate on one or two): 0.18-0.20
    million faults and 455-460x through the command, its peak memory 0.6-0.8 GB either way (BENCHMARKS.md). Returns
    whether it did: only under glibc, and the user's own settings win (`MALLOC_*`, or `glibc.malloc` tunables in
    `GLIBC_TUNABLES`)."""
    if any(k in environ for k in _MALLOC_ENV) or "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        import ctypes
        libc = ctypes.CDLL(None)  # the process's own C library
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    # malloc.h's numbers. Both: setting either turns the adaptive threshold off (the trim threshold alone: 218x)
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 256 << 20))


keep_freed_memory()

# Read when each OpenBLAS loads (faiss's, numpy's); the user's own setting wins
if "OPENBLAS_CORETYPE" not in os.environ and (_kernels := openblas_kernels(_FLAGS)):
    os.environ["OPENBLAS_CORETYPE"] = _kernels

import torch  # noqa: E402  (after the settings above)

from .checkpoint import CheckpointError, load_codec, model_checksum, save_checkpoint, shipped_checkpoint  # noqa: E402
from .codec import Codec, build_codec  # noqa: E402
from .config import DEFAULT_PRESET, PRESETS, CodecConfig, preset  # noqa: E402
from .metrics import reconstruction_metrics  # noqa: E402


def precision() -> str:
    """The environment's `MUZIP_PRECISION`: auto (the default), float32 or bfloat16; ValueError otherwise."""
    choice = os.environ.get("MUZIP_PRECISION", "auto")
    if choice not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"MUZIP_PRECISION={choice!r}: expected auto, float32 or bfloat16")
    return choice


def compute_dtype(model: Codec, flags: set[str] | None = None) -> torch.dtype:
    """The dtype `model` encodes and decodes in for indexing and search: bfloat16 where it has a bfloat16 path
    (`Codec.BFLOAT16`) and runs on a CPU with AMX (`amx_bf16` among its /proc/cpuinfo `flags`), whose
    bfloat16 products run 3 to 6 times as fast as float32 convolutions (BENCHMARKS.md); else float32, which
    is faster without AMX. The environment's `MUZIP_PRECISION` (float32 or bfloat16) overrides `auto`.
    Reconstruction (`reconstruct`, `evaluate`) and training stay in float32.
    """
    choice = precision()
    if choice == "auto":
        flags = _FLAGS if flags is None else flags
        device = next(model.parameters()).device
        amx = "amx_bf16" in flags and torch.backends.mkldnn.is_available()  # oneDNN runs the products on AMX
        choice = "bfloat16" if device.type == "cpu" and amx else "float32"
    return torch.bfloat16 if choice == "bfloat16" and model.BFLOAT16 else torch.float32


__all__ = ["Codec", "build_codec", "compute_dtype", "precision", "keep_freed_memory", "CodecConfig", "PRESETS",
           "DEFAULT_PRESET", "preset", "save_checkpoint", "load_codec", "shipped_checkpoint", "model_checksum",
           "CheckpointError", "reconstruction_metrics"]
