"""MOL: fixed point, uniqueness, implicit gradients, memory, physics coverage, training; the prior."""

import warnings

import deepinv as dinv
import pytest
import torch

from deepinv.optim.linear import conjugate_gradient

from deepinv_mol.bench.memory import bench_mol_vs_modl, saved_tensors_memory, training_step_memory
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL, MonotoneScorePrior

N = 16


def _phantom(batch=2, n=N):
    """Smooth positive complex phantoms (B, 2, n, n): ellipses with a phase."""
    ii, jj = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
    out = []
    for b in range(batch):
        img = ((ii**2 / 0.6 + (jj - 0.1 * b) ** 2 / 0.4) < 1).float() + 0.5 * (((ii - 0.2) ** 2 + jj**2) < 0.1).float()
        out.append(torch.stack([img, (0.3 + 0.2 * b) * img * jj.cos()]))
    return torch.stack(out)


def _mri(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, n, generator=g) < 0.25).float()
    mask[:, n // 2 - 2 : n // 2 + 2] = 1.0  # 4x-ish with a fully sampled centre
    return dinv.physics.MRI(mask=mask, img_size=(2, n, n))


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    return MonotoneCNN(width=8, depth=5, constraint="strict", lipschitz=0.99, **kw)


def _equation_residual(model, x, y, physics):
    """Relative residual of MOL's fixed-point equation F(x) + lambda A^H(Ax - y) = 0, per item (max)."""
    with torch.no_grad():
        lam = model.lambda_
        r = x - model.denoiser(x) + lam * physics.A_adjoint(physics.A(x) - y)
        scale = lam * physics.A_adjoint(y)
    return float((r.flatten(1).norm(dim=1) / scale.flatten(1).norm(dim=1)).max())


def _rel(a, b):
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).max())


@pytest.fixture
def problem():
    physics = _mri()
    x = _phantom()
    return physics, x, physics(x)


def test_solves_the_mol_equation_and_fixed_point_does_not_depend_on_alpha(problem):
    physics, _, y = problem
    net = _net().eval()
    sols = {}
    for alpha in (1.0, 0.3):
        # tol is on ||F(x) + lambda A^H(Ax - y)|| / ||x||: float32 floors it near 1.2e-6 here
        model = MOL(net, lambda_=10.0, alpha=alpha, tol=1e-5, max_iter=300)
        with torch.no_grad():
            sols[alpha] = model(y, physics)
        assert model.stats["converged"] and not model.stats["diverged"]
        assert model.stats["equation_residual"] <= 1e-5
        # the free residual (from CG's first residual) is the one computed from scratch
        assert abs(float(model.equation_residual(sols[alpha], y, physics).max()) - model.stats["equation_residual"]) < 5e-7
        assert _equation_residual(model, sols[alpha], y, physics) < 1e-4
    assert _rel(sols[0.3], sols[1.0]) < 1e-4


def test_uniqueness_from_different_starts(problem):
    """Several starts (CG init, zero, A^H y, noise, a scaled truth) converge to one point (rel. diff < 1e-3)."""
    physics, x, y = problem
    net = _net().eval()
    model = MOL(net, lambda_=10.0, tol=1e-5, max_iter=300)
    g = torch.Generator().manual_seed(5)
    starts = [None, torch.zeros_like(x), physics.A_adjoint(y), 3.0 * torch.randn(x.shape, generator=g), -2.0 * x]
    sols = []
    with torch.no_grad():
        for s in starts:
            sols.append(model(y, physics, init=s))
            assert model.stats["converged"]
    for s in sols[1:]:
        assert _rel(s, sols[0]) < 1e-3


def test_batch_of_two_equals_two_singles(problem):
    physics, _, y = problem
    model = MOL(_net().eval(), lambda_=10.0, tol=1e-5)
    with torch.no_grad():
        both = model(y, physics)
        singles = torch.cat([model(y[i : i + 1], physics) for i in range(2)])
    assert _rel(both, singles) < 1e-5


