"""Training augmentation (deepinv_mol.data.augment) and its hook in training (deterministic, resumable)."""

import math

import pytest
import torch

from deepinv_mol import training
from deepinv_mol.data.augment import Augmentation, augmentation_from

from test_training import TinyTask, _weights  # noqa: F401  (the tiny task of the training tests)

TINY = {"cnn": {"channels": 2, "width": 4, "depth": 2, "constraint": "penalty"}, "modl": {"num_iter": 2}}


def _magnitude(x):
    return x.pow(2).sum(1).sqrt()


def test_symmetries_keep_the_pixel_values_and_phase_keeps_the_magnitude():
    x = torch.rand(8, 2, 6, 6)
    out = Augmentation(intensity=None)(x, torch.Generator().manual_seed(0))
    for a, b in zip(_magnitude(x), _magnitude(out)):
        # flips + rotations permute pixels; the global phase keeps the modulus
        assert torch.allclose(a.flatten().sort().values, b.flatten().sort().values, atol=1e-6)
    assert not torch.allclose(out, x)
    only_phase = Augmentation(flips=False, rotations=False, intensity=None)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(_magnitude(only_phase), _magnitude(x), atol=1e-6)
    real = Augmentation(flips=False, rotations=False, intensity=None)(x[:, :1], torch.Generator().manual_seed(0))
    assert torch.equal(real, x[:, :1])  # no phase on real (1-channel) images


