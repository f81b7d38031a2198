"""Vectors pooled from the codec's latents, and the FAISS indexes built from them.

Per latent frame the feature is the log energy of each latent channel; a window
vector is that feature averaged over `bands` consecutive sub-blocks of the window,
with the window's mean removed (gain invariance) and L2-normalised, so inner
product is cosine similarity. The whole-track vector is the mean and spread of
the per-frame features over the track.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

_EPS = 1e-4  # energy floor, in units of the int8 grid squared, so silence maps to a finite log


@dataclass(frozen=True)
class VectorConfig:
    """How vectors are pooled and searched; stored in the index manifest."""
    window_s: float = 1.0        # one window vector covers this much audio
    hop_s: float = 0.5           # indexed windows start this far apart
    query_hop_s: float = 0.125   # query windows are cut finer, so one lies near every indexed window
    bands: int = 4               # sub-blocks per window; vector size = bands x latent channels
    smooth_s: float = 0.05       # frame features are averaged over this span before alignment
    metric: str = "inner_product"
    neighbours: int = 10         # nearest indexed windows per query window
    candidates: int = 10         # tracks re-scored by fine alignment
    exact_max: int = 2_000_000   # above this many windows, an approximate index (IVF-PQ)
    ivf_nprobe: int = 32         # IVF lists visited per query (approximate index only)

    def to_dict(self) -> dict:
        return asdict(self)


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


def frame_features(latents: np.ndarray, grid: FrameGrid) -> np.ndarray:
    """int8 latents `[N, C, F]` -> per-frame log energy `[T, C]`, frames in time order."""
    z = latents[:, :, :grid.per_chunk].astype(np.float32)
    z = z.transpose(0, 2, 1).reshape(-1, latents.shape[1])  # [N * per_chunk, C]
    return np.log(z * z / (127.0 * 127.0) + _EPS)


def _box_mean(x: np.ndarray, width: int) -> np.ndarray:
    """Mean of every run of `width` rows of `[T, C]` -> `[T - width + 1, C]`."""
    c = np.concatenate([np.zeros((1, x.shape[1]), np.float64), np.cumsum(x, axis=0, dtype=np.float64)])
    return ((c[width:] - c[:-width]) / width).astype(np.float32)


def window_vectors(feats: np.ndarray, grid: FrameGrid, cfg: VectorConfig, hop_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Window vectors `[W, bands * C]` every `hop_s`, and their start times in seconds `[W]`.

    A signal shorter than one window gives one vector over what there is.
    """
    band = max(1, round(cfg.window_s * grid.rate / cfg.bands))
    span = band * cfg.bands
    if len(feats) < span:  # short signal: stretch the bands over what there is
        feats = np.repeat(feats, -(-span // max(1, len(feats))), axis=0)[:span]
    means = _box_mean(feats, band)  # [T - band + 1, C]: the mean of a band starting at each frame
    hop = max(1, round(hop_s * grid.rate))
    starts = np.arange(0, len(feats) - span + 1, hop)
    v = np.concatenate([means[starts + b * band] for b in range(cfg.bands)], axis=1)  # [W, bands * C]
    v -= v.mean(axis=1, keepdims=True)
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-8
    return v.astype(np.float32), starts / grid.rate


def track_vector(feats: np.ndarray) -> np.ndarray:
    """Whole-track vector `[2 C]`: mean and standard deviation of the frame features, normalised."""
    v = np.concatenate([feats.mean(axis=0), feats.std(axis=0)])
    v = v - v.mean()
    return (v / (np.linalg.norm(v) + 1e-8)).astype(np.float32)


def smooth(feats: np.ndarray, grid: FrameGrid, cfg: VectorConfig) -> np.ndarray:
    """Frame features `[T, C]` averaged over `smooth_s`, centred; for fine alignment."""
    width = max(1, round(cfg.smooth_s * grid.rate))
    if len(feats) < width:
        return feats
    pad = np.concatenate([np.repeat(feats[:1], width // 2, 0), feats, np.repeat(feats[-1:], width - 1 - width // 2, 0)])
    return _box_mean(pad, width)


def align(query: np.ndarray, track: np.ndarray, lo: int, hi: int) -> tuple[int, float]:
    """Best frame lag in [lo, hi] of smoothed query features `[Tq, C]` inside track features `[Tt, C]`.

    The score is the Pearson correlation of the two feature sequences at that lag
    (1 = identical up to gain); returns (lag, score); lag -1 if none fits.
    """
    tq = len(query)
    lo, hi = max(lo, 0), min(hi, len(track) - tq)
    if hi < lo:
        return -1, -1.0
    q = query - query.mean()
    qn = np.linalg.norm(q)
    windows = np.lib.stride_tricks.sliding_window_view(track[lo:hi + tq], tq, axis=0)  # [L, C, Tq]
    windows = windows - windows.mean(axis=(1, 2), keepdims=True)
    dots = np.einsum("lct,tc->l", windows, q)
    norms = np.linalg.norm(windows.reshape(len(windows), -1), axis=1) * qn + 1e-8
    scores = dots / norms
    best = int(np.argmax(scores))
    return lo + best, float(scores[best])


def window_id(track_id: int, window: int) -> int:
    """FAISS id of a window: the track id in the high bits, the window number in the low 20."""
    return (track_id << 20) | window


def split_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ids >> 20, ids & ((1 << 20) - 1)


def build_faiss(vectors: np.ndarray, ids: np.ndarray, cfg: VectorConfig):
    """An exact inner-product index, or IVF-PQ past `cfg.exact_max` vectors; on the GPU where faiss has one."""
    import faiss
    d = vectors.shape[1]
    n = len(vectors)
    if n <= cfg.exact_max:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
    else:
        nlist = int(4 * math.sqrt(n))  # FAISS's guidance: 4 to 16 sqrt(n) lists
        m = next(k for k in (d // 4, d // 2, d) if d % k == 0 and k <= 64 or k == d)
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = cfg.ivf_nprobe
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))
    return index


def to_device(index):
    """Move an index to every GPU faiss sees (faiss-gpu); unchanged with faiss-cpu or no GPU."""
    import faiss
    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        return faiss.index_cpu_to_all_gpus(index)
    return index
