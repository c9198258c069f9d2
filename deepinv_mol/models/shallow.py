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

from torch.autograd.function import once_differentiable

from ..equilibrium import BackwardConfig, EquilibriumStats, _warn_unconverged, equilibrium, fixed_point
from .conv_norm import CertifiedNorms, power_iteration, power_norm

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

    **Contraction safeguard.** Each :math:`z`-path convolution :math:`W_i` is applied as
    :math:`\tilde W_i = W_i \min(1, \gamma^{1/L}/\hat\sigma_i)`, where :math:`\hat\sigma_i` is a power-iteration
    estimate of its operator norm *as a convolution* (``conv``/``conv_transpose`` on a persistent vector,
    advanced ``power_iterations`` steps per call in training mode;
    :func:`deepinv_mol.models.conv_norm.power_iteration`). ReLU is 1-Lipschitz, so

    .. math::

        \operatorname{Lip}_z(f) \le \prod_i \|\tilde W_i\| \le \prod_i \min(1, \gamma^{1/L}/\hat\sigma_i)\, R_i =: q,

    with :math:`R_i` the certified norm of :func:`deepinv_mol.models.conv_norm.conv_norm_bound`.
    :meth:`lipschitz_bound` returns this certified contraction factor :math:`q` for the weights and power
    vectors as they are now (cached by value: any weight change recomputes it). **What is and is not
    guaranteed:** the power estimate is a lower bound (:math:`\hat\sigma_i \le R_i`), so :math:`q` exceeds the
    target :math:`\gamma` by the power iteration's shortfall :math:`\prod_i R_i/\hat\sigma_i` (about 0.5 % with
    converged vectors on the default 32x32 grid; several percent with vectors that lag the weights: 1.01-1.075
    for the first shipped LUSER weights). ``contraction`` is therefore a *target*, not a certificate: the
    iteration is a certified contraction, with a unique fixed point and linear convergence at rate :math:`q`,
    exactly when :meth:`lipschitz_bound` is below 1; converge the vectors with :meth:`update_normalisation`
    after loading or editing weights. Torch's ``spectral_norm`` is not used because it normalises the
    reshaped weight matrix, which does not bound the convolution operator.

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
    :param int power_iterations: power-iteration steps per call (training mode) for the operator norms
        (0: the vectors are only updated by :meth:`update_normalisation`).
    :param int power_size: spatial side of the persistent power-iteration vectors (default 32 in 2D, 16 in 3D;
        smaller grids underestimate the operator norm on large images).
    :param bool warn: emit ``RuntimeWarning`` when the inner (or adjoint) solve does not converge.
    :param bool recompute: when gradients are enabled, keep only the input image for the backward pass
        (not the hidden maps of the differentiable step, nor :math:`z^\star`): the backward re-runs the
        no-grad inner solve (deterministic: the same :math:`z^\star`), rebuilds the differentiable step and
        solves the adjoint fixed point there. Same gradients, one more inner solve per backward; a
        :class:`~deepinv_mol.optim.LUSER` training step then stores an image per unrolled step instead of
        several ``width``-channel maps. No double backward (``create_graph``) through it.
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
        recompute: bool = True,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if not isinstance(recompute, bool):
            raise TypeError(f"recompute must be a bool, got {type(recompute).__name__} {recompute!r}")
        for name, value in (("channels", channels), ("width", width), ("depth", depth), ("max_iter", max_iter),
                            ("backward_max_iter", backward_max_iter)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("anderson", anderson), ("backward_anderson", backward_anderson)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        for name, value, low in (("tol", tol, 0.0), ("backward_tol", backward_tol, 0.0), ("beta", beta, None)):
            if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                    or (value < low if low is not None else value <= 0)):
                kind = "non-negative" if low is not None else "positive"
                raise ValueError(f"{name} must be a {kind} finite float, got {value!r}")
        if power_size is not None and (not isinstance(power_size, int) or isinstance(power_size, bool) or power_size < 1):
            raise ValueError(f"power_size must be a positive int or None, got {power_size!r}")
        if dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        if not isinstance(contraction, (int, float)) or not 0.0 < contraction < 1.0:
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
        self.recompute = recompute
        self._solve: EquilibriumStats | None = None  # last call's statistics (backward part filled by the engine)
        self._certified = CertifiedNorms(1e-3)

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
        with torch.no_grad():  # start from a good estimate of each operator norm
            for i in range(depth):
                power_iteration(self.z_convs[i].weight, getattr(self, f"_power_vector_{i}"), n_iter=30)
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
            "recompute": bool(self.recompute),
        }

    # ------------------------------------------------------------------ operator norms
    def _conv(self, x: Tensor, weight: Tensor) -> Tensor:
        return (F.conv2d if self.dims == 2 else F.conv3d)(x, weight, padding=self.kernel_size // 2)

    @torch.no_grad()
    def update_normalisation(self, n_iter: int = 100, tol: float = 0.0) -> dict:
        r"""Advance the persistent power vectors that estimate each :math:`z`-path convolution's operator norm
        (:func:`deepinv_mol.models.conv_norm.power_iteration`, warm-started at the stored vectors): at most
        ``n_iter`` steps per layer, fewer once the relative change of :math:`\hat\sigma_i` is below ``tol``
        (``tol=0``: exactly ``n_iter``). Training-mode calls run ``power_iterations`` steps; call this after
        loading or editing weights, and before exporting them (:meth:`lipschitz_bound` then approaches the
        target ``contraction`` from above, within the power iteration's shortfall).

        :param int n_iter: maximum power iterations per layer.
        :param float tol: relative tolerance on the estimates.
        :returns: dict with ``iterations`` (max over layers), ``converged`` (all layers; ``False`` when
            ``tol=0``) and ``sigmas``.
        """
        results = [
            power_iteration(layer.weight, getattr(self, f"_power_vector_{i}"), n_iter=n_iter, tol=tol)
            for i, layer in enumerate(self.z_convs)
        ]
        return {
            "iterations": max(r.iterations for r in results),
            "converged": tol > 0 and all(r.converged for r in results),
            "sigmas": [r.sigma for r in results],
        }

    def normalised_weights(self) -> list[Tensor]:
        r"""The :math:`z`-path weights after the contraction safeguard,
        :math:`W_i \cdot \min(1, \gamma^{1/L} / \hat\sigma_i)`, differentiable in the raw weights
        (:math:`\hat\sigma_i` from :func:`deepinv_mol.models.conv_norm.power_norm`).

        :returns: list of ``depth`` weight tensors.
        """
        target = self.contraction ** (1.0 / self.depth)
        weights = []
        for i, layer in enumerate(self.z_convs):
            norm = power_norm(layer.weight, getattr(self, f"_power_vector_{i}"))
            weights.append(layer.weight * (target / torch.clamp(norm, min=target)))
        return weights

    @torch.no_grad()
    def lipschitz_bound(self, tol: float = 1e-3) -> float:
        r"""Certified contraction factor :math:`q \ge \operatorname{Lip}_z(f)` of the map the forward applies now:
        :math:`\prod_i c_i R_i` with :math:`c_i = \min(1, \gamma^{1/L}/\hat\sigma_i)` the safeguard's scale and
        :math:`R_i` the certified norm (:func:`deepinv_mol.models.conv_norm.conv_norm_bound`, valid for every
        image size) of the raw kernel, cached for exactly the current weight values (any change of the
        weights, including ``.data`` edits, ``load_state_dict`` and ``.to()``, recomputes it).

        :param float tol: relative accuracy of each certified norm.
        :returns: (float) :math:`q`; the inner iteration is a certified contraction when it is below 1. It is at
            least ``contraction`` up to ``tol`` whenever the safeguard is active on every layer.
        """
        if self._certified.tol != tol:
            self._certified = CertifiedNorms(tol)
        certs = self._certified([layer.weight for layer in self.z_convs])
        target = self.contraction ** (1.0 / self.depth)
        q = 1.0
        for i, (layer, r) in enumerate(zip(self.z_convs, certs)):
            sigma = float(power_norm(layer.weight, getattr(self, f"_power_vector_{i}")))
            q *= r * target / max(sigma, target)  # the forward's scale target / clamp(sigma, min=target)
        return float(q)

    # ------------------------------------------------------------------ the equilibrium
    def fixed_point_map(self, v: Tensor) -> Callable[[Tensor], Tensor]:
        r"""The map :math:`z \mapsto f(z, v)` for a fixed input :math:`v` (injection and normalised weights
        computed once; differentiable in the parameters and in :math:`v`).

        :param torch.Tensor v: input image ``(B, channels, *spatial)``.
        :returns: a callable ``f(z)`` on hidden states ``(B, width, *spatial)``.
        """
        _check_image(v, self.channels, self.dims, type(self).__name__)
        return self._map(v, self._params())

    def _params(self) -> list[Tensor]:
        # [normalised z-path weights, z-path biases, injection weight, bias, read-out weight, bias]
        return [*self.normalised_weights(), *[layer.bias for layer in self.z_convs], self.inject.weight,
                self.inject.bias, self.readout.weight, self.readout.bias]

    def _map(self, v: Tensor, params: list[Tensor]) -> Callable[[Tensor], Tensor]:
        L = self.depth
        weights, biases = params[:L], params[L : 2 * L]
        injection = (F.conv2d if self.dims == 2 else F.conv3d)(v, params[2 * L], params[2 * L + 1],
                                                               padding=self.kernel_size // 2)
        shape = (1, -1) + (1,) * self.dims

        def f(z: Tensor) -> Tensor:
            h = z
            for i, (w, b) in enumerate(zip(weights, biases)):
                h = self._conv(h, w) + b.view(shape)
                if i == 0:
                    h = h + injection
                h = F.relu(h)
            return h

        return f

    def _readout(self, z: Tensor, params: list[Tensor]) -> Tensor:
        return (F.conv2d if self.dims == 2 else F.conv3d)(z, params[-2], params[-1], padding=self.kernel_size // 2)

    def _solve_hidden(self, v: Tensor, params: list[Tensor]):
        # the no-grad inner solve (the same call as the engine's forward)
        with torch.no_grad():
            return fixed_point(self._map(v, params), self.hidden_init(v), max_iter=self.max_iter, tol=self.tol,
                               anderson=self.anderson, beta=self.beta)

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

    def forward(self, x: Tensor, sigma: float | Tensor | None = None, **kwargs) -> Tensor:
        r"""Apply :math:`R(x) = x + C z^\star(x)`.

        :param torch.Tensor x: image ``(B, channels, H, W)`` (``dims=2``) or ``(B, channels, D, H, W)`` (``dims=3``).
        :param sigma: unused; accepted for deepinv's denoiser signature ``denoiser(x, sigma)``.
        :returns: (torch.Tensor) regularised image, same shape as ``x``.
        """
        _check_image(x, self.channels, self.dims, type(self).__name__)
        if self.training and self.power_iterations > 0:
            self.update_normalisation(self.power_iterations)
        if self.recompute and torch.is_grad_enabled():
            holder: dict = {}
            out = _RecomputedEquilibrium.apply(self, holder, x, *self._params())
            self._solve = holder["stats"]
            return out
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
        self._solve = stats
        return self.decode(z, x)

    @property
    def last_stats(self) -> EquilibriumStats | None:
        r"""Deprecated: the engine's :class:`~deepinv_mol.equilibrium.EquilibriumStats` of the last call; read
        :attr:`stats`. Kept only because :class:`deepinv_mol.optim.LUSER` still reads it."""
        return self._solve

    @property
    def stats(self) -> dict:
        r"""Statistics of the last call: ``iterations``, ``residual``, ``converged``, ``diverged`` of the inner
        solve and, once a backward pass ran, ``backward_iterations``, ``backward_residual``,
        ``backward_converged``; plus ``contraction`` (the target :math:`\gamma`). Empty before the first call."""
        if self._solve is None:
            return {}
        out = dict(self._solve.as_dict())
        out["contraction"] = self.contraction
        return out


class _RecomputedEquilibrium(torch.autograd.Function):
    r"""``v + C z*(v)`` of a :class:`ShallowEquilibrium` storing only ``v`` and the (small) weights; the
    backward re-solves for :math:`z^\star`, builds one differentiable step there and solves the adjoint
    fixed point :math:`g = J_f(z^\star)^\top g + C^\top \bar o` (as :func:`deepinv_mol.equilibrium.equilibrium`
    does with a stored step)."""

    @staticmethod
    def forward(ctx, module, holder, v, *params):
        z, fstats = module._solve_hidden(v, list(params))
        name = f"{type(module).__name__} inner solve"
        if module.warn and not fstats.converged:
            _warn_unconverged(fstats, module.tol, module.max_iter, name)
        with torch.no_grad():
            out = v + module._readout(z, list(params))
        stats = EquilibriumStats(forward=fstats)
        holder["stats"] = stats
        ctx.module, ctx.stats, ctx.name = module, stats, name
        ctx.save_for_backward(v, *params)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        module, cfg = ctx.module, ctx.module.backward_config
        v, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad[2:]  # v, then params
        z_star, _ = module._solve_hidden(v, params)  # deterministic: the forward's z*
        with torch.enable_grad():
            v_ = v.detach().requires_grad_(needs[0])
            ps = [p.detach().requires_grad_(bool(n)) for p, n in zip(params, needs[1:])]
            z_ro = z_star.detach().requires_grad_()
            ro = module._readout(z_ro, ps)
            ro_inputs = [z_ro] + [p for p in ps[-2:] if p.requires_grad]
            ro_grads = list(torch.autograd.grad(ro, ro_inputs, grad_out))
            u = ro_grads.pop(0)  # dL/dz*
            z_in = z_star.detach().requires_grad_()
            z_out = module._map(v_, ps)(z_in)
        g = u
        if cfg.mode == "implicit" and z_out.requires_grad:
            def vjp_step(w: Tensor) -> Tensor:
                (jtw,) = torch.autograd.grad(z_out, z_in, w, retain_graph=True, allow_unused=True)
                return u if jtw is None else jtw + u

            g, bstats = fixed_point(vjp_step, u, max_iter=cfg.max_iter, tol=cfg.tol, anderson=cfg.anderson)
            ctx.stats.backward = bstats
            if module.warn and not bstats.converged:
                _warn_unconverged(bstats, cfg.tol, cfg.max_iter, f"adjoint (backward) {ctx.name}")
            if bstats.diverged:
                g = u  # a diverged adjoint iterate is no gradient: fall back to Jacobian-free
        f_inputs = [t for t in [v_] + ps[:-2] if t.requires_grad]
        f_grads = list(torch.autograd.grad(z_out, f_inputs, g, allow_unused=True)) if f_inputs and z_out.requires_grad else []
        grads: list = []
        for t in [v_] + ps[:-2]:
            grads.append(f_grads.pop(0) if t.requires_grad and f_grads else None)
        for t in ps[-2:]:
            grads.append(ro_grads.pop(0) if t.requires_grad else None)
        grad_v = grads[0]
        if needs[0]:
            grad_v = grad_out if grad_v is None else grad_v + grad_out
        return (None, None, grad_v, *grads[1:])


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

    def __init__(
        self, channels: int = 2, width: int = 64, depth: int = 20, dims: int = 2, device: str | torch.device = "cpu"
    ) -> None:
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

    def forward(self, x: Tensor, sigma: float | Tensor | None = None, **kwargs) -> Tensor:
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
