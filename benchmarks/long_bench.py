#!/usr/bin/env python3
"""Long-track benchmark: queries of one long file (a DJ mix, a concert, an audiobook) against a song's.

Joins the corpus's files end to end into one mix of `--hours` (FLAC), indexes it, then queries clips of
`--seconds` cut from it at random non-integer offsets, clean and recorded in a room. Prints, for each
condition, the hit rate (right place within 0.25 s), query latency p50/p95 and the time spent reading the
catalog per query; with `--one-row`, for an index that keeps each track in one row too (as a catalog made
before tracks were stored in parts: SQLite walks a blob's pages from its start up to what is read). With
`--songs INDEX` (an index of the same files as songs, as `muzip-search index` builds it from the corpus), the
same clips are also queried there, each at its place in its song, for a song's figures on the same audio: the
clips are cut within one file of the mix.

    python benchmarks/long_bench.py /tmp/corpus/train --hours 2 --one-row --json long.json
"""
import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from indexer.audio import load  # noqa: E402
from indexer.augment import CONDITIONS  # noqa: E402
from indexer.catalog import Catalog  # noqa: E402
from indexer.collection import find_audio  # noqa: E402
from indexer.index import Index  # noqa: E402
from muzip_search.indexing import index_folder  # noqa: E402
from muzip_search.search import Searcher  # noqa: E402

import numpy as np  # noqa: E402  (after `models`, which sets OpenMP's and OpenBLAS's threading before they load)
import soundfile as sf  # noqa: E402

TOLERANCE_S = 0.25


def make_mix(files: list[Path], hours: float, sr: int, out: Path) -> list[tuple[Path, float]]:
    """Files joined end to end, up to `hours`, written to `out` as 16-bit FLAC: [(file, where it starts in s)]."""
    parts, at, placed = [], 0, []
    for f in files:
        if at >= hours * 3600 * sr:
            break
        x = load(f, sr)
        placed.append((f, at / sr))
        parts.append(x)
        at += len(x)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, np.concatenate(parts), sr, subtype="PCM_16")
    return placed


class Reads:
    """Time spent in the catalog's reads of latents and band energies, counted while installed."""

    def __init__(self):
        self.seconds, self.calls = 0.0, Counter()
        self._saved = {}

    def install(self):
        for name in ("latents", "spectrogram"):
            f = self._saved[name] = getattr(Catalog, name)

            def timed(catalog, *a, _f=f, _name=name, **k):
                t = time.perf_counter()
                try:
                    return _f(catalog, *a, **k)
                finally:
                    self.seconds += time.perf_counter() - t
                    self.calls[_name] += 1
            setattr(Catalog, name, timed)

    def uninstall(self):
        for name, f in self._saved.items():
            setattr(Catalog, name, f)


def run(searcher: Searcher, clips: list[tuple], where) -> dict:
    """Query `clips` [(condition, mix offset, clip)]; `where(offset) -> (track path end, start in it)`."""
    out = {}
    reads = Reads()
    reads.install()
    try:
        searcher.search(clips[0][2])  # warm
        for cond in dict.fromkeys(c for c, _, _ in clips):
            times, hits, reads.seconds = [], 0, 0.0
            mine = [(o, x) for c, o, x in clips if c == cond]
            for offset, x in mine:
                t = time.perf_counter()
                m = searcher.search(x, top=1)
                times.append(1000 * (time.perf_counter() - t))
                path, start = where(offset)
                hits += bool(m) and m[0].path.endswith(path) and abs(m[0].offset_s - start) <= TOLERANCE_S
            out[cond] = {"queries": len(mine), "top1_thresholded": round(hits / len(mine), 4),
                         "p50_ms": round(float(np.percentile(times, 50)), 1),
                         "p95_ms": round(float(np.percentile(times, 95)), 1),
                         "catalog_read_ms_per_query": round(1000 * reads.seconds / len(mine), 2)}
    finally:
        reads.uninstall()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="a folder of music (the corpus's fma_small, or its train split)")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--seconds", type=float, default=5.0, help="query length")
    ap.add_argument("--queries", type=int, default=60, help="per condition")
    ap.add_argument("--conditions", default="clean,room")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one-row", action="store_true", help="also an index keeping each track in one row")
    ap.add_argument("--songs", type=Path, help="an index of the corpus's files as songs: the same clips there")
    ap.add_argument("--workdir", type=Path, help="where the mix and the indexes go (default: a temporary folder)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="muzip-long-")
    work = args.workdir or Path(tmp.name)
    sr = 44100
    t0 = time.perf_counter()
    placed = make_mix(find_audio(args.corpus), args.hours, sr, work / "music" / "mix.flac")
    mix = load(work / "music" / "mix.flac", sr)
    print(f"mix: {len(placed)} files, {len(mix) / sr / 3600:.2f} h, made in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    starts = np.array([s for _, s in placed] + [len(mix) / sr])

    def in_song(offset: float) -> tuple[str, float]:
        i = int(np.searchsorted(starts, offset, side="right")) - 1
        return str(placed[i][0]), offset - starts[i]

    rng = np.random.default_rng(args.seed)
    n = int(args.seconds * sr)
    clips = []
    for cond in args.conditions.split(","):
        while sum(c == cond for c, _, _ in clips) < args.queries:
            offset = float(rng.uniform(0, (len(mix) - n) / sr - 0.01))
            i = int(np.searchsorted(starts, offset, side="right")) - 1
            if offset + args.seconds > starts[i + 1]:  # across two files: not in one song of `--songs`
                continue
            clean = mix[int(offset * sr):int(offset * sr) + n]
            clips.append((cond, offset, CONDITIONS[cond](clean, sr, int(rng.integers(1 << 31)))))

    report = {"mix_hours": round(len(mix) / sr / 3600, 3), "files": len(placed), "query_s": args.seconds}
    kinds = [("parts", False)] + ([("one row", True)] if args.one_row else [])
    for kind, one_row in kinds:
        index_dir = work / f"index-{kind.replace(' ', '-')}"
        if one_row:  # a catalog made before parts: none in its meta, so each track in one row however long
            Index.open(index_dir, create=True).close()
            catalog = Catalog(index_dir / "catalog.db")
            catalog.db.execute("delete from meta where key = 'parts'")
            catalog.close()
        t0 = time.perf_counter()
        index_folder(work / "music", index_dir, progress=False)
        index_s = time.perf_counter() - t0
        index = Index.open(index_dir, readonly=True)
        report[kind] = {"index_s": round(index_s, 1), **run(Searcher(index), clips, lambda o: ("mix.flac", o))}
        index.close()
        print(kind, json.dumps(report[kind]), file=sys.stderr)
    if args.songs:
        index = Index.open(args.songs, readonly=True)
        # the songs' paths as that index holds them (resolved), matched by their ends
        report["songs"] = run(Searcher(index), clips, lambda o: (str(Path(in_song(o)[0]).name), in_song(o)[1]))
        index.close()
        print("songs", json.dumps(report["songs"]), file=sys.stderr)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
