r"""LUSER -- Loop-Unrolled Shallow Equilibrium Regularizer -- and its feed-forward twin."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from deepinv.models import Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from ..models.shallow import FeedForwardRegularizer, ShallowEquilibrium
from .data_consistency import regularised_solve, start_image
from .scaling import apply_scale, check_scale_options, normalise_inputs

__all__ = ["LUSER", "UnrolledFeedForward"]


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_float(name: str, value, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and low < value < high):
        raise ValueError(f"{name} must be a finite float in ({low}, {high}), got {value!r}")
    return float(value)


class _StepRecord:
    # statistics of one unrolled step's regularizer: the live EquilibriumStats object when the regularizer keeps
    # one (its backward part is filled in when a backward pass runs), else a snapshot of its `stats` dict
    def __init__(self, reg: nn.Module):
        self.live = getattr(reg, "last_stats", None)
        stats = getattr(reg, "stats", None) if self.live is None else None
        self.snapshot = dict(stats) if isinstance(stats, dict) and "iterations" in stats else None

    def as_dict(self) -> dict | None:
        if self.live is not None:
            return self.live.as_dict()
        return self.snapshot


class LUSER(Reconstructor):
    r"""Loop-Unrolled Shallow Equilibrium Regularizer (Guan, Jin, Romberg, Davenport, arXiv 2210.04987).

    :math:`K` = ``num_iter`` unrolled steps from :math:`x_0`, each a data-consistency step followed by a
    learned regularizer :math:`R_k` (by default a :class:`deepinv_mol.models.ShallowEquilibrium`, a
    shallow deep-equilibrium network solved and differentiated implicitly):

    .. math::

        x_{k+1} = R_k\big(D_k(x_k)\big), \qquad
        D_k(x) = \begin{cases}
            (I + \eta_k A^H A)^{-1} (x + \eta_k A^H y) & \text{``cg'' (default)}, \\
            x - \eta_k A^H (A x - y) & \text{``gradient''},
        \end{cases}

    with learnable step sizes :math:`\eta_k = e^{s_k} > 0`. The ``"cg"`` step is the proximal step of
    :math:`\tfrac12\|Ax - y\|^2`, solved by :func:`deepinv_mol.optim.data_consistency.regularised_solve`
    (CG warm-started at :math:`x`, exact-solve backward, so its memory does not grow with the CG iterations).
    The start :math:`x_0` is :func:`~deepinv_mol.optim.data_consistency.start_image`
    (:math:`(A^H A + \epsilon I)^{-1} A^H y` by ``init_max_iter`` CG iterations, ``init="cg"``, the start of
    MOL and MoDL) or :math:`A^H y` (``init="adjoint"``), unless ``init=`` is passed at call time.

    **Defaults** are the configuration that is benchmarked (:mod:`deepinv_mol.bench.luser`) and works on the
    package's tasks: CG data consistency, CG start, ``step_size="auto"`` (:math:`\eta_k = 1/\|A\|^2` by the
    power method at the first call), and the default regularizer with 5×5 convolutions and plain inner
    iterations (no Anderson history), see :attr:`default_regularizer_kwargs`. The former defaults (a fixed
    step 1.0, :math:`A^H y` start, gradient step) diverge on ``mri-radial-4x`` and ``ct-sparse-view``, whose
    :math:`\|A\|^2` is far from 1.

    **Divergence** across the unrolled steps is detected: a non-finite iterate, an iterate whose norm exceeds
    ``divergence_factor`` times that of :math:`x_0`, or a final data misfit
    :math:`\|Ax_K - y\| / \|y\| > 10` (the zero image has misfit 1) sets ``stats["diverged"]``, names the
    cause in ``stats["divergence"]`` and emits a ``RuntimeWarning``.

    The training memory of a step with a shallow equilibrium regularizer does not depend on the number of
    inner iterations; with the default ``recompute=True`` of :class:`~deepinv_mol.models.ShallowEquilibrium`
    each unrolled step stores only its input image (its backward re-solves the inner fixed point and
    rebuilds the one differentiable step there), so what grows with :math:`K` is an image, the CG data
    step's solution and the parameter gradients per step. With a deep feed-forward regularizer
    (:class:`UnrolledFeedForward`, no recomputation: the baseline) it is every layer's activations.

    Works with any :class:`deepinv.physics.LinearPhysics`, trains with :class:`deepinv.Trainer` and follows
    deepinv's reconstructor conventions (``model(y, physics)``; ``x_gt=`` and ``compute_metrics=True`` return
    deepinv's per-step convergence metrics, as :class:`deepinv.models.MoDL` does).

    :param int num_iter: number of unrolled steps :math:`K`.
    :param regularizer: ``None`` (build the default regularizer from ``channels``, ``dims`` and
        ``regularizer_kwargs``), one ``torch.nn.Module`` (used at every step if ``shared``, else
        deep-copied into :math:`K` untied copies), or a sequence of :math:`K` modules (untied).
        A regularizer is called as ``R(v)`` on images of the physics' image shape.
    :param bool shared: one regularizer for all steps (tied weights) instead of one per step.
    :param float, str step_size: initial :math:`\eta_k`, or ``"auto"`` to set :math:`\eta_k = 1/\|A\|^2`
        (power method from a fixed start vector) at the first call.
    :param str data_consistency: ``"cg"`` or ``"gradient"``.
    :param str init: ``"cg"`` or ``"adjoint"`` (:math:`A^H y`).
    :param int cg_max_iter: CG iteration cap of each ``"cg"`` data-consistency step.
    :param float cg_tol: CG relative residual tolerance (data-consistency steps and start).
    :param float init_eps: :math:`\epsilon` of the CG start.
    :param int init_max_iter: CG iterations of the CG start.
    :param int channels: image channels for the default regularizer (2: complex MRI).
    :param int dims: 2 or 3 spatial dimensions for the default regularizer.
    :param dict regularizer_kwargs: keyword arguments of the default regularizer, on top of
        :attr:`default_regularizer_kwargs`.
    :param float divergence_factor: norm growth over :math:`x_0` counted as divergence (> 1).
    :param bool scale_equivariant: reconstruct :math:`s\,G(y/s)` with the intensity scale :math:`s(y)` of
        :func:`deepinv_mol.optim.scaling.measurement_scale` (from the CG start image; ``stats["scale"]``), so that
        :math:`x(cy) = c\,x(y)`.
        Off by default for the class (the plain map); on for the package's models (:func:`deepinv_mol.pretrained.load_pretrained`, ``deepinv-mol train``).
    :param float scale_reference: the scale statistic's value on the training distribution (:math:`s = 1` there).
    :param str, torch.device device: device.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim import LUSER
    >>> physics = dinv.physics.BlurFFT((1, 16, 16), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    >>> model = LUSER(num_iter=2, channels=1, regularizer_kwargs=dict(width=8))
    >>> x_hat = model(physics(torch.rand(1, 1, 16, 16)), physics)
    >>> x_hat.shape, model.stats["steps"], model.stats["converged"], model.stats["diverged"]
    (torch.Size([1, 1, 16, 16]), 2, True, False)
    >>> cfg = model.get_config()
    >>> cfg["data_consistency"], cfg["regularizer_kwargs"]["kernel_size"], cfg["regularizer_kwargs"]["anderson"]
    ('cg', 5, 0)
    """

    #: regularizer class built when ``regularizer=None`` (the only thing the feed-forward twin changes)
    default_regularizer = ShallowEquilibrium
    #: defaults of the default regularizer (the benchmarked configuration of :mod:`deepinv_mol.bench.luser`:
    #: 5×5 kernels, plain inner iterations, 60-iteration caps); ``regularizer_kwargs`` override them
    default_regularizer_kwargs: dict = {
        "kernel_size": 5,
        "anderson": 0,
        "backward_anderson": 0,
        "max_iter": 60,
        "backward_max_iter": 60,
        "backward_tol": 1e-3,
    }

    def __init__(
        self,
        num_iter: int = 5,
        regularizer: nn.Module | Sequence[nn.Module] | None = None,
        shared: bool = False,
        step_size: float | str = "auto",
        data_consistency: str = "cg",
        init: str = "cg",
        cg_max_iter: int = 10,
        cg_tol: float = 1e-6,
        init_eps: float = 1e-2,
        init_max_iter: int = 20,
        channels: int = 2,
        dims: int = 2,
        regularizer_kwargs: dict | None = None,
        divergence_factor: float = 1e3,
        scale_equivariant: bool = False,
        scale_reference: float = 1.0,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        num_iter = _check_int("num_iter", num_iter, 1)
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be a bool, got {type(shared).__name__} {shared!r}")
        if data_consistency not in ("gradient", "cg"):
            raise ValueError(f"data_consistency must be 'cg' or 'gradient', got {data_consistency!r}")
        if init not in ("adjoint", "cg"):
            raise ValueError(f"init must be 'cg' or 'adjoint', got {init!r}")
        auto = isinstance(step_size, str)
        if auto and step_size != "auto":
            raise ValueError(f"step_size must be a positive float or 'auto', got {step_size!r}")
        if not auto:
            if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
                raise TypeError(f"step_size must be a positive float or 'auto', got {type(step_size).__name__} {step_size!r}")
            if not (math.isfinite(step_size) and step_size > 0):
                raise ValueError(f"step_size must be a positive finite float or 'auto', got {step_size!r}")
        if dims not in (2, 3) or isinstance(dims, bool):
            raise ValueError(f"dims must be 2 or 3, got {dims!r}")
        if regularizer_kwargs is not None and not isinstance(regularizer_kwargs, dict):
            raise TypeError(f"regularizer_kwargs must be a dict or None, got {type(regularizer_kwargs).__name__}")
        self.num_iter, self.shared = num_iter, shared
        self.data_consistency, self.init = data_consistency, init
        self.cg_max_iter = _check_int("cg_max_iter", cg_max_iter, 1)
        self.cg_tol = _check_float("cg_tol", cg_tol, 0.0, 1.0)
        self.init_eps = _check_float("init_eps", init_eps)
        self.init_max_iter = _check_int("init_max_iter", init_max_iter, 0)
        self.channels, self.dims = _check_int("channels", channels, 1), int(dims)
        self.divergence_factor = _check_float("divergence_factor", divergence_factor, 1.0)
        self.step_size_init = "auto" if auto else float(step_size)
        self.scale_equivariant, self.scale_reference = check_scale_options(scale_equivariant, scale_reference)
        self._default_regularizers = regularizer is None
        self.regularizers = nn.ModuleList(self._build_regularizers(regularizer, channels, dims, regularizer_kwargs))
        # eta_k = exp(s_k): positive by construction
        self.log_step_size = nn.Parameter(torch.full((num_iter,), math.log(1.0 if auto else float(step_size))))
        self.register_buffer("_step_size_pending", torch.tensor(auto))
        self._records: list[_StepRecord] = []
        self._cg_stats: list = []
        self._loop: dict = {}
        self._scale: Tensor | None = None
        self.to(device)

    def _build_regularizers(self, regularizer, channels, dims, kwargs) -> list[nn.Module]:
        K = self.num_iter
        if regularizer is None:
            kw = dict(self.default_regularizer_kwargs) | dict(kwargs or {})
            build = lambda: self.default_regularizer(channels=channels, dims=dims, **kw)  # noqa: E731
            return [build()] if self.shared else [build() for _ in range(K)]
        if kwargs:
            raise ValueError("regularizer_kwargs only apply when regularizer=None")
        if isinstance(regularizer, nn.Module) and not isinstance(regularizer, nn.ModuleList):
            return [regularizer] if self.shared else [regularizer] + [copy.deepcopy(regularizer) for _ in range(K - 1)]
        if isinstance(regularizer, (Sequence, nn.ModuleList)) and not isinstance(regularizer, (str, bytes)):
            regs = list(regularizer)
            if self.shared:
                raise ValueError("shared=True takes one regularizer module, got a sequence")
            if len(regs) != K or not all(isinstance(r, nn.Module) for r in regs):
                raise ValueError(f"a sequence of regularizers must hold num_iter={K} torch.nn.Module, got {len(regs)} items")
            return regs
        raise TypeError(f"regularizer must be None, a torch.nn.Module or a sequence of them, got {type(regularizer).__name__}")

    def get_config(self) -> dict:
        r"""Every constructor keyword argument except ``device`` and regularizer modules (JSON-serialisable).

        With default regularizers, ``regularizer_kwargs`` is the regularizer's complete ``get_config()`` minus
        ``channels`` and ``dims``, and ``LUSER(**cfg)`` rebuilds an identical model (same outputs once the
        state_dict is loaded); with user-given regularizers it is ``None`` and
        ``LUSER(regularizer=..., **cfg)`` does.

        :return: dict of constructor keyword arguments.
        """
        reg_kwargs = None
        if self._default_regularizers:
            reg = self.regularizers[0]
            if not hasattr(reg, "get_config"):
                raise TypeError(f"{type(reg).__name__} has no get_config(): cannot describe the regularizer")
            reg_kwargs = {k: v for k, v in reg.get_config().items() if k not in ("channels", "dims")}
        return {
            "num_iter": self.num_iter,
            "shared": self.shared,
            "step_size": self.step_size_init,
            "data_consistency": self.data_consistency,
            "init": self.init,
            "cg_max_iter": self.cg_max_iter,
            "cg_tol": self.cg_tol,
            "init_eps": self.init_eps,
            "init_max_iter": self.init_max_iter,
            "channels": self.channels,
            "dims": self.dims,
            "regularizer_kwargs": reg_kwargs,
            "divergence_factor": self.divergence_factor,
            "scale_equivariant": self.scale_equivariant,
            "scale_reference": self.scale_reference,
        }

    def regularizer(self, k: int) -> nn.Module:
        r"""The regularizer :math:`R_k` of step ``k`` (the same module for every step when ``shared``).

        :param int k: step index in ``[0, num_iter)``.
        """
        return self.regularizers[0 if self.shared else k]

    @property
    def step_sizes(self) -> Tensor:
        r"""The positive step sizes :math:`\eta_k = e^{s_k}`, shape ``(num_iter,)``."""
        return self.log_step_size.exp()

    # ------------------------------------------------------------------ data consistency
    def data_consistency_step(
        self, x: Tensor, y: Tensor, physics: LinearPhysics, eta: Tensor, aty: Tensor | None = None
    ) -> Tensor:
        r"""The data-consistency map :math:`D_k` (CG proximal step or gradient step, see the class docstring).

        :param torch.Tensor x: current image.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor eta: step size :math:`\eta_k`.
        :param torch.Tensor aty: :math:`A^H y` if already computed.
        """
        if self.data_consistency == "gradient":
            return x - eta * physics.A_adjoint(physics.A(x) - y)
        aty = physics.A_adjoint(y) if aty is None else aty
        out, stats = regularised_solve(physics, x + eta * aty, eta, init=x.detach(), tol=self.cg_tol,
                                       max_iter=self.cg_max_iter)
        self._cg_stats.append(stats)
        return out

    def initial_point(self, y: Tensor, physics: LinearPhysics, aty: Tensor | None = None) -> Tensor:
        r"""Starting image :math:`x_0`: :math:`A^H y` or :func:`~deepinv_mol.optim.data_consistency.start_image`.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor aty: :math:`A^H y` if already computed.
        """
        aty = physics.A_adjoint(y) if aty is None else aty
        if self.init == "adjoint":
            return aty
        return start_image(y, physics, eps=self.init_eps, max_iter=self.init_max_iter, tol=self.cg_tol, aty=aty)

    @torch.no_grad()
    def _auto_step_size(self, x: Tensor, physics: LinearPhysics) -> None:
        # a fixed start vector: the step size must not depend on (or consume) the global RNG
        x0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
        sqnorm = float(physics.compute_sqnorm(x0, verbose=False))
        if not math.isfinite(sqnorm) or sqnorm <= 0:
            raise ValueError(f"step_size='auto' needs a positive finite ||A||^2, the power method gave {sqnorm}")
        self.log_step_size.fill_(-math.log(sqnorm))
        self._step_size_pending.fill_(False)

    # ------------------------------------------------------------------ the unrolled loop
    def forward(
        self,
        y: Tensor,
        physics: LinearPhysics,
        init: Tensor | None = None,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
        **kwargs,
    ) -> Tensor | tuple[Tensor, dict]:
        r"""Reconstruct :math:`x_K` from measurements ``y``.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor init: optional starting image :math:`x_0` (default: see ``init`` of the constructor).
        :param torch.Tensor x_gt: ground truth, for the PSNR curve of ``compute_metrics``.
        :param bool compute_metrics: also return deepinv's convergence metrics ``{"residual", "psnr"}``, lists
            (one per batch item) of per-step values, as :class:`deepinv.optim.BaseOptim` does.
        :returns: the reconstruction (shaped like :math:`A^H y`), or ``(x_K, metrics)`` with ``compute_metrics``.
        :raises TypeError: wrong argument types or unexpected keyword arguments.
        """
        if kwargs:
            raise TypeError(f"{type(self).__name__}.forward() got unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(y, Tensor):
            raise TypeError(f"{type(self).__name__} expects measurements y as a torch.Tensor, got {type(y).__name__}")
        if not isinstance(physics, LinearPhysics):
            raise TypeError(
                f"{type(self).__name__} needs a deepinv.physics.LinearPhysics (it uses A and A_adjoint), "
                f"got {type(physics).__name__}"
            )
        self._scale = None
        aty = physics.A_adjoint(y)
        if self.scale_equivariant:  # solve for y / s, return s x (the start image is homogeneous: x0(y/s) = x0(y)/s)
            start = start_image(y, physics, eps=self.init_eps, max_iter=self.init_max_iter, tol=self.cg_tol, aty=aty)
            if init is None and self.init == "adjoint":
                init = aty  # divided by s below, like a caller's start image
            self._scale, y, init, x_gt = normalise_inputs(y, physics, start, self.scale_reference, init, x_gt)
            aty = apply_scale(aty, 1 / self._scale)  # A^H (y/s) without a second adjoint
        x = self.initial_point(y, physics, aty=aty) if init is None else init
        if not isinstance(x, Tensor):
            raise TypeError(f"init must be a torch.Tensor image, got {type(x).__name__}")
        if x.shape != aty.shape:
            raise ValueError(f"init must have the shape of A^H y {tuple(aty.shape)}, got {tuple(x.shape)}")
        if bool(self._step_size_pending):
            self._auto_step_size(x, physics)
        metrics = self._init_metrics(x, x_gt) if compute_metrics else None
        etas = self.step_sizes
        start_norm = self._norms(x)
        self._records, self._cg_stats, divergence = [], [], None
        for k in range(self.num_iter):
            reg = self.regularizer(k)
            x_prev = x
            x = reg(self.data_consistency_step(x, y, physics, etas[k], aty=aty))
            self._records.append(_StepRecord(reg))
            if metrics is not None:
                self._update_metrics(metrics, x_prev, x, x_gt)
            if divergence is None:
                divergence = self._divergence(k, x, start_norm)
        with torch.no_grad():
            misfit = self._norms(physics.A(x.detach()) - y) / self._norms(y).clamp_min(torch.finfo(y.real.dtype).tiny)
            data_residual = float(misfit.max())
        if divergence is None and not data_residual <= 10.0:
            divergence = f"data misfit ||A x_K - y|| / ||y|| = {data_residual:.3g} > 10"
        self._loop = {"diverged": divergence is not None, "divergence": divergence, "data_residual": data_residual}
        if divergence is not None:
            warnings.warn(
                f"{type(self).__name__} diverged: {divergence} (step sizes {[round(float(e), 6) for e in etas]}; "
                "use step_size='auto' and data_consistency='cg', the defaults)",
                RuntimeWarning,
                stacklevel=2,
            )
        x = x if self._scale is None else apply_scale(x, self._scale)
        return (x, metrics) if compute_metrics else x

    @staticmethod
    def _norms(x: Tensor) -> Tensor:
        return x.detach().flatten(1).abs().pow(2).sum(1).sqrt()

    def _divergence(self, k: int, x: Tensor, start_norm: Tensor) -> str | None:
        norms = self._norms(x)
        if not bool(torch.isfinite(norms).all()):
            return f"non-finite iterate after step {k + 1}"
        growth = norms / start_norm.clamp_min(torch.finfo(norms.dtype).tiny)
        if float(growth.max()) > self.divergence_factor:
            return (f"||x_{k + 1}|| / ||x_0|| = {float(growth.max()):.3g} > divergence_factor="
                    f"{self.divergence_factor:g} after step {k + 1}")
        return None

    @staticmethod
    def _init_metrics(x: Tensor, x_gt: Tensor | None) -> dict:
        from deepinv.loss.metric import PSNR

        n = x.shape[0]
        metrics = {"psnr": [[] for _ in range(n)], "residual": [[] for _ in range(n)]}
        if x_gt is not None:
            psnr = PSNR()
            for i in range(n):
                metrics["psnr"][i].append(float(psnr(x[i : i + 1].detach(), x_gt[i : i + 1])))
        return metrics

    @staticmethod
    def _update_metrics(metrics: dict, x_prev: Tensor, x: Tensor, x_gt: Tensor | None) -> None:
        from deepinv.loss.metric import PSNR

        psnr = PSNR()
        for i in range(x.shape[0]):
            residual = (x_prev[i] - x[i]).detach().norm() / (x[i].detach().norm() + 1e-6)
            metrics["residual"][i].append(float(residual))
            if x_gt is not None:
                metrics["psnr"][i].append(float(psnr(x[i : i + 1].detach(), x_gt[i : i + 1])))

    @property
    def stats(self) -> dict:
        r"""Statistics of the last call:

        * ``steps`` (unrolled steps run), ``step_sizes``;
        * ``iterations``: total inner fixed-point iterations of the equilibrium regularizers over the
          :math:`K` steps (evaluations of the shallow network; ``None`` with feed-forward regularizers),
          ``iterations_per_step``, ``residual`` (worst step);
        * ``converged``: every inner solve converged and the loop did not diverge (``None`` with feed-forward
          regularizers, which have no solve, unless the loop diverged: then ``False``);
        * ``diverged``, ``divergence`` (the cause, or ``None``), ``data_residual``
          (:math:`\max_b \|Ax_K - y\|/\|y\|`);
        * with ``"cg"`` data consistency: ``cg_iterations`` (CG iterations of the :math:`K` data steps, in total),
          ``cg_residual`` (worst final relative residual) and ``cg_converged`` (every data step reached
          ``cg_tol``; a capped data step is still a well-defined map, so this does not enter ``converged``);
        * once a backward pass ran: ``backward_iterations``, ``backward_residual``, ``backward_converged``;
        * ``scale``: the intensity scale :math:`s` of each batch item (``None`` without ``scale_equivariant``).
        """
        out = {"steps": len(self._records), "step_sizes": [float(e) for e in self.step_sizes.detach()]}
        scale = getattr(self, "_scale", None)
        out["scale"] = None if scale is None else scale.flatten().tolist()
        loop = dict(self._loop) or {"diverged": False, "divergence": None, "data_residual": None}
        if self._cg_stats:
            out.update(
                cg_iterations=sum(int(s.iterations) for s in self._cg_stats),
                cg_residual=max(float(s.residual) for s in self._cg_stats),
                cg_converged=all(bool(s.converged) for s in self._cg_stats),
            )
        solves = [r.as_dict() for r in self._records]
        solves = [s for s in solves if s is not None]
        if not solves or len(solves) != len(self._records):
            out.update(iterations=None, converged=False if loop["diverged"] else None, **loop)
            return out
        out.update(
            iterations=sum(int(s["iterations"]) for s in solves),
            iterations_per_step=[int(s["iterations"]) for s in solves],
            residual=max(float(s["residual"]) for s in solves),
            converged=all(bool(s["converged"]) for s in solves) and not loop["diverged"],
            inner_diverged=any(bool(s.get("diverged", False)) for s in solves),
            **loop,
        )
        if all("backward_iterations" in s for s in solves):
            out.update(
                backward_iterations=sum(int(s["backward_iterations"]) for s in solves),
                backward_residual=max(float(s["backward_residual"]) for s in solves),
                backward_converged=all(bool(s["backward_converged"]) for s in solves),
            )
        return out


class UnrolledFeedForward(LUSER):
    r"""The feed-forward twin of :class:`LUSER`: the very same unrolled loop (data-consistency step, then
    regularizer, ``num_iter`` times, learnable positive step sizes, tied or untied weights), with a deep
    feed-forward CNN regularizer :class:`deepinv_mol.models.FeedForwardRegularizer` (deepinv's DnCNN)
    by default. Backpropagation keeps every layer's activations of every step: the memory baseline of
    LUSER's claim.

    Takes exactly :class:`LUSER`'s parameters (``regularizer_kwargs`` go to
    :class:`~deepinv_mol.models.FeedForwardRegularizer`: ``width``, ``depth``).

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim import UnrolledFeedForward
    >>> physics = dinv.physics.BlurFFT((1, 16, 16), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    >>> model = UnrolledFeedForward(num_iter=2, channels=1, regularizer_kwargs=dict(width=8, depth=5))
    >>> model(physics(torch.rand(1, 1, 16, 16)), physics).shape
    torch.Size([1, 1, 16, 16])
    """

    default_regularizer = FeedForwardRegularizer
    #: the twin's DnCNN takes only ``width`` and ``depth`` (and ``channels``, ``dims``)
    default_regularizer_kwargs: dict = {}
