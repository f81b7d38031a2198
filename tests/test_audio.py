import os

import numpy as np
import pytest
import soundfile as sf

from indexer import audio
from indexer.audio import AudioError, chunks, load, stream
from indexer.collection import find_audio, split_by_track

from .conftest import sine_mix, write_song


@pytest.mark.parametrize("ext,kw", [("wav", {}), ("flac", {}), ("ogg", {}), ("mp3", {}),
                                    ("opus", {"format": "OGG", "subtype": "OPUS"})])
def test_decodes_each_format_to_mono_at_the_model_rate(tmp_path, ext, kw):
    sr = 48000 if ext == "opus" else 22050
    path = write_song(tmp_path / f"a.{ext}", seconds=1.5, sr=sr, channels=2, **kw)
    x = load(path, 44100)
    assert x.dtype == np.float32 and x.ndim == 1
    # lossy codecs add a little priming delay; lengths stay within 50 ms
    assert abs(len(x) - int(1.5 * 44100)) < 0.05 * 44100
    assert 0.15 < np.abs(x).max() < 0.4


def test_resampling_keeps_length_and_pitch():
    t = np.arange(48000) / 48000
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = audio.resample(x, 48000, 44100)
    assert len(y) == 44100
    spectrum = np.abs(np.fft.rfft(y))
    assert int(np.argmax(spectrum)) == 1000  # 1-s signal: bin k is k Hz


def test_downmix_is_the_channel_mean(tmp_path):
    x = sine_mix(1.0, 8000)
    sf.write(tmp_path / "st.wav", np.stack([x, np.zeros_like(x)], axis=1), 8000, subtype="FLOAT")
    np.testing.assert_allclose(load(tmp_path / "st.wav", 8000), x / 2, atol=1e-7)


def test_long_files_stream_in_bounded_blocks(tmp_path):
    path = write_song(tmp_path / "long.flac", seconds=20.0, sr=8000)
    blocks = [len(b) for b in stream(path, 8000, block_seconds=2.0)]
    assert blocks == [16000] * 10


def test_audioread_fallback_decodes_what_soundfile_cannot(tmp_path, monkeypatch):
    path = write_song(tmp_path / "a.wav", seconds=1.0, sr=8000, subtype="PCM_16")
    direct = load(path, 8000)

    def refuse(*a, **k):
        raise sf.LibsndfileError(0, "refused for the test")
    monkeypatch.setattr(audio.sf, "info", refuse)
    via_audioread = load(path, 8000)
    assert audio.info(path).decoder == "audioread"
    np.testing.assert_allclose(via_audioread, direct, atol=1 / 32768)


def _mp3_bytes(tmp_path):
    return write_song(tmp_path / "good.mp3", seconds=3.0, sr=44100).read_bytes()


