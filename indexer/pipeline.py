"""The indexing pipeline as plain stage functions: decode -> encode -> pool -> write.

Each stage works on one file or a batch and holds no global state, so a cluster
runner (Ray) can map them over shards; `run` is the local runner: decoding in
worker processes, encoding in batches on the model's device, and a single
writer to the catalog.
"""
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import Codec, compute_dtype

from .audio import AudioError, info, load, pcm16_to_float, quiet_gain, raise_quiet, to_pcm16
from .audio import chunks as cut_chunks
from .catalog import Catalog, TrackRecord, pack_record
from .decode import parallel_map
from .encode import encode_chunks, encode_file
from .metadata import fma_id
from .vectors import (FrameGrid, StoredEnergiesStream, VectorConfig, stored_energies, track_vector,
                      window_vectors)

STREAM_OVER_S = 600.0  # longer files are streamed through the encoder instead of decoded whole


@dataclass
class Decoded:
    """A file after the decode stage: its facts, and its audio (or the reason it has none)."""
    path: Path
    size: int
    mtime: float
    hash: str
    sample_rate: int | None = None
    channels: int | None = None
    seconds: float | None = None
    audio: np.ndarray | None = None   # int16 mono at the model's rate, times `gain`; None if failed or streamed
    gain: float = 1.0                 # what the audio was raised by (`audio.raise_quiet`: a quiet track; the catalog
                                      # stores it, and reconstruction undoes it); a streamed file's set as it streams
    spectrogram: np.ndarray | None = None  # its band energies as the index stores them (`decode_stage` with `spec`,
                                           # or else `encode_stage`, sets them)
    stream: bool = False              # too long to hold: the encode stage streams it from disk
    error: AudioError | None = None
    decode_s: float = 0.0             # CPU seconds the decode stage took (in its worker)


