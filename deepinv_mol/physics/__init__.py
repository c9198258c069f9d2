r"""Physics operators (``deepinv.physics.LinearPhysics``) that deepinv lacks on a CPU.

* :class:`NufftMRI` -- non-Cartesian MRI on torchkbnufft (2D, 3D, 2D+time, multi-coil, Toeplitz).
* :class:`AstraCT` -- CT on ASTRA: 2D parallel/fan beam on CPU and GPU, 3D on GPU (3D parallel also on CPU).
* trajectories (:func:`radial_trajectory`, :func:`spiral_trajectory`, :func:`spokes_for_acceleration`)
  and coil maps (:func:`birdcage_maps`, :func:`estimate_coil_maps`).

Names are resolved lazily so ``import deepinv_mol.physics`` does not import torchkbnufft or ASTRA.
"""

import importlib

_NAMES = {
    "NufftMRI": ".mri",
    "radial_trajectory": ".trajectories",
    "spiral_trajectory": ".trajectories",
    "spokes_for_acceleration": ".trajectories",
    "birdcage_maps": ".coils",
    "estimate_coil_maps": ".coils",
    "AstraCT": ".ct",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
