"""Finding where a clip comes from: window votes by offset, then re-scoring of the best against the tracks' stored
band energies and their waveforms decoded from the stored latents."""
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from indexer.audio import AudioError, load, raise_quiet
from indexer.coherence import band_bins, explained, frame_spectra
from indexer.encode import encode_signal, read_ahead
from indexer.index import Index
from indexer.vectors import (N_FFT, VectorConfig, align, band_energies, band_spectrogram, centre, energies_of,
                             log_bands, spec_hop, split_id, window_id, window_starts, window_vectors)
from models import compute_dtype

from .reconstruct import NotInIndex, Spans


class ClipTooShort(Exception):
    pass


# a clip is looked up by its first 10 minutes at most (`load_clip`): a longer file (a whole mix, a radio show) is not
# one stretch of one track, and its beginning is what is found; it is decoded no further (a 2-hour file took 2.7 GB
# and 14 s to load and search whole)
CLIP_MAX_S = 600.0


def load_clip(path: Path, sample_rate: int) -> tuple[np.ndarray, bool]:
    """A query clip's mono samples at `sample_rate`, its first `CLIP_MAX_S` at most, and whether the file is
    longer than that (and so was cut)."""
    limit = int(CLIP_MAX_S * sample_rate)
    x = load(path, sample_rate, max_seconds=CLIP_MAX_S + 1.0)
    return x[:limit], len(x) > limit


def load_clips(paths: Iterable[Path], sample_rate: int) -> Iterator[tuple[Path, np.ndarray | None, bool,
                                                                        AudioError | None]]:
    """`(path, samples, cut, None)` of each clip as `load_clip` gives it, or `(path, None, False, error)` where it
    cannot be read, decoded on a second thread a clip ahead of the caller: a batch's decoding (an MP3's, or
    ffmpeg's for formats libsndfile cannot read) overlaps its searches."""
    def loaded():
        for path in paths:
            try:
                yield (path, *load_clip(path, sample_rate), None)
            except AudioError as err:
                yield path, None, False, err
    return read_ahead(loaded(), 1)


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
    clear: bool = field(default=True, repr=False)  # a match by the default no-match threshold (`Searcher.accepts`)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("span_s")
        d.pop("clear")
        return d


class _Placed(NamedTuple):
    """Where a clip's middle piece (`Searcher._middle`) lies in a track (`Searcher._place`): what `_rescore` then
    scores."""
    first: int  # the track's sample where the first frame of `energies` begins
    energies: torch.Tensor  # the track's band energies around the start
    spec: float  # the spectrograms' correlation at their best lag
    at: int  # the track's sample where the piece starts, by the waveforms
    wave: float  # the waveforms' correlation there
    samples: int  # the track's length
    inside: float  # the share of the whole clip inside the track at that start

    @property
    def copy(self) -> bool:
        """Whether the waveforms say the clip is this very recording (a copy, an MP3 of it), not a room's."""
        return self.wave > 0.5


@dataclass
class _Clip:
    """A query clip, with what is worked out once for all its candidates: the band spectrograms of its middle
    pieces, the stretches of tracks decoded for it, where its middle lies in each candidate, how much of its middle
    second each candidate explains (`Searcher._coherence`), which matched stretches hold the same music, and the
    jobs started ahead on the searcher's second thread."""
    x: np.ndarray
    tracks: Spans
    prune: bool = True  # starts that cannot beat a sure best are not re-scored (`Searcher._beat`)
    spectrograms: dict[int, np.ndarray] = field(default_factory=dict)
    same: dict[tuple, bool] = field(default_factory=dict)  # (track, start, track, start): `Searcher._same_music`
    ahead: dict[tuple, Future] = field(default_factory=dict)  # (method, its arguments): `Searcher._job`
    placed: dict[tuple, "_Placed | None"] = field(default_factory=dict)  # (track, start, seconds): `Searcher._place`
    compared: tuple | None = None  # `spectra`
    coherent: dict[tuple, float] = field(default_factory=dict)  # (track, start in steps): `Searcher._coherence`

    def middle(self, keep: int, sr: int, cfg: VectorConfig) -> tuple[int, np.ndarray, np.ndarray]:
        """(where the middle `keep` samples start, those samples, their band spectrogram)."""
        skip = (len(self.x) - keep) // 2
        piece = self.x[skip:skip + keep]
        if keep not in self.spectrograms:
            self.spectrograms[keep] = band_spectrogram(piece, sr, cfg)
        return skip, piece, self.spectrograms[keep]

    def spectra(self, sr: int, cfg: VectorConfig) -> tuple[torch.Tensor, int, slice]:
        """(the frame spectra that `Searcher._coherence` compares: of the clip's middle `coherence_s` at most; where
        that part starts in the clip; their band's bins)."""
        if self.compared is None:
            n = min(len(self.x), int(cfg.coherence_s * sr))
            offset = (len(self.x) - n) // 2
            bins = band_bins(cfg.coherence_fft, sr, *cfg.coherence_hz)
            self.compared = (frame_spectra(self.x[offset:offset + n], cfg.coherence_fft, bins), offset, bins)
        return self.compared

    def waveform(self, keep: int, sr: int, cfg: VectorConfig) -> tuple[int, int]:
        """(where re-scoring's waveform piece starts in the clip, its length): the middle `waveform_s` of the
        middle `keep` samples."""
        n = min(keep, int(cfg.waveform_s * sr))
        return (len(self.x) - keep) // 2 + (keep - n) // 2, n


