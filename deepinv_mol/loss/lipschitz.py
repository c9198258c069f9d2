r"""Log-barrier penalty on a local Lipschitz estimate of MOL's network (the "penalty" variant)."""

from __future__ import annotations

import math

import torch
from deepinv.loss import Loss

from ..guarantees import LipschitzEstimate, estimate_lipschitz

__all__ = ["LipschitzPenalty"]


class LipschitzPenalty(Loss):
    r"""Penalty keeping the local Lipschitz constant of MOL's network :math:`H` below a threshold :math:`T`.

    At the reconstruction :math:`\hat x` (``x_net``) it estimates :math:`\hat L = \|\partial H(\hat x)\|_2`
    with :func:`deepinv_mol.guarantees.estimate_lipschitz` (power iteration on :math:`J^\top J` with an early
    stop, or the MOL authors' adversarial ratio) and returns, per sample,

    .. math::

        \psi(\hat L) = \begin{cases} -\log(T - \hat L) & \hat L < T - e,\\
        -\log e + (\hat L - T + e)/e & \text{otherwise,}\end{cases}

    the log-barrier continued linearly (value and slope match at :math:`T - e`, so :math:`\psi` is
    :math:`C^1`), times ``weight``. Defaults :math:`T = 0.98`, :math:`e = 10^{-3}` as in the authors' code.

    The estimate is differentiable in the network's parameters: the power iteration runs without a graph
    and only the final :math:`\|J u^\star\|` carries one, whose gradient at the converged :math:`u^\star` is
    that of :math:`\|J\|_2`. Compared with :class:`deepinv.loss.JacobianSpectralNorm`, whose idea this
    reuses: that class's ``forward(y, x)`` does not match the Trainer's call, it stops early only when
    ``verbose=True``, and it backpropagates through every iteration. Here the call is the Trainer's, the
    early stop always applies, and memory is that of one step. ``reduced_batchsize`` bounds the cost.

    :param float threshold: :math:`T`.
    :param float eps: :math:`e`, where the barrier turns linear.
    :param float weight: multiplier of the penalty.
    :param str method: ``"power"`` or ``"adversarial"``.
    :param int n_iter: maximum estimation iterations.
    :param float tol: relative tolerance of the early stop.
    :param int reduced_batchsize: use only the first samples of the batch (``None``: all).
    :param torch.nn.Module network: the network to penalise (default: ``model.denoiser`` at call time).
    :param float radius: relative perturbation size of the adversarial method.
    :param torch.Generator generator: generator of the random starts.

    After each call :attr:`stats` holds the estimate (``value``, ``per_sample``, ``iterations``,
    ``converged``, ``method``), the project's one name for "what the last call did".

    :Examples:

    >>> import torch
    >>> from deepinv_mol.loss import LipschitzPenalty
    >>> net = torch.nn.Conv2d(2, 2, 3, padding=1)
    >>> loss = LipschitzPenalty(network=net, n_iter=20)
    >>> loss(x_net=torch.randn(2, 2, 8, 8)).shape
    torch.Size([2])
    """

    def __init__(
        self,
        threshold: float = 0.98,
        eps: float = 1e-3,
        weight: float = 1.0,
        method: str = "power",
        n_iter: int = 20,
        tol: float = 1e-3,
        reduced_batchsize: int | None = None,
        network: torch.nn.Module | None = None,
        radius: float = 1e-2,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("threshold", threshold), ("eps", eps), ("weight", weight), ("tol", tol), ("radius", radius)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float, got {value!r}")
        if not (0 < eps < threshold):
            raise ValueError(f"need 0 < eps < threshold, got eps={eps}, threshold={threshold}")
        if not isinstance(n_iter, int) or isinstance(n_iter, bool) or n_iter < 1:
            raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
        if method not in ("power", "adversarial"):
            raise ValueError(f"method must be 'power' or 'adversarial', got {method!r}")
        if reduced_batchsize is not None and reduced_batchsize < 1:
            raise ValueError(f"reduced_batchsize must be a positive integer or None, got {reduced_batchsize}")
        self.threshold, self.eps, self.weight = float(threshold), float(eps), float(weight)
        self.method, self.n_iter, self.tol = method, n_iter, tol
        self.reduced_batchsize, self.radius, self.generator = reduced_batchsize, radius, generator
        self.network = network
        self._estimate: LipschitzEstimate | None = None

    @property
    def stats(self) -> dict:
        r"""The last call's Lipschitz estimate: ``value`` (batch maximum), ``per_sample`` (list of floats),
        ``iterations``, ``converged``, ``method``; empty before the first call."""
        est = self._estimate
        if est is None:
            return {}
        return {
            "value": float(est.value),
            "per_sample": [float(v) for v in est.per_sample.detach().reshape(-1)],
            "iterations": int(est.iterations),
            "converged": bool(est.converged),
            "method": est.method,
        }

    @property
    def last_estimate(self) -> LipschitzEstimate | None:
        r"""Deprecated: the last :class:`deepinv_mol.guarantees.LipschitzEstimate`; read :attr:`stats`. Kept
        because ``docs/examples/demo_guarantees.py`` still reads it."""
        return self._estimate

    def barrier(self, lip: torch.Tensor) -> torch.Tensor:
        r"""The barrier :math:`\psi` applied elementwise (differentiable).

        :param torch.Tensor lip: Lipschitz estimates.
        :return: :math:`\psi(\hat L)`, same shape.
        """
        knee = self.threshold - self.eps
        inside = -torch.log((self.threshold - torch.clamp(lip, max=knee)))
        linear = -math.log(self.eps) + (lip - knee) / self.eps
        return torch.where(lip < knee, inside, linear)

    def forward(
        self,
        x: torch.Tensor | None = None,
        x_net: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        physics=None,
        model: torch.nn.Module | None = None,
        epoch: int | None = None,
        **kwargs,
    ) -> torch.Tensor:
        r"""Penalty at the reconstruction.

        :param torch.Tensor x: ground truth (unused).
        :param torch.Tensor x_net: reconstruction :math:`\hat x` ``(B, ...)``, where :math:`H` is linearised.
        :param torch.Tensor y: measurements (unused).
        :param physics: forward operator (unused).
        :param torch.nn.Module model: reconstructor whose ``denoiser`` is penalised when ``network`` was not given.
        :param int epoch: unused.
        :return: ``weight * psi(L_hat)`` per used sample, shape ``(B',)``.
        """
        network = self.network
        if network is None:
            network = getattr(model, "denoiser", None)
        if network is None:
            raise ValueError("LipschitzPenalty needs a network: pass network=... or a model with a .denoiser")
        if not isinstance(x_net, torch.Tensor):
            raise ValueError("LipschitzPenalty needs the reconstruction x_net (a tensor (B, ...))")
        point = x_net.detach()
        if self.reduced_batchsize is not None:
            point = point[: self.reduced_batchsize]
        est = estimate_lipschitz(
            network,
            point,
            n_iter=self.n_iter,
            tol=self.tol,
            method=self.method,
            generator=self.generator,
            differentiable=True,
            radius=self.radius,
            warn=False,
        )
        self._estimate = est
        return self.weight * self.barrier(est.per_sample)
