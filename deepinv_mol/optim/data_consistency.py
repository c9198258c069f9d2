r"""The one regularised least-squares solve of the package and the one starting image.

* :func:`regularised_solve` — :math:`x = (I + \gamma A^HA)^{-1} b` by conjugate gradient warm-started at a
  given image, stopped at a relative residual or an iteration cap, with statistics, and differentiable
  w.r.t. :math:`b` and :math:`\gamma` as the *exact* solve. MOL's data-consistency step, LUSER's
  ``data_consistency="cg"`` step and the CG baseline are this solve.
* :func:`start_image` — CG on :math:`(A^HA + \epsilon I)x = A^Hy` from zero: the starting image of MOL, of
  LUSER (``init="cg"``), of the MoDL baseline and the CG baseline.

Why a small CG of our own rather than :func:`deepinv.optim.linear.conjugate_gradient`: deepinv's (0.5)
returns the iterate only (no iteration count, no residual), so "converged" could not be reported, and its
step :math:`\alpha = r^Hr / (p^HMp + \epsilon)` with its default ``eps=1e-8`` is damped once the quadratic
forms are small, a false fixed point: with ``eps=1e-8`` its CG stalls at relative error 6.6e-4 even after
200 iterations. The CG below guards the division instead (a zero denominator means the item has converged)
and freezes every batch item once it meets the tolerance, so an item's result does not depend on the other
items of its batch.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from deepinv.physics import LinearPhysics

from ..equilibrium import SolverStats

__all__ = ["regularised_solve", "start_image"]


def _dims(t: Tensor) -> tuple[int, ...]:
    return tuple(range(1, t.ndim))


def _sq_norm(t: Tensor) -> Tensor:
    r"""Per-item squared norm ``(B,)`` (real, also for complex tensors)."""
    if t.ndim == 0:
        return (t.conj() * t).real.reshape(1)
    return (t.conj() * t).real.sum(dim=_dims(t))


def _inner(a: Tensor, b: Tensor) -> Tensor:
    r"""Per-item real part of :math:`\langle a, b\rangle` ``(B,)``."""
    if a.ndim == 0:
        return (a.conj() * b).real.reshape(1)
    return (a.conj() * b).real.sum(dim=_dims(a))


def _per_item(v: Tensor, t: Tensor) -> Tensor:
    r"""Reshape a per-item ``(B,)`` vector to broadcast against ``t``."""
    if t.ndim == 0:
        return v.reshape(())
    return v.reshape((-1,) + (1,) * (t.ndim - 1)).to(t.real.dtype if t.is_complex() else t.dtype)


def _cg(
    apply_m: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None,
    tol: float,
    max_iter: int,
    forcing: float = 0.0,
) -> tuple[Tensor, SolverStats]:
    r"""Conjugate gradient for :math:`Mx = b` (:math:`M` Hermitian positive semi-definite), per batch item.

    Stops an item when :math:`\|b - Mx\| \le \max(` ``tol`` :math:`\|b\|,` ``forcing``
    :math:`\|b - Mx_0\|)` (:math:`\|b\|` read as 1 when :math:`b = 0`),
    all items when all have stopped or after ``max_iter`` applications of :math:`M` (plus one for the
    residual of a warm start). The residual is the CG recursion's; the statistics report its maximum
    relative value over the batch.
    """
    if x0 is None:
        x = torch.zeros_like(b)
        r = b.clone()
    else:
        x = x0.clone()
        r = b - apply_m(x)
    b_norm = _sq_norm(b).sqrt()
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    rr = _sq_norm(r)
    initial = rr.sqrt().tolist()
    rel = rr.sqrt() / b_norm
    thr = torch.clamp_min(forcing * rel, tol)
    done = rel <= thr
    p = r
    it = 0
    history = [float(rel.max())] if rel.numel() else [0.0]
    while it < max_iter and not bool(done.all()):
        it += 1
        mp = apply_m(p)
        pmp = _inner(p, mp)
        ok = (~done) & (pmp > 0) & torch.isfinite(pmp)
        step = torch.where(ok, rr / torch.where(ok, pmp, torch.ones_like(pmp)), torch.zeros_like(rr))
        x = x + _per_item(step, x) * p
        r = r - _per_item(step, r) * mp
        rr_new = _sq_norm(r)
        rel = torch.where(ok, rr_new.sqrt() / b_norm, rel)
        # an item whose curvature vanished (p = 0: r = 0) has converged; a non-finite one stops
        done = done | (rel <= thr) | ~ok
        ratio = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = r + _per_item(ratio, p) * p
        rr = torch.where(ok, rr_new, rr)
        history.append(float(rel.max()))
    residual = float(rel.max()) if rel.numel() else 0.0
    converged = math.isfinite(residual) and bool((rel <= thr).all())
    return x, SolverStats(
        iterations=it, residual=residual, converged=converged, history=history, initial_residuals=initial
    )


def _check(physics: LinearPhysics, rhs: Tensor, tol: float, max_iter: int) -> None:
    if not isinstance(rhs, Tensor):
        raise TypeError(f"rhs must be a torch.Tensor image, got {type(rhs).__name__}")
    if not callable(getattr(physics, "A_adjoint_A", None)):
        raise TypeError(
            f"the physics must be linear with an A_adjoint_A method (a deepinv LinearPhysics), got {type(physics).__name__}"
        )
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")


class _ExactSolve(torch.autograd.Function):
    r""":math:`x = M^{-1} b`, :math:`M = I + \gamma A^HA`; forward by warm-started CG, backward as the exact
    solve: :math:`\partial x/\partial b = M^{-1}`, :math:`\partial x/\partial\gamma = -M^{-1}A^HAx`.

    Why not autograd through the CG iterations: a few CG iterations warm-started near the solution are a
    non-linear function of the residual there (step lengths are ratios of quadratic forms of a vanishing
    residual), whose autograd Jacobian is not that of the solve."""

    @staticmethod
    def forward(ctx, rhs, gamma, init, normal, tol, max_iter, back_tol, back_iter, out, forcing):
        with torch.no_grad():
            x, stats = _cg(lambda u: u + gamma * normal(u), rhs, init, tol, max_iter, forcing)
        out.append(stats)
        ctx.normal, ctx.back_tol, ctx.back_iter = normal, back_tol, back_iter
        ctx.save_for_backward(x, gamma)
        return x

    @staticmethod
    def backward(ctx, v):
        x, gamma = ctx.saved_tensors
        with torch.no_grad():
            # an implicit backward calls this backward once per adjoint iteration on slowly changing v: warm
            # start at the previous solution (same tolerance on ||v - Mw||, so the same accuracy, fewer steps)
            prev = getattr(ctx, "last_w", None)
            prev = prev if prev is not None and prev.shape == v.shape and prev.dtype == v.dtype else None
            w, _ = _cg(lambda u: u + gamma * ctx.normal(u), v, prev, ctx.back_tol, ctx.back_iter)
            ctx.last_w = w
            grad_gamma = None
            if ctx.needs_input_grad[1]:
                prod = -(w.conj() * ctx.normal(x)).real
                grad_gamma = prod.sum() if gamma.ndim == 0 else prod.sum_to_size(gamma.shape)
                grad_gamma = grad_gamma.to(gamma.dtype).reshape(gamma.shape)
        return w, grad_gamma, None, None, None, None, None, None, None, None


def regularised_solve(
    physics: LinearPhysics,
    rhs: Tensor,
    gamma: Tensor | float,
    init: Tensor | None = None,
    *,
    tol: float = 1e-6,
    max_iter: int = 100,
    backward_tol: float | None = None,
    backward_max_iter: int | None = None,
    forcing: float = 0.0,
) -> tuple[Tensor, SolverStats]:
    r"""Solve :math:`(I + \gamma A^HA)\,x = b` by conjugate gradient.

    CG starts at ``init`` (zero if ``None``; at the solution it stops after 0 iterations) and stops each
    batch item at relative residual :math:`\|b - Mx\| / \|b\| \le` ``tol``, all of them after ``max_iter``
    applications of ``physics.A_adjoint_A``. The result is differentiable w.r.t. ``rhs`` and ``gamma``
    with the gradient of the *exact* solve, :math:`\partial x/\partial b = M^{-1}` and
    :math:`\partial x/\partial\gamma = -M^{-1}A^HAx` (the backward runs its own CG from zero to
    ``backward_tol``, cap ``backward_max_iter``; defaults: the forward's). ``init`` and the physics are
    not differentiated.

    :param deepinv.physics.LinearPhysics physics: the operator :math:`A` (``A_adjoint_A`` is used).
    :param torch.Tensor rhs: the right-hand side :math:`b` (an image, batch first).
    :param torch.Tensor, float gamma: the weight :math:`\gamma \ge 0` (a scalar, or a tensor that broadcasts
        against ``rhs``, e.g. one value per batch item of shape ``(B, 1, 1, 1)``).
    :param torch.Tensor init: warm start (shape of ``rhs``), or ``None`` for zero.
    :param float tol: relative-residual tolerance.
    :param int max_iter: iteration cap (0 returns ``init``, or zero).
    :param float backward_tol: tolerance of the backward solve (default ``tol``).
    :param int backward_max_iter: cap of the backward solve (default ``max_iter``).
    :param float forcing: also stop an item once its residual is ``forcing`` times its initial residual
        :math:`\|b - M\,\mathrm{init}\|` (an inexact-Newton forcing term for warm-started solves inside an
        outer iteration; 0: ``tol`` only).
    :return: ``(x, stats)`` with a :class:`deepinv_mol.equilibrium.SolverStats` (``iterations``: CG
        iterations, ``residual``: maximum relative residual over the batch, ``converged``,
        ``initial_residuals``: per item :math:`\|b - M\,\mathrm{init}\|`).

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim.data_consistency import regularised_solve
    >>> physics = dinv.physics.Inpainting(img_size=(1, 4, 4), mask=0.5)
    >>> b = torch.ones(1, 1, 4, 4)
    >>> x, stats = regularised_solve(physics, b, 1.0, tol=1e-10)
    >>> bool(torch.allclose(x + physics.A_adjoint_A(x), b)), stats.converged
    (True, True)
    """
    _check(physics, rhs, tol, max_iter)
    if init is not None:
        if not isinstance(init, Tensor) or init.shape != rhs.shape:
            shape = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
            raise ValueError(f"init must be a tensor of the shape {tuple(rhs.shape)} of rhs, got {shape}")
        init = init.detach()
    real = rhs.real.dtype if rhs.is_complex() else rhs.dtype
    if not isinstance(gamma, Tensor):
        gamma = torch.tensor(float(gamma), dtype=real, device=rhs.device)
    if not bool(torch.isfinite(gamma).all()) or bool((gamma < 0).any()):
        raise ValueError(f"gamma must be finite and >= 0, got {gamma.detach().cpu().tolist()}")
    backward_tol = tol if backward_tol is None else backward_tol
    backward_max_iter = max_iter if backward_max_iter is None else backward_max_iter
    _check(physics, rhs, backward_tol, backward_max_iter)
    if not (isinstance(forcing, (int, float)) and not isinstance(forcing, bool) and 0 <= forcing < 1):
        raise ValueError(f"forcing must be a number in [0, 1), got {forcing!r}")
    g = gamma.to(real)
    normal = physics.A_adjoint_A
    if not (torch.is_grad_enabled() and (rhs.requires_grad or g.requires_grad)):
        with torch.no_grad():
            return _cg(lambda u: u + g * normal(u), rhs, init, float(tol), int(max_iter), float(forcing))
    out: list[SolverStats] = []
    x = _ExactSolve.apply(
        rhs, g, init, normal, float(tol), int(max_iter), float(backward_tol), int(backward_max_iter), out,
        float(forcing),
    )
    return x, out[0]


@torch.no_grad()
def start_image(
    y: Tensor, physics: LinearPhysics, eps: float = 1e-2, max_iter: int = 20, tol: float = 1e-6, aty: Tensor | None = None
) -> Tensor:
    r"""The starting image: ``max_iter`` CG iterations on :math:`(A^HA + \epsilon I)x = A^Hy` from zero
    (stopped earlier at relative residual ``tol``), or :math:`A^Hy` itself when ``max_iter == 0``. Not
    differentiated (a fixed, data-only start).

    Used by MOL, LUSER (``init="cg"``), the MoDL baseline and the CG baseline. Why not :math:`A^Hy`: its scale
    is that of :math:`A^HA` (about 40-100x the image for the radial NUFFT of ``mri-radial-4x``, units of
    summed line integrals for unnormalised CT), so a network fed with it sees an image off by that factor.

    :param torch.Tensor y: measurements.
    :param deepinv.physics.LinearPhysics physics: the operator :math:`A`.
    :param float eps: Tikhonov weight :math:`\epsilon \ge 0` (absolute).
    :param int max_iter: CG iterations.
    :param float tol: relative-residual tolerance of CG.
    :param torch.Tensor aty: :math:`A^Hy` if the caller already computed it (saves one adjoint).
    :return: the starting image, shaped like :math:`A^Hy`.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim.data_consistency import start_image
    >>> physics = dinv.physics.Inpainting(img_size=(1, 4, 4), mask=0.5)
    >>> y = physics(torch.ones(1, 1, 4, 4))
    >>> x0 = start_image(y, physics, eps=1e-6)
    >>> bool(torch.allclose(physics.A(x0), y, atol=1e-5))
    True
    """
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of measurements, got {type(y).__name__}")
    if not callable(getattr(physics, "A_adjoint", None)):
        raise TypeError(f"the physics must be linear with an A_adjoint method, got {type(physics).__name__}")
    if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if aty is None:
        aty = physics.A_adjoint(y)
    _check(physics, aty, tol, max_iter)
    if int(max_iter) == 0:
        return aty
    x, _ = _cg(lambda u: physics.A_adjoint_A(u) + eps * u, aty, None, float(tol), int(max_iter))
    return x
