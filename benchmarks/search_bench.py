#!/usr/bin/env python3
"""Search benchmark: index a corpus, then query clips cut at random non-integer offsets.

Prints indexing throughput (with decode and encode shares), bytes on disk per
audio hour, query latency p50/p95, and top-1 hit rate (right track, offset within
0.25 s) per query length under three conditions: clean; re-encoded as ~24 kbps
MP3 at 22.05 kHz; recorded in a room (reverb, 200 Hz-5 kHz, pink noise at 5 dB SNR).

    python3 ../shared/corpus/make_corpus.py /tmp/corpus          # real music, FMA-shaped
    python benchmarks/search_bench.py /tmp/corpus/fma_small --queries 100

Queries ask for the best match (`top=1`), which by the default no-match threshold is the work
the CLI's `query` (`--top 5`) does too. Every wrong best candidate is listed in the JSON
(`misses`), and so is every right one that the threshold turned away (`rejected`).

A miss whose top match is the same audio found elsewhere (in another file, or
at another place of the same one: game music loops, so some clips repeat;
waveform correlation above 0.95 with the clip) is also counted as "duplicate",
and as "identical" where that place holds the clip's very samples (0.999 or more:
the two places cannot be told apart by any score); neither is a hit. With
`--unindexed DIR`, clips cut from the files there (music that is not in the
index: for the corpus, the held-out source songs of `split_corpus.py`) measure
the false-match rate of the no-match threshold: any match returned for them is a
false match, and each is listed in the JSON.

    python benchmarks/split_corpus.py /tmp/corpus
    python benchmarks/search_bench.py /tmp/corpus/train --unindexed /tmp/corpus/heldout

With `--unseen DIR`, the files there (music the codec and its head were never
trained on) are indexed too, after the corpus, and clips cut from them give hit
rates of their own (`unseen` in the JSON), the same cells as the corpus's: the
corpus's clips come from the codec's own training music, which flatters them
against a fingerprinter measured on music it has not seen. `split_corpus.py`
halves the held-out songs for that (`heldout_a`, `heldout_b`):

    python benchmarks/search_bench.py /tmp/corpus/train --unseen /tmp/corpus/heldout_a \
        --unindexed /tmp/corpus/heldout_b

With `--level-db L`, the corpus's files are indexed as copies L dB down (16-bit FLAC: a collection mastered
or recorded quietly), and the queries are cut from those copies, at their level; the JSON then also gives
`reconstruction_snr_db`, how near `reconstruct` brings 20 of the tracks back to their files:

    python benchmarks/search_bench.py /tmp/corpus/train --level-db -30 --lengths 2,5

With `--decoys K`, K speed-changed copies of every indexed track (as a tape
played 0.85 to 1.15 times as fast: tempo and pitch move together) are added to
the index before the queries, which all come from the real tracks: music-like
windows that make a small corpus as big as a real collection (K = 20 makes the
corpus above about fma_small's size), so the queries meet the approximate
FAISS index and its latency.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from indexer.audio import load  # noqa: E402
from indexer.augment import CONDITIONS  # noqa: E402
from indexer.collection import find_audio  # noqa: E402
from indexer.index import Index  # noqa: E402
from indexer.vectors import align  # noqa: E402
from muzip_search.device import pick_device  # noqa: E402
from muzip_search.indexing import index_folder  # noqa: E402
from muzip_search.reconstruct import reconstruct  # noqa: E402
from muzip_search.search import Searcher  # noqa: E402

import numpy as np  # noqa: E402  (after `models`, which sets OpenMP's and OpenBLAS's threading before they load)
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

TOLERANCE_S = 0.25
IDENTICAL = 0.999  # a miss whose place found holds the clip's very samples (a loop's exact repeat): no score can tell
DECOY = "decoy-"  # the path prefix of `--decoys` copies, which are not files


def add_decoys(index_dir: Path, k: int, device) -> dict:
    """`k` speed-changed copies of every indexed track, through the index's own pipeline stages."""
    import soxr

    from indexer.audio import to_pcm16
    from indexer.pipeline import Decoded, encode_stage, record, write_stage
    from muzip_search.progress import bar
    index = Index.open(index_dir, device=device)
    sr = index.model.cfg.sample_rate
    speeds = [float(r) for r in np.linspace(0.85, 1.15, k + 1) if abs(r - 1.0) > 1e-3][:k]
    rows = list(index.catalog.db.query("select id, path from tracks where status = 'indexed' order by id"))
    t0, hours = time.perf_counter(), 0.0
    with bar(len(rows) * len(speeds), "decoys", "track") as progress:
        for row in rows:
            x = load(row["path"], sr)
            items = []
            for r in speeds:
                y = to_pcm16(soxr.resample(x, sr, sr / r))  # played at sr: r times as fast
                items.append(Decoded(Path(f"{DECOY}{r:.3f}/{Path(row['path']).name}"), len(y) * 2, 0.0,
                                     f"{DECOY}{r:.3f}-{row['id']}", sr, 1, len(y) / sr, audio=y))
                hours += len(y) / sr / 3600
            for d, encoded in zip(items, encode_stage(index.model, items, spec=index.vectors)):
                write_stage(index.catalog, record(d, encoded, index.model, index.vectors, None))
                progress.update()
    added_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.save_faiss()
    out = {"decoys": len(rows) * len(speeds), "decoy_hours": round(hours, 2), "decoys_s": round(added_s, 1),
           "windows": int(index.searchable().windows.ntotal), "faiss": index.faiss_type(),
           "faiss_build_s": round(time.perf_counter() - t0, 1)}
    index.close()
    return out


