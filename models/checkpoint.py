"""Save and load codec checkpoints: the config dict beside the weights (nanoGPT-style)."""
import hashlib
from pathlib import Path

import torch

from .codec import Codec, build_codec
from .config import CodecConfig

FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"


class CheckpointError(Exception):
    """A checkpoint that cannot be loaded: missing, corrupt or of another format."""


def save_checkpoint(path: Path, model: Codec, *, optimizer=None, state: dict | None = None) -> None:
    """Write `model` (and optionally the optimizer and training state) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format_version": FORMAT_VERSION,
        "config": model.cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "state": state or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # a kill mid-save never leaves a half-written checkpoint


def read_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable checkpoint ({err.__class__.__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a muzip-search checkpoint of format {FORMAT_VERSION}")
    return ckpt


def load_codec(path: Path, device: str | torch.device = "cpu") -> Codec:
    """Rebuild the codec from the config stored in the checkpoint and load its weights."""
    ckpt = read_checkpoint(path)
    model = build_codec(CodecConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def shipped_checkpoint(name: str) -> Path:
    """Path of a checkpoint shipped with the package (`m3`, `default`)."""
    path = WEIGHTS_DIR / f"{name}.pt"
    if not path.is_file():
        shipped = sorted(p.stem for p in WEIGHTS_DIR.glob("*.pt"))
        raise CheckpointError(f"no shipped checkpoint {name!r}; shipped: {', '.join(shipped) or 'none'}")
    return path


def model_checksum(model: Codec) -> str:
    """SHA-256 of the config and weights: identifies the exact model an index was built with."""
    h = hashlib.sha256(repr(sorted(model.cfg.to_dict().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
