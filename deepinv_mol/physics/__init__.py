r"""Physics operators (``deepinv.physics.LinearPhysics``) that deepinv lacks on a CPU.

* :class:`NufftMRI` -- non-Cartesian MRI on torchkbnufft (2D, 3D, 2D+time, multi-coil, Toeplitz).
* :class:`AstraCT` -- CT on ASTRA: 2D parallel/fan beam on CPU and GPU, 3D on GPU (3D parallel also on CPU).
* trajectories (:func:`radial_trajectory`, :func:`spiral_trajectory`, :func:`spokes_for_acceleration`)
  and coil maps (:func:`birdcage_maps`, :func:`estimate_coil_maps`).
* :class:`RelativeGaussianNoise` -- Gaussian noise at a fixed measurement SNR (per batch item).

Names are resolved lazily so ``import deepinv_mol.physics`` does not import torchkbnufft or ASTRA.
"""

from .._lazy import lazy_names

_NAMES = {
    "NufftMRI": ".mri",
    "radial_trajectory": ".trajectories",
    "spiral_trajectory": ".trajectories",
    "spokes_for_acceleration": ".trajectories",
    "birdcage_maps": ".coils",
    "estimate_coil_maps": ".coils",
    "AstraCT": ".ct",
    "RelativeGaussianNoise": ".noise",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _NAMES)