def test_implicit_gradient_matches_unrolled_autograd(problem, backward_anderson=5):
    """Implicit gradient w.r.t. the network weights and lambda vs plain autograd through 100 unrolled
    steps with exact data consistency (deepinv's CG to 1e-12): cosine > 0.99 and relative error < 1e-3
    (measured in float64 with Anderson(5) backward: cosine 1 - 1e-15, relative error 5e-8 over all
    parameters, 2.4e-7 for lambda alone)."""
    physics, x, y = problem
    net = _net(seed=1).double().train()
    y, x = y.double(), x.double()
    model = MOL(net, lambda_=3.0, tol=1e-9, max_iter=200,
                backward=dict(tol=1e-10, anderson=backward_anderson, max_iter=300),
                data_consistency=dict(backward_tol=1e-12, backward_max_iter=200))
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is model.raw_lambda for p in params)
    x0 = model.initialise(y, physics)
    aty = physics.A_adjoint(y)

    xk = x0
    for _ in range(100):  # brute force: autograd through every step and every CG iteration
        al = model.alpha_value() * model.lambda_value()
        xk = conjugate_gradient(lambda u: u + al * physics.A_adjoint_A(u), model.score_step(xk) + al * aty,
                                max_iter=50, tol=1e-12, eps=1e-30)
    ref = torch.autograd.grad(((xk - x) ** 2).sum(), params)

    x_hat = model(y, physics, init=x0)
    assert _rel(x_hat.detach(), xk.detach()) < 1e-8
    got = torch.autograd.grad(((x_hat - x) ** 2).sum(), params)
    assert model.stats["backward_converged"]
    flat_ref, flat_got = torch.cat([g.flatten() for g in ref]), torch.cat([g.flatten() for g in got])
    cos = torch.nn.functional.cosine_similarity(flat_got, flat_ref, dim=0)
    assert cos > 0.99
    assert (flat_got - flat_ref).norm() / flat_ref.norm() < 1e-3
    i = [j for j, p in enumerate(params) if p is model.raw_lambda][0]
    assert abs(float(got[i] / ref[i]) - 1) < 1e-3


def test_saved_for_backward_same_for_10_and_100_iterations(problem):
    physics, x, y = problem
    counts = []
    for n in (10, 100):
        model = MOL(_net().train(), lambda_=10.0, tol=0.0, max_iter=n, warn=False)
        mem = saved_tensors_memory(model, y, physics, x)
        assert model.stats["iterations"] == n and "backward_iterations" in model.stats
        counts.append(mem)
    assert counts[0] == counts[1] and counts[0]["saved_bytes"] > 0


def test_memory_smaller_than_modl_with_same_cnn(problem):
    physics, x, y = problem
    net = _net()
    mol = saved_tensors_memory(MOL(net, lambda_=10.0, tol=0.0, max_iter=10, warn=False), y, physics, x)
    modl = saved_tensors_memory(dinv.models.MoDL(denoiser=net, num_iter=10), y, physics, x)
    assert modl["saved_bytes"] > 5 * mol["saved_bytes"]


def test_bench_mol_vs_modl_rows():
    rows = bench_mol_vs_modl(img_size=16, num_iter=10, width=8, rss=False)
    assert [r["model"] for r in rows] == ["MOL", "MoDL", "ratio MoDL/MOL"]
    assert rows[2]["saved_bytes"] == rows[1]["saved_bytes"] / rows[0]["saved_bytes"] > 5


@pytest.mark.slow
def test_peak_rss_in_subprocess_grows_with_unrolled_depth():
    from deepinv_mol.bench.memory import _modl_setup

    small = training_step_memory(_modl_setup, img_size=96, num_iter=2, width=16)
    large = training_step_memory(_modl_setup, img_size=96, num_iter=12, width=16)
    assert large["saved_bytes"] > 4 * small["saved_bytes"]
    # the OS view agrees with the saved-tensor count to within allocator slack
    assert large["peak_rss_increase"] - small["peak_rss_increase"] > 0.5 * (large["saved_bytes"] - small["saved_bytes"])


def test_non_convergence_warns_and_is_recorded(problem):
    physics, _, y = problem
    model = MOL(_net().eval(), lambda_=10.0, alpha=0.05, anderson=0, tol=1e-8, max_iter=3)
    with pytest.warns(RuntimeWarning, match=r"MOL fixed-point solve did not converge.*max_iter=3"):
        model(y, physics)
    assert model.stats["iterations"] == 3 and not model.stats["converged"]


def test_jfb_backward_reaches_parameters_without_adjoint_solve(problem):
    physics, x, y = problem
    model = MOL(_net().train(), lambda_=10.0, backward="jfb")
    ((model(y, physics) - x) ** 2).sum().backward()
    assert model.raw_lambda.grad is not None and torch.isfinite(model.raw_lambda.grad)
    assert all(p.grad is not None for p in model.denoiser.parameters())
    assert "backward_iterations" not in model.stats


