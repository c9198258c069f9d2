r"""Coil sensitivity maps: a birdcage simulator (torch, no sigpy) and an estimate from k-space data.

Maps are complex tensors ``(C, H, W)`` or ``(C, D, H, W)`` (``(B, C, ...)`` per batch), the layout
:class:`deepinv_mol.physics.NufftMRI` takes as ``coil_maps``.
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Sequence

import torch

from ._utils import spatial_size

__all__ = ["birdcage_maps", "estimate_coil_maps"]

if TYPE_CHECKING:  # pragma: no cover
    from .mri import NufftMRI


def birdcage_maps(
    n_coils: int,
    img_size: Sequence[int],
    radius: float = 1.5,
    coils_per_ring: int = 8,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    r"""Simulated birdcage coil sensitivities, normalised to unit root-sum-of-squares.

    Coil :math:`c` is a wire at :math:`p_c` on a circle of radius ``radius`` (in units of half the
    field of view, so ``radius > 1`` puts the coils outside the image) at angle
    :math:`\phi_c = 2\pi c / C`. Its raw sensitivity at pixel position :math:`r` (coordinates scaled
    to :math:`[-1, 1)` per axis) decays with distance and turns its phase around the wire,

    .. math::

        \tilde S_c(r) = \frac{1}{\|r - p_c\|} \exp\!\big(i\,(\operatorname{atan2}(r_x - p_{c,x},
        -(r_y - p_{c,y})) - \phi_c)\big), \qquad
        S_c = \tilde S_c \Big/ \sqrt{\textstyle\sum_{c'} |\tilde S_{c'}|^2},

    so :math:`\sum_c |S_c|^2 = 1` at every pixel. This is the model of ``sigpy.mri.birdcage_maps``,
    re-implemented in torch so that the package does not depend on sigpy. In 3D (``img_size=(D, H,
    W)``) the coils sit on rings of ``coils_per_ring`` stacked along :math:`z`.

    :param int n_coils: number of coils :math:`C`.
    :param tuple img_size: ``(H, W)`` or ``(D, H, W)``.
    :param float radius: radius of the coil circle relative to half the field of view.
    :param int coils_per_ring: coils per ring along :math:`z` (3D only).
    :param torch.dtype dtype: complex output dtype.
    :param torch.device, str device: output device.
    :return: (:class:`torch.Tensor`) complex maps ``(C, *img_size)`` with unit root-sum-of-squares.

    :Examples:

        >>> import torch
        >>> from deepinv_mol.physics import birdcage_maps
        >>> maps = birdcage_maps(8, (32, 32))
        >>> maps.shape, bool(torch.allclose(maps.abs().pow(2).sum(0), torch.ones(32, 32)))
        (torch.Size([8, 32, 32]), True)
    """
    if isinstance(n_coils, bool) or not isinstance(n_coils, int) or n_coils < 1:
        raise ValueError(f"n_coils must be a positive int, got {n_coils!r}")
    size = spatial_size(img_size)
    if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    if not dtype.is_complex:
        raise TypeError(f"dtype must be complex, got {dtype}")
    real = torch.float64
    c = torch.arange(n_coils, dtype=real)
    axes = [(torch.arange(n, dtype=real) - n / 2) / (n / 2) for n in size]
    grids = torch.meshgrid(*axes, indexing="ij")
    if len(size) == 2:
        y, x = grids
        phi = 2 * math.pi * c / n_coils
        coil_phase = -phi
        dz2 = 0.0
    else:
        if isinstance(coils_per_ring, bool) or not isinstance(coils_per_ring, int) or coils_per_ring < 1:
            raise ValueError(f"coils_per_ring must be a positive int, got {coils_per_ring!r}")
        z, y, x = grids
        ring = torch.floor(c / coils_per_ring)
        phi = 2 * math.pi * c / coils_per_ring
        coil_phase = -(c + ring) * (2 * math.pi / coils_per_ring)
        coil_z = ring - 0.5 * (math.ceil(n_coils / coils_per_ring) - 1)
        view = (-1,) + (1,) * len(size)
        dz2 = (z[None] - coil_z.view(view)) ** 2
    view = (-1,) + (1,) * len(size)
    dx = x[None] - (radius * torch.cos(phi)).view(view)
    dy = y[None] - (radius * torch.sin(phi)).view(view)
    distance = torch.sqrt(dx**2 + dy**2 + dz2)
    angle = torch.atan2(dx, -dy) + coil_phase.view(view)
    maps = torch.polar(1.0 / distance, angle)
    maps = maps / maps.abs().pow(2).sum(0, keepdim=True).sqrt()
    return maps.to(device=device, dtype=dtype)


def _calibration_window(trajectory: torch.Tensor, im_size, calibration_size: float) -> torch.Tensor:
    """cos^2 taper on the k-space disc of diameter ``calibration_size`` Cartesian steps; shape (..., K)."""
    scale = torch.tensor(im_size, dtype=trajectory.dtype, device=trajectory.device)
    # a Cartesian k-space step along axis d is 2*pi/N_d radians
    rho = ((trajectory * scale[:, None] / (math.pi * calibration_size)) ** 2).sum(-2).sqrt()
    return torch.where(rho < 1, torch.cos(0.5 * math.pi * rho) ** 2, torch.zeros_like(rho))


def estimate_coil_maps(
    y: torch.Tensor,
    physics_or_trajectory: "NufftMRI | torch.Tensor",
    img_size: Sequence[int] | None = None,
    calibration_size: float = 24,
    threshold: float = 0.0,
    eps: float = 1e-3,
) -> torch.Tensor:
    r"""Estimate coil sensitivities from multi-coil non-Cartesian k-space (centre-of-k-space ratio).

    Each coil's k-space is weighted by the density compensation :math:`w` and a :math:`\cos^2` taper
    :math:`h` that keeps only the central disc of ``calibration_size`` Cartesian k-space steps in
    diameter, and gridded to a low-resolution coil image :math:`c_i = A_1^H(h\,w\,y_i)`
    (:math:`A_1` the single-coil NUFFT). Coil sensitivities vary slowly, so
    :math:`c_i \approx S_i \cdot \operatorname{lowres}(x)`, and the ratio to the root-sum-of-squares
    cancels the object:

    .. math::

        \hat S_i = \frac{c_i}{\max\left(\sqrt{\sum_j |c_j|^2},\; \epsilon \max \sqrt{\sum_j |c_j|^2}\right)},

    normalised to :math:`\sum_i |\hat S_i|^2 = 1` wherever the signal exceeds the floor
    :math:`\epsilon`. The estimate carries the low-resolution phase of the object (common to all
    coils, harmless for SENSE-type reconstructions). Pixels whose root-sum-of-squares is below
    ``threshold`` times its maximum (background) are set to zero. For dynamic data the coil images of
    all frames are summed (the coils do not move).

    :param torch.Tensor y: k-space ``(B, 2, C, K)`` or ``(B, 2, T, C, K)`` (deepinv's two-channel layout).
    :param physics_or_trajectory: a :class:`deepinv_mol.physics.NufftMRI` (its trajectory, image size
        and density compensation are used) or a trajectory tensor ``(ndim, K)`` / ``(T, 2, K)``.
    :param tuple img_size: ``(H, W)`` or ``(D, H, W)``; required with a trajectory, ignored with a physics.
    :param float calibration_size: diameter of the calibration region in Cartesian k-space steps
        (:math:`2\pi/N` radians each).
    :param float threshold: relative root-sum-of-squares below which the maps are zeroed (0 keeps all).
    :param float eps: relative floor of the normalisation.
    :return: (:class:`torch.Tensor`) complex maps ``(B, C, *img_size)``.

    :Examples:

        >>> import torch
        >>> from deepinv_mol.physics import NufftMRI, birdcage_maps, estimate_coil_maps, radial_trajectory
        >>> physics = NufftMRI(radial_trajectory(32, 64), (32, 32), coil_maps=birdcage_maps(4, (32, 32)))
        >>> maps = estimate_coil_maps(physics.A(torch.randn(1, 2, 32, 32)), physics)
        >>> maps.shape
        torch.Size([1, 4, 32, 32])
    """
    from .mri import NufftMRI

    if not (isinstance(calibration_size, (int, float)) and calibration_size > 0):
        raise ValueError(f"calibration_size must be positive, got {calibration_size!r}")
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if isinstance(physics_or_trajectory, NufftMRI):
        source = physics_or_trajectory
        trajectory, im_size = source.trajectory, source.im_size
        density = source.density_compensation()
    elif isinstance(physics_or_trajectory, torch.Tensor):
        if img_size is None:
            raise ValueError("img_size is required when a trajectory (not a NufftMRI) is given")
        trajectory, im_size, density = physics_or_trajectory, spatial_size(img_size), None
    else:
        raise TypeError(
            "physics_or_trajectory must be a NufftMRI or a trajectory tensor, "
            f"got {type(physics_or_trajectory).__name__}"
        )
    single = NufftMRI(trajectory, im_size, density=density, toeplitz=False, device=y.device)
    if not isinstance(y, torch.Tensor) or y.is_complex() or not y.is_floating_point():
        raise TypeError("y must be a real floating tensor in deepinv's two-channel layout (B, 2, [T,] C, K)")
    dynamic = single.frames is not None
    expected = 5 if dynamic else 4
    if y.ndim != expected or y.shape[1] != 2 or y.shape[-1] != single.trajectory.shape[-1]:
        layout = "(B, 2, T, C, K)" if dynamic else "(B, 2, C, K)"
        raise ValueError(
            f"y must have shape {layout} with K={single.trajectory.shape[-1]}, got {tuple(y.shape)}"
        )
    batch, n_coils = y.shape[0], y.shape[-2]
    weights = single.density_compensation() * _calibration_window(
        single.trajectory, im_size, calibration_size
    )
    # fold the coils into the batch: each coil is gridded as a single-coil acquisition
    coil_dim = 3 if dynamic else 2
    folded = y.movedim(coil_dim, 1).reshape(batch * n_coils, *y.shape[1:coil_dim], 1, y.shape[-1])
    images = single.gridding(folded, weights=weights)
    images = torch.complex(images[:, 0], images[:, 1]).reshape(batch, n_coils, *images.shape[2:])
    if dynamic:
        images = images.sum(2)
    rss = images.abs().pow(2).sum(1, keepdim=True).sqrt()
    peak = rss.flatten(1).amax(1).view((-1,) + (1,) * (rss.ndim - 1))
    maps = images / torch.maximum(rss, eps * peak).clamp_min(torch.finfo(rss.dtype).tiny)
    if threshold > 0:
        maps = torch.where(rss >= threshold * peak, maps, torch.zeros_like(maps))
    return maps
