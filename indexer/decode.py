"""Decode many files in worker processes: the batch stage `train` and `evaluate` feed on."""
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
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


def parallel_map(fn: Callable, jobs: list, workers: int | None = None, ahead: int | None = None,
                 initializer: Callable | None = None) -> Iterator:
    """`map(fn, jobs)` in `workers` processes (default: one per core), results in order of `jobs`; each process
    runs `initializer` first (not this one, where one worker or one job runs `fn` here).

    At most `ahead` jobs (default: 4 per worker) are handed out past the result the caller has reached, so the
    workers keep busy while the caller works on it, and their results wait in memory only that far ahead.
    (`Executor.map` hands out every job at once: indexing 401 tracks of 30 s on a CPU, whose decoders outrun
    its encoder, held nearly all their decoded audio at once, 1.3 GB; fma_small's would have been 21 GB.)
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    todo = iter(jobs)
    with ProcessPoolExecutor(workers, initializer=initializer) as pool:
        running = deque(pool.submit(fn, job) for job in islice(todo, ahead or 4 * workers))
        try:
            while running:
                result = running.popleft().result()
                running.extend(pool.submit(fn, job) for job in islice(todo, 1))  # before the caller takes its turn
                yield result
        finally:  # the caller stopped early (Ctrl-C, an error): jobs not started yet are dropped, as `Executor.map`'s
            for future in running:
                future.cancel()


def decode_files(paths: list[Path], sample_rate: int, *, min_seconds: float = 0.0,
                 max_seconds: float | None = None, workers: int | None = None
                 ) -> Iterator[tuple[Path, np.ndarray | AudioError]]:
    """Yield `(path, int16 mono samples [T] or the AudioError)` for each file, in order.

    Decoding runs in `workers` processes (default: one per core).
    """
    jobs = [(Path(p), sample_rate, min_seconds, max_seconds) for p in paths]
    yield from parallel_map(_decode_one, jobs, workers)
