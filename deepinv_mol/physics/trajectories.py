r"""Non-Cartesian k-space trajectories for :class:`deepinv_mol.physics.NufftMRI`.

Conventions shared by every generator here:

* k-space coordinates are in **radians per voxel**, every coordinate in :math:`[-\pi, \pi)`
  (torchkbnufft's ``omega``); row ``d`` of a trajectory pairs with image axis ``d`` (row 0 with
  :math:`H`, row 1 with :math:`W`);
* a static trajectory has shape ``(2, K)``; a dynamic one (``frames=T``) has shape ``(T, 2, K)``,
  one trajectory per frame;
* samples are ordered readout by readout (``K = n_readouts * n_samples``, samples of one spoke or
  interleave contiguous); ``float32``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = [
    "GOLDEN_ANGLE_RADIAL",
    "GOLDEN_ANGLE_SPIRAL",
    "radial_trajectory",
    "spiral_trajectory",
    "spokes_for_acceleration",
]

#: Golden angle for spokes through the centre (angles taken modulo :math:`\pi`):
#: :math:`\pi / \varphi = \pi (\sqrt 5 - 1) / 2 \approx 111.25^\circ`.
GOLDEN_ANGLE_RADIAL = math.pi * (math.sqrt(5.0) - 1.0) / 2.0

#: Golden angle for centre-out readouts (angles taken modulo :math:`2\pi`):
#: :math:`2\pi / \varphi^2 = \pi (3 - \sqrt 5) \approx 137.51^\circ`.
GOLDEN_ANGLE_SPIRAL = math.pi * (3.0 - math.sqrt(5.0))


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _frames(frames) -> int | None:
    return None if frames is None else _positive_int(frames, "frames")


def _wrap(k: torch.Tensor) -> torch.Tensor:
    """Cast to float32 and fold values that rounded onto +pi back to -pi (the NUFFT is 2pi-periodic)."""
    k = k.to(torch.float32)
    return torch.where(k >= math.pi, k - 2 * math.pi, k)


def _readout_angles(n_readouts: int, frames: int | None, golden: bool, span: float, golden_step: float):
    """Angles ``(T, n_readouts)`` in ``[0, span)``; frame t continues where frame t-1 stopped."""
    t_count = 1 if frames is None else frames
    index = torch.arange(t_count * n_readouts, dtype=torch.float64).reshape(t_count, n_readouts)
    if golden:
        return torch.remainder(index * golden_step, span)
    # uniform within a frame, frames interleaved: together they are uniform over T*n_readouts readouts
    spoke = torch.arange(n_readouts, dtype=torch.float64)[None, :]
    frame = torch.arange(t_count, dtype=torch.float64)[:, None]
    return (spoke * t_count + frame) * (span / (n_readouts * t_count))


def _stack(kx: torch.Tensor, ky: torch.Tensor, frames: int | None) -> torch.Tensor:
    # kx, ky: (T, n_readouts, n_samples) float64 -> (T, 2, K) or (2, K)
    traj = _wrap(torch.stack((kx.flatten(1), ky.flatten(1)), dim=1))
    return traj[0] if frames is None else traj


def radial_trajectory(
    n_spokes: int, n_samples: int, golden: bool = True, frames: int | None = None
) -> torch.Tensor:
    r"""Radial trajectory: ``n_spokes`` spokes through the centre of k-space, ``n_samples`` samples each.

    Spoke :math:`s` has angle :math:`\theta_s` and samples

    .. math::

        k_j = r_j (\cos\theta_s, \sin\theta_s), \qquad
        r_j = \frac{2\pi}{n_\text{samples}}\left(j - \frac{n_\text{samples}}{2}\right),
        \quad j = 0, \dots, n_\text{samples} - 1,

    so :math:`r \in [-\pi, \pi)` (one sample per :math:`2\pi / n_\text{samples}` radians: choose
    ``n_samples = 2 N`` for an :math:`N \times N` image to oversample the readout twice).

    * ``golden=True``: :math:`\theta_s = s \, \pi / \varphi \bmod \pi` (golden angle
      :math:`\approx 111.25^\circ`); any run of consecutive spokes covers the half circle nearly
      uniformly (at most three distinct gaps), which is what makes retrospective binning possible.
    * ``golden=False``: uniform angles :math:`\theta_s = s\pi / n_\text{spokes}`.

    Dynamic (``frames=T``): frame :math:`t` holds spokes :math:`t\,n_\text{spokes}, \dots,
    (t+1)\,n_\text{spokes} - 1` of the same sequence (golden angle: the acquisition simply continues;
    uniform: frame :math:`t` is rotated by :math:`t\pi / (T n_\text{spokes})`), so the frames together
    form one trajectory of :math:`T n_\text{spokes}` spokes.

    :param int n_spokes: spokes per frame.
    :param int n_samples: samples per spoke.
    :param bool golden: golden-angle (default) or uniform angular ordering.
    :param int, None frames: number of frames :math:`T` for a dynamic trajectory; ``None`` for static.
    :return: (:class:`torch.Tensor`) ``float32`` trajectory, ``(2, n_spokes * n_samples)`` or
        ``(frames, 2, n_spokes * n_samples)``, radians in :math:`[-\pi, \pi)`.

    :Examples:

        >>> from deepinv_mol.physics import radial_trajectory
        >>> radial_trajectory(16, 64).shape
        torch.Size([2, 1024])
        >>> radial_trajectory(8, 32, frames=5).shape
        torch.Size([5, 2, 256])
    """
    n_spokes = _positive_int(n_spokes, "n_spokes")
    n_samples = _positive_int(n_samples, "n_samples")
    frames = _frames(frames)
    theta = _readout_angles(n_spokes, frames, golden, math.pi, GOLDEN_ANGLE_RADIAL)[..., None]
    r = (torch.arange(n_samples, dtype=torch.float64) - n_samples / 2) * (2 * math.pi / n_samples)
    return _stack(r * torch.cos(theta), r * torch.sin(theta), frames)


def spiral_trajectory(
    n_interleaves: int,
    n_samples: int,
    turns: float = 8.0,
    golden: bool = False,
    frames: int | None = None,
) -> torch.Tensor:
    r"""Archimedean spiral trajectory: ``n_interleaves`` centre-out interleaves of ``n_samples`` samples.

    Interleave :math:`l` with rotation :math:`\theta_l` samples, for :math:`t_j = j / n_\text{samples}`,

    .. math::

        k_j = \pi t_j \left(\cos(2\pi\,\text{turns}\, t_j + \theta_l),\;
        \sin(2\pi\,\text{turns}\, t_j + \theta_l)\right),

    i.e. constant angular velocity, radius growing linearly from 0 to just below :math:`\pi`.
    Adjacent arms of the :math:`L` interleaves are :math:`\pi / (\text{turns}\,L)` radians apart, so
    an :math:`N \times N` image is Nyquist-sampled when :math:`\text{turns} \cdot L \ge N / 2`; fewer
    turns undersample by :math:`N / (2\,\text{turns}\,L)`. An arm is about :math:`\pi^2\,\text{turns}`
    radians long, so ``n_samples`` :math:`\ge \pi\,\text{turns}\,N / 2` keeps successive samples
    within one Cartesian k-space step (:math:`2\pi/N`) of each other.

    * ``golden=False`` (default): :math:`\theta_l = 2\pi l / L`.
    * ``golden=True``: :math:`\theta_l = l \cdot 2\pi / \varphi^2 \bmod 2\pi` (:math:`\approx 137.51^\circ`).

    Dynamic (``frames=T``): as :func:`radial_trajectory`, frame :math:`t` continues the interleave
    sequence (golden) or is rotated by :math:`2\pi t / (T L)` (uniform).

    :param int n_interleaves: interleaves (arms) per frame.
    :param int n_samples: samples per interleave.
    :param float turns: revolutions of each arm around the centre (positive).
    :param bool golden: golden-angle or uniform (default) rotation of the interleaves.
    :param int, None frames: number of frames for a dynamic trajectory; ``None`` for static.
    :return: (:class:`torch.Tensor`) ``float32`` trajectory ``(2, K)`` or ``(frames, 2, K)``,
        ``K = n_interleaves * n_samples``, radians in :math:`[-\pi, \pi)`.

    :Examples:

        >>> from deepinv_mol.physics import spiral_trajectory
        >>> spiral_trajectory(4, 500, turns=6).shape
        torch.Size([2, 2000])
    """
    n_interleaves = _positive_int(n_interleaves, "n_interleaves")
    n_samples = _positive_int(n_samples, "n_samples")
    frames = _frames(frames)
    if not (isinstance(turns, (int, float)) and math.isfinite(turns) and turns > 0):
        raise ValueError(f"turns must be a positive finite number, got {turns!r}")
    theta = _readout_angles(n_interleaves, frames, golden, 2 * math.pi, GOLDEN_ANGLE_SPIRAL)[..., None]
    t = torch.arange(n_samples, dtype=torch.float64) / n_samples
    phase = 2 * math.pi * turns * t + theta
    r = math.pi * t
    return _stack(r * torch.cos(phase), r * torch.sin(phase), frames)


def spokes_for_acceleration(matrix_size: int | Sequence[int], acceleration: float) -> int:
    r"""Number of radial spokes that undersample an :math:`N \times N` matrix by ``acceleration``.

    A radial acquisition meets the Nyquist criterion at the edge of k-space with
    :math:`\frac{\pi}{2} N` full spokes (angular spacing :math:`\le 2\pi/N` at radius :math:`\pi`);
    an acceleration :math:`R` keeps :math:`\lceil \pi N / (2R) \rceil` of them.

    :param int, tuple matrix_size: :math:`N`, or an image size whose largest entry is used.
    :param float acceleration: undersampling factor :math:`R > 0` (``1`` for Nyquist).
    :return: (int) number of spokes, at least 1.

    :Examples:

        >>> from deepinv_mol.physics import spokes_for_acceleration
        >>> spokes_for_acceleration(256, 4)
        101
    """
    sizes = tuple(matrix_size) if isinstance(matrix_size, (tuple, list, torch.Size)) else (matrix_size,)
    if not sizes:
        raise ValueError("matrix_size must not be empty")
    for n in sizes:
        _positive_int(n, "matrix_size")
    if isinstance(acceleration, bool) or not isinstance(acceleration, (int, float)):
        raise TypeError(f"acceleration must be a number, got {type(acceleration).__name__}")
    if not (math.isfinite(acceleration) and acceleration > 0):
        raise ValueError(f"acceleration must be positive and finite, got {acceleration!r}")
    return max(1, math.ceil(math.pi * max(sizes) / (2 * acceleration)))