def test_positive_parameters_and_learnable_alpha(problem):
    physics, x, y = problem
    model = MOL(_net().train(), lambda_=0.5, alpha=0.5, learn_alpha=True)
    assert abs(float(model.lambda_) - 0.5) < 1e-6 and abs(float(model.alpha) - 0.5) < 1e-6
    ((model(y, physics) - x) ** 2).sum().backward()
    assert model.raw_alpha.grad is not None and float(model.raw_alpha.grad) != 0.0
    with torch.no_grad():
        model.raw_lambda.fill_(-50.0)
        model.raw_alpha.fill_(40.0)
    assert float(model.lambda_) > 0 and 0 < float(model.alpha) <= 1


def _physics_case(name):
    g = torch.Generator().manual_seed(0)
    if name == "mri":
        return _mri(), _phantom(1), _net()
    if name == "multicoil-mri":
        mask = (torch.rand(N, N, generator=g) < 0.4).float()
        ii, jj = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
        maps = torch.stack([torch.exp(-((ii - a) ** 2 + (jj - b) ** 2)) * torch.exp(1j * (a * ii + b * jj))
                            for a, b in ((-1, 0), (1, 0.5), (0, -1))])
        maps = maps / maps.abs().pow(2).sum(0).sqrt()  # sum of squares = 1
        physics = dinv.physics.MultiCoilMRI(mask=mask, coil_maps=maps, img_size=(N, N))
        return physics, _phantom(1), _net()
    if name == "mri-3d":
        mask = (torch.rand(4, N, N, generator=g) < 0.4).float()
        physics = dinv.physics.MRI(mask=mask, img_size=(2, 4, N, N), three_d=True)
        return physics, _phantom(4).permute(1, 0, 2, 3)[None], _net(dims=3)
    if name == "mri-2d+t":
        mask = (torch.rand(1, 1, 4, N, N, generator=g) < 0.3).float()
        physics = dinv.physics.DynamicMRI(mask=mask, img_size=(2, 4, N, N))
        return physics, _phantom(4).permute(1, 0, 2, 3)[None], _net(dims=3)
    if name == "blur":
        physics = dinv.physics.Blur(dinv.physics.blur.gaussian_blur(sigma=1.0), padding="circular")
        return physics, _phantom(1)[:, :1], _net(channels=1)
    if name == "tomography":
        physics = dinv.physics.Tomography(angles=8, img_width=N)
        return physics, _phantom(1)[:, :1], _net(channels=1)
    raise ValueError(name)


@pytest.mark.parametrize("name", ["mri", "multicoil-mri", "mri-3d", "mri-2d+t", "blur", "tomography"])
def test_any_linear_physics(name):
    physics, x, net = _physics_case(name)
    y = physics(x)
    model = MOL(net.eval(), lambda_=10.0, tol=1e-5, max_iter=200)
    with torch.no_grad():
        x_hat = model(y, physics)
    assert x_hat.shape == x.shape
    assert model.stats["converged"]
    assert _equation_residual(model, x_hat, y, physics) < 1e-3


class _Images(torch.utils.data.Dataset):
    def __init__(self, xs):
        self.xs = xs

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        return self.xs[i]


