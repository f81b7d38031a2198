"""A music collection on disk: the audio files under a folder."""
import hashlib
import random
from pathlib import Path

from .audio import AUDIO_EXTENSIONS


def find_audio(root) -> list[Path]:
    """Every file with an audio extension under `root` (recursively), sorted; or `[root]` for a file."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())


def split_by_track(paths: list[Path], val_fraction: float, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split files into (train, validation) by whole track, reproducibly.

    Each file is one track, so no track has chunks on both sides. At least one
    track goes to validation when there are two or more.
    """
    paths = sorted(paths)
    order = sorted(paths, key=lambda p: hashlib.sha1(f"{seed}:{p.name}".encode()).hexdigest())
    n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths)))) if len(paths) > 1 else 0
    val = set(order[:n_val])
    return [p for p in paths if p not in val], [p for p in paths if p in val]


def sample_tracks(paths: list[Path], seconds_each: list[float], max_seconds: float, seed: int = 0):
    """Indices of a random subset of tracks whose total duration stays within `max_seconds`."""
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    keep, total = [], 0.0
    for i in order:
        if total + seconds_each[i] <= max_seconds or not keep:
            keep.append(i)
            total += seconds_each[i]
    return sorted(keep)
