"""Degradations a query goes through in the wild, synthesised on the fly and deterministic under a seed.

Each takes mono float32 `[T]` at `sr` and returns the same length at the same rate
(`mp3` returns to `sr` after its trip through 22.05 kHz MP3). No downloaded noise
or impulse responses: noise is shaped from white noise, rooms from decaying noise.
"""
import io

import numpy as np
import soundfile as sf
import soxr
import torch

from models.train import Crops


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def pink_noise(n: int, seed=0) -> np.ndarray:
    """Unit-RMS noise with a 1/f power spectrum (-3 dB per octave)."""
    spec = np.fft.rfft(_rng(seed).standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, seed=0, colour: str = "pink") -> np.ndarray:
    """Add pink (or white) noise at `snr_db` below the signal's power."""
    noise = pink_noise(len(x), seed) if colour == "pink" else _rng(seed).standard_normal(len(x)).astype(np.float32)
    power = np.mean(x.astype(np.float64) ** 2)
    return (x + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def band_limit(x: np.ndarray, sr: int, low_hz: float = 200.0, high_hz: float = 5000.0) -> np.ndarray:
    """Keep `low_hz`..`high_hz` (a phone speaker and microphone), with 1/3-octave cosine edges."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / sr)
    gain = np.ones_like(f)
    lo_edge, hi_edge = low_hz / 2 ** (1 / 3), high_hz * 2 ** (1 / 3)
    gain[f < lo_edge] = 0
    gain[f > hi_edge] = 0
    m = (f >= lo_edge) & (f < low_hz)
    gain[m] = 0.5 - 0.5 * np.cos(np.pi * np.log(f[m] / lo_edge) / np.log(low_hz / lo_edge))
    m = (f > high_hz) & (f <= hi_edge)
    gain[m] = 0.5 + 0.5 * np.cos(np.pi * np.log(f[m] / high_hz) / np.log(hi_edge / high_hz))
    return np.fft.irfft(spec * gain, len(x)).astype(np.float32)


def room_impulse(sr: int, rt60: float = 0.5, seed=0) -> np.ndarray:
    """A synthetic room: direct sound, then exponentially decaying noise reaching -60 dB at `rt60`."""
    rng = _rng(seed)
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # ln(1000) = 6.9: -60 dB at rt60
    ir[: int(0.003 * sr)] = 0  # the first reflections arrive a few ms after the direct sound
    ir[0] = 1.0
    return (ir / np.sqrt(np.sum(ir ** 2))).astype(np.float32)


def reverb(x: np.ndarray, sr: int, rt60: float = 0.5, seed=0) -> np.ndarray:
    """Convolve with a synthetic room, keeping the length and the RMS."""
    ir = room_impulse(sr, rt60, seed)
    n = len(x) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    return (y * np.sqrt(np.mean(x ** 2) / (np.mean(y ** 2) + 1e-12))).astype(np.float32)


def mp3(x: np.ndarray, sr: int, via_sr: int = 22050, quality: float = 0.9) -> np.ndarray:
    """A trip through low-bitrate MP3 at `via_sr`: libsndfile's LAME, CBR; quality 0.9 gives about 24 kbps."""
    low = soxr.resample(x, sr, via_sr) if sr != via_sr else x
    buf = io.BytesIO()
    sf.write(buf, low, via_sr, format="MP3", subtype="MPEG_LAYER_III", bitrate_mode="CONSTANT",
             compression_level=quality)
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    y = soxr.resample(y, via_sr, sr) if sr != via_sr else y
    out = np.zeros(len(x), np.float32)
    out[: min(len(x), len(y))] = y[: len(x)]
    return out


def room(x: np.ndarray, sr: int, seed=0, snr_db: float = 5.0) -> np.ndarray:
    """The benchmark's "recorded in a room": reverb, 200 Hz-5 kHz, pink noise at `snr_db`."""
    rng = _rng(seed)
    y = reverb(x, sr, rt60=float(rng.uniform(0.3, 0.7)), seed=rng)
    y = band_limit(y, sr, 200.0, 5000.0)
    return add_noise(y, snr_db, seed=rng)


CONDITIONS = {
    "clean": lambda x, sr, seed: x,
    "mp3": lambda x, sr, seed: mp3(x, sr),
    "room": lambda x, sr, seed: room(x, sr, seed),
}


def equalize(x: np.ndarray, sr: int, seed=0, max_db: float = 8.0, points: int = 6) -> np.ndarray:
    """A random smooth EQ: gains of up to +-`max_db` at `points` log-spaced frequencies, interpolated."""
    rng = _rng(seed)
    spec = np.fft.rfft(x)
    f = np.maximum(np.fft.rfftfreq(len(x), 1 / sr), 20.0)
    at = np.geomspace(50.0, sr / 2, points)
    gain_db = np.interp(np.log(f), np.log(at), rng.uniform(-max_db, max_db, points))
    return np.fft.irfft(spec * 10 ** (gain_db / 20), len(x)).astype(np.float32)


def degrade(x: np.ndarray, sr: int, seed=0) -> np.ndarray:
    """A random chain of what a query goes through: room, EQ, band limit, MP3, noise at 0-10 dB SNR, gain.

    The training views of the pooling head; every step is drawn from `seed`.
    """
    rng = _rng(seed)
    if rng.random() < 0.5:
        x = reverb(x, sr, rt60=float(rng.uniform(0.2, 0.8)), seed=rng)
    if rng.random() < 0.5:
        x = equalize(x, sr, seed=rng)
    if rng.random() < 0.5:
        x = band_limit(x, sr, float(rng.uniform(100.0, 400.0)), float(rng.uniform(3000.0, 8000.0)))
    if rng.random() < 0.25:
        x = mp3(x, sr)
    if rng.random() < 0.8:
        x = add_noise(x, float(rng.uniform(0.0, 10.0)), seed=rng, colour="pink" if rng.random() < 0.7 else "white")
    return (x * rng.uniform(0.3, 1.5)).astype(np.float32)


class ViewSampler:
    """Pairs for contrastive training from int16 tracks: clean chunks, and a degraded copy of each.

    The copy starts up to `max_shift_s` away (a query's window never lines up with
    an indexed one to the sample), then goes through `degrade`.
    """

    def __init__(self, tracks: list[np.ndarray], chunk: int, sr: int, seed: int = 0, max_shift_s: float = 0.0625):
        self.shift = int(max_shift_s * sr)
        self.crops = Crops([len(t) for t in tracks], chunk, margin=self.shift)
        self.tracks = [tracks[i] for i in self.crops.kept]
        if not self.tracks:
            raise ValueError(f"no track is long enough for views of {chunk} samples")
        self.chunk, self.sr = chunk, sr
        self.rng = np.random.default_rng(seed)

    def __call__(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, degraded) float32 tensors `[size, chunk]` in [-1, 1]."""
        clean = np.empty((size, self.chunk), np.float32)
        views = np.empty((size, self.chunk), np.float32)
        for row, (i, start) in enumerate(self.crops.draw(self.rng, size)):
            t = self.tracks[i]
            moved = start + int(self.rng.integers(-self.shift, self.shift + 1))
            clean[row] = t[start:start + self.chunk] / 32768.0
            views[row] = degrade(t[moved:moved + self.chunk] / np.float32(32768.0), self.sr, self.rng)
        return torch.from_numpy(clean), torch.from_numpy(np.clip(views, -1.0, 1.0))


def _degraded_copies(job) -> list[np.ndarray]:
    """Worker for `LatentViews`: `versions` degraded int16 copies of one int16 track, each starting a
    random fraction of a frame late."""
    track, sr, frame, versions, seed = job
    rng = np.random.default_rng(seed)
    x = track.astype(np.float32) / 32768.0
    out = []
    for _ in range(versions):
        lag = int(rng.integers(0, frame))
        y = np.clip(degrade(x[lag:], sr, rng), -1.0, 32767 / 32768)
        out.append(np.round(y * 32768.0).astype(np.int16))
    return out


class LatentViews:
    """Pairs for training the pooling head alone: clean latent windows and windows of degraded copies.

    With the encoder fixed, the stored latents of every track, clean and through
    `versions` random `degrade` chains, are computed once (degrading in worker
    processes); a batch is then only indexing, so the head can train on many
    large batches. A copy starts a random fraction of a frame late, and a view's
    window starts up to `max_shift_s` from its clean one (the most a 1-s query
    window lies from an indexed window every 0.25 s is 0.125 s).
    """

    def __init__(self, model, tracks: list[np.ndarray], versions: int = 6, max_shift_s: float = 0.125,
                 seed: int = 0, workers: int | None = None, on_track=None):
        from .decode import parallel_map
        from .encode import encode_signal
        from .vectors import FrameGrid, time_ordered
        cfg = model.cfg
        grid = FrameGrid.of(cfg)
        self.n = model.window_frames
        self.shift = int(round(max_shift_s * cfg.sample_rate / cfg.frame))  # in frames
        self.dequantize = model.dequantize
        tracks = [t for t in tracks if len(t) >= cfg.chunk + 2 * self.shift * cfg.frame]
        if not tracks:
            raise ValueError(f"no track is long enough for views of {cfg.chunk} samples")

        def frames(x: np.ndarray) -> torch.Tensor:  # int8 latents in time order [C, T], as an index stores them
            return time_ordered(encode_signal(model, x.astype(np.float32) / 32768.0), grid)

        jobs = [(t, cfg.sample_rate, cfg.frame, versions, seed * 1_000_003 + i) for i, t in enumerate(tracks)]
        self.clean, self.copies = [], []
        for t, copies in zip(tracks, parallel_map(_degraded_copies, jobs, workers)):
            self.clean.append(frames(t))
            self.copies.append([frames(y) for y in copies])
            if on_track:
                on_track()
        # every track kept holds at least one window and its shifts
        self.crops = Crops([c.shape[1] for c in self.clean], self.n, margin=self.shift)
        self.rng = np.random.default_rng(seed)

    def __call__(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean, view) float latents `[size, C, window_frames]`."""
        a, b = [], []
        for k, start in self.crops.draw(self.rng, size):
            i = self.crops.kept[k]
            clean, copies = self.clean[i], self.copies[i]
            view = copies[self.rng.integers(len(copies))]
            moved = min(max(0, start + int(self.rng.integers(-self.shift, self.shift + 1))), view.shape[1] - self.n)
            a.append(clean[:, start:start + self.n])
            b.append(view[:, moved:moved + self.n])
        return self.dequantize(torch.stack(a)), self.dequantize(torch.stack(b))
