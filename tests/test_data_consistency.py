"""The regularised solve (I + gamma A^H A)^{-1} and the starting image, against dense linear algebra."""

import deepinv as dinv
import pytest
import torch

from deepinv_mol.optim.data_consistency import regularised_solve, start_image

SHAPE = (1, 4, 5)  # image shape per item: n = 20 unknowns
N = 20


def _dense_physics(m=14, cond=None, seed=0, dtype=torch.float64):
    """A LinearPhysics from a dense (m, n) matrix acting on flattened images of SHAPE."""
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        A = torch.complex(torch.randn(m, N, generator=g, dtype=torch.float64), torch.randn(m, N, generator=g, dtype=torch.float64))
    else:
        A = torch.randn(m, N, generator=g, dtype=dtype)
    if cond is not None:  # prescribe singular values from 1 to 1/sqrt(cond) (A^H A has condition `cond`)
        U, _, Vh = torch.linalg.svd(A, full_matrices=False)
        s = torch.logspace(0, -0.5 * torch.log10(torch.tensor(float(cond))).item(), U.shape[1], dtype=torch.float64)
        A = (U * s.to(U.dtype)) @ Vh
    physics = dinv.physics.LinearPhysics(
        A=lambda x: (x.reshape(x.shape[0], -1) @ A.T),
        A_adjoint=lambda y: (y @ A.conj()).reshape((y.shape[0],) + SHAPE),
    )
    return physics, A


def _dense_solve(A, b, gamma):
    """(I + gamma A^H A)^{-1} b for a batch of images b, gamma a scalar or (B, 1, 1, 1)."""
    M = torch.eye(N, dtype=A.dtype) + torch.as_tensor(gamma, dtype=torch.float64).reshape(-1, 1, 1) * (A.conj().T @ A)
    x = torch.linalg.solve(M, b.reshape(b.shape[0], N, 1))
    return x.reshape(b.shape)


