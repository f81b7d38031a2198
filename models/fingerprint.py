"""The pooling head: one second of latents -> a unit vector that survives rooms, noise and MP3.

It reads the codec's own latents (dequantized, as stored), so an index's window
vectors come from the same encoder pass that produced the stored latents, and can
be rebuilt from them without the audio. Trained contrastively (InfoNCE, as in
"Neural Audio Fingerprint", Chang et al. 2021): the vector of a clean second must
be nearer to that of a degraded copy of it than to those of other seconds.
"""
import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-4  # energy floor on [-1, 1] latents, so silence has a finite log


def log_energy(z: torch.Tensor) -> torch.Tensor:
    """Float latents `[B, C, T]` in [-1, 1] -> log energies, roughly zero-mean and unit-scale."""
    return (torch.log(z * z + _EPS) + 6.0) / 2.5


class PoolingHead(nn.Module):
    """Latents of one window `[B, C, frames]` -> L2-normalised vectors `[B, dim]`.

    Log energy of each latent channel (phase-blind), a strided conv and two more
    convs over time, then mean and max over the window: what the second holds.
    With `ordered` channels, two more strided convs, whose outputs are kept in
    time order (about 170 ms each): when in the second it happens, which tells
    apart seconds of one piece built from the same notes. A linear projection of
    both.
    """

    def __init__(self, channels: int, width: int, dim: int, ordered: int = 0, *, frames: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, width, 4, stride=4), nn.GELU(),
            nn.Conv1d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GELU(),
        )
        self.tail = nn.Sequential(
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv1d(width, ordered, 3, stride=2, padding=1), nn.GELU(),
        ) if ordered else None
        slots = _halved((frames - 4) // 4 + 1, 3)  # frames left after the strides: 176 -> 44 -> 22 -> 11 -> 6
        self.out = nn.Linear(2 * width + ordered * slots, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.net(log_energy(z))
        parts = [h.mean(-1), h.amax(-1)] + ([self.tail(h).flatten(1)] if self.tail is not None else [])
        return F.normalize(self.out(torch.cat(parts, dim=1)), dim=-1)


def _halved(n: int, times: int) -> int:
    """Length after `times` convs of kernel 3, stride 2, padding 1."""
    for _ in range(times):
        n = (n - 1) // 2 + 1
    return n


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` and row i of `b` are views of one segment, every other row a negative."""
    logits = a @ b.T / temperature
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