def file_hash(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def decode_stage(path: Path, sample_rate: int, min_seconds: float, spec: VectorConfig | None = None) -> Decoded:
    """Decode one file to int16 mono at `sample_rate`; never raises for bad audio. With `spec`, the index's
    `VectorConfig`, its band energies as the index stores them too (`stored_energies`, on the CPU), as
    `encode_stage` would otherwise compute them: where the encoder runs on the CPU, the decoding processes take
    that work off its process."""
    path = Path(path)
    t0 = time.process_time()
    try:
        st = path.stat()
        d = Decoded(path, st.st_size, st.st_mtime, file_hash(path))
    except OSError as err:
        return Decoded(path, 0, 0.0, "", error=AudioError(path, "unreadable", err.strerror or str(err)))
    try:
        meta = info(path)
        d.sample_rate, d.channels, d.seconds = meta.sample_rate, meta.channels, meta.seconds
        if (meta.seconds or 0) > STREAM_OVER_S:
            d.stream = True
            return d
        x = load(path, sample_rate, min_seconds=min_seconds)
        d.seconds = len(x) / sample_rate
        x, d.gain = raise_quiet(x)
        d.audio = to_pcm16(x)
        if spec is not None and spec.stored_spec:  # of the samples the encoder gets, as `encode_stage` does
            d.spectrogram = stored_energies(pcm16_to_float(d.audio), sample_rate, spec)
    except AudioError as err:
        d.error = err
    d.decode_s = time.process_time() - t0
    return d


def encode_stage(model: Codec, items: list[Decoded], batch: int = 64,
                 spec: VectorConfig | None = None) -> list[tuple[np.ndarray, int] | None]:
    """Latents `[N, C, F]` (int8) and sample count for each decoded item, one batched encoder pass, computed in
    `compute_dtype(model)` (bfloat16 on a CPU with AMX).

    With `spec`, the index's `VectorConfig`, each item's band energies as the index stores them go in its
    `spectrogram` (`stored_energies` of the samples the encoder gets), computed on the model's device too: on a
    GPU, the CPU's cores are left to decoding. Streamed (long) files are encoded block by block from disk, their
    band energies worked out in the same pass; failed ones give None.
    """
    cfg, dtype = model.cfg, compute_dtype(model)
    device = next(model.parameters()).device
    stored = spec is not None and spec.stored_spec
    out: list = [None] * len(items)
    rows, spans, start = [], [], 0
    for i, d in enumerate(items):
        if d.error is not None:
            continue
        if d.stream:
            try:
                out[i] = encode_streamed(model, d, batch, dtype, spec if stored else None, device)
            except AudioError as err:
                d.error = err
            continue
        x = pcm16_to_float(d.audio)
        if stored and d.spectrogram is None:  # (not worked out in the decode stage)
            d.spectrogram = stored_energies(x, cfg.sample_rate, spec, device)
        c = cut_chunks(x, cfg.chunk)
        spans.append((i, start, len(c), len(d.audio)))
        rows.append(c)
        start += len(c)
    if rows:
        z = encode_chunks(model, np.concatenate(rows), batch, dtype).numpy()
        for i, start, n, samples in spans:
            out[i] = (z[start:start + n], samples)
    return out


def encode_streamed(model: Codec, d: Decoded, batch: int, dtype: torch.dtype, spec: VectorConfig | None,
                    device: torch.device) -> tuple[np.ndarray, int]:
    """`encode_stage` of a streamed (long) file: (latents, samples), its band energies in `d.spectrogram` where
    `spec` asks for them. Its peak is measured as it streams: a quiet file (`audio.raise_quiet`) is streamed again,
    raised, as a quiet file decoded whole is raised before it is encoded (`d.gain`); another costs nothing more."""
    def streamed(gain: float) -> tuple[torch.Tensor, int, float, np.ndarray | None]:
        energies = StoredEnergiesStream(model.cfg.sample_rate, spec, device) if spec is not None else None
        peak = _Peak(energies)
        z, n = encode_file(model, d.path, batch, dtype, peak, gain)
        return z, n, peak.value, None if energies is None else energies.result()

    z, n, peak, d.spectrogram = streamed(1.0)
    d.gain = quiet_gain(peak)
    if d.gain != 1.0:
        z, n, _, d.spectrogram = streamed(d.gain)
    d.seconds = n / model.cfg.sample_rate
    return z.numpy(), n


class _Peak:
    """`encode_file`'s `also`: the peak of the samples it gets, which it passes on to `then`."""

    def __init__(self, then=None):
        self.value, self.then = 0.0, then

    def add(self, x: np.ndarray) -> None:
        if len(x):
            self.value = max(self.value, float(np.abs(x).max()))
        if self.then is not None:
            self.then.add(x)


def pool_stage(model: Codec, latents: np.ndarray, samples: int, cfg: VectorConfig,
               spectrogram: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A track's latents and stored band energies -> (window vectors `[W, D]` every `cfg.hop_s` from the pooling
    head, whole-track vector)."""
    grid = FrameGrid.of(model.cfg)
    frames = grid.frames(samples, model.cfg.sample_rate)
    windows, _ = window_vectors(model, latents, grid, cfg.hop_s, frames)
    return windows, track_vector(windows, spectrogram, latents, grid, frames, cfg)


def record(d: Decoded, encoded: tuple[np.ndarray, int] | None, model: Codec, cfg: VectorConfig,
           meta: dict | None, pack: bool = True) -> TrackRecord:
    """The catalog record of one file (pooling its latents when it was encoded, and packing what the catalog
    stores packed: not for a catalog made before arrays were packed, `Catalog.packs` False, which stores them raw)."""
    m = meta or {}
    rec = TrackRecord(path=str(d.path), size=d.size, mtime=d.mtime, hash=d.hash, status="failed",
                      sample_rate=d.sample_rate, channels=d.channels, seconds=d.seconds,
                      wanted_id=fma_id(d.path), **{k: m.get(k) for k in ("title", "artist", "album", "genre")})
    if d.error is not None or encoded is None:
        rec.reason = (d.error.reason + (f" ({d.error.detail})" if d.error.detail else "")) if d.error else "not encoded"
        return rec
    latents, samples = encoded
    if _is_silent(latents, model):
        rec.reason = "silent"
        return rec
    rec.windows, rec.whole = pool_stage(model, latents, samples, cfg, d.spectrogram)
    rec.status, rec.latents, rec.samples, rec.spectrogram = "indexed", latents, samples, d.spectrogram
    rec.gain = d.gain
    if pack:
        pack_record(rec)  # here, not in the single writer
    return rec


def _is_silent(latents: np.ndarray, model: Codec) -> bool:
    # silence, nothing a query could ever match: every chunk's latents those of a chunk of digital silence (all
    # zero for an untrained codec; a trained one's biases make them something else), so that the codec stores
    # nothing but silence for it (the shipped codec: a file whose peaks are a step or two of 16 bits)
    tolerance = 0.0 if latents.dtype == np.int8 else 1e-6
    return bool(np.all(np.abs(latents.astype(np.float32) - _silence(model, compute_dtype(model))) <= tolerance))


@functools.lru_cache(maxsize=8)
def _silence(model: Codec, dtype: torch.dtype) -> np.ndarray:
    """The latents `[C, F]` of one chunk of digital silence, as `encode_stage` computes them."""
    return encode_chunks(model, np.zeros((1, model.cfg.chunk), np.float32), dtype=dtype).numpy()[0].astype(np.float32)


def write_stage(catalog: Catalog, rec: TrackRecord) -> int:
    """The single writer: one transaction per track."""
    return catalog.write(rec)


def decoded_stream(paths: list[Path], sample_rate: int, min_seconds: float, workers: int,
                   ahead: int | None = None, spec: VectorConfig | None = None) -> Iterator[Decoded]:
    """The decode stage over many files, in order, in `workers` processes, at most `ahead` files (default: 4 per
    worker) decoded or decoding past the one taken; with `spec` (and two workers or more), their band energies
    worked out there too (`decode_stage`)."""
    spec = spec if workers > 1 else None  # (one worker: decoding runs in this process)
    # a decoding process's torch work on one thread: each process has one core's share
    yield from parallel_map(_decode_args, [(p, sample_rate, min_seconds, spec) for p in paths], workers, ahead,
                            initializer=functools.partial(torch.set_num_threads, 1))


def _decode_args(a):
    return decode_stage(*a)


@dataclass
class RunSummary:
    indexed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    audio_seconds: float = 0.0
    decode_s: float = 0.0   # summed over decoding processes (CPU time)
    encode_s: float = 0.0   # encoder, in this process (wall time)
    write_s: float = 0.0    # pooling and catalog writes, in this process's writer thread (wall time, while the
                            # encoder works on the next batch)


def run(catalog: Catalog, model: Codec, paths: list[Path], cfg: VectorConfig, *, metadata: dict | None = None,
        workers: int | None = None, batch_files: int = 8,
        on_file: Callable[[Decoded, TrackRecord], None] | None = None) -> RunSummary:
    """Index `paths` into `catalog`: decode in workers, encode in batches, then pool and write one by one on a
    second thread (the single writer) while the next batch is encoded."""
    min_seconds = 1.0  # shorter than one second: nothing worth searching for
    summary = RunSummary()
    workers = workers or max(1, (os.cpu_count() or 1))
    pending: list[Decoded] = []

    writing: list[Future] = []  # the batch being pooled and written: one at most

    def flush():
        t0 = time.perf_counter()
        encoded = encode_stage(model, pending, spec=cfg)
        summary.encode_s += time.perf_counter() - t0
        wait()
        writing.append(writer.submit(write, list(pending), encoded))
        pending.clear()

    def write(items: list[Decoded], encoded: list):
        t1 = time.perf_counter()
        for d, e in zip(items, encoded):
            summary.decode_s += d.decode_s
            rec = record(d, e, model, cfg, (metadata or {}).get(fma_id(d.path)), catalog.packs)
            write_stage(catalog, rec)
            if rec.status == "indexed":
                summary.indexed += 1
                summary.audio_seconds += rec.seconds or 0.0
            else:
                summary.failed[rec.path] = rec.reason
            if on_file:
                on_file(d, rec)
        summary.write_s += time.perf_counter() - t1

    def wait():
        while writing:
            writing.pop().result()

    # two batches ahead: the workers decode the next while the encoder works on one. Where the encoder runs on the
    # CPU, the workers also work out the band energies the index stores (a third of this process's work on the
    # benchmark's 401 tracks, while decoding is the lighter share: BENCHMARKS.md, session 23); on a GPU, the device
    # does. And one batch behind, a second thread pools and writes (the single writer) while the encoder works on
    # the next: on 2 cores, about 9 % faster on the 401 tracks (8 runs of 9 in turn with the code before; BENCHMARKS.md,
    # session 24)
    on_cpu = next(model.parameters()).device.type == "cpu"
    # (on the way out with an error, or Ctrl-C, leaving the block waits for the batch being written)
    with ThreadPoolExecutor(1, "muzip-writer") as writer:
        for d in decoded_stream(paths, model.cfg.sample_rate, min_seconds, workers,
                                max(2 * batch_files, 4 * workers), cfg if on_cpu else None):
            pending.append(d)
            if len(pending) >= batch_files:
                flush()
        flush()
        wait()  # (its error, if any, raised here)
    return summary