class Searcher:
    """Answers queries against one index; the model and FAISS indexes are loaded once.

    A query runs on `threads` threads of torch and FAISS (the process's own settings are put back after it):
    its operations are small, and on a 2-core machine a second thread inside each cost more in hand-offs than it
    gained (a 5-s query 87 -> 64 ms p50 on an Intel VM, BENCHMARKS.md). Except the FAISS search of the clip's
    windows, which runs on `ivf_threads`, by default the process's own FAISS count (`OMP_NUM_THREADS`, else the
    cores it may use), in an approximate index (each thread scans the IVF lists of its share of the windows:
    at fma_small's size, 990,000 windows at nprobe 128, 12.6 -> 7.0 ms in a loop of queries on 2 cores). An
    exact search stays on `threads`: its second OpenMP thread contends with the searcher's own second thread
    (a 5-s query 52.8 -> 44.6 ms p50 with the exact search on one thread, BENCHMARKS.md, sessions 25-26).

    With `ahead` (by default where `ivf_threads` is 2 or more), whole jobs run on a second thread beside the query's
    own: half of the clip's chunks are encoded there, then the spectrograms of the clip's pieces that re-scores
    compare (while this thread pools the windows), and while this thread re-scores a candidate (or works out its
    ceiling, or a stretch for `_correlate`), the job likely to be asked for next is started there. Re-scores are a
    query's costliest part where its best candidate is unsure (a room's recording: 4 candidates on 2 s, then up to 4
    on more), and independent of each other. The matches and scores shown are those of one thread (the samples of a
    stretch decoded in parts, up to float32's rounding: `Spans`); only the time changes (180 clips of 5 s: 36.6 ->
    31.4 ms p50, 74.4 -> 58.4 ms p95 on a 2-core Zen 3 VM, BENCHMARKS.md).
    """

    SCAN_SPLIT = 4096  # `_scan` splits a track of this many windows (17 minutes) or more over the two threads

    def __init__(self, index: Index, threads: int | None = 1, ivf_threads: int | None = None,
                 ahead: bool | None = None):
        import faiss
        self.index = index
        self.cfg = index.vectors
        self.grid = index.grid
        self.threads = threads
        self.ivf_threads = ivf_threads or faiss.omp_get_max_threads()
        self.dtype = compute_dtype(index.model)  # what the clip is encoded and candidates decoded in
        if ahead is None:  # where the process may use 2 cores or more (OMP_NUM_THREADS=1: one thread)
            ahead = self.ivf_threads > 1
        # the second thread reads latents through the catalog's connection: safe where SQLite serializes its use;
        # torch's thread count is kept per thread, so it is set on the second one too
        self.pool = None
        if ahead and sqlite3.threadsafety == 3:
            init = {} if threads is None else {"initializer": torch.set_num_threads, "initargs": (threads,)}
            self.pool = ThreadPoolExecutor(1, "muzip-search", **init)

    @property
    def min_seconds(self) -> float:
        return self.cfg.window_s

    def threshold(self, seconds: float) -> float:
        """The default no-match threshold for a clip of `seconds`: the index's `min_score`, raised for clips
        under 2 s (up to `short_extra` at 1 s), whose scores rest on less audio and scatter more."""
        return self.cfg.min_score + self.cfg.short_extra * min(1.0, max(0.0, 2.0 - seconds))

    def accepts(self, score: float, other: float, seconds: float) -> bool:
        """Whether a candidate scoring `score`, where the best candidate of any other track scored `other`, is a
        match by default: score + `margin_weight` x (score - other) reaches `threshold(seconds)`, and the score
        `score_floor`. Music that is not in the index scores alike in several tracks; a recording of a track,
        even a room's, stands out from the rest."""
        cfg = self.cfg
        return score >= cfg.score_floor and score + cfg.margin_weight * (score - other) >= self.threshold(seconds)

    def search(self, x: np.ndarray, top: int = 5, min_score: float | None = None) -> list[Match]:
        """Best tracks for mono clip `x` at the model's rate, with where in each the clip starts.

        Matches scoring under `min_score` are left out; by default, those that
        `accepts()` does not take (the no-match threshold), so a clip of unknown
        music gets `[]`.

        A quiet clip (`audio.raise_quiet`) that is not found as it is by the default threshold is searched again
        raised to music's level, and the better best match is given: a quiet passage of a loud track is stored
        quiet, and found as it is; a quiet track is stored raised (`Catalog.track_gain`), and so is a clip of it
        found (the benchmark's clips 20-40 dB down: 97-100 %, against 0-73 % as they are; BENCHMARKS.md, session
        24). Of the benchmark's 1,500 clips of indexed tracks, 8 are searched twice.
        """
        found = self._search_as(x, top, min_score)
        if not found or not found[0].clear:
            raised, gain = self.raise_quiet(x)
            if gain != 1.0:
                lifted = self._search_as(raised, top, min_score)  # (re-scores do not depend on the clip's gain)
                if lifted and (not found or lifted[0].score > found[0].score):
                    return lifted
        return found

    raise_quiet = staticmethod(raise_quiet)  # (a test may turn it off)

    def _search_as(self, x: np.ndarray, top: int, min_score: float | None) -> list[Match]:
        """`search` of clip `x` at the level it has."""
        clip = _Clip(x, Spans(self.index, self.dtype))
        try:
            with threads(self.threads):
                return self._search(clip, top, min_score)
        finally:  # a job started ahead and not asked for: not left to run on into the next query
            for f in clip.ahead.values():
                f.cancel() or f.exception()

    def _search(self, clip: _Clip, top: int, min_score: float | None) -> list[Match]:
        x = clip.x
        seconds = len(x) / self.index.model.cfg.sample_rate
        if seconds < self.min_seconds:
            raise ClipTooShort(f"clip is {seconds:.2f} s; the minimum is {self.min_seconds:g} s")
        s = self.index.searchable()
        if s.windows.ntotal == 0:
            return []
        qv, qt = self._windows(x, s.mean, clip)
        with threads(self.ivf_threads if self.threads is not None and hasattr(s.windows, "nprobe") else None,
                     torch_too=False):
            sims, ids = s.windows.search(qv, min(self.cfg.neighbours, s.windows.ntotal))
        voted = self._vote(sims, ids, qt)
        if not voted:
            return []
        # re-score the candidates whose votes come near the best one's: one when the vote is clear, several when
        # a loop's repeats or similar tracks split it; every match shown is re-scored, so all scores are on one
        # scale; a short clip is cheap to re-score and its few windows vote less clearly, so more of its
        # candidates are. With a `min_score` of the caller's, enough for `top` tracks, to show those candidates;
        # by the default threshold a track far behind in the vote is no match (another track holding the same
        # audio votes alike), so `top` costs nothing and the best match is the one `top=1` finds
        most = max(self.cfg.rescore, int(self.cfg.rescore_seconds / min(seconds, self._first_s(len(x)))))
        close = min(most, sum(v >= self.cfg.rescore_ratio * voted[0][2] for _, _, v in voted))
        fill = 1 if min_score is None else top
        candidates, tracks = [], set()
        for i, c in enumerate(voted):
            if i >= close and len(tracks) >= fill:
                break
            candidates.append(c)
            tracks.add(c[0])
        # the caller who shows candidates gets them all re-scored; otherwise only those that can beat a sure best
        clip.prune = fill == 1
        hits = self._verify(clip, self._rescore_all(clip, [c[:2] for c in candidates]))
        if self.cfg.margin_weight and len(tracks) == 1 and self.cfg.score_floor <= hits[0][2] < self.threshold(seconds):
            # only its margin can make the best a match, and no other track was re-scored: the next one in the vote
            hits = self._verify(clip, hits + self._rescore_all(clip, [c[:2] for c in voted if c[0] not in tracks][:1]))
        # a match (by the default threshold, whatever `min_score`): is it at its track's right start? Only then,
        # so that more starts tried cannot turn music that is not in the index into a match; and only where the
        # usual few candidates were re-scored (a short clip's many already cover its track's repeats, and its
        # one or few windows vote too weakly to scan a track with)
        if self.cfg.scan and most == self.cfg.rescore and self._accepted(clip, hits, 0, seconds):
            more = self._rescan(clip, qv, qt, [hits[0][0]], s.mean, [h[:2] for h in candidates + hits],
                                beat=self._beat(clip, hits[0][2]))
            hits = self._verify(clip, hits + more)
            hits = self._settle(clip, qv, qt, s.mean, voted, [h[:2] for h in candidates + hits], hits)
        found, seen = [], set()
        for i, h in enumerate(hits):  # each track once, at its best start, until `top` are found
            if len(found) == top:
                break
            if h[0] in seen or (min_score is not None and h[2] < min_score):
                continue
            seen.add(h[0])
            clear = self._accepted(clip, hits, i, seconds)
            if clear or min_score is not None:
                found.append((*h[:3], clear))
        rows = self.index.catalog.tracks(h[0] for h in found)
        # + 0.0: a start a hair before the track's first sample rounds to -0.0, which prints as "-0.00"
        return [Match(tid, rows[tid]["path"], round(off, 3) + 0.0, round(score, 4), rows[tid]["title"],
                      rows[tid]["artist"], rows[tid]["genre"], seconds, clear)
                for tid, off, score, clear in found]

    def _accepted(self, clip: _Clip, hits: list[tuple], i: int, seconds: float) -> bool:
        """Whether hit `i` of `hits` (best first) is a match by default: `accepts` against the best score of
        another track, leaving out other tracks that hold the same music where they matched (`_same_music`):
        a collection may hold a song twice, or cut into clips, and a second copy of it scoring alike says
        nothing against the first."""
        h, seen = hits[i], {hits[i][0]}
        for o in hits:
            if o[0] in seen:
                continue
            seen.add(o[0])
            if self.accepts(h[2], o[2], seconds):
                return True  # and so against every track behind this one
            if h[2] < self.cfg.score_floor or not self._same_music(clip, h, o):
                return False
        return self.accepts(h[2], 0.0, seconds)

    def _same_music(self, clip: _Clip, a: tuple, b: tuple) -> bool:
        """Whether hits `a` and `b` (track, start, ...) hold the same music for the clip's length (its middle
        `verify_s` at most): their band spectrograms correlate at `same_music` or more, at the best lag
        within a tenth of a second. Where the benchmark's clips matched two tracks alike (BENCHMARKS.md),
        those of two songs correlated at 0.72 at most (all but one under 0.59), and 10 of those of two clips
        of one song at 0.80 to 0.99, the one passage twice."""
        cfg = self.cfg
        if cfg.same_music <= 0:
            return False
        key = (a[0], a[1], b[0], b[1])
        if key not in clip.same:
            clip.same[key] = self._correlate(clip, a, b) >= cfg.same_music
        return clip.same[key]

    def _correlate(self, clip: _Clip, a: tuple, b: tuple) -> float:
        """`_same_music`'s correlation of hits `a` and `b`."""
        cfg = self.cfg
        sr = self.index.model.cfg.sample_rate
        keep = min(len(clip.x), int(max(cfg.verify_s, cfg.rescore_max_s) * sr))
        skip = (len(clip.x) - keep) // 2
        x = ("_stretch", a[0], a[1] + skip / sr, a[1] + (skip + keep) / sr)
        y = ("_stretch", b[0], b[1] + skip / sr - 0.1, b[1] + (skip + keep) / sr + 0.1)
        p, q = self._job(clip, x, [y]), self._job(clip, y)  # the two on the two threads
        if p is None or q is None:  # removed since
            return -1.0
        return align(p, q, 0, len(q) - len(p))[1]

    def _stretch(self, clip: _Clip, tid: int, start_s: float, end_s: float) -> np.ndarray | None:
        """The band spectrogram of seconds [start_s, end_s) of track `tid`; None where it is not in the index."""
        try:
            return log_bands(self._energies(clip, tid, *clip.tracks.span(tid, start_s, end_s))[1], self.cfg)
        except NotInIndex:
            return None

    def _energies(self, clip: _Clip, tid: int, start: int, end: int) -> tuple[int, torch.Tensor]:
        """(the sample where the first frame begins, the band energies `[T, bands]` of the frames that lie within
        samples [start, end) of track `tid`): those stored at indexing (`VectorConfig.stored_spec`), or else those of
        the stretch decoded from its latents. NotInIndex where the track is not in the index."""
        sr = self.index.model.cfg.sample_rate
        if self.cfg.stored_spec:
            hop = spec_hop(sr, self.cfg)
            first = -(-start // hop)
            stored = self.index.catalog.spectrogram(tid, first, max(first, (end - N_FFT) // hop + 1))
            if stored is not None:
                return first * hop, energies_of(stored)
        return start, band_energies(clip.tracks(tid, start / sr, end / sr), sr, self.cfg)

    def _windows(self, x: np.ndarray, mean: np.ndarray, clip: _Clip | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A clip's window vectors `[Q, D]`, centred on the collection's `mean`, and their starts in s `[Q]`.
        With `clip` (`x`'s), the second thread goes on to what every re-score of it compares (`_encode`)."""
        model, grid, cfg = self.index.model, self.grid, self.cfg
        frames = grid.frames(len(x), model.cfg.sample_rate)
        # only the chunks under the `query_windows` windows searched are encoded: all of a clip of a few
        # seconds, a few dozen of a whole track's (chunks are encoded one by one, so theirs are the same)
        n = model.window_frames
        starts = window_starts(max(1, frames), n, cfg.query_hop_s * grid.rate, cfg.query_windows)
        last = max(0, -(-len(x) // model.cfg.chunk) - 1)
        under = np.minimum(np.concatenate([np.arange(s // grid.per_chunk, (s + n - 1) // grid.per_chunk + 1)
                                           for s in starts]), last)
        latents = self._encode(x, np.unique(under), clip)
        qv, qt = window_vectors(model, latents, grid, cfg.query_hop_s, frames, limit=cfg.query_windows)
        return centre(qv, mean), qt

    def _encode(self, x: np.ndarray, only: np.ndarray, clip: _Clip | None = None) -> np.ndarray:
        """`encode_signal` of chunks `only` of clip `x`, the first half of them on the second thread where there is
        one (chunks are encoded one by one, so the latents are the same: a 5-s clip's 6 chunks, 11.5 -> 5.5 ms).
        With `clip`, that thread then computes the clip's middle pieces' spectrograms (`_middle`), which every
        re-score compares, while this one pools the windows and searches FAISS."""
        model = self.index.model
        f = None
        if self.pool is not None and len(only) >= 2:
            f = self.pool.submit(encode_signal, model, x, only=only[:len(only) // 2], dtype=self.dtype)
        if clip is not None:
            self._start(clip, self._middles(len(x)))
        if f is None:
            return encode_signal(model, x, only=only, dtype=self.dtype).numpy()
        first = only[:len(only) // 2]
        z = encode_signal(model, x, only=only[len(first):], dtype=self.dtype)
        z[first] = f.result()[first]
        return z.numpy()

    def _middles(self, samples: int) -> list[tuple]:
        """The `_middle` jobs that re-scoring a clip of `samples` asks for: its first re-scores', and `_verify`'s
        where a clip so long can be verified."""
        return [("_middle", None)] + ([("_middle", self.cfg.verify_s)] if self._verifies(samples) else [])

    def _first_s(self, samples: int) -> float:
        """How much of a clip of `samples` the first re-scores compare (its middle): all of a clip of up to
        `rescore_whole_s`, else `rescore_max_s`. Re-scoring more of a clip costs a little more (its spectrograms);
        re-scoring a candidate a second time, on more of an unsure clip (`_verify`), costs nearly as much as the
        first time: a 5-s room clip was re-scored 2 to 10 times (BENCHMARKS.md, session 29)."""
        seconds = samples / self.index.model.cfg.sample_rate
        return seconds if seconds <= self.cfg.rescore_whole_s else self.cfg.rescore_max_s

    def _verifies(self, samples: int) -> bool:
        """Whether `_verify` re-scores a clip of `samples` on more of it than the first re-scores compare."""
        first = self._first_s(samples)
        return self.cfg.verify_s > first and samples > first * self.index.model.cfg.sample_rate

    def _middle(self, clip: _Clip, seconds: float | None = None) -> tuple[int, np.ndarray, np.ndarray]:
        """`_Clip.middle` of the middle `seconds` of the clip (default `_first_s`): what `_rescore` compares."""
        sr = self.index.model.cfg.sample_rate
        return clip.middle(min(len(clip.x), int((seconds or self._first_s(len(clip.x))) * sr)), sr, self.cfg)

    def _vote(self, sims: np.ndarray, ids: np.ndarray, qt: np.ndarray,
              per_track: int | None = None) -> list[tuple[int, float, float]]:
        """(track, clip start) pairs that many window matches agree on: [(track_id, offset_s, votes)], best first.

        Every neighbour of every query window votes, with its similarity, for the
        track and the clip start it implies (in bins of half a hop). A track may
        offer up to `per_track` (default `offsets_per_track`) distinct starts,
        because a repeated section can outvote the true one; re-scoring then tells
        them apart.
        """
        hop = self.cfg.hop_s
        valid = ids >= 0
        rows = np.nonzero(valid)[0]
        tids, wins = split_id(ids[valid])
        offsets = wins * hop - qt[rows]
        bins = np.round(offsets / (hop / 2)).astype(np.int64)
        keys = (tids << 24) | (bins + (1 << 23))  # one integer per (track, bin), adjacent bins adjacent
        uniq, inv = np.unique(keys, return_inverse=True)
        votes = np.bincount(inv, weights=np.maximum(sims[valid], 0.0))
        mean_offset = np.bincount(inv, weights=offsets) / np.bincount(inv)
        # neighbouring bins hold the same start split by rounding
        total = votes.copy()
        for step in (-1, 1):
            j = np.searchsorted(uniq, uniq + step)
            hit = (j < len(uniq)) & (uniq[np.minimum(j, len(uniq) - 1)] == uniq + step)
            total[hit] += 0.5 * votes[j[hit]]
        per_track = per_track or self.cfg.offsets_per_track
        chosen: dict[int, list[int]] = defaultdict(list)
        out = []
        for k in np.argsort(-total, kind="stable"):
            tid, b = int(uniq[k] >> 24), int(uniq[k] & ((1 << 24) - 1))
            taken = chosen[tid]
            if len(taken) >= per_track or any(abs(b - t) <= 2 for t in taken):
                continue  # a near duplicate of a start already chosen for this track
            taken.append(b)
            out.append((tid, float(mean_offset[k]), float(total[k])))
            if len(out) == self.cfg.candidates:
                break
        return out

    def _scan(self, qv: np.ndarray, qt: np.ndarray, tid: int, mean: np.ndarray, tried: list[float]) -> list[float]:
        """Starts in track `tid` worth re-scoring that were not: up to `scan` of them.

        Every query window is compared with every window of the track, not only
        with its nearest neighbours in the whole index, which a loop's many
        repeats (in this track and in others) can fill; its `scan_neighbours`
        nearest in the track vote as in `_vote` (so a 2-hour track's 28,800
        windows cost no more votes than a song's). Starts with at least
        `scan_ratio` of the best start's votes that lie over a hop from every
        start already tried are returned, best first.

        A long track's windows are compared in two halves, one on the second
        thread where there is one: a 2-hour track's 28,800 took about 24 ms
        to read, centre and compare on one thread (BENCHMARKS.md, session 23).
        """
        w = self.index.catalog.window_vectors(tid)
        if w is None:
            return []
        half = len(w) // 2 if self.pool is not None and len(w) >= self.SCAN_SPLIT else 0
        first = self.pool.submit(lambda: qv @ centre(w[:half], mean).T) if half else None
        sims = qv @ centre(w[half:], mean).T  # [Q, W]
        if first is not None:
            sims = np.concatenate([first.result(), sims], axis=1)
        k = self.cfg.scan_neighbours
        if 0 < k < sims.shape[1]:
            near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            sims = np.take_along_axis(sims, near, axis=1)
        else:
            near = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        ids = window_id(tid, near.astype(np.int64))
        voted = self._vote(sims, ids, qt, per_track=self.cfg.candidates)
        close = [o for _, o, v in voted if v >= self.cfg.scan_ratio * voted[0][2]]
        return [o for o in close if all(abs(o - t) > self.cfg.hop_s for t in tried)][:self.cfg.scan]

    def _verify(self, clip: _Clip,
                hits: list[tuple[int, float, float, bool]]) -> list[tuple[int, float, float, bool]]:
        """Re-score the best candidate on more of a long clip (up to `verify_s`, its middle) while its score is
        unsure (under `sure_score`): a chance likeness over a few seconds fades over more audio, while a room
        recording of the track holds. Up to `verify` candidates, each time the best one not yet verified, or,
        once that is verified, the best other within `verify_margin` of it: scores on 2 s and on more are not
        on one scale, and a loop's repeat can edge out the true start on the first and lose on the second.

        `hits`: (track, start, score, verified); returned sorted, best first.
        """
        cfg = self.cfg
        hits = sorted(hits, key=lambda h: -h[2])
        if not self._verifies(len(clip.x)):
            return hits
        for _ in range(cfg.verify):
            best = hits[0][2]
            if best >= cfg.sure_score:
                break
            i = next((i for i, h in enumerate(hits) if not h[3] and (i == 0 or h[2] > best - cfg.verify_margin)),
                     None)
            if i is None:
                break
            # the next one asked for is most often the best other one not verified yet
            then = [("_rescore", *h[:2], cfg.verify_s) for j, h in enumerate(hits) if not h[3] and j != i][:1]
            hits[i] = (*self._job(clip, ("_rescore", *hits[i][:2], cfg.verify_s), then), True)
            hits.sort(key=lambda h: -h[2])
        return hits

    def _settle(self, clip: _Clip, qv: np.ndarray, qt: np.ndarray, mean: np.ndarray,
                voted: list[tuple[int, float, float]], tried: list[tuple[int, float]],
                hits: list[tuple[int, float, float, bool]]) -> list[tuple[int, float, float, bool]]:
        """Where other tracks' starts score within `tie_score` of a sure best one (at least `tie_from`: this very
        recording), scan those tracks, then the vote's other tracks (up to `tie_tracks` in all), as the best
        one's was, and re-score up to `tie_starts` of each one's starts not yet tried.

        A song cut into several clips, or a loop, holds the same bars in many places, so near copies fill the
        query windows' nearest neighbours and the vote may not offer the true start at all; the copies then
        score alike, and the true start, once re-scored, above them. `tried`: the (track, start) pairs
        re-scored so far; `hits` as in `_verify`, best first; returned best first.
        """
        cfg = self.cfg
        best = hits[0]
        if cfg.tie_score <= 0 or best[2] < cfg.tie_from:
            return hits
        tied = [h[0] for h in hits if h[0] != best[0] and h[2] >= best[2] - cfg.tie_score]
        if not tied:
            return hits
        # those tracks first, then the vote's others, in its order: the true start's track may not have been re-scored
        tracks = [t for t in dict.fromkeys(tied + [c[0] for c in voted]) if t != best[0]][:cfg.tie_tracks]
        beat = self._beat(clip, best[2])
        more = self._rescan(clip, qv, qt, tracks, mean, tried, cfg.tie_starts, beat)
        return self._verify(clip, hits + more)

    def _rescan(self, clip: _Clip, qv: np.ndarray, qt: np.ndarray, tids: list[int], mean: np.ndarray,
                tried: list[tuple[int, float]], most: int | None = None,
                beat: float | None = None) -> list[tuple[int, float, float, bool]]:
        """For each track of `tids` in turn, the starts that `_scan` offers beside those in `tried` ((track,
        start) pairs), up to `most` of them, re-scored by `_rescore_all`: hits as in `_verify`, not verified.
        All tracks are scanned first, so that a track's last start overlaps the next track's first."""
        groups = [[(tid, o) for o in self._scan(qv, qt, tid, mean, [o for t, o in tried if t == tid])[:most]]
                  for tid in tids]
        return [h for k, pairs in enumerate(groups)
                for h in self._rescore_all(clip, pairs, beat, after=[p for g in groups[k + 1:] for p in g][:1])]

    def _rescore_all(self, clip: _Clip, pairs: list[tuple[int, float]], beat: float | None = None,
                     after: list[tuple[int, float]] = ()) -> list[tuple[int, float, float, bool]]:
        """(track, start) pairs re-scored in turn: hits as in `_verify`, not verified. Those whose `_ceiling`
        reaches neither `beat` nor `_beat` of the ones re-scored before them cannot outscore it, and are left
        out unscored. `after`: the pair that the caller asks for next, with the same `beat` (only for `_job`)."""
        hits: list[tuple[int, float, float, bool]] = []
        for i, (tid, o) in enumerate(pairs):
            bar = beat
            if hits and (b := self._beat(clip, max(h[2] for h in hits))) is not None:
                bar = b if bar is None else max(bar, b)
            # the next pair's likely job: its re-score where none can be left out yet, else its ceiling (`bar` only
            # ever rises from there; the caller's next pair starts from `beat`)
            then = ([("_rescore" if bar is None else "_ceiling", *p) for p in pairs[i + 1:i + 2]]
                    or [("_rescore" if beat is None else "_ceiling", *p) for p in after[:1]])
            if bar is None or self._job(clip, ("_ceiling", tid, o), then) >= bar:
                hits.append((*self._job(clip, ("_rescore", tid, o), then), False))
        return hits

    def _job(self, clip: _Clip, now: tuple, then: list[tuple] = ()):
        """Run job `now` (a method's name and its arguments after `clip`: `_rescore`'s, `_ceiling`'s,
        `_stretch`'s or `_middle`'s), or take its result where it was started on the second thread. Where this
        thread computes it, the jobs `then` (those likely to be asked for next) start there first, so that the
        threads take turns."""
        f = clip.ahead.get(now)
        if f is not None and not f.cancel():  # started there (a job not begun yet is done here instead)
            return f.result()
        self._start(clip, then)
        return getattr(self, now[0])(clip, *now[1:])

    def _start(self, clip: _Clip, jobs: list[tuple]) -> None:
        """Start `jobs` (as `_job`'s) on the second thread, where there is one, unless started already."""
        for job in jobs if self.pool is not None else ():
            if job not in clip.ahead:
                clip.ahead[job] = self.pool.submit(getattr(self, job[0]), clip, *job[1:])

    def _beat(self, clip: _Clip, best: float) -> float | None:
        """The score a start must be able to reach to be worth re-scoring, where the best so far scored `best`:
        that, where it is sure; None (re-score them all) where it is not, since `_verify` may then re-score a
        start a little behind the best on more audio, where it can come out ahead, or where the clip's caller
        shows candidates (`clip.prune`)."""
        return best - 1e-4 if clip.prune and best >= self.cfg.sure_score else None

    def _ceiling(self, clip: _Clip, tid: int, offset: float) -> float:
        """The most `_rescore` can give the candidate at `offset` in track `tid`, from where it lies alone.

        The score weighs a correlation of spectrograms (at most 1: where the
        start is not this very recording, or lies between two frames, `_rescore`
        takes the better of two) with that of the waveforms, times the share of
        the clip inside the track. Here the first half of the re-score, which it
        then takes up (`_place`): the spectrograms' lag, from the stored band
        energies, and the waveform's correlation there, from a fraction of a
        second decoded; a start that holds other music than the clip fails by
        far, and a scan offers a dozen of those for one that holds the clip's
        very audio.
        """
        placed = self._place(clip, tid, offset)
        return -1.0 if placed is None else self._score(placed, 1.0, 1.0)

    def _score(self, p: _Placed, spec: float, coherent: float) -> float:
        """A candidate's score where `_place` placed it: (the spectrograms' correlation `spec` + `waveform_weight` x
        the waveforms' + `coherence_weight` x its `coherent`) / (1 + the two weights), times the share of the clip
        inside the track. A copy (`_Placed.copy`) is scored without the coherence: its waveform says it all."""
        w, c = self.cfg.waveform_weight, 0.0 if p.copy else self.cfg.coherence_weight
        return p.inside * (spec + w * max(p.wave, 0.0) + c * coherent) / (1 + w + c)

    def _place(self, clip: _Clip, tid: int, offset: float, seconds: float | None = None) -> "_Placed | None":
        """Where the clip's middle `seconds` (default `_first_s`) lies in track `tid` near `offset`: the best
        lag of band spectrograms within a hop of it (against the track's band energies, `_energies`), then of the
        waveforms on the middle `waveform_s` within two spectrogram frames of that. Worked out once per clip
        (`_ceiling`'s, then `_rescore`'s); None where the track is not in the index (removed since the vote: a
        concurrent `remove`) or too short to hold the piece."""
        key = (tid, offset, seconds)
        if key in clip.placed:
            return clip.placed[key]
        cfg = self.cfg
        sr = self.index.model.cfg.sample_rate
        skip, piece, q = self._job(clip, ("_middle", seconds))  # the middle of a long clip
        keep = len(piece)
        slack = cfg.hop_s
        placed = None
        try:
            samples = clip.tracks.samples(tid)
            first, energies = self._energies(clip, tid, *clip.tracks.span(
                tid, offset + skip / sr - slack, offset + (skip + keep) / sr + slack))
            t = log_bands(energies, cfg)
            lag, spec = align(q, t, 0, len(t) - len(q))
            if lag >= 0:
                hop = spec_hop(sr, cfg)
                mid, n = clip.waveform(keep, sr, cfg)
                mid -= skip  # the waveform is compared on the middle of the piece; by the spectrograms, at `near`
                near = first + lag * hop + mid
                lo = max(0, near - 2 * hop)
                seg = clip.tracks(tid, lo / sr, (near + 2 * hop + n) / sr)
                at, wave = align(piece[mid:mid + n, None], seg[:, None], near - 2 * hop - lo, near + 2 * hop - lo)
                at = lo + at - mid if at >= 0 else near - mid  # the track's sample where the piece starts
                begin = (at - skip) / sr
                inside = (min(begin * sr + len(clip.x), samples) - max(begin * sr, 0.0)) / len(clip.x)
                placed = _Placed(first, energies, spec, at, wave, samples, max(0.0, min(1.0, inside)))
        except NotInIndex:
            pass
        clip.placed[key] = placed
        return placed

    def _rescore(self, clip: _Clip, tid: int, offset: float,
                 seconds: float | None = None) -> tuple[int, float, float]:
        """Re-score a candidate against its track's band energies (`_energies`) and its decoded waveform.

        The start: where `_place` finds the clip's middle. The score, in [-1, 1],
        weighs the spectrogram correlation (phase-blind, so it holds in a room;
        low for music that is not in the index) 1 to `waveform_weight` with the
        waveform correlation on `waveform_s` (near 1 only for this very
        recording, so it tells a loop's repeats apart), times the share of the
        whole clip that lies inside the track at that start (a clip cut from a
        track fits in it; a repeat near the track's end may not).
        For a clip that is not this very recording, the spectrogram correlation
        is the better of two: with the track's spectrogram as it is, and smeared
        as a room's reverberation smears it (`room_decay_s`).
        At most `seconds` of the clip (default `_first_s`) are compared: its middle.
        Returns (track_id, start in s, score).
        """
        p = self._place(clip, tid, offset, seconds)
        if p is None:
            return tid, offset, -1.0
        cfg = self.cfg
        sr = self.index.model.cfg.sample_rate
        skip, piece, q = self._job(clip, ("_middle", seconds))  # what `_place` placed
        spec, at, first, energies = p.spec, p.at, p.first, p.energies
        hop = spec_hop(sr, cfg)
        if cfg.exact_spec and p.copy and 0 <= at <= p.samples - len(piece):
            # the spectrogram lag is whole frames (10 ms), so the two frame grids can sit up to half a frame
            # apart, which costs a clean copy up to 0.05 of correlation: a loop's repeat could then outscore it.
            # Where the waveform found the start (this very recording), again there, the piece's frames moved
            # onto the track's grid: from the track's first frame in the piece on, as far as both reach
            k = max(0, -(-(at - first) // hop))
            lead = first + k * hop - at
            m = min(len(energies) - k, (len(piece) - lead - N_FFT) // hop + 1)
            if m > 0:
                moved = band_spectrogram(piece[lead:lead + (m - 1) * hop + N_FFT], sr, cfg)
                spec = max(spec, align(moved, log_bands(energies[k:k + m], cfg), 0, 0)[1])
        elif cfg.room_decay_s > 0:
            # not this very recording: perhaps a room's, whose reverberation smears each sound out in time. The
            # track's spectrogram smeared the same way is compared too, and the better correlation counts
            spec = max(spec, align(q, log_bands(energies, cfg, cfg.room_decay_s), 0, len(energies) - len(q))[1])
        # not a copy (a room's recording): what a room does to the track, a filter of the track explains; other
        # music, even a loop's near repeat, it does not
        coherent = 0.0 if p.copy or cfg.coherence_weight == 0 else max(self._coherence(clip, tid, at - skip), 0.0)
        return tid, (at - skip) / sr, self._score(p, spec, coherent)

    def _coherence(self, clip: _Clip, tid: int, start: int) -> float:
        """`explained` of the clip's middle `coherence_s` by track `tid` where the clip starts at its sample `start`,
        or up to `coherence_lead_s` earlier (every `spec_hop_s`). Kept for the clip by start to the step: a re-score
        on more of the clip (`_verify`) finds the start it had again, or one a step away, within what is tried."""
        cfg = self.cfg
        sr = self.index.model.cfg.sample_rate
        step = spec_hop(sr, cfg)
        key = (tid, int(round(start / step)))
        if key not in clip.coherent:
            spectra, offset, bins = clip.spectra(sr, cfg)
            begin = key[1] * step + offset  # the track's sample under the compared part's first
            lead = int(round(cfg.coherence_lead_s * sr / step)) * step
            span = (spectra.shape[0] + 1) * (cfg.coherence_fft // 2)
            try:
                first, track = clip.tracks.stretch(tid, (begin - lead) / sr, (begin + span + step) / sr)
                starts = [begin - first + lag for lag in range(-lead, step + 1, step)]
                clip.coherent[key] = explained(spectra, track, starts, cfg.coherence_fft, bins)
            except NotInIndex:
                clip.coherent[key] = -1.0
        return clip.coherent[key]

    def search_file(self, path: Path, top: int = 5, min_score: float | None = None) -> list[Match]:
        """`search` of an audio file (its first `CLIP_MAX_S`)."""
        return self.search(load_clip(path, self.index.model.cfg.sample_rate)[0], top, min_score)


@contextmanager
def threads(n: int | None, torch_too: bool = True):
    """Run the block on `n` FAISS (OpenMP) threads, and torch's too unless not `torch_too`, then put the
    process's settings back; None: as they are."""
    if n is None:
        yield
        return
    import faiss
    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    if torch_too:
        torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        if torch_too:
            torch.set_num_threads(before[0])
        faiss.omp_set_num_threads(before[1])
