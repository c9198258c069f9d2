r"""The learned network :math:`H_\theta` of MOL, with a *certified* Lipschitz constant.

MOL's score is :math:`F = I - H_\theta`. If :math:`\mathrm{Lip}(H_\theta) \le T < 1` then for all :math:`a, b`

.. math::

    \langle F(a) - F(b), a - b\rangle \ge \|a - b\|^2 - \|H(a) - H(b)\|\,\|a - b\| \ge (1 - T)\|a - b\|^2,

so :math:`F` is :math:`m`-monotone with :math:`m = 1 - T`. :class:`MonotoneCNN` enforces
:math:`\mathrm{Lip}(H_\theta) \le T` by normalising each convolution by its operator norm *as a
convolution*, and :meth:`MonotoneCNN.lipschitz_bound` certifies the result with
:func:`conv_norm_bound`, a rigorous upper bound of a convolution's operator norm valid for every image size.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MonotoneCNN", "conv_norm_bound", "ConvNormBound"]

_CONV = {2: F.conv2d, 3: F.conv3d}
_CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}


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

    def __float__(self):
        return float(self.upper)


def _kernel_taps(weight: torch.Tensor):
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
    >>> from deepinv_mol.models.monotone import conv_norm_bound
    >>> w = torch.zeros(1, 1, 3, 3); w[0, 0, 1, 1] = 2.0; w[0, 0, 1, 0] = 1.0  # response 2 + e^{i w}
    >>> round(float(conv_norm_bound(w, tol=1e-6)), 4)
    3.0
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (4, 5):
        raise ValueError("conv_norm_bound expects a kernel tensor (C_out, C_in, k, k) or (C_out, C_in, k, k, k)")
    if tol <= 0:
        raise ValueError(f"tol must be positive, got {tol}")
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


class MonotoneCNN(nn.Module):
    r"""MOL's CNN :math:`H_\theta`, with a certified Lipschitz constant in the ``strict`` variant.

    ``depth`` convolutions (``3x3``, or ``3x3x3`` when ``dims=3``, which also serves 2D+time),
    ``channels -> width -> ... -> width -> channels``, ReLU between them, no normalisation layers
    (defaults of the authors' code: 5 layers, width 64, 2 channels for real/imaginary parts).

    **strict**: layer :math:`i` applies :math:`\tilde W_i = s\,W_i/\nu_i` with :math:`s = T^{1/\mathrm{depth}}`
    (:math:`T` = ``lipschitz``) and :math:`\nu_i` the operator norm of the convolution :math:`W_i`:

    * in training mode :math:`\nu_i = \hat\sigma_i`, a power iteration with ``conv``/``conv_transpose``
      (the zero-padded convolution and its exact adjoint) on a persistent vector of spatial size
      ``power_size``; ``n_power_iterations`` steps are run each time the weights have changed (after an
      optimiser step), so within one MOL solve the map :math:`H` stays fixed; :math:`\hat\sigma_i` is
      differentiable in :math:`W_i` (as in spectral normalisation, but on the convolution operator — torch's
      ``spectral_norm`` normalises the reshaped ``C_out x (C_in k^2)`` matrix, which does not bound the
      convolution);
    * in evaluation mode :math:`\nu_i = R_i`, the certified bound of :func:`conv_norm_bound`
      (cached until the weights change), so :math:`\|\tilde W_i\| \le s` rigorously and
      :math:`\mathrm{Lip}(H) \le \prod_i s = T`. The power estimate is a lower bound
      (:math:`\hat\sigma_i \le R_i`), so the evaluation network is the training network shrunk by
      :math:`\prod_i \hat\sigma_i/R_i` (typically within 1 %; see :meth:`layer_norm_bounds`).

    ReLU is 1-Lipschitz and biases do not change Lipschitz constants, so
    :math:`\mathrm{Lip}(H) \le \prod_i \|\tilde W_i\|`, which :meth:`lipschitz_bound` certifies.

    **Activation.** ``"relu"`` (the authors') or ``"maxmin"``: the hidden channels are split in halves
    :math:`(a, b)` and mapped to :math:`(\max(a, b), \min(a, b))` (GroupSort with groups of 2, Anil, Lucas &
    Grosse, ICML 2019). Sorting is 1-Lipschitz, so the certificate is unchanged, and MaxMin is
    *gradient-norm preserving* (its Jacobian is a permutation almost everywhere) where ReLU zeroes half of
    the signal: a product-of-norms bound :math:`T` is then less pessimistic about the network's true
    Lipschitz constant, which is what limits the strict variant's expressiveness.

    **penalty**: unconstrained convolutions (train with :class:`deepinv_mol.loss.LipschitzPenalty`);
    :meth:`lipschitz_bound` returns ``None``.

    The forward accepts deepinv's denoiser signature ``forward(x, sigma=None, *args, **kwargs)``
    (``sigma`` is ignored) so the same network can serve as the denoiser of
    :class:`deepinv.models.MoDL` (which calls ``denoiser(x, sigma)``).

    :param int channels: input and output channels (2 for complex images).
    :param int width: hidden channels.
    :param int depth: number of convolutions (at least 2).
    :param str constraint: ``"strict"`` or ``"penalty"``.
    :param float lipschitz: target :math:`T \in (0, 1)` of the strict variant; for ``"penalty"``, the
        certified bound of the initial network (kernels rescaled at construction; ``0`` keeps PyTorch's init).
    :param int dims: 2 (images) or 3 (volumes, 2D+time).
    :param int kernel_size: odd kernel size.
    :param bool bias: use biases.
    :param int, tuple power_size: spatial size of the power-iteration vectors (default 32 in 2D, 16 in 3D).
    :param int n_power_iterations: power steps per weight change in training mode.
    :param float certificate_tol: relative tolerance of :func:`conv_norm_bound`.
    :param str init: ``"default"`` (PyTorch's) or ``"identity"``: centred delta kernels and biases that make
        :math:`H(x) = T x` for :math:`|x| < 2` (layer 1 adds 2, the last removes it, ReLUs see positive values;
        needs ``bias=True``), plus PyTorch's random kernels times 0.01.
        The learned models of :mod:`deepinv_mol.pretrained` use it: from a random map, MOL and MoDL training on
        ``mri-radial-4x`` stayed at or below the CG baseline for hundreds of steps.
    :param str activation: ``"relu"`` or ``"maxmin"`` (needs an even ``width`` of at least ``2 * channels``,
        so that the identity start passes through it).
    :param str, torch.device device: device.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import MonotoneCNN
    >>> _ = torch.manual_seed(0)
    >>> net = MonotoneCNN(width=8, depth=3, lipschitz=0.9).eval()
    >>> net(torch.randn(1, 2, 16, 16)).shape
    torch.Size([1, 2, 16, 16])
    >>> net.lipschitz_bound() <= 0.9 * (1 + 1e-6)
    True
    """

    def __init__(
        self,
        channels: int = 2,
        width: int = 64,
        depth: int = 5,
        constraint: str = "strict",
        lipschitz: float = 0.99,
        dims: int = 2,
        kernel_size: int = 3,
        bias: bool = True,
        power_size=None,
        n_power_iterations: int = 1,
        certificate_tol: float = 1e-3,
        init: str = "default",
        activation: str = "relu",
        device="cpu",
    ):
        super().__init__()
        if activation not in ("relu", "maxmin"):
            raise ValueError(f"activation must be 'relu' or 'maxmin', got {activation!r}")
        if activation == "maxmin" and (width % 2 or width < 2 * channels):
            raise ValueError(
                f"activation='maxmin' pairs channel j with j + width/2: width must be even and >= 2 * channels "
                f"= {2 * channels}, got {width}"
            )
        self.activation = activation
        if init not in ("default", "identity"):
            raise ValueError(f"init must be 'default' or 'identity', got {init!r}")
        if init == "identity" and not bias:
            raise ValueError("init='identity' needs bias=True (the biases keep the hidden channels positive)")
        if constraint not in ("strict", "penalty"):
            raise ValueError(f"constraint must be 'strict' or 'penalty', got {constraint!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 (images) or 3 (volumes / 2D+time), got {dims}")
        if not (isinstance(depth, int) and depth >= 2):
            raise ValueError(f"depth must be an integer >= 2, got {depth}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if constraint == "strict" and not (0.0 < lipschitz < 1.0):
            raise ValueError(f"lipschitz must be in (0, 1) for the strict variant, got {lipschitz}")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        self.channels, self.width, self.depth, self.dims = channels, width, depth, dims
        self.constraint, self.lipschitz = constraint, float(lipschitz)
        self.kernel_size, self.n_power_iterations = kernel_size, n_power_iterations
        self.certificate_tol = certificate_tol
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        sizes = [channels] + [width] * (depth - 1) + [channels]
        self.convs = nn.ModuleList(
            [conv(sizes[i], sizes[i + 1], kernel_size, padding=kernel_size // 2, bias=bias) for i in range(depth)]
        )
        if power_size is None:
            power_size = 32 if dims == 2 else 16
        if isinstance(power_size, int):
            power_size = (power_size,) * dims
        if len(power_size) != dims:
            raise ValueError(f"power_size must have {dims} entries, got {power_size}")
        self.power_size = tuple(int(p) for p in power_size)
        self._cache_key = None
        self._cache = None
        self.init = init
        if init == "identity":
            self._identity_init()
        if constraint == "strict":
            for i, c in enumerate(self.convs):
                u = torch.randn(1, c.in_channels, *self.power_size)
                self.register_buffer(f"power_u{i}", u / torch.linalg.vector_norm(u))
                self.register_buffer(f"power_sigma{i}", torch.ones(()))
            self._power_key = None
            self.update_normalisation(n_iter=30, tol=1e-4)
        elif 0.0 < self.lipschitz:
            # the penalty variant starts where the strict one does: every kernel scaled to a certified norm
            # <= T^(1/depth), so Lip(H) <= T at initialisation. PyTorch's default init gives Lip(H) of a few
            # units; the Lipschitz penalty then dominates the loss (measured: 0.02-0.04 against an MSE of 4e-4
            # on mri-radial-4x) and the first hundreds of steps only shrink the network.
            with torch.no_grad():
                for c in self.convs:
                    c.weight.mul_(self.layer_scale / float(conv_norm_bound(c.weight, tol=self.certificate_tol)))
        self.to(device)

    def get_config(self) -> dict:
        r"""Every constructor keyword argument except ``device`` (JSON-serialisable), so that
        ``MonotoneCNN(**net.get_config())`` rebuilds the same architecture (load the state_dict for the
        same outputs).

        :return: dict of constructor keyword arguments.
        """
        return {
            "channels": int(self.channels),
            "width": int(self.width),
            "depth": int(self.depth),
            "constraint": self.constraint,
            "lipschitz": float(self.lipschitz),
            "dims": int(self.dims),
            "kernel_size": int(self.kernel_size),
            "bias": self.convs[0].bias is not None,
            "power_size": list(self.power_size),
            "n_power_iterations": int(self.n_power_iterations),
            "certificate_tol": float(self.certificate_tol),
            "init": self.init,
            "activation": self.activation,
        }

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _identity_init(self, noise: float = 0.01, offset: float = 2.0):
        # H(x) = T x through the ReLUs by a bias offset B: layer 1 computes s x + B (positive for |x| < B/s), the
        # hidden layers copy it (ReLU leaves positive values alone), the last one removes s^(L-1) B; each layer
        # is a centred delta kernel of norm 1, scaled by s = T^(1/L) by the constraint, so the certified
        # product of norms is T, the least possible for a map equal to T x (a +-x channel split through the
        # ReLUs would certify only T x / 2). Plus PyTorch's random kernels shrunk by `noise` (symmetry breaking).
        # MaxMin pairs channel j < channels (s x + B > 0) with j + width/2 (noise only): max keeps s x + B.
        # MOL and MoDL then start as a mildly regularised least-squares solve rather than from a random map,
        # which a 5-layer ReLU net needs thousands of steps to turn into the near-identity both algorithms need.
        c, centre = self.channels, (self.kernel_size // 2,) * self.dims
        s = self.layer_scale if 0.0 < self.lipschitz else 1.0
        for i, conv in enumerate(self.convs):
            conv.weight.mul_(noise)
            conv.bias.zero_()
            for j in range(c):
                conv.weight[(j, j) + centre] += 1.0
            if i == 0:
                conv.bias[:c] = offset
        self.convs[-1].bias[:c] = -offset * s ** (self.depth - 1)

    def _conv(self, x, w, b=None):
        return _CONV[self.dims](x, w, b, padding=self.kernel_size // 2)

    def _conv_t(self, x, w):
        return _CONV_T[self.dims](x, w, padding=self.kernel_size // 2)

    def _weights_key(self):
        return tuple((c.weight._version, c.weight.data_ptr(), c.weight.device) for c in self.convs)

    @property
    def layer_scale(self) -> float:
        r"""Per-layer target norm :math:`s = T^{1/\mathrm{depth}}` of the strict variant."""
        return self.lipschitz ** (1.0 / self.depth)

    @torch.no_grad()
    def update_normalisation(self, n_iter: int = 200, tol: float = 1e-6) -> dict:
        r"""Run the training-mode power iterations until the norm estimates :math:`\hat\sigma_i` converge.

        Useful after loading weights or before comparing modes; training itself runs
        ``n_power_iterations`` steps per weight change. Stops when every relative change of
        :math:`\hat\sigma_i` is below ``tol``.

        :param int n_iter: maximum iterations.
        :param float tol: relative tolerance.
        :return: dict with ``iterations``, ``converged`` and ``sigmas`` (list of floats).
        """
        if self.constraint != "strict":
            raise ValueError("update_normalisation only applies to constraint='strict'")
        old = [float(getattr(self, f"power_sigma{i}")) for i in range(self.depth)]
        converged, it = False, 0
        for it in range(1, n_iter + 1):
            new = self._power_step()
            converged = all(abs(a - b) <= tol * max(a, 1e-30) for a, b in zip(new, old))
            old = new
            if converged:
                break
        self._power_key = self._weights_key()
        self._cache_key = None
        return {"iterations": it, "converged": converged, "sigmas": old}

    @torch.no_grad()
    def _power_step(self):
        sigmas = []
        for i, c in enumerate(self.convs):
            u = getattr(self, f"power_u{i}")
            v = self._conv(u, c.weight)
            v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
            u_new = self._conv_t(v, c.weight)
            u.copy_(u_new / torch.linalg.vector_norm(u_new).clamp_min(1e-30))
            # ||conv(u)||: the very value the differentiable branch of _normalisers computes
            sigma = torch.linalg.vector_norm(self._conv(u, c.weight))
            getattr(self, f"power_sigma{i}").copy_(sigma)
            sigmas.append(float(sigma))
        return sigmas

    def _certified_norms(self):
        r"""Certified norms :math:`R_i` of the raw kernels, cached until the weights change."""
        key = ("cert",) + self._weights_key()
        if self._cache_key != key:
            self._cache = [float(conv_norm_bound(c.weight, tol=self.certificate_tol)) for c in self.convs]
            self._cache_key = key
        return self._cache

    def _normalisers(self, differentiable: bool):
        r"""The :math:`\nu_i` used now: power estimates (training) or certified norms (evaluation)."""
        if not self.training:
            return [torch.tensor(r, dtype=c.weight.dtype, device=c.weight.device) for r, c in
                    zip(self._certified_norms(), self.convs)]
        if self._power_key != self._weights_key():
            for _ in range(self.n_power_iterations):
                self._power_step()
            self._power_key = self._weights_key()
        if not differentiable:
            return [getattr(self, f"power_sigma{i}").detach().clone() for i in range(self.depth)]
        out = []
        for i, c in enumerate(self.convs):
            u = getattr(self, f"power_u{i}")
            wu = self._conv(u, c.weight)
            v = (wu / torch.linalg.vector_norm(wu)).detach()
            out.append(torch.sum(v * wu))  # = ||conv(u)||, gradient = v^T (dW * u) as in spectral_norm
        return out

    def normalised_weights(self) -> list:
        r"""The kernels the forward applies (:math:`\tilde W_i`; the raw ones for ``penalty``)."""
        if self.constraint == "penalty":
            return [c.weight for c in self.convs]
        differentiable = torch.is_grad_enabled() and any(c.weight.requires_grad for c in self.convs)
        nus = self._normalisers(differentiable)
        s = self.layer_scale
        return [c.weight * (s / nu) for c, nu in zip(self.convs, nus)]

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor, sigma=None, *args, **kwargs) -> torch.Tensor:
        r"""Apply :math:`H_\theta`.

        :param torch.Tensor x: ``(B, channels, H, W)`` (``dims=2``) or ``(B, channels, D, H, W)`` (``dims=3``).
        :param sigma: ignored (deepinv denoiser signature, e.g. :class:`deepinv.models.MoDL` passes it).
        :return: tensor of the same shape.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MonotoneCNN expects a torch.Tensor, got {type(x).__name__}")
        if x.ndim != self.dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"MonotoneCNN(dims={self.dims}, channels={self.channels}) expects input of shape "
                f"(B, {self.channels}, {', '.join(['N'] * self.dims)}), got {tuple(x.shape)}"
            )
        weights = self.normalised_weights()
        h = x
        for i, (c, w) in enumerate(zip(self.convs, weights)):
            h = self._conv(h, w.to(h.dtype), None if c.bias is None else c.bias.to(h.dtype))
            if i < self.depth - 1:
                h = self._activate(h)
        return h

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(h)
        a, b = h.chunk(2, dim=1)  # MaxMin: channel j paired with j + width/2 (a permutation of each pair)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)

    @torch.no_grad()
    def layer_norm_bounds(self) -> list:
        r"""Certified operator norms (any image size) of the convolutions the forward applies now.

        For ``strict`` layer :math:`i` this is :math:`s R_i/\nu_i` (equal to :math:`s` in evaluation mode,
        :math:`s R_i/\hat\sigma_i \ge s` in training mode); for ``penalty`` it is :math:`R_i`.

        :return: list of floats.
        """
        certs = self._certified_norms()
        if self.constraint == "penalty":
            return list(certs)
        nus = [float(n) for n in self._normalisers(differentiable=False)]
        return [self.layer_scale * r / nu for r, nu in zip(certs, nus)]

    def lipschitz_bound(self):
        r"""Certified upper bound of :math:`\mathrm{Lip}(H_\theta)` (any input size), or ``None`` for ``penalty``.

        :math:`\prod_i \|\tilde W_i\| \le \prod_i s R_i/\nu_i` with :math:`R_i` from :func:`conv_norm_bound`
        (computed to ``certificate_tol``), for the network as it computes in its current mode: in
        evaluation mode this is :math:`T` (the ``lipschitz`` argument) up to rounding; in training mode it
        exceeds :math:`T` by the power iteration's shortfall :math:`\prod_i R_i/\hat\sigma_i`.

        :return: float, or ``None`` when ``constraint="penalty"`` (no certificate: check empirically with
            :func:`deepinv_mol.guarantees.estimate_lipschitz`).
        """
        if self.constraint == "penalty":
            return None
        return float(math.prod(self.layer_norm_bounds()))

    @classmethod
    def nearly_extremal(
        cls,
        channels: int = 2,
        width: int = 16,
        depth: int = 5,
        lipschitz: float = 0.99,
        dims: int = 2,
        spread: float = 0.3,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> "MonotoneCNN":
        r"""A strict network whose certified bound is nearly attained (for tests and demonstrations).

        Random weights sit far below the product of layer norms, so they prove little about a bound.
        Here every kernel tap is entrywise non-negative, :math:`W_p = a_p (\mathbf{1}\mathbf{1}^\top + 0.1 E_p)`
        with :math:`a_0 = 1`, :math:`a_p \in [0, \text{spread}]` and :math:`E_p` uniform in :math:`[0, 1]`,
        and biases are 0.
        For non-negative inputs every pre-activation is non-negative, ReLU is the identity and :math:`H`
        is the linear map :math:`\tilde W_L \cdots \tilde W_1`. For non-negative kernels
        :math:`|u^H \hat K(\omega) v| \le |u|^\top \hat K(0) |v|`, so each layer's norm is attained at zero
        frequency by a non-negative (Perron) vector, and the nearly rank-one, all-positive channel matrices
        align these vectors from layer to layer: the Jacobian's norm at a positive input approaches
        :math:`\prod_i \|\tilde W_i\|` up to boundary effects of order :math:`1/n^2` on an :math:`n`-grid.

        :param int channels: see :class:`MonotoneCNN`.
        :param int width: see :class:`MonotoneCNN`.
        :param int depth: see :class:`MonotoneCNN`.
        :param float lipschitz: see :class:`MonotoneCNN`.
        :param int dims: see :class:`MonotoneCNN`.
        :param float spread: size of the off-centre taps relative to the centre.
        :param torch.Generator generator: random generator.
        :return: a strict :class:`MonotoneCNN`.
        """
        if kwargs.get("activation", "relu") != "relu":
            raise ValueError("nearly_extremal relies on ReLU being the identity on non-negative inputs: activation='relu'")
        net = cls(channels=channels, width=width, depth=depth, constraint="strict", lipschitz=lipschitz,
                  dims=dims, **kwargs)
        with torch.no_grad():
            for c in net.convs:
                w = c.weight
                dev = w.device
                centre = tuple(k // 2 for k in w.shape[2:])
                taps = spread * torch.rand(w.shape[2:], generator=generator)
                taps[centre] = 1.0
                pattern = 1.0 + 0.1 * torch.rand(w.shape, generator=generator)
                w.copy_((pattern * taps).to(dev) / math.sqrt(w.shape[0] * w.shape[1]))
                if c.bias is not None:
                    c.bias.zero_()
            for i in range(net.depth):  # the top singular vectors are positive: start the power method there
                u = getattr(net, f"power_u{i}")
                u.fill_(1.0 / math.sqrt(u.numel()))
            net.update_normalisation()
        return net
