"""Task registry: names and errors, physics built for the images' size, measurement shapes, the noise's
SNR, determinism, dataset layouts, the CT data fallback, the GPU-only cone beam."""

import math

import pytest
import torch

from deepinv_mol import data, tasks
from deepinv_mol.tasks import RelativeGaussianNoise, get_task, list_tasks

CPU_TASKS = ["mri-radial-4x", "mri-radial-dynamic", "mri-3d", "ct-sparse-view"]

# small images per task, and the measurement shape each must produce (documented in tasks.py)
SMALL = {
    "mri-radial-4x": (2, 32, 30),
    "mri-radial-dynamic": (2, 3, 24, 24),
    "mri-3d": (2, 6, 20, 20),
    "ct-sparse-view": (1, 32, 32),
}


def _expected_measurements(name, physics):
    from deepinv_mol.physics import spokes_for_acceleration

    if name == "mri-radial-4x":
        return (2, 2, 8, spokes_for_acceleration(32, 4) * 64)
    if name == "mri-radial-dynamic":
        return (2, 2, 3, 8, spokes_for_acceleration(24, 8) * 48)
    if name == "mri-3d":
        return (2, 2, 8, 6 * spokes_for_acceleration(20, 4) * 40)
    return (2, 1, 60, physics.n_detectors)


def _snr(y, clean):
    return 10 * torch.log10(clean.pow(2).flatten(1).sum(1) / (y - clean).pow(2).flatten(1).sum(1))


def test_registry_names_and_errors():
    assert list_tasks()[:5] == ["mri-radial-4x", "mri-radial-dynamic", "mri-3d", "ct-sparse-view", "ct-3d-cone"]
    for name in list_tasks():
        task = get_task(name)
        assert task.name == name and task.description
    with pytest.raises(ValueError, match="valid tasks: mri-radial-4x, .*ct-3d-cone"):
        get_task("mri-radial-8x")
    harder = get_task("mri-radial-4x", snr_db=20, acceleration=8)
    assert (harder.snr_db, harder.acceleration) == (20.0, 8) and get_task("mri-radial-4x").snr_db == 30.0
    with pytest.raises(ValueError, match="no setting views"):
        get_task("mri-radial-4x", views=30)


@pytest.mark.parametrize("name", CPU_TASKS)
def test_task_builds_physics_and_simulates(name):
    task = get_task(name)
    x = torch.rand((2,) + SMALL[name], generator=torch.Generator().manual_seed(0))
    physics = task.build_physics(x.shape[1:])
    y = task.simulate(x, physics, torch.Generator().manual_seed(1))
    assert tuple(y.shape) == _expected_measurements(name, physics) and y.dtype == torch.float32
    assert torch.equal(y, task.simulate(x, physics, torch.Generator().manual_seed(1)))
    assert not torch.equal(y, task.simulate(x, physics, torch.Generator().manual_seed(2)))
    clean = physics.A(x)
    snr = _snr(y, clean)
    tolerance = 0.5 if task.modality == "ct" else 0.3  # a few thousand real entries per CT sinogram
    assert torch.allclose(snr, torch.full_like(snr, task.snr_db), atol=tolerance), snr
    # physics(x) adds the same noise (deepinv.Trainer's online measurements)
    assert isinstance(physics.noise_model, RelativeGaussianNoise)
    assert torch.allclose(_snr(physics(x), clean), torch.full_like(snr, task.snr_db), atol=tolerance)
    # the operator is the one whose adjoint the reconstructions use
    assert physics.adjointness_test(x).abs() < 1e-3


def test_physics_shape_forms_and_errors():
    task = get_task("mri-radial-4x")
    physics = task.build_physics((20, 18))
    assert physics.im_size == (20, 18)
    assert task.spatial_shape((4, 2, 20, 18)) == task.spatial_shape((2, 20, 18)) == (20, 18)
    with pytest.raises(ValueError, match="2-channel"):
        task.spatial_shape((1, 20, 18))
    with pytest.raises(ValueError, match=r"img_shape \(C, H, W\)"):
        task.spatial_shape((20,))
    with pytest.raises(ValueError, match=r"\(B, 2, \.\.\.\)"):
        task.simulate(torch.zeros(2, 20, 18), physics)
    with pytest.raises(ValueError, match="1-channel"):
        get_task("ct-sparse-view").spatial_shape((2, 16, 16))


