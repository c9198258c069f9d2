"""NufftMRI, trajectories and coil maps: identities, conventions, error paths, deepinv integration.

The generic operator contract (adjointness, normal operator, norms, pseudo-inverse, devices,
state_dict, batches) lives in test_physics_contract.py; this file checks what is specific to
non-Cartesian MRI. Sizes are small and odd.
"""

import math
import sys
import warnings

import pytest
import torch

from deepinv_mol.physics import (
    NufftMRI,
    birdcage_maps,
    estimate_coil_maps,
    radial_trajectory,
    spiral_trajectory,
    spokes_for_acceleration,
)
from deepinv_mol.physics.trajectories import GOLDEN_ANGLE_RADIAL

IMG = (37, 31)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _scale_free_error(estimate, target):
    """min_c ||c * estimate - target|| / ||target|| (gridding and adjoint differ in scale)."""
    c = (estimate * target).sum() / (estimate * estimate).sum()
    return _rel(c * estimate, target)


def _phantom(img=IMG):
    """Two ellipses with a smooth phase ramp, (1, 2, H, W), and its support."""
    h, w = img
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    mag = ((yy / 0.8) ** 2 + (xx / 0.7) ** 2 < 1).float()
    mag = mag + 0.5 * (((yy - 0.2) / 0.3) ** 2 + (xx / 0.2) ** 2 < 1).float()
    z = mag * torch.exp(1j * 0.5 * xx)
    return torch.stack((z.real, z.imag))[None].float(), mag > 0


@pytest.fixture(scope="module")
def multicoil():
    """Multi-coil radial operator (Pipe density precomputed) and a phantom with its data."""
    maps = birdcage_maps(4, IMG)
    physics = NufftMRI(radial_trajectory(40, 64), IMG, coil_maps=maps, density="pipe")
    x, support = _phantom()
    return physics, maps, x, support, physics.A(x)


# ----------------------------------------------------------------------------- trajectories
def test_radial_shape_range_and_layout():
    traj = radial_trajectory(16, 64)
    assert traj.shape == (2, 16 * 64) and traj.dtype == torch.float32
    assert traj.min() >= -math.pi and traj.max() < math.pi
    spokes = traj.reshape(2, 16, 64)
    radius = spokes.norm(dim=0)
    # every spoke passes through the centre at sample n/2 and reaches |k| = pi at sample 0
    assert torch.all(radius[:, 32] < 1e-6)
    assert torch.allclose(radius[:, 0], torch.full((16,), math.pi), atol=1e-5)
    dyn = radial_trajectory(8, 32, frames=5)
    assert dyn.shape == (5, 2, 256)
    assert dyn.min() >= -math.pi and dyn.max() < math.pi


def _spoke_angles(traj, n_samples):
    end = traj.reshape(2, -1, n_samples)[:, :, -1]  # the positive-radius end of each spoke
    return torch.remainder(torch.atan2(end[1].double(), end[0].double()), math.pi)


@pytest.mark.parametrize("n_spokes", [5, 13, 21, 34, 50, 77])
def test_golden_angle_three_gaps(n_spokes):
    """Three-distance theorem: any run of golden-angle spokes leaves at most 3 distinct gaps,
    the largest at most phi^2 times the smallest and below twice the uniform gap."""
    angles = _spoke_angles(radial_trajectory(n_spokes, 16), 16).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + math.pi]))
    distinct = torch.unique((gaps / 1e-5).round())
    assert len(distinct) <= 3
    assert gaps.max() / gaps.min() <= (1 + math.sqrt(5)) ** 2 / 4 + 1e-4
    assert gaps.max() < 2 * math.pi / n_spokes
    expected = torch.remainder(torch.arange(n_spokes, dtype=torch.float64) * GOLDEN_ANGLE_RADIAL, math.pi)
    assert torch.allclose(_spoke_angles(radial_trajectory(n_spokes, 16), 16), expected, atol=1e-5)


