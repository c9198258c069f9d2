r"""MOL — Monotone Operator Learning (Pramanik, Zimmerman, Jacob, IEEE TCI 2023) as a deepinv
:class:`~deepinv.models.Reconstructor` on the deep-equilibrium engine :mod:`deepinv_mol.equilibrium`."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from deepinv.models import Reconstructor
from deepinv.optim.linear import conjugate_gradient

from ..equilibrium import BackwardConfig, EquilibriumStats, equilibrium
from .data_consistency import start_image

__all__ = ["MOL", "cg_start"]

_DEFAULT_ANDERSON = 5
_CG_EPS = 1e-30  # deepinv's default 1e-8 damps CG steps once the residual is small: a false fixed point


def _anderson_size(anderson) -> int:
    if isinstance(anderson, bool):
        return _DEFAULT_ANDERSON if anderson else 0
    if int(anderson) != anderson or anderson < 0:
        raise ValueError(f"anderson must be a bool or a history size >= 0, got {anderson!r}")
    return int(anderson)


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


def cg_start(y: Tensor, physics, max_iter: int = 20, eps: float = 1e-2) -> Tensor:
    r"""Deprecated alias of :func:`deepinv_mol.optim.data_consistency.start_image` (old argument order
    ``max_iter, eps``), kept until every caller has moved.

    :param torch.Tensor y: measurements.
    :param deepinv.physics.LinearPhysics physics: forward operator.
    :param int max_iter: CG iterations.
    :param float eps: Tikhonov weight :math:`\epsilon` (absolute).
    :return: the starting image, shaped like :math:`A^Hy`.
    """
    return start_image(y, physics, eps=eps, max_iter=max_iter)


class _DataConsistency(torch.autograd.Function):
    r""":math:`x = M^{-1} b`, :math:`M = I + c\,A^HA`: forward by a few warm-started CG iterations, backward
    as the *exact* solve (its own CG, from zero, to its own tolerance).

    Why not autograd through deepinv's CG: a few CG iterations warm-started at the fixed point are a
    non-linear, non-differentiable function of the residual there (the step length is a ratio of
    quadratic forms of a vanishing residual), so their autograd Jacobian is not that of the solve. The
    exact solve has the same fixed point and the Jacobian of the true solution map:
    :math:`\partial x/\partial b = M^{-1}` and :math:`\partial x/\partial c = -M^{-1}A^HAx`.
    """

    @staticmethod
    def forward(ctx, b, c, x_init, normal, cg_iter, cg_tol, back_iter, back_tol):
        with torch.no_grad():
            x = conjugate_gradient(
                lambda u: u + c * normal(u), b, max_iter=cg_iter, tol=cg_tol, init=x_init, eps=_CG_EPS
            )
        ctx.normal, ctx.back_iter, ctx.back_tol = normal, back_iter, back_tol
        ctx.save_for_backward(x, c)
        return x

    @staticmethod
    def backward(ctx, v):
        x, c = ctx.saved_tensors
        with torch.no_grad():
            w = conjugate_gradient(
                lambda u: u + c * ctx.normal(u), v, max_iter=ctx.back_iter, tol=ctx.back_tol, eps=_CG_EPS
            )
            grad_c = None
            if ctx.needs_input_grad[1]:
                grad_c = -torch.real((w.conj() * ctx.normal(x)).sum()).to(c.dtype).reshape(c.shape)
        return w, grad_c, None, None, None, None, None, None


class MOL(Reconstructor):
    r"""Monotone Operator Learning: a deep-equilibrium reconstruction with a monotone learned score.

    With a network :math:`H_\theta` (the ``denoiser``) and the score :math:`F = I - H_\theta`, MOL returns
    the solution :math:`x^\star` of

    .. math::

        F(x) + \lambda A^H (A x - y) = 0,

    found as the fixed point of the step :math:`x_{n+1} = T(x_n)`,

    .. math::

        z_n = (1 - \alpha) x_n + \alpha H_\theta(x_n), \qquad
        x_{n+1} = (I + \alpha\lambda A^H A)^{-1} (z_n + \alpha\lambda A^H y),

    where the inverse is ``cg_iter`` iterations of deepinv's
    :func:`~deepinv.optim.linear.conjugate_gradient` warm-started at :math:`x_n` (they use
    ``physics.A_adjoint_A``, so a physics with a fast normal operator, e.g. a Toeplitz NUFFT, is fast
    here). Warm starting keeps the fixed point exact even with few CG iterations: at :math:`x^\star` the
    CG residual is zero and CG returns :math:`x^\star`. Iterations start from ``init`` or from CG on
    :math:`(A^HA + \epsilon I)x = A^Hy` (``init_cg_iter`` iterations, :math:`\epsilon` = ``init_eps``)
    and stop when :math:`\|T(x_n) - x_n\| / \|T(x_n)\| \le \min(\alpha, 1)\,` ``tol`` or at ``max_iter``
    (:func:`deepinv_mol.equilibrium.equilibrium`: plain or Anderson iteration, divergence detection).
    The factor :math:`\alpha` makes ``tol`` mean the same for every step size: a step moves by about
    :math:`\alpha` times the residual of the fixed-point equation, so with the authors' unscaled test a
    small :math:`\alpha` stops early, far from the fixed point (their logs show it).

    **Guarantees.** If :math:`\mathrm{Lip}(H_\theta) \le L < 1` (a strict
    :class:`~deepinv_mol.models.MonotoneCNN` certifies it), :math:`F` is :math:`m`-monotone with
    :math:`m = 1 - L`, the fixed point exists and is unique, and for :math:`\alpha \in (0, 1]` the exact step
    contracts with factor :math:`1 - \alpha m` (see :func:`deepinv_mol.guarantees.certify`).

    **Training** uses the implicit gradient (``backward="implicit"``): the forward iterations run without
    autograd, one differentiable step :math:`T(x^\star)` is kept and the adjoint fixed point
    :math:`g = J_T(x^\star)^\top g + v` is solved in the backward pass (tolerance ``backward_tol``, cap
    ``backward_max_iter``, Anderson ``backward_anderson``), so memory does not grow with the number of
    iterations. ``backward="jfb"`` uses the Jacobian-free gradient of the last step instead. The
    gradient reaches :math:`\theta`, :math:`\lambda` (and :math:`\alpha` if learnt).

    **Defaults and why.** The fixed point does not depend on :math:`\alpha`, which only sets the speed.
    The authors' :math:`\alpha = 0.01` contracts only with factor :math:`1 - 0.01 m \ge 0.99` per step
    (their logs: ~150 iterations per training step, still short of a fixed point). The default
    ``alpha=1.0`` contracts with factor :math:`L` (the update of MoDL run to equilibrium). Measured on
    16x16 4x Cartesian MRI, batch of 2 phantoms, with a strict width-8 depth-5 network built to nearly
    attain ``lipschitz=0.99`` (:meth:`MonotoneCNN.nearly_extremal`), ``tol=1e-4``: iterations to tolerance
    plain / Anderson(5) were, for :math:`\lambda = 100`: 5/4 at :math:`\alpha=1`, 11/6 at 0.5, 62/8 at
    0.1, 659/18 at 0.01; for :math:`\lambda = 1`: 9/7, 16/9, 68/13, 685/92 (errors to the exact fixed
    point 7e-6 to 4e-4). Anderson (default history 5) removes most of the dependence on :math:`\alpha` and
    keeps 2 x 5 images of history (no autograd graph). ``lambda_=100`` follows the authors (measurements
    normalised to unit noise-free scale). ``cg_iter=5`` follows the authors. The backward solve uses
    ``backward_tol=1e-5`` (an order finer than the forward: gradients are sensitive to it) and the
    forward's Anderson history. The data-consistency solve is differentiated as an exact solve (see
    :meth:`data_consistency`), which gives the gradient of the true fixed point even with ``cg_iter=5``.

    :param torch.nn.Module denoiser: the network :math:`H_\theta`, called as ``denoiser(x)`` on images
        of the physics' domain shape; default a strict :class:`deepinv_mol.models.MonotoneCNN` (2D,
        2 channels, width 64, depth 5, ``lipschitz=0.99``). Use ``MonotoneCNN(dims=3)`` for 3D and
        2D+time ``(B, 2, T, H, W)``, ``channels=1`` for real images.
    :param float lambda_: initial data weight :math:`\lambda > 0` (learnt through a softplus
        parametrisation when ``learn_lambda``).
    :param float alpha: score step :math:`\alpha > 0`; the guarantees need :math:`\alpha \in (0, 1]`
        (learnt through a sigmoid, hence kept in (0, 1), when ``learn_alpha``).
    :param int max_iter: forward iteration cap.
    :param float tol: forward relative-residual tolerance.
    :param int, bool anderson: Anderson history size of the forward (``True``: 5, ``False``/0: plain).
    :param str backward: ``"implicit"`` or ``"jfb"``.
    :param int cg_iter: CG iterations of each data-consistency step.
    :param float cg_tol: relative tolerance of those CG solves (early stop).
    :param int backward_cg_iter: CG iterations of the data-consistency solve in the backward pass.
    :param float backward_cg_tol: relative tolerance of that solve.
    :param float backward_tol: tolerance of the adjoint solve.
    :param int backward_max_iter: cap of the adjoint solve (default ``max_iter``).
    :param int, bool backward_anderson: Anderson history of the adjoint solve (default: the forward's).
    :param int init_cg_iter: CG iterations of the initialisation.
    :param float init_eps: Tikhonov weight :math:`\epsilon` of the initialisation.
    :param bool learn_lambda: make :math:`\lambda` a trainable parameter.
    :param bool learn_alpha: make :math:`\alpha` a trainable parameter (kept in (0, 1)).
    :param bool warn: warn when a forward or backward solve does not converge.
    :param str, torch.device device: device.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.models import MonotoneCNN
    >>> from deepinv_mol.optim import MOL
    >>> _ = torch.manual_seed(0)
    >>> physics = dinv.physics.MRI(mask=(torch.rand(16, 16) < 0.5).float(), img_size=(2, 16, 16))
    >>> model = MOL(denoiser=MonotoneCNN(width=8, depth=3).eval(), lambda_=10.0)
    >>> x_hat = model(physics(torch.randn(1, 2, 16, 16)), physics)
    >>> x_hat.shape, model.stats["converged"]
    (torch.Size([1, 2, 16, 16]), True)
    """

    def __init__(
        self,
        denoiser: nn.Module | None = None,
        lambda_: float = 100.0,
        alpha: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        anderson: int | bool = _DEFAULT_ANDERSON,
        backward: str = "implicit",
        cg_iter: int = 5,
        cg_tol: float = 1e-6,
        backward_cg_iter: int = 50,
        backward_cg_tol: float = 1e-6,
        backward_tol: float = 1e-5,
        backward_max_iter: int | None = None,
        backward_anderson: int | bool | None = None,
        init_cg_iter: int = 20,
        init_eps: float = 1e-2,
        learn_lambda: bool = True,
        learn_alpha: bool = False,
        warn: bool = True,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if denoiser is None:
            from ..models import MonotoneCNN

            denoiser = MonotoneCNN()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be a callable network x -> H(x), got {type(denoiser).__name__}")
        if not lambda_ > 0:
            raise ValueError(f"lambda_ must be positive, got {lambda_}")
        if not alpha > 0:
            raise ValueError(f"alpha must be positive (the guarantees need alpha in (0, 1]), got {alpha}")
        if learn_alpha and not alpha < 1:
            raise ValueError(f"a learnt alpha is kept in (0, 1) by a sigmoid: initial alpha must be < 1, got {alpha}")
        if int(max_iter) < 1 or int(cg_iter) < 1 or int(init_cg_iter) < 0:
            raise ValueError(
                f"max_iter and cg_iter must be >= 1 and init_cg_iter >= 0, got {max_iter}, {cg_iter}, {init_cg_iter}"
            )
        if backward not in ("implicit", "jfb"):
            raise ValueError(f"backward must be 'implicit' or 'jfb', got {backward!r}")
        self.denoiser = denoiser
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.anderson = _anderson_size(anderson)
        self.cg_iter, self.cg_tol = int(cg_iter), float(cg_tol)
        self.backward_cg_iter, self.backward_cg_tol = int(backward_cg_iter), float(backward_cg_tol)
        self.init_cg_iter, self.init_eps = int(init_cg_iter), float(init_eps)
        self.backward_config = BackwardConfig(
            mode=backward,
            max_iter=int(backward_max_iter if backward_max_iter is not None else max_iter),
            tol=float(backward_tol),
            anderson=self.anderson if backward_anderson is None else _anderson_size(backward_anderson),
        )
        self.warn = warn
        raw_lambda = torch.tensor(_inv_softplus(float(lambda_)))
        if learn_lambda:
            self.raw_lambda = nn.Parameter(raw_lambda)
        else:
            self.register_buffer("raw_lambda", raw_lambda)
        self.learn_alpha = bool(learn_alpha)
        raw_alpha = torch.tensor(math.log(alpha / (1 - alpha)) if learn_alpha else float(alpha))
        if learn_alpha:
            self.raw_alpha = nn.Parameter(raw_alpha)
        else:
            self.register_buffer("raw_alpha", raw_alpha)
        self._stats: EquilibriumStats | None = None
        self.to(device)

    # ------------------------------------------------------------------ parameters
    def lambda_value(self) -> Tensor:
        r"""The data weight :math:`\lambda = \mathrm{softplus}(\rho) > 0`, differentiable in :math:`\rho`."""
        return nn.functional.softplus(self.raw_lambda)

    def alpha_value(self) -> Tensor:
        r"""The score step :math:`\alpha` (:math:`\mathrm{sigmoid}(a) \in (0, 1)` when learnt), differentiable."""
        return torch.sigmoid(self.raw_alpha) if self.learn_alpha else self.raw_alpha

    @property
    def lambda_(self) -> Tensor:
        r"""Current :math:`\lambda > 0` as a detached 0-dim tensor (``float(model.lambda_)`` works);
        :meth:`lambda_value` is the differentiable one."""
        return self.lambda_value().detach()

    @property
    def alpha(self) -> Tensor:
        r"""Current :math:`\alpha` as a detached 0-dim tensor; :meth:`alpha_value` is the differentiable one."""
        return self.alpha_value().detach()

    @property
    def backward(self) -> str:
        r"""The backward mode, ``"implicit"`` or ``"jfb"``."""
        return self.backward_config.mode

    @property
    def stats(self) -> dict:
        r"""Statistics of the last call: ``iterations``, ``residual``, ``converged``, ``diverged`` of the
        forward solve, and ``backward_iterations``, ``backward_residual``, ``backward_converged``,
        ``backward_diverged`` once a backward pass has run through it (implicit mode). Empty before the
        first call."""
        return {} if self._stats is None else self._stats.as_dict()

    # ------------------------------------------------------------------ the maps
    def score_step(self, x: Tensor) -> Tensor:
        r""":math:`z = (1 - \alpha)x + \alpha H_\theta(x) = x - \alpha F(x)`."""
        alpha = self.alpha_value().to(x.dtype)
        return x + alpha * (self.denoiser(x) - x)

    def data_consistency(self, z: Tensor, y: Tensor, physics, init: Tensor, aty: Tensor | None = None) -> Tensor:
        r""":math:`(I + \alpha\lambda A^HA)^{-1}(z + \alpha\lambda A^H y)` by ``cg_iter`` CG iterations from
        ``init``, differentiated as the exact solve (``backward_cg_iter`` CG iterations to ``backward_cg_tol``).

        :param torch.Tensor z: output of :meth:`score_step`.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor init: warm start (the current iterate).
        :param torch.Tensor aty: :math:`A^Hy` if already computed.
        """
        al = (self.alpha_value() * self.lambda_value()).to(z.dtype)
        aty = physics.A_adjoint(y) if aty is None else aty
        return _DataConsistency.apply(
            z + al * aty,
            al,
            init.detach(),
            physics.A_adjoint_A,
            self.cg_iter,
            self.cg_tol,
            self.backward_cg_iter,
            self.backward_cg_tol,
        )

    def step(self, x: Tensor, y: Tensor, physics, aty: Tensor | None = None) -> Tensor:
        r"""One MOL step :math:`T(x)` (score step, then data consistency warm-started at ``x``)."""
        return self.data_consistency(self.score_step(x), y, physics, init=x, aty=aty)

    def initialise(self, y: Tensor, physics) -> Tensor:
        r"""Starting image: :func:`cg_start` with ``init_cg_iter`` iterations and weight ``init_eps``."""
        return cg_start(y, physics, self.init_cg_iter, self.init_eps)

    # ------------------------------------------------------------------ reconstruction
    def forward(self, y: Tensor, physics, init: Tensor | None = None, **kwargs) -> Tensor:
        r"""Reconstruct :math:`x^\star` from measurements.

        :param torch.Tensor y: measurements, batch first.
        :param deepinv.physics.LinearPhysics physics: forward operator (``A``, ``A_adjoint``, ``A_adjoint_A``).
        :param torch.Tensor init: optional starting image (shape of ``physics.A_adjoint(y)``).
        :return: the reconstruction (differentiable w.r.t. the network, :math:`\lambda`, :math:`\alpha`
            through the implicit or Jacobian-free backward); statistics in :attr:`stats`.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor of measurements, got {type(y).__name__}")
        for name in ("A_adjoint", "A_adjoint_A"):
            if not callable(getattr(physics, name, None)):
                raise TypeError(
                    f"MOL needs a linear physics with {name} (a deepinv.physics.LinearPhysics), "
                    f"got {type(physics).__name__}"
                )
        aty = physics.A_adjoint(y)
        if init is None:
            x0 = self.initialise(y, physics)
        else:
            if not isinstance(init, Tensor):
                raise TypeError(f"init must be a torch.Tensor image, got {type(init).__name__}")
            if init.shape != aty.shape:
                raise ValueError(f"init must have the image shape {tuple(aty.shape)} of A^H y, got {tuple(init.shape)}")
            x0 = init
        x, self._stats = equilibrium(
            lambda x: self.step(x, y, physics, aty=aty),
            x0,
            max_iter=self.max_iter,
            tol=self.tol * min(1.0, float(self.alpha)),
            anderson=self.anderson,
            backward=self.backward_config,
            warn=self.warn,
            name="MOL fixed-point solve",
        )
        return x
