"""Degradations a query goes through in the wild, synthesised on the fly and deterministic under a seed.

Each takes mono float32 `[T]` at `sr` and returns the same length at the same rate
(`mp3` returns to `sr` after its trip through 22.05 kHz MP3). No downloaded noise
or impulse responses: noise is shaped from white noise, rooms from decaying noise.
"""
import io

import numpy as np
import soundfile as sf
import soxr


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