def test_dynamic_frames_continue_the_sequence():
    frames = radial_trajectory(8, 32, frames=5)
    joined = frames.permute(1, 0, 2).reshape(2, -1)
    assert torch.equal(joined, radial_trajectory(40, 32))
    # uniform ordering: frames are interleaved rotations, together uniform over 40 spokes
    uni = radial_trajectory(8, 32, golden=False, frames=5).permute(1, 0, 2).reshape(2, -1)
    angles = _spoke_angles(uni, 32).sort().values
    assert torch.allclose(torch.diff(angles), torch.full((39,), math.pi / 40, dtype=torch.float64), atol=1e-5)
    # and each frame alone is uniform over 8 spokes
    one = _spoke_angles(radial_trajectory(8, 32, golden=False, frames=5)[2], 32).sort().values
    assert torch.allclose(torch.diff(one), torch.full((7,), math.pi / 8, dtype=torch.float64), atol=1e-5)


def test_spiral_shape_range_and_arms():
    traj = spiral_trajectory(4, 500, turns=6)
    assert traj.shape == (2, 2000) and traj.min() >= -math.pi and traj.max() < math.pi
    arms = traj.reshape(2, 4, 500)
    radius = arms.norm(dim=0)
    assert torch.all(torch.diff(radius, dim=1) > 0)  # centre-out
    assert radius[:, 0].abs().max() < 1e-6 and radius.max() < math.pi
    # uniform interleaves are rotations of each other by 2*pi/4
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert torch.allclose(rot @ arms[:, 0], arms[:, 1], atol=1e-5)
    dyn = spiral_trajectory(3, 200, golden=True, frames=4)
    assert dyn.shape == (4, 2, 600)
    assert torch.equal(dyn.permute(1, 0, 2).reshape(2, -1), spiral_trajectory(12, 200, golden=True))


def test_spokes_for_acceleration():
    assert spokes_for_acceleration(256, 1) == math.ceil(math.pi / 2 * 256)
    assert spokes_for_acceleration(256, 4) == 101
    assert spokes_for_acceleration((37, 64), 2) == math.ceil(math.pi * 64 / 4)
    assert [spokes_for_acceleration(128, r) for r in (1, 2, 4, 8)] == sorted(
        [spokes_for_acceleration(128, r) for r in (1, 2, 4, 8)], reverse=True
    )
    assert spokes_for_acceleration(8, 1000) == 1


# ----------------------------------------------------------------------------- operator
def test_forward_matches_explicit_nudft(rng):
    """A is the unitary-scaled non-uniform DFT with centred pixel indices (torchkbnufft accuracy)."""
    img = (7, 6)
    traj = torch.rand(2, 50, generator=rng) * 2 * math.pi - math.pi
    physics = NufftMRI(traj, img, toeplitz=False, normalize=False)
    x = torch.randn(1, 2, *img, generator=rng)
    y = physics.A(x)
    z = torch.complex(x[0, 0].double(), x[0, 1].double())
    n = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float64) - s // 2 for s in img], indexing="ij"))
    phase = torch.einsum("dk,dhw->khw", traj.double(), n)
    ref = (z[None] * torch.exp(-1j * phase)).sum((1, 2)) / math.sqrt(z.numel())
    got = torch.complex(y[0, 0, 0].double(), y[0, 1, 0].double())
    assert ((got - ref).abs().norm() / ref.abs().norm()).item() < 3e-3


def test_measurement_layout_documented_shapes():
    maps = birdcage_maps(3, (9, 8))
    static = NufftMRI(radial_trajectory(6, 16), (9, 8), coil_maps=maps, toeplitz=False)
    assert static.A(torch.randn(2, 2, 9, 8)).shape == (2, 2, 3, 96)
    dyn = NufftMRI(radial_trajectory(4, 16, frames=3), (9, 8), toeplitz=False)
    assert dyn.A(torch.randn(2, 2, 3, 9, 8)).shape == (2, 2, 3, 1, 64)
    assert dyn.img_size == (2, 3, 9, 8) and static.img_size == (2, 9, 8)


