"""Whole signals and files through the codec, in batches of chunks.

`encode_signal`/`decode_latents`/`decode_span` work in memory; `encode_file` streams a file of
any length, so a 2-hour track is encoded in bounded memory.
"""
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from models import Codec

from .audio import chunks, stream


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def encode_chunks(model: Codec, x: np.ndarray, batch: int = 64, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`[N, chunk]` float32 -> stored latents `[N, C, F]` on the CPU; the encoder computes in `dtype`."""
    device = next(model.parameters()).device
    out = [model.encode(torch.from_numpy(x[i:i + batch]).to(device), dtype).cpu() for i in range(0, len(x), batch)]
    _sync(device)
    return torch.cat(out) if out else torch.zeros((0, *model.cfg.latent_shape))


def encode_signal(model: Codec, x: np.ndarray, batch: int = 64, only: np.ndarray | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mono `[T]` at the model's rate -> latents `[ceil(T / chunk), C, F]` (last chunk zero-padded); the
    encoder computes in `dtype`.

    With `only` (chunk numbers), just those chunks are encoded, the others' latents left 0: a chunk is
    encoded on its own, so theirs are the same as in the whole signal's.
    """
    size, n = model.cfg.chunk, max(1, -(-len(x) // model.cfg.chunk))
    only = None if only is None else np.unique(only)
    if only is None or len(only) == n:
        return encode_chunks(model, chunks(x, size), batch, dtype)
    z = encode_chunks(model, np.stack([chunks(x[i * size:(i + 1) * size], size)[0] for i in only]), batch, dtype)
    out = z.new_zeros((n, *z.shape[1:]))
    out[torch.from_numpy(only)] = z
    return out


def decode_latents(model: Codec, z: torch.Tensor, length: int | None = None, batch: int = 64) -> np.ndarray:
    """Latents `[N, C, F]` -> mono `[N * chunk]` float32 (cut to `length` when given)."""
    return decode_span(model, z, 0, length, batch)


@torch.no_grad()
def decode_span(model: Codec, z: torch.Tensor, start: int = 0, end: int | None = None,
                batch: int = 64, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Samples [start, end) of latents `[N, C, F]` decoded end to end (`[N * chunk]`; default: to the end),
    `batch` chunks at a time, decoding only the latent frames that reach them; the decoder computes in
    `dtype`."""
    chunk = model.cfg.chunk
    end = len(z) * chunk if end is None else min(end, len(z) * chunk)
    out = []
    for i in range(max(start, 0) // chunk // batch * batch, len(z), batch):
        lo, hi = i * chunk, min(i + batch, len(z)) * chunk
        if lo >= end:
            break
        out.append(_one_pass(model, z[i:i + batch], [(max(start, lo) - lo, min(end, hi) - lo)], dtype)[0])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def decode_spans(model: Codec, z: torch.Tensor, spans: list[tuple[int, int]], batch: int = 64,
                 dtype: torch.dtype = torch.float32) -> list[np.ndarray]:
    """`decode_span` of each (start, end) of `spans` of latents `[N, C, F]`: all in one pass through the decoder
    (`Codec.decode_spans`) where the latents are `batch` chunks at most, else each on its own."""
    if len(z) <= batch:
        return _one_pass(model, z, spans, dtype)
    return [decode_span(model, z, a, b, batch, dtype) for a, b in spans]


def _one_pass(model: Codec, z: torch.Tensor, spans: list[tuple[int, int]], dtype: torch.dtype) -> list[np.ndarray]:
    device = next(model.parameters()).device
    if len(spans) == 1:
        out = [model.decode_span(z.to(device), *spans[0], dtype)]
    else:
        out = model.decode_spans(z.to(device), spans, dtype)
    _sync(device)
    return [y.cpu().numpy() for y in out]


def chunk_stream(path: Path, sample_rate: int, chunk: int) -> Iterator[tuple[np.ndarray, int]]:
    """Decode a file as consecutive `([n, chunk] block, real samples in it)`, in bounded memory.

    Only the last block is zero-padded.
    """
    carry = np.zeros(0, np.float32)
    for block in stream(path, sample_rate):
        carry = np.concatenate([carry, block])
        n = len(carry) // chunk
        if n:
            yield carry[:n * chunk].reshape(n, chunk), n * chunk
            carry = carry[n * chunk:]
    if len(carry):
        yield chunks(carry, chunk), len(carry)


def read_ahead(items: Iterable, n: int = 2) -> Iterator:
    """`items`, produced on a second thread up to `n` ahead of the caller (an exception there is raised here, in
    its turn). Where the caller stops early, the producer stops at its next item."""
    q: queue.Queue = queue.Queue(n)
    stop, end = threading.Event(), object()

    def produce():
        it = iter(items)
        try:
            for x in it:
                q.put((x, None))
                if stop.is_set():
                    break
            q.put((end, None))
        except BaseException as err:  # noqa: BLE001 (handed to the caller)
            q.put((end, err))
        finally:
            getattr(it, "close", lambda: None)()

    thread = threading.Thread(target=produce, name="muzip-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            x, err = q.get()
            if x is end:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        while thread.is_alive():  # (a producer blocked on a full queue takes its next put, then sees `stop`)
            try:
                q.get(timeout=0.01)
            except queue.Empty:
                pass


def encode_file(model: Codec, path, batch: int = 64, dtype: torch.dtype = torch.float32,
                also=None, gain: float = 1.0) -> tuple[torch.Tensor, int]:
    """Stream a file through the encoder (computing in `dtype`), its samples times `gain`: (latents `[N, C, F]`,
    number of samples at the model's rate). `also`: something with an `add(samples)` method that gets the same
    samples, block by block (`vectors.StoredEnergiesStream`).

    The file is decoded (and `also` fed) on a second thread, a block or two ahead of the encoder, so the two
    overlap: a 2-hour MP3 was indexed at 208-212x real time, 218-227x so, on 2 CPU cores; on a GPU the encoder
    waited for the decoder.
    """
    def blocks():
        for block, valid in chunk_stream(Path(path), model.cfg.sample_rate, model.cfg.chunk):
            if gain != 1.0:
                block = block * np.float32(gain)
            if also is not None:
                also.add(block.reshape(-1)[:valid])
            yield block, valid

    parts, n = [], 0
    for block, valid in read_ahead(blocks()):
        parts.append(encode_chunks(model, block, batch, dtype))
        n += valid
    return torch.cat(parts), n