def test_physics_generator_rotates_trajectory_and_moves_coils():
    from deepinv_mol.physics import birdcage_maps, radial_trajectory, spokes_for_acceleration

    task = get_task("mri-radial-4x")
    physics = task.build_physics((16, 16))
    default = physics.trajectory
    assert torch.equal(default, radial_trajectory(spokes_for_acceleration(16, 4), 32))
    assert torch.allclose(physics.coil_maps.reshape(8, 16, 16), birdcage_maps(8, (16, 16)))
    seeded = task.build_physics((16, 16), generator=torch.Generator().manual_seed(0))
    again = task.build_physics((16, 16), generator=torch.Generator().manual_seed(0))
    a, b = seeded.trajectory, again.trajectory
    assert torch.equal(a, b) and not torch.allclose(a, default)
    assert torch.equal(seeded.coil_maps, again.coil_maps)
    assert not torch.allclose(seeded.coil_maps, physics.coil_maps)
    rss = seeded.coil_maps.abs().pow(2).sum(dim=-3)
    assert torch.allclose(rss, torch.ones_like(rss), atol=1e-5)
    assert torch.allclose(a.norm(dim=0), default.norm(dim=0), atol=1e-5)  # a rotation: radii unchanged
    assert float(a.min()) >= -math.pi and float(a.max()) < math.pi


def test_stack_of_stars_kz_on_cartesian_grid():
    task = get_task("mri-3d")
    depth = 6
    physics = task.build_physics((depth, 16, 16))
    kz = physics.trajectory[0]
    grid = 2 * math.pi * (torch.arange(depth) - depth // 2) / depth
    assert torch.allclose(torch.sort(torch.unique(kz)).values, grid, atol=1e-6)
    # every kz partition fully sampled with coils constant along z: A^H A commutes with circular z-shifts
    x = torch.randn(1, 2, depth, 16, 16, generator=torch.Generator().manual_seed(0))
    shifted = physics.A_adjoint_A(torch.roll(x, 1, dims=2))
    reference = torch.roll(physics.A_adjoint_A(x), 1, dims=2)
    assert (shifted - reference).norm() / reference.norm() < 1e-4  # 0.3 with the kz row misplaced


def test_relative_noise_snr_exact_in_expectation():
    y = torch.randn(3, 2, 250_000, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 0.01])[:, None, None]
    noise = RelativeGaussianNoise(25.0)
    noisy = noise(y, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_snr(noisy, y), torch.full((3,), 25.0), atol=0.03)
    assert torch.allclose(noise.sigma, y.flatten(1).pow(2).mean(1).sqrt() * 10 ** (-25 / 20))
    with pytest.raises(ValueError, match="finite"):
        RelativeGaussianNoise(float("inf"))


@pytest.mark.parametrize(
    "name, shape",
    [
        ("mri-radial-4x", (2, 160, 160)),
        ("mri-radial-dynamic", (2, 8, 96, 96)),
        ("mri-3d", (2, 16, 80, 80)),
        ("ct-sparse-view", (1, 160, 160)),
        ("ct-3d-cone", (1, 8, 160, 160)),
    ],
)
def test_dataset_layout(name, shape):
    task = get_task(name)
    test = task.dataset("test")
    x = test[0]
    assert tuple(x.shape) == shape and x.dtype == torch.float32
    modulus = x.norm(dim=0) if task.channels == 2 else x[0]
    assert float(modulus.min()) >= 0 and float(modulus.max()) <= 1 + 1e-5 and float(modulus.max()) > 0.3
    if task.channels == 2:  # a simulated phase, not a real image
        assert float(x[1].abs().max()) > 0.1
    assert torch.equal(x, task.dataset("test")[0])
    assert not torch.equal(x, task.dataset("test", seed=1)[0]) or task.modality == "ct"
    assert len(task.dataset("train")) > len(test) > 0
    with pytest.raises(ValueError, match="split must be one of"):
        task.dataset("training")


def test_dataset_splits_come_from_disjoint_slabs():
    task = get_task("mri-radial-4x")
    train = task.dataset("train").images
    test = task.dataset("test").images
    # no test image equals (or nearly equals) a training image
    distance = torch.cdist(test.flatten(1), train.flatten(1)) / test.flatten(1).norm(dim=1, keepdim=True)
    assert float(distance.min()) > 0.1


