"""How well `muzip-search similar` finds tracks that sound alike, on an index of a corpus with known kin.

For every indexed track, the others are ranked by whole-track vector, as `similar` ranks them (centred on the
collection's mean, cosine), and the ranking is scored against groups of tracks that belong together: the same
album and the same genre (FMA's metadata in the catalog) and, with `--manifest` (`make_corpus.py`'s), the same
source song (the corpus cuts each song into 30-s clips: its other clips share its instruments, tempo and key).
Printed per group: precision at `--top` (the share of the first results in the track's group) and mean average
precision, beside what a random ranking scores.

With `--whole KIND` (repeatable), the whole-track vectors of that kind ("windows+bands", "latent-energy") are
worked out from what the index stores (window vectors, band energies, latents) and compared side by side;
by default only the index's own.

    python benchmarks/search_bench.py CORPUS/train --index /tmp/idx --queries 1   # or: muzip-search index
    python benchmarks/similar_bench.py /tmp/idx --manifest CORPUS/manifest.csv \\
        --whole latent-energy --whole windows+bands
"""
import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import models  # noqa: F401  (sets thread policies before numpy loads)
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.index import Index  # noqa: E402
from indexer.metadata import fma_id  # noqa: E402
from indexer.vectors import FrameGrid, centre, track_vector  # noqa: E402


def stored_vectors(index: Index, ids: list[int], kind: str) -> np.ndarray:
    """Whole-track vectors `[N, D2]` of `kind` for tracks `ids`, from what the index stores."""
    cfg = dataclasses.replace(index.vectors, whole=kind)
    grid, sr = FrameGrid.of(index.model.cfg), index.model.cfg.sample_rate
    out = []
    for tid in ids:
        z, samples = index.catalog.latents(tid)
        windows = index.catalog.window_vectors(tid).astype(np.float32)
        out.append(track_vector(windows, index.catalog.spectrogram(tid), z, grid, grid.frames(samples, sr), cfg))
    return np.stack(out)


def scores(vectors: np.ndarray, labels: list, top: int) -> dict:
    """Precision at `top` and mean average precision of ranking by centred cosine, for tracks with kin."""
    v = centre(vectors, vectors.mean(axis=0))
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :-1]
    labels = np.array(labels, dtype=object)
    p, ap, chance = [], [], []
    for i in range(len(labels)):
        if labels[i] is None:
            continue
        kin = labels[order[i]] == labels[i]
        if not kin.any():
            continue
        p.append(kin[:top].mean())
        ap.append((np.cumsum(kin)[kin] / (np.nonzero(kin)[0] + 1)).mean())
        chance.append(kin.mean())
    return {"tracks": len(p), f"p_at_{top}": round(float(np.mean(p)), 3) if p else None,
            "map": round(float(np.mean(ap)), 3) if ap else None,
            "chance": round(float(np.mean(chance)), 3) if chance else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, help="an index folder")
    ap.add_argument("--manifest", type=Path, help="make_corpus.py's manifest.csv (the source song of each clip)")
    ap.add_argument("--whole", action="append", help="whole-track vector kinds to compare (default: the index's)")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    index = Index.open(args.index, readonly=True)
    own, ids = index.catalog.track_vectors()
    ids = [int(t) for t in ids]
    rows = index.catalog.tracks(ids)
    groups = {"album": [rows[t]["album"] for t in ids], "genre": [rows[t]["genre"] for t in ids]}
    if args.manifest:
        song = {int(r["track_id"]): r["source"] for r in csv.DictReader(args.manifest.open())}
        groups = {"song": [song.get(fma_id(Path(rows[t]["path"]))) for t in ids], **groups}
    kinds = args.whole or [index.vectors.whole]
    result = {"index": str(args.index), "tracks": len(ids), "own": index.vectors.whole, "kinds": {}}
    for kind in kinds:
        v = own if kind == index.vectors.whole else stored_vectors(index, ids, kind)
        result["kinds"][kind] = {"dim": v.shape[1], **{g: scores(v, labels, args.top) for g, labels in groups.items()}}
    print(f"{len(ids)} tracks; whole-track vectors of the index: {index.vectors.whole}")
    print("| whole-track vector | dim | " + " | ".join(f"{g}: P@{args.top} / mAP" for g in groups) + " |")
    print("|---|---|" + "---|" * len(groups))
    for kind in kinds:
        r = result["kinds"][kind]
        cells = [f"{r[g][f'p_at_{args.top}']} / {r[g]['map']}" for g in groups]
        print(f"| {kind} | {r['dim']} | " + " | ".join(cells) + " |")
    first = result["kinds"][kinds[0]]
    print("| random ranking | | " + " | ".join(f"{first[g]['chance']} / {first[g]['chance']}" for g in groups) + " |")
    print("tracks with kin: " + ", ".join(f"{g} {first[g]['tracks']}" for g in groups))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
