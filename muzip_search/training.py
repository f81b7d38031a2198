"""`train`: fit a codec preset on every audio file under a folder."""
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from indexer.audio import AudioError, info
from indexer.augment import LatentViews, ViewSampler
from indexer.collection import find_audio, sample_tracks, split_by_track
from indexer.decode import decode_files
from models import CodecConfig, build_codec, preset, save_checkpoint
from models.checkpoint import read_checkpoint
from models.train import ChunkSampler, TrainState, fit, fixed_chunks

from .device import pick_device
from .progress import bar as progress_bar


@dataclass
class TrainReport:
    checkpoint: str
    preset: str
    train_tracks: int
    val_tracks: int
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    epochs: int = 0
    steps: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)


class TrainError(Exception):
    """A training run that cannot start (no usable audio, output exists, bad resume)."""


class TrainInterrupted(Exception):
    """Ctrl-C during training: the run so far was saved to `checkpoint`, `resume` continues it."""

    def __init__(self, checkpoint: Path, epoch: int, step: int):
        super().__init__(f"interrupted at step {step} (epoch {epoch + 1}); saved to {checkpoint}, "
                         f"--resume continues it")
        self.checkpoint, self.epoch, self.step = checkpoint, epoch, step


def train(root: Path, out: Path, *, preset_name: str = "default", epochs: int = 10, device: str = "auto",
          resume: bool = False, val_fraction: float = 0.1, max_hours: float = 10.0, seed: int = 0,
          checkpoint_every: int = 500, workers: int | None = None, lr: float | None = None,
          init: Path | None = None, decoder_only: bool = False, head_only: bool = False, versions: int = 6,
          batch_size: int | None = None, cosine: bool = False, progress: bool = True) -> TrainReport:
    """Train on every audio file under `root`, validating on whole held-out tracks.

    The checkpoint at `out` is rewritten after every epoch and every
    `checkpoint_every` steps; `resume=True` continues the run saved there
    (its config, optimizer and epoch count). An existing `out` without `resume`
    is refused, so nothing is overwritten silently. `lr` overrides the preset's
    learning rate for this run (for example a lower one to fine-tune on resume).
    `init` starts a new run from another checkpoint's weights wherever the
    preset has the same layers (say a codec without a pooling head, to which the
    preset adds one). A preset with a head and a `contrastive` weight trains it
    on degraded views of the training audio, made on the fly (`indexer.augment`).
    `decoder_only` fits the decoder alone on the MSE: the latents and search
    vectors stay exactly as they were (pass it again with `resume`).
    `head_only` trains the pooling head alone, on InfoNCE, against `versions`
    degraded copies of each track encoded once (`indexer.augment.LatentViews`):
    latents and reconstructions stay exactly as they were, and since a step is
    cheap, batches can be large (`batch_size`, saved in the checkpoint's config;
    pass `head_only` again with `resume`). `cosine` lowers the learning rate
    along half a cosine, from `lr` (or the preset's) to 0 at the last epoch.
    """
    if decoder_only and head_only:
        raise TrainError("choose one of decoder_only and head_only")
    out = Path(out)
    dev = pick_device(device)
    state = TrainState()
    if resume:
        ckpt = read_checkpoint(out)
        cfg = CodecConfig.from_dict(ckpt["config"])
        state = TrainState(**ckpt["state"]) if ckpt["state"] else state
    elif out.exists():
        raise TrainError(f"{out} exists; pass --resume to continue it, or choose another --out")
    else:
        cfg, ckpt = preset(preset_name), None
    if batch_size is not None:
        cfg = replace(cfg, batch_size=batch_size)
    if head_only and not cfg.head:
        raise TrainError(f"preset {cfg.name!r} has no pooling head to train")

    paths = found = find_audio(root)
    if not paths:
        raise TrainError(f"no audio files under {root}")
    failed: dict[str, str] = {}
    durations = []
    for p in paths:  # cheap header reads, to cap the total at max_hours before decoding
        try:
            durations.append(info(p).seconds or 0.0)
        except AudioError as err:
            durations.append(0.0)
            failed[str(p)] = str(err.reason)
    usable = [i for i, p in enumerate(paths) if str(p) not in failed]
    keep = sample_tracks([paths[i] for i in usable], [durations[i] for i in usable], max_hours * 3600, seed)
    paths = [paths[usable[i]] for i in keep]
    train_paths, val_paths = split_by_track(paths, val_fraction, seed)

    def decode(ps, what):
        tracks = []
        bar = progress_bar(len(ps), f"decode {what}", "file", progress)
        for p, x in decode_files(ps, cfg.sample_rate, min_seconds=cfg.chunk / cfg.sample_rate, workers=workers):
            if isinstance(x, AudioError):
                failed[str(p)] = x.reason
            else:
                tracks.append(x)
            bar.update()
        bar.close()
        return tracks

    train_tracks, val_tracks = decode(train_paths, "train"), decode(val_paths, "val")
    if not train_tracks:
        raise TrainError(f"none of the {len(found)} audio files under {root} is usable for training")

    torch.manual_seed(seed + state.step)
    model = build_codec(cfg).to(dev)
    if decoder_only or head_only:
        trainable = set(map(id, model.decoder_parameters() if decoder_only else model.head.parameters()))
        for p in model.parameters():
            p.requires_grad_(id(p) in trainable)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
    elif init is not None:
        _load_matching(model, read_checkpoint(init)["model"], init)
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
            group.pop("initial_lr", None)  # a cosine curve starts again from here
    sampler = ChunkSampler(train_tracks, cfg.chunk, seed=seed + state.step)
    views = ViewSampler(train_tracks, cfg.chunk, cfg.sample_rate, seed=seed + state.step) \
        if cfg.head and cfg.contrastive > 0 and not (decoder_only or head_only) else None
    val = fixed_chunks(val_tracks, cfg.chunk)
    head_views = val_views = None
    if head_only:  # encode every track and its degraded copies once, with the encoder as it stays
        model.eval()
        bar = progress_bar(len(train_tracks) + len(val_tracks), "encode degraded copies", "track", progress)
        head_views = LatentViews(model, train_tracks, versions, seed=seed + state.step, workers=workers,
                                 on_track=bar.update)
        try:
            val_views = LatentViews(model, val_tracks, 2, seed=seed + 1, workers=workers,
                                    on_track=bar.update)(4 * cfg.batch_size)
        except ValueError:  # no validation track is long enough: the history shows None
            pass
        bar.close()
        model.train()

    def save(s: TrainState):
        save_checkpoint(out, model, optimizer=optimizer, state=asdict(s))

    steps_per_epoch = -(-sampler.chunks_per_epoch // cfg.batch_size)
    bar = progress_bar(epochs * steps_per_epoch, f"train {cfg.name}", "step", progress,
                       initial=min(state.step, epochs * steps_per_epoch))

    def on_step(s: TrainState, loss: float):
        bar.update()
        # refresh=False: shown with the bar's own updates (every 5 s in a log), not a line per step
        bar.set_postfix({"epoch": s.epoch + 1, "infonce" if head_only else "mse": f"{loss:.2e}"}, refresh=False)
        if stop.is_set():  # Ctrl-C: this step is done and counted in `s`, the place to stop
            raise TrainInterrupted(out, s.epoch, s.step)

    def on_epoch(s: TrainState):
        save(s)
        h = s.history[-1]
        if progress and head_only:
            val_part = f"  val {h['val_view_accuracy']:.3f}" if h["val_view_accuracy"] is not None else ""
            bar.write(f"epoch {h['epoch']}: train infonce {h['train_nce']:.3f}  view accuracy "
                      f"{h['view_accuracy']:.3f}{val_part}", file=sys.stderr)
        elif progress:
            views_part = f"  view accuracy {h['view_accuracy']:.2f}" if "view_accuracy" in h else ""
            bar.write(f"epoch {h['epoch']}: train mse {h['train_mse']:.3e}  val mse {h['val_mse']:.3e}{views_part}",
                      file=sys.stderr)

    stop, interrupted = threading.Event(), None
    try:
        with _stop_on_ctrl_c(stop):
            state = fit(model, optimizer, sampler, val, epochs=epochs, device=dev, state=state, on_step=on_step,
                        on_epoch=on_epoch, checkpoint_every=checkpoint_every, on_checkpoint=save, views=views,
                        head_views=head_views, val_views=val_views, cosine=cosine)
    except TrainInterrupted as err:
        interrupted = err
    bar.close()
    save(state)  # `fit` counts in `state` the steps it finished: after Ctrl-C, a resume goes on from there
    if interrupted:
        raise interrupted
    return TrainReport(str(out), cfg.name, len(train_tracks), len(val_tracks), failed, state.epoch,
                       state.step, round(state.seconds, 1), state.history)


@contextmanager
def _stop_on_ctrl_c(stop: threading.Event):
    """Ctrl-C sets `stop`, so that training stops between two steps (a KeyboardInterrupt in the middle of one
    can land in a C callback, an MP3 encoder's, and be lost there); a second Ctrl-C interrupts at once. Only
    the main thread can take signals: elsewhere, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _load_matching(model: torch.nn.Module, weights: dict, source: Path) -> None:
    """Copy every tensor of `weights` whose name and shape `model` shares; refuse if none does."""
    own = model.state_dict()
    shared = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not shared:
        raise TrainError(f"{source} shares no layer with this preset")
    model.load_state_dict(shared, strict=False)
