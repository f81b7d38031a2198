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


@app.callback()
def _environment() -> None:
    # settings read from the environment, checked before any command runs
    from models import precision
    try:
        precision()
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


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


def _device(name: str) -> str:
    """Checked as the command line is read: an unknown device, or cuda where torch sees none, is a usage error."""
    from .device import pick_device
    try:
        pick_device(name)
    except (RuntimeError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    return name


Device = Annotated[str, typer.Option(help="auto (CUDA when present, else CPU), cpu or cuda.", callback=_device)]
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
    lr: Annotated[float | None, typer.Option(min=0.0, help="Learning rate for this run (default: the "
                                                           "preset's; lower it to fine-tune with --resume).")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights where the preset's "
                                                   "layers match (e.g. add a pooling head to a trained codec).",
                                              exists=True, dir_okay=False)] = None,
    decoder_only: Annotated[bool, typer.Option(help="Fit the decoder alone (MSE): latents and search vectors "
                                                    "stay as they are.")] = False,
    head_only: Annotated[bool, typer.Option(help="Train the pooling head alone (InfoNCE on degraded copies "
                                                 "encoded once): latents and reconstructions stay as they are.")
                         ] = False,
    versions: Annotated[int, typer.Option(min=1, help="With --head-only: degraded copies of each track.")] = 6,
    batch_size: Annotated[int | None, typer.Option(min=2, help="Batch size for this run (default: the "
                                                               "preset's; saved in the checkpoint).")] = None,
    cosine: Annotated[bool, typer.Option(help="Lower the learning rate along half a cosine to 0 at the last "
                                              "epoch.")] = False,
    json_out: Json = False,
):
    """Train the codec on a music folder, validating on whole held-out tracks.

    Example:  muzip-search train fma_small/ --preset m3 --epochs 20 --out m3.pt

    A preset with a pooling head (default, tiny) also trains it contrastively on
    degraded copies of the audio (room, EQ, band limits, MP3, noise at 0-10 dB, gain).
    Example:  muzip-search train fma_small/ --init old.pt --lr 5e-4 --epochs 8 --out default.pt

    --head-only retrains the search vectors of a trained codec, its latents unchanged.
    Example:  muzip-search train fma_small/ --init default.pt --head-only --batch-size 512 --lr 1e-3 --cosine --out new.pt
    """
    from .training import TrainError, TrainInterrupted, train as run_train
    if preset not in PRESETS:
        fail(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    try:
        report = run_train(directory, out, preset_name=preset, epochs=epochs, device=device, resume=resume,
                           val_fraction=val_fraction, max_hours=max_hours, seed=seed,
                           checkpoint_every=checkpoint_every, lr=lr, init=init, decoder_only=decoder_only,
                           head_only=head_only, versions=versions, batch_size=batch_size, cosine=cosine,
                           progress=not json_out)
    except (TrainError, CheckpointError, RuntimeError, ValueError) as err:
        fail(str(err))
    except TrainInterrupted as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(130) from None
    if json_out:
        print_json(asdict(report))
        return
    for path, reason in report.failed.items():
        typer.echo(f"skipped {path}: {reason}", err=True)
    last = report.history[-1] if report.history else {}
    key, fmt = ("val_view_accuracy", ".3f") if head_only else ("val_mse", ".3e")
    figure = last.get(key)  # None when there was no validation track long enough (an accuracy of 0 is shown)
    typer.echo(f"{report.checkpoint}: {report.preset}, {report.epochs} epochs, {report.steps} steps, "
               f"{report.train_tracks} train / {report.val_tracks} val tracks, "
               f"{key.replace('_', ' ')} {float('nan') if figure is None else figure:{fmt}}, {report.seconds:.0f} s")


@app.command()
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Folder (or file) of held-out music.", exists=True)],
    checkpoint: Annotated[list[Path], typer.Option(help="Checkpoint to evaluate; repeatable.", exists=True,
                                                    dir_okay=False)],
    device: Device = "auto",
    plot: Annotated[Path | None, typer.Option(help="PNG: the first track against each reconstruction.")] = None,
    json_out: Json = False,
):
    """The paper's table for each model: MSE, MAE, R2, SNR, kbps, ms per 30-s track, and the kbps an index
    stores int8 latents at (each second's zstd-compressed).

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
                   f"{'kbps':>7} {'ms/30 s':>8} {'index kbps':>10}")
        for r in rows:
            typer.echo(f"{r.model:<28} {r.tracks:>6} {r.mse:>8.5f} {r.mae:>8.4f} {r.r2:>7.4f} {r.snr_db:>7.2f} "
                       f"{r.kbps:>7.1f} {r.duration_ms:>8.2f} {'-' if r.index_kbps is None else r.index_kbps:>10}")
    if plot is not None:
        track = next(p for p in find_audio(directory) if str(p) not in failed)
        try:
            plot_reconstruction(track, checkpoint, plot, device=device)
        except AudioError as err:
            fail(str(err))
        typer.echo(f"plot of {track} written to {plot}", err=True)


def main():
    app()


# --- the index ------------------------------------------------------------------------------------
IndexDir = Annotated[Path, typer.Option("--index", envvar="MUZIP_INDEX",
                                        help="Index folder (default: $MUZIP_INDEX, else ./muzip-index).")]
DEFAULT_INDEX_DIR = Path("muzip-index")


def _open(index_dir: Path, device: str = "auto", readonly: bool = True):
    from indexer.index import Index, IndexOpenError
    from .device import pick_device
    try:
        return Index.open(index_dir, device=pick_device(device), readonly=readonly)
    except (IndexOpenError, CheckpointError) as err:
        fail(str(err))


@app.command()
def index(
    directory: Annotated[Path, typer.Argument(help="Music folder (or one file) to index, recursively.",
                                              exists=True)],
    index_dir: IndexDir = DEFAULT_INDEX_DIR,
    checkpoint: Annotated[Path | None, typer.Option(help="Codec for a new index (default: the shipped one).",
                                                    exists=True, dir_okay=False)] = None,
    metadata: Annotated[Path | None, typer.Option(help="FMA tracks.csv (default: fma_metadata/tracks.csv "
                                                       "beside or above DIRECTORY).", exists=True,
                                                  dir_okay=False)] = None,
    prune: Annotated[bool, typer.Option(help="Remove tracks whose files have vanished.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Decoding processes (default: one per core).")] = None,
    device: Device = "auto",
    json_out: Json = False,
):
    """Index every audio file under a folder; re-running indexes only what changed.

    Example:  muzip-search index fma_small/ --index ~/fma-index
    """
    from indexer.index import IndexOpenError
    from indexer.metadata import MetadataError
    from .indexing import index_folder
    try:
        r = index_folder(directory, index_dir, checkpoint=checkpoint, metadata=metadata, prune=prune,
                         device=device, workers=workers, progress=not json_out)
    except (IndexOpenError, CheckpointError, MetadataError, RuntimeError) as err:
        fail(str(err))
    except KeyboardInterrupt:  # Ctrl-C: every track is written in its own transaction, so none is lost
        typer.echo("\ninterrupted: the tracks indexed so far are kept; run the same command again to finish",
                   err=True)
        raise typer.Exit(130) from None
    if json_out:
        print_json({"index": r.index, "indexed": r.indexed, "skipped": r.skipped,
                    "skipped_failed": r.skipped_failed, "failed": r.failed,
                    "vanished": r.vanished, "moved": {old: new for old, new, _ in r.moved}, "pruned": r.pruned,
                    "audio_hours": round(r.audio_hours, 4),
                    "seconds": round(r.seconds, 2), "realtime": round(r.realtime, 1), "stages": r.stages,
                    "metadata": r.metadata, "metadata_error": r.metadata_error})
    else:
        if r.metadata_error:
            typer.echo(f"warning: {r.metadata_error}; indexed without it", err=True)
        for path, reason in r.failed.items():
            typer.echo(f"failed {path}: {reason}", err=True)
        for path in r.vanished:
            typer.echo(f"{'removed' if prune else 'vanished'} {path}", err=True)
        for old, new, _ in r.moved:
            typer.echo(f"moved {old} -> {new}", err=True)
        if not (r.indexed or r.skipped or r.failed or r.vanished or r.moved):
            from indexer.audio import AUDIO_EXTENSIONS
            typer.echo(f"no audio files under {directory} (looked for {' '.join(sorted(AUDIO_EXTENSIONS))})",
                       err=True)
        known_bad = f" ({r.skipped_failed} of them failed before)" if r.skipped_failed else ""
        moved = f", moved {len(r.moved)}" if r.moved else ""
        typer.echo(f"{r.index}: indexed {r.indexed}, skipped {r.skipped} unchanged{known_bad}{moved}, "
                   f"failed {len(r.failed)}, vanished {len(r.vanished)}" + (f" (pruned {r.pruned})" if prune else "")
                   + f"; {r.audio_hours:.2f} h of audio in {r.seconds:.1f} s ({r.realtime:.0f}x real time)")
    if r.failed:
        raise typer.Exit(2)  # the run finished, but some files could not be indexed


@app.command()
def query(
    clips: Annotated[list[Path], typer.Argument(help="Audio clips to look up (any common format).")],
    index_dir: IndexDir = DEFAULT_INDEX_DIR,
    top: Annotated[int, typer.Option(min=1, help="Matches per clip.")] = 5,
    min_score: Annotated[float | None, typer.Option(
        min=-1.0, max=1.0,
        help="No-match threshold: hide matches scoring below this (-1 to 1; 0 shows every candidate). "
             "Default: the index's rule; for an index built now, a match scores at least 0.45 and "
             "score + 0.5 x (score - the best other track's score) reaches 0.625 (see BENCHMARKS.md for its "
             "false-match rate).")] = None,
    reconstruct_dir: Annotated[Path | None, typer.Option("--reconstruct", file_okay=False,
                                                         help="Write each match's span, decoded from the "
                                                              "stored latents, as WAV in this folder.")] = None,
    similar: Annotated[int, typer.Option(
        "--similar", min=0, help="Also the tracks that sound most like each clip, this many (found in the "
                                 "index or not), by whole-track vector as `similar` finds them.")] = 0,
    device: Device = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object per clip, one per line.")] = False,
):
    """Find the tracks a clip comes from and where in each it starts; with --similar, the tracks that sound
    like it too.

    A file longer than 10 minutes is looked up by its first 10 minutes (a note on stderr says so).

    Example:  muzip-search query clip.wav other.mp3 --top 3 --json
    Example:  muzip-search query unknown.mp3 --similar 5
    """
    from .reconstruct import reconstruct, write_wav
    from .search import CLIP_MAX_S, ClipTooShort, Searcher, load_clips
    from .similar import similar_to_signal
    idx = _open(index_dir, device)
    searcher = Searcher(idx)
    errors = 0
    for clip, x, cut, unread in load_clips(clips, idx.model.cfg.sample_rate):
        try:
            if unread is not None:
                raise unread
            if cut:
                typer.echo(f"note: {clip} is longer than {CLIP_MAX_S / 60:g} minutes: its first {CLIP_MAX_S / 60:g} "
                           "are searched (cut the part to look up, or use `similar` for a whole file)", err=True)
            matches = searcher.search(x, top=top, min_score=min_score)
        except (AudioError, ClipTooShort) as err:
            errors += 1
            msg = str(err) if isinstance(err, AudioError) else f"{clip}: {err}"
            if json_out:
                print_json({"query": str(clip), "matches": [], "error": msg})
            else:
                typer.echo(f"error: {msg}", err=True)
            continue
        alike = similar_to_signal(idx, x, similar) if similar else None
        if json_out:
            print_json({"query": str(clip), "matches": [m.to_json() for m in matches],
                        **({"similar": alike} if similar else {})})
        else:
            typer.echo(f"{clip}:" + ("" if matches else " no match"))
            for rank, m in enumerate(matches, 1):
                typer.echo(f"  {rank}. track {m.track_id} at {m.offset_s:.2f} s  score {m.score:.3f}  "
                           f"{_label(m.to_json())}"
                           + (f"  [{m.genre}]" if m.genre else ""))
            for r in alike or ():
                typer.echo(f"  sounds like track {r['track_id']}  score {r['score']:.3f}  {_label(r)}")
        if reconstruct_dir is not None:
            for rank, m in enumerate(matches, 1):
                y = reconstruct(idx, m.track_id, m.offset_s, m.offset_s + m.span_s)
                out = reconstruct_dir / f"{Path(clip).stem}.{rank}.track{m.track_id}.{m.offset_s:.2f}s.wav"
                try:
                    write_wav(out, y, idx.model.cfg.sample_rate)
                except FileExistsError as err:
                    fail(str(err))
    idx.close()
    if errors:
        raise typer.Exit(1)


def _track_id(idx, ref: str) -> int:
    tid = _find_track(idx, ref)
    if tid is None:
        fail(f"{ref}: no such track in {idx.root}")
    return tid


def _find_track(idx, ref: str) -> int | None:
    """The track that `ref` names, by id or by its file's path; None where none."""
    if ref.isdigit() and idx.catalog.track(int(ref)):
        return int(ref)
    row = idx.catalog.track_by_path(str(Path(ref).resolve()))
    return None if row is None else row["id"]


