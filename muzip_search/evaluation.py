"""`evaluate`: the paper's table (MSE, MAE, R2, duration) plus SNR, the codec's kbps and the kbps an index
stores its latents at."""
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from indexer.audio import AudioError
from indexer.collection import find_audio
from indexer.audio import pcm16_to_float
from indexer.decode import decode_files
from indexer.catalog import PART_ROWS, pack_parts
from indexer.encode import decode_latents, encode_signal
from models import Codec, load_codec, reconstruction_metrics

from .device import pick_device
from .progress import bar as progress_bar

TRACK_SECONDS = 30.0  # the paper reports duration per 30-s track


@dataclass
class EvalRow:
    model: str
    tracks: int
    mse: float
    mae: float
    r2: float
    snr_db: float
    kbps: float
    duration_ms: float
    index_kbps: float | None = None  # its int8 latents as an index stores them (zstd blocks); None: not int8


def roundtrip(model: Codec, x: np.ndarray) -> tuple[np.ndarray, float, torch.Tensor]:
    """Encode and decode mono `[T]`; return the reconstruction `[T]`, the seconds it took, and the latents."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    z = encode_signal(model, x)
    y = decode_latents(model, z, len(x))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return y, time.perf_counter() - t0, z


def evaluate(root: Path, checkpoints: list[Path], *, device: str = "auto", workers: int | None = None,
             progress: bool = True) -> tuple[list[EvalRow], dict[str, str]]:
    """One table row per checkpoint over every audio file under `root`.

    Metrics are per track on [-1, 1] samples (the paper's x10 undone), then
    averaged over tracks; duration is encode + decode time per 30 s of audio;
    `index_kbps`, of int8 latents, their bits as an index stores them over all the tracks' seconds.
    Returns the rows and the files that failed to decode (path -> reason).
    """
    dev = pick_device(device)
    models = [load_codec(c, dev) for c in checkpoints]
    rates = {m.cfg.sample_rate for m in models}
    paths = find_audio(root)
    per_model: list[list[dict]] = [[] for _ in models]
    packed = [0 if m.cfg.latent_bits == 8 else None for m in models]  # bytes of latents as an index stores them
    failed: dict[str, str] = {}
    for rate in rates:
        bar = progress_bar(len(paths), f"evaluate @ {rate} Hz", "track", progress)
        for path, pcm in decode_files(paths, rate, workers=workers):
            bar.update()
            if isinstance(pcm, AudioError):
                failed[str(path)] = pcm.reason
                continue
            if not np.any(pcm):  # R2 and SNR have no value on silence (nothing to explain): as `index`, skipped
                failed[str(path)] = "silent"
                continue
            x = pcm16_to_float(pcm)
            for i, m in enumerate(models):
                if m.cfg.sample_rate != rate:
                    continue
                y, seconds, z = roundtrip(m, x)
                row = reconstruction_metrics(x, y)
                row["duration_ms"] = 1000.0 * seconds * TRACK_SECONDS * rate / len(x)
                row["seconds"] = len(x) / rate
                if packed[i] is not None:
                    packed[i] += sum(map(len, pack_parts("latents", z.cpu().numpy(), PART_ROWS["latents"])))
                per_model[i].append(row)
        bar.close()
    rows = []
    for m, ckpt, track_rows, size in zip(models, checkpoints, per_model, packed):
        mean = {k: float(np.mean([r[k] for r in track_rows])) if track_rows else float("nan")
                for k in ("mse", "mae", "r2", "snr_db", "duration_ms")}
        seconds = sum(r["seconds"] for r in track_rows)
        index_kbps = round(8 * size / seconds / 1000, 1) if size is not None and seconds else None
        rows.append(EvalRow(model=f"{m.cfg.name} ({Path(ckpt).name})", tracks=len(track_rows),
                            kbps=round(m.cfg.kbps, 1), **mean, index_kbps=index_kbps))
    return rows, failed


def _spectrogram_db(x: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """Magnitude spectrogram `[n_fft // 2 + 1, frames]` in dB (Hann window)."""
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    return 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T + 1e-6)


def plot_reconstruction(path: Path, checkpoints: list[Path], out: Path, *, device: str = "auto") -> Path:
    """Draw one track against each model's reconstruction: waveforms and spectrograms, as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from indexer.audio import load

    dev = pick_device(device)
    models = [load_codec(c, dev) for c in checkpoints]
    rows = 1 + 1 + len(models)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.6 * rows), constrained_layout=True)
    x = None
    for i, m in enumerate(models):
        sr = m.cfg.sample_rate
        x = load(path, sr)
        y, _, _ = roundtrip(m, x)
        r2 = reconstruction_metrics(x, y)["r2"]
        mid, span = len(x) // 2, int(0.02 * sr)  # 20 ms in the middle: sample-level detail
        t = np.arange(span) / sr * 1000
        if i == 0:
            axes[0].plot(t, x[mid:mid + span], color="black", lw=1.2, label="original")
            axes[1].imshow(_spectrogram_db(x), origin="lower", aspect="auto", vmin=-60, vmax=40,
                           extent=(0, len(x) / sr, 0, sr / 2000))
            axes[1].set_title("original: spectrogram (kHz over s)")
        axes[0].plot(t, y[mid:mid + span], lw=0.9, label=f"{m.cfg.name} (R2 {r2:.4f})")
        axes[2 + i].imshow(_spectrogram_db(y), origin="lower", aspect="auto", vmin=-60, vmax=40,
                           extent=(0, len(y) / sr, 0, sr / 2000))
        axes[2 + i].set_title(f"{m.cfg.name}, {m.cfg.kbps:.1f} kbps: reconstruction spectrogram")
    axes[0].set_title(f"{Path(path).name}: 20 ms of waveform, original against reconstruction")
    axes[0].set_xlabel("ms")
    axes[0].legend(loc="upper right", fontsize=8)
    out = Path(out)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
