r"""LUSER's regularizers: the shallow deep-equilibrium network :class:`ShallowEquilibrium` and its
deep feed-forward twin :class:`FeedForwardRegularizer` (same call signature, used for like-with-like
memory and quality comparisons).

The equilibrium is solved and differentiated by the project's single engine,
:func:`deepinv_mol.equilibrium.equilibrium`; nothing here iterates to a fixed point by itself.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from deepinv.models import Denoiser, DnCNN
from torch import Tensor, nn

from ..equilibrium import BackwardConfig, equilibrium
from .monotone import conv_norm_bound

__all__ = ["ShallowEquilibrium", "FeedForwardRegularizer"]


def _check_image(x, channels: int, dims: int, who: str) -> None:
    r"""Validate an image tensor ``(B, channels, *spatial)`` with ``dims`` spatial axes.

    :raises TypeError: ``x`` is not a real floating-point tensor.
    :raises ValueError: wrong number of axes or of channels.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{who} expects a torch.Tensor of shape (B, {channels}, *spatial), got {type(x).__name__}")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(
            f"{who} expects a real floating-point tensor (complex images as 2 real channels, deepinv's "
            f"convention), got dtype {x.dtype}"
        )
    if x.ndim != dims + 2:
        expected = "(B, C, H, W)" if dims == 2 else "(B, C, D, H, W)"
        raise ValueError(f"{who} was built with dims={dims} and expects {expected}, got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{who} was built with channels={channels}, got {x.shape[1]} channels (shape {tuple(x.shape)})")


