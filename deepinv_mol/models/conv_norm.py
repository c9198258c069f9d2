r"""The one convolution-operator-norm module of the project, used by :class:`~deepinv_mol.models.MonotoneCNN`
and :class:`~deepinv_mol.models.ShallowEquilibrium`.

* :func:`conv_norm_bound`: a *certified* upper bound of a convolution's operator norm, valid on every grid
  (branch and bound on the frequency response).
* :func:`power_iteration` and :func:`power_norm`: the power method with ``conv`` / ``conv_transpose`` (the
  zero-padded convolution and its exact adjoint) on a persistent vector, and the differentiable norm
  estimate :math:`\|W u\|` whose gradient is that of spectral normalisation, applied to the convolution
  operator.
* :class:`WeightsSnapshot` and :class:`CertifiedNorms`: caches that are valid for exactly the weights they
  were computed for. They keep a copy of those weights and compare values with :func:`torch.equal`, so
  every way of changing a weight (optimiser step, in-place edit through ``.data``, ``load_state_dict``,
  ``.to()``) invalidates them; nothing relies on ``Tensor._version`` or data pointers, which ``.data``
  edits do not change.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ConvNormBound",
    "conv_norm_bound",
    "PowerResult",
    "power_iteration",
    "power_norm",
    "WeightsSnapshot",
    "CertifiedNorms",
    "converge_power_vectors",
]

_CONV = {2: F.conv2d, 3: F.conv3d}
_CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}
_GRAD_WEIGHT = {2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


@dataclass
class ConvNormBound:
    r"""Result of :func:`conv_norm_bound`.

    :param float upper: certified upper bound of :math:`\sup_\omega \|\hat K(\omega)\|_2`, hence of the
        operator norm of the zero-padded (and of the circular) convolution on any grid.
    :param float lower: largest :math:`\|\hat K(\omega)\|_2` actually evaluated (a lower bound of the supremum).
    :param int evaluations: number of frequencies evaluated.
    :param int levels: refinement levels used.
    :param bool converged: ``upper <= lower * (1 + tol)`` was reached.
    """

    upper: float
    lower: float
    evaluations: int
    levels: int
    converged: bool

    def __float__(self) -> float:
        return float(self.upper)


def _kernel_taps(weight: Tensor) -> tuple[Tensor, Tensor]:
    r"""Offsets :math:`p` (centred, ``(P, d)``) and matrices :math:`W_p` (``(P, C_out, C_in)``) of a kernel."""
    dims = weight.ndim - 2
    ks = weight.shape[2:]
    if any(k % 2 == 0 for k in ks):
        raise ValueError(f"conv_norm_bound expects odd kernel sizes (same padding), got {tuple(ks)}")
    offsets = torch.tensor(
        list(itertools.product(*[range(-(k // 2), k // 2 + 1) for k in ks])), dtype=torch.float64
    ).reshape(-1, dims)
    taps = weight.reshape(weight.shape[0], weight.shape[1], -1).permute(2, 0, 1)
    return offsets, taps


def conv_norm_bound(
    weight: torch.Tensor,
    tol: float = 1e-3,
    max_cells: int = 200_000,
    chunk: int = 512,
) -> ConvNormBound:
    r"""Certified upper bound of the operator norm of a multi-channel convolution, valid on every grid.

    Let :math:`W_p \in \mathbb{R}^{C_\mathrm{out}\times C_\mathrm{in}}` be the kernel taps at offsets
    :math:`p` (centred, odd kernel size) and :math:`\hat K(\omega) = \sum_p W_p e^{-i\omega\cdot p}`,
    :math:`\omega \in [-\pi, \pi)^d`, its frequency response. Define :math:`S = \sup_\omega \|\hat K(\omega)\|_2`.

    **Why** :math:`S` **bounds the convolution on images of any size.** A circular convolution on an
    :math:`N_1\times\dots\times N_d` grid is diagonalised by the DFT, block by block: its norm is
    :math:`\max_{\omega \in \text{grid}} \|\hat K(\omega)\|_2 \le S`. The zero-padded ("same") convolution
    on an :math:`n`-grid is a *compression* :math:`P C E` of the circular convolution :math:`C` on the grid
    :math:`N = n + k - 1` (embed with zeros, convolve circularly — no wrap-around reaches the window —
    restrict), with :math:`\|P\| = \|E\| = 1`, so its norm is at most :math:`\|C\| \le S`. As
    :math:`n \to \infty` it tends to :math:`S`, so :math:`S` is also the best size-independent bound.

    **How** :math:`S` **is certified (rigorous, not sampled).** For unit :math:`u, v`, the real function
    :math:`g(\omega) = \mathrm{Re}\,u^H \hat K(\omega) v` is a trigonometric sum with frequencies :math:`p`.
    Take :math:`(u, v, \omega^\star)` attaining :math:`S = g(\omega^\star)`; then :math:`\nabla g(\omega^\star) = 0`.
    For any :math:`c` with :math:`\|c - \omega^\star\|_\infty \le h`, along the segment
    :math:`f(t) = g(\omega^\star + t e)`, :math:`\|e\|_\infty \le 1`, Taylor's theorem with :math:`f'(0) = 0` gives
    :math:`\|\hat K(c)\| \ge g(c) \ge S - \tfrac12 h^2 \sup|f''|`, and :math:`\sup|f''|` is bounded two ways:

    * Bernstein's inequality for functions of exponential type :math:`\sigma = \max_p \|p\|_1` bounded on
      :math:`\mathbb{R}` (here by :math:`S`): :math:`|f''| \le \sigma^2 S`;
    * directly: :math:`|f''| \le D_2 = \sum_p \|p\|_1^2 \|W_p\|_2` (small for centre-dominated kernels).

    Hence for the cell of half-width :math:`h` centred at :math:`c` that contains :math:`\omega^\star`,

    .. math::

        S \le U(c, h) = \min\left(\frac{\|\hat K(c)\|_2}{1 - \sigma^2 h^2/2},\ \|\hat K(c)\|_2 + \frac{h^2 D_2}{2}\right).

    The torus is tiled by cells; a cell whose :math:`U` is below the best value seen so far (a lower bound
    of :math:`S`) cannot contain :math:`\omega^\star` and is discarded; the others are split in
    :math:`2^d` (branch and bound). At every level :math:`S \le \max U` over the surviving cells, and the
    loop stops when that is within ``tol`` of the best value seen. Matrix norms are exact SVDs in float64;
    a relative safety of :math:`10^{-9}` covers rounding.

    :param torch.Tensor weight: kernel ``(C_out, C_in, k_1, ..., k_d)`` with odd :math:`k_j` (``d = 2`` or ``3``).
    :param float tol: relative gap between the certified upper bound and the best value seen.
    :param int max_cells: cap on cells per refinement level; when reached, the (still rigorous, looser)
        bound of the current level is returned with ``converged=False`` and a warning.
    :param int chunk: frequencies per batched SVD (memory).
    :return: :class:`ConvNormBound` (``float(result)`` is the upper bound).

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models.conv_norm import conv_norm_bound
    >>> w = torch.zeros(1, 1, 3, 3); w[0, 0, 1, 1] = 2.0; w[0, 0, 1, 0] = 1.0  # response 2 + e^{i w}
    >>> round(float(conv_norm_bound(w, tol=1e-6)), 4)
    3.0
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (4, 5):
        raise ValueError("conv_norm_bound expects a kernel tensor (C_out, C_in, k, k) or (C_out, C_in, k, k, k)")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive finite float, got {tol!r}")
    if not (isinstance(max_cells, int) and max_cells >= 1 and isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"max_cells and chunk must be positive ints, got {max_cells!r}, {chunk!r}")
    w = weight.detach().to("cpu", torch.float64)
    dims = w.ndim - 2
    offsets, taps = _kernel_taps(w)
    tap_norms = torch.linalg.matrix_norm(taps, ord=2)
    active = tap_norms > 0
    offsets, taps, tap_norms = offsets[active], taps[active], tap_norms[active]
    if offsets.shape[0] == 0:
        return ConvNormBound(0.0, 0.0, 0, 0, True)
    l1 = offsets.abs().sum(1)
    sigma = float(l1.max())  # exponential type of omega -> K(omega)
    d2 = float((l1**2 * tap_norms).sum())
    taps_c = taps.to(torch.complex128)

    def norms(centres):
        out = []
        for start in range(0, centres.shape[0], chunk):
            phase = torch.exp(-1j * (centres[start : start + chunk] @ offsets.T))
            k_hat = torch.einsum("np,poi->noi", phase, taps_c)
            out.append(torch.linalg.matrix_norm(k_hat, ord=2))
        return torch.cat(out)

    # coarsest grid with sigma * h <= 1, so that the Bernstein denominator is at least 1/2
    m0 = 4
    while sigma * math.pi / m0 > 1.0:
        m0 *= 2
    h = math.pi / m0
    axis = -math.pi + h * (2 * torch.arange(m0, dtype=torch.float64) + 1)
    centres = torch.cartesian_prod(*[axis] * dims).reshape(-1, dims)
    children = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=dims)), dtype=torch.float64)
    lower, evaluations, levels = 0.0, 0, 0
    while True:
        s = norms(centres)
        evaluations += s.numel()
        levels += 1
        lower = max(lower, float(s.max()))
        bernstein = s / (1.0 - 0.5 * (sigma * h) ** 2) if sigma * h < math.sqrt(2) else torch.full_like(s, math.inf)
        upper_cells = torch.minimum(bernstein, s + 0.5 * h * h * d2)
        upper = float(upper_cells.max())
        if upper <= lower * (1.0 + tol) or upper == 0.0:
            return ConvNormBound(upper * (1 + 1e-9), lower, evaluations, levels, True)
        keep = centres[upper_cells >= lower]
        if keep.shape[0] * 2**dims > max_cells:
            warnings.warn(
                f"conv_norm_bound: cell cap reached at level {levels}; returning the looser certified bound "
                f"{upper:.6g} (best value seen {lower:.6g}, relative gap {upper / lower - 1:.2e} > tol={tol})"
            )
            return ConvNormBound(upper * (1 + 1e-9), lower, evaluations, levels, False)
        h = h / 2
        centres = (keep[:, None, :] + h * children[None]).reshape(-1, dims)


def _padding(weight: Tensor) -> int:
    return weight.shape[-1] // 2


def _conv(x: Tensor, weight: Tensor) -> Tensor:
    return _CONV[weight.ndim - 2](x, weight, padding=_padding(weight))


def _conv_t(y: Tensor, weight: Tensor) -> Tensor:
    # stride 1, odd kernel, same zero padding: conv_transpose is the exact adjoint of _conv
    return _CONV_T[weight.ndim - 2](y, weight, padding=_padding(weight))


@dataclass
class PowerResult:
    r"""Result of :func:`power_iteration`.

    :param float sigma: :math:`\|W u\|` at the final unit vector :math:`u` (a lower bound of the operator norm
        of the zero-padded convolution on the vector's grid, hence of :func:`conv_norm_bound`).
    :param int iterations: power steps run.
    :param bool converged: the relative change of ``sigma`` in the last step was at most ``tol``.
    """

    sigma: float
    iterations: int
    converged: bool


@torch.no_grad()
def power_iteration(weight: Tensor, u: Tensor, n_iter: int = 1, tol: float = 0.0) -> PowerResult:
    r"""Power method for the operator norm of the zero-padded convolution with kernel ``weight``, warm-started
    at ``u`` and updated **in place** (``u`` is typically a persistent buffer).

    One step maps :math:`u \leftarrow W^\top W u / \|W^\top W u\|` (``conv`` then ``conv_transpose``); the
    estimate is :math:`\sigma = \|W u\|`. It stops after ``n_iter`` steps, or earlier once the relative
    change of :math:`\sigma` is at most ``tol`` (``tol=0``: always ``n_iter`` steps).

    :param torch.Tensor weight: kernel ``(C_out, C_in, k, ...)``, odd ``k``, 2D or 3D.
    :param torch.Tensor u: unit vector ``(1, C_in, *grid)``, overwritten with the new estimate.
    :param int n_iter: maximum number of steps (``>= 1``).
    :param float tol: relative tolerance on :math:`\sigma`.
    :return: :class:`PowerResult`.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models.conv_norm import power_iteration
    >>> w = torch.zeros(1, 1, 3, 3); w[0, 0, 1, 1] = 2.0
    >>> u = torch.randn(1, 1, 8, 8); u /= u.norm()
    >>> round(power_iteration(w, u, n_iter=3).sigma, 6)
    2.0
    """
    if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
        raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative finite float, got {tol!r}")
    if not isinstance(weight, Tensor) or weight.ndim not in (4, 5) or weight.shape[-1] % 2 == 0:
        raise ValueError("power_iteration expects a kernel tensor (C_out, C_in, k, k[, k]) with odd k")
    if not isinstance(u, Tensor) or u.ndim != weight.ndim or u.shape[:2] != (1, weight.shape[1]):
        raise ValueError(
            f"power_iteration expects u of shape (1, {weight.shape[1]}, *grid) for this kernel, "
            f"got {tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__}"
        )
    w = weight.detach()
    x = u.to(w.dtype)
    old = float(torch.linalg.vector_norm(_conv(x, w)))
    sigma, converged, it = old, False, 0
    for it in range(1, n_iter + 1):
        v = _conv(x, w)
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
        x = _conv_t(v, w)
        x = x / torch.linalg.vector_norm(x).clamp_min(1e-30)
        sigma = float(torch.linalg.vector_norm(_conv(x, w)))
        converged = abs(sigma - old) <= tol * max(sigma, 1e-30)
        old = sigma
        if converged and tol > 0:
            break
    u.copy_(x.to(u.dtype))
    return PowerResult(sigma, it, converged)


def power_norm(weight: Tensor, u: Tensor) -> Tensor:
    r"""Differentiable estimate :math:`\|W u\|` of the operator norm (``u`` a unit power vector, not updated).

    With :math:`v = Wu/\|Wu\|`, :math:`\|Wu\| = \langle v, Wu\rangle = \langle W, G\rangle` where
    :math:`G = \partial\langle v, Wu\rangle/\partial W` (kernel-shaped, computed without a graph): the value
    is :math:`\|Wu\|` and the gradient :math:`G` is that of spectral normalisation, while autograd keeps only
    :math:`G`, not the power vectors (training memory independent of the vector's grid).

    :param torch.Tensor weight: kernel ``(C_out, C_in, k, ...)``.
    :param torch.Tensor u: vector ``(1, C_in, *grid)``.
    :return: scalar tensor, differentiable in ``weight``.
    """
    with torch.no_grad():
        x = u.to(weight.dtype)
        wu = _conv(x, weight)
        v = wu / torch.linalg.vector_norm(wu).clamp_min(1e-30)
        g = _GRAD_WEIGHT[weight.ndim - 2](x, weight.shape, v, padding=_padding(weight))
    return (weight * g).sum()


class WeightsSnapshot:
    r"""A copy of some tensors, to tell whether they changed since (by value, dtype, device or shape).

    Comparison is :func:`torch.equal` on the values: edits through ``.data`` (EMA updates, weight surgery),
    optimiser steps, ``load_state_dict`` and ``.to()`` are all seen, which ``Tensor._version`` and data
    pointers do not guarantee. Cost: one copy and one comparison of the tensors (kernels are small).

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models.conv_norm import WeightsSnapshot
    >>> w = torch.nn.Parameter(torch.ones(2, 2))
    >>> snap = WeightsSnapshot(); snap.take([w]); snap.matches([w])
    True
    >>> _ = w.data.mul_(0.5).add_(0.5); snap.matches([w])  # an in-place edit that skips autograd's version counter
    True
    >>> _ = w.data.mul_(0.5); snap.matches([w])
    False
    """

    def __init__(self) -> None:
        self._copies: list[Tensor] | None = None

    def take(self, tensors: Sequence[Tensor]) -> None:
        r"""Remember the current values.

        :param tensors: tensors to copy.
        """
        self._copies = [t.detach().clone() for t in tensors]

    def clear(self) -> None:
        r"""Forget the snapshot (the next :meth:`matches` is ``False``)."""
        self._copies = None

    def matches(self, tensors: Sequence[Tensor]) -> bool:
        r"""Whether ``tensors`` equal the snapshot (same number, shapes, dtypes, devices and values).

        :param tensors: tensors to compare.
        :return: bool.
        """
        if self._copies is None or len(self._copies) != len(tensors):
            return False
        for old, new in zip(self._copies, tensors):
            if old.dtype != new.dtype or old.device != new.device or old.shape != new.shape:
                return False
            if not torch.equal(old, new.detach()):
                return False
        return True


class CertifiedNorms:
    r"""Certified operator norms (:func:`conv_norm_bound`) of a list of kernels, cached per kernel and
    recomputed for exactly the kernels whose values changed (see :class:`WeightsSnapshot`).

    :param float tol: relative tolerance of :func:`conv_norm_bound`.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models.conv_norm import CertifiedNorms
    >>> w = torch.zeros(1, 1, 3, 3); w[0, 0, 1, 1] = 2.0
    >>> norms = CertifiedNorms(tol=1e-6)
    >>> [round(r, 6) for r in norms([w])]
    [2.0]
    >>> _ = w.mul_(2.0); [round(r, 6) for r in norms([w])]  # in place: seen by value, not by version counter
    [4.0]
    """

    def __init__(self, tol: float = 1e-3) -> None:
        if not (tol > 0 and math.isfinite(tol)):
            raise ValueError(f"tol must be a positive finite float, got {tol!r}")
        self.tol = float(tol)
        self._entries: list[tuple[WeightsSnapshot, ConvNormBound]] = []
        self.recomputed = 0  # kernels certified so far (for cost accounting)

    def bounds(self, weights: Sequence[Tensor]) -> list[ConvNormBound]:
        r"""The :class:`ConvNormBound` of each kernel (recomputed only for the kernels that changed).

        :param weights: kernels.
        :return: list of :class:`ConvNormBound`.
        """
        if len(self._entries) != len(weights):
            self._entries = [(WeightsSnapshot(), None) for _ in weights]
        out = []
        for i, w in enumerate(weights):
            snap, bound = self._entries[i]
            if bound is None or not snap.matches([w]):
                bound = conv_norm_bound(w, tol=self.tol)
                snap.take([w])
                self._entries[i] = (snap, bound)
                self.recomputed += 1
            out.append(bound)
        return out

    def __call__(self, weights: Sequence[Tensor]) -> list[float]:
        r"""Certified upper bounds (floats) of the kernels' operator norms.

        :param weights: kernels.
        :return: list of floats.
        """
        return [float(b) for b in self.bounds(weights)]

    def clear(self) -> None:
        r"""Drop every cached bound."""
        self._entries = []


@torch.no_grad()
def converge_power_vectors(module: torch.nn.Module, n_iter: int = 2000, tol: float = 1e-7) -> dict:
    r"""Converge the stored power vectors of every network inside ``module`` that has them (every submodule
    with an ``update_normalisation(n_iter, tol)`` method: strict :class:`~deepinv_mol.models.MonotoneCNN`,
    :class:`~deepinv_mol.models.ShallowEquilibrium`), warm-started at the stored vectors, e.g. on a model from
    :func:`deepinv_mol.load_pretrained` before re-exporting its weights. Weights are not changed; the vectors
    are buffers, so they are saved with the state_dict.

    :param torch.nn.Module module: a network or a reconstructor containing networks.
    :param int n_iter: maximum power iterations per layer.
    :param float tol: relative tolerance on the norm estimates.
    :return: dict mapping each updated submodule's name (``""`` for ``module`` itself) to the dict returned by
        its ``update_normalisation``.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import ShallowEquilibrium
    >>> from deepinv_mol.models.conv_norm import converge_power_vectors
    >>> R = ShallowEquilibrium(channels=1, width=4)
    >>> info = converge_power_vectors(torch.nn.ModuleList([R]), n_iter=500, tol=1e-6)
    >>> list(info), info["0"]["converged"]
    (['0'], True)
    """
    out = {}
    for name, sub in module.named_modules():
        update = getattr(sub, "update_normalisation", None)
        if callable(update) and getattr(sub, "constraint", "strict") == "strict":
            out[name] = update(n_iter=n_iter, tol=tol)
    return out
