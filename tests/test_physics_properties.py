"""Property-based tests (hypothesis) for the physics: random image shapes, batch sizes, coil counts,
frames, dtypes and normalisation keep the output shapes and adjointness of NufftMRI and AstraCT."""

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from deepinv_mol.physics import AstraCT, NufftMRI, birdcage_maps, radial_trajectory  # noqa: E402

SETTINGS = settings(max_examples=8, deadline=None, derandomize=True)


def _adjointness(physics, x, dtype):
    """|<Ax, y> - <x, A^H y>| / (||Ax|| ||y||) for a random y."""
    ax = physics.A(x)
    y = torch.randn(ax.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    lhs = (ax * y).sum()
    rhs = (x * physics.A_adjoint(y)).sum()
    return (lhs - rhs).abs().item() / (ax.norm() * y.norm()).item()


@SETTINGS
@given(
    h=st.integers(4, 17),
    w=st.integers(4, 17),
    batch=st.integers(1, 3),
    coils=st.integers(0, 3),
    frames=st.sampled_from([None, 2]),
    spokes=st.integers(2, 9),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    normalize=st.booleans(),
    toeplitz=st.booleans(),
)
def test_nufft_shapes_and_adjointness(h, w, batch, coils, frames, spokes, dtype, normalize, toeplitz):
    img = (h, w)
    traj = radial_trajectory(spokes, 2 * max(h, w), frames=frames)
    maps = birdcage_maps(coils, img) if coils else None
    physics = NufftMRI(traj, img, coil_maps=maps, toeplitz=toeplitz, normalize=normalize).to(dtype)
    t = () if frames is None else (frames,)
    x = torch.randn((batch, 2) + t + img, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = physics.A(x)
    assert y.shape == (batch, 2) + t + (max(coils, 1), traj.shape[-1])
    assert y.dtype == dtype
    assert physics.A_adjoint(y).shape == x.shape
    assert physics.A_adjoint_A(x).shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert _adjointness(physics, x, dtype) < tol
    if normalize:  # A^H A x never grows x (||A|| = 1 up to the power iteration's tolerance)
        assert physics.A_adjoint_A(x).norm() <= x.norm() * (1 + 1e-3)


@SETTINGS
@given(
    h=st.integers(5, 24),
    w=st.integers(5, 24),
    depth=st.sampled_from([None, 2]),
    batch=st.integers(1, 3),
    channels=st.integers(1, 2),
    views=st.integers(2, 12),
    geometry=st.sampled_from(["parallel", "fanbeam"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    normalize=st.booleans(),
)
def test_ct_shapes_and_adjointness(h, w, depth, batch, channels, views, geometry, dtype, normalize):
    if geometry == "fanbeam":
        depth = None  # fan beam is 2D
    img = (h, w) if depth is None else (depth, h, w)
    span = math.pi if geometry == "parallel" else 2 * math.pi
    angles = torch.linspace(0, span, views + 1)[:-1]
    physics = AstraCT(img, angles, geometry=geometry, backend="cpu", normalize=normalize).to(dtype)
    x = torch.randn((batch, channels) + img, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = physics.A(x)
    assert y.shape == (batch, channels) + physics.measurement_shape
    assert y.dtype == dtype
    assert physics.A_adjoint(y).shape == x.shape
    assert physics.angles.dtype == torch.float64  # the geometry never loses precision on .to(dtype)
    assert _adjointness(physics, x, dtype) < 1e-5
    if normalize:
        assert physics.A_adjoint(physics.A(x)).norm() <= x.norm() * (1 + 1e-3)