def test_trains_with_deepinv_trainer(problem, tmp_path):
    physics, _, _ = problem
    torch.manual_seed(0)
    xs = torch.cat([_phantom(2), _phantom(2).flip(-1), _phantom(2).flip(-2)])
    loader = torch.utils.data.DataLoader(_Images(xs), batch_size=3)
    model = MOL(_net().train(), lambda_=1.0, tol=1e-4, max_iter=50, warn=False)

    def loss_now():
        with torch.no_grad():
            return float(torch.nn.functional.mse_loss(model(physics(xs), physics), xs))

    before = loss_now()
    trainer = dinv.Trainer(
        model, physics, torch.optim.Adam(model.parameters(), lr=1e-2), loader, epochs=4,
        losses=dinv.loss.SupLoss(), online_measurements=True, save_path=str(tmp_path), verbose=False,
        show_progress_bar=False, compute_train_metrics=False, metrics=[],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    after = loss_now()
    assert after < 0.9 * before


def test_bad_input_raises(problem):
    physics, x, y = problem
    with pytest.raises(ValueError, match="lambda_"):
        MOL(_net(), lambda_=0.0)
    with pytest.raises(ValueError, match="alpha"):
        MOL(_net(), alpha=-1.0)
    with pytest.raises(ValueError, match="backward"):
        MOL(_net(), backward="unrolled")
    with pytest.raises(ValueError, match="anderson"):
        MOL(_net(), anderson=-2)
    model = MOL(_net(), lambda_=10.0)
    with pytest.raises(ValueError, match="image shape"):
        model(y, physics, init=x[:, :1])
    with pytest.raises(TypeError, match="LinearPhysics"):
        model(y, object())
    with pytest.raises(TypeError, match="measurements"):
        model(y.numpy(), physics)


# --- MonotoneScorePrior ------------------------------------------------------------------------


def test_prior_grad_and_resolvent():
    net = _net().eval()
    prior = MonotoneScorePrior(net)
    x = _phantom()
    assert torch.allclose(prior.grad(x, 0.1), x - net(x))
    p = prior.prox(x, 0.1, gamma=2.0)
    assert prior.stats["converged"] and prior.prox_stats is prior.stats
    with torch.no_grad():
        assert _rel(p + 2.0 * prior.grad(p), x) < 1e-4


@pytest.mark.parametrize("algo", ["GD", "PGD"])
def test_prior_in_deepinv_optimisers_reaches_mols_fixed_point(problem, algo):
    """deepinv's GD (gradient steps on F) and PGD (resolvent of F) with lambda_reg = 1/lambda converge to
    MOL's fixed point: both solve F(x) + lambda A^H(Ax - y) = 0."""
    physics, _, y = problem
    net = _net().eval()
    lam = 1.0
    with torch.no_grad():
        x_mol = MOL(net, lambda_=lam, tol=1e-5, max_iter=500)(y, physics)
        solver = getattr(dinv.optim, algo)(
            prior=MonotoneScorePrior(net), data_fidelity=dinv.optim.L2(), lambda_reg=1.0 / lam,
            stepsize=0.6 if algo == "GD" else 1.0, max_iter=120 if algo == "GD" else 40, early_stop=False,
        )
        x_opt = solver(y, physics)
    assert _rel(x_opt, x_mol) < 1e-3


def test_prior_bad_gamma():
    with pytest.raises(ValueError, match="gamma"):
        MonotoneScorePrior(_net()).prox(_phantom(), gamma=0.0)


# --- ill-conditioned problem: what `converged` certifies, Anderson's safeguard (issue 12) ---------------


def _ill_conditioned(seed=0, rows=40, side=8, cond=600.0):
    """Compressed-sensing-like dense operator (rows < n = side^2) with singular values from 1 to 1/cond,
    float64; a strict MonotoneCNN with certified Lip(H) = 0.9; lambda = 100."""
    n = side * side
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(rows, n, generator=g, dtype=torch.float64)
    U, _, Vh = torch.linalg.svd(A, full_matrices=False)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), rows, dtype=torch.float64)
    A = (U * s) @ Vh
    physics = dinv.physics.LinearPhysics(
        A=lambda x: x.reshape(x.shape[0], -1) @ A.T, A_adjoint=lambda y: (y @ A).reshape(y.shape[0], 1, side, side)
    )
    torch.manual_seed(seed)
    net = MonotoneCNN(channels=1, width=8, depth=3, constraint="strict", lipschitz=0.9).double().eval()
    x = torch.rand(2, 1, side, side, generator=g, dtype=torch.float64)
    y = physics.A(x) + 0.01 * torch.randn(2, rows, generator=g, dtype=torch.float64)
    lam = 100.0
    # the fixed point by the exact map with a dense inverse, to rounding
    Minv = torch.linalg.inv(torch.eye(n, dtype=torch.float64) + lam * A.T @ A)
    aty, xs = physics.A_adjoint(y), physics.A_adjoint(y)
    with torch.no_grad():
        for _ in range(600):  # contraction 0.9: 0.9^600 ~ 1e-28
            xs = (Minv @ (net(xs) + lam * aty).reshape(2, n, 1)).reshape(xs.shape)
    return physics, net, y, lam, xs, float(torch.linalg.cond(A))


