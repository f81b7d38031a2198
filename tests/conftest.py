"""Tiny synthetic audio for the tests: sine mixes written to tmp_path."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def sine_mix(seconds: float, sr: int, freqs=(220.0, 330.0), amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A mono chord `[T]` float32 with a slow tremolo, so chunks differ."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs) / len(freqs)
    return (amp * x * (0.75 + 0.25 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)


def write_song(path: Path, seconds: float = 2.0, sr: int = 8000, channels: int = 1, seed: int = 0, **kw) -> Path:
    x = sine_mix(seconds, sr, freqs=(200.0 + 37 * seed, 310.0 + 53 * seed), seed=seed)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **kw)
    return path


@pytest.fixture
def music_dir(tmp_path) -> Path:
    """Six 2-s songs at 8 kHz in three formats, one in a sub-folder, plus a non-audio file."""
    d = tmp_path / "music"
    for i in range(6):
        ext = ["wav", "flac", "ogg"][i % 3]
        sub = d / "sub" if i == 5 else d
        write_song(sub / f"song {i}.{ext}", seconds=2.0, sr=8000, channels=1 + i % 2, seed=i)
    (d / "notes.txt").write_text("not music")
    return d
