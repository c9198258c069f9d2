r"""MOL's learned score as a deepinv :class:`~deepinv.optim.Prior`, usable in deepinv's own optimisers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from deepinv.optim import Prior

from ..equilibrium import equilibrium

__all__ = ["MonotoneScorePrior"]


class MonotoneScorePrior(Prior):
    r"""The monotone score :math:`F = I - H_\theta` of MOL as an implicit prior.

    .. math::

        \nabla g(x) := F(x) = x - H_\theta(x).

    Like :class:`deepinv.optim.RED` (whose gradient is :math:`x - D(x)`), this is an *implicit* prior:
    :math:`F` is in general not the gradient of any function (its Jacobian is not symmetric), so there
    is no ``fn``. It plugs into deepinv's gradient-based optimisers (``GD``, and ``PGD``/``HQS`` through
    :meth:`prox`). With ``deepinv.optim.GD(prior=MonotoneScorePrior(H), data_fidelity=L2(),
    lambda_reg=1/λ)`` the fixed point solves :math:`F(x) + \lambda A^H(Ax - y) = 0`, the equation of
    :class:`deepinv_mol.optim.MOL`.

    If :math:`\mathrm{Lip}(H_\theta) \le L < 1`, :math:`F` is :math:`(1 - L)`-strongly monotone and its
    resolvent is well defined: :meth:`prox` returns :math:`p = (I + \gamma F)^{-1}(v)`, the fixed point of
    :math:`p = (v + \gamma H_\theta(p))/(1 + \gamma)` (a contraction with factor
    :math:`\gamma L/(1 + \gamma) < 1`), solved by :func:`deepinv_mol.equilibrium.equilibrium` with an
    implicit gradient. deepinv's default ``Prior.prox`` would instead run gradient descent on the
    missing ``fn``.

    :param torch.nn.Module denoiser: the network :math:`H_\theta` called as ``denoiser(x)``; default a strict
        :class:`deepinv_mol.models.MonotoneCNN`.
    :param int prox_max_iter: iteration cap of the resolvent solve.
    :param float prox_tol: relative tolerance of the resolvent solve.
    :param int prox_anderson: Anderson history of the resolvent solve.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.models import MonotoneCNN
    >>> from deepinv_mol.optim import MonotoneScorePrior
    >>> _ = torch.manual_seed(0)
    >>> prior = MonotoneScorePrior(MonotoneCNN(width=8, depth=3).eval())
    >>> x = torch.randn(1, 2, 8, 8)
    >>> bool(torch.allclose(prior.grad(x), x - prior.denoiser(x)))
    True
    """

    def __init__(
        self,
        denoiser: nn.Module | None = None,
        prox_max_iter: int = 100,
        prox_tol: float = 1e-5,
        prox_anderson: int = 5,
    ):
        super().__init__()
        if denoiser is None:
            from ..models import MonotoneCNN

            denoiser = MonotoneCNN()
        if not callable(denoiser):
            raise TypeError(f"denoiser must be a callable network x -> H(x), got {type(denoiser).__name__}")
        self.denoiser = denoiser
        self.explicit_prior = False
        self.prox_max_iter, self.prox_tol, self.prox_anderson = int(prox_max_iter), float(prox_tol), int(prox_anderson)
        self.stats: dict = {}

    @property
    def prox_stats(self) -> dict:
        r"""Deprecated name of :attr:`stats` (the package's one name for "what the last call did")."""
        return self.stats

    def grad(self, x: Tensor, *args, **kwargs) -> Tensor:
        r"""The score :math:`F(x) = x - H_\theta(x)` (extra arguments such as deepinv's ``g_param`` are ignored).

        :param torch.Tensor x: image batch.
        :return: tensor of the shape of ``x``.
        """
        return x - self.denoiser(x)

    def prox(self, x: Tensor, *args, gamma: float = 1.0, **kwargs) -> Tensor:
        r"""Resolvent :math:`(I + \gamma F)^{-1}(x)` by a fixed-point solve (statistics in :attr:`stats`).

        :param torch.Tensor x: point :math:`v` to map.
        :param float gamma: step :math:`\gamma > 0` (deepinv passes it as a keyword).
        :return: :math:`p` with :math:`p + \gamma F(p) = v`.
        """
        gamma = float(gamma)
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        p, stats = equilibrium(
            lambda p: (x + gamma * self.denoiser(p)) / (1.0 + gamma),
            x,
            max_iter=self.prox_max_iter,
            tol=self.prox_tol,
            anderson=self.prox_anderson,
            name="MonotoneScorePrior resolvent",
        )
        self.stats = stats.as_dict()
        return p
