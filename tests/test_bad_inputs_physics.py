"""Table of bad inputs to the physics (operators, trajectories, coil maps, noise): each one gives a clear
error naming the problem, a warning for a likely mistake, or a documented result. No silent NaN.

Each case is ``(name, call, expected, message)``: ``expected`` is an exception class (raised, message
matching the regex ``message``), a warning class (warned, message matching), or ``None`` (accepted:
``call`` returns and checks the documented result itself).
"""

import math
import warnings

import pytest
import torch

from deepinv_mol.physics import (
    AstraCT,
    NufftMRI,
    RelativeGaussianNoise,
    birdcage_maps,
    estimate_coil_maps,
    radial_trajectory,
    spiral_trajectory,
)

IMG = (9, 8)


def _mri(**kwargs):
    return NufftMRI(radial_trajectory(6, 16), IMG, **kwargs)


def _ct(**kwargs):
    kwargs.setdefault("backend", "cpu")
    return AstraCT(kwargs.pop("img_size", (8, 8)), kwargs.pop("angles", torch.linspace(0, math.pi, 7)[:-1]), **kwargs)


def _nan_image():
    x = torch.zeros(1, 2, *IMG)
    x[0, 0, 3, 3] = float("nan")
    return x


def _float64_radial():
    """A float64 copy of radial_trajectory (its float32 -pi is 8.7e-8 below -pi in float64): accepted."""
    traj = radial_trajectory(6, 16).double()
    assert traj.min().item() < -math.pi  # the case the issue reported
    physics = NufftMRI(traj, IMG)
    reference = NufftMRI(radial_trajectory(6, 16), IMG)
    x = torch.randn(1, 2, *IMG)
    assert torch.equal(physics.A(x), reference.A(x))


def _float64_below_pi_by_far():
    NufftMRI(torch.full((2, 4), -math.pi - 1e-3, dtype=torch.float64), IMG)


def _to_half():
    _mri().to(torch.float16)


def _to_float32_no_op():
    physics = _mri(coil_maps=birdcage_maps(2, IMG))
    x = torch.randn(1, 2, *IMG)
    y = physics.A(x)
    physics.to(torch.float32)
    assert physics.coil_maps.dtype == torch.complex64 and physics.toeplitz_kernel.is_complex()
    assert torch.equal(physics.A(x), y)


def _fan_fbp_empty():
    physics = _ct(geometry="fanbeam", angles=torch.linspace(0, 2 * math.pi, 9)[:-1])
    physics._fanbeam_fbp_cpu(torch.zeros(0, *physics.measurement_shape).numpy())


def _ct_nan():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2, 2] = float("inf")
    _ct().A(x)


def _old_state_dicts():
    """State dicts saved before normalisation (no ``operator_norm``) still load: the operator keeps its own."""
    for physics in (_mri(), _ct()):
        state = physics.state_dict()
        norm = state.pop("operator_norm").clone()
        physics.load_state_dict(state)
        assert torch.equal(physics.operator_norm, norm)


def _noise_nan_snr():
    RelativeGaussianNoise(float("nan"))


