"""The CUDA paths, run where torch sees a GPU (skipped on CPU-only machines such as CI's)."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from indexer.catalog import Catalog
from indexer.encode import decode_latents, encode_signal
from models import load_codec, shipped_checkpoint
from muzip_search.cli import app

from .conftest import SONG_SECONDS, song

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
runner = CliRunner()


def test_the_shipped_codec_on_cuda_stores_what_it_stores_on_the_cpu():
    x = song(10.0, seed=3)
    cpu, gpu = (load_codec(shipped_checkpoint("default"), device) for device in ("cpu", "cuda"))
    z_cpu, z_gpu = encode_signal(cpu, x), encode_signal(gpu, x)
    assert z_gpu.shape == z_cpu.shape and z_gpu.dtype == torch.int8 and z_gpu.device.type == "cpu"
    steps = (z_gpu.int() - z_cpu.int()).abs()
    assert steps.max() <= 1 and steps.float().mean() < 5e-3  # TF32 rounding moves a few values across a step
    y_cpu, y_gpu = decode_latents(cpu, z_cpu, len(x)), decode_latents(gpu, z_cpu, len(x))
    agree_db = 10 * np.log10(np.sum(y_cpu ** 2) / np.sum((y_gpu - y_cpu) ** 2))
    assert agree_db > 50, agree_db  # the same audio: the codec's own error is 22 dB under the signal


def test_training_runs_on_cuda_and_its_checkpoint_loads_on_the_cpu(music_dir, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    result = runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--epochs", "2", "--out", str(ckpt),
                                 "--device", "cuda", "--json"])
    assert result.exit_code == 0, result.output
    assert all(np.isfinite(h["val_mse"]) for h in json.loads(result.stdout)["history"])
    result = runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--out", str(tmp_path / "head.pt"),
                                 "--init", str(ckpt), "--head-only", "--epochs", "1", "--versions", "2",
                                 "--device", "cuda", "--json"])
    assert result.exit_code == 0, result.output
    assert next(load_codec(tmp_path / "head.pt").parameters()).device.type == "cpu"


def test_index_and_query_on_cuda_agree_with_the_cpu(songs_dir, untrained_default, tmp_path):
    rows = {}
    for device in ("cpu", "cuda"):
        index_dir = tmp_path / device
        result = runner.invoke(app, ["index", str(songs_dir / "fma_small"), "--index", str(index_dir),
                                     "--checkpoint", str(untrained_default), "--device", device, "--json"])
        assert result.exit_code == 0, result.output
        catalog = Catalog(index_dir / "catalog.db", readonly=True)
        ids = [r[0] for r in catalog.db.execute("select id from tracks order by id")]
        rows[device] = [(t, *catalog.latents(t)) for t in ids]
        rows[device + " spectrograms"] = [catalog.spectrogram(t) for t in ids]
    gpu, cpu = rows["cuda"], rows["cpu"]
    assert [(t, z.shape, n) for t, z, n in gpu] == [(t, z.shape, n) for t, z, n in cpu] and len(cpu) == 12
    steps = np.abs(np.concatenate([(g[1].astype(int) - c[1]).ravel() for g, c in zip(gpu, cpu)]))
    assert steps.max() <= 1 and steps.mean() < 5e-3  # the stored latents, as in the first test
    gpu, cpu = rows["cuda spectrograms"], rows["cpu spectrograms"]  # band energies computed on the GPU too
    assert [g.shape for g in gpu] == [c.shape for c in cpu] and len(cpu) == 12
    steps = np.abs(np.concatenate([(g.astype(int) - c).ravel() for g, c in zip(gpu, cpu)]))
    assert steps.max() <= 1 and steps.mean() < 5e-3  # 0.5-dB steps: cuFFT's rounding moves a few across one

    clip = tmp_path / "clip.wav"
    sf.write(clip, song(SONG_SECONDS, seed=5)[int(1.37 * 44100):int(4.37 * 44100)], 44100)
    result = runner.invoke(app, ["query", str(clip), "--index", str(tmp_path / "cuda"), "--device", "cuda",
                                 "--json", "--top", "1"])
    assert result.exit_code == 0, result.output
    match = json.loads(result.stdout)["matches"][0]
    assert match["track_id"] == 7 and abs(match["offset_s"] - 1.37) < 0.02
