"""The fixed-point / implicit-differentiation engine: convergence, divergence, gradients, memory."""

import warnings

import pytest
import torch

from deepinv_mol.equilibrium import BackwardConfig, EquilibriumStats, SolverStats, equilibrium, fixed_point


def _contraction(n=40, batch=2, rho=0.95, seed=0, requires_grad=False):
    """f(z) = W z + 0.05 sin(z) + b with ||W||_2 = rho - 0.05: a nonlinear contraction with factor
    at most rho, and close to it (the linear part dominates)."""
    g = torch.Generator().manual_seed(seed)
    # symmetric, eigenvalues spread over [-(rho - 0.05), rho - 0.05]: slow modes near the bound
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    W = Q @ torch.diag(torch.linspace(-(rho - 0.05), rho - 0.05, n, dtype=torch.float64)) @ Q.T
    b = torch.randn(batch, n, generator=g, dtype=torch.float64)
    W.requires_grad_(requires_grad)
    b.requires_grad_(requires_grad)
    return W, b, (lambda z: z @ W.T + 0.05 * torch.sin(z) + b)


def _saved_bytes(fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0, 0]

    def pack(t):
        total[0] += 1
        total[1] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], total[1], out


def test_anderson_needs_fewer_iterations_than_plain():
    _, b, f = _contraction(rho=0.95)
    z_plain, s_plain = fixed_point(f, torch.zeros_like(b), tol=1e-8, max_iter=2000)
    z_and, s_and = fixed_point(f, torch.zeros_like(b), tol=1e-8, max_iter=2000, anderson=5)
    assert s_plain.converged and s_and.converged
    assert s_and.iterations < s_plain.iterations / 2  # measured: 60 vs 147
    assert torch.allclose(z_plain, z_and, atol=1e-6)
    # the returned point is a fixed point to the stated tolerance
    assert ((f(z_and) - z_and).norm(dim=1) / f(z_and).norm(dim=1)).max() <= 1e-7
    assert len(s_and.history) == s_and.iterations and s_and.residual <= 1e-8


def test_divergence_detected_on_expansive_map():
    f = lambda z: 2.0 * z + 1.0  # Lipschitz 2: plain iteration runs away from the fixed point -1
    z0 = torch.ones(3, 4)
    z, stats = fixed_point(f, z0, max_iter=1000, tol=1e-6)
    assert stats.diverged and not stats.converged
    assert stats.iterations < 100  # stopped early, not at the cap
    assert torch.isfinite(z).all()
    # the best iterate is returned (the first step, smallest residual), not the last one
    assert torch.allclose(z, f(z0))


def test_divergence_to_infinity_returns_finite_best_iterate():
    f = lambda z: z * z + 2.0
    z, stats = fixed_point(f, torch.full((2, 3), 2.0), max_iter=100, tol=1e-6, stop_on_divergence=False)
    assert stats.diverged and torch.isfinite(z).all()


def test_equilibrium_warns_on_divergence_and_non_convergence():
    with pytest.warns(RuntimeWarning, match="diverged"):
        _, stats = equilibrium(lambda z: 2.0 * z + 1.0, torch.ones(2, 3), max_iter=500)
    assert stats.as_dict()["diverged"] and not stats.as_dict()["converged"]
    _, b, f = _contraction(rho=0.99)
    with pytest.warns(RuntimeWarning, match=r"did not converge.*max_iter=5"):
        _, stats = equilibrium(f, torch.zeros_like(b), max_iter=5, tol=1e-8)
    d = stats.as_dict()
    assert d["iterations"] == 5 and not d["converged"] and d["residual"] > 1e-8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        equilibrium(f, torch.zeros_like(b), max_iter=5, tol=1e-8, warn=False)


@pytest.mark.parametrize("anderson_backward", [0, 5])
def test_implicit_gradient_matches_long_unrolled_autograd(anderson_backward):
    W, b, f = _contraction(rho=0.9, requires_grad=True)
    target = torch.randn(b.shape, generator=torch.Generator().manual_seed(1), dtype=b.dtype)

    z = torch.zeros_like(b)
    for _ in range(400):  # brute force: autograd through a long unrolled solve
        z = f(z)
    ((z - target) ** 2).sum().backward()
    gW_ref, gb_ref = W.grad.clone(), b.grad.clone()
    W.grad = b.grad = None

    cfg = BackwardConfig(mode="implicit", tol=1e-10, max_iter=500, anderson=anderson_backward)
    z_deq, stats = equilibrium(f, torch.zeros_like(b), tol=1e-10, max_iter=500, anderson=5, backward=cfg)
    assert torch.allclose(z_deq, z, atol=1e-8)
    ((z_deq - target) ** 2).sum().backward()
    for g, ref in ((W.grad, gW_ref), (b.grad, gb_ref)):
        cos = torch.nn.functional.cosine_similarity(g.flatten(), ref.flatten(), dim=0)
        assert cos > 0.999
        assert (g - ref).norm() / ref.norm() < 1e-6
    d = stats.as_dict()
    assert d["backward_converged"] and d["backward_residual"] <= 1e-10
    if anderson_backward:
        assert d["backward_iterations"] < 100


