"""The `muzip-search` command line: a thin skin over the library."""
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from indexer.audio import AudioError
from models import PRESETS, CheckpointError, DEFAULT_PRESET

app = typer.Typer(
    help="Index a music collection through a neural codec and find where a clip comes from.\n\n"
         "Example:  muzip-search train fma_small/ --preset default --out codec.pt",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def print_json(obj) -> None:
    typer.echo(json.dumps(_json_safe(obj)))


Device = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU), cpu or cuda.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of a table.")]


@app.command()
def train(
    directory: Annotated[Path, typer.Argument(help="Folder of music; every audio file under it is used.",
                                              exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (rewritten every epoch).")] = Path("codec.pt"),
    preset: Annotated[str, typer.Option(help=f"Model preset: {', '.join(PRESETS)}.")] = DEFAULT_PRESET,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs in all (a resumed run counts the ones done).")] = 10,
    resume: Annotated[bool, typer.Option(help="Continue the run saved at --out.")] = False,
    device: Device = "auto",
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.5, help="Share of tracks held out.")] = 0.1,
    max_hours: Annotated[float, typer.Option(min=0.0, help="Cap on the audio loaded (random tracks).")] = 10.0,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Also save every N steps (0: epochs only).")] = 500,
    seed: Annotated[int, typer.Option(help="Seed of the split and the sampling.")] = 0,
    json_out: Json = False,
):
    """Train the codec on a music folder, validating on whole held-out tracks.

    Example:  muzip-search train fma_small/ --preset m3 --epochs 20 --out m3.pt
    """
    from .training import TrainError, train as run_train
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    try:
        report = run_train(directory, out, preset_name=preset, epochs=epochs, device=device, resume=resume,
                           val_fraction=val_fraction, max_hours=max_hours, seed=seed,
                           checkpoint_every=checkpoint_every, progress=not json_out)
    except (TrainError, CheckpointError, RuntimeError, ValueError) as err:
        fail(str(err))
    if json_out:
        print_json(asdict(report))
        return
    for path, reason in report.failed.items():
        typer.echo(f"skipped {path}: {reason}", err=True)
    last = report.history[-1] if report.history else {}
    typer.echo(f"{report.checkpoint}: {report.preset}, {report.epochs} epochs, {report.steps} steps, "
               f"{report.train_tracks} train / {report.val_tracks} val tracks, "
               f"val mse {last.get('val_mse', float('nan')):.3e}, {report.seconds:.0f} s")


@app.command()
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Folder (or file) of held-out music.", exists=True)],
    checkpoint: Annotated[list[Path], typer.Option(help="Checkpoint to evaluate; repeatable.", exists=True,
                                                    dir_okay=False)],
    device: Device = "auto",
    plot: Annotated[Path | None, typer.Option(help="PNG: the first track against each reconstruction.")] = None,
    json_out: Json = False,
):
    """The paper's table for each model: MSE, MAE, R2, SNR, stored kbps, ms per 30-s track.

    Example:  muzip-search evaluate heldout/ --checkpoint m3.pt --checkpoint default.pt --plot recon.png
    """
    from .evaluation import evaluate as run_evaluate, plot_reconstruction
    from indexer.collection import find_audio
    if plot is not None and plot.exists():
        fail(f"{plot} exists; choose another --plot file")
    try:
        rows, failed = run_evaluate(directory, checkpoint, device=device, progress=not json_out)
    except (CheckpointError, RuntimeError, ValueError) as err:
        fail(str(err))
    for path, reason in failed.items():
        typer.echo(f"skipped {path}: {reason}", err=True)
    if not rows or rows[0].tracks == 0:
        fail(f"no usable audio under {directory}")
    if json_out:
        print_json([asdict(r) for r in rows])
    else:
        typer.echo(f"{'model':<28} {'tracks':>6} {'MSE':>8} {'MAE':>8} {'R2':>7} {'SNR dB':>7} "
                   f"{'kbps':>7} {'ms/30 s':>8}")
        for r in rows:
            typer.echo(f"{r.model:<28} {r.tracks:>6} {r.mse:>8.5f} {r.mae:>8.4f} {r.r2:>7.4f} {r.snr_db:>7.2f} "
                       f"{r.kbps:>7.1f} {r.duration_ms:>8.2f}")
    if plot is not None:
        track = next(p for p in find_audio(directory) if str(p) not in failed)
        try:
            plot_reconstruction(track, checkpoint, plot, device=device)
        except AudioError as err:
            fail(str(err))
        typer.echo(f"plot of {track} written to {plot}", err=True)


def main():
    app()
