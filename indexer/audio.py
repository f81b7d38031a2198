"""Audio in: decode any common format, downmix to mono, resample, stream in blocks.

soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, Opus, MP3, AIFF...) decodes first;
anything it cannot open goes through audioread (ffmpeg, GStreamer or the standard
library, whichever is installed). Every failure is an `AudioError` with a short
`reason` a caller can report and count.
"""
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

AUDIO_EXTENSIONS = frozenset(
    ".mp3 .wav .flac .ogg .oga .opus .m4a .aac .mp4 .aif .aiff .aifc .au .wma .caf .w64 .rf64".split())

# reasons an AudioError carries; callers count and report failures by these
CORRUPT, TRUNCATED, EMPTY, NOT_AUDIO, TOO_SHORT, UNREADABLE, UNSUPPORTED = (
    "corrupt", "truncated", "empty", "not audio", "too short", "unreadable", "unsupported")

_BLOCK_SECONDS = 30.0  # decoding block: bounds memory for any track length
_TRUNCATED_FRACTION = 0.95  # fewer frames than the header announces -> truncated


class AudioError(Exception):
    """A file that cannot be used as audio, with one of the module's reasons."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = Path(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # rebuilt whole when it crosses from a decoding process
        return AudioError, (self.path, self.reason, self.detail)


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    seconds: float | None  # None where the decoder cannot tell before decoding
    decoder: str


@contextmanager
def _decoder_quiet():
    """Hold back what a C decoder prints itself for the length of one call: libsndfile's mpg123 writes notes
    on damaged MP3s ("Illegal Audio-MPEG-Header", "Xing stream size off") to the process's stderr, where they
    break into a progress bar and name no file. The file's `AudioError`, or its decoded audio, says what
    matters. Decoding runs in its own processes, or in a thread that prints nothing meanwhile."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no stderr to hold back
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _sniff(path: Path) -> str:
    """Why a file no decoder could open failed: corrupt audio, no decoder for it, or not audio at all."""
    head = path.open("rb").read(512)
    if head[4:8] == b"ftyp":
        return UNSUPPORTED  # MP4/M4A/AAC: audioread needs ffmpeg or GStreamer for these
    looks_audio = (head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)
                   or head[:4] in (b"RIFF", b"fLaC", b"OggS", b"FORM", b".snd"))
    try:
        head.decode("utf-8")
        is_text = True
    except UnicodeDecodeError:
        is_text = False
    if looks_audio or (not is_text and path.suffix.lower() in AUDIO_EXTENSIONS):
        return CORRUPT
    return NOT_AUDIO


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
        with path.open("rb"):
            pass
    except FileNotFoundError:
        raise AudioError(path, UNREADABLE, "no such file") from None
    except OSError as err:
        raise AudioError(path, UNREADABLE, err.strerror or str(err)) from None
    if not path.is_file():
        raise AudioError(path, UNREADABLE, "not a regular file")
    if size == 0:
        raise AudioError(path, EMPTY, "0 bytes")


def info(path) -> AudioInfo:
    """Sample rate, channels and (where known) duration, without decoding the audio."""
    path = Path(path)
    _check_file(path)
    try:
        with _decoder_quiet():
            i = sf.info(str(path))
        return AudioInfo(path, i.samplerate, i.channels, i.frames / i.samplerate, "soundfile")
    except (sf.LibsndfileError, RuntimeError, TypeError):
        pass
    import audioread
    try:
        with audioread.audio_open(str(path)) as f:
            return AudioInfo(path, f.samplerate, f.channels, f.duration or None, "audioread")
    except Exception:
        reason = _sniff(path)
        detail = {UNSUPPORTED: "no decoder for this format; install ffmpeg",
                  CORRUPT: "no decoder could read it"}.get(reason, "")
        raise AudioError(path, reason, detail) from None


def _blocks_soundfile(path: Path, block: int) -> Iterator[np.ndarray]:
    with _decoder_quiet():
        f = sf.SoundFile(str(path))
    with f:
        expected, got = f.frames, 0
        while True:
            with _decoder_quiet():
                x = f.read(block, dtype="float32", always_2d=True)  # [T, C]
            if not len(x):
                break
            got += len(x)
            yield x
    if f.format == "MP3" and expected > 0 and got < _TRUNCATED_FRACTION * expected:
        raise AudioError(path, TRUNCATED, f"{got / f.samplerate:.1f} s of {expected / f.samplerate:.1f} s")


def _blocks_audioread(path: Path, block: int) -> Iterator[np.ndarray]:
    import audioread
    with audioread.audio_open(str(path)) as f:
        channels, pending = f.channels, []
        for buf in f:
            x = np.frombuffer(buf, dtype="<i2").astype(np.float32) / 32768.0
            pending.append(x.reshape(-1, channels))
            if sum(len(p) for p in pending) >= block:
                yield np.concatenate(pending)
                pending = []
        if pending:
            yield np.concatenate(pending)