def test_jfb_gradient_is_the_last_step_gradient():
    W, b, f = _contraction(rho=0.9, requires_grad=True)
    z, stats = equilibrium(f, torch.zeros_like(b), tol=1e-10, max_iter=500, backward="jfb")
    z.sum().backward()
    g_jfb = W.grad.clone()
    W.grad = None
    f(z.detach()).sum().backward()  # one step from the (detached) fixed point
    assert torch.allclose(g_jfb, W.grad, atol=1e-10)
    assert stats.backward is None and "backward_iterations" not in stats.as_dict()


@pytest.mark.parametrize("mode", ["implicit", "jfb"])
def test_saved_for_backward_independent_of_forward_iterations(mode):
    W, b, f = _contraction(rho=0.99, requires_grad=True)
    counts = []
    for n in (10, 100):
        count, nbytes, (z, stats) = _saved_bytes(
            lambda: equilibrium(f, torch.zeros_like(b), tol=0.0, max_iter=n, backward=mode, warn=False)
        )
        assert stats.forward.iterations == n
        counts.append((count, nbytes))
        z.sum().backward()
    assert counts[0] == counts[1] and counts[0][0] > 0


def test_backward_non_convergence_warns_and_is_recorded():
    W, b, f = _contraction(rho=0.99, requires_grad=True)
    cfg = BackwardConfig(tol=1e-12, max_iter=3)
    z, stats = equilibrium(f, torch.zeros_like(b), tol=1e-9, max_iter=3000, anderson=5, backward=cfg)
    with pytest.warns(RuntimeWarning, match=r"adjoint.*max_iter=3"):
        z.sum().backward()
    d = stats.as_dict()
    assert d["backward_iterations"] == 3 and not d["backward_converged"]


def test_batch_items_do_not_influence_each_other():
    _, b, f = _contraction(rho=0.95, batch=3)
    z, _ = fixed_point(f, torch.zeros_like(b), tol=1e-6, max_iter=1000, anderson=4)
    for i in range(3):
        W_i, b_i, _ = _contraction(rho=0.95, batch=3)
        fi = lambda zz, bi=b_i[i : i + 1], W=W_i: zz @ W.T + 0.05 * torch.sin(zz) + bi
        zi, _ = fixed_point(fi, torch.zeros_like(b_i[i : i + 1]), tol=1e-6, max_iter=1000, anderson=4)
        assert torch.allclose(z[i : i + 1], zi, atol=1e-12)


def test_complex_and_image_shaped_tensors():
    g = torch.Generator().manual_seed(3)
    c = torch.randn(2, 1, 5, 5, generator=g, dtype=torch.complex128)
    f = lambda z: 0.7 * z * torch.exp(1j * torch.ones(1, dtype=torch.float64)) / 1.0 + c
    z, stats = fixed_point(f, torch.zeros_like(c), tol=1e-10, max_iter=500, anderson=3)
    assert stats.converged and torch.allclose(f(z), z, atol=1e-9)


def test_stats_objects():
    s = SolverStats(iterations=3, residual=0.1, converged=False)
    assert s.as_dict("b_") == {"b_iterations": 3, "b_residual": 0.1, "b_converged": False, "b_diverged": False}
    e = EquilibriumStats(s)
    assert set(e.as_dict()) == {"iterations", "residual", "converged", "diverged"}


def test_bad_arguments_raise():
    z0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="max_iter"):
        fixed_point(lambda z: z, z0, max_iter=0)
    with pytest.raises(ValueError, match="anderson"):
        fixed_point(lambda z: z, z0, anderson=-1)
    with pytest.raises(ValueError, match="beta"):
        fixed_point(lambda z: z, z0, beta=0.0)
    with pytest.raises(ValueError, match="preserve the shape"):
        fixed_point(lambda z: z[:, :2], z0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        fixed_point(lambda z: z, [0.0])
    with pytest.raises(ValueError, match="backward mode"):
        equilibrium(lambda z: z, z0, backward="phantom")
    with pytest.raises(TypeError, match="BackwardConfig"):
        equilibrium(lambda z: z, z0, backward=3)
