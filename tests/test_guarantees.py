"""Guarantees: local Lipschitz estimates, MOL certificates, worst-case perturbations."""

import json
import math

import deepinv as dinv
import pytest
import torch
from deepinv.models import Reconstructor

from deepinv_mol.guarantees import certify, estimate_lipschitz, worst_case_perturbation
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL


def dense_matrix(f, shape):
    """The matrix of a linear map f on tensors of `shape` (1, ...), column by column."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    with torch.no_grad():
        return f(eye).reshape(n, -1).T


def diagonal_physics(d):
    """A = diag(d) (elementwise product), exact adjoint."""
    return dinv.physics.LinearPhysics(A=lambda x: d * x, A_adjoint=lambda y: d * y)


class Dagger(Reconstructor):
    """x = A^dagger y (deepinv's least-squares pseudo-inverse): a linear reconstructor."""

    def forward(self, y, physics, **kwargs):
        return physics.A_dagger(y)


def mri(rng, n=12):
    mask = (torch.rand(n, n, generator=rng) < 0.5).float()
    mask[0, 0] = 1.0  # at least one sampled frequency: ||A|| = 1
    return dinv.physics.MRI(mask=mask, img_size=(2, n, n))


# ---------------------------------------------------------------- estimate_lipschitz


@pytest.mark.parametrize("method", ["power", "adversarial"])
def test_estimate_matches_exact_norm_of_linear_network(method, rng):
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3, padding=1, bias=False), torch.nn.Conv2d(3, 2, 3, padding=1, bias=True)
    ).double()
    gen = torch.Generator().manual_seed(1)  # weights with a spectral gap (59.6 vs 54.0): fast power iteration
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
    shape = (1, 2, 7, 6)
    exact = torch.linalg.matrix_norm(dense_matrix(lambda e: conv(e) - conv(torch.zeros_like(e[:1])), shape), ord=2)
    x = torch.randn(2, *shape[1:], generator=rng, dtype=torch.float64)
    est = estimate_lipschitz(conv, x, n_iter=500, tol=1e-9, method=method, generator=rng, warn=False)
    assert est.per_sample.shape == (2,)
    assert abs(est.value - exact.item()) <= 1e-6 * exact.item()
    assert est.converged and est.iterations < 500  # the early stop stops


def test_estimate_early_stop_and_warning(rng):
    lin = torch.nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([2.0, 1.99, 1.0, 0.5])))
    with pytest.warns(UserWarning, match="not converged"):
        est = estimate_lipschitz(lin, torch.randn(1, 4, generator=rng), n_iter=3, tol=1e-12, generator=rng)
    assert not est.converged and est.value <= 2.0 + 1e-6
    with pytest.raises(ValueError):
        estimate_lipschitz(lin, torch.randn(1, 4), method="newton")
    with pytest.raises(ValueError):
        estimate_lipschitz(lin, torch.randn(4))


def test_estimate_differentiable_gives_gradient_of_spectral_norm(rng):
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    shape = (1, 1, 6, 6)
    sigma = torch.linalg.matrix_norm(dense_matrix_grad(conv, shape), ord=2)
    (g_exact,) = torch.autograd.grad(sigma, conv.weight)
    est = estimate_lipschitz(conv, torch.randn(shape, generator=rng, dtype=torch.float64), n_iter=3000,
                             tol=1e-12, differentiable=True, generator=rng, warn=False)
    (g_est,) = torch.autograd.grad(est.per_sample.sum(), conv.weight)
    assert torch.allclose(g_est, g_exact, atol=1e-4 * g_exact.norm().item())
    assert all(p.requires_grad for p in conv.parameters())  # parameters restored after a frozen run
    estimate_lipschitz(conv, torch.randn(shape, dtype=torch.float64), n_iter=5, warn=False)
    assert all(p.requires_grad for p in conv.parameters())


def dense_matrix_grad(conv, shape):
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    return conv(eye).reshape(n, -1).T


# ---------------------------------------------------------------- certify


