"""Vectors pooled from the codec's latents, and the FAISS indexes built from them.

A window vector is what the codec's pooling head makes of one second of stored
latents (trained so that a room, noise or MP3 moves it little): unit length, so
inner product is cosine similarity. A whole-track vector, which `similar`
compares, is the mean of a track's window vectors beside the mean and spread of
its band energies (`track_vector`).
"""
import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

_EPS = 1e-4  # energy floor, in units of the int8 grid squared, so silence maps to a finite log


@dataclass(frozen=True)
class VectorConfig:
    """How vectors are pooled and searched; stored in the index manifest."""
    window_s: float = 1.0        # one window vector covers this much audio (the codec's chunk)
    hop_s: float = 0.25          # indexed windows start this far apart
    query_hop_s: float = 0.125   # query windows are cut finer, so one lies near every indexed window
    query_windows: int = 16      # at most this many query windows searched (evenly spread over a long clip)
    metric: str = "inner_product"
    neighbours: int = 30         # nearest indexed windows per query window
    candidates: int = 24         # (track, offset) pairs kept from the vote
    offsets_per_track: int = 4   # a track may offer several offsets: music repeats (loops, choruses)
    rescore: int = 4             # of those, at most this many re-scored against their decoded audio,
    rescore_ratio: float = 0.7   # those with at least this share of the best candidate's votes
    rescore_max_s: float = 2.0   # at most this much of the clip is re-scored (the middle of longer clips),
    rescore_whole_s: float = 5.0  # ...except that a clip up to this long is re-scored whole, once (then verifying
                                  # it would re-score as much again; 0 in indexes made before session 29)
    verify_s: float = 10.0       # the best candidate, while its score is unsure, re-scored on up to this much (6 s
                                 # in indexes made before session 26; BENCHMARKS.md)
    sure_score: float = 0.8      # ...unsure: under this (clean and MP3 copies score over 0.9)
    verify: int = 4              # ...at most this many candidates in turn: the best, or once it is verified,
    verify_margin: float = 0.05  # ...the best other one within this of it (both then compared on as much audio)
    rescore_seconds: float = 8.0  # more candidates re-scored for short clips, up to this much audio in all
    scan: int = 3                # the best track's windows all compared with the clip's: up to this many more of
    scan_ratio: float = 0.95     # its starts re-scored, those with this share of its best start's votes (a loop's
                                 # repeats can crowd the true start out of the nearest neighbours)
    scan_neighbours: int = 64    # ...each query window voting with its this many nearest windows in the track (0: all)
    tie_score: float = 0.05      # other starts within this of a best one's score (another clip of the song, a loop's
    tie_from: float = 0.8        # repeat), where the best is a sure copy (this or more): their tracks scanned too,
    tie_tracks: int = 4          # then the vote's others, up to this many,
    tie_starts: int = 3          # ...and up to this many of the starts each one offers re-scored
    waveform_s: float = 0.5      # re-scoring also compares this much of the clip sample by sample
    waveform_weight: float = 0.2  # the score: (spectrogram corr. + this x waveform corr.) / (1 + this); of a clip
                                  # that is not this very recording, + `coherence_weight` x its coherence on both
    coherence_weight: float = 1.0  # (0: not) a clip that is not this very recording (a room's): the share of its
                                   # power that a linear filter of the track explains (`indexer.coherence`), on its
    coherence_s: float = 1.0       # ...middle this many seconds at most, in frames of this many samples,
    coherence_fft: int = 8192
    coherence_lead_s: float = 0.04  # ...the track's audio tried up to this much before the place found (a room's
                                    # reverberation: the clip's sound started a little earlier), every `spec_hop_s`
    coherence_hz: tuple[float, float] = (200.0, 5000.0)  # ...in this band (what phones and rooms pass)
    min_score: float = 0.625     # no-match threshold on score + margin_weight x margin (BENCHMARKS.md: its
                                 # false-match rate), where the margin is the score less the best other track's
    short_extra: float = 0.0     # ...raised by up to this for clips under 2 s (this much at 1 s), whose scores
                                 # scatter more (0.1 before the margin counted)
    margin_weight: float = 0.5   # (0: the score alone) music that is not in the index scores alike in several
                                 # tracks (margin: median 0.03), a recording of a track stands out (room: 0.27-0.37)
    score_floor: float = 0.45    # ...and the score itself at least this, however clear the margin
    same_music: float = 0.8      # ...where tracks whose matched stretches correlate with the best's at this or more
                                 # (the same music: a song held twice, or cut into clips) are not "other" (0: they are)
    spec_hop_s: float = 0.01     # hop of the re-scoring spectrogram
    spec_bands: int = 48         # log-spaced bands from 150 Hz to 4 kHz
    spec_floor: float = 1.0      # band energies floored at this times their mean before the log (0: none)
    exact_spec: bool = True      # the spectrogram correlation also taken at the waveform's sample-exact start
    room_decay_s: float = 0.03   # ...and, for other clips, also against the track's spectrogram smeared by a room's
                                 # reverberation, energy decaying with this time constant (0: not)
    whole: str = "windows+bands"  # the whole-track vector `similar` compares (`track_vector`): "windows+bands" or
                                  # "latent-energy"
    stored_spec: bool = True     # each track's band energies stored at indexing, from its own audio (uint8, 4.8 kB per
                                 # second), and read by re-scoring (False: computed from a decoded stretch each time)
    exact_max: int = 100_000     # above this many windows (about 7 h of audio), an approximate index:
    approximate: str = "ivf-sq8"  # IVF lists of 8-bit scalar-quantized vectors, or "ivf-pq" (product-quantized)
    sq8_max: int = 20_000_000    # ...but product codes above this many windows (about 1,400 h; 8-bit vectors
                                 # would take 2.7 GB, product codes take half)
    ivf_nprobe: int = 128        # IVF lists visited per query (approximate index only)
    pq_max_subquantizers: int = 64  # PQ code bytes per vector at most ("ivf-pq" only)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "VectorConfig":
        """From an index manifest; a setting added since that index was built keeps its older behaviour."""
        d = {**_BEFORE, **d}
        if "coherence_hz" in d:  # (a JSON list)
            d["coherence_hz"] = tuple(d["coherence_hz"])
        return cls(**d)


