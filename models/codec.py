"""The neural codecs: conv encoders to (optionally int8) latents and conv decoders.

`build_codec(cfg)` makes the codec a config describes:
- `PaperCodec`: the paper's models as the authors wrote them in Keras.
- `LappedCodec`: ours; an MDCT-initialised lapped transform with residual MLPs.
No file I/O here: see `checkpoint.py` for saving and loading.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import CodecConfig
from .fingerprint import PoolingHead

_ACTIVATIONS = {"tanh": nn.Tanh, "gelu": nn.GELU, "relu": nn.ReLU}


class Codec(nn.Module):
    """Waveform chunks `[B, chunk]` in [-1, 1] <-> latents `[B, C, F]` in [-1, 1].

    Subclasses define `latents` (continuous, tanh-bounded) and `frames`: the
    decoder, which works latent frame by latent frame, each giving a window of
    `cfg.kernel` samples; windows `cfg.frame` apart are overlap-added, the first
    `pad` samples dropped. `encode` returns latents as stored: float32 for the
    paper's models, int8 for 8-bit models; `decode` accepts either and returns
    `[B, chunk]`, and `decode_span` any stretch of it. A codec with a `head`
    also turns windows of latents into search vectors (`embed`).

    `encode` and `decode_span` compute in float32, or in bfloat16 (`dtype`) for a codec
    that has a bfloat16 path (`BFLOAT16`): its layers as plain matrix products in
    bfloat16, which a CPU with AMX runs 3 to 6 times as fast as float32 convolutions.
    """

    DECODER: tuple[str, ...] = ()  # names of the submodules that make up the decoder
    BFLOAT16 = False  # whether `encode` and `decode_span` can compute in bfloat16 (`latents_as`, `frames_as`)

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.head = PoolingHead(cfg.latent_dim, *cfg.head, frames=self.window_frames) if cfg.head else None

    def decoder_parameters(self):
        """The decoder's parameters: what `train --decoder-only` fits, leaving latents and vectors as they are."""
        return [p for name in self.DECODER for p in getattr(self, name).parameters()]

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        """Float latents `[B, C, F]` -> sample windows `[B, kernel, F]`, each from its own latent frame."""
        raise NotImplementedError

    def latents_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`latents`, computed in `dtype` (float32 out), for inference."""
        if dtype != torch.float32:
            raise ValueError(f"codec {self.cfg.name!r} computes in float32 only")
        return self.latents(x)

    def frames_as(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`frames`, computed in `dtype` (float32 out), for inference."""
        if dtype != torch.float32:
            raise ValueError(f"codec {self.cfg.name!r} computes in float32 only")
        return self.frames(z)

    @property
    def pad(self) -> int:
        """Samples before the chunk's first that the first window covers."""
        return (self.cfg.kernel - self.cfg.frame) // 2

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        return _overlap_add(self.frames(z), self.cfg.frame, self.pad, self.cfg.chunk) / self.cfg.scale

    @property
    def levels(self) -> int:
        return 2 ** (self.cfg.latent_bits - 1) - 1  # 127 for int8: a symmetric grid

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Round to the stored grid with a straight-through gradient (identity for float32)."""
        if self.cfg.latent_bits == 32:
            return z
        q = torch.round(z * self.levels) / self.levels
        return z + (q - z).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training path: chunks `[B, chunk]` -> reconstruction `[B, chunk]`."""
        return self.synthesize(self.quantize(self.latents(x)))

    @torch.no_grad()
    def encode(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Chunks `[B, chunk]` -> stored latents `[B, C, F]` (int8 or float32), computed in `dtype`."""
        z = self.latents_as(x, dtype).float()
        if self.cfg.latent_bits == 32:
            return z
        return torch.round(z * self.levels).to(torch.int8)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Stored latents `[B, C, F]` -> chunks `[B, chunk]`, clamped to [-1, 1]."""
        return self.synthesize(self.dequantize(latents)).clamp(-1.0, 1.0)

    @torch.no_grad()
    def decode_span(self, latents: torch.Tensor, start: int, end: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Samples [start, end) of `decode(latents)` laid end to end (`[N * chunk]`), as `[end - start]`;
        the decoder computes in `dtype`.

        Only the latent frames whose windows reach those samples are decoded: re-scoring a search
        candidate wants 2.5 s of a track, which whole chunks would make 3 or 4 s.
        """
        if start <= 0 and end >= len(latents) * self.cfg.chunk and dtype == torch.float32:  # all: no frame left out
            return self.decode(latents).reshape(-1)
        return self.decode_spans(latents, [(start, end)], dtype)[0]

    @torch.no_grad()
    def decode_spans(self, latents: torch.Tensor, spans: list[tuple[int, int]],
                     dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        """`decode_span` of each (start, end) of `spans`, their frames through the decoder at once. A pass
        through the decoder costs about as much as 0.7 s of audio decoded (1.0 ms, then 1.4 ms a second, on a
        2-core Zen 3 VM), and a search widens a track's decoded stretch on both sides at once
        (`muzip_search.reconstruct.Spans`)."""
        chunk, hop, window, pad = self.cfg.chunk, self.cfg.frame, self.cfg.kernel, self.pad
        z = self.dequantize(latents)
        parts = []  # (span, chunk, its first and end frame, first and end sample) for each chunk each span reaches
        for k, (start, end) in enumerate(spans):
            for i in range(max(start, 0) // chunk, min(-(-end // chunk), len(z))):
                a, b = max(start - i * chunk, 0), min(end - i * chunk, chunk)
                # frame j's window covers samples [j * hop - pad, j * hop - pad + window) of its chunk
                parts.append((k, i, max(0, (a + pad - window) // hop + 1), min(z.shape[2], -(-(b + pad) // hop)), a, b))
        out = [[] for _ in spans]
        if parts:
            # the decoder works frame by frame, so every chunk's frames go through it at once; then each chunk's
            # windows are overlap-added on their own
            windows = self.frames_as(torch.cat([z[i, :, j0:j1] for _, i, j0, j1, _, _ in parts], dim=1)[None],
                                     dtype)[0]
            f = 0
            for k, _, j0, j1, a, b in parts:
                y = _lay(windows[:, f:f + j1 - j0], hop)  # y[0] is the chunk's sample j0 * hop - pad
                out[k].append(y[a + pad - j0 * hop:b + pad - j0 * hop])
                f += j1 - j0
        return [(torch.cat(o) / self.cfg.scale).clamp(-1.0, 1.0) if o else torch.zeros(0, device=z.device)
                for o in out]

    @property
    def window_frames(self) -> int:
        """Latent frames the head pools into one vector: one chunk's worth."""
        return self.cfg.chunk // self.cfg.frame

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Float latents of windows `[B, C, window_frames]` -> unit search vectors `[B, D]`."""
        if self.head is None:
            raise ValueError(f"codec {self.cfg.name!r} has no pooling head")
        return self.head(z)

    def dequantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Stored latents -> float latents in [-1, 1]."""
        z = latents.float()
        return z / self.levels if latents.dtype == torch.int8 else z


class PaperCodec(Codec):
    """Conv1d(kernel = stride = frame) then 1x1 Conv1ds, tanh; linear last layer, flattened."""

    DECODER = ("decoder",)

    def __init__(self, cfg: CodecConfig):
        super().__init__(cfg)
        act, enc = cfg.activation, cfg.encoder
        # the latent layer is always tanh, so latents lie in [-1, 1] and quantize on a fixed grid
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

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.unsqueeze(1) * self.cfg.scale)  # [B, C, F]

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # without overlap, windows of `frame` laid frame after frame, as Keras' Flatten


def _lay(windows: torch.Tensor, hop: int) -> torch.Tensor:
    """Windows `[window, n]` laid `hop` apart and summed where they overlap, as `_overlap_add` does, for the
    two layouts a codec has (`CodecConfig.kernel`): frame after frame, or two frames long (each sample under
    two windows, one sum). Without `fold`'s work for the general case: a decoded span's chunks each need it."""
    window, n = windows.shape
    if window == hop:
        return windows.T.reshape(-1)
    if window != 2 * hop:
        raise ValueError(f"windows of {window} samples {hop} apart: expected {hop} or {2 * hop}")
    y = windows.new_empty((n + 1) * hop)
    y[:n * hop] = windows[:hop].T.reshape(-1)
    y[n * hop:] = 0.0
    y[hop:] += windows[hop:].T.reshape(-1)
    return y


def _overlap_add(frames: torch.Tensor, hop: int, pad: int, length: int) -> torch.Tensor:
    """`[B, window, F]` -> `[B, length]`: frames hop apart, summed, the first `pad` samples dropped."""
    window, n = frames.shape[1], frames.shape[2]
    y = F.fold(frames, output_size=(1, hop * (n - 1) + window), kernel_size=(1, window), stride=(1, hop))
    return y.reshape(frames.shape[0], -1)[:, pad:pad + length]


def mdct_basis(n: int) -> torch.Tensor:
    """Orthonormal MDCT basis `[n, 2n]` with a sine window: frames n apart reconstruct exactly (TDAC)."""
    t = torch.arange(2 * n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)
    window = torch.sin(math.pi * (t + 0.5) / (2 * n))
    cos = torch.cos(math.pi / n * (t[None, :] + 0.5 + n / 2) * (k[:, None] + 0.5))
    return (window * math.sqrt(2.0 / n) * cos).float()


_BLOCK = 512  # frames per matrix product in `LappedCodec.latents_as` and `frames_as`, at most


def _blocks(n: int) -> list[tuple[int, int, int]]:
    """(first, count, padded count) of the blocks that `n` frames go through `LappedCodec`'s products in:
    `_BLOCK` at a time, the rest padded to 128, 256 or 512. oneDNN makes a kernel for each new shape of product
    (10-25 ms: re-scoring's spans, all of different lengths, had a 10-27 ms tail), so there are three in all,
    while a 1-s span is not padded to three times its length."""
    return [(at, min(_BLOCK, n - at), max(128, 1 << (min(_BLOCK, n - at) - 1).bit_length()))
            for at in range(0, n, _BLOCK)]


class LappedCodec(Codec):
    """MDCT-initialised analysis/synthesis with linear skips and residual MLPs around int8 latents.

    At initialisation it is an MDCT codec that keeps the `latent` lowest bins (a
    low-pass); training then learns what to keep and how to rebuild the rest.
    encoder = (bins, mlp width, latent); bins = frame; windows of 2 * frame.
    """

    DECODER = ("dec_skip", "dec_mlp", "synthesis")
    BFLOAT16 = True
    GAIN = 32.0  # MDCT coefficients of x10 music reach ~30: bring them into tanh's linear range

    def __init__(self, cfg: CodecConfig):
        super().__init__(cfg)
        bins, width, latent = cfg.encoder
        act = _ACTIVATIONS[cfg.activation]
        basis = mdct_basis(cfg.frame)  # [bins, 2 * frame]
        self.analysis = nn.Conv1d(1, bins, 2 * cfg.frame, stride=cfg.frame, padding=cfg.frame, bias=False)
        self.enc_skip = nn.Conv1d(bins, latent, 1, bias=False)
        self.enc_mlp = nn.Sequential(nn.Conv1d(bins, width, 1), act(), nn.Conv1d(width, latent, 1))
        self.dec_skip = nn.Conv1d(latent, bins, 1, bias=False)
        self.dec_mlp = nn.Sequential(nn.Conv1d(latent, cfg.decoder[0], 1), act(),
                                     nn.Conv1d(cfg.decoder[0], bins, 1))
        self.synthesis = nn.Conv1d(bins, 2 * cfg.frame, 1, bias=False)
        keep = torch.eye(latent, bins)  # the lowest `latent` bins
        with torch.no_grad():
            self.analysis.weight.copy_(basis[:, None, :])
            self.synthesis.weight.copy_(basis.T[:, :, None] * self.GAIN)
            self.enc_skip.weight.copy_(keep[:, :, None])
            self.dec_skip.weight.copy_(keep.T[:, :, None])
            for mlp in (self.enc_mlp, self.dec_mlp):  # residuals start at zero
                nn.init.zeros_(mlp[-1].weight)
                nn.init.zeros_(mlp[-1].bias)

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        h = self.analysis(x.unsqueeze(1) * self.cfg.scale) / self.GAIN  # [B, bins, F]
        return torch.tanh(self.enc_skip(h) + self.enc_mlp(h))  # [B, C, F]

    def frames(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.dec_skip(z) + self.dec_mlp(z))  # [B, bins, F] -> [B, 2 * frame, F]

    # Inference in another dtype: every layer is one matrix per latent frame (the analysis on a frame's
    # 2 * frame samples), so each is one matrix product, with its bias added in the same call. In bfloat16 on a
    # CPU with AMX these run 3 to 6 times as fast as the float32 convolutions (BENCHMARKS.md, session 15):
    # 1.6-2.3 % of the latents one step from float32's, none more; decoded audio 48-49 dB from float32's.

    def latents_as(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype == torch.float32:
            return self.latents(x)
        w, b = self._matrices(dtype)
        frame = self.cfg.frame
        framed = F.pad(x * self.cfg.scale, (frame, frame)).unfold(-1, 2 * frame, frame).to(dtype)  # [B, F, 2 frame]
        rows = framed.reshape(-1, 2 * frame)  # frame after frame, in blocks as in `frames_as`
        out = []
        for at, n, size in _blocks(len(rows)):
            one = F.pad(rows[at:at + n], (0, 0, 0, size - n))  # [size, 2 * frame]
            h = F.linear(one, w["analysis"])  # the GAIN is in the matrix: [size, bins]
            inner = F.gelu(F.linear(h, w["enc_mlp.0"], b["enc_mlp.0"]))
            z = F.linear(h, w["enc_skip"]).float() + F.linear(inner, w["enc_mlp.2"], b["enc_mlp.2"]).float()
            out.append(z[:n])
        z = torch.cat(out).reshape(*framed.shape[:2], -1)
        return torch.tanh(z).transpose(1, 2)  # [B, C, F]

    def frames_as(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if dtype == torch.float32:
            return self.frames(z)
        w, b = self._matrices(dtype)
        frames = z.shape[2]
        # channels first, as the convolutions have them, frame after frame (the batch's too), in blocks
        cols = z.to(dtype).transpose(0, 1).reshape(z.shape[1], -1)
        out = []
        for at, n, size in _blocks(cols.shape[1]):
            one = F.pad(cols[:, at:at + n], (0, size - n))  # [C, size]
            inner = F.gelu(torch.addmm(b["dec_mlp.0"][:, None], w["dec_mlp.0"], one))
            bins = torch.addmm(torch.addmm(b["dec_mlp.2"][:, None], w["dec_mlp.2"], inner), w["dec_skip"], one)
            out.append((w["synthesis"] @ bins)[:, :n])
        y = torch.cat(out, dim=1).float()  # [2 * frame, B * F]
        return y.reshape(-1, len(z), frames).transpose(0, 1)  # [B, 2 * frame, F]

    def _matrices(self, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each layer's weight as an `[out, in]` matrix and its bias, in `dtype`; kept until a weight changes."""
        layers = {"analysis": self.analysis, "enc_skip": self.enc_skip, "enc_mlp.0": self.enc_mlp[0],
                  "enc_mlp.2": self.enc_mlp[2], "dec_skip": self.dec_skip, "dec_mlp.0": self.dec_mlp[0],
                  "dec_mlp.2": self.dec_mlp[2], "synthesis": self.synthesis}
        params = [p for m in layers.values() for p in m.parameters()]
        key = (dtype, tuple((p.data_ptr(), p.device, p._version) for p in params))  # in-place updates count
        cached = self.__dict__.get("_matrices_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                w = {name: m.weight.flatten(1).to(dtype).contiguous() for name, m in layers.items()}
                w["analysis"] = (self.analysis.weight.flatten(1) / self.GAIN).to(dtype).contiguous()
                b = {name: m.bias.to(dtype) for name, m in layers.items() if m.bias is not None}
            cached = key, (w, b)
            self.__dict__["_matrices_cache"] = cached
        return cached[1]

    @property
    def pad(self) -> int:
        return self.cfg.frame  # one frame more than the chunk holds: every sample lies under two windows


def build_codec(cfg: CodecConfig) -> Codec:
    return {"paper": PaperCodec, "lapped": LappedCodec}[cfg.arch](cfg)
