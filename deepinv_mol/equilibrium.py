r"""The fixed-point and implicit-differentiation engine shared by MOL and LUSER.

A deep-equilibrium (DEQ) layer returns the fixed point :math:`z^\star = f_\theta(z^\star)` of a map
:math:`f_\theta` and differentiates through it *implicitly*:

.. math::

    \frac{\partial \ell}{\partial \theta} = g^\top \frac{\partial f_\theta(z^\star)}{\partial \theta},
    \qquad g = J_f(z^\star)^\top g + \frac{\partial \ell}{\partial z^\star},

so the forward iterations run under :func:`torch.no_grad` and training memory does not grow with their
number. This module holds the pieces, each usable alone:

* :func:`fixed_point` — plain or Anderson-accelerated iteration with a relative-residual tolerance, an
  iteration cap and divergence detection; it returns the iterate *and* a :class:`SolverStats`.
* :func:`equilibrium` — the DEQ layer: forward solve, one differentiable step, and an implicit
  (adjoint fixed point) or Jacobian-free backward configured by :class:`BackwardConfig`; statistics of
  both passes in an :class:`EquilibriumStats`.

deepinv has a DEQ inside ``BaseOptim`` (``DEQConfig``), but it is tied to its optimiser iterators, uses
the forward tolerance for the backward solve and returns no statistics; this engine is a standalone
building block with its own backward tolerance and cap, divergence detection and statistics.
It imports nothing else of ``deepinv_mol``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

__all__ = [
    "SolverStats",
    "BackwardConfig",
    "EquilibriumStats",
    "fixed_point",
    "equilibrium",
]

_EPS = 1e-12


@dataclass
class SolverStats:
    r"""What a fixed-point solve found and how well.

    :param int iterations: iterations performed (evaluations of the map).
    :param float residual: final relative residual :math:`\|f(z) - z\| / \|f(z)\|` of the returned
        iterate, maximum over the batch.
    :param bool converged: ``residual <= tol``.
    :param bool diverged: the solve stopped because the residual became non-finite or grew by more than
        ``divergence_factor``.
    :param list history: the relative residual (maximum over the batch) at every iteration.
    :param list initial_residuals: per batch item, the absolute residual of the starting point (filled by
        solvers that compute it anyway, e.g. the CG of :mod:`deepinv_mol.optim.data_consistency`:
        :math:`\|b - Mx_0\|`); ``None`` otherwise.
    :param int restarts: Anderson restarts after a stall (:func:`fixed_point`).
    """

    iterations: int
    residual: float
    converged: bool
    diverged: bool = False
    history: list[float] = field(default_factory=list)
    initial_residuals: list[float] | None = None
    restarts: int = 0

    def as_dict(self, prefix: str = "") -> dict:
        r"""The statistics as a flat dict.

        :param str prefix: prepended to every key (e.g. ``"backward_"``).
        :return: ``{prefix+"iterations", prefix+"residual", prefix+"converged", prefix+"diverged"}``.
        """
        return {
            f"{prefix}iterations": self.iterations,
            f"{prefix}residual": self.residual,
            f"{prefix}converged": self.converged,
            f"{prefix}diverged": self.diverged,
        }


@dataclass
class BackwardConfig:
    r"""How :func:`equilibrium` differentiates through its fixed point.

    :param str mode: ``"implicit"`` solves the adjoint fixed point :math:`g = J_f(z^\star)^\top g + v`
        (exact gradient); ``"jfb"`` (Jacobian-free backpropagation) uses :math:`g = v`, i.e. the
        gradient of the last step only.
    :param int max_iter: iteration cap of the adjoint solve.
    :param float tol: relative-residual tolerance of the adjoint solve (its own, not the forward's).
    :param int anderson: Anderson history size of the adjoint solve (0: plain iteration).
    """

    mode: str = "implicit"
    max_iter: int = 100
    tol: float = 1e-6
    anderson: int = 0

    def __post_init__(self):
        if self.mode not in ("implicit", "jfb"):
            raise ValueError(f"backward mode must be 'implicit' or 'jfb', got {self.mode!r}")
        if int(self.max_iter) < 1:
            raise ValueError(f"backward max_iter must be >= 1, got {self.max_iter}")
        if not self.tol >= 0:
            raise ValueError(f"backward tol must be >= 0, got {self.tol}")
        if int(self.anderson) < 0:
            raise ValueError(f"backward anderson must be >= 0, got {self.anderson}")


class EquilibriumStats:
    r"""Statistics of one deep-equilibrium call: the forward solve, and the backward (adjoint) solve
    once a backward pass has run through the layer.

    :param SolverStats forward: statistics of the forward fixed-point solve.
    :param SolverStats backward: statistics of the adjoint solve (``None`` until a backward pass ran, and
        for the Jacobian-free mode, where there is no solve).
    """

    def __init__(self, forward: SolverStats, backward: SolverStats | None = None):
        self.forward = forward
        self.backward = backward

    def as_dict(self) -> dict:
        r"""Flat dict: ``iterations``, ``residual``, ``converged``, ``diverged`` of the forward, and
        ``backward_iterations``, ``backward_residual``, ``backward_converged``, ``backward_diverged``
        once a backward solve has run."""
        d = self.forward.as_dict()
        if self.backward is not None:
            d.update(self.backward.as_dict("backward_"))
        return d

    def __repr__(self) -> str:
        return f"EquilibriumStats({self.as_dict()})"


def _flat(t: Tensor) -> Tensor:
    r"""Per-batch-item real vectors ``(B, N)`` (complex tensors as their real views)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    if t.ndim == 0:
        return t.reshape(1, 1)
    return t.reshape(t.shape[0], -1)


def _batch_norm(t: Tensor) -> Tensor:
    return _flat(t).norm(dim=1)


def _mask_like(mask: Tensor, t: Tensor) -> Tensor:
    r"""Broadcast a per-item boolean ``(B,)`` mask to the shape of ``t``."""
    if t.ndim == 0:
        return mask.reshape(())
    return mask.reshape((-1,) + (1,) * (t.ndim - 1))


def _anderson_mix(X: Tensor, F: Tensor, n: int, beta: float, ridge: float) -> Tensor | None:
    r"""One Anderson step from the ``n`` stored pairs ``(x_i, f(x_i))`` (rows of ``X``, ``F``, each
    ``(B, m, N)``): coefficients :math:`c` minimise :math:`\|\sum_i c_i (f(x_i) - x_i)\|^2
    + \rho\,\|c\|^2` subject to :math:`\sum_i c_i = 1`, with :math:`\rho` = ``ridge`` times the mean
    diagonal of the Gram matrix (scale-invariant); returns :math:`\beta \sum c_i f(x_i) + (1 - \beta)
    \sum c_i x_i`, or ``None`` when the small system is singular or non-finite."""
    G = (F[:, :n] - X[:, :n]).double()
    gram = G @ G.transpose(1, 2)  # (B, n, n)
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(_EPS)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram = gram + ridge * scale[:, None, None] * eye
    ones = torch.ones(G.shape[0], n, 1, dtype=gram.dtype, device=gram.device)
    try:
        w = torch.linalg.solve(gram, ones)  # (B, n, 1)
    except RuntimeError:
        return None
    c = w / w.sum(dim=1, keepdim=True)
    if not torch.isfinite(c).all():
        return None
    c = c.transpose(1, 2).to(F.dtype)  # (B, 1, n)
    mixed = beta * (c @ F[:, :n])
    if beta != 1.0:
        mixed = mixed + (1.0 - beta) * (c @ X[:, :n])
    return mixed[:, 0]


def fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    anderson: int = 0,
    beta: float = 1.0,
    ridge: float = 1e-4,
    divergence_factor: float = 1e4,
    stop_on_divergence: bool = True,
    residual: Callable[[Tensor, Tensor], Tensor] | None = None,
    stall_patience: int | None = None,
) -> tuple[Tensor, SolverStats]:
    r"""Solve :math:`z = f(z)` from ``z0`` by plain or Anderson-accelerated iteration.

    Convergence is measured per batch item (dimension 0) by the relative residual

    .. math::

        r_k = \frac{\|f(z_k) - z_k\|}{\|f(z_k)\| + 10^{-12}},

    and the solve stops when every item has :math:`r_k \le` ``tol`` or after ``max_iter`` evaluations
    of ``f``. For each item the returned value is :math:`f(z_k)` at the first iteration where that item
    met the tolerance (or at its smallest absolute residual if it never did), so items of a batch do not
    influence each other's result.

    *Own residual* (``residual`` given): ``residual(z_k, f(z_k))`` returns the per-item absolute residual
    ``(B,)`` of :math:`z_k` itself for an equation whose solutions are the fixed points (MOL reads it
    off its data-consistency solve at no cost); then :math:`r_k` is that value over
    :math:`\|z_k\| + 10^{-12}` and the returned value is :math:`z_k`, the point the residual certifies.

    *Anderson acceleration* (``anderson=m > 0``) combines the last ``m`` iterates:
    :math:`z_{k+1} = \beta \sum_i c_i f(z_i) + (1-\beta) \sum_i c_i z_i` with coefficients of the
    ridge-regularised least-squares problem :math:`\min_{\sum c_i = 1} \|\sum_i c_i (f(z_i) - z_i)\|^2`.
    *Safeguard*: when an unfinished item has not improved its smallest absolute residual for
    ``stall_patience`` iterations (default ``2 m``), the history is cleared, the next iterate is the plain
    step :math:`f(z_{best})` from each item's best point, and the next ``m`` steps are plain iterations
    (``stats.restarts`` counts these restarts). A stalled Anderson then costs at most ``stall_patience``
    iterations before it falls back to the plain iteration from the best point seen.

    *Divergence*: the relative residual alone cannot see a linear expansion (for :math:`f(z) = 2z` it
    stays at 1/2), so the solve also watches the absolute residual :math:`\|f(z_k) - z_k\|`: if it is
    non-finite, or exceeds ``divergence_factor`` times the smallest value seen (while the tolerance is
    not met), the solve stops (when ``stop_on_divergence``; non-finite values always stop it), sets
    ``stats.diverged`` and returns the best iterate seen rather than the last one.

    The solve records no autograd graph of its own bookkeeping; run it under :func:`torch.no_grad`
    (as :func:`equilibrium` does) so that memory does not depend on the number of iterations.

    :param Callable f: the map, tensor to tensor of the same shape (any shape; dimension 0 is the batch).
    :param torch.Tensor z0: starting point (a non-empty batch).
    :param int max_iter: maximum number of evaluations of ``f``.
    :param float tol: relative-residual tolerance.
    :param int anderson: Anderson history size ``m`` (0: plain iteration).
    :param float beta: Anderson mixing parameter in (0, 1] (1: undamped).
    :param float ridge: relative Tikhonov regularisation of Anderson's least-squares problem.
    :param float divergence_factor: growth of the absolute residual over its minimum that counts as
        divergence.
    :param bool stop_on_divergence: stop the solve when divergence is detected.
    :param Callable residual: optional ``(z, f(z)) -> (B,)`` absolute residual of ``z`` (see above).
    :param int stall_patience: iterations without improvement before an Anderson restart (default ``2 m``).
    :return: ``(z, stats)``: the solution estimate (same shape as ``z0``) and a :class:`SolverStats`.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.equilibrium import fixed_point
    >>> z, stats = fixed_point(lambda z: 0.5 * z + 1.0, torch.zeros(2, 3), tol=1e-6, anderson=3)
    >>> bool(torch.allclose(z, torch.full((2, 3), 2.0))), stats.converged
    (True, True)
    """
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a torch.Tensor, got {type(z0).__name__}")
    if z0.ndim > 0 and z0.shape[0] == 0:
        raise ValueError(f"z0 is an empty batch (shape {tuple(z0.shape)}): nothing to solve")
    for name, value in (("max_iter", max_iter), ("anderson", anderson)):
        if isinstance(value, bool) or int(value) != value:
            raise TypeError(f"{name} must be an integer, got {value!r}")
    max_iter = int(max_iter)
    anderson = int(anderson)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if anderson < 0:
        raise ValueError(f"anderson must be >= 0 (history size), got {anderson}")
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    if not divergence_factor > 1.0:
        raise ValueError(f"divergence_factor must be > 1, got {divergence_factor}")
    patience = 2 * anderson if stall_patience is None else int(stall_patience)
    if anderson > 0 and patience < 1:
        raise ValueError(f"stall_patience must be >= 1, got {stall_patience}")

    z = z0
    batch = 1 if z0.ndim == 0 else z0.shape[0]
    device = z0.device
    best = z0.clone()  # per item: the returned value at the best (or first converged) iteration
    best_f = z0.clone()  # per item: f at the best iterate (the plain step a restart takes)
    best_rel = torch.full((batch,), math.inf, device=device)
    best_abs = torch.full((batch,), math.inf, device=device)
    min_abs = torch.full((batch,), math.inf, device=device)
    stalled = torch.zeros(batch, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    history: list[float] = []
    diverged = False
    restarts = 0
    X = F = None
    n_hist = 0  # pairs stored since the last (re)start
    plain_left = 0  # plain steps still to take after a restart
    it = 0
    for it in range(1, max_iter + 1):
        fz = f(z)
        if not isinstance(fz, Tensor) or fz.shape != z.shape:
            got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
            raise ValueError(f"the map must preserve the shape: got {got} from {tuple(z.shape)}")
        if residual is None:
            abs_res = _batch_norm(fz - z)
            rel_res = abs_res / (_batch_norm(fz) + _EPS)
            value = fz
        else:
            abs_res = residual(z, fz).reshape(-1).to(device=device, dtype=best_abs.dtype)
            rel_res = abs_res / (_batch_norm(z).to(best_abs.dtype) + _EPS)
            value = z
        finite = torch.isfinite(rel_res) & torch.isfinite(abs_res)
        rel_res = torch.where(finite, rel_res, torch.full_like(rel_res, math.inf))
        history.append(float(rel_res.max()))

        # best = smallest absolute residual (the relative one keeps falling on a linear blow-up)
        improve = (~done) & finite & ((abs_res < best_abs) | (rel_res <= tol))
        best_abs = torch.where(improve, abs_res, best_abs)
        if improve.any():
            best = torch.where(_mask_like(improve, best), value, best)
            best_f = torch.where(_mask_like(improve, best_f), fz, best_f)
        best_rel = torch.where(improve, rel_res, best_rel)
        stalled = torch.where(improve, torch.zeros_like(stalled), stalled + 1)
        done = done | (rel_res <= tol)
        if bool(done.all()):
            break

        grown = abs_res > divergence_factor * min_abs
        min_abs = torch.minimum(min_abs, torch.where(finite, abs_res, min_abs))
        if not bool(finite.all()) or (stop_on_divergence and bool((grown & ~done).any())):
            diverged = True
            break

        if anderson > 0:
            m = anderson
            if bool(((stalled >= patience) & ~done).any()):
                # safeguard: Anderson stalls; restart from the plain step at each item's best point
                restarts += 1
                n_hist, plain_left = 0, m
                stalled = torch.zeros_like(stalled)
                z = best_f
                continue
            if X is None:
                X = torch.zeros((batch, m) + tuple(_flat(z).shape[1:]), dtype=_flat(z).dtype, device=device)
                F = torch.zeros_like(X)
            slot = n_hist % m
            X[:, slot] = _flat(z)
            F[:, slot] = _flat(fz)
            n_hist += 1
            n = min(n_hist, m)
            mixed = None
            if plain_left > 0:
                plain_left -= 1
            elif n > 1:
                mixed = _anderson_mix(X, F, n, beta, ridge)
            if mixed is None:
                z = fz
            elif z.is_complex():
                z = torch.view_as_complex(mixed.reshape(z.shape + (2,)).contiguous())
            else:
                z = mixed.reshape(z.shape)
        else:
            z = fz

    residual_ = float(best_rel.max())
    converged = bool(done.all()) and math.isfinite(residual_) and not diverged
    return best, SolverStats(
        iterations=it, residual=residual_, converged=converged, diverged=diverged, history=history,
        restarts=restarts,
    )


def _warn_unconverged(stats: SolverStats, tol: float, max_iter: int, what: str) -> None:
    reason = "diverged" if stats.diverged else "did not converge"
    warnings.warn(
        f"{what} {reason}: relative residual {stats.residual:.3g} > tol {tol:.3g} after "
        f"{stats.iterations} iterations (cap max_iter={max_iter}).",
        RuntimeWarning,
        stacklevel=3,
    )


def equilibrium(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-4,
    anderson: int = 0,
    beta: float = 1.0,
    backward: BackwardConfig | str = "implicit",
    warn: bool = True,
    ridge: float = 1e-4,
    divergence_factor: float = 1e4,
    name: str = "fixed-point solve",
    residual: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, EquilibriumStats]:
    r"""Deep-equilibrium layer: the fixed point of ``f`` with an implicit (or Jacobian-free) gradient.

    *Forward*: :func:`fixed_point` from ``z0`` under :func:`torch.no_grad`, so no activation of the
    iterations is kept; the returned value is the solver's :math:`z^\star` itself (no further
    evaluation of ``f`` when gradients are off). When gradients are on, one differentiable step
    :math:`f(z^\star)` with :math:`z^\star` detached is evaluated — the only graph kept, whatever the
    number of iterations — and the output is :math:`z^\star + (f(z^\star) - \mathrm{sg}[f(z^\star)])`:
    the value :math:`z^\star` (the point the statistics describe) with the gradient of that step.

    *Backward*, when gradients are enabled and ``z`` requires grad:

    * ``"implicit"``: a hook on ``z`` replaces the incoming gradient :math:`v` by the solution of the
      adjoint fixed point :math:`g = J_f(z^\star)^\top g + v` (vector-Jacobian products through the
      same differentiable step, with the tolerance, cap and Anderson history of ``backward``), so the
      parameters receive :math:`(I - J_f)^{-\top} v` propagated through :math:`\partial f/\partial\theta`:
      the exact gradient of the fixed point. If the adjoint solve diverges, the hook falls back to the
      Jacobian-free gradient :math:`v` and warns. Statistics go to ``stats.backward``.
    * ``"jfb"``: :math:`v` passes unchanged (gradient of the last step only; cheaper, a descent
      direction for contractive ``f``).

    Non-convergence of either solve emits a :class:`RuntimeWarning` naming the residual and the cap
    (when ``warn``); the statistics always record it.

    :param Callable f: the map :math:`z \mapsto f(z)`, closing over parameters and inputs that may
        require grad.
    :param torch.Tensor z0: starting point (detached before use).
    :param int max_iter: iteration cap of the forward solve.
    :param float tol: relative-residual tolerance of the forward solve.
    :param int anderson: Anderson history size of the forward solve (0: plain iteration).
    :param float beta: Anderson mixing parameter of the forward solve.
    :param BackwardConfig, str backward: a :class:`BackwardConfig`, or its mode ``"implicit"``/``"jfb"``.
    :param bool warn: emit warnings on non-convergence.
    :param float ridge: Anderson's relative regularisation (both solves).
    :param float divergence_factor: see :func:`fixed_point`.
    :param str name: how warnings name this solve.
    :param Callable residual: the forward solve's own residual (see :func:`fixed_point`).
    :return: ``(z, stats)``: the equilibrium (differentiable as described) and an
        :class:`EquilibriumStats` whose ``backward`` is filled when the backward pass runs.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.equilibrium import equilibrium
    >>> w = torch.tensor(0.5, requires_grad=True)
    >>> z, stats = equilibrium(lambda z: w * z + 1.0, torch.zeros(1, 1), tol=1e-8, max_iter=200)
    >>> z.sum().backward()  # z* = 1 / (1 - w): dz*/dw = 1 / (1 - w)^2 = 4
    >>> round(float(w.grad), 4), stats.as_dict()["backward_converged"]
    (4.0, True)
    """
    if isinstance(backward, str):
        backward = BackwardConfig(mode=backward)
    elif not isinstance(backward, BackwardConfig):
        raise TypeError(f"backward must be a BackwardConfig or 'implicit'/'jfb', got {type(backward).__name__}")

    with torch.no_grad():
        z_star, fstats = fixed_point(
            f,
            z0.detach(),
            max_iter=max_iter,
            tol=tol,
            anderson=anderson,
            beta=beta,
            ridge=ridge,
            divergence_factor=divergence_factor,
            residual=residual,
        )
    stats = EquilibriumStats(forward=fstats)
    if warn and not fstats.converged:
        _warn_unconverged(fstats, tol, max_iter, name)

    z_star = z_star.detach()
    if not torch.is_grad_enabled():
        return z_star, stats

    implicit = backward.mode == "implicit"
    z_in = z_star.clone().requires_grad_(implicit)
    z_out = f(z_in)
    if implicit and z_out.requires_grad:
        # the hook sits on an alias of z_out: vector-Jacobian products through z_out inside the hook
        # then do not re-enter the hook (one evaluation of f serves the adjoint solve and the gradient)
        z = z_out.view_as(z_out)
        cfg = backward

        def _adjoint_hook(v: Tensor) -> Tensor:
            def vjp_step(g: Tensor) -> Tensor:
                (jtg,) = torch.autograd.grad(z_out, z_in, g, retain_graph=True, allow_unused=True)
                return v if jtg is None else jtg + v

            g, bstats = fixed_point(
                vjp_step,
                v,
                max_iter=cfg.max_iter,
                tol=cfg.tol,
                anderson=cfg.anderson,
                ridge=ridge,
                divergence_factor=divergence_factor,
            )
            stats.backward = bstats
            if warn and not bstats.converged:
                _warn_unconverged(bstats, cfg.tol, cfg.max_iter, f"adjoint (backward) {name}")
            if bstats.diverged:
                return v  # a diverged adjoint iterate is no gradient: fall back to Jacobian-free
            return g

        z.register_hook(_adjoint_hook)
        return z_star + (z - z.detach()), stats
    if z_out.requires_grad:
        return z_star + (z_out - z_out.detach()), stats
    return z_star, stats