# what indexes built before a setting existed did (so their scores and calibrated threshold still hold)
_BEFORE = {"rescore_seconds": 0.0, "spec_floor": 0.0, "short_extra": 0.0, "exact_spec": False, "verify_s": 0.0,
           "scan": 0, "scan_neighbours": 0, "room_decay_s": 0.0, "approximate": "ivf-pq", "margin_weight": 0.0,
           "score_floor": 0.0, "tie_score": 0.0, "verify_margin": 0.0, "same_music": 0.0, "stored_spec": False,
           "whole": "latent-energy", "coherence_weight": 0.0, "rescore_whole_s": 0.0}


@dataclass(frozen=True)
class FrameGrid:
    """Where latent frames sit in time: `rate` frames per second, `per_chunk` kept per chunk."""
    rate: float
    per_chunk: int

    @classmethod
    def of(cls, codec_cfg) -> "FrameGrid":
        # a lapped codec's last frame of a chunk sits where the next chunk's first one does: drop it
        per_chunk = codec_cfg.chunk // codec_cfg.frame
        return cls(codec_cfg.sample_rate / codec_cfg.frame, per_chunk)

    def frames(self, samples: int, sample_rate: int) -> int:
        """How many whole frames `samples` at `sample_rate` fill."""
        return int(samples * self.rate / sample_rate)


def frame_features(latents: np.ndarray, grid: FrameGrid) -> np.ndarray:
    """int8 latents `[N, C, F]` -> per-frame log energy `[T, C]`, frames in time order."""
    z = latents[:, :, :grid.per_chunk].astype(np.float32)
    z = z.transpose(0, 2, 1).reshape(-1, latents.shape[1])  # [N * per_chunk, C]
    return np.log(z * z / (127.0 * 127.0) + _EPS)


def time_ordered(latents: torch.Tensor, grid: FrameGrid) -> torch.Tensor:
    """Latents of consecutive chunks `[N, C, F]` -> one frame sequence `[C, N * per_chunk]` in time order."""
    return latents[:, :, :grid.per_chunk].permute(1, 0, 2).reshape(latents.shape[1], -1)


def window_starts(frames: int, n: int, hop: float, limit: int | None = None) -> np.ndarray:
    """First frames of the windows of `n` frames every `hop` frames in `frames` (at least one window: a shorter
    signal is padded to one); with `limit`, at most that many, spread evenly."""
    frames = max(frames, n)
    starts = np.unique(np.round(np.arange(0, frames - n + 1, hop)).astype(np.int64))
    starts = starts[starts + n <= frames]
    if limit is not None and len(starts) > limit:
        starts = starts[np.round(np.linspace(0, len(starts) - 1, limit)).astype(np.int64)]
    return starts


