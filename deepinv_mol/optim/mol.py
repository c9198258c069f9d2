r"""MOL — Monotone Operator Learning (Pramanik, Zimmerman, Jacob, IEEE TCI 2023) as a deepinv
:class:`~deepinv.models.Reconstructor` on the deep-equilibrium engine :mod:`deepinv_mol.equilibrium`."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics

from ..equilibrium import BackwardConfig, EquilibriumStats, SolverStats, equilibrium
from ..recompute import recompute_call
from .data_consistency import regularised_solve, start_image
from .scaling import apply_scale, check_scale_options, normalise_inputs

__all__ = ["MOL", "DataConsistencyConfig"]

_DEFAULT_ANDERSON = 5
#: with ``tol=0``, data-consistency CG stops at this many units of the dtype's machine epsilon (relative residual)
_CG_FLOOR = 10.0

_LEGACY = ("cg_iter", "cg_tol", "backward_cg_iter", "backward_cg_tol", "backward_tol", "backward_max_iter",
           "backward_anderson")


def _is_int(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and int(v) == v


def _finite(v) -> bool:
    if isinstance(v, Tensor) and v.numel() == 1:
        v = float(v)
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


@dataclass
class DataConsistencyConfig:
    r"""How MOL solves its data-consistency step :math:`(I + \alpha\lambda A^HA)^{-1}` (by
    :func:`deepinv_mol.optim.data_consistency.regularised_solve`, warm-started at the current iterate).

    :param float tol_factor: the CG tolerance, tied to the fixed-point tolerance: CG stops when its
        residual is at most ``tol_factor`` :math:`\cdot\,\alpha\,` ``tol`` :math:`\cdot\|x\|`.
        It must be < 1: then a CG that does nothing (0 iterations) can only happen at a point that meets
        MOL's tolerance, so the inexact map has no false fixed point. With MOL's ``tol=0`` (exactly
        ``max_iter`` iterations) CG stops at relative residual 10 machine epsilons instead.
    :param float forcing: CG also stops once its residual is ``forcing`` times its first one (inexact
        Newton: loose solves far from the fixed point, where the outer step moves a lot anyway; near it
        the tolerance above takes over). 0 solves every step to the tolerance above.
    :param int max_iter: CG cap of each forward solve.
    :param float backward_tol: relative tolerance of the CG solve of the backward pass (exact-solve gradient).
    :param int backward_max_iter: its cap.
    """

    tol_factor: float = 0.1
    forcing: float = 0.1
    max_iter: int = 50
    backward_tol: float = 1e-6
    backward_max_iter: int = 100

    def __post_init__(self):
        if not (_finite(self.tol_factor) and 0 < self.tol_factor < 1):
            raise ValueError(f"data_consistency tol_factor must be in (0, 1), got {self.tol_factor!r}")
        if not (_finite(self.forcing) and 0 <= self.forcing < 1):
            raise ValueError(f"data_consistency forcing must be in [0, 1), got {self.forcing!r}")
        if not (_finite(self.backward_tol) and self.backward_tol >= 0):
            raise ValueError(f"data_consistency backward_tol must be a finite number >= 0, got {self.backward_tol!r}")
        for name in ("max_iter", "backward_max_iter"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"data_consistency {name} must be an integer >= 1, got {v!r}")
            setattr(self, name, int(v))


def _anderson_size(anderson) -> int:
    if isinstance(anderson, bool):
        return _DEFAULT_ANDERSON if anderson else 0
    if not _is_int(anderson) or anderson < 0:
        raise ValueError(f"anderson must be a bool or an integer history size >= 0, got {anderson!r}")
    return int(anderson)


def _inv_softplus(v: float) -> float:
    return v + math.log(-math.expm1(-v))


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

    where the inverse is :func:`deepinv_mol.optim.data_consistency.regularised_solve`: CG warm-started at
    :math:`x_n`, stopped at a residual tied to ``tol`` (see :class:`DataConsistencyConfig`), capped, and
    differentiated as the exact solve. It uses ``physics.A_adjoint_A``, so a physics with a fast normal
    operator (e.g. a Toeplitz NUFFT) is fast here.

    **Stopping and what ``converged`` means.** The warm-started CG's first residual is
    :math:`b - Mx_n = -\alpha\,(F(x_n) + \lambda A^H(Ax_n - y))`: the residual of MOL's equation at the
    current iterate comes for free. The iteration stops at the first :math:`x_n` with
    :math:`\|F(x_n) + \lambda A^H(Ax_n - y)\| \le` ``tol`` :math:`\cdot\|x_n\|` for every batch item, and
    returns that :math:`x_n` (the point the residual was measured at, not one step further):
    ``stats["equation_residual"]`` is that relative residual (maximum over the batch) at the returned
    image, and ``stats["converged"]`` is ``equation_residual <= tol`` (and not diverged). With
    :math:`m = 1 - \mathrm{Lip}(H_\theta) > 0`, :math:`F + \lambda A^HA` is :math:`m`-strongly monotone, so
    :math:`\|x - x^\star\| \le \|F(x) + \lambda A^H(Ax - y)\| / m \le` ``tol`` :math:`\|x\|/m`, whatever the
    accuracy of the CG solves (which only set the speed). Iterations start from ``init`` or from
    :func:`~deepinv_mol.optim.data_consistency.start_image` (``init_cg_iter`` iterations,
    :math:`\epsilon` = ``init_eps``); plain or Anderson iteration with a stall safeguard and divergence
    detection (:func:`deepinv_mol.equilibrium.fixed_point`).

    **Guarantees.** If :math:`\mathrm{Lip}(H_\theta) \le L < 1` (a strict
    :class:`~deepinv_mol.models.MonotoneCNN` certifies it), :math:`F` is :math:`m`-monotone with
    :math:`m = 1 - L`, the fixed point exists and is unique, and for :math:`\alpha \in (0, 1]` the exact step
    contracts with factor :math:`1 - \alpha m` (see :func:`deepinv_mol.guarantees.certify`).

    **Training** uses the implicit gradient (``backward="implicit"``): the forward iterations run without
    autograd, one differentiable step :math:`T(x^\star)` is kept and the adjoint fixed point
    :math:`g = J_T(x^\star)^\top g + v` is solved in the backward pass (a
    :class:`~deepinv_mol.equilibrium.BackwardConfig`: tolerance, cap, Anderson), so memory does not grow
    with the number of iterations. ``backward="jfb"`` uses the Jacobian-free gradient of the last step
    instead. The gradient reaches :math:`\theta`, :math:`\lambda` (and :math:`\alpha` if learnt).

    **Defaults and why.** The fixed point does not depend on :math:`\alpha`, which only sets the speed.
    The authors' :math:`\alpha = 0.01` contracts only with factor :math:`1 - 0.01 m \ge 0.99` per step.
    The default ``alpha=1.0`` contracts with factor :math:`L` (the update of MoDL run to equilibrium).
    Anderson (default history 5) removes most of the dependence on :math:`\alpha`. ``lambda_=100`` follows
    the authors (measurements normalised to unit noise-free scale). The backward's adjoint solve defaults
    to tolerance 1e-5 (finer than the forward: gradients are sensitive to it), cap ``max_iter`` and the
    forward's Anderson history.

    :param torch.nn.Module denoiser: the network :math:`H_\theta`, called as ``denoiser(x)`` on images
        of the physics' domain shape, returning the same shape; default a strict
        :class:`deepinv_mol.models.MonotoneCNN` (2D, 2 channels, width 64, depth 5, ``lipschitz=0.99``).
    :param float lambda_: initial data weight :math:`\lambda > 0`, finite (learnt through a softplus
        parametrisation when ``learn_lambda``).
    :param float alpha: score step :math:`\alpha > 0`, finite; the guarantees need :math:`\alpha \in (0, 1]`
        (learnt through a sigmoid, hence kept in (0, 1), when ``learn_alpha``).
    :param int max_iter: forward iteration cap (evaluations of the step).
    :param float tol: tolerance on the relative residual of MOL's equation (see above).
    :param int, bool anderson: Anderson history size of the forward (``True``: 5, ``False``/0: plain).
    :param str, BackwardConfig, dict backward: ``"implicit"`` or ``"jfb"`` (with the defaults above), a
        :class:`~deepinv_mol.equilibrium.BackwardConfig`, or a dict of its fields.
    :param DataConsistencyConfig, dict data_consistency: the CG solves (default
        :class:`DataConsistencyConfig()`).
    :param int init_cg_iter: CG iterations of the starting image.
    :param float init_eps: Tikhonov weight :math:`\epsilon` of the starting image.
    :param bool learn_lambda: make :math:`\lambda` a trainable parameter.
    :param bool learn_alpha: make :math:`\alpha` a trainable parameter (kept in (0, 1)).
    :param bool warn: warn when a forward or backward solve does not converge.
    :param bool scale_equivariant: reconstruct :math:`s\,x^\star(y/s)` with the intensity scale
        :math:`s = s(y)` of :func:`deepinv_mol.optim.scaling.measurement_scale` (from the start image, one per batch
        item; ``stats["scale"]``): then :math:`x(cy) = c\,x(y)` for every :math:`c > 0`. The guarantees then hold for
        the normalised problem; :func:`deepinv_mol.guarantees.certify` reports the bound of the composite map.
        Off by default for the class (the plain map); on for the package's models (:func:`deepinv_mol.pretrained.load_pretrained`, ``deepinv-mol train``).
    :param float scale_reference: the value of the scale statistic on the training distribution (:math:`s = 1` there;
        :data:`deepinv_mol.optim.scaling.TASK_SCALE_REFERENCE`).
    :param bool recompute: recompute the network's feature maps in the backward pass instead of storing
        them (:func:`deepinv_mol.recompute.recompute_call`): the differentiable step then keeps only its
        input image, so a training step's peak memory is a few feature maps above that of the no-grad solve.
        Same gradients; the backward costs more network evaluations (see ``docs/theory.rst``, Memory).
    :param str, torch.device device: device.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.models import MonotoneCNN
    >>> from deepinv_mol.optim import MOL
    >>> _ = torch.manual_seed(0)
    >>> physics = dinv.physics.MRI(mask=(torch.rand(16, 16) < 0.5).float(), img_size=(2, 16, 16))
    >>> model = MOL(denoiser=MonotoneCNN(width=8, depth=3).eval(), lambda_=10.0)
    >>> x_hat = model(physics(torch.randn(1, 2, 16, 16)), physics)
    >>> x_hat.shape, model.stats["converged"], model.stats["equation_residual"] <= model.tol
    (torch.Size([1, 2, 16, 16]), True, True)
    >>> MOL(denoiser=model.denoiser, **model.get_config()).get_config() == model.get_config()
    True
    """

    def __init__(
        self,
        denoiser: nn.Module | None = None,
        lambda_: float = 100.0,
        alpha: float = 1.0,
        max_iter: int = 100,
        tol: float = 1e-4,
        anderson: int | bool = _DEFAULT_ANDERSON,
        backward: str | BackwardConfig | dict = "implicit",
        data_consistency: DataConsistencyConfig | dict | None = None,
        init_cg_iter: int = 20,
        init_eps: float = 1e-2,
        learn_lambda: bool = True,
        learn_alpha: bool = False,
        warn: bool = True,
        scale_equivariant: bool = False,
        scale_reference: float = 1.0,
        recompute: bool = True,
        device: str | torch.device = "cpu",
        **legacy,
    ):
        super().__init__()
        if legacy:
            old = sorted(k for k in legacy if k in _LEGACY)
            if old:
                raise TypeError(
                    f"MOL no longer takes {', '.join(old)}: the CG solves are configured by "
                    "data_consistency=DataConsistencyConfig(...) (tol tied to MOL's tol, max_iter, backward_tol, "
                    "backward_max_iter) and the adjoint solve by backward=BackwardConfig(mode, max_iter, tol, anderson)"
                )
            raise TypeError(f"MOL got unexpected keyword arguments {sorted(legacy)}")
        if denoiser is None:
            from ..models import MonotoneCNN

            denoiser = MonotoneCNN()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be a callable network x -> H(x), got {type(denoiser).__name__}")
        if not (_finite(lambda_) and lambda_ > 0):
            raise ValueError(f"lambda_ must be a finite number > 0, got {lambda_!r}")
        if not (_finite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0 (the guarantees need alpha in (0, 1]), got {alpha!r}")
        lambda_, alpha = float(lambda_), float(alpha)
        if learn_alpha and not alpha < 1:
            raise ValueError(f"a learnt alpha is kept in (0, 1) by a sigmoid: initial alpha must be < 1, got {alpha}")
        for name, value, low in (("max_iter", max_iter, 1), ("init_cg_iter", init_cg_iter, 0)):
            if not _is_int(value) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not (_finite(tol) and tol >= 0):
            raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
        if not (_finite(init_eps) and init_eps >= 0):
            raise ValueError(f"init_eps must be a finite number >= 0, got {init_eps!r}")
        self.denoiser = denoiser
        self.max_iter, self.tol = int(max_iter), float(tol)
        self.anderson = _anderson_size(anderson)
        self.init_cg_iter, self.init_eps = int(init_cg_iter), float(init_eps)
        self.backward_config = self._backward_config(backward)
        if data_consistency is None:
            data_consistency = DataConsistencyConfig()
        elif isinstance(data_consistency, dict):
            data_consistency = DataConsistencyConfig(**data_consistency)
        elif not isinstance(data_consistency, DataConsistencyConfig):
            raise TypeError(
                f"data_consistency must be a DataConsistencyConfig or a dict of its fields, got {type(data_consistency).__name__}"
            )
        self.dc_config = data_consistency
        self.warn = bool(warn)
        self.scale_equivariant, self.scale_reference = check_scale_options(scale_equivariant, scale_reference)
        if not isinstance(recompute, bool):
            raise TypeError(f"recompute must be a bool, got {type(recompute).__name__} {recompute!r}")
        self.recompute = recompute
        raw_lambda = torch.tensor(_inv_softplus(lambda_))
        self.learn_lambda = bool(learn_lambda)
        if learn_lambda:
            self.raw_lambda = nn.Parameter(raw_lambda)
        else:
            self.register_buffer("raw_lambda", raw_lambda)
        self.learn_alpha = bool(learn_alpha)
        raw_alpha = torch.tensor(math.log(alpha / (1 - alpha)) if learn_alpha else alpha)
        if learn_alpha:
            self.raw_alpha = nn.Parameter(raw_alpha)
        else:
            self.register_buffer("raw_alpha", raw_alpha)
        self._stats: EquilibriumStats | None = None
        self._extra: dict = {}
        self.to(device)

    def _backward_config(self, backward) -> BackwardConfig:
        defaults = dict(mode="implicit", max_iter=self.max_iter, tol=1e-5, anderson=self.anderson)
        if isinstance(backward, BackwardConfig):
            return backward
        if isinstance(backward, str):
            if backward not in ("implicit", "jfb"):
                raise ValueError(f"backward must be 'implicit' or 'jfb', got {backward!r}")
            return BackwardConfig(**{**defaults, "mode": backward})
        if isinstance(backward, dict):
            unknown = set(backward) - set(defaults)
            if unknown:
                raise ValueError(f"backward has unknown keys {sorted(unknown)}: expected a subset of {sorted(defaults)}")
            cfg = {**defaults, **backward}
            cfg["anderson"] = _anderson_size(cfg["anderson"])
            return BackwardConfig(**cfg)
        raise TypeError(f"backward must be 'implicit', 'jfb', a BackwardConfig or a dict, got {type(backward).__name__}")

    def get_config(self) -> dict:
        r"""All constructor keyword arguments but ``denoiser`` and ``device``, JSON-serialisable, with the
        *current* :math:`\lambda` and :math:`\alpha`: ``MOL(denoiser=net, **model.get_config())`` rebuilds
        this model (identical outputs once the state dict is loaded).

        :return: the configuration dict.
        """
        return {
            "lambda_": float(self.lambda_),
            "alpha": float(self.alpha),
            "max_iter": self.max_iter,
            "tol": self.tol,
            "anderson": self.anderson,
            "backward": asdict(self.backward_config),
            "data_consistency": asdict(self.dc_config),
            "init_cg_iter": self.init_cg_iter,
            "init_eps": self.init_eps,
            "learn_lambda": self.learn_lambda,
            "learn_alpha": self.learn_alpha,
            "warn": self.warn,
            "scale_equivariant": self.scale_equivariant,
            "scale_reference": self.scale_reference,
            "recompute": self.recompute,
        }

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
        r"""Statistics of the last call: ``iterations`` (steps :math:`T` evaluated), ``residual`` and
        ``equation_residual`` (both the relative residual of MOL's equation at the returned image, maximum
        over the batch), ``converged``, ``diverged``, ``restarts`` (Anderson safeguard), ``cg_iterations``
        (CG iterations of all forward data-consistency solves), ``scale`` (the intensity scale
        :math:`s` of each batch item, ``None`` without ``scale_equivariant``), and ``backward_iterations``,
        ``backward_residual``, ``backward_converged``, ``backward_diverged`` once a backward pass has run
        through it (implicit mode). Empty before the first call."""
        if self._stats is None:
            return {}
        d = self._stats.as_dict()
        d["equation_residual"] = self._stats.forward.residual
        d["restarts"] = self._stats.forward.restarts
        d.update(self._extra)
        return d

    # ------------------------------------------------------------------ the maps
    def score_step(self, x: Tensor) -> Tensor:
        r""":math:`z = (1 - \alpha)x + \alpha H_\theta(x) = x - \alpha F(x)`.

        :param torch.Tensor x: current image.
        :raises ValueError: if the denoiser's output is not a tensor of the shape of ``x``.
        """
        h = recompute_call(self.denoiser, x) if self.recompute and torch.is_grad_enabled() else self.denoiser(x)
        if not isinstance(h, Tensor) or h.shape != x.shape:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(
                f"the denoiser must return an image of the input's shape {tuple(x.shape)}, got {got} "
                "(check its channels: MOL's F = I - H needs H to map images to images)"
            )
        alpha = self.alpha_value().to(x.real.dtype if x.is_complex() else x.dtype)
        return x + alpha * (h - x)

    def _solve(self, z: Tensor, x: Tensor, aty: Tensor, physics: LinearPhysics) -> tuple[Tensor, SolverStats]:
        al = (self.alpha_value() * self.lambda_value()).to(z.real.dtype if z.is_complex() else z.dtype)
        b = z + al * aty
        # CG tolerance tied to MOL's: residual <= tol_factor * alpha * tol * ||x|| (relative to ||b||, per item)
        with torch.no_grad():
            ratio = x.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-30)
            cg_tol = self.dc_config.tol_factor * float(self.alpha) * self.tol * float(ratio.min())
            if not math.isfinite(cg_tol):  # a non-finite iterate: the solve reports it as diverged
                cg_tol = 0.0
            elif self.tol == 0:
                # tol=0 (exactly max_iter iterations, as the benchmarks run) would leave only the forcing term, and
                # CG would chase residuals far below the arithmetic's precision (float32 mri-3d: 12 iterations a
                # solve at relative residual 1e-8, 60 % of the forward's A^H A calls): stop at 10 eps instead
                cg_tol = _CG_FLOOR * torch.finfo(b.real.dtype if b.is_complex() else b.dtype).eps
        cfg = self.dc_config
        x_next, st = regularised_solve(
            physics, b, al, init=x, tol=cg_tol, max_iter=cfg.max_iter,
            backward_tol=cfg.backward_tol, backward_max_iter=cfg.backward_max_iter, forcing=cfg.forcing,
        )
        return x_next, st

    def data_consistency(self, z: Tensor, y: Tensor, physics: LinearPhysics, init: Tensor, aty: Tensor | None = None) -> Tensor:
        r""":math:`(I + \alpha\lambda A^HA)^{-1}(z + \alpha\lambda A^H y)` by CG warm-started at ``init``, to the
        tolerance of :class:`DataConsistencyConfig`, differentiated as the exact solve.

        :param torch.Tensor z: output of :meth:`score_step`.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor init: warm start (the current iterate).
        :param torch.Tensor aty: :math:`A^Hy` if already computed.
        """
        aty = physics.A_adjoint(y) if aty is None else aty
        return self._solve(z, init.detach(), aty, physics)[0]

    def step(self, x: Tensor, y: Tensor, physics: LinearPhysics, aty: Tensor | None = None) -> Tensor:
        r"""One MOL step :math:`T(x)` (score step, then data consistency warm-started at ``x``).

        :param torch.Tensor x: current image.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor aty: :math:`A^Hy` if already computed.
        """
        return self.data_consistency(self.score_step(x), y, physics, init=x, aty=aty)

    def initialise(self, y: Tensor, physics: LinearPhysics, aty: Tensor | None = None) -> Tensor:
        r"""Starting image: :func:`~deepinv_mol.optim.data_consistency.start_image` with ``init_cg_iter``
        iterations and weight ``init_eps``.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor aty: :math:`A^Hy` if already computed.
        """
        return start_image(y, physics, eps=self.init_eps, max_iter=self.init_cg_iter, aty=aty)

    def equation_residual(self, x: Tensor, y: Tensor, physics: LinearPhysics) -> Tensor:
        r"""Per-item relative residual :math:`\|F(x) + \lambda A^H(Ax - y)\| / \|x\|` of MOL's equation
        (computed from scratch: one denoiser call; ``stats["equation_residual"]`` gives it for free).
        :math:`A^HA` is ``physics.A_adjoint_A``, the operator MOL solves with: for a physics whose normal
        operator is not exactly ``A_adjoint(A(.))`` (a Toeplitz NUFFT, accurate to the interpolation error,
        about 1e-3 for :class:`~deepinv_mol.physics.NufftMRI`), the equation is the one with that operator.

        :param torch.Tensor x: image.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :return: shape ``(B,)``.
        """
        with torch.no_grad():
            r = x - self.denoiser(x) + self.lambda_ * (physics.A_adjoint_A(x) - physics.A_adjoint(y))
            return r.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)

    # ------------------------------------------------------------------ reconstruction
    def forward(
        self,
        y: Tensor,
        physics: LinearPhysics,
        init: Tensor | None = None,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
    ) -> Tensor | tuple[Tensor, dict]:
        r"""Reconstruct :math:`x^\star` from measurements.

        Follows deepinv's reconstructor conventions (those of its optimisers, e.g. ``MoDL``): with
        ``compute_metrics=True`` it returns ``(x, metrics)``, ``metrics["residual"][i]`` the relative
        residual of MOL's equation of item ``i`` at every iteration and ``metrics["psnr"][i]`` its PSNR
        against ``x_gt`` (initial image first), which ``deepinv.test(..., plot_convergence_metrics=True)``
        plots.

        :param torch.Tensor y: measurements, batch first (non-empty).
        :param deepinv.physics.LinearPhysics physics: forward operator (``A``, ``A_adjoint``, ``A_adjoint_A``).
        :param torch.Tensor init: optional starting image (shape of ``physics.A_adjoint(y)``).
        :param torch.Tensor x_gt: optional ground truth, for the PSNR metric.
        :param bool compute_metrics: also return the per-iteration metrics.
        :return: the reconstruction (differentiable w.r.t. the network, :math:`\lambda`, :math:`\alpha`
            through the implicit or Jacobian-free backward), and the metrics if ``compute_metrics``;
            statistics in :attr:`stats`.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor of measurements, got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] == 0:
            raise ValueError(f"y must be a non-empty batch of measurements (batch first), got shape {tuple(y.shape)}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"y contains non-finite values (NaN or Inf) in items {torch.nonzero(~torch.isfinite(y).flatten(1).all(1)).flatten().tolist()}")
        for name in ("A", "A_adjoint", "A_adjoint_A"):
            if not callable(getattr(physics, name, None)):
                raise TypeError(
                    f"MOL needs a linear physics with {name} (a deepinv.physics.LinearPhysics), "
                    f"got {type(physics).__name__}"
                )
        scale = None
        aty = physics.A_adjoint(y)
        if self.scale_equivariant:  # solve for y / s, return s x (the start image is homogeneous: x0(y/s) = x0(y)/s)
            start = self.initialise(y, physics, aty=aty)
            scale, y, init, x_gt = normalise_inputs(y, physics, start, self.scale_reference, init, x_gt)
            aty = apply_scale(aty, 1 / scale)  # A^H (y/s) without a second adjoint (an expensive NUFFT in 3D)
        if init is None:
            x0 = self.initialise(y, physics, aty=aty)
        else:
            if not isinstance(init, Tensor):
                raise TypeError(f"init must be a torch.Tensor image, got {type(init).__name__}")
            if init.shape != aty.shape:
                raise ValueError(f"init must have the image shape {tuple(aty.shape)} of A^H y, got {tuple(init.shape)}")
            x0 = init
        if x_gt is not None and (not isinstance(x_gt, Tensor) or x_gt.shape != aty.shape):
            got = tuple(x_gt.shape) if isinstance(x_gt, Tensor) else type(x_gt).__name__
            raise ValueError(f"x_gt must have the image shape {tuple(aty.shape)}, got {got}")

        alpha = float(self.alpha)
        last: dict = {}
        cg_total = [0]
        metrics = None
        if compute_metrics:
            from deepinv.loss.metric import PSNR

            psnr = PSNR(complex_abs=aty.shape[1] == 2 and not aty.is_complex())
            batch = aty.shape[0]
            metrics = {"psnr": [[] for _ in range(batch)], "residual": [[] for _ in range(batch)]}

        def traced_step(x: Tensor) -> Tensor:
            x_next, st = self._solve(self.score_step(x), x.detach(), aty, physics)
            cg_total[0] += st.iterations
            # CG's first residual is -alpha (F(x) + lambda A^H(Ax - y)): the equation residual at x
            last["eq"] = torch.tensor(st.initial_residuals, dtype=torch.float64) / alpha
            if metrics is not None and not torch.is_grad_enabled():
                rel = last["eq"] / x.detach().flatten(1).norm(dim=1).double().cpu().clamp_min(1e-12)
                for i in range(x.shape[0]):
                    metrics["residual"][i].append(float(rel[i]))
                    if x_gt is not None:
                        metrics["psnr"][i].append(float(psnr(x[i : i + 1].detach(), x_gt[i : i + 1])))
            return x_next

        x, self._stats = equilibrium(
            traced_step,
            x0,
            max_iter=self.max_iter,
            tol=self.tol,
            anderson=self.anderson,
            backward=self.backward_config,
            warn=self.warn,
            name="MOL fixed-point solve",
            residual=lambda z, fz: last["eq"],
        )
        self._extra = {"cg_iterations": cg_total[0]}
        self._extra["scale"] = None if scale is None else scale.flatten().tolist()
        x = x if scale is None else x * scale
        if compute_metrics:
            return x, metrics
        return x
