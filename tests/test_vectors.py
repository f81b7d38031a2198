import numpy as np

from indexer.vectors import FrameGrid, VectorConfig, align, build_faiss, for_search, window_id


def test_exact_index_finds_every_stored_vector():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((500, 180)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = window_id(7, np.arange(500, dtype=np.int64))
    index = build_faiss(v, ids, VectorConfig())
    _, got = index.search(v[:20], 1)
    assert type(index).__name__ == "IndexIDMap2"
    assert got[:, 0].tolist() == ids[:20].tolist()


def test_a_searchable_exact_index_finds_a_querys_windows_nearest_neighbours_in_order():
    # for_search sends the inner products through BLAS: the neighbours are still exactly numpy's
    rng = np.random.default_rng(2)
    v = rng.standard_normal((3000, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    index = for_search(build_faiss(v, np.arange(3000, dtype=np.int64), VectorConfig()))
    queries = v[:16] + 0.5 * rng.standard_normal((16, 128)).astype(np.float32)  # a query's 16 windows
    sims, got = index.search(queries, 30)
    expected = np.argsort(-(queries @ v.T), axis=1, kind="stable")[:, :30]
    assert got.tolist() == expected.tolist()
    np.testing.assert_allclose(sims, np.take_along_axis(queries @ v.T, expected, axis=1), rtol=1e-5)


def test_past_the_threshold_the_index_is_approximate():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((4000, 180)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sq8 = build_faiss(v, np.arange(4000, dtype=np.int64), VectorConfig(exact_max=1000))
    assert (type(sq8).__name__, sq8.ntotal, sq8.nlist, sq8.nprobe, sq8.code_size) == (
        "IndexIVFScalarQuantizer", 4000, 252, 128, 180)  # nlist = 4 sqrt(n); a byte per dimension
    pq = build_faiss(v, np.arange(4000, dtype=np.int64), VectorConfig(exact_max=1000, approximate="ivf-pq"))
    assert (type(pq).__name__, pq.nlist, pq.pq.M) == ("IndexIVFPQ", 252, 60)  # 60 one-byte codes for 180 dims
    big = build_faiss(v, np.arange(4000, dtype=np.int64), VectorConfig(exact_max=1000, sq8_max=3000))
    assert type(big).__name__ == "IndexIVFPQ"  # past sq8_max, product codes: half the memory
    for index in (sq8, pq):
        _, got = index.search(v[:5], 10)
        assert got[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_an_index_built_before_the_scalar_quantizer_keeps_ivf_pq():
    assert VectorConfig.from_dict({"exact_max": 1000}).approximate == "ivf-pq"


def test_frames_are_counted_whole_at_any_sample_rate():
    from models import preset
    grid = FrameGrid.of(preset("default"))
    assert (grid.rate, grid.per_chunk) == (176.4, 176)  # 250-sample frames at 44.1 kHz, 44,000-sample chunks
    assert [grid.frames(n, sr) for n, sr in [(44100, 44100), (44249, 44100), (44250, 44100), (22050, 22050)]] == [
        176, 176, 177, 176]


def test_align_finds_the_lag_of_a_copy():
    rng = np.random.default_rng(2)
    track = rng.standard_normal((400, 6)).astype(np.float32)
    lag, score = align(track[123:173] * 3.0 + 1.0, track, 0, 350)  # gain and offset do not matter
    assert (lag, round(score, 6)) == (123, 1.0)


def test_align_scores_every_lag_as_the_correlation_computed_lag_by_lag():
    rng = np.random.default_rng(3)
    track = rng.standard_normal((300, 4))
    query = rng.standard_normal((70, 4))
    q = query - query.mean(axis=0)

    def corr(lag: int) -> float:
        w = track[lag:lag + 70]
        w = w - w.mean(axis=0)
        return float((w * q).sum() / np.sqrt((w * w).sum() * (q * q).sum()))

    for lo, hi in [(0, 230), (17, 40), (229, 230), (5, 5)]:  # the whole track; a span; the last lags; one lag
        scores = [corr(lag) for lag in range(lo, hi + 1)]
        lag, score = align(query, track, lo, hi)
        assert (lag, round(score, 9)) == (lo + int(np.argmax(scores)), round(max(scores), 9))
    assert align(query, track, 231, 300) == (-1, -1.0)  # past the end: the query fits nowhere


def test_fft_sizes_are_the_next_products_of_twos_and_threes():
    from indexer.vectors import fft_size
    assert [fft_size(n) for n in (1, 2, 5, 7, 9, 1000, 46700, 65537)] == [1, 2, 6, 8, 9, 1024, 49152, 69984]


def test_band_energies_sum_the_power_of_the_bins_in_each_band():
    import torch

    from indexer.vectors import band_energies
    sr, cfg = 44100, VectorConfig()
    x = np.random.default_rng(4).standard_normal(sr // 2).astype(np.float32)
    spec = torch.stft(torch.from_numpy(x), 2048, 441, window=torch.hann_window(2048), center=False,
                      return_complex=True).abs().numpy() ** 2  # [1025, T]
    freqs = np.fft.rfftfreq(2048, 1 / sr)
    edges = np.geomspace(150.0, 4000.0, cfg.spec_bands + 1)
    expected = np.stack([spec[(freqs >= a) & (freqs < b)].sum(axis=0) for a, b in zip(edges, edges[1:])], axis=1)
    got = band_energies(x, sr, cfg).numpy()
    assert got.shape == expected.shape == (len(range(0, len(x) - 2048 + 1, 441)), 48)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_stored_energies_are_within_a_quarter_db_and_streamed_blocks_give_the_same():
    from indexer.vectors import StoredEnergiesStream, band_energies, energies_of, stored_energies
    sr, cfg = 44100, VectorConfig()
    x = (np.random.default_rng(5).standard_normal(sr) * np.linspace(0.0, 0.5, sr) ** 2).astype(np.float32)
    x[:2500] = 0.0  # digital silence: the first frame
    exact = band_energies(x, sr, cfg).numpy()
    codes = stored_energies(x, sr, cfg)
    assert codes.dtype == np.uint8 and codes.shape == exact.shape == ((sr - 2048) // 441 + 1, 48)
    back = energies_of(codes).numpy()
    kept = codes > 0
    assert (codes[0] == 0).all() and kept.mean() > 0.9
    np.testing.assert_array_less(np.abs(10 * np.log10(back[kept] / exact[kept])), 0.2501)
    assert (back[~kept] == 0).all() and (exact[~kept] < 10 ** -5.975).all()  # under -59.75 dB: read back as 0
    stream = StoredEnergiesStream(sr, cfg)
    for part in np.split(x, [1000, 1001, 5000, 30000]):  # blocks shorter and longer than a frame
        stream.add(part)
    np.testing.assert_array_equal(stream.result(), codes)
    short = StoredEnergiesStream(sr, cfg)
    short.add(x[-1000:])  # under one frame: padded, as a whole signal would be
    np.testing.assert_array_equal(short.result(), stored_energies(x[-1000:], sr, cfg))


def test_an_older_manifest_keeps_its_behaviour_and_a_new_one_round_trips():
    new = VectorConfig()
    assert VectorConfig.from_dict(new.to_dict()) == new
    added = {"rescore_seconds": 0.0, "spec_floor": 0.0, "exact_spec": False, "verify_s": 0.0,
             "scan": 0, "scan_neighbours": 0, "room_decay_s": 0.0, "tie_score": 0.0,
             "same_music": 0.0, "stored_spec": False, "whole": "latent-energy"}  # their old behaviour
    old = {k: v for k, v in new.to_dict().items() if k not in added}
    assert VectorConfig.from_dict(old).to_dict() == {**new.to_dict(), **added}


def test_the_floor_keeps_a_spectrogram_gain_free_and_flattens_what_lies_under_it():
    from indexer.vectors import band_spectrogram
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(44100) * np.linspace(0.01, 1.0, 44100)).astype(np.float32)
    cfg = VectorConfig()
    a, b = band_spectrogram(x, 44100, cfg), band_spectrogram(0.1 * x, 44100, cfg)
    np.testing.assert_allclose(a - b, np.log(100.0), atol=1e-3)  # a gain shifts every value by its log
    bare = band_spectrogram(x, 44100, VectorConfig(spec_floor=0.0))
    assert a.min() >= np.log(np.exp(bare).mean()) - 1e-3  # nothing under the floor (the mean energy)


def test_a_rooms_decay_makes_each_frames_energy_ring_on():
    import torch

    from indexer.vectors import log_bands
    cfg = VectorConfig(spec_floor=0.0, spec_hop_s=0.01)
    energies = torch.zeros(8, 2)
    energies[1, 0] = 1.0  # one click in the first band
    dry = np.exp(log_bands(energies, cfg)) - 1e-8
    wet = np.exp(log_bands(energies, cfg, decay_s=0.01)) - 1e-8  # one frame's time constant: 6 frames kept
    w = np.exp(-np.arange(6.0)) / np.exp(-np.arange(6.0)).sum()
    np.testing.assert_allclose(dry[:, 0], [0, 1, 0, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(wet[:, 0], [0, *w, 0], atol=1e-6)
    np.testing.assert_allclose(wet[:, 1], 0, atol=1e-6)


def test_an_index_built_before_the_margin_keeps_its_threshold_on_the_score_alone():
    old = VectorConfig.from_dict({"min_score": 0.48, "short_extra": 0.1})
    assert (old.min_score, old.short_extra, old.margin_weight, old.score_floor) == (0.48, 0.1, 0.0, 0.0)


def test_an_index_built_before_coherence_keeps_its_scores_and_a_new_one_stores_its_band():
    import json
    before = VectorConfig.from_dict({k: v for k, v in VectorConfig(min_score=0.6).to_dict().items()
                                     if not k.startswith("coherence")})
    assert (before.coherence_weight, before.min_score) == (0.0, 0.6)
    now = VectorConfig.from_dict(json.loads(json.dumps(VectorConfig().to_dict())))  # as a manifest holds it
    assert now == VectorConfig() and (now.coherence_weight, now.coherence_hz, now.min_score) == (1.0, (200.0, 5000.0),
                                                                                               0.625)


def test_band_statistics_are_each_bands_mean_and_spread_of_floored_log_energy():
    from indexer.vectors import band_statistics, energies_of
    stored = np.array([[100, 0], [120, 40], [140, 40], [100, 200]], np.uint8)  # 4 frames, 2 bands; 0: silence
    e = energies_of(stored).numpy().astype(np.float64)
    logs = np.log(e + 0.01 * e.mean())  # floored 20 dB under the mean energy
    mean, spread = band_statistics(stored)
    np.testing.assert_allclose(mean, logs.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(spread, logs.std(axis=0), rtol=1e-9)


def test_a_whole_track_vector_weighs_its_windows_its_bands_colour_and_their_spread_alike():
    from indexer.vectors import band_statistics, track_vector, track_vector_dim
    cfg = VectorConfig()
    windows = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    stored = np.array([[100, 120, 140], [100, 140, 100]], np.uint8)  # 3 bands: the first does not move
    v = track_vector(windows, stored, None, None, 0, cfg)
    mean, spread = band_statistics(stored)
    part = lambda x: (x - x.mean()) / np.linalg.norm(x - x.mean())  # noqa: E731
    want = np.concatenate([[0.5 ** 0.5, 0.5 ** 0.5, 0.0], part(mean), part(spread)]) / 3 ** 0.5
    np.testing.assert_allclose(v, want, atol=1e-6)
    assert v.dtype == np.float32 and abs(np.linalg.norm(v) - 1.0) < 1e-6
    assert track_vector_dim(128, 45, cfg) == 128 + 2 * 48
    # an index made before keeps its kind: each latent channel's log energy, its mean and spread (2 x 45)
    old = VectorConfig.from_dict({})
    assert old.whole == "latent-energy" and track_vector_dim(128, 45, old) == 90


def test_the_share_a_filter_explains_is_high_for_a_room_recording_and_low_for_other_music():
    import torch

    from indexer.augment import add_noise, band_limit, reverb
    from indexer.coherence import band_bins, explained, frame_spectra
    sr, n = 44100, 8192
    rng = np.random.default_rng(0)
    x = rng.standard_normal(3 * sr).astype(np.float32)  # the track: 3 s of noise-like "music"
    other = rng.standard_normal(3 * sr).astype(np.float32)
    bins = band_bins(n, sr, 200.0, 5000.0)
    assert bins == slice(38, 929)
    start = sr // 2
    roomed = add_noise(band_limit(reverb(x, sr, 0.3, seed=1), sr), 10.0, seed=2)  # 10 dB SNR over all
    clip = frame_spectra(roomed[start:start + 2 * sr], n, bins)
    assert clip.shape == (20, 891) and clip.dtype == torch.complex64
    lags = [start - 441 * k for k in range(5)]  # the room's sound started a little before
    near = x + 0.5 * other  # a near repeat: the same part, another one over it

    def share(track):
        return round(explained(clip, track, lags, n, bins), 2)
    assert (share(x), share(near), share(other)) == (0.86, 0.7, 0.05)
    assert explained(clip, x, [len(x)], n, bins) == -1.0  # no start fits


def test_an_index_built_before_whole_re_scoring_re_scores_the_middle_2_s_first():
    before = VectorConfig.from_dict({k: v for k, v in VectorConfig().to_dict().items() if k != "rescore_whole_s"})
    assert (before.rescore_whole_s, before.rescore_max_s) == (0.0, 2.0) and VectorConfig().rescore_whole_s == 5.0