def test_intensity_factor_log_uniform_in_range_and_non_square_shape_kept():
    x = torch.ones(400, 1, 3, 5)
    out = Augmentation(intensity=(0.5, 2.0))(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    factors = out.flatten(1)[:, 0]
    assert float(factors.min()) >= 0.5 and float(factors.max()) <= 2.0
    logs = factors.log() / math.log(2.0)  # uniform on [-1, 1]: mean 0, variance 1/3
    assert abs(float(logs.mean())) < 0.1 and abs(float(logs.var()) - 1 / 3) < 0.06


def test_same_generator_same_batch_and_validation():
    x = torch.rand(3, 2, 8, 8)
    a = Augmentation()(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, Augmentation()(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, Augmentation()(x, torch.Generator().manual_seed(6)))
    with pytest.raises(ValueError, match="intensity must be"):
        Augmentation(intensity=(2.0, 1.0))
    with pytest.raises(TypeError, match="flips must be a bool"):
        Augmentation(flips=1)
    with pytest.raises(ValueError, match="'on' or 'off'"):
        augmentation_from("yes")
    assert augmentation_from(Augmentation().to_dict()) == Augmentation()


def _train(out, **kw):
    args = dict(steps=4, batch_size=2, crop=16, lr=1e-2, eval_every=2, val_images=2, seed=3, config=TINY,
                progress=False, augment="on")
    args.update(kw)
    return training.train(TinyTask(), "modl", out=out, **args)


def test_resume_with_augmentation_is_exact_and_recorded(tmp_path):
    straight = _train(tmp_path / "straight")
    _train(tmp_path / "split", stop_after=2)
    resumed = _train(tmp_path / "split", resume=True)
    a, b = _weights(tmp_path / "straight" / training.FINAL), _weights(tmp_path / "split" / training.FINAL)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["loss"] == resumed["loss"]
    assert straight["run_config"]["augment"] == Augmentation().to_dict()
    plain = _train(tmp_path / "plain", augment="off")
    assert plain["run_config"]["augment"] is None and plain["loss"] != straight["loss"]


def test_rescale_changes_pixel_size_within_range_and_keeps_the_crop_possible():
    aug = Augmentation(zoom=(1.5, 1.5))
    x = torch.rand(2, 40, 60)
    out = aug.rescale(x, torch.Generator().manual_seed(0))
    assert out.shape == (2, 27, 40)  # 40/1.5, 60/1.5 rounded
    # the mean intensity of a smooth image is kept by the (antialiased) resampling
    smooth = torch.ones(1, 40, 60)
    assert torch.allclose(aug.rescale(smooth, torch.Generator()), torch.ones(1, 27, 40), atol=1e-5)
    capped = Augmentation(zoom=(3.0, 3.0)).rescale(x, torch.Generator(), min_side=32)
    assert min(capped.shape[-2:]) >= 32 and capped.shape[-2] < 40
    # log-uniform draws stay in the range and repeat with the generator
    sides = {Augmentation(zoom=(1.0, 2.0)).rescale(x, torch.Generator().manual_seed(k)).shape[-2] for k in range(30)}
    assert min(sides) >= 20 and max(sides) <= 40 and len(sides) > 5
    a = Augmentation().rescale(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, Augmentation().rescale(x, torch.Generator().manual_seed(3)))
    # off: the image itself, but the draw is still taken (switching it off keeps the other draws)
    g = torch.Generator().manual_seed(4)
    assert Augmentation(zoom=None).rescale(x, g) is x
    assert not torch.equal(g.get_state(), torch.Generator().manual_seed(4).get_state())
    # volumes (C, D, H, W) are resampled in-plane only
    assert Augmentation(zoom=(2.0, 2.0)).rescale(torch.rand(1, 3, 16, 16), torch.Generator()).shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="zoom"):
        Augmentation(zoom=(0.5, 2.0))
    # records written before the zoom existed rebuild without one
    old = {k: v for k, v in Augmentation().to_dict().items() if k != "zoom"}
    assert augmentation_from(old).zoom is None


def test_whole_image_training_keeps_the_image_size_with_the_default_augmentation(tmp_path):
    # no crop: the pixel-size draw is skipped (the physics is built for the whole image), the run trains
    state = _train(tmp_path / "whole", augment="on", crop=None)
    losses = state["loss"] if isinstance(state["loss"], list) else [state["loss"]]
    assert len(losses) >= 1 and all(math.isfinite(float(v)) for v in losses)


def test_ground_truth_noise_has_the_drawn_level_per_channel_and_leaves_the_other_draws_alone():
    x = torch.zeros(64, 2, 32, 32)
    x[:, 0, 8:24, 8:24] = 2.0  # peak magnitude 2 (on the real channel)
    plain = Augmentation(intensity=None, phase=False)
    noisy = Augmentation(intensity=None, phase=False, noise=(0.01, 0.05))
    a, b = plain(x, torch.Generator().manual_seed(7)), noisy(x, torch.Generator().manual_seed(7))
    residual = (b - a).flatten(2)  # same flips/rotations (drawn first), plus the noise
    level = residual.std(-1) / 2.0  # relative to the peak magnitude, per image and channel
    assert float(level.min()) > 0.01 * 0.9 and float(level.max()) < 0.05 * 1.1
    # both channels of a complex image get the same level, and the levels are uniform in the range
    assert torch.allclose(level[:, 0], level[:, 1], rtol=0.1)
    assert abs(float(level[:, 0].mean()) - 0.03) < 0.004
    assert float(residual.mean(-1).abs().max()) < 0.01  # zero-mean
    assert torch.equal(b, noisy(x, torch.Generator().manual_seed(7)))
    # off (the default): no level or field is drawn, so the streams of older runs replay unchanged
    g = torch.Generator().manual_seed(3)
    plain(x[:2], g)
    h = torch.Generator().manual_seed(3)
    torch.rand(2 * 5, generator=h, dtype=torch.float64)
    assert torch.equal(g.get_state(), h.get_state())
    # real (1-channel) images: relative to the largest absolute value
    real = Augmentation(flips=False, rotations=False, intensity=None, noise=(0.02, 0.02))
    out = real(-3.0 * torch.ones(4, 1, 32, 32), torch.Generator().manual_seed(0))
    assert abs(float((out + 3.0).std()) / 3.0 - 0.02) < 0.002
    with pytest.raises(ValueError, match="noise must be"):
        Augmentation(noise=(0.05, 0.01))
    # records written before the noise existed rebuild without it; "on" means the caller's default
    old = {k: v for k, v in noisy.to_dict().items() if k != "noise"}
    assert augmentation_from(old).noise is None and augmentation_from(noisy.to_dict()) == noisy
    assert augmentation_from("on", default=noisy) is noisy and augmentation_from("on") == Augmentation()


def test_mri_tasks_train_with_ground_truth_noise_ct_tasks_without(tmp_path):
    from deepinv_mol.tasks import get_task

    assert get_task("mri-radial-4x").gt_noise == (0.0, 0.05) and get_task("mri-3d").gt_noise == (0.0, 0.05)
    assert get_task("ct-sparse-view").gt_noise is None
    with pytest.raises(ValueError, match="noise must be"):
        get_task("mri-radial-4x", gt_noise=(0.1, 0.0))
    task = TinyTask()
    task.gt_noise = (0.0, 0.05)  # a task-shaped object carrying the setting: "on" adds the noise, recorded
    state = training.train(task, "modl", out=tmp_path / "noisy", steps=2, batch_size=2, crop=16, lr=1e-2,
                           eval_every=2, val_images=2, seed=3, config=TINY, progress=False, augment="on")
    assert state["run_config"]["augment"] == Augmentation(noise=(0.0, 0.05)).to_dict()
