"""The pooling head's training views and its contrastive training (issue 4)."""
import numpy as np
import pytest
import torch

from indexer import augment
from indexer.augment import LatentViews, ViewSampler
from indexer.audio import to_pcm16
from models import build_codec, preset
from models.train import joint_loss

from .conftest import song

SR = 8000

DEGRADATIONS = {
    "degrade": lambda x, seed: augment.degrade(x, SR, seed),
    "equalize": lambda x, seed: augment.equalize(x, SR, seed),
    "reverb": lambda x, seed: augment.reverb(x, SR, 0.4, seed),
    "noise": lambda x, seed: augment.add_noise(x, 5.0, seed),
    "room": lambda x, seed: augment.room(x, SR, seed),
    "mp3": lambda x, seed: augment.mp3(x, SR),
}


@pytest.mark.parametrize("name", DEGRADATIONS)
def test_degradations_are_deterministic_and_keep_length(name):
    x = song(1.5, sr=SR, seed=3)
    a, b = DEGRADATIONS[name](x, 7), DEGRADATIONS[name](x, 7)
    assert (a.dtype, a.shape) == (np.float32, x.shape)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, x)


def test_views_pair_each_chunk_with_a_degraded_copy_of_it():
    tracks = [to_pcm16(song(3.0, sr=SR, seed=i)) for i in range(3)]
    clean, views = ViewSampler(tracks, 4000, SR, seed=1)(6)
    again, _ = ViewSampler(tracks, 4000, SR, seed=1)(6)
    assert clean.shape == views.shape == (6, 4000)
    assert torch.equal(clean, again)
    assert float(views.abs().max()) <= 1.0


def test_latent_views_pair_clean_windows_with_degraded_ones_reproducibly():
    tracks = [to_pcm16(song(3.0, sr=SR, seed=i)) for i in range(3)]
    model = build_codec(preset("tiny"))
    a, b = LatentViews(model, tracks, versions=2, seed=1, workers=1)(5)
    a2, b2 = LatentViews(model, tracks, versions=2, seed=1, workers=1)(5)
    n = model.window_frames
    assert a.shape == b.shape == (5, model.cfg.latent_dim, n)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, b)
    assert float(a.abs().max()) <= 1.0  # dequantized int8 latents


def view_accuracy(model, clean, views) -> float:
    """Share of degraded views whose nearest clean vector is their own."""
    with torch.no_grad():
        return joint_loss(model, clean, views)[2]


def test_contrastive_training_ranks_a_degraded_view_above_other_segments():
    torch.manual_seed(0)
    tracks = [to_pcm16(song(6.0, sr=SR, seed=i)) for i in range(8)]
    model = build_codec(preset("tiny"))
    held_clean, held_views = ViewSampler(tracks, 4000, SR, seed=99)(48)  # the same pairs before and after
    before = view_accuracy(model, held_clean, held_views)
    train = ViewSampler(tracks, 4000, SR, seed=0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(60):
        mse, nce, _ = joint_loss(model, *train(32))
        loss = mse + model.cfg.contrastive * nce
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = view_accuracy(model, held_clean, held_views)
    assert after > before + 0.1, (before, after)


def test_the_heads_ordered_part_keeps_a_second_in_six_slots():
    from models.fingerprint import PoolingHead
    head = PoolingHead(45, 128, 128, ordered=64, frames=176)  # the default codec's windows
    assert head.out.in_features == 2 * 128 + 64 * 6  # mean and max, then 6 slots of ~170 ms in time order
    assert head(torch.zeros(3, 45, 176)).shape == (3, 128)
    assert PoolingHead(45, 128, 128, frames=176).out.in_features == 256  # checkpoints from before: mean and max alone
    tiny = build_codec(preset("tiny"))
    assert tiny.head.out.in_features == 2 * 16 + 8 * 2  # 40 frames -> 10 -> 5 -> 3 -> 2
