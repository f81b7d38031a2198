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


# Read when each OpenBLAS loads (faiss's, numpy's); the user's own setting wins
if "OPENBLAS_CORETYPE" not in os.environ and (_kernels := openblas_kernels(_cpu_flags())):
    os.environ["OPENBLAS_CORETYPE"] = _kernels

from .checkpoint import CheckpointError, load_codec, model_checksum, save_checkpoint, shipped_checkpoint
from .codec import Codec, build_codec
from .config import DEFAULT_PRESET, PRESETS, CodecConfig, preset
from .metrics import reconstruction_metrics

__all__ = ["Codec", "build_codec", "CodecConfig", "PRESETS", "DEFAULT_PRESET", "preset", "save_checkpoint", "load_codec",
           "shipped_checkpoint", "model_checksum", "CheckpointError", "reconstruction_metrics"]
