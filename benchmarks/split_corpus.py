#!/usr/bin/env python3
"""Split a make_corpus.py corpus into train/ and heldout/ folders of symlinks.

Clips cut from one source song all land on the same side, so no held-out clip
shares music with training. About `--heldout` of the source songs are held out,
chosen by a hash of their name (reproducible). The held-out songs are halved
again, by the same hash, into heldout_a/ and heldout_b/: music the codec never
saw, to index (search_bench.py --unseen) and to leave out (--unindexed).

    python3 benchmarks/split_corpus.py CORPUS_DIR    # -> CORPUS_DIR/train, heldout, heldout_a, heldout_b
"""
import argparse
import csv
import hashlib
from pathlib import Path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--heldout", type=float, default=0.15, help="share of source songs held out")
    args = ap.parse_args()
    counts = {"train": 0, "heldout": 0, "heldout_a": 0, "heldout_b": 0}
    with (args.corpus / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            key = f"{row['package']}/{row['source']}".encode()
            h = int(hashlib.sha1(key).hexdigest(), 16) % 1000
            sides = ["train"] if h >= args.heldout * 1000 else [
                "heldout", "heldout_a" if h < args.heldout * 500 else "heldout_b"]
            for side in sides:
                dest = args.corpus / side / row["path"]
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not dest.exists():
                    dest.symlink_to((args.corpus / row["path"]).resolve())
                counts[side] += 1
    print(", ".join(f"{n} clips in {args.corpus / side}" for side, n in counts.items()))


if __name__ == "__main__":
    main()