@torch.no_grad()
def window_vectors(model, latents: np.ndarray, grid: FrameGrid, hop_s: float, frames: int | None = None,
                   limit: int | None = None, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Window vectors `[W, D]` from the codec's pooling head every `hop_s`, and their start times in s `[W]`.

    `latents` are stored ones `[N, C, F]` (int8); `frames` cuts the frame sequence
    where the signal ends. A signal shorter than one window gives one vector,
    zero-padded (silence) as a chunk is. With `limit`, at most that many windows,
    spread evenly over the signal.
    """
    seq = model.dequantize(time_ordered(torch.from_numpy(np.ascontiguousarray(latents)), grid))  # [C, T]
    if frames is not None:
        seq = seq[:, :max(1, frames)]
    n = model.window_frames
    if seq.shape[1] < n:
        seq = torch.nn.functional.pad(seq, (0, n - seq.shape[1]))
    starts = window_starts(seq.shape[1], n, hop_s * grid.rate, limit)
    windows = seq.unfold(1, n, 1)  # [C, T - n + 1, n], a view
    device = next(model.parameters()).device
    out = [model.embed(windows[:, starts[i:i + batch]].permute(1, 0, 2).to(device)).cpu()
           for i in range(0, len(starts), batch)]
    return torch.cat(out).numpy().astype(np.float32), starts / grid.rate


def track_vector(windows: np.ndarray, stored: np.ndarray | None, latents: np.ndarray, grid: FrameGrid, frames: int,
                 cfg: VectorConfig) -> np.ndarray:
    """A track's whole-track vector, of the kind `cfg.whole` names (`track_vector_dim`), from its window vectors
    `[W, D]`, its stored band energies (uint8 `[T, bands]`, `stored_energies`) and its int8 latents `[N, C, F]`
    (`frames` of them in the signal).

    "windows+bands": the mean of the window vectors (what the pooling head makes of each second), beside the mean
    and the spread over time of each band's log energy (the sound's colour, and how much it moves), three parts of
    equal weight. Other clips of the same song were nearer than with "latent-energy" (mean average precision
    0.46 -> 0.65 over the 401 indexed tracks, 0.76 -> 0.88 over the 78 held-out ones, BENCHMARKS.md).
    "latent-energy" (indexes made before session 22): the mean and spread of each latent channel's log energy.
    """
    if cfg.whole == "latent-energy":
        feats = frame_features(latents, grid)[:max(1, frames)]
        return _unit(np.concatenate([feats.mean(axis=0), feats.std(axis=0)])).astype(np.float32)
    if cfg.whole != "windows+bands":
        raise ValueError(f"whole-track vector {cfg.whole!r}: expected 'windows+bands' or 'latent-energy'")
    if stored is None:
        raise ValueError("a 'windows+bands' whole-track vector needs the stored band energies (stored_spec)")
    mean, spread = band_statistics(stored)
    v = np.concatenate([_unit(windows.astype(np.float64).mean(axis=0), centred=False), _unit(mean), _unit(spread)])
    return (v / np.sqrt(3.0)).astype(np.float32)


def track_vector_dim(vector_dim: int, latent_dim: int, cfg: VectorConfig) -> int:
    """The size of `track_vector`'s vectors for a head of `vector_dim` and a codec of `latent_dim` channels."""
    return 2 * latent_dim if cfg.whole == "latent-energy" else vector_dim + 2 * cfg.spec_bands


