"""Decoding stored tracks back to audio from their latents."""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from indexer.encode import decode_span
from indexer.index import Index


class NotInIndex(Exception):
    pass


def reconstruct(index: Index, track_id: int, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Mono float32 `[T]` of seconds [start_s, end_s) of a stored track, decoded from its latents."""
    cfg = index.model.cfg
    samples = index.catalog.track_samples(track_id)
    if samples is None:
        raise NotInIndex(f"track {track_id} is not in the index")
    start = min(max(0, int(round(start_s * cfg.sample_rate))), samples)
    end = samples if end_s is None else min(samples, max(start, int(round(end_s * cfg.sample_rate))))
    first, last = start // cfg.chunk, -(-end // cfg.chunk)
    z, _ = index.catalog.latents(track_id, first, last)
    return decode_span(index.model, torch.from_numpy(z.copy()), start - first * cfg.chunk, end - first * cfg.chunk)


def write_wav(path: Path, x: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit WAV; an existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sample_rate, subtype="PCM_16")
    return path
