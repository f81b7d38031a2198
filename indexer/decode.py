"""Decode many files in worker processes: the batch stage `train` and `evaluate` feed on."""
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from .audio import AudioError, load, to_pcm16


def _decode_one(args) -> tuple[Path, np.ndarray | AudioError]:
    path, sample_rate, min_seconds, max_seconds = args
    try:
        x = load(path, sample_rate, min_seconds=min_seconds, max_seconds=max_seconds)
        return path, to_pcm16(x)
    except AudioError as err:
        return path, err


def parallel_map(fn: Callable, jobs: list, workers: int | None = None, chunksize: int = 4) -> Iterator:
    """`map(fn, jobs)` in `workers` processes (default: one per core), results in order of `jobs`."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)


def decode_files(paths: list[Path], sample_rate: int, *, min_seconds: float = 0.0,
                 max_seconds: float | None = None, workers: int | None = None
                 ) -> Iterator[tuple[Path, np.ndarray | AudioError]]:
    """Yield `(path, int16 mono samples [T] or the AudioError)` for each file, in order.

    Decoding runs in `workers` processes (default: one per core).
    """
    jobs = [(Path(p), sample_rate, min_seconds, max_seconds) for p in paths]
    yield from parallel_map(_decode_one, jobs, workers)