def test_dataset_from_user_images():
    images = data.load_embedded("test").images[:3, 40:104, 40:104].contiguous()
    mri = get_task("mri-radial-4x").dataset_from(images)
    assert len(mri) == 3 and mri[1].shape == (2, 64, 64)
    assert torch.allclose(mri[1].norm(dim=0), images[1], atol=1e-6)
    assert torch.equal(get_task("ct-sparse-view").dataset_from(images)[2][0], images[2])
    volume = get_task("mri-3d", depth=3).dataset_from(images)
    assert len(volume) == 1 and volume[0].shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="complex"):
        get_task("ct-sparse-view").dataset_from(torch.zeros(2, 2, 16, 16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        get_task("ct-sparse-view").dataset_from(images.numpy())


def test_ct_data_sources(tmp_path, monkeypatch):
    embedded = get_task("ct-sparse-view", source="embedded")
    assert embedded.data_source() == "embedded"
    with pytest.warns(UserWarning, match="apt-get install invesalius-examples"):
        fallback = embedded.dataset("test")
    assert len(fallback) == 32 and fallback[0].shape == (1, 160, 160)
    monkeypatch.setattr(data, "HEAD_CT_PATH", str(tmp_path / "absent.inv3"))
    assert get_task("ct-sparse-view").data_source() == "embedded"
    with pytest.raises(FileNotFoundError, match="apt-get install invesalius-examples"):
        get_task("ct-sparse-view", source="head-ct").dataset("test")
    with pytest.raises(ValueError, match="source must be"):
        get_task("ct-sparse-view", source="lidc").data_source()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cone_beam_needs_gpu():
    task = get_task("ct-3d-cone")
    assert task.requires_gpu
    with pytest.raises(RuntimeError, match="needs a CUDA GPU.*CPU tasks: mri-radial-4x"):
        task.build_physics((1, 8, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cone_beam_on_gpu():
    task = get_task("ct-3d-cone")
    x = torch.rand(1, 1, 8, 32, 32, device="cuda")
    physics = task.build_physics(x.shape[1:], device="cuda")
    y = task.simulate(x, physics)
    assert y.shape[:2] == (1, 1) and y.shape[-2] == task.views
    assert abs(float(_snr(y, physics.A(x))) - task.snr_db) < 0.5


@pytest.mark.parametrize(
    "name,overrides,error,pattern",
    [
        ("ct-sparse-view", {"views": 0}, ValueError, "task setting views must be >= 1, got 0"),
        ("ct-sparse-view", {"views": -5}, ValueError, "views must be >= 1"),
        ("ct-sparse-view", {"views": 2.5}, TypeError, "views must be an int, got float"),
        ("ct-sparse-view", {"source": "lidc"}, ValueError, "source must be 'auto', 'head-ct' or 'embedded'"),
        ("mri-radial-4x", {"acceleration": 0}, ValueError, "acceleration must be > 0"),
        ("mri-radial-4x", {"acceleration": float("inf")}, ValueError, "acceleration must be finite"),
        ("mri-radial-4x", {"n_coils": 0}, ValueError, "n_coils must be >= 1"),
        ("mri-radial-4x", {"snr_db": float("nan")}, ValueError, "snr_db must be finite"),
        ("mri-radial-4x", {"snr_db": "30"}, TypeError, "snr_db must be a number, got str"),
        ("mri-radial-4x", {"data_weight": -1.0}, ValueError, "data_weight must be > 0"),
        ("mri-radial-4x", {"train_crop": 2}, ValueError, "train_crop must be >= 4"),
        ("mri-radial-4x", {"image_size": (160,)}, ValueError, r"image_size must be a pair \(H, W\)"),
        ("mri-radial-4x", {"size": 0}, ValueError, "size must be >= 4"),
        ("mri-radial-4x", {"size": 32, "image_size": (32, 32)}, ValueError, "give size or image_size"),
        ("mri-radial-dynamic", {"frames": 0}, ValueError, "frames must be >= 1"),
        ("mri-3d", {"depth": 0}, ValueError, "depth must be >= 1"),
        ("ct-3d-cone", {"depth": 0}, ValueError, "depth must be >= 1"),
    ],
)
def test_bad_overrides_are_clear(name, overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        get_task(name, **overrides)


@pytest.mark.parametrize("name", CPU_TASKS)
def test_small_variants(name):
    """get_task(name, size=n): images, physics and training crop follow the size; the registry is untouched."""
    task = get_task(name, size=24)
    assert task.image_size == (24, 24) and (task.train_crop is None or task.train_crop <= 24)
    assert get_task(name).image_size != (24, 24)
    item = task.dataset("val")[0]
    assert tuple(item.shape[-2:]) == (24, 24) and item.shape[0] == task.channels
    physics = task.build_physics(tuple(item.shape))
    y = task.simulate(item[None], physics, torch.Generator().manual_seed(0))
    assert torch.isfinite(y).all() and physics.adjointness_test(item[None]).abs() < 1e-3


def test_data_source_of_every_task():
    for name in CPU_TASKS:
        task = get_task(name)
        expected = ("head-ct", "embedded") if task.modality == "ct" else ("embedded",)
        assert task.data_source() in expected