class ShallowEquilibrium(Denoiser):
    r"""Shallow deep-equilibrium regularizer of LUSER (Guan, Jin, Romberg, Davenport, arXiv 2210.04987).

    For an input image :math:`v` it returns

    .. math::

        R(v) = v + C z^\star, \qquad z^\star = f(z^\star, v),

    where the hidden state :math:`z` has ``width`` feature channels and :math:`f` is a shallow network
    with input injection (``depth`` convolutions :math:`W_i` on the :math:`z`-path):

    .. math::

        f(z, v) = \sigma\big(W_L \cdots \sigma(W_2\, \sigma(W_1 z + U v + b_1) + b_2) \cdots + b_L\big),

    :math:`\sigma` the ReLU, :math:`U` the injection convolution and :math:`C` a read-out convolution.
    The fixed point is found by :func:`deepinv_mol.equilibrium.equilibrium` (Anderson acceleration by
    default) and differentiated implicitly, so training memory does not depend on the number of inner
    iterations.

    **Contraction safeguard.** Each :math:`z`-path convolution is divided by an estimate of its
    operator norm *as a convolution* (power iteration with ``conv``/``conv_transpose`` on a persistent
    vector, updated ``power_iterations`` times per call in training mode), so that
    :math:`\|W_i\| \le \gamma^{1/L}` and

    .. math::

        \operatorname{Lip}_z(f) \le \prod_i \|W_i\| \le \gamma < 1

    (ReLU is 1-Lipschitz), up to the accuracy of the power iteration (see :meth:`update_norm_estimates`;
    the default ``contraction=0.9`` leaves a margin for it). Hence :math:`z \mapsto f(z, v)` is a contraction for every :math:`v`, the
    fixed point exists, is unique and the plain iteration converges linearly with rate :math:`\gamma`.
    Torch's ``spectral_norm`` is not used because it normalises the reshaped weight matrix, which does
    not bound the convolution operator. :meth:`lipschitz_bound` certifies the bound for every image size
    with :func:`deepinv_mol.models.monotone.conv_norm_bound` (the project's one conv-norm certificate).

    Statistics of the last call (forward iterations, residual, convergence, and backward counterparts
    once a backward pass ran) are in :attr:`stats`; non-convergence also emits a ``RuntimeWarning``
    (from the engine) when ``warn=True``.

    :param int channels: image channels (2 for complex MRI as real/imaginary, 1 for CT, 1 or 3 for deblurring).
    :param int width: feature channels of the hidden state :math:`z`.
    :param int depth: number of convolutions on the :math:`z`-path (:math:`L \ge 1`).
    :param int kernel_size: odd convolution kernel size. Training memory is that of the activations, not of
        the kernels: 5 costs no memory over 3 and gave +1.0 dB on deblurring after equal training
        (:func:`deepinv_mol.bench.luser.bench_luser_quality` uses 5; 3 is kept as the default because the
        shipped weights use it).
    :param int dims: 2 for images ``(B, C, H, W)``, 3 for volumes ``(B, C, D, H, W)``.
    :param float contraction: target Lipschitz constant :math:`\gamma \in (0, 1)` of :math:`f` in :math:`z`.
    :param int max_iter: cap on forward (inner) fixed-point iterations.
    :param float tol: relative residual tolerance of the inner solve.
    :param int anderson: Anderson history size (0: plain fixed-point iteration). A history of :math:`m`
        keeps :math:`2m` hidden states (``width`` channels each) alive during the solve: fewer iterations, but
        at 256², width 64 it dominated the peak memory of a LUSER training step (662 MB with :math:`m = 5`
        against 361 MB with plain iterations, ``bench.luser``); use 0 where memory matters.
    :param float beta: Anderson mixing parameter.
    :param str backward: ``"implicit"`` (adjoint fixed point) or ``"jfb"`` (Jacobian-free one-step gradient).
    :param int backward_max_iter: cap on adjoint fixed-point iterations.
    :param float backward_tol: tolerance of the adjoint fixed point.
    :param int backward_anderson: Anderson history of the adjoint solve (0: plain iteration, which needs
        about 90 iterations for 1e-4 at contraction 0.9).
    :param int power_iterations: power-iteration steps per call (training mode) for the operator norms.
    :param int power_size: spatial side of the persistent power-iteration vectors (default 32 in 2D, 16 in 3D;
        smaller grids underestimate the operator norm on large images).
    :param bool warn: emit ``RuntimeWarning`` when the inner (or adjoint) solve does not converge.
    :param str, torch.device device: device.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import ShallowEquilibrium
    >>> R = ShallowEquilibrium(channels=1, width=8)
    >>> x = torch.randn(2, 1, 16, 16)
    >>> R(x).shape
    torch.Size([2, 1, 16, 16])
    >>> R.stats["converged"]
    True
    >>> R.lipschitz_bound() < 1
    True
    """

    def __init__(
        self,
        channels: int = 2,
        width: int = 64,
        depth: int = 2,
        kernel_size: int = 3,
        dims: int = 2,
        contraction: float = 0.9,
        max_iter: int = 50,
        tol: float = 1e-3,
        anderson: int = 5,
        beta: float = 1.0,
        backward: str = "implicit",
        backward_max_iter: int = 50,
        backward_tol: float = 1e-4,
        backward_anderson: int = 5,
        power_iterations: int = 1,
        power_size: int | None = None,
        warn: bool = True,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        for name, value in (("channels", channels), ("width", width), ("depth", depth), ("max_iter", max_iter)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if not 0.0 < contraction < 1.0:
            raise ValueError(f"contraction must lie in (0, 1) for the inner solve to converge, got {contraction!r}")
        if backward not in ("implicit", "jfb"):
            raise ValueError(f"backward must be 'implicit' or 'jfb', got {backward!r}")
        if not isinstance(power_iterations, int) or power_iterations < 0:
            raise ValueError(f"power_iterations must be a non-negative int, got {power_iterations!r}")

        self.channels, self.width, self.depth, self.dims = channels, width, depth, dims
        self.kernel_size, self.contraction = kernel_size, float(contraction)
        self.max_iter, self.tol, self.anderson, self.beta = max_iter, tol, anderson, beta
        self.backward_config = BackwardConfig(
            mode=backward, max_iter=backward_max_iter, tol=backward_tol, anderson=backward_anderson
        )
        self.power_iterations = power_iterations
        self.warn = warn
        self.last_stats = None  # EquilibriumStats of the last call (backward part filled by the engine's hook)

        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        pad = kernel_size // 2
        self.inject = conv(channels, width, kernel_size, padding=pad, bias=True)
        self.z_convs = nn.ModuleList(conv(width, width, kernel_size, padding=pad, bias=True) for _ in range(depth))
        self.readout = conv(width, channels, kernel_size, padding=pad, bias=True)
        # a small read-out makes the initial regularizer close to the identity (R(v) ~ v)
        with torch.no_grad():
            self.readout.weight.mul_(0.1)
            self.readout.bias.zero_()

        side = power_size if power_size is not None else (32 if dims == 2 else 16)
        self.power_size = int(side)
        gen = torch.Generator().manual_seed(0)
        for i in range(depth):
            u = torch.randn((1, width) + (side,) * dims, generator=gen)
            self.register_buffer(f"_power_vector_{i}", u / u.norm())
        with torch.no_grad():
            self.update_norm_estimates(30)  # start from a good estimate of each operator norm
        self.to(device)

    def get_config(self) -> dict:
        r"""Every constructor keyword argument except ``device`` (JSON-serialisable), so that
        ``ShallowEquilibrium(**R.get_config())`` rebuilds the same architecture (load the state_dict for
        the same outputs).

        :returns: dict of constructor keyword arguments.
        """
        b = self.backward_config
        return {
            "channels": int(self.channels),
            "width": int(self.width),
            "depth": int(self.depth),
            "kernel_size": int(self.kernel_size),
            "dims": int(self.dims),
            "contraction": float(self.contraction),
            "max_iter": int(self.max_iter),
            "tol": float(self.tol),
            "anderson": int(self.anderson),
            "beta": float(self.beta),
            "backward": b.mode,
            "backward_max_iter": int(b.max_iter),
            "backward_tol": float(b.tol),
            "backward_anderson": int(b.anderson),
            "power_iterations": int(self.power_iterations),
            "power_size": int(self.power_size),
            "warn": bool(self.warn),
        }

    # ------------------------------------------------------------------ operator norms
    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return (F.conv2d if self.dims == 2 else F.conv3d)(x, weight, padding=self.kernel_size // 2)

    def _conv_adjoint(self, y: Tensor, weight: Tensor) -> Tensor:
        # stride 1, odd kernel, same zero padding: conv_transpose is the exact adjoint of _conv
        return (F.conv_transpose2d if self.dims == 2 else F.conv_transpose3d)(y, weight, padding=self.kernel_size // 2)

    @torch.no_grad()
    def update_norm_estimates(self, n_iter: int = 100) -> None:
        r"""Run ``n_iter`` power iterations (with ``conv`` / ``conv_transpose``) on the persistent vectors that
        estimate each :math:`z`-path convolution's operator norm. Training-mode calls run
        ``power_iterations`` of them, enough to follow slowly changing weights; call this after changing
        the weights by hand. Power iteration approaches the norm from below, so the safeguard holds up
        to its accuracy (converged: about 1 % in 2D, 3 % in 3D on the default grids).

        :param int n_iter: number of power iterations per layer.
        """
        for i, layer in enumerate(self.z_convs):
            u = getattr(self, f"_power_vector_{i}")
            w = layer.weight.detach()
            for _ in range(n_iter):
                u = self._conv_adjoint(self._conv(u, w), w)
                u = u / u.norm().clamp_min(1e-12)
            getattr(self, f"_power_vector_{i}").copy_(u)

    def _operator_norm(self, i: int, weight: Tensor) -> Tensor:
        r"""Estimate :math:`\|W u\|` of the operator norm (:math:`u` the persistent top right-singular vector
        estimate), differentiable in :math:`W`: with :math:`v = Wu/\|Wu\|`, :math:`\|Wu\| = \langle v, Wu\rangle
        = \langle W, G\rangle` where :math:`G = \partial \langle v, Wu\rangle / \partial W` (kernel-shaped), so
        autograd keeps only :math:`G`, not the power vectors (training memory independent of ``power_size``)."""
        u = getattr(self, f"_power_vector_{i}")
        with torch.no_grad():
            wu = self._conv(u, weight)
            v = wu / wu.norm().clamp_min(1e-12)
            grad_weight = (torch.nn.grad.conv2d_weight if self.dims == 2 else torch.nn.grad.conv3d_weight)
            g = grad_weight(u, weight.shape, v, padding=self.kernel_size // 2)
        return (weight * g).sum()

    def normalized_weights(self) -> list[Tensor]:
        r"""The :math:`z`-path weights after the contraction safeguard,
        :math:`W_i \cdot \min(1, \gamma^{1/L} / \|W_i\|)`, differentiable in the raw weights.

        :returns: list of ``depth`` weight tensors.
        """
        target = self.contraction ** (1.0 / self.depth)
        weights = []
        for i, layer in enumerate(self.z_convs):
            norm = self._operator_norm(i, layer.weight)
            weights.append(layer.weight * (target / torch.clamp(norm, min=target)))
        return weights

    @torch.no_grad()
    def lipschitz_bound(self, tol: float = 1e-3) -> float:
        r"""Certified bound :math:`\operatorname{Lip}_z(f) \le \prod_i \|\tilde W_i\|` for the normalised
        :math:`z`-path convolutions :math:`\tilde W_i` the forward applies now, each norm bounded by
        :func:`deepinv_mol.models.monotone.conv_norm_bound` (rigorous, valid for every image size),
        independently of the training-time power iteration.

        :param float tol: relative accuracy of each certified norm.
        :returns: (float) the bound; about ``contraction`` (below 1) when the power iteration has converged.
        """
        return float(math.prod(float(conv_norm_bound(w, tol=tol)) for w in self.normalized_weights()))

    # ------------------------------------------------------------------ the equilibrium
    def fixed_point_map(self, v: Tensor) -> Callable[[Tensor], Tensor]:
        r"""The map :math:`z \mapsto f(z, v)` for a fixed input :math:`v` (injection and normalised weights
        computed once; differentiable in the parameters and in :math:`v`).

        :param torch.Tensor v: input image ``(B, channels, *spatial)``.
        :returns: a callable ``f(z)`` on hidden states ``(B, width, *spatial)``.
        """
        _check_image(v, self.channels, self.dims, type(self).__name__)
        injection = self.inject(v)
        weights = self.normalized_weights()
        biases = [layer.bias for layer in self.z_convs]

        def f(z: Tensor) -> Tensor:
            h = z
            for i, (w, b) in enumerate(zip(weights, biases)):
                h = self._conv(h, w) + b.view((1, -1) + (1,) * self.dims)
                if i == 0:
                    h = h + injection
                h = F.relu(h)
            return h

        return f

    def hidden_init(self, v: Tensor) -> Tensor:
        r"""Initial hidden state :math:`z_0 = 0` of shape ``(B, width, *spatial)``.

        :param torch.Tensor v: input image.
        """
        return v.new_zeros((v.shape[0], self.width) + tuple(v.shape[2:]))

    def decode(self, z: Tensor, v: Tensor) -> Tensor:
        r"""Read-out :math:`R = v + C z`.

        :param torch.Tensor z: hidden state ``(B, width, *spatial)``.
        :param torch.Tensor v: input image ``(B, channels, *spatial)``.
        """
        return v + self.readout(z)

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        r"""Apply :math:`R(x) = x + C z^\star(x)`.

        :param torch.Tensor x: image ``(B, channels, H, W)`` (``dims=2``) or ``(B, channels, D, H, W)`` (``dims=3``).
        :param sigma: unused; accepted for deepinv's denoiser signature ``denoiser(x, sigma)``.
        :returns: (torch.Tensor) regularised image, same shape as ``x``.
        """
        _check_image(x, self.channels, self.dims, type(self).__name__)
        if self.training and self.power_iterations > 0:
            self.update_norm_estimates(self.power_iterations)
        f = self.fixed_point_map(x)
        z, stats = equilibrium(
            f,
            self.hidden_init(x),
            max_iter=self.max_iter,
            tol=self.tol,
            anderson=self.anderson,
            beta=self.beta,
            backward=self.backward_config,
            warn=self.warn,
            name=f"{type(self).__name__} inner solve",
        )
        self.last_stats = stats
        return self.decode(z, x)

    @property
    def stats(self) -> dict:
        r"""Statistics of the last call: ``iterations``, ``residual``, ``converged``, ``diverged`` of the inner
        solve and, once a backward pass ran, ``backward_iterations``, ``backward_residual``,
        ``backward_converged``; plus ``contraction`` (the target :math:`\gamma`). Empty before the first call."""
        if self.last_stats is None:
            return {}
        out = dict(self.last_stats.as_dict())
        out["contraction"] = self.contraction
        return out


class FeedForwardRegularizer(nn.Module):
    r"""Deep feed-forward twin of :class:`ShallowEquilibrium`: deepinv's residual
    :class:`deepinv.models.DnCNN` (``depth`` 3×3 convolutions, ``width`` features, ReLU, no batch-norm),

    .. math::

        R(v) = v + \mathrm{CNN}_\theta(v),

    with the same call signature and input checks. Its receptive field is :math:`2\,\mathrm{depth}+1`
    pixels; the default ``depth=20`` (receptive field 41) matches a two-layer shallow equilibrium after
    about 20 inner iterations. Every layer's activations are kept for backpropagation, which is the
    memory cost :class:`ShallowEquilibrium` avoids.

    :param int channels: image channels.
    :param int width: feature channels.
    :param int depth: number of convolution layers (:math:`\ge 2`).
    :param int dims: 2 or 3.
    :param str, torch.device device: device.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import FeedForwardRegularizer
    >>> R = FeedForwardRegularizer(channels=1, width=8, depth=5)
    >>> R(torch.randn(2, 1, 16, 16)).shape
    torch.Size([2, 1, 16, 16])
    """

    def __init__(self, channels: int = 2, width: int = 64, depth: int = 20, dims: int = 2, device="cpu"):
        super().__init__()
        for name, value in (("channels", channels), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an int >= 2, got {depth!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        self.channels, self.width, self.depth, self.dims = channels, width, depth, dims
        self.net = DnCNN(
            in_channels=channels, out_channels=channels, depth=depth, nf=width, pretrained=None, dim=dims, device=device
        )
        # a small last layer makes the initial regularizer close to the identity, as for ShallowEquilibrium
        with torch.no_grad():
            self.net.out_conv.weight.mul_(0.1)
            if self.net.out_conv.bias is not None:
                self.net.out_conv.bias.zero_()
        self.to(device)

    def get_config(self) -> dict:
        r"""Every constructor keyword argument except ``device``: ``FeedForwardRegularizer(**cfg)`` rebuilds
        the same architecture.

        :returns: dict of constructor keyword arguments.
        """
        return {"channels": int(self.channels), "width": int(self.width), "depth": int(self.depth),
                "dims": int(self.dims)}

    @property
    def receptive_field(self) -> int:
        r"""Receptive field (pixels per axis) of the network: :math:`2\,\mathrm{depth}+1`."""
        return 2 * self.depth + 1

    def forward(self, x: Tensor, sigma=None, **kwargs) -> Tensor:
        r"""Apply :math:`R(x) = x + \mathrm{CNN}_\theta(x)`.

        :param torch.Tensor x: image ``(B, channels, *spatial)``.
        :param sigma: unused; accepted for deepinv's denoiser signature.
        """
        _check_image(x, self.channels, self.dims, type(self).__name__)
        return self.net(x)

    @property
    def stats(self) -> dict:
        r"""No inner solve: an empty dict (kept for a uniform interface with :class:`ShallowEquilibrium`)."""
        return {}
