"""Decoding stored tracks back to audio from their latents."""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from indexer.encode import decode_spans
from indexer.index import Index


class NotInIndex(Exception):
    def __init__(self, track_id: int):
        super().__init__(f"track {track_id} is not in the index")


def reconstruct(index: Index, track_id: int, start_s: float = 0.0, end_s: float | None = None) -> np.ndarray:
    """Mono float32 `[T]` of seconds [start_s, end_s) of a stored track, decoded from its latents, at the level of
    its file (a quiet track is stored raised: `Catalog.track_gain`)."""
    start, end = span_samples(index, track_id, start_s, end_s)
    y = _decode(index, track_id, start, end)
    gain = index.catalog.track_gain(track_id)
    return y / np.float32(gain) if gain != 1.0 else y


class Spans:
    """`reconstruct` for one query's many re-scores, at the level the track is stored at (re-scoring's correlations
    do not depend on it): each track's decoded stretch is kept, so a second look at
    it (the same candidate on more of the clip, or after a cheap check of its waveform) decodes only the part
    not decoded yet. Decoding is frame by frame, so a stretch decoded in parts holds the same samples up to
    float32's rounding (3e-7 apart at most on a Zen 3 VM: the convolutions' kernels depend on how many frames
    are decoded at once; scores are shown to 4 decimals). The
    decoder computes in `dtype` (`models.compute_dtype`: re-scoring compares spectrograms and waveform
    correlations, which bfloat16's 48-49 dB from float32 moved by 0.0002 at most on the benchmark's clips)."""

    def __init__(self, index: Index, dtype: torch.dtype = torch.float32):
        self.index = index
        self.dtype = dtype
        self.kept: dict[int, tuple[int, np.ndarray]] = {}  # track -> (its first sample, the samples)
        self.lengths: dict[int, int | None] = {}  # track -> its length in samples (None: not stored), read once

    def samples(self, track_id: int) -> int:
        """The track's length in samples; NotInIndex where it is not stored."""
        if track_id not in self.lengths:
            self.lengths[track_id] = self.index.catalog.track_samples(track_id)
        if self.lengths[track_id] is None:
            raise NotInIndex(track_id)
        return self.lengths[track_id]

    def span(self, track_id: int, start_s: float, end_s: float | None) -> tuple[int, int]:
        """`span_samples`, the track's length read once for the query."""
        return _clamp(self.samples(track_id), start_s, end_s, self.index.model.cfg.sample_rate)

    def __call__(self, track_id: int, start_s: float, end_s: float) -> np.ndarray:
        return self.stretch(track_id, start_s, end_s)[1]

    def stretch(self, track_id: int, start_s: float, end_s: float) -> tuple[int, np.ndarray]:
        """(the track's sample where they start, the samples): seconds [start_s, end_s) of it, within it."""
        start, end = self.span(track_id, start_s, end_s)
        first, y = self.kept.get(track_id, (start, np.zeros(0, np.float32)))
        last = first + len(y)
        if start > last or end < first:  # apart from what is kept: keep this instead
            first, y, last = start, np.zeros(0, np.float32), start
        if start < first or end > last:  # what is missing on either side, decoded in one pass
            wanted = [(a, b) for a, b in [(start, first), (last, end)] if a < b]
            got = dict(zip(wanted, _decode_spans(self.index, track_id, wanted, self.dtype)))
            y = np.concatenate([got.get((start, first), y[:0]), y, got.get((last, end), y[:0])])
            first = min(first, start)
            self.kept[track_id] = (first, y)
        return start, y[start - first:end - first]


def span_samples(index: Index, track_id: int, start_s: float, end_s: float | None) -> tuple[int, int]:
    """Seconds [start_s, end_s) of a track (end None: its end) as samples, within the track; NotInIndex where it
    is not stored."""
    samples = index.catalog.track_samples(track_id)
    if samples is None:
        raise NotInIndex(track_id)
    return _clamp(samples, start_s, end_s, index.model.cfg.sample_rate)


def _clamp(samples: int, start_s: float, end_s: float | None, sr: int) -> tuple[int, int]:
    start = min(max(0, int(round(start_s * sr))), samples)
    end = samples if end_s is None else min(samples, max(start, int(round(end_s * sr))))
    return start, end


def _decode(index: Index, track_id: int, start: int, end: int, dtype: torch.dtype = torch.float32) -> np.ndarray:
    return _decode_spans(index, track_id, [(start, end)], dtype)[0]


def _decode_spans(index: Index, track_id: int, spans: list[tuple[int, int]],
                  dtype: torch.dtype = torch.float32) -> list[np.ndarray]:
    """Samples [start, end) of a stored track for each of `spans` (`decode_spans`: in one decoder pass where
    they lie within a batch of chunks)."""
    chunk = index.model.cfg.chunk
    first, last = min(a for a, _ in spans) // chunk, -(-max(b for _, b in spans) // chunk)
    stored = index.catalog.latents(track_id, first, last)
    if stored is None:  # removed since (a concurrent `remove`)
        raise NotInIndex(track_id)
    z = torch.from_numpy(stored[0].copy())
    return decode_spans(index.model, z, [(a - first * chunk, b - first * chunk) for a, b in spans], dtype=dtype)


def write_wav(path: Path, x: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit WAV; an existing file is never overwritten."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose another output file")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sample_rate, subtype="PCM_16")
    return path
