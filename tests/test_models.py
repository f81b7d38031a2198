from dataclasses import replace

import numpy as np
import pytest
import torch

from models import PRESETS, build_codec, load_codec, model_checksum, preset, save_checkpoint, shipped_checkpoint
from models.train import ChunkSampler, Crops, fit, fixed_chunks, reconstruction_loss

from .conftest import sine_mix


def test_preset_shapes_round_trip():
    shapes = {}
    for name, cfg in PRESETS.items():
        model = build_codec(cfg).eval()
        x = torch.rand(3, cfg.chunk) * 2 - 1
        z = model.encode(x)
        y = model.decode(z)
        shapes[name] = (tuple(z.shape), str(z.dtype), tuple(y.shape))
    assert shapes == {
        "m1": ((3, 250, 44), "torch.float32", (3, 44000)),
        "m2": ((3, 125, 88), "torch.float32", (3, 44000)),
        "m3": ((3, 50, 220), "torch.float32", (3, 44000)),
        "default": ((3, 45, 177), "torch.int8", (3, 44000)),
        "tiny": ((3, 10, 41), "torch.int8", (3, 4000)),
    }


def test_paper_models_layers_as_published():
    # Model 3: Conv1D(200, k=200, s=200), 1x1 150, 100, 50 | 50, 100, 150, 200, linear 200
    m = build_codec(preset("m3"))
    convs = [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0])
             for c in m.modules() if isinstance(c, torch.nn.Conv1d)]
    assert convs == [(1, 200, 200, 200), (200, 150, 1, 1), (150, 100, 1, 1), (100, 50, 1, 1),
                     (50, 50, 1, 1), (50, 100, 1, 1), (100, 150, 1, 1), (150, 200, 1, 1), (200, 200, 1, 1)]
    acts = [type(a).__name__ for a in m.modules() if isinstance(a, (torch.nn.Tanh, torch.nn.GELU))]
    assert acts == ["Tanh"] * 8  # tanh everywhere but the linear last layer


def test_stored_bitrates():
    assert {n: round(c.kbps, 1) for n, c in PRESETS.items()} == {
        "m1": 352.8, "m2": 352.8, "m3": 352.8, "default": 63.9, "tiny": 6.6}


def test_lapped_transform_reconstructs_exactly_with_every_bin():
    # with all bins kept and float latents, the MDCT initialisation is a perfect-reconstruction codec
    # (for a quiet signal, where the tanh on the latents is linear)
    cfg = replace(preset("default"), encoder=(250, 64, 250), latent_bits=32)
    x = torch.from_numpy(sine_mix(3.0, 44100, amp=0.003)[:88000].reshape(2, 44000))
    with torch.no_grad():
        assert torch.allclose(build_codec(cfg)(x), x, atol=1e-6)


def test_a_span_decodes_like_the_whole_chunks_it_lies_in():
    # only the frames that reach the span are decoded, yet every sample is the whole decode's: for each
    # layout of windows (lapped; the paper's overlapped and frame-after-frame), at chunk edges and inside
    torch.manual_seed(0)
    spans = [(0, 4000), (1234, 2345), (3999, 4001), (3900, 12000), (7999, 8000), (5, 5), (11000, 12000), (0, 12000)]
    for cfg in [preset("tiny"), replace(preset("m3"), chunk=4000, overlap=True),
                replace(preset("m3"), chunk=4000)]:
        m = build_codec(cfg).eval()
        z = m.encode(torch.rand(3, 4000) * 2 - 1)
        whole = m.decode(z).reshape(-1)
        for a, b in spans:
            assert torch.allclose(m.decode_span(z, a, b), whole[a:b], atol=1e-6), (cfg.name, cfg.overlap, a, b)
        # several spans in one pass through the decoder, each as if alone
        for (a, b), y in zip(spans, m.decode_spans(z, spans)):
            assert torch.allclose(y, whole[a:b], atol=1e-6), (cfg.name, cfg.overlap, a, b)


def test_int8_latents_decode_like_the_quantized_forward():
    torch.manual_seed(0)
    m = build_codec(preset("tiny")).eval()
    x = torch.from_numpy(sine_mix(1.0, 8000)[:4000]).unsqueeze(0)
    assert torch.allclose(m.decode(m.encode(x)), m(x).clamp(-1, 1), atol=1e-6)


def test_tiny_model_learns_a_sine_mix():
    torch.manual_seed(0)
    cfg = preset("tiny")
    tracks = [np.round(sine_mix(4.0, 8000, seed=s) * 32768).astype(np.int16) for s in range(3)]
    model = build_codec(cfg)
    val = fixed_chunks(tracks, cfg.chunk)
    before = reconstruction_loss(model, val).item()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    state = fit(model, opt, ChunkSampler(tracks, cfg.chunk), val, epochs=80, device=torch.device("cpu"))
    after = reconstruction_loss(model.eval(), val).item()
    assert state.epoch == 80 and len(state.history) == 80
    # it starts as an MDCT low-pass, already near the tones; training cuts what is left at least threefold
    assert after < before / 3, (before, after)


