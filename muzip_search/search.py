"""Finding where a clip comes from: window votes by offset, then fine alignment of the best tracks."""
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from indexer.audio import AudioError, load
from indexer.encode import encode_signal
from indexer.index import Index
from indexer.vectors import align, band_spectrogram, centre, frame_features, smooth, split_id, window_vectors

from .reconstruct import NotInIndex, reconstruct


class ClipTooShort(Exception):
    pass


@dataclass
class Match:
    track_id: int
    path: str
    offset_s: float
    score: float
    title: str | None
    artist: str | None
    genre: str | None
    span_s: float = field(default=0.0, repr=False)  # the clip's length: the matched span is [offset, offset + span]

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("span_s")
        return d


class Searcher:
    """Answers queries against one index; the model and FAISS indexes are loaded once."""

    def __init__(self, index: Index):
        self.index = index
        self.cfg = index.vectors
        self.grid = index.grid

    @property
    def min_seconds(self) -> float:
        return self.cfg.window_s

    def clip_features(self, x: np.ndarray) -> np.ndarray:
        """Per-frame features `[T, C]` of a mono clip at the model's rate (frames inside the clip only)."""
        latents = encode_signal(self.index.model, x).numpy()
        frames = int(len(x) * self.grid.rate / self.index.model.cfg.sample_rate)
        return frame_features(latents, self.grid)[:max(1, frames)]

    def search(self, x: np.ndarray, top: int = 5, min_score: float = 0.0) -> list[Match]:
        """Best tracks for mono clip `x` at the model's rate, with where in each the clip starts."""
        sr = self.index.model.cfg.sample_rate
        if len(x) < self.min_seconds * sr:
            raise ClipTooShort(f"clip is {len(x) / sr:.2f} s; the minimum is {self.min_seconds:g} s")
        feats = self.clip_features(x)
        qv, qt = window_vectors(feats, self.grid, self.cfg, self.cfg.query_hop_s)
        s = self.index.searchable()
        if s.windows.ntotal == 0:
            return []
        sims, ids = s.windows.search(centre(qv, s.mean), min(self.cfg.neighbours, s.windows.ntotal))
        candidates = self._vote(sims, ids, qt)
        qs = smooth(feats, self.grid, self.cfg)
        aligned = []
        for tid, offset in candidates:
            hit = self._align(qs, tid, offset)
            if hit is not None:
                aligned.append((tid, *hit))
        aligned.sort(key=lambda h: -h[2])
        # every match shown is re-scored, so all scores are on one scale (spectrogram correlation)
        n = max(self.cfg.rescore, top)
        rescored = sorted((self._rescore(x, *h) for h in aligned[:n]), key=lambda h: -h[2])
        found = [h for h in rescored if h[2] >= min_score]
        seen: set[int] = set()
        found = [h for h in found if not (h[0] in seen or seen.add(h[0]))]  # each track once, at its best start
        rows = self.index.catalog.tracks(t for t, _, _ in found[:top])
        span = len(x) / sr
        return [Match(tid, rows[tid]["path"], round(off, 3), round(score, 4), rows[tid]["title"],
                      rows[tid]["artist"], rows[tid]["genre"], span) for tid, off, score in found[:top]]

    def _vote(self, sims: np.ndarray, ids: np.ndarray, qt: np.ndarray) -> list[tuple[int, float]]:
        """(track, clip start) pairs that many window matches agree on: [(track_id, offset_s)], best first.

        A track may offer up to `offsets_per_track` distinct starts, because a repeated
        section can outvote the true one; the fine stages then tell them apart.
        """
        hop = self.cfg.hop_s
        votes: dict[tuple[int, int], float] = defaultdict(float)
        offsets: dict[tuple[int, int], list] = defaultdict(list)
        valid = ids >= 0
        tids, wins = split_id(np.where(valid, ids, 0))
        for (i, j) in zip(*np.nonzero(valid)):
            off = wins[i, j] * hop - qt[i]
            key = (int(tids[i, j]), int(round(off / (hop / 2))))
            votes[key] += float(sims[i, j])
            offsets[key].append(off)
        # neighbouring bins hold the same offset split by rounding
        scored = sorted(((v + 0.5 * (votes.get((tid, b - 1), 0.0) + votes.get((tid, b + 1), 0.0)), tid, b)
                         for (tid, b), v in votes.items()), reverse=True)
        chosen: dict[int, list[int]] = defaultdict(list)
        out = []
        for _, tid, b in scored:
            taken = chosen[tid]
            if len(taken) >= self.cfg.offsets_per_track or any(abs(b - t) <= 2 for t in taken):
                continue  # a near duplicate of a start already chosen for this track
            taken.append(b)
            out.append((tid, float(np.median(offsets[(tid, b)]))))
            if len(out) == self.cfg.candidates:
                break
        return out

    def _align(self, qs: np.ndarray, tid: int, offset: float) -> tuple[float, float] | None:
        """Refine one candidate's offset by sliding the clip's features over the track's stored latents."""
        rate = self.grid.rate
        per_chunk = self.grid.per_chunk
        slack = self.cfg.hop_s  # the vote's offset is good to about one hop
        lo = int(np.floor((offset - slack) * rate))
        hi = int(np.ceil((offset + slack) * rate))
        first = max(0, lo) // per_chunk
        last = (max(0, hi) + len(qs)) // per_chunk + 1
        got = self.index.catalog.latents(tid, first, last)
        if got is None or not len(got[0]):
            return None
        track = smooth(frame_features(got[0], self.grid), self.grid, self.cfg)
        base = first * per_chunk
        lag, score = align(qs, track, lo - base, hi - base)
        if lag < 0:
            return None
        return (lag + base) / rate, score

    def _rescore(self, x: np.ndarray, tid: int, offset: float, _score: float) -> tuple[int, float, float]:
        """Re-score a candidate on band spectrograms of the clip and of its span decoded from the stored latents.

        Returns (track_id, refined offset in s, score); the score is the
        spectrogram alignment's correlation, in [-1, 1].
        """
        cfg = self.cfg
        sr = self.index.model.cfg.sample_rate
        keep = min(len(x), int(cfg.rescore_max_s * sr))
        skip = (len(x) - keep) // 2  # the middle of a long clip
        slack = 0.1  # the latent alignment is good to a few frames; search a little around it
        start = max(0.0, offset + skip / sr - slack)
        try:
            seg = reconstruct(self.index, tid, start, offset + (skip + keep) / sr + slack)
        except NotInIndex:  # removed since the vote (a concurrent `remove`)
            return tid, offset, -1.0
        q = band_spectrogram(x[skip:skip + keep], sr, cfg)
        t = band_spectrogram(seg, sr, cfg)
        lag, score = align(q, t, 0, len(t) - len(q))
        if lag < 0:
            return tid, offset, -1.0
        hop = max(1, int(round(cfg.spec_hop_s * sr)))
        return tid, start + lag * hop / sr - skip / sr, score

    def search_file(self, path: Path, top: int = 5, min_score: float = 0.0) -> list[Match]:
        x = load(path, self.index.model.cfg.sample_rate)
        return self.search(x, top, min_score)
