"""Codec configuration and the named presets.

A `CodecConfig` is all it takes to rebuild a codec: it is saved with `asdict()`
inside every checkpoint, and loading rebuilds the model from it, never from flags.
"""
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class CodecConfig:
    """Architecture of one codec.

    The encoder is a Conv1d over the waveform (stride `frame`, kernel `frame` or
    `2 * frame` when `overlap`), then 1x1 Conv1ds; its last width is the latent
    channel count. The decoder is 1x1 Conv1ds, then a linear 1x1 layer to `kernel`
    samples per frame that are overlap-added back into a waveform.
    """
    name: str
    frame: int                      # hop of the analysis conv, in samples
    arch: str = "paper"             # "paper": plain conv stack; "lapped": MDCT-initialised, residual
    encoder: tuple[int, ...] = ()   # channel widths; the last one is the latent size
    decoder: tuple[int, ...] = ()   # hidden widths before the linear synthesis layer
    overlap: bool = False           # analysis/synthesis windows of 2 * frame (50 % overlap)
    activation: str = "tanh"        # hidden activation; latents are always tanh-bounded
    latent_bits: int = 32           # 32 = float32 latents (the paper); 8 = stored as int8
    sample_rate: int = 44100
    chunk: int = 44000              # samples the codec sees at once (the paper's "second")
    scale: float = 10.0             # the paper multiplies samples by 10 before the net
    head: tuple[int, ...] = ()      # pooling head for search (conv width, vector size[, ordered width]); () = none
    contrastive: float = 0.0        # weight of the head's InfoNCE loss beside the MSE when training
    temperature: float = 0.05       # InfoNCE temperature
    # training defaults, kept with the model so `train --resume` picks them up
    lr: float = 1e-3
    batch_size: int = 40
    description: str = ""

    def __post_init__(self):
        if self.chunk % self.frame:
            raise ValueError(f"chunk {self.chunk} is not a multiple of frame {self.frame}")
        if self.arch not in ("paper", "lapped"):
            raise ValueError(f"unknown arch {self.arch!r}")
        if self.arch == "lapped" and (not self.overlap or len(self.encoder) != 3 or len(self.decoder) != 1):
            raise ValueError("a lapped codec overlaps and has encoder (bins, width, latent), decoder (width,)")
        if self.head and len(self.head) not in (2, 3):
            raise ValueError("head is (conv width, vector size) or (conv width, vector size, ordered width)")
        if self.latent_bits not in (8, 32):
            raise ValueError("latent_bits must be 8 (int8) or 32 (float32)")

    @property
    def kernel(self) -> int:
        return 2 * self.frame if self.overlap else self.frame

    @property
    def frames(self) -> int:
        """Latent frames per chunk; the lapped codec adds one so every sample lies under two windows."""
        return self.chunk // self.frame + (1 if self.arch == "lapped" else 0)

    @property
    def latent_dim(self) -> int:
        return self.encoder[-1]

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Latents of one chunk as `[C, F]`."""
        return (self.latent_dim, self.frames)

    @property
    def kbps(self) -> float:
        """Stored bitrate: latent values per second of audio times bits per value."""
        values_per_s = self.latent_dim * self.frames * self.sample_rate / self.chunk
        return values_per_s * self.latent_bits / 1000.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CodecConfig":
        known = {f.name for f in fields(cls)}
        d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**d)


PRESETS: dict[str, CodecConfig] = {
    # The paper's three models, as in the authors' Keras models.py.
    "m1": CodecConfig("m1", frame=1000, encoder=(750, 500, 250), decoder=(250, 500, 1000),
                      description="Muzip paper, Model 1: frames of 1000, latent 44 x 250"),
    "m2": CodecConfig("m2", frame=500, encoder=(500, 300, 125), decoder=(125, 300, 500),
                      description="Muzip paper, Model 2: frames of 500, latent 88 x 125"),
    "m3": CodecConfig("m3", frame=200, encoder=(200, 150, 100, 50), decoder=(50, 100, 150, 200),
                      description="Muzip paper, Model 3: frames of 200, latent 220 x 50"),
    # Ours: an MDCT-initialised lapped transform (frames of 250, windows of 500) with
    # residual MLPs; int8 latents 45 x 177 per chunk = 63.9 kbps.
    # encoder = (transform bins, MLP width, latent); decoder = (MLP width,)
    # Its pooling head turns one second of latents into a 128-d vector for search (what the
    # second holds, 128 channels, and when, 64 channels in 6 slots); the contrastive weight
    # is small, so the encoder bends towards robust vectors only as far as reconstruction
    # allows (the head itself learns at full speed under Adam).
    "default": CodecConfig("default", frame=250, arch="lapped", encoder=(250, 512, 45), decoder=(512,),
                           overlap=True, activation="gelu", latent_bits=8, batch_size=64,
                           head=(128, 128, 64), contrastive=0.002,
                           description="lapped transform, int8 latents at 63.9 kbps, 128-d search vectors"),
    # Trains in seconds on a CPU; for tests only.
    "tiny": CodecConfig("tiny", frame=100, arch="lapped", encoder=(100, 32, 10), decoder=(32,), chunk=4000,
                        sample_rate=8000, overlap=True, activation="gelu", latent_bits=8, head=(16, 16, 8),
                        contrastive=0.1,
                        batch_size=8, lr=3e-3, description="test-sized codec"),
}

DEFAULT_PRESET = "default"


def preset(name: str) -> CodecConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