@pytest.mark.parametrize("anderson", [0, 5])
@pytest.mark.parametrize("dc", [{}, dict(forcing=0.5, max_iter=3), dict(forcing=0.0, max_iter=5)])
def test_converged_certifies_distance_to_dense_fixed_point(anderson, dc):
    """Condition number 600 > 500: whenever stats["converged"], ||x - x*|| <= ||F(x) + lam A^H(Ax - y)|| / m
    (m = 1 - Lip(H)), whatever the accuracy of the CG solves (here also 3 loose CG iterations a step)."""
    physics, net, y, lam, x_star, cond = _ill_conditioned()
    assert cond > 500
    m = 1.0 - float(net.lipschitz_bound())
    assert abs(m - 0.1) < 1e-6
    for tol in (1e-3, 1e-4, 1e-6, 1e-9):
        model = MOL(net, lambda_=lam, tol=tol, max_iter=3000, anderson=anderson, data_consistency=dc, warn=False).double()
        with torch.no_grad():
            x = model(y, physics)
        assert model.stats["converged"]  # not vacuous
        eq = model.equation_residual(x, y, physics)  # from scratch, per item
        assert float(eq.max()) <= tol * (1 + 1e-6)
        assert abs(float(eq.max()) - model.stats["equation_residual"]) <= 1e-6 * tol + 1e-13
        dist = (x - x_star).flatten(1).norm(dim=1)
        bound = eq * x.flatten(1).norm(dim=1) / m
        assert bool((dist <= bound).all()), (tol, dist, bound)


def test_anderson_safeguard_on_ill_conditioned_problem():
    """Anderson with the default (tied) CG is never slower than plain iteration by more than one safeguard
    window; with loose CG steps (3 iterations, forcing 0.5), where Anderson alone is 1.5x slower than
    plain, the safeguard restarts it and cuts the excess."""
    physics, net, y, lam, _, _ = _ill_conditioned()

    def iterations(anderson, dc=None, **kw):
        model = MOL(net, lambda_=lam, tol=1e-9, max_iter=3000, anderson=anderson, data_consistency=dc, warn=False).double()
        with torch.no_grad():
            if kw:
                from deepinv_mol import equilibrium as eqm

                orig = eqm.fixed_point
                eqm.fixed_point = lambda *a, **k: orig(*a, **{**k, **kw})
                try:
                    model(y, physics)
                finally:
                    eqm.fixed_point = orig
            else:
                model(y, physics)
        assert model.stats["converged"]
        return model.stats["iterations"], model.stats["restarts"]

    plain, _ = iterations(0)
    accel, _ = iterations(5)
    assert accel <= plain + 10  # stall_patience = 2 m = 10
    loose = dict(forcing=0.5, max_iter=3)
    plain, _ = iterations(0, loose)
    guarded, restarts = iterations(5, loose)
    unguarded, none = iterations(5, loose, stall_patience=10**6)
    assert none == 0 and restarts >= 1
    assert guarded < unguarded and unguarded > 1.4 * plain


