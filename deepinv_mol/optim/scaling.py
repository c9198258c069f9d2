r"""Intensity-scale equivariance of the learned reconstructors.

A learned network sees intensities: trained on images of one intensity range, it is not told what to do with
an image ten times brighter. Every learned reconstructor of the package (:class:`~deepinv_mol.optim.MOL`,
:class:`~deepinv_mol.optim.LUSER`, :class:`~deepinv_mol.optim.baselines.MoDLBaseline`) therefore can
(``scale_equivariant=True``, the default) estimate one positive scale :math:`s(y)` per batch item from the
measurements, reconstruct from :math:`y/s` and return :math:`s\,x`:

.. math::

    x(y) = s(y)\, G\big(y / s(y)\big),

where :math:`G` is the model's own map (MOL's fixed point, the unrolled network). The scale is computed from
the start image :math:`x_0(y)` every model computes anyway
(:func:`~deepinv_mol.optim.data_consistency.start_image`, CG on :math:`(A^HA + \epsilon I)x = A^Hy`):

.. math::

    s(y) = \frac{1}{c}\;\frac{1}{k}\sum_{j \in \text{band}} |x_0(y)|_{(j)},

the mean of the pixel magnitudes :math:`|x_0|_{(j)}` (sorted, magnitude over the channels: complex MRI's two
channels give the modulus) whose ranks lie between the quantiles ``low`` = 0.99 and ``high`` = 0.995 (a
robust "bright tissue" level: the top 0.5 % are left out, which hold outliers and noise spikes), divided by
the reference :math:`c` (``scale_reference``): the value of that statistic on the training distribution, so
that :math:`s \approx 1` there and weights trained without the normalisation keep their quality
(:data:`TASK_SCALE_REFERENCE` holds the measured values of the package's tasks).

**Exact equivariance.** :math:`x_0(cy) = c\,x_0(y)` for :math:`c > 0` (CG from zero with a relative stopping
rule is homogeneous), hence :math:`s(cy) = c\,s(y)` and :math:`x(cy) = c\,x(y)` up to rounding: a
reconstruction's PSNR relative to its own intensity range does not depend on the intensity scale.

**Lipschitz constant of s.** With the exact Tikhonov map :math:`R = (A^HA + \epsilon I)^{-1}A^H`:
the pixel-magnitude map is 1-Lipschitz in :math:`\ell_2`, a weighted sum of order statistics
:math:`\sum_j w_j v_{(j)}` is Lipschitz with constant :math:`\|w\|_2` (piecewise linear, its gradient a permutation
of :math:`w`), here :math:`1/\sqrt k`, and :math:`\|R\| = \max_\sigma \sigma/(\sigma^2+\epsilon) \le 1/(2\sqrt\epsilon)`,
so :math:`|s(y_1) - s(y_2)| \le L_s\|y_1 - y_2\|` with :math:`L_s = 1/(2\sqrt\epsilon\,c\sqrt k)`
(:func:`scale_lipschitz`). The start image is CG stopped after a few iterations, not :math:`R` exactly: the
constant is that of the exact map, the same caveat as every bound of ``docs/theory.rst``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "SCALE_BAND",
    "TASK_SCALE_REFERENCE",
    "scale_statistic",
    "measurement_scale",
    "band_size",
    "scale_lipschitz",
    "check_scale_options",
    "apply_scale",
    "normalise_inputs",
]

#: quantile band (low, high) of the pixel magnitudes averaged by :func:`scale_statistic`
SCALE_BAND = (0.99, 0.995)

#: :func:`scale_statistic` of the start image on each task's training distribution: the reference :math:`c` that
#: makes :math:`s \approx 1` there, used for the shipped weights (old manifest entries get it when loaded) and for new
#: trainings. Measured on 11 full training slices (every 7th) with the task's physics and noise: ``mri-radial-4x``
#: median 0.714 (range 0.58-0.83; of the ground truth 0.72; the test split 0.61), ``ct-sparse-view`` 0.499 (0.49-0.58;
#: ground truth 0.54). The other tasks share the data of their modality and take its value.
TASK_SCALE_REFERENCE = {
    "mri-radial-4x": 0.71,
    "mri-radial-dynamic": 0.71,
    "mri-3d": 0.71,
    "ct-sparse-view": 0.5,
    "ct-3d-cone": 0.5,
}


def _magnitudes(x: Tensor) -> Tensor:
    # per-pixel magnitude over the channel dimension (complex-as-2-channels MRI: the modulus), flattened per item
    if x.ndim < 2:
        raise ValueError(f"images must be batched (B, C, ...), got shape {tuple(x.shape)}")
    mag = (x.abs() if x.is_complex() else x).pow(2).sum(dim=1).sqrt()
    return mag.reshape(x.shape[0], -1)


def band_size(n_pixels: int, band: tuple[float, float] = SCALE_BAND) -> tuple[int, int]:
    r"""The ranks ``[start, stop)`` (ascending order) averaged by :func:`scale_statistic` for ``n_pixels`` pixels:
    at least one pixel.

    :param int n_pixels: pixels per image (spatial size, channels excluded).
    :param tuple band: quantile band ``(low, high)``, ``0 <= low < high <= 1``.
    :return: ``(start, stop)`` with ``stop - start = k >= 1``.
    """
    low, high = band
    if not (0 <= low < high <= 1):
        raise ValueError(f"band must be (low, high) with 0 <= low < high <= 1, got {band!r}")
    if n_pixels < 1:
        raise ValueError(f"n_pixels must be >= 1, got {n_pixels}")
    start = min(int(math.floor(low * n_pixels)), n_pixels - 1)
    stop = max(min(int(math.floor(high * n_pixels)), n_pixels), start + 1)
    return start, stop


def scale_statistic(x: Tensor, band: tuple[float, float] = SCALE_BAND) -> Tensor:
    r"""Mean of the pixel magnitudes whose ranks lie in the quantile ``band``, per batch item.

    :param torch.Tensor x: images ``(B, C, ...)`` (real, complex-as-2-channels or complex dtype).
    :param tuple band: quantile band ``(low, high)``.
    :return: shape ``(B,)``, non-negative, positively homogeneous: ``scale_statistic(c * x) = c * scale_statistic(x)``.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.optim.scaling import scale_statistic
    >>> x = torch.arange(1000.0).reshape(1, 1, 10, 100)  # magnitudes 0..999
    >>> scale_statistic(x).tolist()  # ranks 990..994
    [992.0]
    """
    mag = _magnitudes(x)
    start, stop = band_size(mag.shape[1], band)
    ordered = torch.sort(mag, dim=1).values
    return ordered[:, start:stop].mean(dim=1)


def measurement_scale(
    y: Tensor,
    physics,
    start: Tensor | None = None,
    reference: float = 1.0,
    band: tuple[float, float] = SCALE_BAND,
    start_fn: Callable[[Tensor, object], Tensor] | None = None,
) -> Tensor:
    r"""One positive intensity scale per batch item, :math:`s(y) = \mathrm{statistic}(x_0(y)) / c`, shaped to
    broadcast against the images ``(B, 1, ..., 1)``.

    :param torch.Tensor y: measurements ``(B, ...)``.
    :param physics: the forward operator (used only when ``start`` is not given).
    :param torch.Tensor start: the start image :math:`x_0(y)` when the caller already has it (MOL, LUSER and
        MoDL compute it anyway); default :func:`~deepinv_mol.optim.data_consistency.start_image` (or ``start_fn``).
    :param float reference: :math:`c > 0`, the statistic's value on the training distribution.
    :param tuple band: quantile band of :func:`scale_statistic`.
    :param Callable start_fn: ``start_fn(y, physics) -> x0`` instead of the default start image.
    :return: the scale, detached (a function of the data only), positive; items whose statistic is 0 (an all-zero
        start image) get scale 1.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim.scaling import measurement_scale
    >>> physics = dinv.physics.Inpainting((1, 8, 8), mask=0.5)
    >>> y = physics(torch.rand(2, 1, 8, 8))
    >>> s1, s10 = measurement_scale(y, physics), measurement_scale(10 * y, physics)
    >>> s1.shape, bool(torch.allclose(s10, 10 * s1))
    (torch.Size([2, 1, 1, 1]), True)
    """
    if not (isinstance(reference, (int, float)) and not isinstance(reference, bool) and math.isfinite(reference)
            and reference > 0):
        raise ValueError(f"reference must be a positive finite number, got {reference!r}")
    with torch.no_grad():
        if start is None:
            if start_fn is None:
                from .data_consistency import start_image

                start = start_image(y, physics)
            else:
                start = start_fn(y, physics)
        if not isinstance(start, Tensor):
            raise TypeError(f"start must be a torch.Tensor image, got {type(start).__name__}")
        stat = scale_statistic(start.detach(), band) / float(reference)
        if not bool(torch.isfinite(stat).all()):
            raise ValueError("the intensity scale of the measurements is not finite (non-finite start image)")
        stat = torch.where(stat > 0, stat, torch.ones_like(stat))
        dtype = start.real.dtype if start.is_complex() else start.dtype
    return stat.to(dtype).reshape((-1,) + (1,) * (start.ndim - 1))


def scale_lipschitz(n_pixels: int, eps: float, reference: float = 1.0, band: tuple[float, float] = SCALE_BAND,
                    op_norm: float | None = None) -> float:
    r"""Lipschitz constant :math:`L_s` of :math:`y \mapsto s(y)` (Euclidean norms) when the start image is the
    exact Tikhonov solution :math:`(A^HA + \epsilon I)^{-1}A^Hy`:
    :math:`L_s = \|R\| / (c\sqrt k)`, :math:`\|R\| = \max_{0 \le \sigma \le \|A\|}\sigma/(\sigma^2 + \epsilon)`,
    which is :math:`1/(2\sqrt\epsilon)` when :math:`\|A\|^2 \ge \epsilon` (or :math:`\|A\|` unknown) and
    :math:`\|A\|/(\|A\|^2+\epsilon)` otherwise.

    :param int n_pixels: pixels per image (spatial size).
    :param float eps: Tikhonov weight :math:`\epsilon > 0` of the start image.
    :param float reference: :math:`c`.
    :param tuple band: quantile band (sets :math:`k`).
    :param float op_norm: :math:`\|A\|` if known.
    :return: :math:`L_s`.

    :Examples:

    >>> from deepinv_mol.optim.scaling import scale_lipschitz
    >>> round(scale_lipschitz(160 * 160, eps=1e-2), 5)  # k = 128 pixels in the band: 5 / sqrt(128)
    0.44194
    """
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite number (eps = 0 gives an unbounded start image), got {eps!r}")
    start, stop = band_size(int(n_pixels), band)
    r_norm = 0.5 / math.sqrt(eps)
    if op_norm is not None and op_norm**2 < eps:
        r_norm = op_norm / (op_norm**2 + eps)
    return r_norm / (float(reference) * math.sqrt(stop - start))


def check_scale_options(scale_equivariant, scale_reference) -> tuple[bool, float]:
    r"""Validate the two constructor options every learned reconstructor takes.

    :param bool scale_equivariant: reconstruct :math:`s\,G(y/s)`.
    :param float scale_reference: :math:`c > 0`.
    :return: ``(bool, float)``.
    :raises TypeError: ``scale_equivariant`` not a bool.
    :raises ValueError: ``scale_reference`` not a positive finite number.
    """
    if not isinstance(scale_equivariant, bool):
        raise TypeError(f"scale_equivariant must be a bool, got {type(scale_equivariant).__name__} {scale_equivariant!r}")
    if (isinstance(scale_reference, bool) or not isinstance(scale_reference, (int, float))
            or not math.isfinite(scale_reference) or scale_reference <= 0):
        raise ValueError(f"scale_reference must be a positive finite number, got {scale_reference!r}")
    return scale_equivariant, float(scale_reference)


def apply_scale(t: Tensor, scale: Tensor) -> Tensor:
    r"""Multiply each batch item of ``t`` (measurements or images, batch first) by its scale.

    :param torch.Tensor t: ``(B, ...)``.
    :param torch.Tensor scale: ``B`` positive values in any shape (e.g. ``(B, 1, 1, 1)`` of :func:`measurement_scale`).
    :return: ``t * scale`` broadcast per item.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.optim.scaling import apply_scale
    >>> apply_scale(torch.ones(2, 3), torch.tensor([[[[2.0]]], [[[0.5]]]])).tolist()
    [[2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]
    """
    factor = scale.reshape((-1,) + (1,) * (t.ndim - 1))
    if factor.shape[0] != t.shape[0]:
        raise ValueError(f"one scale per batch item expected: {factor.shape[0]} scales for a batch of {t.shape[0]}")
    return t * factor.to(t.real.dtype if t.is_complex() else t.dtype)


def normalise_inputs(y: Tensor, physics, start: Tensor, reference: float, init=None, x_gt=None):
    r"""The inputs of a scale-equivariant reconstructor divided by its scale :math:`s(y)`: one place for MOL, LUSER
    and the MoDL baseline.

    :param torch.Tensor y: measurements ``(B, ...)``.
    :param physics: forward operator.
    :param torch.Tensor start: the model's start image :math:`x_0(y)` (homogeneous: :math:`x_0(y/s) = x_0(y)/s`).
    :param float reference: the model's ``scale_reference``.
    :param init: the caller's start image (a tensor is divided by :math:`s`; ``None`` becomes ``start / s``;
        anything else is passed through for the model to refuse).
    :param x_gt: ground truth for metrics (a tensor is divided by :math:`s`).
    :return: ``(scale, y / s, init, x_gt)``.
    """
    scale = measurement_scale(y, physics, start=start, reference=reference)
    if init is None:
        init = start / scale
    elif isinstance(init, Tensor):
        init = apply_scale(init, 1 / scale)
    if isinstance(x_gt, Tensor):
        x_gt = apply_scale(x_gt, 1 / scale)
    return scale, apply_scale(y, 1 / scale), init, x_gt
