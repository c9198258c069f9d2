r"""MOL's theory made checkable: Lipschitz estimates, certificates and worst-case perturbations.

Notation: :math:`H` the network, :math:`F = I - H` the score, :math:`A` the forward operator,
:math:`b` the measurements, :math:`\alpha` the score step and :math:`\lambda` the data weight of MOL,
whose fixed point solves

.. math::

    F(x) + \lambda A^H (A x - b) = 0. \qquad (\star)

The facts certified by :func:`certify` (derived here, not taken on trust):

1. **Monotonicity.** If :math:`\mathrm{Lip}(H) \le L < 1` then, by Cauchy–Schwarz,
   :math:`\langle F(a) - F(b), a - b\rangle \ge \|a-b\|^2 - L\|a-b\|^2 = m\|a-b\|^2` with :math:`m = 1 - L`.
2. **The fixed point does not depend on** :math:`\alpha`: MOL's step
   :math:`x^+ = (I + \alpha\lambda A^HA)^{-1}(x - \alpha F(x) + \alpha\lambda A^H b)` has :math:`x^+ = x`
   iff :math:`\alpha F(x) + \alpha\lambda A^H(Ax - b) = 0`, i.e. :math:`(\star)`. :math:`F + \lambda A^HA` is
   :math:`m`-strongly monotone and continuous, so :math:`(\star)` has exactly one solution.
3. **Contraction.** The score step :math:`z(x) = (1-\alpha)x + \alpha H(x)` has
   :math:`\mathrm{Lip}(z) \le |1 - \alpha| + \alpha L`, which is :math:`1 - \alpha m` for
   :math:`\alpha \in (0, 1]` (a convex combination). The data-consistency map
   :math:`z \mapsto (I + \alpha\lambda A^HA)^{-1}(z + \alpha\lambda A^Hb)` has Lipschitz constant
   :math:`\|(I + \alpha\lambda A^HA)^{-1}\| \le 1`. So the step contracts with factor :math:`1 - \alpha m`.
4. **Robustness.** Subtract :math:`(\star)` for :math:`b_1, b_2`, with :math:`\delta x = x_1 - x_2`,
   :math:`\delta b = b_1 - b_2`, and take the inner product with :math:`\delta x`:
   :math:`m\|\delta x\|^2 + \lambda\|A\delta x\|^2 \le \lambda\langle A\delta x, \delta b\rangle`
   :math:`\le \lambda\|A\delta x\|\|\delta b\|`.
   Dropping :math:`\lambda\|A\delta x\|^2` and using :math:`\|A\delta x\| \le \|A\|\|\delta x\|` gives
   :math:`\|\delta x\| \le \lambda\|A\|\|\delta b\|/m`; keeping it and using :math:`t c - t^2 \le c^2/4` gives
   :math:`m\|\delta x\|^2 \le \lambda\|\delta b\|^2/4`. Hence

   .. math::

       \|x^\star(b_1) - x^\star(b_2)\| \le \min\left(\frac{\lambda\|A\|}{m}, \sqrt{\frac{\lambda}{4m}}\right)\|b_1 - b_2\|.

5. **Distance of a stopped iteration to the fixed point.** For any :math:`x`, let
   :math:`r(x) = F(x) + \lambda A^H(Ax - b)` (the residual of :math:`(\star)`; :math:`r(x^\star) = 0`).
   :math:`G = F + \lambda A^HA` is :math:`m`-strongly monotone, so
   :math:`m\|x - x^\star\|^2 \le \langle G(x) - G(x^\star), x - x^\star\rangle = \langle r(x), x - x^\star\rangle
   \le \|r(x)\|\,\|x - x^\star\|`, i.e.

   .. math::

       \|x - x^\star\| \le \|F(x) + \lambda A^H(Ax - b)\| / m,

   whatever algorithm produced :math:`x` and however inexactly its data-consistency step was solved. MOL
   reports :math:`\max_i \|r(x_i)\|/\|x_i\|` as ``stats["equation_residual"]``, so
   :math:`\|x - x^\star\| \le` ``equation_residual`` :math:`\cdot \|x\|/m`. The stopping tolerance of the
   iteration (a bound on the last *increment*) is not such a bound: it can be far smaller than the distance
   (see ``docs/theory.rst``).
6. **What a scale-equivariant model computes.** With ``scale_equivariant=True`` the model returns
   :math:`x(y) = s(y)\,G(y/s(y))`, :math:`G` the fixed-point map above (facts 1-5 hold for :math:`G`) and
   :math:`s` the intensity scale of :func:`deepinv_mol.optim.scaling.measurement_scale`, Lipschitz with constant
   :math:`L_s` (:func:`deepinv_mol.optim.scaling.scale_lipschitz`). For any :math:`y_1` and :math:`y = y_2`,
   :math:`s_i = s(y_i)`:
   :math:`x_1 - x_2 = s_1[G(y_1/s_1) - G(y_2/s_2)] + (s_1 - s_2)G(y_2/s_2)` and
   :math:`y_1/s_1 - y_2/s_2 = (y_1 - y_2)/s_1 + y_2(s_2 - s_1)/(s_1s_2)`, so with :math:`R = \mathrm{Lip}(G)`
   (fact 4) the factor :math:`s_1` cancels and

   .. math::

       \|x(y + \delta) - x(y)\| \le \Big(R + L_s\,\frac{R\|y\| + \|x(y)\|}{s(y)}\Big)\|\delta\|

   for every perturbation :math:`\delta` (any size), with quantities known at :math:`y`
   (:func:`model_robustness_bound`). :math:`\|y\|/s(y)` and :math:`\|x(y)\|/s(y)` do not change with the intensity
   of :math:`y`: the bound is as scale-free as the model.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

if TYPE_CHECKING:
    from deepinv.physics import LinearPhysics, Physics

__all__ = [
    "LipschitzEstimate",
    "estimate_lipschitz",
    "GuaranteeReport",
    "certify",
    "equation_residual",
    "WorstCasePerturbation",
    "worst_case_perturbation",
    "model_robustness_bound",
]


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def _unit(t: torch.Tensor) -> torch.Tensor:
    return t / _per_sample_norm(t).clamp_min(1e-30).reshape(-1, *([1] * (t.ndim - 1)))


@dataclass
class LipschitzEstimate:
    r"""Result of :func:`estimate_lipschitz`.

    :param float value: largest estimate over the batch.
    :param torch.Tensor per_sample: estimate for each sample ``(B,)`` (differentiable w.r.t. the
        network's parameters when ``differentiable=True``).
    :param int iterations: iterations run.
    :param bool converged: relative change of every per-sample estimate fell below ``tol``.
    :param str method: ``"power"`` or ``"adversarial"``.
    """

    value: float
    per_sample: torch.Tensor
    iterations: int
    converged: bool
    method: str

    def __float__(self) -> float:
        return float(self.value)


def estimate_lipschitz(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_iter: int = 50,
    tol: float = 1e-4,
    method: str = "power",
    generator: torch.Generator | None = None,
    differentiable: bool = False,
    radius: float = 1e-2,
    warn: bool = True,
) -> LipschitzEstimate:
    r"""Local Lipschitz estimate of ``network`` at ``x`` (per sample), a lower bound of :math:`\mathrm{Lip}`.

    ``method="power"``: power iteration on :math:`J^\top J`, :math:`J = \partial H/\partial x(x)`,
    :math:`u \leftarrow J^\top J u/\|J^\top J u\|`, estimate :math:`\|J u\|` (non-decreasing, converges to
    :math:`\|J\|_2`). One forward builds the graph; :math:`J^\top v` is a vector-Jacobian product and
    :math:`J u` is obtained from it by the double-backward trick (:math:`J u = \partial_w \langle J^\top w, u\rangle`).
    Stops when every per-sample estimate changes by less than ``tol`` (relative).

    ``method="adversarial"`` (the MOL authors' estimate): the secant ratio
    :math:`\|H(x + \delta) - H(x)\|/\|\delta\|` maximised by normalised gradient ascent over
    :math:`\delta` on the sphere :math:`\|\delta\| = \text{radius}\cdot\|x\|` (per sample).

    Both are lower bounds of :math:`\mathrm{Lip}(H)` (a Jacobian norm where :math:`H` is differentiable,
    a secant slope), so a certified bound must lie above them.

    With ``differentiable=True`` the iterations run without a graph and only the final
    :math:`\|J u^\star\|` (or ratio at :math:`\delta^\star`) is recomputed with one: at a converged :math:`u^\star`
    its gradient is the gradient of :math:`\|J\|_2` (envelope theorem), at the memory cost of one step
    instead of all of them.

    The batch is assumed independent (no batch normalisation): the Jacobian is block diagonal and each
    sample gets its own estimate.

    :param torch.nn.Module network: the map :math:`H` (called as ``network(x)``).
    :param torch.Tensor x: point ``(B, ...)``.
    :param int n_iter: maximum iterations.
    :param float tol: relative tolerance of the early stop.
    :param str method: ``"power"`` or ``"adversarial"``.
    :param torch.Generator generator: generator of the random start (on ``x``'s device).
    :param bool differentiable: keep a graph to the network's parameters for the result.
    :param float radius: relative perturbation size of the adversarial method.
    :param bool warn: warn when ``n_iter`` is reached before ``tol``.
    :return: :class:`LipschitzEstimate`.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.guarantees import estimate_lipschitz
    >>> lin = torch.nn.Linear(3, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.diag(torch.tensor([3.0, 1.0, 0.5])))
    >>> round(estimate_lipschitz(lin, torch.randn(2, 3), n_iter=200, tol=1e-8).value, 4)
    3.0
    """
    if method not in ("power", "adversarial"):
        raise ValueError(f"method must be 'power' or 'adversarial', got {method!r}")
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise ValueError("x must be a batched tensor (B, ...)")
    if n_iter < 1 or tol <= 0:
        raise ValueError(f"n_iter must be >= 1 and tol > 0, got n_iter={n_iter}, tol={tol}")
    x = x.detach()
    u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    # without a graph to the parameters, autograd skips their (double-)backward terms: several times faster
    frozen = [] if differentiable or not isinstance(network, torch.nn.Module) else [
        p for p in network.parameters() if p.requires_grad
    ]
    try:
        for p in frozen:
            p.requires_grad_(False)
        if method == "power":
            est, it, converged = _power_jacobian(network, x, _unit(u), n_iter, tol, differentiable)
        else:
            est, it, converged = _adversarial(network, x, u, n_iter, tol, differentiable, radius)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if warn and not converged:
        warnings.warn(f"estimate_lipschitz({method}): not converged to tol={tol} in {n_iter} iterations")
    return LipschitzEstimate(float(est.detach().max()), est, it, converged, method)


def _power_jacobian(network, x, u, n_iter, tol, differentiable):
    xg = x.clone().requires_grad_(True)
    with torch.enable_grad():
        y = network(xg)
        w = torch.zeros_like(y, requires_grad=True)
        (jt_w,) = torch.autograd.grad(y, xg, w, create_graph=True)  # J^T w, linear in w
    prev, converged, it = None, False, 0
    for it in range(1, n_iter + 1):
        ju = torch.autograd.grad(jt_w, w, u, retain_graph=True)[0]
        est = _per_sample_norm(ju)
        if prev is not None and bool(((est - prev).abs() <= tol * est.clamp_min(1e-30)).all()):
            converged = True
            break
        prev = est
        u = _unit(torch.autograd.grad(y, xg, ju, retain_graph=True)[0])
    if differentiable:
        with torch.enable_grad():
            ju = torch.autograd.grad(jt_w, w, u.detach(), create_graph=True)[0]
        est = _per_sample_norm(ju)
    return est, it, converged


def _adversarial(network, x, delta, n_iter, tol, differentiable, radius):
    rho = (radius * _per_sample_norm(x)).clamp_min(1e-12).reshape(-1, *([1] * (x.ndim - 1)))
    delta = _unit(delta) * rho
    with torch.no_grad():
        hx = network(x)
    prev, converged, it = None, False, 0
    for it in range(1, n_iter + 1):
        d = delta.clone().requires_grad_(True)
        with torch.enable_grad():
            diff = network(x + d) - hx
            (g,) = torch.autograd.grad(diff.pow(2).sum(), d)
        est = _per_sample_norm(diff.detach()) / rho.flatten()
        if prev is not None and bool(((est - prev).abs() <= tol * est.clamp_min(1e-30)).all()):
            converged = True
            break
        prev = est
        # ascent on the sphere |delta| = rho: move to the gradient direction (power iteration on secants)
        delta = _unit(delta + _unit(g) * rho) * rho
    if differentiable:
        with torch.enable_grad():
            diff = network(x + delta) - network(x)
        est = _per_sample_norm(diff) / rho.flatten()
    return est, it, converged


@dataclass
class GuaranteeReport:
    r"""What :func:`certify` could prove about a MOL model (see the module docstring for the derivations).

    :param lipschitz_bound: certified :math:`L \ge \mathrm{Lip}(H)` or ``None``.
    :param margin: monotonicity margin :math:`m = 1 - L` or ``None``.
    :param operator_norm: :math:`\|A\|` (power-iteration estimate of deepinv's ``compute_sqnorm``) or ``None``.
    :param float alpha: score step :math:`\alpha`.
    :param float lambda_: data weight :math:`\lambda`.
    :param bool step_ok: :math:`\alpha \in (0, 1]` (the score step is a convex combination).
    :param contraction: factor :math:`|1-\alpha| + \alpha L` (:math:`= 1 - \alpha m` on :math:`(0, 1]`) or ``None``.
    :param robustness_bound: :math:`\min(\lambda\|A\|/m, \sqrt{\lambda/(4m)})` bounding
        :math:`\|\delta x\|/\|\delta b\|` at the fixed point, or ``None``.
    :param dict holds: ``{"monotone", "convergence", "robustness"}`` -> bool.
    :param list reasons: plain-language reasons for every guarantee that does not hold, and caveats.
    :param str mode: ``"eval"`` or ``"train"``: the network mode the bound refers to.
    :param equation_residual: :math:`\max_i \|F(x_i) + \lambda A^H(Ax_i - b_i)\|/\|x_i\|` at the
        reconstruction (when ``certify`` was given ``y``), else ``None``.
    :param fixed_point_distance: certified :math:`\max_i \|x_i - x_i^\star\|/\|x_i\| \le`
        ``equation_residual`` :math:`/m` (when both are known), else ``None``.
    :param bool scale_equivariant: the model computes :math:`s(y)\,G(y/s(y))` (fact 6); ``robustness_bound`` is then
        the bound of :math:`G`, on the normalised measurements.
    :param scale_lipschitz: :math:`L_s` (scale-equivariant models, when the image size is known), else ``None``.
    :param model_robustness_bound: the bound of :math:`\|\delta x\|/\|\delta b\|` for what the model computes:
        ``robustness_bound`` without scale equivariance; with it, fact 6 at the given ``y`` (largest over the batch),
        ``None`` without ``y``.
    """

    lipschitz_bound: float | None
    margin: float | None
    operator_norm: float | None
    alpha: float
    lambda_: float
    step_ok: bool
    contraction: float | None
    robustness_bound: float | None
    holds: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)
    mode: str = "eval"
    equation_residual: float | None = None
    fixed_point_distance: float | None = None
    scale_equivariant: bool = False
    scale_lipschitz: float | None = None
    model_robustness_bound: float | None = None

    def to_dict(self) -> dict:
        r"""Plain dictionary (JSON-serialisable)."""
        return asdict(self)

    def __str__(self) -> str:
        def fmt(v):
            return "n/a" if v is None else f"{v:.6g}"

        lines = [
            f"MOL guarantee report (network in {self.mode} mode)",
            f"  certified Lip(H) bound      : {fmt(self.lipschitz_bound)}",
            f"  monotonicity margin m       : {fmt(self.margin)}",
            f"  ||A|| (power estimate)      : {fmt(self.operator_norm)}",
            f"  alpha, lambda               : {self.alpha:.6g}, {self.lambda_:.6g}",
            f"  alpha in (0, 1]             : {'yes' if self.step_ok else 'no'}",
            f"  contraction factor per step : {fmt(self.contraction)}",
            f"  robustness ||dx||/||db|| <= : {fmt(self.robustness_bound)}"
            + (" (of G, normalised measurements)" if self.scale_equivariant else ""),
            f"  scale-equivariant s G(y/s)  : {'yes' if self.scale_equivariant else 'no'}",
            f"  Lip(s) <=                   : {fmt(self.scale_lipschitz)}",
            f"  model ||dx||/||db|| <=      : {fmt(self.model_robustness_bound)}",
            f"  equation residual (rel.)    : {fmt(self.equation_residual)}",
            f"  ||x - x*|| / ||x|| <=       : {fmt(self.fixed_point_distance)}",
        ]
        for k, v in self.holds.items():
            lines.append(f"  {k:<28}: {'HOLDS' if v else 'does NOT hold'}")
        lines += [f"  - {r}" for r in self.reasons]
        return "\n".join(lines)


def certify(
    model: torch.nn.Module,
    physics: LinearPhysics | None = None,
    x: torch.Tensor | tuple | None = None,
    norm_iter: int = 200,
    norm_tol: float = 1e-6,
    y: torch.Tensor | None = None,
    x_hat: torch.Tensor | None = None,
) -> GuaranteeReport:
    r"""Certificate of a MOL model: Lipschitz bound, monotonicity, step condition, contraction, robustness.

    Uses ``model.denoiser`` (its ``lipschitz_bound()``, certified for a strict
    :class:`deepinv_mol.models.MonotoneCNN`), ``float(model.alpha)`` and ``float(model.lambda_)``, and
    :math:`\|A\|` from ``physics.compute_sqnorm`` at the image shape given by ``x``. Without ``x`` (or
    ``physics``), :math:`\|A\|` is not estimated and the robustness bound is :math:`\sqrt{\lambda/(4m)}`,
    which does not need it. The bound refers to the network in its current mode (``mode`` of the report;
    a strict :class:`~deepinv_mol.models.MonotoneCNN` is normalised by certified norms in both modes).

    :param model: a MOL-like reconstructor with ``denoiser``, ``alpha``, ``lambda_``.
    :param deepinv.physics.LinearPhysics physics: forward operator (optional).
    :param x: an image tensor ``(B, C, ...)`` or its shape (tuple), for :math:`\|A\|`.
    :param int norm_iter: power iterations for :math:`\|A\|`.
    :param float norm_tol: tolerance of deepinv's power method.
    :param torch.Tensor y: measurements (optional, with ``physics``): then the reconstruction's distance to the
        exact fixed point is certified (fact 5 of the module docstring): ``fixed_point_distance`` =
        ``equation_residual`` :math:`/m`. The residual is read from ``model.stats["equation_residual"]``
        after ``model(y, physics)`` when the model reports it, and computed from the model, ``physics`` and
        ``y`` otherwise.
    :param torch.Tensor x_hat: the reconstruction to certify (default: ``model(y, physics)``, run here without
        gradients); when given, its residual is computed here.
    :return: :class:`GuaranteeReport` (``print`` it, or ``to_dict()``).
    """
    for name in ("denoiser", "alpha", "lambda_"):
        if not hasattr(model, name):
            raise TypeError(f"certify expects a MOL-like model with attribute {name!r}; got {type(model).__name__}")
    network = model.denoiser
    alpha, lam = float(model.alpha), float(model.lambda_)
    if lam <= 0:
        raise ValueError(f"model.lambda_ must be positive, got {lam}")
    reasons = []
    bound_fn = getattr(network, "lipschitz_bound", None)
    lip = bound_fn() if callable(bound_fn) else None
    if lip is None:
        if callable(bound_fn):
            reasons.append(
                "no certificate: the network is unconstrained (penalty variant); its Lipschitz constant is only "
                "encouraged below the threshold during training - check it empirically with estimate_lipschitz "
                "and worst_case_perturbation"
            )
        else:
            reasons.append(f"no certificate: {type(network).__name__} has no lipschitz_bound(); use a MonotoneCNN")
    mode = "train" if getattr(network, "training", False) else "eval"

    op_norm = None
    if physics is not None and x is not None:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)
        ref = x if isinstance(x, torch.Tensor) else None
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else "cpu"
        x0 = torch.zeros((1,) + shape[1:], dtype=dtype, device=device)
        with torch.no_grad():
            op_norm = math.sqrt(float(physics.compute_sqnorm(x0, max_iter=norm_iter, tol=norm_tol, verbose=False)))

    step_ok = 0.0 < alpha <= 1.0
    if alpha <= 0:
        reasons.append(f"alpha = {alpha:.6g} is not positive: MOL's score step is undefined")
    margin = contraction = robust = None
    monotone = lip is not None and lip < 1.0
    if lip is not None and not monotone:
        reasons.append(
            f"the certified bound Lip(H) <= {lip:.6g} is not below 1: F = I - H is not certified monotone, so "
            "neither uniqueness, convergence nor robustness is guaranteed"
        )
    if monotone:
        margin = 1.0 - lip
        if alpha > 0:
            contraction = abs(1.0 - alpha) + alpha * lip
        robust = math.sqrt(lam / (4.0 * margin))
        if op_norm is not None:
            robust = min(robust, lam * op_norm / margin)
        else:
            reasons.append("||A|| not estimated (no physics/x given): robustness bound sqrt(lambda/(4m)) only")
        if alpha > 1.0:
            if contraction < 1.0:
                reasons.append(
                    f"alpha = {alpha:.6g} > 1: the score step is not a convex combination; the triangle inequality "
                    f"still gives the factor |1 - alpha| + alpha Lip(H) = {contraction:.6g} < 1"
                )
            else:
                reasons.append(
                    f"alpha = {alpha:.6g} is out of range: |1 - alpha| + alpha Lip(H) = {contraction:.6g} >= 1, the "
                    f"iteration is not certified to converge; choose alpha in (0, 1] (alpha = 1 gives factor Lip(H))"
                )
    residual = distance = None
    if y is not None:
        if physics is None:
            raise ValueError("certify: y needs physics (the residual F(x) + lambda A^H(Ax - y) uses A)")
        if x_hat is None:
            with torch.no_grad():
                x_hat = model(y, physics)
            reported = getattr(model, "stats", None)
            reported = reported.get("equation_residual") if isinstance(reported, dict) else None
            residual = float(reported) if reported is not None else equation_residual(model, physics, y, x_hat)
        else:
            residual = equation_residual(model, physics, y, x_hat)
        if margin is not None:
            distance = residual / margin
    scale_eq = bool(getattr(model, "scale_equivariant", False))
    scale_lip = model_bound = None
    if scale_eq:
        ref = x_hat if x_hat is not None else x
        shape = tuple(ref.shape) if isinstance(ref, torch.Tensor) else (tuple(ref) if ref is not None else None)
        if shape is not None:
            scale_lip = _scale_lipschitz(model, math.prod(shape[2:]), op_norm)
        if robust is not None and y is not None:
            model_bound = model_robustness_bound(model, physics, y, x_hat=x_hat, fixed_point_bound=robust, op_norm=op_norm)
            reasons.append(
                f"the model is scale-equivariant, x(y) = s(y) G(y/s(y)): robustness_bound ({robust:.6g}) is that of G on "
                f"the normalised measurements; what the model computes is bounded at this y by R + L_s (R||y|| + "
                f"||x||)/s = {model_bound:.6g} (L_s = {scale_lip:.3g}, for the exact Tikhonov start image; fact 6)"
            )
        elif robust is not None:
            reasons.append(
                "the model is scale-equivariant, x(y) = s(y) G(y/s(y)): robustness_bound is that of G on the normalised "
                "measurements; pass y to certify for the bound of what the model computes (fact 6)"
            )
    elif robust is not None:
        model_bound = robust
    if monotone:
        if distance is not None:
            reasons.append(
                f"the robustness bound holds for the exact fixed point x*; the reconstruction x has relative "
                f"equation residual {residual:.3g}, hence ||x - x*|| <= ||F(x) + lambda A^H(Ax - y)|| / m = "
                f"{distance:.3g} ||x|| (m = 1 - Lip(H) = {margin:.3g})"
            )
        else:
            reasons.append(
                "the robustness bound holds for the exact fixed point x*; a reconstruction x stopped early is "
                "within ||F(x) + lambda A^H(Ax - y)|| / m of it (m = 1 - Lip(H)), not within the solver's tol: "
                "pass y (and physics) to certify for that distance, or read stats['equation_residual'] "
                "(||x - x*|| <= equation_residual * ||x|| / m)"
            )
    convergence = contraction is not None and contraction < 1.0
    holds = {"monotone": monotone, "convergence": convergence, "robustness": robust is not None}
    return GuaranteeReport(
        lipschitz_bound=lip,
        margin=margin,
        operator_norm=op_norm,
        alpha=alpha,
        lambda_=lam,
        step_ok=step_ok,
        contraction=contraction,
        robustness_bound=robust,
        holds=holds,
        reasons=reasons,
        mode=mode,
        equation_residual=residual,
        fixed_point_distance=distance,
        scale_equivariant=scale_eq,
        scale_lipschitz=scale_lip,
        model_robustness_bound=model_bound,
    )


def _scale_lipschitz(model, n_pixels: int, op_norm: float | None) -> float:
    from .optim.scaling import scale_lipschitz

    return scale_lipschitz(n_pixels, eps=float(model.init_eps), reference=float(getattr(model, "scale_reference", 1.0)),
                           op_norm=op_norm)


def _fixed_point_bound(model, op_norm: float | None) -> float | None:
    bound_fn = getattr(getattr(model, "denoiser", None), "lipschitz_bound", None)
    lip = bound_fn() if callable(bound_fn) else None
    if lip is None or not lip < 1.0 or not hasattr(model, "lambda_"):
        return None
    lam, margin = float(model.lambda_), 1.0 - float(lip)
    bound = math.sqrt(lam / (4.0 * margin))
    return bound if op_norm is None else min(bound, lam * op_norm / margin)


def _model_scale(model, physics, y: torch.Tensor) -> torch.Tensor:
    from .optim.scaling import measurement_scale

    start = model.initialise(y, physics) if callable(getattr(model, "initialise", None)) else None
    return measurement_scale(y, physics, start=start, reference=float(getattr(model, "scale_reference", 1.0)))


@torch.no_grad()
def model_robustness_bound(
    model: torch.nn.Module,
    physics: LinearPhysics,
    y: torch.Tensor,
    x_hat: torch.Tensor | None = None,
    fixed_point_bound: float | None = None,
    op_norm: float | None = None,
) -> float | None:
    r"""Bound of :math:`\|x(y + \delta) - x(y)\| / \|\delta\|` (every :math:`\delta`) for what a MOL model computes.

    Without scale equivariance this is the fixed-point bound :math:`R = \min(\lambda\|A\|/m, \sqrt{\lambda/(4m)})`
    (fact 4). With ``model.scale_equivariant`` it is fact 6 at ``y``,
    :math:`\max_i R + L_s(R\|y_i\| + \|x_i\|)/s_i`, with :math:`x = x(y)` and :math:`s = s(y)` (the model's scale).

    :param model: a MOL-like model (``denoiser`` with ``lipschitz_bound()``, ``lambda_``, ``init_eps``).
    :param deepinv.physics.LinearPhysics physics: forward operator.
    :param torch.Tensor y: measurements ``(B, ...)``.
    :param torch.Tensor x_hat: ``model(y, physics)`` if already computed.
    :param float fixed_point_bound: :math:`R` if already computed (else from the certificate, with ``op_norm``).
    :param float op_norm: :math:`\|A\|` if known (tightens :math:`R` and, for tiny :math:`\|A\|`, :math:`L_s`).
    :return: the bound, or ``None`` when the network is not certified (no :math:`R`).
    """
    bound = _fixed_point_bound(model, op_norm) if fixed_point_bound is None else float(fixed_point_bound)
    if bound is None or not getattr(model, "scale_equivariant", False):
        return bound
    if x_hat is None:
        x_hat = model(y, physics)
    scale = _model_scale(model, physics, y).flatten().double()
    lip_s = _scale_lipschitz(model, math.prod(x_hat.shape[2:]), op_norm)
    y_norm = _per_sample_norm(y.detach()).double()
    x_norm = _per_sample_norm(x_hat.detach()).double()
    return float((bound + lip_s * (bound * y_norm + x_norm) / scale).max())


@torch.no_grad()
def equation_residual(
    model: torch.nn.Module, physics: LinearPhysics, y: torch.Tensor, x_hat: torch.Tensor | None = None
) -> float:
    r"""Relative residual of MOL's fixed-point equation at a reconstruction,
    :math:`\max_i \|F(x_i) + \lambda A^H(Ax_i - y_i)\| / \|x_i\|` with :math:`F = I - H` (``model.denoiser``)
    and :math:`\lambda` = ``model.lambda_``; by fact 5 of the module docstring,
    :math:`\|x_i - x_i^\star\| \le` (this value) :math:`\cdot\|x_i\|/m`.

    Without ``x_hat`` the model is run (``model(y, physics)``) and its ``stats["equation_residual"]`` is
    used when present; otherwise (or with ``x_hat``) the residual is computed here.

    :param model: a MOL-like reconstructor (``denoiser``, ``lambda_``, called as ``model(y, physics)``).
    :param deepinv.physics.LinearPhysics physics: forward operator.
    :param torch.Tensor y: measurements ``(B, ...)``.
    :param torch.Tensor x_hat: reconstruction ``(B, ...)`` (optional).
    :return: float.
    """
    if x_hat is None:
        x_hat = model(y, physics)
        reported = getattr(model, "stats", None)
        if isinstance(reported, dict) and reported.get("equation_residual") is not None:
            return float(reported["equation_residual"])
    if getattr(model, "scale_equivariant", False):  # the equation G solves: normalised image and measurements
        from .optim.scaling import apply_scale

        scale = _model_scale(model, physics, y)
        x_hat, y = apply_scale(x_hat, 1 / scale), apply_scale(y, 1 / scale)
    own = getattr(model, "equation_residual", None)
    if callable(own):  # MOL's own, with the normal operator it solves with (physics.A_adjoint_A)
        return float(own(x_hat, y, physics).max())
    lam = float(model.lambda_)
    r = x_hat - model.denoiser(x_hat) + lam * physics.A_adjoint(physics.A(x_hat) - y)
    return float((_per_sample_norm(r) / _per_sample_norm(x_hat).clamp_min(1e-30)).max())


@dataclass
class WorstCasePerturbation:
    r"""Result of :func:`worst_case_perturbation`.

    :param torch.Tensor delta: the perturbation found, same shape as ``y``, :math:`\|\delta_i\| \le \epsilon`.
    :param torch.Tensor amplification: per-sample :math:`\|x(y+\delta) - x(y)\|/\|\delta\|` ``(B,)``.
    :param float value: the largest amplification over the batch.
    :param list history: batch-maximal amplification at each ascent step.
    :param bound: the certified bound of the amplification for what the model computes
        (:func:`model_robustness_bound` at ``y``; ``None`` for a model without certificate).
    """

    delta: torch.Tensor
    amplification: torch.Tensor
    value: float
    history: list
    bound: float | None = None

    def __float__(self) -> float:
        return float(self.value)


def worst_case_perturbation(
    model: Callable[..., torch.Tensor],
    physics: Physics,
    y: torch.Tensor,
    eps: float,
    steps: int = 20,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    solver_tol: float | str | None = "auto",
) -> WorstCasePerturbation:
    r"""Adversarial measurement perturbation: projected gradient ascent of the reconstruction change.

    Maximises :math:`\|x(y + \delta) - x(y)\|^2` over :math:`\|\delta_i\| \le \epsilon` (per sample) with
    normalised gradient steps :math:`\delta \leftarrow P_\epsilon(\delta + \tau\,g/\|g\|)` from a random
    (or given) start on the sphere, keeping the best :math:`\delta` per sample. For a linear reconstructor
    :math:`x = Ry` with :math:`\tau \ge \epsilon` this is the power iteration on :math:`R^\top R`, so the
    amplification tends to :math:`\|R\|`. Works for any reconstructor ``model(y, physics)`` whose output is
    differentiable in ``y`` (MOL, deepinv's ``MoDL``, ...). The model is used as given: call ``eval()`` first.

    :param model: reconstructor, called as ``model(y, physics)``.
    :param deepinv.physics.Physics physics: forward operator.
    :param torch.Tensor y: measurements ``(B, ...)``.
    :param float eps: perturbation budget (Euclidean norm per sample, measurement units).
    :param int steps: ascent steps.
    :param float step_size: :math:`\tau` (default :math:`\epsilon`).
    :param torch.Generator generator: generator of the random start (on ``y``'s device).
    :param torch.Tensor init: starting direction instead of a random one (rescaled to norm ``eps``).
    :param float, str solver_tol: during the measurement, the model's ``tol`` (MOL ties its data-consistency
        CG tolerance to it) is lowered to at most this value (and ``max_iter`` raised to at least 1000 when it was), then
        restored. A reconstruction stopped at relative tolerance :math:`\rho` can be off by about
        :math:`\rho\|x\|/m`, which inflates an amplification measured at small :math:`\epsilon` by up to
        :math:`2\rho\|x\|/(m\epsilon)` (16 % at ``tol=1e-4`` in one measured case). ``"auto"``:
        :math:`10^{-3}\epsilon/\max_i\|y_i\|` (at least ``1e-10``), so the solver error scales with the
        perturbation; ``None``: use the model as given.
    :return: :class:`WorstCasePerturbation` (``float(result)`` is the largest amplification; ``result.bound`` the
        certified bound of what the model computes, scale equivariance included, for a certified MOL).
    """
    if not isinstance(y, torch.Tensor) or y.ndim < 2:
        raise ValueError("y must be a batched tensor (B, ...)")
    if not (eps > 0 and math.isfinite(eps)) or steps < 1:
        raise ValueError(f"eps must be positive and finite and steps >= 1, got eps={eps}, steps={steps}")
    if isinstance(solver_tol, str):
        if solver_tol != "auto":
            raise ValueError(f"solver_tol must be 'auto', a positive float or None, got {solver_tol!r}")
        solver_tol = max(1e-3 * eps / float(_per_sample_norm(y.detach()).max().clamp_min(1e-30)), 1e-10)
    elif solver_tol is not None and not (solver_tol > 0 and math.isfinite(solver_tol)):
        raise ValueError(f"solver_tol must be 'auto', a positive finite float or None, got {solver_tol!r}")
    with _tighter_solver(model, solver_tol):
        result, x0 = _worst_case(model, physics, y, eps, steps, step_size, generator, init)
    if hasattr(model, "lambda_") and hasattr(model, "init_eps"):
        result.bound = model_robustness_bound(model, physics, y.detach(), x_hat=x0)
    return result


@contextmanager
def _tighter_solver(model, solver_tol: float | None) -> Iterator[None]:
    saved = {}
    tol = getattr(model, "tol", None)
    if solver_tol is not None and isinstance(tol, (int, float)) and not isinstance(tol, bool) and solver_tol < tol:
        for name, value in (("tol", solver_tol), ("max_iter", 1000)):
            old = getattr(model, name, None)
            if isinstance(old, (int, float)) and not isinstance(old, bool):
                saved[name] = old
                setattr(model, name, type(old)(max(old, value) if name == "max_iter" else min(old, value)))
    try:
        yield
    finally:
        for name, old in saved.items():
            setattr(model, name, old)


def _worst_case(model, physics, y, eps, steps, step_size, generator, init) -> WorstCasePerturbation:
    tau = eps if step_size is None else float(step_size)
    y = y.detach()
    with torch.no_grad():
        x0 = model(y, physics).detach()
    shape = (-1,) + (1,) * (y.ndim - 1)
    if init is not None:
        if not isinstance(init, torch.Tensor) or init.shape != y.shape:
            raise ValueError(f"init must be a tensor of the measurement shape {tuple(y.shape)}")
        delta = _unit(init.detach().to(y)) * eps
    else:
        delta = _unit(torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)) * eps
    best_amp = torch.full((y.shape[0],), -1.0, device=y.device)
    best_delta = delta.clone()
    history = []

    def record(d, diff):
        amp = (_per_sample_norm(diff) / _per_sample_norm(d).clamp_min(1e-30)).to(best_amp.dtype)
        better = amp > best_amp
        best_amp[better] = amp[better]
        best_delta[better] = d[better]
        history.append(float(amp.max()))

    for _ in range(steps):
        d = delta.clone().requires_grad_(True)
        with torch.enable_grad():
            diff = model(y + d, physics) - x0
            (g,) = torch.autograd.grad(diff.abs().pow(2).sum(), d)
        record(d.detach(), diff.detach())
        delta = delta + tau * _unit(g)
        delta = delta * (eps / _per_sample_norm(delta).clamp_min(1e-30)).clamp(max=1.0).reshape(shape)
    with torch.no_grad():
        record(delta, model(y + delta, physics) - x0)
    return WorstCasePerturbation(best_delta, best_amp, float(best_amp.max()), history), x0