def test_certify_strict_mol_numbers(rng):
    net = MonotoneCNN(width=8, depth=3, lipschitz=0.9).eval()
    model = MOL(denoiser=net, lambda_=2.0, alpha=0.5)
    physics = mri(rng)
    x = torch.randn(1, 2, 12, 12, generator=rng)
    rep = certify(model, physics, x)
    lip = net.lipschitz_bound()
    assert rep.lipschitz_bound == lip and lip <= 0.9 * (1 + 1e-6)
    m = 1 - lip
    assert math.isclose(rep.margin, m, rel_tol=1e-12)
    assert abs(rep.operator_norm - 1.0) < 1e-3  # a Cartesian mask: ||A|| = 1
    assert rep.step_ok and math.isclose(rep.contraction, 1 - 0.5 * m, rel_tol=1e-12)
    expected = min(2.0 * rep.operator_norm / m, math.sqrt(2.0 / (4 * m)))
    assert math.isclose(rep.robustness_bound, expected, rel_tol=1e-12)
    assert rep.holds == {"monotone": True, "convergence": True, "robustness": True}
    assert "HOLDS" in str(rep) and "does NOT hold" not in str(rep)
    assert json.loads(json.dumps(rep.to_dict()))["alpha"] == 0.5
    # shape instead of tensor gives the same ||A||; no x: only sqrt(lambda/(4m)), said plainly
    assert abs(certify(model, physics, (1, 2, 12, 12)).operator_norm - rep.operator_norm) < 1e-3
    rep2 = certify(model)
    assert rep2.operator_norm is None and math.isclose(rep2.robustness_bound, math.sqrt(2.0 / (4 * m)))
    assert any("not estimated" in r for r in rep2.reasons)


def test_certify_robustness_branch_with_small_operator_norm(rng):
    net = MonotoneCNN(width=4, depth=2, lipschitz=0.5).eval()
    model = MOL(denoiser=net, lambda_=1.0, alpha=1.0)
    physics = diagonal_physics(torch.full((1, 2, 8, 8), 0.01))
    rep = certify(model, physics, (1, 2, 8, 8))
    m = 1 - net.lipschitz_bound()
    assert abs(rep.operator_norm - 0.01) < 1e-6
    assert math.isclose(rep.robustness_bound, 1.0 * rep.operator_norm / m, rel_tol=1e-12)  # the lambda|A|/m branch
    assert math.isclose(rep.contraction, net.lipschitz_bound(), rel_tol=1e-12)  # alpha = 1: factor Lip(H)


def test_certify_says_when_guarantees_do_not_hold(rng):
    penalty = MOL(denoiser=MonotoneCNN(width=4, depth=2, constraint="penalty"), lambda_=1.0)
    rep = certify(penalty)
    assert rep.lipschitz_bound is None and rep.margin is None and rep.robustness_bound is None
    assert rep.holds == {"monotone": False, "convergence": False, "robustness": False}
    assert any("penalty" in r for r in rep.reasons) and "does NOT hold" in str(rep)

    net = MonotoneCNN(width=4, depth=2, lipschitz=0.9).eval()
    rep = certify(MOL(denoiser=net, lambda_=1.0, alpha=1.5))
    assert not rep.step_ok and rep.contraction >= 1 and not rep.holds["convergence"]
    assert rep.holds["monotone"] and rep.holds["robustness"]  # the fixed point is still unique and stable
    assert any("out of range" in r for r in rep.reasons)

    net = MonotoneCNN(width=4, depth=2, lipschitz=0.5).eval()
    rep = certify(MOL(denoiser=net, lambda_=1.0, alpha=1.05))
    assert not rep.step_ok and rep.holds["convergence"]  # |1 - alpha| + alpha L < 1 still contracts
    assert math.isclose(rep.contraction, rep.alpha - 1 + rep.alpha * net.lipschitz_bound(), rel_tol=1e-9)
    assert any("not a convex combination" in r for r in rep.reasons)

    net = MonotoneCNN(width=4, depth=2, lipschitz=0.99).train()
    net.power_sigma0.mul_(0.5)  # a poor power estimate no longer matters: the forward divides by certified norms
    rep = certify(MOL(denoiser=net, lambda_=1.0))
    assert rep.lipschitz_bound <= 0.99 * (1 + 1e-6) and all(rep.holds.values()) and rep.mode == "train"

    class Loose(torch.nn.Module):  # a network certified only above 1
        def forward(self, x, *args, **kwargs):
            return 1.2 * x

        def lipschitz_bound(self):
            return 1.2

    rep = certify(MOL(denoiser=Loose(), lambda_=1.0))
    assert rep.lipschitz_bound == 1.2 and not any(rep.holds.values())
    assert any("is not below 1" in r for r in rep.reasons)

    with pytest.raises(TypeError):
        certify(net)  # a bare network has no alpha / lambda


