"""The neural codec: nets, configs, checkpoints and the training loop over tensors."""
from .checkpoint import CheckpointError, load_codec, model_checksum, save_checkpoint, shipped_checkpoint
from .codec import Codec, build_codec
from .config import DEFAULT_PRESET, PRESETS, CodecConfig, preset
from .metrics import reconstruction_metrics

__all__ = ["Codec", "build_codec", "CodecConfig", "PRESETS", "DEFAULT_PRESET", "preset", "save_checkpoint", "load_codec",
           "shipped_checkpoint", "model_checksum", "CheckpointError", "reconstruction_metrics"]