def _rand(batch=3, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        return torch.complex(torch.randn((batch,) + SHAPE, generator=g, dtype=torch.float64),
                             torch.randn((batch,) + SHAPE, generator=g, dtype=torch.float64))
    return torch.randn((batch,) + SHAPE, generator=g, dtype=dtype)


def _true_rel_residual(physics, x, b, gamma):
    r = b - (x + gamma * physics.A_adjoint_A(x))
    return float((r.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("gamma", [0.3, 100.0, "per-item"])
def test_solution_matches_dense_solve(dtype, gamma):
    physics, A = _dense_physics(cond=600, dtype=dtype)
    b = _rand(dtype=dtype)
    if gamma == "per-item":
        gamma = torch.tensor([0.5, 10.0, 200.0], dtype=torch.float64).reshape(3, 1, 1, 1)
    x, stats = regularised_solve(physics, b, gamma, tol=1e-12, max_iter=200)
    ref = _dense_solve(A, b, gamma)
    assert (x - ref).abs().max() < 1e-9 * ref.abs().max()
    assert stats.converged and stats.residual <= 1e-12
    # CG on an n x n system: at most n steps in exact arithmetic (some slack in floating point)
    assert 1 <= stats.iterations <= 2 * N
    assert stats.history[0] == 1.0 and stats.history[-1] == stats.residual


def test_gradient_matches_autograd_through_dense_solve():
    physics, A = _dense_physics(cond=600)
    b0 = _rand()
    v = _rand(seed=7)
    for per_item in (False, True):
        g0 = torch.tensor([3.0, 40.0, 0.7]).double().reshape(3, 1, 1, 1) if per_item else torch.tensor(40.0).double()
        b, g = b0.clone().requires_grad_(), g0.clone().requires_grad_()
        # a loose forward (a few warm-started iterations): the gradient is still the exact solve's
        x, stats = regularised_solve(physics, b, g, init=_dense_solve(A, b0, g0) + 1e-3 * b0, tol=1e-3,
                                     max_iter=3, backward_tol=1e-13, backward_max_iter=200)
        (x * v).sum().backward()
        b2, g2 = b0.clone().requires_grad_(), g0.clone().requires_grad_()
        (_dense_solve(A, b2, g2) * v).sum().backward()
        assert torch.allclose(b.grad, b2.grad, rtol=1e-9, atol=1e-11)
        # dx/dgamma = -M^{-1} A^H A x is evaluated at the returned x: as accurate as the forward solve
        assert torch.allclose(g.grad, g2.grad, rtol=10 * stats.residual)
        assert g.grad.shape == g0.shape
        b3, g3 = b0.clone().requires_grad_(), g0.clone().requires_grad_()
        x, stats = regularised_solve(physics, b3, g3, tol=1e-13, max_iter=200)
        (x * v).sum().backward()
        assert torch.allclose(g3.grad, g2.grad, rtol=1e-8, atol=1e-12)


def test_gradient_complex_rhs_matches_dense_solve():
    physics, A = _dense_physics(dtype=torch.complex128)
    b0, v = _rand(dtype=torch.complex128), _rand(dtype=torch.complex128, seed=3)
    b, g = b0.clone().requires_grad_(), torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    x, _ = regularised_solve(physics, b, g, tol=1e-13, max_iter=200)
    (x.conj() * v).real.sum().backward()
    b2, g2 = b0.clone().requires_grad_(), torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    (_dense_solve(A, b2, g2).conj() * v).real.sum().backward()
    assert torch.allclose(b.grad, b2.grad, atol=1e-10)
    assert torch.allclose(g.grad, g2.grad, rtol=1e-8)


def test_warm_start_at_the_solution_costs_nothing_and_near_it_costs_less():
    physics, A = _dense_physics(cond=600)
    b = _rand()
    ref = _dense_solve(A, b, 50.0)
    x, stats = regularised_solve(physics, b, 50.0, init=ref, tol=1e-8)
    assert stats.iterations == 0 and stats.converged and torch.equal(x, ref)
    _, cold = regularised_solve(physics, b, 50.0, tol=1e-8)
    _, warm = regularised_solve(physics, b, 50.0, init=ref + 1e-6 * b, tol=1e-8)
    assert warm.iterations < cold.iterations


def test_stats_report_the_true_residual_and_the_cap():
    physics, A = _dense_physics(cond=600)
    b = _rand()
    x, stats = regularised_solve(physics, b, 100.0, tol=1e-12, max_iter=3)
    assert stats.iterations == 3 and not stats.converged
    true = _true_rel_residual(physics, x, b, 100.0)
    assert abs(stats.residual - true) <= 1e-6 * true
    assert len(stats.history) == 4
    x0, s0 = regularised_solve(physics, b, 100.0, max_iter=0)
    assert s0.iterations == 0 and torch.equal(x0, torch.zeros_like(b)) and s0.residual == 1.0


def test_items_do_not_influence_each_other():
    """Each item stops at its own tolerance: batched results equal single-item solves although the items
    need very different iteration counts (a loose tol makes any extra iteration visible)."""
    physics, _ = _dense_physics(cond=600)
    b = _rand()
    gammas = torch.tensor([0.05, 20.0, 500.0], dtype=torch.float64)
    x, stats = regularised_solve(physics, b, gammas.reshape(3, 1, 1, 1), tol=1e-3)
    counts = []
    for i in range(3):
        xi, si = regularised_solve(physics, b[i : i + 1], gammas[i], tol=1e-3)
        counts.append(si.iterations)
        # items 0 and 1 stop after 2 and 9 iterations: 15 more would move them by ~1e-4; item 2 (condition
        # ~3e5) differs from its single solve by rounding only (batched matmul), amplified by CG
        atol = (1e-10 if i < 2 else 1e-5) * float(x[i].abs().max())
        assert torch.allclose(xi[0], x[i], rtol=0, atol=atol)
    assert stats.iterations == max(counts) and min(counts) < max(counts) - 3


def test_reaches_tolerances_where_deepinv_default_eps_stalls():
    """deepinv's CG with eps=1e-8 damps steps once p^H M p is small; ours reaches 1e-12 on a badly scaled rhs."""
    physics, A = _dense_physics(cond=600)
    b = 1e-5 * _rand()
    x, stats = regularised_solve(physics, b, 100.0, tol=1e-12, max_iter=400)
    ref = _dense_solve(A, b, 100.0)
    assert stats.converged
    assert float((x - ref).norm() / ref.norm()) < 1e-9


def test_start_image_solves_tikhonov_least_squares():
    physics, A = _dense_physics(cond=600)
    y = physics.A(_rand())
    eps = 1e-2
    x = start_image(y, physics, eps=eps, max_iter=200, tol=1e-13)
    M = A.T @ A + eps * torch.eye(N, dtype=A.dtype)
    ref = torch.linalg.solve(M, (y @ A).unsqueeze(-1)).reshape(x.shape)
    assert torch.allclose(x, ref, rtol=1e-8, atol=1e-10)
    assert torch.equal(start_image(y, physics, max_iter=0), physics.A_adjoint(y))
    # a caller's A^H y is used as is (no second adjoint)
    fake = torch.zeros_like(x)
    assert torch.equal(start_image(y, physics, max_iter=0, aty=fake), fake)


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda p, b: regularised_solve(p, b, -1.0), ValueError, "gamma must be finite and >= 0"),
        (lambda p, b: regularised_solve(p, b, float("nan")), ValueError, "gamma must be finite"),
        (lambda p, b: regularised_solve(p, b, 1.0, max_iter=True), ValueError, "max_iter must be an integer"),
        (lambda p, b: regularised_solve(p, b, 1.0, tol=float("nan")), ValueError, "tol must be a finite number"),
        (lambda p, b: regularised_solve(p, b, 1.0, init=b[:1]), ValueError, "init must be a tensor of the shape"),
        (lambda p, b: regularised_solve(object(), b, 1.0), TypeError, "A_adjoint_A"),
        (lambda p, b: regularised_solve(p, b.numpy(), 1.0), TypeError, "rhs must be a torch.Tensor"),
        (lambda p, b: start_image(p.A(b), p, eps=-1.0), ValueError, "eps must be a finite number >= 0"),
    ],
)
def test_bad_inputs(call, exc, match):
    physics, _ = _dense_physics()
    with pytest.raises(exc, match=match):
        call(physics, _rand())


def test_forcing_stops_at_a_fraction_of_the_initial_residual():
    physics, A = _dense_physics(cond=600)
    b = _rand()
    near = _dense_solve(A, b, 100.0) + 1e-2 * b
    x, stats = regularised_solve(physics, b, 100.0, init=near, tol=1e-12, forcing=0.3, max_iter=200)
    r0 = torch.tensor(stats.initial_residuals, dtype=torch.float64)
    r = (b - x - 100.0 * physics.A_adjoint_A(x)).flatten(1).norm(dim=1)
    assert stats.converged and bool((r <= 0.3 * r0 * (1 + 1e-6)).all())
    _, full = regularised_solve(physics, b, 100.0, init=near, tol=1e-12, max_iter=200)
    assert stats.iterations < full.iterations
    with pytest.raises(ValueError, match=r"forcing must be a number in \[0, 1\)"):
        regularised_solve(physics, b, 1.0, forcing=1.0)