# ---------------------------------------------------------------- worst_case_perturbation


def test_worst_case_on_pseudo_inverse_of_diagonal_operator(rng):
    d = torch.linspace(0.2, 1.0, 16).repeat(1, 1, 16, 1)
    physics = diagonal_physics(d)
    y = physics(torch.randn(2, 1, 16, 16, generator=rng))
    wc = worst_case_perturbation(Dagger(), physics, y, eps=0.1, steps=15, generator=rng)
    assert wc.delta.shape == y.shape
    assert (wc.delta.flatten(1).norm(dim=1) <= 0.1 * (1 + 1e-5)).all()
    assert wc.value <= 1 / 0.2 * (1 + 1e-3)  # |A^dagger| = 1 / smallest singular value
    assert wc.value >= 0.99 * 5.0
    assert wc.history[-1] >= wc.history[0]


def test_worst_case_beats_random_direction_on_modl(rng):
    physics = mri(rng)
    net = MonotoneCNN(width=6, depth=3, constraint="penalty").eval()
    model = dinv.models.MoDL(denoiser=net, num_iter=3).eval()
    y = physics(torch.randn(1, 2, 12, 12, generator=rng))
    wc = worst_case_perturbation(model, physics, y, eps=0.05, steps=8, generator=rng)
    assert (wc.delta.flatten(1).norm(dim=1) <= 0.05 * (1 + 1e-5)).all()
    assert wc.value > 1.2 * wc.history[0]  # ascent finds far more than the random start
    with torch.no_grad():  # the reported amplification is what the perturbation does
        amp = (model(y + wc.delta, physics) - model(y, physics)).norm() / wc.delta.norm()
    assert abs(amp.item() - wc.value) <= 1e-4 * wc.value
    with pytest.raises(ValueError):
        worst_case_perturbation(model, physics, y, eps=0.0)


def test_strict_mol_empirical_robustness_within_certified_bound(rng):
    # A = c I with c^2 = m / lambda is where sqrt(lambda / (4m)) is attained (lambda c / (m + lambda c^2)),
    # and a nearly extremal network is linear with gain ~ Lip on positive images: the bound is nearly reached
    lip, lam = 0.9, 1.0
    c = math.sqrt((1 - lip) / lam)
    physics = diagonal_physics(torch.tensor(c))
    net = MonotoneCNN.nearly_extremal(width=4, depth=3, lipschitz=lip, power_size=16, generator=rng).eval()
    model = MOL(denoiser=net, lambda_=lam, alpha=1.0, tol=1e-7, max_iter=300).eval()
    x = 5 + torch.rand(1, 2, 16, 16, generator=rng)
    y = physics(x)
    rep = certify(model, physics, x)
    assert rep.holds["robustness"]
    eps = 0.05 * y.norm().item()
    wc = worst_case_perturbation(model, physics, y, eps=eps, steps=6, generator=rng)
    assert model.stats["converged"]
    assert wc.value <= rep.robustness_bound
    # from a smooth positive start the ascent nearly reaches the bound: on 16x16 the gain of H along its top
    # direction is ~0.88 (boundary effects), so lambda c / (1 - 0.88 + lambda c^2) ~ 1.4 of 1.58
    wc = worst_case_perturbation(model, physics, y, eps=eps, steps=6, init=torch.ones_like(y))
    assert 0.8 * rep.robustness_bound <= wc.value <= rep.robustness_bound


def test_strict_mol_random_network_mri_within_certified_bound(rng):
    physics = mri(rng)
    net = MonotoneCNN(width=6, depth=3, lipschitz=0.95).eval()
    model = MOL(denoiser=net, lambda_=5.0, alpha=1.0, tol=1e-6, max_iter=200).eval()
    y = physics(torch.randn(2, 2, 12, 12, generator=rng))
    rep = certify(model, physics, (1, 2, 12, 12))
    wc = worst_case_perturbation(model, physics, y, eps=0.1, steps=6, generator=rng)
    assert wc.amplification.shape == (2,)
    assert wc.value <= rep.robustness_bound


# ---------------------------------------------------------------- distance of a stopped iteration


