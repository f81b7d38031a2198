import json

import pytest
from typer.testing import CliRunner

from muzip_search.cli import app

runner = CliRunner()


def commands():
    return [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_command_has_help_with_an_example():
    assert runner.invoke(app, ["--help"]).exit_code == 0
    for name in commands():
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example:" in result.output, name


def test_train_then_evaluate_through_the_cli(music_dir, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    result = runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--epochs", "2",
                                 "--out", str(ckpt), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["preset"], report["epochs"], report["train_tracks"], report["val_tracks"]) == ("tiny", 2, 5, 1)
    assert [h["epoch"] for h in report["history"]] == [1, 2]

    # continuing the run: --resume picks up at epoch 2
    result = runner.invoke(app, ["train", str(music_dir), "--out", str(ckpt), "--resume", "--epochs", "3",
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs"] == 3

    result = runner.invoke(app, ["evaluate", str(music_dir), "--checkpoint", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 1
    assert list(rows[0]) == ["model", "tracks", "mse", "mae", "r2", "snr_db", "kbps", "duration_ms",
                             "index_kbps"]
    assert (rows[0]["model"], rows[0]["tracks"], rows[0]["kbps"]) == ("tiny (tiny.pt)", 6, 6.6)
    # its int8 latents as an index stores them: each chunk zstd-compressed
    from indexer.audio import load, pcm16_to_float, to_pcm16
    from indexer.catalog import PART_ROWS, pack_parts
    from indexer.collection import find_audio
    from indexer.encode import encode_signal
    from models import load_codec
    model = load_codec(ckpt, "cpu")
    signals = [pcm16_to_float(to_pcm16(load(f, model.cfg.sample_rate))) for f in find_audio(music_dir)]
    bits = sum(8 * len(p) for x in signals for p in pack_parts("latents", encode_signal(model, x).numpy(),
                                                               PART_ROWS["latents"]))
    assert rows[0]["index_kbps"] == round(bits / (sum(map(len, signals)) / model.cfg.sample_rate) / 1000, 1) < 6.6

    plot = tmp_path / "p.png"
    result = runner.invoke(app, ["evaluate", str(music_dir), "--checkpoint", str(ckpt), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_skips_silence_whose_r2_and_snr_have_no_value(music_dir, untrained_default, tmp_path):
    import numpy as np
    import soundfile as sf
    sf.write(music_dir / "silent.wav", np.zeros(16000, np.float32), 8000)
    result = runner.invoke(app, ["evaluate", str(music_dir), "--checkpoint", str(untrained_default), "--json"])
    assert result.exit_code == 0, result.output
    row, = json.loads(result.stdout)
    assert row["tracks"] == 6 and all(np.isfinite(row[k]) for k in ("mse", "mae", "r2", "snr_db"))
    assert f"skipped {music_dir / 'silent.wav'}: silent" in result.output


def test_a_device_or_threshold_out_of_range_is_a_usage_error(tmp_path):
    import torch
    bad = [["query", "clip.wav", "--device", "tpu"], ["query", "clip.wav", "--min-score", "2"]]
    if not torch.cuda.is_available():
        bad.append(["reconstruct", "2", "-o", str(tmp_path / "o.wav"), "--device", "cuda"])
    for args in bad:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "Invalid value for '--" in result.output, args


def test_an_unknown_precision_in_the_environment_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MUZIP_PRECISION", "half")
    result = runner.invoke(app, ["stats", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2
    assert result.stderr == "error: MUZIP_PRECISION='half': expected auto, float32 or bfloat16\n"
    assert not (tmp_path / "idx").exists()


def test_train_refuses_to_overwrite(music_dir, tmp_path):
    (tmp_path / "x.pt").write_bytes(b"x")
    result = runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--out", str(tmp_path / "x.pt")])
    assert result.exit_code == 1
    assert "exists; pass --resume" in result.output


def test_train_reports_unusable_folders(tmp_path):
    (tmp_path / "a.mp3").write_bytes(b"")
    result = runner.invoke(app, ["train", str(tmp_path), "--preset", "tiny", "--out", str(tmp_path / "o.pt")])
    assert result.exit_code == 1
    assert "error: none of the 1 audio files" in result.output


def retrain(music_dir, tmp_path, *args: str):
    """A tiny codec trained for an epoch, then again from it with `args`: (result, changed top-level modules,
    the second checkpoint)."""
    import torch
    base, again = tmp_path / "base.pt", tmp_path / "again.pt"
    assert runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--epochs", "1", "--out", str(base),
                               "--device", "cpu", "--json"]).exit_code == 0
    result = runner.invoke(app, ["train", str(music_dir), "--preset", "tiny", "--out", str(again), "--init",
                                 str(base), "--device", "cpu", "--json", *args])
    assert result.exit_code == 0, result.output
    before, after = (torch.load(p, weights_only=True) for p in (base, again))
    changed = sorted({k.split(".")[0] for k in before["model"]
                      if not torch.equal(before["model"][k], after["model"][k])})
    return result, changed, after


def test_decoder_only_training_keeps_latents_and_vectors(music_dir, tmp_path):
    result, changed, _ = retrain(music_dir, tmp_path, "--epochs", "1", "--decoder-only")
    assert "view_accuracy" not in json.loads(result.stdout)["history"][0]  # the MSE alone
    assert changed == ["dec_mlp", "dec_skip", "synthesis"]


def test_head_only_training_keeps_latents_and_reconstructions(music_dir, tmp_path):
    result, changed, after = retrain(music_dir, tmp_path, "--epochs", "2", "--head-only", "--versions", "2",
                                     "--batch-size", "16")
    history = json.loads(result.stdout)["history"]
    assert [sorted(h) for h in history] == [["epoch", "train_nce", "val_view_accuracy", "view_accuracy"]] * 2
    assert changed == ["head"]
    assert after["config"]["batch_size"] == 16


def test_cosine_lowers_the_learning_rate_to_near_zero_at_the_last_step(music_dir, tmp_path):
    import math
    result, _, after = retrain(music_dir, tmp_path, "--epochs", "2", "--head-only", "--versions", "2",
                               "--batch-size", "16", "--lr", "0.001", "--cosine")
    steps = json.loads(result.stdout)["steps"]
    assert steps >= 2
    group = after["optimizer"]["param_groups"][0]
    assert group["initial_lr"] == 0.001
    assert group["lr"] == 0.001 * 0.5 * (1 + math.cos(math.pi * (steps - 1) / steps))  # set before the last step


def test_ctrl_c_in_training_saves_a_checkpoint_that_resume_continues(music_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    ckpt = tmp_path / "tiny.pt"
    cmd = [sys.executable, "-m", "muzip_search", "train", str(music_dir), "--preset", "tiny", "--epochs", "100000",
           "--out", str(ckpt), "--device", "cpu"]
    # Ctrl-C goes to the terminal's whole foreground group: the trainer and any workers
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline:  # the first epoch saved: training is under way
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    state = torch.load(ckpt, weights_only=True)["state"]
    assert proc.returncode == 130 and state["step"] > 0
    assert err.decode().splitlines()[-1] == (f"interrupted at step {state['step']} (epoch {state['epoch'] + 1}); "
                                             f"saved to {ckpt}, --resume continues it")
    resumed = runner.invoke(app, ["train", str(music_dir), "--out", str(ckpt), "--resume", "--epochs",
                                  str(state["epoch"] + 1), "--device", "cpu", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["epochs"] == state["epoch"] + 1
