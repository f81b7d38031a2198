#!/usr/bin/env python3
"""Split a make_corpus.py corpus into train/ and heldout/ folders of symlinks.

Clips cut from one source song all land on the same side, so no held-out clip
shares music with training. About `--heldout` of the source songs are held out,
chosen by a hash of their name (reproducible).

    python3 benchmarks/split_corpus.py CORPUS_DIR            # -> CORPUS_DIR/train, CORPUS_DIR/heldout
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
    counts = {"train": 0, "heldout": 0}
    with (args.corpus / "manifest.csv").open() as f:
        for row in csv.DictReader(f):
            key = f"{row['package']}/{row['source']}".encode()
            side = "heldout" if int(hashlib.sha1(key).hexdigest(), 16) % 1000 < args.heldout * 1000 else "train"
            dest = args.corpus / side / row["path"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                dest.symlink_to((args.corpus / row["path"]).resolve())
            counts[side] += 1
    print(f"{counts['train']} clips in {args.corpus / 'train'}, {counts['heldout']} in {args.corpus / 'heldout'}")


if __name__ == "__main__":
    main()