@pytest.mark.parametrize(
    "case",
    ["2d-perbatch-maps", "3d-multicoil", "dynamic-perbatch-maps", "dynamic-single"],
)
def test_toeplitz_equals_nufft_pair(case, rng):
    if case == "2d-perbatch-maps":
        img, traj = IMG, radial_trajectory(24, 64)
        maps = torch.stack([birdcage_maps(4, img), birdcage_maps(4, img, radius=2.5)])
        x, kw = torch.randn(2, 2, *img, generator=rng), {"coil_maps": maps}
    elif case == "3d-multicoil":
        img = (9, 11, 10)
        traj = torch.rand(3, 700, generator=rng) * 2 * math.pi - math.pi
        x, kw = torch.randn(2, 2, *img, generator=rng), {"coil_maps": birdcage_maps(3, img, coils_per_ring=2)}
    elif case == "dynamic-perbatch-maps":
        img, traj = (13, 11), radial_trajectory(6, 28, frames=3)
        maps = torch.stack([birdcage_maps(2, img), birdcage_maps(2, img, radius=3.0)])
        x, kw = torch.randn(2, 2, 3, *img, generator=rng), {"coil_maps": maps}
    else:
        img, traj = (13, 11), radial_trajectory(6, 28, frames=3)
        x, kw = torch.randn(2, 2, 3, *img, generator=rng), {}
    physics = NufftMRI(traj, img, **kw)
    fast = physics.A_adjoint_A(x)
    assert fast.shape == x.shape
    assert _rel(fast, physics.A_adjoint(physics.A(x))) < 1e-4
    assert physics.adjointness_test(x, num_samples=2) < 1e-4


