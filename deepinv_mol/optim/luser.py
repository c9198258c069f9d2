r"""LUSER: loop unrolling with shallow equilibrium regularizers, and its feed-forward twin.

One unrolled loop (:class:`LUSER`) serves both regularizer kinds; :class:`UnrolledFeedForward` only
changes the default regularizer, so memory and quality comparisons are like with like.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
from deepinv.models import Reconstructor
from deepinv.optim.linear import least_squares_implicit_backward
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from ..models.shallow import FeedForwardRegularizer, ShallowEquilibrium

__all__ = ["LUSER", "UnrolledFeedForward"]


class LUSER(Reconstructor):
    r"""Loop-Unrolled Shallow Equilibrium Regularizer (Guan, Jin, Romberg, Davenport, arXiv 2210.04987).

    :math:`K` = ``num_iter`` unrolled steps from :math:`x_0`, each a data-consistency step followed by a
    learned regularizer :math:`R_k` (by default a :class:`deepinv_mol.models.ShallowEquilibrium`, a
    shallow deep-equilibrium network solved and differentiated implicitly):

    .. math::

        x_{k+1} = R_k\big(D_k(x_k)\big), \qquad
        D_k(x) = \begin{cases}
            x - \eta_k A^H (A x - y) & \text{``gradient''}, \\
            (I + \eta_k A^H A)^{-1} (x + \eta_k A^H y) & \text{``cg''},
        \end{cases}

    with learnable step sizes :math:`\eta_k = e^{s_k} > 0`. The ``"cg"`` variant is the proximal step of
    :math:`\tfrac12\|Ax - y\|^2` solved by deepinv's conjugate gradient through
    :func:`deepinv.optim.linear.least_squares_implicit_backward` (implicit backward, so its memory does
    not grow with the CG iterations either). The start :math:`x_0` is :math:`A^H y` (``init="adjoint"``)
    or the regularised least-squares solution :math:`(A^H A + \epsilon I)^{-1} A^H y` by CG
    (``init="cg"``), unless ``init=`` is passed at call time.

    The training memory of a step with a shallow equilibrium regularizer is that of one evaluation of
    its shallow network, whatever the number of inner iterations; with a deep feed-forward regularizer
    (:class:`UnrolledFeedForward`) it is that of every layer. After a call, :attr:`stats` aggregates the
    inner solves of all steps.

    Works with any :class:`deepinv.physics.LinearPhysics` and trains with :class:`deepinv.Trainer`
    (``x_hat = model(y, physics)``).

    :param int num_iter: number of unrolled steps :math:`K`.
    :param regularizer: ``None`` (build the default regularizer from ``channels``, ``dims`` and
        ``regularizer_kwargs``), one ``torch.nn.Module`` (used at every step if ``shared``, else
        deep-copied into :math:`K` untied copies), or a sequence of :math:`K` modules (untied).
        A regularizer is called as ``R(v)`` on images of the physics' image shape.
    :param bool shared: one regularizer for all steps (tied weights) instead of one per step.
    :param float, str step_size: initial :math:`\eta_k`, or ``"auto"`` to set :math:`\eta_k = 1/\|A\|^2`
        (power method) at the first call.
    :param str data_consistency: ``"gradient"`` or ``"cg"``.
    :param str init: ``"adjoint"`` (:math:`A^H y`) or ``"cg"``.
    :param int cg_max_iter: CG iterations (``"cg"`` data consistency and start).
    :param float cg_tol: CG relative tolerance.
    :param float init_eps: :math:`\epsilon` of the CG start.
    :param int channels: image channels for the default regularizer (2: complex MRI).
    :param int dims: 2 or 3 spatial dimensions for the default regularizer.
    :param dict regularizer_kwargs: extra keyword arguments of the default regularizer.
    :param str, torch.device device: device.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim import LUSER
    >>> physics = dinv.physics.BlurFFT((1, 16, 16), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    >>> model = LUSER(num_iter=2, channels=1, regularizer_kwargs=dict(width=8))
    >>> x_hat = model(physics(torch.rand(1, 1, 16, 16)), physics)
    >>> x_hat.shape, model.stats["steps"], model.stats["converged"]
    (torch.Size([1, 1, 16, 16]), 2, True)
    """

    #: regularizer class built when ``regularizer=None`` (the only thing the feed-forward twin changes)
    default_regularizer = ShallowEquilibrium

    def __init__(
        self,
        num_iter: int = 5,
        regularizer: nn.Module | Sequence[nn.Module] | None = None,
        shared: bool = False,
        step_size: float | str = 1.0,
        data_consistency: str = "gradient",
        init: str = "adjoint",
        cg_max_iter: int = 10,
        cg_tol: float = 1e-6,
        init_eps: float = 1e-2,
        channels: int = 2,
        dims: int = 2,
        regularizer_kwargs: dict | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if not isinstance(num_iter, int) or num_iter < 1:
            raise ValueError(f"num_iter must be a positive int, got {num_iter!r}")
        if data_consistency not in ("gradient", "cg"):
            raise ValueError(f"data_consistency must be 'gradient' or 'cg', got {data_consistency!r}")
        if init not in ("adjoint", "cg"):
            raise ValueError(f"init must be 'adjoint' or 'cg', got {init!r}")
        auto = isinstance(step_size, str)
        if auto and step_size != "auto":
            raise ValueError(f"step_size must be a positive float or 'auto', got {step_size!r}")
        if not auto and not (isinstance(step_size, (int, float)) and step_size > 0):
            raise ValueError(f"step_size must be a positive float or 'auto', got {step_size!r}")
        self.num_iter, self.shared = num_iter, bool(shared)
        self.data_consistency, self.init = data_consistency, init
        self.cg_max_iter, self.cg_tol, self.init_eps = cg_max_iter, cg_tol, init_eps
        self.regularizers = nn.ModuleList(self._build_regularizers(regularizer, channels, dims, regularizer_kwargs))
        # eta_k = exp(s_k): positive by construction
        self.log_step_size = nn.Parameter(torch.full((num_iter,), math.log(1.0 if auto else float(step_size))))
        self.register_buffer("_step_size_pending", torch.tensor(auto))
        self._step_stats: list = []
        self.to(device)

    def _build_regularizers(self, regularizer, channels, dims, kwargs) -> list[nn.Module]:
        K = self.num_iter
        if regularizer is None:
            build = lambda: self.default_regularizer(channels=channels, dims=dims, **(kwargs or {}))  # noqa: E731
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
    def _least_squares(self, physics: LinearPhysics, y: Tensor, z: Tensor, gamma: Tensor) -> Tensor:
        # argmin_x 1/2||Ax - y||^2 + 1/(2 gamma)||x - z||^2 by deepinv's CG, implicit backward
        return least_squares_implicit_backward(
            physics, y, z=z, init=z.detach(), gamma=gamma, solver="CG", max_iter=self.cg_max_iter, tol=self.cg_tol
        )

    def data_consistency_step(self, x: Tensor, y: Tensor, physics: LinearPhysics, eta: Tensor) -> Tensor:
        r"""The data-consistency map :math:`D_k` (gradient step or CG proximal step, see the class docstring).

        :param torch.Tensor x: current image.
        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor eta: step size :math:`\eta_k`.
        """
        if self.data_consistency == "gradient":
            return x - eta * physics.A_adjoint(physics.A(x) - y)
        return self._least_squares(physics, y, x, eta)

    def initial_point(self, y: Tensor, physics: LinearPhysics) -> Tensor:
        r"""Starting image :math:`x_0`: :math:`A^H y` or :math:`(A^H A + \epsilon I)^{-1} A^H y` (CG).

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        x0 = physics.A_adjoint(y)
        if self.init == "cg":
            gamma = torch.tensor(1.0 / self.init_eps, dtype=x0.dtype, device=x0.device)
            x0 = self._least_squares(physics, y, torch.zeros_like(x0), gamma)
        return x0

    @torch.no_grad()
    def _auto_step_size(self, x: Tensor, physics: LinearPhysics) -> None:
        sqnorm = float(physics.compute_sqnorm(torch.randn_like(x), verbose=False))
        if not math.isfinite(sqnorm) or sqnorm <= 0:
            raise ValueError(f"step_size='auto' needs a positive finite ||A||^2, the power method gave {sqnorm}")
        self.log_step_size.fill_(-math.log(sqnorm))
        self._step_size_pending.fill_(False)

    # ------------------------------------------------------------------ the unrolled loop
    def forward(self, y: Tensor, physics: LinearPhysics, init: Tensor | None = None, **kwargs) -> Tensor:
        r"""Reconstruct :math:`x_K` from measurements ``y``.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor init: optional starting image :math:`x_0` (default: see ``init`` of the constructor).
        :returns: (torch.Tensor) the reconstruction, of the shape of :math:`A^H y`.
        """
        if not isinstance(y, Tensor):
            raise TypeError(f"{type(self).__name__} expects measurements y as a torch.Tensor, got {type(y).__name__}")
        if not isinstance(physics, LinearPhysics):
            raise TypeError(
                f"{type(self).__name__} needs a deepinv.physics.LinearPhysics (it uses A and A_adjoint), "
                f"got {type(physics).__name__}"
            )
        x = self.initial_point(y, physics) if init is None else init
        if not isinstance(x, Tensor):
            raise TypeError(f"init must be a torch.Tensor image, got {type(x).__name__}")
        if bool(self._step_size_pending):
            self._auto_step_size(x, physics)
        etas = self.step_sizes
        self._step_stats = []
        for k in range(self.num_iter):
            reg = self.regularizer(k)
            x = reg(self.data_consistency_step(x, y, physics, etas[k]))
            self._step_stats.append(getattr(reg, "last_stats", None))
        return x

    @property
    def stats(self) -> dict:
        r"""Statistics of the last call, aggregated over the :math:`K` steps: ``steps``, ``step_sizes`` and,
        for equilibrium regularizers, ``iterations`` (total inner iterations), ``iterations_per_step``,
        ``residual`` (worst step), ``converged`` (all steps), ``diverged`` (any step) and, once a backward
        pass ran, ``backward_iterations``, ``backward_residual``, ``backward_converged``."""
        out = {"steps": len(self._step_stats), "step_sizes": [float(e) for e in self.step_sizes.detach()]}
        solves = [s for s in self._step_stats if s is not None]
        if not solves:
            return out
        fwd = [s.forward for s in solves]
        out.update(
            iterations=sum(s.iterations for s in fwd),
            iterations_per_step=[s.iterations for s in fwd],
            residual=max(s.residual for s in fwd),
            converged=all(s.converged for s in fwd),
            diverged=any(s.diverged for s in fwd),
        )
        bwd = [s.backward for s in solves]
        if all(b is not None for b in bwd):
            out.update(
                backward_iterations=sum(b.iterations for b in bwd),
                backward_residual=max(b.residual for b in bwd),
                backward_converged=all(b.converged for b in bwd),
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