def _indexed_track(idx, ref: str) -> int:
    """`_track_id`, for a track with stored latents and vectors: a file that failed to index keeps its row."""
    tid = _track_id(idx, ref)
    row = idx.catalog.track(tid)
    if row["status"] != "indexed":
        fail(f"track {tid} is not indexed: {row['reason'] or row['status']}")
    return tid


@app.command(name="reconstruct")
def reconstruct_cmd(
    track: Annotated[str, typer.Argument(help="Track id (or indexed file path).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="WAV file to write (never overwritten).")],
    start: Annotated[float, typer.Option(min=0.0, help="Start, in seconds.")] = 0.0,
    end: Annotated[float | None, typer.Option(min=0.0, help="End, in seconds (default: the track's end).")] = None,
    index_dir: IndexDir = DEFAULT_INDEX_DIR,
    device: Device = "auto",
    json_out: Json = False,
):
    """Decode a stored track (or part of it) from its latents to WAV.

    Example:  muzip-search reconstruct 2 --start 10 --end 15 -o track2.wav
    """
    from .reconstruct import reconstruct, write_wav
    idx = _open(index_dir, device)
    tid = _indexed_track(idx, track)
    sr = idx.model.cfg.sample_rate
    length = idx.catalog.track_samples(tid) / sr
    if start >= length or (end is not None and end <= start):
        fail(f"nothing to decode: track {tid} is {length:.2f} s long, and --start {start:g}"
             + (f" --end {end:g}" if end is not None else "") + " holds none of it")
    y = reconstruct(idx, tid, start, end)
    try:
        write_wav(out, y, sr)
    except FileExistsError as err:
        fail(str(err))
    if json_out:
        print_json({"out": str(out), "track_id": tid, "start_s": start, "seconds": round(len(y) / sr, 3),
                    "sample_rate": sr})
    else:
        typer.echo(f"{out}: track {tid}, {len(y) / sr:.2f} s", err=True)


@app.command()
def similar(
    track: Annotated[str, typer.Argument(help="Track id, an indexed file's path, or any audio file.")],
    top: Annotated[int, typer.Option(min=1, help="How many tracks.")] = 5,
    index_dir: IndexDir = DEFAULT_INDEX_DIR,
    json_out: Json = False,
):
    """The tracks that sound most like one track (or an audio file not in the index), by whole-track vector:
    the mean of its window vectors and the colour of its sound.

    Example:  muzip-search similar 2 --top 10 --json
    Example:  muzip-search similar ~/new-song.mp3
    """
    from .similar import similar_to_file, similar_tracks
    idx = _open(index_dir)
    tid = _find_track(idx, track)
    if tid is not None or not Path(track).is_file():
        tid = _indexed_track(idx, track)
        rows, head = similar_tracks(idx, tid, top), {"track_id": tid}
    else:
        try:
            rows, head = similar_to_file(idx, Path(track), top), {"query": track}
        except AudioError as err:
            fail(str(err))
    if json_out:
        print_json({**head, "similar": rows})
    else:
        if not rows:
            typer.echo(f"track {tid} is the only track in {idx.root}" if tid is not None
                       else f"{track}: no other track in {idx.root}", err=True)
        for r in rows:
            typer.echo(f"track {r['track_id']}  score {r['score']:.3f}  {_label(r)}")


def _label(row: dict) -> str:
    """How a track is named in text output: artist - title, else its file's name."""
    return " - ".join(v for v in (row["artist"], row["title"]) if v) or Path(row["path"]).name


@app.command()
def stats(index_dir: IndexDir = DEFAULT_INDEX_DIR, json_out: Json = False):
    """What the index holds: tracks, hours, failures, bytes on disk, kbps, model, FAISS type, whole-track vectors.

    Example:  muzip-search stats --json
    """
    from .similar import index_stats
    idx = _open(index_dir)
    s = index_stats(idx)
    if json_out:
        print_json(s)
    else:
        for k, v in s.items():
            typer.echo(f"{k:>20}: {v}")


@app.command()
def remove(
    tracks: Annotated[list[str], typer.Argument(help="Track ids or indexed file paths.")],
    index_dir: IndexDir = DEFAULT_INDEX_DIR,
    json_out: Json = False,
):
    """Remove tracks (and their latents and vectors) from the index.

    Example:  muzip-search remove 2 fma_small/000/000005.mp3
    """
    from .progress import faiss_bar
    idx = _open(index_dir, readonly=False)
    ids = [_track_id(idx, t) for t in tracks]
    n = idx.catalog.remove(ids)
    bar, on_progress = faiss_bar(idx.catalog.window_count(), enabled=not json_out)
    idx.save_faiss(on_progress)
    bar.close()
    if json_out:
        print_json({"removed": ids})
    else:
        typer.echo(f"removed {n} track(s)")