PCM16_SCALE = 32768.0  # libsndfile's scale: 16-bit sources round-trip exactly


def to_pcm16(x: np.ndarray) -> np.ndarray:
    """float32 `[T]` in [-1, 1] -> int16, as libsndfile writes 16-bit PCM (half the memory of float32)."""
    return np.clip(np.round(x * PCM16_SCALE), -32768, 32767).astype(np.int16)


def pcm16_to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / PCM16_SCALE


# music recorded or mastered quietly keeps little in the codec's int8 latents, so its vectors point nowhere: the
# benchmark's clips 30 dB down were found 2-4 % of the time (BENCHMARKS.md, session 24). A signal whose peak is under
# QUIET_DB (dBFS) is raised to a peak of LIFT_DB, music's own level, before it is encoded: a quiet track when it is
# indexed (its gain stored, which reconstruction undoes), a quiet clip when it is not found as it is. Under SILENT_DB
# nothing is raised: a file's dither or hiss, not music
QUIET_DB, LIFT_DB, SILENT_DB = -15.0, -3.0, -60.0


def raise_quiet(x: np.ndarray) -> tuple[np.ndarray, float]:
    """(Signal `x` raised to a peak of `LIFT_DB` where its peak lies between `SILENT_DB` and `QUIET_DB`, else `x`
    itself; the gain, 1.0 where it is not raised)."""
    gain = quiet_gain(float(np.abs(x).max()) if len(x) else 0.0)
    return (x, gain) if gain == 1.0 else (x * np.float32(gain), gain)


def quiet_gain(peak: float) -> float:
    """What `raise_quiet` raises a signal of this `peak` (linear) by: 1.0 where it is left as it is."""
    if not 10 ** (SILENT_DB / 20) <= peak < 10 ** (QUIET_DB / 20):
        return 1.0
    return 10 ** (LIFT_DB / 20) / peak


def to_mono(x: np.ndarray) -> np.ndarray:
    """`[T, C]` -> `[T]`: the mean of the channels, the same to the bit as `x.mean(axis=1)`, summed channel by
    channel: numpy's mean over an axis of 2 took 18 ms for 30 s of stereo, a third of decoding an MP3."""
    if x.ndim != 2:
        return x.astype(np.float32, copy=False)
    y = x[:, 0].astype(np.float32)
    for c in range(1, x.shape[1]):
        y += x[:, c]
    y /= np.float32(x.shape[1])
    return y


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample a whole mono signal `[T]` (soxr, high quality)."""
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="HQ").astype(np.float32, copy=False)


def stream(path, sample_rate: int, block_seconds: float = _BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Decode `path` as mono float32 blocks `[T]` at `sample_rate`, in bounded memory.

    Raises AudioError (during iteration too) for anything that is not usable audio.
    """
    path = Path(path)
    meta = info(path)
    block = max(1, int(block_seconds * meta.sample_rate))
    blocks = _blocks_soundfile if meta.decoder == "soundfile" else _blocks_audioread
    rs = None if meta.sample_rate == sample_rate else soxr.ResampleStream(
        meta.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    total = 0
    try:
        for x in blocks(path, block):
            y = to_mono(x)
            if rs is not None:
                y = rs.resample_chunk(y)
            total += len(y)
            if len(y):
                yield y
        if rs is not None:
            tail = rs.resample_chunk(np.zeros(0, np.float32), last=True)
            total += len(tail)
            if len(tail):
                yield tail
    except AudioError:
        raise
    except Exception as err:  # a decoder giving up part-way through the stream
        raise AudioError(path, CORRUPT, f"{type(err).__name__} after {total / sample_rate:.1f} s") from None
    if total == 0:
        raise AudioError(path, EMPTY, "no audio frames")


def load(path, sample_rate: int, min_seconds: float = 0.0, max_seconds: float | None = None) -> np.ndarray:
    """Decode a whole file (or its first `max_seconds`) as mono float32 `[T]` at `sample_rate`."""
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    parts, total = [], 0
    for y in stream(path, sample_rate):
        parts.append(y)
        total += len(y)
        if limit is not None and total >= limit:
            break
    x = np.concatenate(parts)[:limit]
    if len(x) < min_seconds * sample_rate:
        raise AudioError(path, TOO_SHORT, f"{len(x) / sample_rate:.2f} s, the minimum is {min_seconds:g} s")
    return x


def chunks(x: np.ndarray, size: int) -> np.ndarray:
    """Cut `[T]` into `[N, size]`, zero-padding the last chunk; N = ceil(T / size)."""
    n = max(1, -(-len(x) // size))
    out = np.zeros(n * size, dtype=np.float32)
    out[:len(x)] = x
    return out.reshape(n, size)