def _exact_fixed_point(net, d, lam, y, iters=3000):
    """MOL's iteration with the exact (diagonal) data step, alpha = 1: x <- (I + lam D^2)^{-1} (H(x) + lam D y)."""
    x = torch.zeros_like(y)
    with torch.no_grad():
        for _ in range(iters):
            x = (net(x) + lam * d * y) / (1 + lam * d * d)
    return x


def test_certified_distance_to_fixed_point_on_ill_conditioned_problem(rng):
    n, lam, lip = 12, 100.0, 0.9
    d = torch.linspace(0.05, 3.0, n * n).reshape(1, 1, n, n).repeat(1, 2, 1, 1)
    assert (1 + lam * 9.0) / (1 + lam * 0.05**2) > 500  # condition number of I + lam A^H A
    physics = diagonal_physics(d)
    net = MonotoneCNN(width=6, depth=3, lipschitz=lip).eval()
    model = MOL(denoiser=net, lambda_=lam, tol=1e-3, max_iter=200, warn=False).eval()
    y = physics(torch.rand(2, 2, n, n, generator=rng) + 0.5)
    x_star = _exact_fixed_point(net, d, lam, y)
    rep_star = certify(model, physics, y=y, x_hat=x_star)  # the reference's own certified accuracy
    m = 1 - net.lipschitz_bound()
    with torch.no_grad():
        x_hat = model(y, physics)
    rep = certify(model, physics, y=y, x_hat=x_hat)
    assert rep.margin == pytest.approx(m) and rep.fixed_point_distance == pytest.approx(rep.equation_residual / m)
    dist = ((x_hat - x_star).flatten(1).norm(dim=1) / x_hat.flatten(1).norm(dim=1)).max().item()
    slack = rep_star.fixed_point_distance * x_star.norm().item() / x_hat.norm().item() * 2
    assert dist <= rep.fixed_point_distance + slack
    assert any("||x - x*|| <=" in r for r in rep.reasons)
    # without x_hat, certify runs the model (and reads stats["equation_residual"] when MOL reports it)
    rep_run = certify(model, physics, y=y)
    # (MOL derives it from CG's first residual, rhs - M x in float32: agrees to rounding, ~1e-3 here)
    assert rep_run.fixed_point_distance == pytest.approx(rep.fixed_point_distance, rel=5e-3)
    # the equation residual computed here is the definition: F(x) + lam A^H (Ax - y), relative to ||x||
    with torch.no_grad():
        r = x_hat - net(x_hat) + lam * d * (d * x_hat - y)
    assert rep.equation_residual == pytest.approx((r.flatten(1).norm(dim=1) / x_hat.flatten(1).norm(dim=1)).max().item(), rel=1e-3)  # float32: lambda = 100 times a difference
    print(f"tol 1e-3: distance {dist:.3g}, certified {rep.fixed_point_distance:.3g}")


def test_small_eps_amplification_measured_with_a_tighter_solve(rng):
    n, lam = 8, 5.0
    physics = mri(rng, n)
    net = MonotoneCNN(width=4, depth=2, lipschitz=0.8).eval()
    model = MOL(denoiser=net, lambda_=lam, tol=1e-3, max_iter=300, warn=False).eval()
    y = physics(torch.rand(1, 2, n, n, generator=rng) + 0.5)
    eps = 1e-3 * y.norm().item()
    start = torch.randn(y.shape, generator=rng)
    loose = worst_case_perturbation(model, physics, y, eps=eps, steps=1, init=start, solver_tol=None)
    tight = worst_case_perturbation(model, physics, y, eps=eps, steps=1, init=start)
    assert model.tol == 1e-3 and model.max_iter == 300  # restored
    # float32 floor: the reference solve stalls near 2e-7, so ask for 5e-7
    reference = MOL(denoiser=net, lambda_=lam, tol=5e-7, max_iter=300,
                    data_consistency={"max_iter": 100, "forcing": 0.0}).eval()
    with torch.no_grad():
        delta = tight.delta
        exact = ((reference(y + delta, physics) - reference(y, physics)).norm() / delta.norm()).item()
    assert reference.stats["converged"]
    assert abs(tight.value - exact) <= 0.01 * exact
    print(f"amplification at eps = 1e-3 ||y||: loose solve {loose.value:.4f}, auto {tight.value:.4f}, reference {exact:.4f}")