def bad_files(tmp_path):
    good = _mp3_bytes(tmp_path)
    files = {
        "empty.mp3": b"",
        "truncated.mp3": good[: len(good) // 3],
        "corrupt.mp3": np.random.default_rng(0).bytes(5000),
        "notes.wav": b"hello world, not a song " * 40,
        "song.m4a": b"\x00\x00\x00\x20ftypM4A " + b"\x00" * 400,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    write_song(tmp_path / "short.wav", seconds=0.3, sr=8000)
    return tmp_path


def test_each_bad_input_has_its_reason(tmp_path):
    d = bad_files(tmp_path)
    reasons = {}
    for name in ["empty.mp3", "truncated.mp3", "corrupt.mp3", "notes.wav", "song.m4a", "missing.mp3"]:
        with pytest.raises(AudioError) as err:
            load(d / name, 44100)
        reasons[name] = err.value.reason
    with pytest.raises(AudioError) as err:
        load(d / "short.wav", 8000, min_seconds=1.0)
    reasons["short.wav"] = err.value.reason
    assert reasons == {"empty.mp3": "empty", "truncated.mp3": "truncated", "corrupt.mp3": "corrupt",
                       "notes.wav": "not audio", "song.m4a": "unsupported", "missing.mp3": "unreadable",
                       "short.wav": "too short"}
    assert str(err.value) == f"{d / 'short.wav'}: too short (0.30 s, the minimum is 1 s)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    p = write_song(tmp_path / "locked.wav")
    p.chmod(0)
    with pytest.raises(AudioError) as err:
        load(p, 8000)
    assert err.value.reason == "unreadable"


def test_chunks_pad_the_last_one():
    c = chunks(np.ones(10, np.float32), 4)
    assert c.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]


def test_a_span_decodes_as_the_whole_signal_across_batches_of_chunks():
    import torch

    from indexer.encode import decode_latents, decode_span, decode_spans, encode_signal
    from models import build_codec, preset
    torch.manual_seed(0)
    m = build_codec(preset("tiny")).eval()
    z = encode_signal(m, sine_mix(2.5, 8000), batch=2)  # 5 chunks of 4,000
    whole = decode_latents(m, z)
    spans = [(0, None), (3000, 9000), (7999, 16001), (12000, 12000), (15000, 19000)]
    for a, b in spans:
        np.testing.assert_allclose(decode_span(m, z, a, b, batch=2), whole[a:b], atol=1e-6)
    # several spans: in one pass where the latents are a batch at most, else each across its batches
    for batch in (2, 5):
        for (a, b), y in zip(spans[1:], decode_spans(m, z, spans[1:], batch)):
            np.testing.assert_allclose(y, whole[a:b], atol=1e-6)


def test_collection_finds_audio_and_splits_by_track(music_dir):
    paths = find_audio(music_dir)
    assert [p.relative_to(music_dir).as_posix() for p in paths] == [
        "song 0.wav", "song 1.flac", "song 2.ogg", "song 3.wav", "song 4.flac", "sub/song 5.ogg"]
    train, val = split_by_track(paths, 0.34, seed=0)
    assert len(train) == 4 and len(val) == 2 and not set(train) & set(val)
    assert split_by_track(paths, 0.34, seed=0) == (train, val)  # reproducible


def test_decoders_print_nothing_of_their_own_on_bad_files(tmp_path, capfd):
    # libsndfile's mpg123 writes notes on damaged MP3s straight to the process's stderr, where they would break
    # into a progress bar without naming the file; the AudioError says what matters
    d = bad_files(tmp_path)
    (d / "notes.mp3").write_bytes(b"hello")
    for name in ["truncated.mp3", "corrupt.mp3", "notes.mp3"]:
        with pytest.raises(AudioError):
            load(d / name, 44100)
    assert capfd.readouterr().err == ""


def test_the_channels_mix_to_their_mean_to_the_bit():
    from indexer.audio import to_mono
    rng = np.random.default_rng(0)
    for channels in range(1, 7):
        x = (rng.standard_normal((10_001, channels)) * 0.3).astype(np.float32)
        assert np.array_equal(to_mono(x), x.mean(axis=1, dtype=np.float32)), channels
    mono = np.arange(5, dtype=np.float32)
    assert to_mono(mono) is mono


def _mark(job):  # a worker's job: leave a mark that it ran, give its square
    folder, k = job
    (folder / str(k)).touch()
    return k * k


def test_workers_run_only_so_far_ahead_of_the_caller_and_keep_the_order(tmp_path):
    # indexing's decoders outran its encoder and held a whole collection's decoded audio (1.3 GB for 401 tracks)
    from indexer.decode import parallel_map
    got = []
    for k, square in enumerate(parallel_map(_mark, [(tmp_path, k) for k in range(40)], workers=2, ahead=5)):
        started = len(list(tmp_path.iterdir()))
        assert started <= k + 1 + 5  # this result, and at most 5 more handed out
        got.append(square)
    assert got == [k * k for k in range(40)] and len(list(tmp_path.iterdir())) == 40


def test_read_ahead_keeps_the_order_raises_in_turn_and_stops_with_the_caller():
    import threading

    from indexer.encode import read_ahead
    assert list(read_ahead(iter(range(50)), 2)) == list(range(50))

    def broken():
        yield from (1, 2)
        raise AudioError("x.mp3", "corrupt", "after 2.0 s")
    got = []
    with pytest.raises(AudioError, match="after 2.0 s"):
        for x in read_ahead(broken()):
            got.append(x)
    assert got == [1, 2]  # what came before the error, first

    made, closed = [], threading.Event()

    def endless():
        try:
            for k in range(10_000):
                made.append(k)
                yield k
        finally:
            closed.set()  # (the producer closes its source)
    for x in read_ahead(endless(), 2):
        if x == 3:
            break  # the generator's end stops the producer at its next item
    assert closed.wait(5) and len(made) <= 8


def test_only_a_quiet_signal_is_raised_to_musics_level():
    from indexer.audio import raise_quiet
    x = np.array([0.01, -0.05, 0.02], np.float32)  # peak -26 dBFS
    y, gain = raise_quiet(x)
    assert gain == pytest.approx(10 ** (-3 / 20) / 0.05) and y.dtype == np.float32
    assert np.allclose(y, [0.1416, -0.7079, 0.2832], atol=1e-4)
    # at music's level already (-6 dBFS), digital silence, dither (-86 dBFS), nothing: as they are
    for z in (x * 10, np.zeros(3, np.float32), x / 1000, np.zeros(0, np.float32)):
        same, gain = raise_quiet(z)
        assert same is z and gain == 1.0