def test_deepinv_test_with_convergence_metrics(tmp_path):
    """deepinv.test(..., plot_convergence_metrics=True) passes x_gt and compute_metrics=True and expects
    (x, metrics) with per-item per-iteration lists (deepinv's MoDL convention)."""
    import matplotlib

    matplotlib.use("Agg")
    physics = _mri()
    xs = _phantom(2)
    loader = torch.utils.data.DataLoader(_Images(xs), batch_size=2)
    model = MOL(_net().eval(), lambda_=10.0, tol=1e-5, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = dinv.test(model, loader, physics, online_measurements=True, plot_convergence_metrics=True,
                        save_folder=str(tmp_path), show_progress_bar=False, verbose=False, plot_images=False)
    assert "PSNR" in out and out["PSNR"] > 10
    with torch.no_grad():
        y = physics(xs)
        x_hat, metrics = model(y, physics, x_gt=xs, compute_metrics=True)
    n = model.stats["iterations"]
    assert set(metrics) == {"psnr", "residual"}
    assert all(len(metrics["residual"][i]) == n and len(metrics["psnr"][i]) == n for i in range(2))
    assert max(metrics["residual"][i][-1] for i in range(2)) == pytest.approx(model.stats["equation_residual"], rel=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword"):
        model(y, physics, foo=1)


def test_denoiser_called_once_per_reported_iteration(problem):
    physics, _, y = problem
    net = _net().eval()
    calls = [0]
    net.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    model = MOL(net, lambda_=10.0, tol=1e-5)
    adj = [0]
    orig = physics.A_adjoint
    physics.A_adjoint = lambda *a, **k: (adj.__setitem__(0, adj[0] + 1), orig(*a, **k))[1]
    with torch.no_grad():
        model(y, physics)
    assert calls[0] == model.stats["iterations"]
    assert adj[0] == 1  # A^H y once (start image and data consistency share it)


def test_get_config_rebuilds_identical_model(problem):
    import json

    physics, _, y = problem
    model = MOL(_net().eval(), lambda_=7.0, alpha=0.5, learn_alpha=True, anderson=3,
                backward=dict(mode="jfb", tol=1e-4), data_consistency=dict(max_iter=30))
    cfg = json.loads(json.dumps(model.get_config()))
    clone = MOL(denoiser=_net(seed=3).eval(), **cfg)
    clone.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(clone(y, physics), model(y, physics))
    assert clone.get_config() == model.get_config()
    # the manifest's keys keep working
    MOL(_net(), lambda_=2.0, alpha=1.0, max_iter=50, tol=1e-4, anderson=True)


# --- the package's own physics (issue 11/12): NufftMRI and AstraCT from the task registry --------------


def _task_problem(name):
    from deepinv_mol.tasks import get_task

    if name == "nufft":
        task = get_task("mri-radial-4x", n_coils=2)
        lam, channels = 2.0, 2
    else:
        task = get_task("ct-sparse-view", views=16, source="embedded")
        lam, channels = 0.05, 1
    physics = task.build_physics((32, 32))
    x = torch.nn.functional.interpolate(_phantom(1, 32)[:, :channels], size=(32, 32))
    y = task.simulate(x, physics, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    net = MonotoneCNN(channels=channels, width=8, depth=3, constraint="strict", lipschitz=0.9)
    return physics, x, y, lam, net


@pytest.mark.parametrize("name", ["nufft", "astra"])
def test_on_package_physics_converges_and_implicit_gradient_matches_unrolled(name):
    from deepinv_mol.optim.data_consistency import regularised_solve

    physics, x, y, lam, net = _task_problem(name)
    model = MOL(net.train(), lambda_=lam, tol=1e-5, max_iter=200, backward=dict(tol=1e-7, max_iter=300))
    x_hat = model(y, physics)
    assert model.stats["converged"] and model.stats["equation_residual"] <= 1e-5
    assert float(model.equation_residual(x_hat.detach(), y, physics).max()) <= 2e-5
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(((x_hat - x) ** 2).sum(), params)
    assert model.stats["backward_converged"]

    # brute force: autograd through 80 unrolled exact steps (contraction 0.9: 0.9^80 ~ 2e-4)
    aty = physics.A_adjoint(y)
    xk = model.initialise(y, physics)
    for _ in range(80):
        al = model.alpha_value() * model.lambda_value()
        xk, _ = regularised_solve(physics, model.score_step(xk) + al * aty, al, init=xk.detach(), tol=1e-7, max_iter=200)
    ref = torch.autograd.grad(((xk - x) ** 2).sum(), params)
    flat_got, flat_ref = torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in ref])
    assert float(torch.nn.functional.cosine_similarity(flat_got, flat_ref, dim=0)) > 0.99
    assert float((flat_got - flat_ref).norm() / flat_ref.norm()) < 0.05


def test_tol_zero_stops_cg_at_the_precision_floor(problem):
    """tol=0 runs exactly max_iter iterations; once the iterate has converged to float32 precision its
    data-consistency solves cost nothing (CG stops at 10 eps, not only by the forcing term)."""
    physics, _, y = problem
    net = _net().eval()
    runs = {}
    for iters in (40, 80):
        model = MOL(net, lambda_=10.0, tol=0.0, max_iter=iters, warn=False)
        with torch.no_grad():
            runs[iters] = (model(y, physics), model.stats)
    (x40, s40), (x80, s80) = runs[40], runs[80]
    assert s40["iterations"] == 40 and s80["iterations"] == 80
    assert _rel(x80, x40) < 1e-5
    # the 40 extra outer iterations add (almost) no CG iterations; the forcing term alone would add >= 40
    assert s80["cg_iterations"] - s40["cg_iterations"] <= 4, (s40["cg_iterations"], s80["cg_iterations"])