CASES = [
    # ---------------------------------------------------------------- NufftMRI
    ("mri NaN image", lambda: _mri().A(_nan_image()), ValueError, r"image containing NaN or Inf"),
    ("mri Inf k-space", lambda: _mri().A_adjoint(torch.full((1, 2, 1, 96), float("inf"))), ValueError,
     r"k-space containing NaN or Inf"),
    ("mri NaN normal op", lambda: _mri().A_adjoint_A(_nan_image()), ValueError, r"NaN or Inf"),
    ("mri empty batch image", lambda: _mri().A(torch.zeros(0, 2, *IMG)), ValueError, r"empty batch.*B must be >= 1"),
    ("mri empty batch k-space", lambda: _mri().A_adjoint(torch.zeros(0, 2, 1, 96)), ValueError, r"empty batch"),
    ("mri empty batch normal", lambda: _mri().A_adjoint_A(torch.zeros(0, 2, *IMG)), ValueError, r"empty batch"),
    ("mri huge size", lambda: NufftMRI(torch.zeros(3, 10), (4096, 4096, 4096)), ValueError,
     r"needs about [0-9.]+ GiB"),
    ("mri huge coil count", lambda: NufftMRI(torch.zeros(2, 10), (8192, 8192), coil_maps=torch.ones(
        4096, 1, 1, dtype=torch.complex64).expand(4096, 8192, 8192)), ValueError, r"GiB"),
    ("mri float64 radial copy", _float64_radial, None, ""),
    ("mri trajectory below -pi", _float64_below_pi_by_far, ValueError, r"\[-pi, pi\)"),
    ("mri normalize not bool", lambda: _mri(normalize="yes"), TypeError, r"normalize must be a bool"),
    ("mri dtype float16", lambda: _mri(dtype=torch.float16), TypeError, r"float32 or torch.float64"),
    ("mri .to(float16)", _to_half, TypeError, r"float32 or float64"),
    ("mri .to(float32) no-op", _to_float32_no_op, None, ""),
    ("mri density_compensate str", lambda: _mri().A_dagger(torch.zeros(1, 2, 1, 96), density_compensate="yes"),
     TypeError, r"density_compensate must be a bool"),
    ("mri zero coils", lambda: _mri(coil_maps=torch.ones(0, *IMG, dtype=torch.complex64)), ValueError,
     r"at least one coil"),
    ("mri per-batch maps empty", lambda: _mri(coil_maps=torch.ones(0, 2, *IMG, dtype=torch.complex64)),
     ValueError, r"empty batch"),
    ("mri zero coil maps", lambda: _mri(coil_maps=torch.zeros(2, *IMG, dtype=torch.complex64)), ValueError,
     r"zero operator"),
    ("mri img_size bool", lambda: NufftMRI(radial_trajectory(6, 16), (True, 8)), ValueError, r"ints >= 2"),
    ("mri image wrong shape", lambda: _mri().A(torch.zeros(1, 2, 8, 9)), ValueError, r"expects image of shape"),
    ("mri complex image", lambda: _mri().A(torch.zeros(1, 2, *IMG, dtype=torch.complex64)), TypeError,
     r"real tensor"),
    ("mri integer image", lambda: _mri().A(torch.zeros(1, 2, *IMG, dtype=torch.int64)), TypeError,
     r"floating-point"),
    ("mri image not a tensor", lambda: _mri().A([[0.0]]), TypeError, r"must be a torch.Tensor"),
    # ---------------------------------------------------------------- AstraCT
    ("ct zero angles", lambda: _ct(angles=torch.zeros(0)), ValueError, r"non-empty 1D"),
    ("ct angles in degrees", lambda: _ct(angles=torch.arange(0.0, 180.0, 30.0)), UserWarning, r"radians.*deg2rad"),
    ("ct angles update in degrees", lambda: _ct().update_parameters(angles=torch.tensor([0.0, 90.0])), UserWarning,
     r"beyond 2\*pi"),
    ("ct 1 detector", lambda: _ct(n_detectors=1), UserWarning, r"1 detector cell"),
    ("ct 3 detectors", lambda: _ct(n_detectors=3), UserWarning, r"3 detector cell"),
    ("ct empty batch x", lambda: _ct().A(torch.zeros(0, 1, 8, 8)), ValueError, r"empty batch"),
    ("ct empty channels x", lambda: _ct().A(torch.zeros(1, 0, 8, 8)), ValueError, r"empty batch"),
    ("ct empty batch y", lambda: _ct().A_adjoint(torch.zeros(0, 1, 6, 13)), ValueError, r"empty batch"),
    ("ct empty batch fbp", lambda: _ct().fbp(torch.zeros(0, 1, 6, 13)), ValueError, r"empty batch"),
    ("ct empty batch fan fbp", _fan_fbp_empty, ValueError, r"empty batch"),
    ("ct Inf image", _ct_nan, ValueError, r"NaN or Inf"),
    ("ct huge size", lambda: _ct(img_size=(200_000, 200_000), angles=torch.linspace(0, 3, 10_000)), ValueError,
     r"needs about [0-9.]+ GiB"),
    ("ct normalize not bool", lambda: _ct(normalize=1), TypeError, r"normalize must be a bool"),
    ("ct fan fbp half turn", lambda: (lambda p: p.fbp(p.A(torch.ones(1, 1, 8, 8))))(
        _ct(geometry="fanbeam", angles=torch.linspace(0, math.pi, 7)[:-1])), ValueError, r"full turn"),
    ("ct NaN angles", lambda: _ct(angles=torch.tensor([0.0, float("nan")])), ValueError, r"finite"),
    ("ct complex sinogram", lambda: _ct().A_adjoint(torch.zeros(1, 1, 6, 13, dtype=torch.complex64)), TypeError,
     r"real"),
    ("old state_dict without operator_norm", _old_state_dicts, None, ""),
    # ---------------------------------------------------------------- trajectories, coils, noise
    ("radial zero samples", lambda: radial_trajectory(4, 0), ValueError, r"n_samples"),
    ("radial zero frames", lambda: radial_trajectory(4, 8, frames=0), ValueError, r"frames"),
    ("spiral zero interleaves", lambda: spiral_trajectory(0, 16), ValueError, r"n_interleaves"),
    ("birdcage zero coils", lambda: birdcage_maps(0, IMG), ValueError, r"n_coils"),
    ("estimate maps wrong layout", lambda: estimate_coil_maps(torch.randn(1, 2, 64), radial_trajectory(4, 16), IMG),
     ValueError, r"shape"),
    ("noise NaN snr", _noise_nan_snr, ValueError, r"snr_db must be finite"),
]


@pytest.mark.parametrize("name, call, expected, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, expected, message):
    if expected is None:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # an accepted input does not warn either
            call()
    elif issubclass(expected, Warning):
        with pytest.warns(expected, match=message):
            call()
    else:
        with pytest.raises(expected, match=message):
            call()


def test_case_names_unique():
    names = [c[0] for c in CASES]
    assert len(names) == len(set(names))
