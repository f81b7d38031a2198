#!/usr/bin/env python3
"""FAISS build benchmark: the time and peak memory to rebuild an index's FAISS files from its catalog.

`muzip-search index` does this at the end of every run that changed the catalog,
and a query does it when the files are missing. Memory is the process's resident
set: before the build (model and catalog open) and at its peak.

    python benchmarks/search_bench.py DIR/train --decoys 20 --index /tmp/big   # ~1,000,000 windows
    python benchmarks/faiss_build_bench.py /tmp/big
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from indexer.index import Index  # noqa: E402


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index", type=Path, help="an index folder (it is only read)")
    args = ap.parse_args()
    index = Index.open(args.index, readonly=True)
    before = rss_mb()
    t0 = time.perf_counter()
    _, windows, _, _ = index._build()
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "windows": int(windows.ntotal), "faiss": index.faiss_type(), "build_s": round(seconds, 1),
        "rss_before_mb": round(before), "peak_rss_mb": round(peak),
        "bytes_per_window": round((peak - before) * 2 ** 20 / max(1, windows.ntotal)),
    }, indent=1))
    index.close()


if __name__ == "__main__":
    main()
