"""How much of a clip a linear filter of a track's audio explains: re-scoring's test for a recording in a room.

A room, a speaker and a microphone filter the music (reverberation, band limits, colour) and add noise. At each
frequency, the magnitude-squared coherence of two signals is the share of one's power that the best linear filter of
the other explains, whatever that filter is: here estimated Welch's way, over Hann frames long enough to hold most of
a room's reverberation. Summed over the band that phones and rooms pass, weighted by the clip's power, it gives one
number in [0, 1] (`explained`): about signal / (signal + noise) for a recording of the very audio, however
reverberant, and near 0 for other music. Unlike a spectrogram's correlation, it sees the waveform's fine structure,
so it also tells a loop's near repeat (the same bars, a part played differently) from the place the clip was
recorded (BENCHMARKS.md, session 28).
"""
import functools

import numpy as np
import torch


@functools.lru_cache(maxsize=8)
def _window(n: int) -> torch.Tensor:
    return torch.hann_window(n, periodic=False)


def band_bins(n: int, sr: int, low_hz: float, high_hz: float) -> slice:
    """The rfft bins of an `n`-point frame at `sr` from `low_hz` to `high_hz`."""
    return slice(int(np.ceil(low_hz * n / sr)), int(high_hz * n / sr) + 1)


def frame_spectra(x: np.ndarray, n: int, bins: slice) -> torch.Tensor:
    """The spectra `[..., K, B]` (complex) of the Hann frames of `n` samples, half a frame apart, of `x` `[..., T]`,
    in `bins`."""
    frames = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unfold(-1, n, n // 2)
    return torch.fft.rfft(frames * _window(n))[..., bins]


def explained(clip: torch.Tensor, track: np.ndarray, starts: list[int], n: int, bins: slice) -> float:
    """The most, over `starts`, of the share of the clip's power in `bins` that a linear filter of the track explains.

    `clip`: `frame_spectra` of the clip (`[K, B]`); `track`: samples that hold, at each of `starts`, as many as the
    clip's frames span. Per bin, |sum of Y X*|^2 / sum of |X|^2 is the clip's power that the best filter of X
    explains (sum of |Y|^2 times the coherence); summed over bins, over the clip's power. -1 where no start fits.
    """
    span = (clip.shape[0] + 1) * (n // 2)
    starts = [s for s in starts if 0 <= s and s + span <= len(track)]
    if not starts or clip.shape[0] == 0:
        return -1.0
    spec = frame_spectra(np.stack([track[s:s + span] for s in starts]), n, bins)  # [S, K, B]
    cross = (clip.unsqueeze(0) * spec.conj()).sum(1)  # [S, B]
    own = spec.real.square().add_(spec.imag.square()).sum(1)  # [S, B]
    power = float(clip.real.square().sum() + clip.imag.square().sum())
    share = (cross.real.square() + cross.imag.square()) / (own + 1e-20 * power + 1e-30)
    return float(share.sum(1).max()) / (power + 1e-30)
