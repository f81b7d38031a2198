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


def song(seconds: float, sr: int = 44100, seed: int = 0) -> np.ndarray:
    """A synthetic "song": a random melody of 8th notes with its own timbre and a noise-burst beat."""
    rng = np.random.default_rng(1000 + seed)
    note = int(0.125 * sr)
    n = int(seconds * sr)
    t = np.arange(note) / sr
    harmonics = rng.uniform(0.1, 1.0, 6) / np.arange(1, 7)
    env = np.exp(-t * rng.uniform(4, 12))
    out = np.zeros(n + note, np.float32)
    for k, start in enumerate(range(0, n, note)):
        f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
        tone = sum(a * np.sin(2 * np.pi * f0 * (h + 1) * t) for h, a in enumerate(harmonics))
        out[start:start + note] += (tone * env).astype(np.float32)
        if k % 4 == 0:  # a beat: a short noise burst
            out[start:start + note // 4] += 0.3 * rng.standard_normal(note // 4).astype(np.float32)
    out = out[:n]
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="session")
def untrained_default(tmp_path_factory) -> Path:
    """The default preset before training: an MDCT codec (its residual layers start at zero)."""
    import torch

    from models import build_codec, preset, save_checkpoint
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "default-untrained.pt"
    save_checkpoint(path, build_codec(preset("default")))
    return path


SONGS = 12
SONG_SECONDS = 6.0


@pytest.fixture(scope="session")
def songs_dir(tmp_path_factory) -> Path:
    """A dozen 6-s songs, FMA-named, with an FMA tracks.csv beside them."""
    root = tmp_path_factory.mktemp("fma")
    for i in range(SONGS):
        folder = root / "fma_small" / "000"
        folder.mkdir(parents=True, exist_ok=True)
        sf.write(folder / f"{i + 2:06d}.wav", song(SONG_SECONDS, seed=i), 44100)
    meta = root / "fma_metadata"
    meta.mkdir()
    lines = [",album,artist,set,set,track,track,track", ",title,name,split,subset,genre_top,title,duration",
             "track_id,,,,,,,"]
    lines += [f"{i + 2},Album {i},Artist {i},training,small,Genre {i % 3},Song {i},6" for i in range(SONGS)]
    (meta / "tracks.csv").write_text("\n".join(lines) + "\n")
    return root
