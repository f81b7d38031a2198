"""The neural codec: a conv encoder to (optionally int8) latents and a conv decoder.

No file I/O here: see `checkpoint.py` for saving and loading.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .config import CodecConfig

_ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


class Codec(nn.Module):
    """Waveform chunks `[B, chunk]` in [-1, 1] <-> latents `[B, C, F]` in [-1, 1].

    `encode` returns the latents as stored: float32 for the paper's models, or
    int8 for 8-bit models. `decode` accepts either and returns `[B, chunk]`.
    """

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        act = cfg.activation
        enc = cfg.encoder
        # hidden layers use cfg.activation; the latent layer is always tanh, so latents
        # lie in [-1, 1] and quantize on a fixed grid with no side information
        acts = [act] * (len(enc) - 1) + ["tanh"]
        layers: list[nn.Module] = [nn.Conv1d(1, enc[0], cfg.kernel, stride=cfg.frame,
                                             padding=(cfg.kernel - cfg.frame) // 2),
                                   _ACTIVATIONS[acts[0]]()]
        for c_in, c_out, a in zip(enc[:-1], enc[1:], acts[1:]):
            layers += [nn.Conv1d(c_in, c_out, 1), _ACTIVATIONS[a]()]
        self.encoder = nn.Sequential(*layers)
        dec = (enc[-1],) + cfg.decoder
        layers = []
        for c_in, c_out in zip(dec[:-1], dec[1:]):
            layers += [nn.Conv1d(c_in, c_out, 1), _ACTIVATIONS[act]()]
        layers.append(nn.Conv1d(dec[-1], cfg.kernel, 1))  # linear: the samples of one window
        self.decoder = nn.Sequential(*layers)
        # Keras defaults (glorot-uniform weights, zero biases), as the paper's models used
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def levels(self) -> int:
        return 2 ** (self.cfg.latent_bits - 1) - 1  # 127 for int8: symmetric grid

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous latents `[B, C, F]` of chunks `[B, chunk]` (no quantization)."""
        return self.encoder(x.unsqueeze(1) * self.cfg.scale)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Round to the stored grid with a straight-through gradient (identity for float32)."""
        if self.cfg.latent_bits == 32:
            return z
        q = torch.round(z * self.levels) / self.levels
        return z + (q - z).detach()

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        """Latents `[B, C, F]` (float, in [-1, 1]) -> chunks `[B, chunk]`."""
        frames = self.decoder(z)  # [B, kernel, F]
        if not self.cfg.overlap:
            y = frames.transpose(1, 2).reshape(z.shape[0], -1)  # frame after frame
        else:
            pad = (self.cfg.kernel - self.cfg.frame) // 2
            n = self.cfg.frame * frames.shape[-1]
            y = F.fold(frames, output_size=(1, n + 2 * pad), kernel_size=(1, self.cfg.kernel),
                       stride=(1, self.cfg.frame)).reshape(z.shape[0], -1)[:, pad:pad + n]
        return y / self.cfg.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training path: chunks `[B, chunk]` -> reconstruction `[B, chunk]`."""
        return self.synthesize(self.quantize(self.latents(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Chunks `[B, chunk]` -> stored latents `[B, C, F]` (int8 or float32)."""
        z = self.latents(x).float()
        if self.cfg.latent_bits == 32:
            return z
        return torch.round(z * self.levels).to(torch.int8)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Stored latents `[B, C, F]` -> chunks `[B, chunk]`, clamped to [-1, 1]."""
        z = latents.float()
        if latents.dtype == torch.int8:
            z = z / self.levels
        return self.synthesize(z).clamp(-1.0, 1.0)
