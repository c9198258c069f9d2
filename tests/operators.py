"""The one list of operators and the one factory every physics contract test runs over.

A new operator enrols in every contract test by adding one name to :data:`OPERATORS` and one branch
to :func:`make_operator`. Sizes are small and odd (catching shape bugs) so the suite stays fast.
"""

import math

import torch

OPERATORS = [
    "nufft-2d-single",
    "nufft-2d-single-nufft",  # toeplitz=False: the NUFFT pair as the normal operator
    "nufft-2d-multicoil",
    "nufft-2d-multicoil-nufft",
    "nufft-3d",
    "nufft-3d-nufft",
    "nufft-dynamic",
    "nufft-dynamic-nufft",
    "ct-parallel",
    "ct-fanbeam",
    "ct-parallel3d-cpu",
    # normalize=False: the unitary-DFT / physical-length scale the shipped weights were trained on
    "nufft-2d-multicoil-raw",
    "ct-fanbeam-raw",
]


def _randn(shape, rng, device):
    return torch.randn(shape, generator=rng).to(device)


def make_operator(name, device="cpu", rng=None, batch=2, dtype=None):
    """Return ``(physics, x)``: an operator ``name`` on ``device`` and a random image batch for it.

    Names ending in ``-raw`` build the operator with ``normalize=False`` (every other one has the
    default ``normalize=True``). ``dtype=torch.float64`` builds a NufftMRI in double precision from the
    start (AstraCT always computes in float32 and has no such option).
    """
    rng = torch.Generator().manual_seed(0) if rng is None else rng
    normalize = not name.endswith("-raw")
    name = name.removesuffix("-raw")
    if name.startswith("nufft"):
        from functools import partial

        from deepinv_mol.physics import NufftMRI as _NufftMRI
        from deepinv_mol.physics import birdcage_maps, radial_trajectory

        NufftMRI = partial(_NufftMRI, normalize=normalize, **({} if dtype is None else {"dtype": dtype}))
        toeplitz = not name.endswith("-nufft")
        base = name.removesuffix("-nufft")
        if base in ("nufft-2d-single", "nufft-2d-multicoil"):
            img = (37, 31)
            traj = radial_trajectory(n_spokes=24, n_samples=64)
            coils = birdcage_maps(4, img) if base == "nufft-2d-multicoil" else None
            physics = NufftMRI(traj, img, coil_maps=coils, toeplitz=toeplitz, device=device)
            x = _randn((batch, 2) + img, rng, device)
        elif base == "nufft-3d":
            img = (9, 13, 11)
            traj = torch.rand(3, 900, generator=rng) * 2 * math.pi - math.pi
            physics = NufftMRI(traj, img, toeplitz=toeplitz, device=device)
            x = _randn((batch, 2) + img, rng, device)
        elif base == "nufft-dynamic":
            img = (21, 19)
            traj = radial_trajectory(n_spokes=8, n_samples=40, frames=3)
            coils = birdcage_maps(2, img)
            physics = NufftMRI(traj, img, coil_maps=coils, toeplitz=toeplitz, device=device)
            x = _randn((batch, 2, 3) + img, rng, device)
        else:
            raise ValueError(f"unknown operator {name!r}")
        return physics, x
    if name.startswith("ct"):
        from functools import partial

        from deepinv_mol.physics import AstraCT as _AstraCT

        AstraCT = partial(_AstraCT, normalize=normalize)

        angles = torch.linspace(0, math.pi, 30 + 1)[:-1]
        if name == "ct-parallel":
            img = (33, 33)
            physics = AstraCT(img, angles, geometry="parallel", backend="cpu", device=device)
            x = _randn((batch, 1) + img, rng, device)
        elif name == "ct-fanbeam":
            img = (33, 33)
            angles = torch.linspace(0, 2 * math.pi, 40 + 1)[:-1]
            physics = AstraCT(img, angles, geometry="fanbeam", backend="cpu", device=device)
            x = _randn((batch, 1) + img, rng, device)
        elif name == "ct-parallel3d-cpu":
            img = (5, 33, 33)
            physics = AstraCT(img, angles, geometry="parallel", backend="cpu", device=device)
            x = _randn((batch, 1) + img, rng, device)
        else:
            raise ValueError(f"unknown operator {name!r}")
        return physics, x
    raise ValueError(f"unknown operator {name!r}")
