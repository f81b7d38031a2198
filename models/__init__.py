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

from .checkpoint import CheckpointError, load_codec, model_checksum, save_checkpoint, shipped_checkpoint
from .codec import Codec, build_codec
from .config import DEFAULT_PRESET, PRESETS, CodecConfig, preset
from .metrics import reconstruction_metrics

__all__ = ["Codec", "build_codec", "CodecConfig", "PRESETS", "DEFAULT_PRESET", "preset", "save_checkpoint", "load_codec",
           "shipped_checkpoint", "model_checksum", "CheckpointError", "reconstruction_metrics"]