def _stack_of_stars(depth, in_plane, spokes, samples):
    """kz partitions on the DFT grid of ``depth`` slices, each with its own radial spokes."""
    radial = radial_trajectory(spokes, samples, frames=depth)  # (depth, 2, spokes * samples)
    kz = 2 * math.pi * (torch.arange(depth, dtype=torch.float32) - depth // 2) / depth
    kz = kz[:, None, None].expand(depth, 1, radial.shape[-1])
    return torch.cat([kz, radial], dim=1).permute(1, 0, 2).reshape(3, -1)


@pytest.mark.parametrize("depth", [5, 6])
def test_stack_of_stars_kernel_folded_on_cartesian_axis(depth, rng):
    img = (depth, 11, 10)
    traj = _stack_of_stars(depth, img[1:], 5, 24)
    physics = NufftMRI(traj, img, coil_maps=birdcage_maps(3, img, coils_per_ring=2))
    # kz on the grid: no zero padding along it (half the FFT work), in-plane padded as torchkbnufft does
    assert physics.cartesian_axes() == (0,)
    assert tuple(physics.toeplitz_kernel.shape) == (depth, 22, 20)
    x = torch.randn(2, 2, *img, generator=rng)
    assert _rel(physics.A_adjoint_A(x), physics.A_adjoint(physics.A(x))) < 1e-4
    # off the grid (kz shifted by a quarter step): not folded, and still exact
    shifted = traj.clone()
    shifted[0] += 0.5 * math.pi / depth
    off = NufftMRI(shifted, img, coil_maps=birdcage_maps(3, img, coils_per_ring=2))
    assert off.cartesian_axes() == () and tuple(off.toeplitz_kernel.shape) == (2 * depth, 22, 20)
    assert _rel(off.A_adjoint_A(x), off.A_adjoint(off.A(x))) < 1e-4


def test_cartesian_trajectory_folds_every_axis(rng):
    h, w = 8, 7
    ky, kx = torch.meshgrid(torch.arange(h) - h // 2, torch.arange(w) - w // 2, indexing="ij")
    keep = torch.rand(h, w, generator=rng) < 0.6
    traj = torch.stack((2 * math.pi * ky[keep] / h, 2 * math.pi * kx[keep] / w)).float()
    physics = NufftMRI(traj, (h, w))
    assert physics.cartesian_axes() == (0, 1) and tuple(physics.toeplitz_kernel.shape) == (h, w)
    x = torch.randn(1, 2, h, w, generator=rng)
    # A^H A of a Cartesian mask: a projection with the mask in the unitary DFT domain
    z = torch.fft.fftshift(torch.fft.fft2(torch.complex(x[0, 0], x[0, 1]), norm="ortho"))
    ref = torch.fft.ifft2(torch.fft.ifftshift(z * keep), norm="ortho")
    got = physics.A_adjoint_A(x)
    scale = float(physics.operator_norm) ** 2 if physics.normalize else 1.0
    assert _rel(torch.complex(got[0, 0], got[0, 1]) * scale, ref) < 1e-4


def test_per_batch_coil_maps_equal_separate_operators(rng):
    maps = torch.stack([birdcage_maps(4, IMG), birdcage_maps(4, IMG, radius=2.0)])
    traj = radial_trajectory(24, 64)
    batched = NufftMRI(traj, IMG, coil_maps=maps, toeplitz=False, normalize=False)
    x = torch.randn(2, 2, *IMG, generator=rng)
    y = batched.A(x)
    for i in range(2):
        single = NufftMRI(traj, IMG, coil_maps=maps[i], toeplitz=False, normalize=False)
        assert _rel(y[i : i + 1], single.A(x[i : i + 1])) < 1e-6
        assert _rel(batched.A_adjoint(y)[i : i + 1], single.A_adjoint(y[i : i + 1])) < 1e-6
    with pytest.raises(ValueError, match="per-batch"):
        batched.A(torch.randn(3, 2, *IMG))


def test_update_trajectory_recomputes_kernel(rng):
    physics = NufftMRI(radial_trajectory(10, 32), (15, 13))
    old_kernel = physics.toeplitz_kernel.clone()
    x = torch.randn(1, 2, 15, 13, generator=rng)
    new = radial_trajectory(14, 40, golden=False)
    y = physics(x, trajectory=new)  # deepinv's per-call parameters
    assert y.shape == (1, 2, 1, 14 * 40)
    assert not torch.allclose(physics.toeplitz_kernel, old_kernel)
    assert _rel(physics.A_adjoint_A(x), physics.A_adjoint(physics.A(x))) < 1e-4
    fresh = NufftMRI(new, (15, 13))
    assert torch.allclose(physics.toeplitz_kernel, fresh.toeplitz_kernel)
    # a dynamic operator may change its number of frames
    dyn = NufftMRI(radial_trajectory(4, 16, frames=2), (9, 8))
    dyn.update_parameters(trajectory=radial_trajectory(4, 16, frames=3))
    assert dyn.img_size == (2, 3, 9, 8) and dyn.toeplitz_kernel.shape[0] == 3


def test_state_dict_between_different_trajectories(rng):
    source = NufftMRI(radial_trajectory(12, 32), (15, 13), coil_maps=birdcage_maps(3, (15, 13)))
    source.density_compensation()
    target = NufftMRI(radial_trajectory(7, 20), (15, 13), coil_maps=birdcage_maps(3, (15, 13)))
    target.load_state_dict(source.state_dict())
    x = torch.randn(1, 2, 15, 13, generator=rng)
    assert torch.equal(target.A(x), source.A(x))
    assert torch.equal(target.A_adjoint_A(x), source.A_adjoint_A(x))
    assert torch.equal(target.density, source.density)


def test_noise_model_applies_to_measurements(rng):
    import deepinv

    physics = NufftMRI(radial_trajectory(8, 32), (15, 13), noise_model=deepinv.physics.GaussianNoise(0.1))
    x = torch.randn(2, 2, 15, 13, generator=rng)
    noise = physics(x) - physics.A(x)
    assert abs(noise.std().item() - 0.1) < 0.01


# ----------------------------------------------------------------------------- density compensation
def test_gridding_beats_plain_adjoint(multicoil):
    physics, _, x, _, y = multicoil
    gridded, adjoint = physics.gridding(y), physics.A_adjoint(y)
    assert _scale_free_error(gridded, x) < 0.5 * _scale_free_error(adjoint, x)
    # and gridding has the right scale without fitting one
    assert _rel(gridded, x) < 0.2
    assert physics.density.shape == (physics.trajectory.shape[-1],) and (physics.density >= 0).all()


def test_density_weighted_cg_converges_faster(multicoil):
    physics, _, x, _, y = multicoil
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 3 iterations do not converge: that is the point
        plain = physics.A_dagger(y, max_iter=3, tol=1e-7)
        plain_stats = physics.last_solve
        weighted = physics.A_dagger(y, max_iter=3, tol=1e-7, density_compensation=True)
    assert _rel(weighted, x) < _rel(plain, x)
    assert plain_stats["converged"] is False and plain_stats["residual"] > 1e-7


def test_a_dagger_reports_non_convergence(multicoil):
    physics, _, _, _, y = multicoil
    with pytest.warns(UserWarning, match="residual"):
        physics.A_dagger(y, max_iter=1, tol=1e-6)
    assert physics.last_solve["converged"] is False
    physics.A_dagger(y, max_iter=200, tol=1e-3)
    assert physics.last_solve["converged"] is True and physics.last_solve["residual"] <= 1e-3


# ----------------------------------------------------------------------------- coil maps
def test_birdcage_maps_normalised_and_distinct():
    maps = birdcage_maps(8, IMG)
    assert maps.shape == (8, *IMG) and maps.dtype == torch.complex64
    assert torch.allclose(maps.abs().pow(2).sum(0), torch.ones(IMG), atol=1e-5)
    # coil c is most sensitive near its own wire: the argmax positions are all different
    peaks = {int(m.abs().argmax()) for m in maps}
    assert len(peaks) == 8
    maps3 = birdcage_maps(6, (5, 9, 8), coils_per_ring=3)
    assert maps3.shape == (6, 5, 9, 8)
    assert torch.allclose(maps3.abs().pow(2).sum(0), torch.ones(5, 9, 8), atol=1e-5)


def test_estimate_coil_maps_recovers_birdcage(multicoil):
    physics, maps, x, support, y = multicoil
    est = estimate_coil_maps(y, physics)
    assert est.shape == (1, *maps.shape)
    # per-pixel coherence between estimate and truth (a common phase per pixel is allowed)
    coherence = (est[0] * maps.conj()).sum(0).abs() / (
        est[0].abs().pow(2).sum(0).sqrt() * maps.abs().pow(2).sum(0).sqrt()
    )
    assert coherence[support].mean() > 0.99 and coherence[support].min() > 0.95
    assert torch.allclose(est[0].abs().pow(2).sum(0)[support], torch.ones(int(support.sum())), atol=1e-3)
    # the trajectory path agrees; a threshold zeroes the background
    from_traj = estimate_coil_maps(y, physics.trajectory, img_size=IMG, threshold=0.2)
    assert (from_traj[0].abs().sum(0)[~support] == 0).float().mean() > 0.5
    inside = from_traj[0].abs().sum(0) > 0
    assert _rel(from_traj[0][:, inside], est[0][:, inside]) < 1e-3


def test_estimate_coil_maps_dynamic_batch():
    """2D + time, batch of 2: frames are pooled, each batch element gets its own maps."""
    img = (21, 19)
    traj = radial_trajectory(10, 40, frames=3)
    ramp = traj.norm(dim=1) + 0.05  # analytic radial density, so no Pipe iterations are needed
    maps = birdcage_maps(3, img)
    physics = NufftMRI(traj, img, coil_maps=maps, density=ramp, toeplitz=False)
    x, support = _phantom(img)
    movie = torch.cat([x, 2 * x]).unsqueeze(2).repeat(1, 1, 3, 1, 1)
    est = estimate_coil_maps(physics.A(movie), physics)
    assert est.shape == (2, 3, *img)
    for b in range(2):
        coherence = (est[b] * maps.conj()).sum(0).abs() / est[b].abs().pow(2).sum(0).sqrt()
        assert coherence[support].mean() > 0.99


# ----------------------------------------------------------------------------- error paths
def _bad_inputs():
    traj = radial_trajectory(4, 16)
    good = NufftMRI(traj, (9, 8), coil_maps=birdcage_maps(2, (9, 8)), toeplitz=False)
    x, y = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 2, 64)
    nan_traj = traj.clone()
    nan_traj[0, 3] = float("nan")
    return [
        ("image shape", ValueError, "expects image", lambda: good.A(torch.randn(1, 2, 8, 9))),
        ("image channels", ValueError, "expects image", lambda: good.A(torch.randn(1, 1, 9, 8))),
        ("complex image", TypeError, "complex", lambda: good.A(torch.randn(1, 9, 8, dtype=torch.complex64))),
        ("integer image", TypeError, "floating", lambda: good.A(torch.ones(1, 2, 9, 8, dtype=torch.int64))),
        ("k-space shape", ValueError, "expects k-space", lambda: good.A_adjoint(torch.randn(1, 2, 3, 64))),
        ("k-space length", ValueError, "expects k-space", lambda: good.A_adjoint(torch.randn(1, 2, 2, 63))),
        ("complex k-space", TypeError, "complex", lambda: good.A_adjoint(torch.complex(y, y))),
        ("normal op shape", ValueError, "expects image", lambda: good.A_adjoint_A(x[..., :7])),
        ("trajectory range", ValueError, r"\[-pi, pi\)", lambda: NufftMRI(traj * 2, (9, 8))),
        ("trajectory +pi", ValueError, r"\[-pi, pi\)", lambda: NufftMRI(torch.full((2, 5), math.pi, dtype=torch.float64), (9, 8))),
        ("trajectory rows", ValueError, "3 rows", lambda: NufftMRI(traj, (5, 9, 8))),
        ("dynamic 3D", ValueError, "2D \\+ time", lambda: NufftMRI(torch.zeros(2, 3, 10), (5, 9, 8))),
        ("trajectory ndim", ValueError, "trajectory must be", lambda: NufftMRI(traj.flatten(), (9, 8))),
        ("trajectory nan", ValueError, "NaN", lambda: NufftMRI(nan_traj, (9, 8))),
        ("trajectory inf", ValueError, "NaN or Inf", lambda: NufftMRI(torch.full((2, 4), float("inf")), (9, 8))),
        ("trajectory int", TypeError, "floating", lambda: NufftMRI(torch.zeros(2, 4, dtype=torch.int32), (9, 8))),
        ("trajectory complex", TypeError, "complex", lambda: NufftMRI(torch.zeros(2, 4, dtype=torch.complex64), (9, 8))),
        ("maps size", ValueError, "match img_size", lambda: NufftMRI(traj, (9, 8), coil_maps=birdcage_maps(2, (8, 9)))),
        ("maps real", TypeError, "complex", lambda: NufftMRI(traj, (9, 8), coil_maps=torch.ones(2, 9, 8))),
        ("img_size", ValueError, "img_size", lambda: NufftMRI(traj, (9,))),
        ("density shape", ValueError, "one weight per sample", lambda: NufftMRI(traj, (9, 8), density=torch.ones(10))),
        ("density negative", ValueError, "non-negative", lambda: NufftMRI(traj, (9, 8), density=-torch.ones(64))),
        ("density name", ValueError, "'pipe'", lambda: NufftMRI(traj, (9, 8), density="voronoi")),
        ("radial spokes", ValueError, "n_spokes", lambda: radial_trajectory(0, 16)),
        ("spiral turns", ValueError, "turns", lambda: spiral_trajectory(2, 16, turns=-1.0)),
        ("acceleration", ValueError, "acceleration", lambda: spokes_for_acceleration(64, 0)),
        ("birdcage size", ValueError, "img_size", lambda: birdcage_maps(4, (9,))),
        ("estimate layout", ValueError, "shape", lambda: estimate_coil_maps(torch.randn(1, 2, 64), good)),
        ("estimate img_size", ValueError, "img_size", lambda: estimate_coil_maps(y, traj)),
    ]


_CASE_NAMES = [
    "image shape", "image channels", "complex image", "integer image", "k-space shape", "k-space length",
    "complex k-space", "normal op shape", "trajectory range", "trajectory +pi", "trajectory rows",
    "dynamic 3D", "trajectory ndim", "trajectory nan", "trajectory inf", "trajectory int",
    "trajectory complex", "maps size", "maps real", "img_size", "density shape", "density negative",
    "density name", "radial spokes", "spiral turns", "acceleration", "birdcage size", "estimate layout",
    "estimate img_size",
]


@pytest.fixture(scope="module")
def bad_inputs():
    return {case[0]: case[1:] for case in _bad_inputs()}


@pytest.mark.parametrize("name", _CASE_NAMES)
def test_bad_input_raises_clear_error(name, bad_inputs):
    assert set(bad_inputs) == set(_CASE_NAMES)
    error, message, call = bad_inputs[name]
    with pytest.raises(error, match=message):
        call()


def _fresh_torchkbnufft_import(importer):
    """Import torchkbnufft anew with ``importer`` (its jit warnings fire at import); return the warnings."""
    saved = {k: v for k, v in sys.modules.items() if k == "torchkbnufft" or k.startswith("torchkbnufft.")}
    try:
        for k in saved:
            del sys.modules[k]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importer()
        return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    finally:
        for k in [k for k in sys.modules if k == "torchkbnufft" or k.startswith("torchkbnufft.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def test_jit_warning_filtered_narrowly():
    """torchkbnufft's jit FutureWarning is silenced around our calls only; other warnings pass."""
    import importlib

    from deepinv_mol.physics.mri import _quiet_torchkbnufft, _torchkbnufft

    unfiltered = _fresh_torchkbnufft_import(lambda: importlib.import_module("torchkbnufft"))
    assert any("torch.jit.script" in m for m in unfiltered)  # the warning exists on this torch
    assert not any("torch.jit.script" in m for m in _fresh_torchkbnufft_import(_torchkbnufft))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_torchkbnufft():
            warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning)
            warnings.warn("another deprecation", FutureWarning)
            warnings.warn("`torch.jit.script` is deprecated", UserWarning)
        warnings.warn("`torch.jit.script` is deprecated. Please switch", FutureWarning)
    assert [str(w.message) for w in caught] == [
        "another deprecation",
        "`torch.jit.script` is deprecated",
        "`torch.jit.script` is deprecated. Please switch",
    ]


# ----------------------------------------------------------------------------- inside deepinv
def test_deepinv_l2_gradient_and_prox(multicoil, rng):
    import deepinv

    physics, _, x, _, y = multicoil
    z = torch.randn(x.shape, generator=rng)
    grad = deepinv.optim.L2().grad(z, y, physics)
    assert _rel(grad, physics.A_adjoint(physics.A(z) - y)) < 1e-4
    gamma = 0.5
    p = physics.prox_l2(z, y, gamma, max_iter=100, tol=1e-6)
    # normal equation of argmin gamma/2 ||Ap - y||^2 + 1/2 ||p - z||^2
    residual = gamma * physics.A_adjoint(physics.A(p) - y) + p - z
    assert residual.norm() / z.norm() < 1e-3


def test_deepinv_modl_trains_on_nufft(rng):
    import deepinv

    physics = NufftMRI(radial_trajectory(16, 40), (15, 13), coil_maps=birdcage_maps(2, (15, 13)), max_iter=30)
    denoiser = deepinv.models.DnCNN(in_channels=2, out_channels=2, depth=3, nf=8, pretrained=None)
    model = deepinv.models.MoDL(denoiser=denoiser, num_iter=2)
    x = torch.randn(2, 2, 15, 13, generator=rng)
    y = physics(x)
    x_hat = model(y, physics)
    assert x_hat.shape == x.shape
    loss = deepinv.loss.SupLoss()(x=x, x_net=x_hat, y=y, physics=physics, model=model).mean()
    loss.backward()
    params = dict(model.named_parameters())
    # deepinv's MoDL uses neither its sigma ("g_param", DnCNN ignores it) nor "lambda" (PnP prior)
    used = {name: p for name, p in params.items() if "g_param" not in name and "lambda" not in name}
    assert any("denoiser" in name for name in used) and any("stepsize" in name for name in used)
    for name, p in used.items():
        assert p.grad is not None and p.grad.shape == p.shape, name
        assert torch.isfinite(p.grad).all(), name
    # the data-consistency step size is learned through CG on the NUFFT normal operator
    assert any(params[name].grad.abs() > 0 for name in used if "stepsize" in name)


# ----------------------------------------------------------------------------- benchmark function
def test_bench_normal_operator_rows():
    """The benchmark's rows carry both timings and the Toeplitz/pair agreement (no timing asserted)."""
    from deepinv_mol.bench.nufft import bench_normal_operator

    before = torch.get_num_threads()
    rows = bench_normal_operator(img_size=16, n_coils=(3, 1), repeats=1, warmup=0, threads=1)
    assert torch.get_num_threads() == before
    assert [row["n_coils"] for row in rows] == [3, 1]
    for row in rows:
        assert row["spokes"] == spokes_for_acceleration(16, 4) and row["samples"] == row["spokes"] * 32
        assert row["rel_diff"] < 1e-4 and row["threads"] == 1
        assert row["toeplitz_ms"] > 0 and row["nufft_pair_ms"] > 0
        assert row["speedup"] == pytest.approx(row["nufft_pair_ms"] / row["toeplitz_ms"])
