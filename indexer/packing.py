"""Arrays stored as blocks compressed one by one (zstd), so that any stretch of a track reads and inflates only
the blocks that hold it.

A packed array `[N, ...]` is one blob: the byte offsets of its blocks (uint32, little-endian, `blocks + 1` of them,
from the blob's start), then the blocks, each `block` rows of the array (the last one fewer) compressed alone.
With `delta`, each block holds its first row, then each row less the one before (modulo 256, for uint8): a
spectrogram's frames change little from one to the next, so the differences compress further.

On the benchmark's music (BENCHMARKS.md): int8 latents, one 1-s chunk per block, to 0.60 of their size (63.9 ->
38 kbps), packed at about 250 MB/s and inflated in about 18 µs per chunk on one core; band energies, 100 frames
(1 s) per block with `delta`, to 0.61 (0.78 without `delta`). zstd at level 1: its higher levels took 4-6 times
as long for under 1 % less, and zlib's 0.60-0.61 for latents took four times as long.
"""
import math

import numpy as np
import torch
import zstandard

LEVEL = 1
_OFFSET = np.dtype("<u4")
_TORCH = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8}


def pack(a: np.ndarray, block: int, delta: bool = False) -> bytes:
    """Array `a` `[N, ...]` (int8 or uint8) as a packed blob of blocks of `block` rows."""
    a = np.ascontiguousarray(a)
    z = zstandard.ZstdCompressor(level=LEVEL)
    blocks = [z.compress(_deltas(a[i:i + block]) if delta else a[i:i + block].tobytes())
              for i in range(0, len(a), block)]
    sizes = np.array([0] + [len(b) for b in blocks], np.int64)
    offsets = _OFFSET.itemsize * (len(blocks) + 1) + np.cumsum(sizes)
    if offsets[-1] >= 1 << 32:
        raise ValueError("a packed array must stay under 4 GiB")
    return offsets.astype(_OFFSET).tobytes() + b"".join(blocks)


def read_rows(read, first: int, last: int, block: int, dtype, shape: tuple[int, ...],
              delta: bool = False) -> np.ndarray:
    """Rows `first` to `last` (exclusive) `[n, *shape]` of a packed blob of blocks of `block` rows, through
    `read(offset, size) -> bytes`: the offsets of the blocks that hold them, then those blocks, and only those.
    ValueError where the bytes read are not such blocks (a row replaced between the two reads)."""
    b0, b1 = first // block, -(-last // block)
    offsets = read(_OFFSET.itemsize * b0, _OFFSET.itemsize * (b1 - b0 + 1))
    at = np.frombuffer(offsets, _OFFSET).tolist()
    if len(at) != b1 - b0 + 1:
        raise ValueError("a packed blob shorter than its offsets")
    rows = _unpack(at, read(at[0], at[-1] - at[0]), dtype, shape, delta)
    return rows[first - b0 * block:last - b0 * block]


def _unpack(at: list[int], data: bytes, dtype, shape: tuple[int, ...], delta: bool) -> np.ndarray:
    """The rows of consecutive blocks at byte offsets `at` of a packed blob, `data` its bytes from `at[0]` to
    `at[-1]`."""
    view, z = memoryview(data), zstandard.ZstdDecompressor()
    row = math.prod(shape) * np.dtype(dtype).itemsize
    try:
        parts = [z.decompress(view[a - at[0]:b - at[0]]) for a, b in zip(at, at[1:])]
    except zstandard.ZstdError as err:
        raise ValueError(f"not packed blocks: {err}") from None
    counts = [len(p) // row for p in parts]
    if any(len(p) != n * row for p, n in zip(parts, counts)):
        raise ValueError("packed blocks of another shape")
    if not delta or not parts:
        return np.frombuffer(b"".join(parts), dtype).reshape(-1, *shape)
    # each block's running sum, all blocks at once (padded to one length: only the array's last may be shorter).
    # torch's: numpy's cumsum took 38 µs for 6 blocks of 50 frames of 48 bands, torch's 16 µs
    size = counts[0]
    if any(n != size for n in counts[:-1]):
        raise ValueError("packed blocks of unequal lengths")
    n = sum(counts)
    padded = bytearray(len(parts) * size * row)
    padded[:n * row] = b"".join(parts)
    t = torch.frombuffer(padded, dtype=_TORCH[np.dtype(dtype)]).view(len(parts), size, -1)
    return torch.cumsum(t, 1, dtype=t.dtype).numpy().reshape(-1, *shape)[:n]


def _deltas(a: np.ndarray) -> bytes:
    """Rows of `a` after its first as differences from the row before (wrapping, so that a running sum in the
    same dtype undoes them)."""
    d = a.copy()
    np.subtract(a[1:], a[:-1], out=d[1:])
    return d.tobytes()