def quieter_copies(corpus: Path, level_db: float, out: Path) -> Path:
    """The audio files under `corpus` as 16-bit FLAC copies `level_db` dB down, under `out` (same relative paths,
    same rates and channels)."""
    gain = np.float32(10 ** (level_db / 20))
    for f in find_audio(corpus):
        x, sr = sf.read(f, dtype="float32", always_2d=True)
        dest = (out / f.relative_to(corpus)).with_suffix(".flac")
        dest.parent.mkdir(parents=True, exist_ok=True)
        sf.write(dest, x * gain, sr, subtype="PCM_16")
    return out


def reconstruction_snr(index: Index, rows: list[dict], sr: int, cache: dict[str, np.ndarray], n: int = 20) -> float:
    """The median SNR (dB) of `reconstruct` against the file, over the first 10 s of `n` of the tracks `rows`."""
    snrs = []
    for row in rows[:: max(1, len(rows) // n)][:n]:
        x = loaded(cache, row["path"], sr)[: 10 * sr]
        y = reconstruct(index, row["id"], 0.0, len(x) / sr)
        snrs.append(10 * np.log10(np.sum(x.astype(np.float64) ** 2) / max(np.sum((x - y) ** 2.0), 1e-30)))
    return round(float(np.median(snrs)), 2)


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def cut(x: np.ndarray, length: float, cond: str, sr: int, rng) -> tuple[float, np.ndarray, np.ndarray] | None:
    """A `length`-s clip of `x` at a random non-integer start, through condition `cond`: (start, clean, clip).

    None when `x` is too short for one.
    """
    if len(x) < (length + 0.5) * sr:
        return None
    start = float(rng.uniform(0, len(x) / sr - length - 0.01))
    clean = x[int(start * sr): int(start * sr) + int(length * sr)]
    return start, clean, CONDITIONS[cond](clean, sr, int(rng.integers(1 << 31)))


def loaded(cache: dict[str, np.ndarray], path, sr: int) -> np.ndarray:
    """A file's audio at `sr`, decoded once."""
    if str(path) not in cache:
        cache[str(path)] = load(path, sr)
    return cache[str(path)]


def same_audio(clean: np.ndarray, m, sr: int, cache: dict[str, np.ndarray]) -> float | None:
    """Waveform correlation of a clip's clean audio with the original file of the track it was matched to, at the
    best lag within the hit's tolerance of the start found (MP3 coding delays a clip by ~50 ms): over 0.95, the
    same audio is in that file (a loop's repeat, another clip of one song). None for a `--decoys` copy."""
    if m.path.startswith(DECOY):
        return None
    at, tol = int(m.offset_s * sr), int(TOLERANCE_S * sr)
    return round(align(clean[:, None], loaded(cache, m.path, sr)[:, None], at - tol, at + tol)[1], 4)


def hit_rates(searcher: Searcher, rows: list[dict], args, rng, sr: int, cache: dict[str, np.ndarray],
              label: str = "") -> dict:
    """Top-1 hit rate (per length and condition) of clips cut from the indexed tracks `rows`, with every miss,
    every hit the no-match threshold turned away, and the query latency."""
    results, latency, misses, rejected = {}, {}, [], []
    for length in [float(v) for v in args.lengths.split(",")]:
        for cond in args.conditions.split(","):
            hits = kept = dups = same = 0
            times = []
            for q in range(args.queries):
                row = rows[rng.integers(len(rows))]
                got = cut(loaded(cache, row["path"], sr), length, cond, sr, rng)
                if got is None:
                    continue
                start, clean, clip = got
                t0 = time.perf_counter()
                matches = searcher.search(clip, top=1, min_score=-1.0)  # the best candidate, whatever its score
                times.append(time.perf_counter() - t0)
                if not matches:
                    continue
                m = matches[0]
                if m.track_id == row["id"] and abs(m.offset_s - start) <= TOLERANCE_S:
                    hits += 1
                    kept += m.clear  # still a hit with the default no-match threshold
                    if not m.clear:
                        rejected.append({"clip": f"{cond} {length:g}s", "file": row["path"],
                                         "start_s": round(start, 2), "score": m.score})
                else:  # wrong: is it the same audio, in another file or elsewhere in this one (a loop)?
                    corr = same_audio(clean, m, sr, cache)
                    dups += corr is not None and corr > 0.95
                    same += corr is not None and corr >= IDENTICAL
                    misses.append({"clip": f"{cond} {length:g}s", "file": row["path"], "start_s": round(start, 2),
                                   "match": m.path, "offset_s": m.offset_s, "score": m.score, "clear": m.clear,
                                   "waveform_corr": corr})
            n = len(times)
            results[f"{cond} {length:g}s"] = {"queries": n, "top1": round(hits / n, 4),
                                             "top1_thresholded": round(kept / n, 4),
                                             "duplicate": round(dups / n, 4), "identical": round(same / n, 4)}
            latency.setdefault(f"{length:g}s", []).extend(times)
            print(f"{label}{cond:>6} {length:>4g} s: top-1 {hits / n:.1%}, {kept / n:.1%} with the no-match threshold "
                  f"(+{dups / n:.1%} same audio elsewhere, {same / n:.1%} sample for sample) over {n}",
                  file=sys.stderr)
    return {"hit_rate": results,
            "misses": misses,  # every wrong best candidate, with what it was taken for
            "rejected": rejected,  # every right best candidate that the no-match threshold turned away
            "latency_ms": {k: {"p50": round(1000 * float(np.percentile(v, 50)), 1),
                               "p95": round(1000 * float(np.percentile(v, 95)), 1)} for k, v in latency.items()}}


def false_matches(searcher: Searcher, files: list[Path], args, rng, sr: int, cache: dict[str, np.ndarray]) -> dict:
    """Share of clips of unindexed music (per length and condition) that get any match."""
    out = {}
    examples = []
    for length in [float(v) for v in args.lengths.split(",")]:
        for cond in args.conditions.split(","):
            wrong = n = 0
            for _ in range(args.queries):
                f = files[rng.integers(len(files))]
                got = cut(loaded(cache, f, sr), length, cond, sr, rng)
                if got is None:
                    continue
                start, clean, clip = got
                n += 1
                matches = searcher.search(clip, top=1)
                if matches:
                    wrong += 1
                    m = matches[0]
                    examples.append({"clip": f"{cond} {length:g}s", "file": str(f), "start_s": round(start, 2),
                                     "match": m.path, "offset_s": m.offset_s, "score": m.score,
                                     "waveform_corr": same_audio(clean, m, sr, cache)})
            out[f"{cond} {length:g}s"] = {"queries": n, "false_match": round(wrong / n, 4)}
            print(f"{cond:>6} {length:>4g} s, not indexed: false match {wrong / n:.1%} over {n}", file=sys.stderr)
    out["matches"] = examples  # every false match, to see what the unindexed clip was taken for
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path, help="folder of music to index (e.g. CORPUS/fma_small)")
    ap.add_argument("--index", type=Path, help="index folder to (re)build; default: a temporary one")
    ap.add_argument("--checkpoint", type=Path, help="codec (default: the shipped one)")
    ap.add_argument("--queries", type=int, default=100, help="queries per length and condition")
    ap.add_argument("--lengths", default="1,2,3,5,10")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu or cuda")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unindexed", type=Path, help="folder of music not in the index, for the false-match rate")
    ap.add_argument("--unseen", type=Path,
                    help="folder of music the codec was not trained on, indexed too; its hit rates are given apart")
    ap.add_argument("--level-db", type=float, default=0.0,
                    help="index the corpus as copies this many dB down, and cut the queries from them")
    ap.add_argument("--decoys", type=int, default=0, help="speed-changed copies of every track added to the index")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    device = pick_device(args.device)
    tmp = None
    index_dir = args.index
    if index_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="muzip-bench-"))
        index_dir = tmp / "index"
    elif index_dir.exists():
        shutil.rmtree(index_dir)
    try:
        if args.level_db:
            args.corpus = quieter_copies(args.corpus, args.level_db, Path(tempfile.mkdtemp(prefix="muzip-quiet-")))
        report = index_folder(args.corpus, index_dir, checkpoint=args.checkpoint, workers=args.workers,
                              device=args.device, progress=True)
        if args.unseen:
            unseen_report = index_folder(args.unseen, index_dir, checkpoint=args.checkpoint, workers=args.workers,
                                         device=args.device, progress=True)
        size = dir_bytes(index_dir)
        hours = report.audio_hours + (unseen_report.audio_hours if args.unseen else 0.0)
        out = {
            "machine": f"{os.cpu_count()} CPU cores, {os.uname().machine}" + (
                f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
            "tracks": report.indexed, "failed": len(report.failed), "audio_hours": round(report.audio_hours, 3),
            "index_wall_s": round(report.seconds, 2), "index_realtime": round(report.realtime, 1),
            "stages": report.stages, "bytes_per_audio_hour": int(size / hours),
        }
        if args.decoys:
            out.update(add_decoys(index_dir, args.decoys, device))
        print(json.dumps(out, indent=1), file=sys.stderr)

        index = Index.open(index_dir, readonly=True, device=device)
        searcher = Searcher(index)
        out["precision"] = str(searcher.dtype).removeprefix("torch.")  # what the codec computed in (bfloat16 on AMX)
        sr = index.model.cfg.sample_rate
        rows = list(index.catalog.db.query("select id, path, seconds from tracks where status = 'indexed' "
                                           "and path not like ? order by id", [DECOY + "%"]))
        rng = np.random.default_rng(args.seed)
        cache: dict[str, np.ndarray] = {}

        searcher.search(loaded(cache, rows[0]["path"], sr)[: 2 * sr])  # warm up (FAISS load)
        if args.level_db:
            out["level_db"] = args.level_db
            out["reconstruction_snr_db"] = reconstruction_snr(index, rows, sr, cache)
        # the unseen folder's tracks apart: a path is stored under its indexed folder resolved, the file not
        unseen_dir = args.unseen.resolve() if args.unseen else None
        seen, unseen_rows = [], []
        for r in rows:
            (unseen_rows if unseen_dir and Path(r["path"]).is_relative_to(unseen_dir) else seen).append(r)
        out.update(hit_rates(searcher, seen, args, rng, sr, cache))
        if args.unindexed:
            out["false_match"] = false_matches(searcher, find_audio(args.unindexed), args, rng, sr, cache)
        if args.unseen:  # after the others, so that a seed's other queries are the same with or without it
            unseen = hit_rates(searcher, unseen_rows, args, rng, sr, cache, "unseen ")
            out["unseen"] = {"tracks": unseen_report.indexed, "audio_hours": round(unseen_report.audio_hours, 3),
                             **unseen}
        index.close()
        print(json.dumps(out, indent=1))
        if args.json:
            args.json.write_text(json.dumps(out, indent=1))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.level_db:
            shutil.rmtree(args.corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
