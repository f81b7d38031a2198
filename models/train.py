"""The training loop over in-memory tensors: random chunks from tracks, MSE, Adam.

No file I/O: the caller decodes audio and decides where checkpoints go.
"""
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .codec import Codec
from .fingerprint import info_nce

PCM16_SCALE = 32768.0  # tracks arrive as int16 PCM, scaled as libsndfile scales it


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint so `--resume` continues it."""
    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    history: list = field(default_factory=list)  # one {"epoch", "train_mse", "val_mse"[, "view_accuracy"]} per epoch


class Crops:
    """Where to cut `width`-long crops, at least `margin` inside either end, from sequences of the given lengths.

    Every possible start is equally likely, so a sequence weighs by its length;
    sequences too short for one crop are left out (`kept`: the indexes of the
    others, which `draw` counts in).
    """

    def __init__(self, lengths: list[int], width: int, margin: int = 0):
        self.width, self.margin = width, margin
        self.kept = [i for i, n in enumerate(lengths) if n >= width + 2 * margin]
        self.lengths = [lengths[i] for i in self.kept]
        starts = np.array([n - width - 2 * margin + 1 for n in self.lengths], dtype=np.float64)
        self.p = starts / starts.sum() if self.kept else starts

    def draw(self, rng: np.random.Generator, size: int) -> list[tuple[int, int]]:
        """`size` random crops: (index into `kept`, start)."""
        return [(int(k), int(rng.integers(self.margin, self.lengths[k] - self.width - self.margin + 1)))
                for k in rng.choice(len(self.kept), size=size, p=self.p)]


class ChunkSampler:
    """Random chunk-long crops from a list of int16 tracks, weighted by track length."""

    def __init__(self, tracks: list[np.ndarray], chunk: int, seed: int = 0):
        self.crops = Crops([len(t) for t in tracks], chunk)
        self.tracks = [tracks[i] for i in self.crops.kept]
        if not self.tracks:
            raise ValueError(f"no track is at least one chunk ({chunk} samples) long")
        self.chunk = chunk
        self.rng = np.random.default_rng(seed)

    @property
    def chunks_per_epoch(self) -> int:
        return sum(len(t) for t in self.tracks) // self.chunk

    def batch(self, size: int) -> torch.Tensor:
        """`[size, chunk]` float32 in [-1, 1]."""
        out = np.empty((size, self.chunk), dtype=np.float32)
        for row, (i, start) in enumerate(self.crops.draw(self.rng, size)):
            out[row] = self.tracks[i][start:start + self.chunk]
        return torch.from_numpy(out) / PCM16_SCALE


def fixed_chunks(tracks: list[np.ndarray], chunk: int) -> torch.Tensor:
    """Every whole chunk of every track, `[N, chunk]`: a fixed validation set."""
    rows = [t[:len(t) // chunk * chunk].reshape(-1, chunk) for t in tracks if len(t) >= chunk]
    if not rows:
        return torch.zeros(0, chunk)
    return torch.from_numpy(np.concatenate(rows).astype(np.float32) / PCM16_SCALE)


def _autocast(device: torch.device):
    # bf16 mixed precision on CUDA; plain float32 on CPU
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def reconstruction_loss(model: Codec, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """MSE on the x10 values the network sees, as the paper trained; `z`: `x`'s quantized latents if at hand."""
    s = model.cfg.scale
    y = model(x) if z is None else model.synthesize(z)
    return F.mse_loss(y.float() * s, x * s)