def band_statistics(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean and standard deviation over time `[bands]` of each band's log energy, floored 20 dB under the
    mean energy (so near-silent frames do not weigh in), from stored band energies (uint8 `[T, bands]`): counted
    code by code, so a 2-hour track costs no more memory than its codes."""
    counts = np.stack([np.bincount(stored[:, b], minlength=256) for b in range(stored.shape[1])]).astype(np.float64)
    frames = max(1, len(stored))
    energy = _ENERGY_OF_CODE.astype(np.float64)
    floor = 0.01 * (counts @ energy).sum() / (frames * stored.shape[1])
    value = np.log(energy + floor + 1e-30)  # [256]: each code's floored log energy
    mean = counts @ value / frames
    return mean, np.sqrt(np.maximum(counts @ (value * value) / frames - mean * mean, 0.0))


def _unit(v: np.ndarray, centred: bool = True) -> np.ndarray:
    """`v` (its own mean removed, unless not `centred`) at unit length; zeros stay zeros."""
    if centred:
        v = v - v.mean()
    return v / (np.linalg.norm(v) + 1e-8)


def align(query: np.ndarray, track: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """Best lag in [lo, hi] of a query `[Tq, C]` inside a track `[Tt, C]`: spectrogram frames, or samples `[T, 1]`.

    The score is the correlation of how each channel moves over time (each
    channel's mean over the span removed, so a section that merely shares the
    song's timbre scores low), pooled over channels: 1 = the same up to gain
    and offset. Computed for every lag at once with FFTs. Returns (lag, score);
    lag -1 if the query does not fit anywhere in [lo, hi].
    """
    tq = len(query)
    lo, hi = max(lo, 0), min(hi, len(track) - tq)
    if hi < lo:
        return -1, -1.0
    n = hi - lo + 1  # lags
    seg = track[lo:hi + tq].T.astype(np.float64)  # [C, n + Tq - 1]: channels as rows, for the FFTs
    q = query.T.astype(np.float64)
    q = q - q.mean(axis=1, keepdims=True)  # centred per channel: the window's own means then drop out of the dots
    # circular correlation: lag + t stays under the span's length for every lag wanted, so nothing wraps
    size = fft_size(seg.shape[1])
    corr = np.fft.irfft(np.fft.rfft(seg, size) * np.conj(np.fft.rfft(q, size)), size)
    dots = corr[:, :n].sum(axis=0)  # [n]: sum over channels and time of window * centred query
    c1 = np.zeros((seg.shape[0], seg.shape[1] + 1))
    c2 = np.zeros_like(c1)
    np.cumsum(seg, axis=1, out=c1[:, 1:])
    np.cumsum(seg * seg, axis=1, out=c2[:, 1:])
    s1 = c1[:, tq:tq + n] - c1[:, :n]
    s2 = c2[:, tq:tq + n] - c2[:, :n]
    var = np.maximum((s2 - s1 * s1 / tq).sum(axis=0), 1e-12)  # [n]: centred energy of each window
    scores = dots / (np.sqrt(var) * (np.linalg.norm(q) + 1e-12))
    best = int(np.argmax(scores))
    return lo + best, float(scores[best])


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b of at least `n`: an FFT length that pocketfft (numpy's) runs fast, up to 1/8 shorter
    than the next power of 2 (a 49,152-point FFT took half the time of a 65,536-point one, BENCHMARKS.md)."""
    best, p3 = 1 << (n - 1).bit_length(), 1
    while p3 < best:
        best = min(best, p3 << max(0, (-(-n // p3) - 1).bit_length()))
        p3 *= 3
    return best


@functools.lru_cache(maxsize=8)
def _band_matrix(sr: int, n_fft: int, bands: int) -> tuple[slice, torch.Tensor]:
    """(the FFT bins that fall in a band, `[bins, bands]` 0/1 matrix summing them into log-spaced bands from
    150 Hz to 4 kHz): 180 of 1,025 bins at 44.1 kHz, so only those are squared and summed."""
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    band = np.digitize(freqs, np.geomspace(150.0, 4000.0, bands + 1)) - 1  # -1 and `bands` fall outside
    inside = np.nonzero((band >= 0) & (band < bands))[0]
    rows = slice(int(inside[0]), int(inside[-1]) + 1)  # the bands are contiguous
    m = np.zeros((rows.stop - rows.start, bands), np.float32)
    m[inside - rows.start, band[inside]] = 1.0
    return rows, torch.from_numpy(m)


@functools.lru_cache(maxsize=4)
def _hann(n: int) -> torch.Tensor:
    return torch.hann_window(n)


N_FFT = 2048  # the band spectrogram's frame: frame k covers samples [k * hop, k * hop + N_FFT)


def spec_hop(sr: int, cfg: VectorConfig) -> int:
    """The band spectrogram's hop in samples (441 at 44.1 kHz)."""
    return max(1, int(round(cfg.spec_hop_s * sr)))


def band_energies(x: np.ndarray, sr: int, cfg: VectorConfig, device: torch.device | None = None) -> torch.Tensor:
    """Energy `[T, bands]` in log-spaced bands from 150 Hz to 4 kHz, one frame every `spec_hop_s`, computed on
    `device` (default: the CPU) and returned there."""
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    spec = torch.stft(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device), N_FFT,
                      spec_hop(sr, cfg), window=_hann(N_FFT).to(device), center=False, return_complex=True)
    rows, m = _band_matrix(sr, N_FFT, cfg.spec_bands)
    spec = spec[rows]  # [bins, T]
    return (spec.real ** 2 + spec.imag ** 2).T @ m.to(device)


# band energies as an index stores them (`VectorConfig.stored_spec`): one byte each, in steps of _SPEC_STEP_DB from
# _SPEC_LOW_DB (full-scale music peaks near +55 dB; code 0, under _SPEC_LOW_DB, is silence, read back as 0)
_SPEC_LOW_DB, _SPEC_STEP_DB = -60.0, 0.5


def stored_energies(x: np.ndarray, sr: int, cfg: VectorConfig, device: torch.device | None = None) -> np.ndarray:
    """`band_energies` of a whole signal as the index stores them: uint8 `[T, bands]`, each within a quarter of a
    dB of its value (or 0 where it is under -60 dB). The log spectrograms re-scoring correlates, whose values
    spread over tens of dB, then correlate with the exact ones at 0.9992 or more (2-s stretches of held-out music,
    BENCHMARKS.md)."""
    db = 10.0 * torch.log10(band_energies(x, sr, cfg, device) + 1e-30)  # (computed on `device`)
    return torch.clamp(torch.round((db - _SPEC_LOW_DB) / _SPEC_STEP_DB), 0, 255).to(torch.uint8).cpu().numpy()


def energies_of(stored: np.ndarray) -> torch.Tensor:
    """Stored band energies (uint8 `[T, bands]`) -> energies `[T, bands]`, as `band_energies` gives them."""
    return torch.from_numpy(_ENERGY_OF_CODE[stored])


_ENERGY_OF_CODE = np.concatenate([[0.0], 10.0 ** ((np.arange(1, 256) * _SPEC_STEP_DB + _SPEC_LOW_DB) / 10.0)]
                                 ).astype(np.float32)  # code -> energy


class StoredEnergiesStream:
    """`stored_energies` of a signal fed block by block (a file too long to hold), in bounded memory: the same
    frames as of the whole signal at once."""

    def __init__(self, sr: int, cfg: VectorConfig, device: torch.device | None = None):
        self.sr, self.cfg, self.hop, self.device = sr, cfg, spec_hop(sr, cfg), device
        self.rest = np.zeros(0, np.float32)  # samples from the next frame's start on
        self.parts: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        self.rest = np.concatenate([self.rest, x])
        n = (len(self.rest) - N_FFT) // self.hop + 1 if len(self.rest) >= N_FFT else 0  # whole frames in it
        if n > 0:
            self.parts.append(stored_energies(self.rest[:(n - 1) * self.hop + N_FFT], self.sr, self.cfg, self.device))
            self.rest = self.rest[n * self.hop:]

    def result(self) -> np.ndarray:
        if not self.parts:  # shorter than one frame: padded, as `band_energies` pads it
            return stored_energies(self.rest, self.sr, self.cfg, self.device)
        return np.concatenate(self.parts)


def log_bands(energies: torch.Tensor, cfg: VectorConfig, decay_s: float = 0.0) -> np.ndarray:
    """Band energies `[T, bands]` -> the log spectrogram that re-scoring correlates.

    The energies are floored at `spec_floor` times their mean over the whole
    signal (gain-free): what lies under it is where a room's noise and reverb
    tail cover the music, so only the loud parts of the picture move the
    correlation. On the benchmark's room clips, a floor of 1 lifted the right
    answers' median score from 0.48 to 0.63 while unindexed music stayed under
    ~0.42 (BENCHMARKS.md). With `decay_s`, each frame's energy first rings on,
    decaying with that time constant, as a room's reverberation makes it do.
    """
    e = energies
    if decay_s > 0:
        w = torch.exp(-torch.arange(int(5 * decay_s / cfg.spec_hop_s) + 1) * (cfg.spec_hop_s / decay_s))
        w = w / w.sum()
        e = energies * w[0]
        for k in range(1, min(len(w), len(energies))):
            e[k:] += w[k] * energies[:-k]
    return torch.log(e + cfg.spec_floor * e.mean() + 1e-8).numpy()


def band_spectrogram(x: np.ndarray, sr: int, cfg: VectorConfig) -> np.ndarray:
    """Log energy `[T, bands]` in log-spaced bands from 150 Hz to 4 kHz, one frame every `spec_hop_s`.

    Phase-blind (unlike latent energies), and restricted to what every codec and
    phone keeps, so a clip and a reconstruction of the same music agree.
    """
    return log_bands(band_energies(x, sr, cfg), cfg)


def window_id(track_id: int, window: int) -> int:
    """FAISS id of a window: the track id in the high bits, the window number in the low 20."""
    return (track_id << 20) | window


def split_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ids >> 20, ids & ((1 << 20) - 1)


def _tensor(a: np.ndarray) -> torch.Tensor:
    """float32 torch tensor of numpy array `a`: copied where read-only (as read from a blob), since torch warns
    of those."""
    a = np.asarray(a)
    return torch.as_tensor(a if a.flags.writeable else a.copy(), dtype=torch.float32)


def centre(v: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Subtract the collection's mean window vector and renormalise `[N, D]` (float16 or 32) -> float32.

    Every music window shares a large common part (the spectral tilt); removing
    it spreads the vectors out, so nearest neighbours reflect what differs.
    In torch: it turns float16 into float32 twice as fast as numpy, and a scan
    of a 2-hour track's 28,800 stored windows (`Searcher._scan`) took 24-27 ms
    in numpy, 12-13 ms so (2-core Zen 3 VM).
    """
    v = _tensor(v) - _tensor(mean)
    return (v / (torch.linalg.vector_norm(v, dim=1, keepdim=True) + 1e-8)).numpy()


def training_rows(n: int, cfg: VectorConfig) -> np.ndarray:
    """Which of `n` vectors (sorted positions) train the approximate index that `n` vectors get; none for an
    exact one."""
    if n <= cfg.exact_max:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(0).choice(n, min(n, 64 * ivf_lists(n)), replace=False))


def ivf_lists(n: int) -> int:
    """The IVF lists an approximate index of `n` vectors gets."""
    return int(4 * math.sqrt(n))  # FAISS's guidance: 4 to 16 sqrt(n) lists


def index_kind(n: int, cfg: VectorConfig) -> str:
    """The FAISS index `n` window vectors get: "exact", "ivf-sq8" or "ivf-pq"."""
    if n <= cfg.exact_max:
        return "exact"
    return "ivf-pq" if cfg.approximate == "ivf-pq" or n > cfg.sq8_max else cfg.approximate


def new_faiss(d: int, n: int, cfg: VectorConfig, training: np.ndarray):
    """An empty index for `n` vectors of size `d` of `index_kind(n, cfg)`: exact inner product, or an IVF index
    trained on `training` (the vectors at `training_rows(n, cfg)`).

    "ivf-sq8" keeps each vector as `d` bytes, "ivf-pq" as at most
    `pq_max_subquantizers`. At 990,000 windows and nprobe 128, the first found
    97 % of a query's exact 30 nearest neighbours in 4.0 ms per 16 queries, the
    second 92 % in 6.6 ms (BENCHMARKS.md).
    """
    import faiss
    kind = index_kind(n, cfg)
    if kind == "exact":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    if kind == "ivf-sq8":
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, ivf_lists(n), faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf-pq":
        m = max(k for k in range(1, cfg.pq_max_subquantizers + 1) if d % k == 0)  # one byte per sub-vector
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, ivf_lists(n), m, 8, faiss.METRIC_INNER_PRODUCT)
    else:
        raise ValueError(f"approximate index {cfg.approximate!r}: expected 'ivf-sq8' or 'ivf-pq'")
    index.train(np.ascontiguousarray(training, dtype=np.float32))
    index.nprobe = cfg.ivf_nprobe
    return index


def build_faiss(vectors: np.ndarray, ids: np.ndarray, cfg: VectorConfig):
    """`new_faiss` holding `vectors` `[N, D]` with `ids` `[N]`, all in memory."""
    index = new_faiss(vectors.shape[1], len(vectors), cfg, vectors[training_rows(len(vectors), cfg)])
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def for_search(index):
    """An index ready to search in this process: on every GPU faiss sees (faiss-gpu), else on the CPU.

    On the CPU an exact search's inner products go through BLAS, whatever the
    number of queries: FAISS's own loop, its default under 128,000 queries, took
    23 ms for a query's 16 windows against 47,000 on a 2-core AVX2 machine,
    BLAS 7 ms, with the same neighbours (BENCHMARKS.md). IVF search is as fast either way.
    """
    import faiss
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    faiss.cvar.distance_compute_blas_threshold = 1
    return index