def test_checkpoint_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(1)
    m = build_codec(preset("tiny")).eval()
    save_checkpoint(tmp_path / "c.pt", m, state={"epoch": 3})
    back = load_codec(tmp_path / "c.pt")
    x = torch.rand(2, 4000) * 2 - 1
    assert back.cfg == m.cfg
    assert torch.equal(back.encode(x), m.encode(x))
    assert torch.equal(back.decode(m.encode(x)), m.decode(m.encode(x)))
    assert model_checksum(back) == model_checksum(m)


def test_crops_weigh_every_possible_start_alike_and_leave_out_what_is_too_short():
    crops = Crops([3, 10, 7], width=4, margin=1)
    assert crops.kept == [1, 2]
    np.testing.assert_allclose(crops.p, [5 / 7, 2 / 7])  # starts 1-5 of the 10, 1-2 of the 7
    drawn = crops.draw(np.random.default_rng(0), 2000)
    assert sorted(set(drawn)) == [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 1), (1, 2)]
    counts = np.bincount([5 * k + s for k, s in drawn], minlength=8)[[1, 2, 3, 4, 5, 6, 7]]
    assert counts.min() > 200 and counts.max() < 370  # each start about 1/7 of the draws (286)


def test_openblas_gets_the_kernels_of_the_cpus_instruction_sets():
    from models import openblas_kernels
    avx2 = {"sse3", "avx", "avx2", "fma"}
    avx512 = avx2 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}
    assert [openblas_kernels(f) for f in (avx512, avx2, avx2 - {"fma"}, {"sse3"}, set())] == [
        "SkylakeX", "Haswell", None, None, None]
    assert openblas_kernels(avx512 - {"avx512bw"}) == "Haswell"  # SkylakeX's kernels need all four


def test_malloc_keeps_freed_memory_under_glibc_unless_the_user_set_it():
    import os

    from models import keep_freed_memory
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        glibc = False
    assert keep_freed_memory({}) is glibc
    if glibc:  # three 20-MB blocks at a time, freed and taken again: glibc's own thresholds trimmed them off the
        import resource  # heap each time (10,100 pages faulted in again over 10 rounds); now they stay mapped

        def faults() -> int:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(10):
                blocks = [np.ones(5 << 20, np.float32) for _ in range(3)]
                del blocks
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        faults()
        assert faults() < 1_000
    users = [{k: "131072"} for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")]
    users.append({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"})
    assert [keep_freed_memory(env) for env in users] == [False] * 4
    assert keep_freed_memory({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}) is glibc


def test_bfloat16_inference_keeps_latents_within_a_step_and_decodes_near_float32():
    # the shipped codec computing in bfloat16 (search and indexing on a CPU with AMX): latents at most one step
    # from float32's, few of them moved; decoded audio far below the codec's own error from float32's
    m = load_codec(shipped_checkpoint("default"))
    x = torch.from_numpy(sine_mix(3.0, 44100, seed=3)[:3 * 44000].reshape(3, 44000))
    z32, z16 = m.encode(x), m.encode(x, torch.bfloat16)
    moved = (z16.int() - z32.int()).abs()
    assert z16.dtype == torch.int8 and moved.max() == 1 and moved.float().mean() < 0.05
    y32 = m.decode_span(z32, 0, 3 * 44000)
    y16 = m.decode_span(z32, 0, 3 * 44000, torch.bfloat16)
    assert 10 * torch.log10((y32 ** 2).sum() / ((y16 - y32) ** 2).sum()) > 40  # dB
    # and frame by frame, as in float32: any span is the whole decode's samples, however the frames fall into
    # the fixed-size products (Spans decodes a track's stretch in parts)
    for a, b in [(0, 44000), (1234, 2345), (43999, 44001), (30000, 131000), (5, 5)]:
        assert torch.equal(m.decode_span(z32, a, b, torch.bfloat16), y16[a:b]), (a, b)
    # a chunk's latents do not depend on the chunks encoded beside it
    assert torch.equal(m.encode(x[1:2], torch.bfloat16), z16[1:2])


def test_codecs_compute_in_bfloat16_only_where_it_pays(monkeypatch):
    from models import compute_dtype
    lapped, paper = build_codec(preset("default")), build_codec(preset("m3"))
    monkeypatch.delenv("MUZIP_PRECISION", raising=False)
    assert compute_dtype(lapped, {"avx512f", "amx_tile", "amx_bf16"}) == torch.bfloat16
    assert compute_dtype(lapped, {"avx512f", "avx512_bf16"}) == torch.float32  # not measured faster there
    assert compute_dtype(paper, {"amx_bf16"}) == torch.float32  # the paper's convolutions: float32 only
    monkeypatch.setenv("MUZIP_PRECISION", "float32")
    assert compute_dtype(lapped, {"amx_bf16"}) == torch.float32
    monkeypatch.setenv("MUZIP_PRECISION", "bfloat16")
    assert compute_dtype(lapped, {"avx2"}) == torch.bfloat16
    monkeypatch.setenv("MUZIP_PRECISION", "half")
    with pytest.raises(ValueError, match="MUZIP_PRECISION='half': expected auto, float32 or bfloat16"):
        compute_dtype(lapped, set())
    with pytest.raises(ValueError, match="computes in float32 only"):
        paper.encode(torch.zeros(1, paper.cfg.chunk), torch.bfloat16)