def head_loss(model: Codec, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """InfoNCE between the vectors of latent windows `a` and `b` `[B, C, window_frames]`, row i of each a view
    of one segment; and the share of rows of `b` whose nearest vector in `a` is their own."""
    va, vb = model.embed(a), model.embed(b)
    accuracy = ((vb @ va.T).argmax(1) == torch.arange(len(va), device=va.device)).float().mean().item()
    return info_nce(va, vb, model.cfg.temperature), accuracy


def joint_loss(model: Codec, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Reconstruction MSE of clean chunks `x` and InfoNCE between their vectors and those of views `y`.

    `y[i]` is a degraded, slightly shifted copy of `x[i]`. Both vectors come from
    the quantized latents the index would store. Returns (mse on x10 values,
    InfoNCE, share of views whose nearest clean vector is their own).
    """
    n = model.window_frames
    zx = model.quantize(model.latents(x))
    mse = reconstruction_loss(model, x, zx)
    nce, accuracy = head_loss(model, zx[:, :, :n].float(), model.quantize(model.latents(y))[:, :, :n].float())
    return mse, nce, accuracy


@torch.no_grad()
def view_accuracy(model: Codec, pairs: tuple[torch.Tensor, torch.Tensor], device: torch.device,
                  batch_size: int) -> float:
    """`head_loss`'s accuracy over fixed latent pairs, in batches of `batch_size` (its in-batch negatives)."""
    model.eval()
    a, b = pairs
    scores = [head_loss(model, a[i:i + batch_size].to(device), b[i:i + batch_size].to(device))[1]
              for i in range(0, len(a) - batch_size + 1, batch_size)]
    model.train()
    return float(np.mean(scores)) if scores else float("nan")


@torch.no_grad()
def validate(model: Codec, chunks: torch.Tensor, device: torch.device, batch_size: int = 64) -> float:
    """Mean squared error on [-1, 1] samples over fixed chunks (with quantized latents)."""
    if not len(chunks):
        return float("nan")
    model.eval()
    total = 0.0
    for i in range(0, len(chunks), batch_size):
        x = chunks[i:i + batch_size].to(device)
        with _autocast(device):
            total += F.mse_loss(model(x).float(), x, reduction="sum").item()
    model.train()
    return total / chunks.numel()


def fit(model: Codec, optimizer: torch.optim.Optimizer, sampler: ChunkSampler, val: torch.Tensor, *,
        epochs: int, device: torch.device, state: TrainState | None = None,
        on_step: Callable[[TrainState, float], None] | None = None,
        on_epoch: Callable[[TrainState], None] | None = None, checkpoint_every: int = 0,
        on_checkpoint: Callable[[TrainState], None] | None = None,
        views: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
        head_views: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None,
        val_views: tuple[torch.Tensor, torch.Tensor] | None = None, cosine: bool = False) -> TrainState:
    """Train until `state.epoch == epochs`; an epoch sees as many chunks as the tracks hold.

    With `views` (a function giving `batch` clean chunks and a degraded view of
    each) and a codec with a head and a `contrastive` weight, each step also
    trains the head, and the encoder through it, with InfoNCE; otherwise chunks
    come from `sampler` and the loss is the MSE alone. With `head_views` (a
    function giving `batch` pairs of latent windows, `indexer.augment.LatentViews`)
    the loss is the head's InfoNCE alone: train only the head's parameters, and
    each epoch records the view accuracy on the fixed pairs `val_views` (the MSE
    cannot move). `on_step(state, loss)` is called after every step (progress
    bars), `on_epoch` after every epoch with the validation figures recorded,
    `on_checkpoint` every `checkpoint_every` steps. With `cosine`, the learning
    rate falls from the optimizer's along half a cosine to 0 at the last step of
    `epochs` (kept as `initial_lr` in the optimizer's state, so a resumed run goes
    on down the same curve).
    """
    state = state or TrainState()
    bs = model.cfg.batch_size
    steps = max(1, math.ceil(sampler.chunks_per_epoch / bs))
    contrastive = views is not None and model.head is not None and model.cfg.contrastive > 0
    model.to(device).train()
    while state.epoch < epochs:
        t0, losses, accuracies = time.perf_counter(), [], []
        done = min(max(state.step - state.epoch * steps, 0), steps)  # resumed mid-epoch
        for _ in range(steps - done):
            if cosine:
                for group in optimizer.param_groups:
                    group.setdefault("initial_lr", group["lr"])
                    group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * state.step / (epochs * steps)))
            if head_views is not None:
                a, b = (v.to(device) for v in head_views(bs))
                with _autocast(device):
                    loss, accuracy = head_loss(model, a, b)
                accuracies.append(accuracy)
            elif contrastive:
                x, y = (v.to(device) for v in views(bs))
                with _autocast(device):
                    mse, nce, accuracy = joint_loss(model, x, y)
                    loss = mse + model.cfg.contrastive * nce
                accuracies.append(accuracy)
            else:
                x = sampler.batch(bs).to(device)
                with _autocast(device):
                    loss = mse = reconstruction_loss(model, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            losses.append(loss.item() if head_views is not None else mse.item() / model.cfg.scale ** 2)
            if on_step:
                on_step(state, losses[-1])
            if checkpoint_every and on_checkpoint and state.step % checkpoint_every == 0:
                on_checkpoint(state)
        state.epoch += 1
        state.seconds += time.perf_counter() - t0
        mean = float(np.mean(losses)) if losses else None
        if head_views is not None:
            state.history.append({"epoch": state.epoch, "train_nce": mean, "view_accuracy": float(np.mean(accuracies)),
                                  "val_view_accuracy": view_accuracy(model, val_views, device, bs)
                                  if val_views is not None else None})
        else:
            state.history.append({"epoch": state.epoch, "train_mse": mean, "val_mse": validate(model, val, device)})
            if accuracies:  # in-batch: how often a degraded view's nearest clean vector is its own
                state.history[-1]["view_accuracy"] = float(np.mean(accuracies))
        if on_epoch:
            on_epoch(state)
    return state
