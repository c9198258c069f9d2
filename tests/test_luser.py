"""LUSER (unrolled loop with shallow equilibrium regularizers) and its feed-forward twin."""

import deepinv as dinv
import pytest
import torch
from torch import nn

from deepinv_mol.bench.memory import saved_tensors_memory
from deepinv_mol.models import FeedForwardRegularizer, ShallowEquilibrium
from deepinv_mol.optim import LUSER, UnrolledFeedForward

SMALL = dict(width=6, contraction=0.8, tol=1e-4)


pytestmark = pytest.mark.usefixtures("one_thread")


class Identity(nn.Module):
    """A regularizer that does nothing: isolates the data-consistency steps."""

    def forward(self, x, sigma=None):
        return x


def _physics(name, rng):
    if name == "blur":
        physics = dinv.physics.BlurFFT((1, 12, 12), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
        return physics, torch.rand(2, 1, 12, 12, generator=rng)
    if name == "mri":
        mask = (torch.rand(12, 12, generator=rng) < 0.4).float()
        physics = dinv.physics.MRI(mask=mask, img_size=(2, 12, 12))
        return physics, torch.randn(2, 2, 12, 12, generator=rng)
    if name == "ct":
        physics = dinv.physics.Tomography(angles=10, img_width=12, normalize=True)
        return physics, torch.rand(2, 1, 12, 12, generator=rng)
    if name == "mri3d":
        mask = (torch.rand(6, 8, 8, generator=rng) < 0.5).float()
        physics = dinv.physics.MRI(mask=mask, img_size=(2, 6, 8, 8), three_d=True)
        return physics, torch.randn(1, 2, 6, 8, 8, generator=rng)
    raise KeyError(name)


@pytest.mark.parametrize("name", ["blur", "mri", "ct", "mri3d"])
@pytest.mark.parametrize("dc", ["gradient", "cg"])
def test_reconstructs_with_any_linear_physics(name, dc, rng):
    physics, x = _physics(name, rng)
    y = physics(x)
    model = LUSER(num_iter=2, channels=x.shape[1], dims=x.ndim - 2, data_consistency=dc, regularizer_kwargs=SMALL)
    x_hat = model(y, physics)
    assert x_hat.shape == x.shape and torch.isfinite(x_hat).all()
    stats = model.stats
    assert stats["steps"] == 2 and len(stats["iterations_per_step"]) == 2 and stats["converged"]
    assert stats["iterations"] == sum(stats["iterations_per_step"])


def test_gradient_steps_are_landweber_iterations(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)
    model = LUSER(num_iter=4, regularizer=Identity(), shared=True, step_size=0.7, data_consistency="gradient",
                  init="adjoint")
    ref = physics.A_adjoint(y)
    for _ in range(4):
        ref = ref - 0.7 * physics.A_adjoint(physics.A(ref) - y)
    assert torch.allclose(model(y, physics), ref, atol=1e-6)


def test_cg_step_is_the_proximal_point(rng):
    physics, x = _physics("mri", rng)
    y = physics(x)
    eta = 0.5
    model = LUSER(num_iter=1, regularizer=Identity(), shared=True, step_size=eta, data_consistency="cg",
                  cg_max_iter=50, cg_tol=1e-10)
    x0 = torch.randn(x.shape, generator=rng)
    x1 = model(y, physics, init=x0)
    # optimality of argmin 1/2||Ax - y||^2 + 1/(2 eta)||x - x0||^2: (I + eta A^H A) x1 = x0 + eta A^H y
    lhs = x1 + eta * physics.A_adjoint(physics.A(x1))
    rhs = x0 + eta * physics.A_adjoint(y)
    assert (lhs - rhs).norm() / rhs.norm() < 1e-5


def test_cg_start_solves_regularised_least_squares(rng):
    physics, x = _physics("ct", rng)
    y = physics(x)
    model = LUSER(num_iter=1, regularizer=Identity(), init="cg", init_eps=1e-2, init_max_iter=200, cg_tol=1e-8)
    x0 = model.initial_point(y, physics)
    residual = physics.A_adjoint(physics.A(x0)) + 1e-2 * x0 - physics.A_adjoint(y)
    assert residual.norm() / physics.A_adjoint(y).norm() < 1e-4


def test_step_sizes_positive_and_auto():
    class Scaled(dinv.physics.LinearPhysics):
        def A(self, x, **kw):
            return 3.0 * x

        def A_adjoint(self, y, **kw):
            return 3.0 * y

    physics = Scaled()
    model = LUSER(num_iter=3, regularizer=Identity(), shared=True, step_size="auto", data_consistency="gradient")
    y = torch.randn(2, 1, 8, 8)
    model(y, physics)
    assert torch.allclose(model.step_sizes, torch.full((3,), 1.0 / 9.0), rtol=1e-3)
    with torch.no_grad():
        model.log_step_size.fill_(-50.0)
    assert (model.step_sizes > 0).all()
    # "auto" happens once: a later call keeps the (learned) values
    model(y, physics)
    assert float(model.log_step_size.detach()[0]) == -50.0


def test_shared_and_untied_regularizers():
    untied = LUSER(num_iter=3, channels=1, regularizer_kwargs=SMALL)
    shared = LUSER(num_iter=3, channels=1, shared=True, regularizer_kwargs=SMALL)
    n_reg = sum(p.numel() for p in shared.regularizers.parameters())
    assert len(untied.regularizers) == 3 and len(shared.regularizers) == 1
    assert sum(p.numel() for p in untied.parameters()) == 3 * n_reg + 3
    assert shared.regularizer(0) is shared.regularizer(2)
    assert untied.regularizer(0) is not untied.regularizer(2)
    # a given module is copied into untied steps, not shared by reference
    reg = ShallowEquilibrium(channels=1, **SMALL)
    model = LUSER(num_iter=2, regularizer=reg)
    assert model.regularizer(0) is reg and model.regularizer(1) is not reg
    assert torch.equal(model.regularizer(1).inject.weight, reg.inject.weight)


def test_backward_stats_and_gradients(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)
    model = LUSER(num_iter=2, channels=1, data_consistency="cg", regularizer_kwargs=SMALL)
    loss = (model(y, physics) - x).pow(2).mean()
    assert "backward_iterations" not in model.stats
    loss.backward()
    stats = model.stats
    assert stats["backward_converged"] and stats["backward_iterations"] >= 2
    assert model.log_step_size.grad is not None and torch.isfinite(model.log_step_size.grad).all()
    for reg in model.regularizers:
        assert all(p.grad is not None for p in reg.parameters())


def test_twin_shares_the_loop_and_has_no_inner_solves(rng):
    physics, x = _physics("blur", rng)
    twin = UnrolledFeedForward(num_iter=2, channels=1, regularizer_kwargs=dict(width=6, depth=4))
    assert isinstance(twin, LUSER) and type(twin).forward is LUSER.forward
    assert all(isinstance(r, FeedForwardRegularizer) for r in twin.regularizers)
    assert twin(physics(x), physics).shape == x.shape
    assert twin.stats["steps"] == 2 and twin.stats["iterations"] is None and twin.stats["converged"] is None


def test_saved_tensors_do_not_grow_with_inner_iterations(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)

    def measure(max_iter, num_iter=2):
        torch.manual_seed(0)
        kw = dict(SMALL, max_iter=max_iter, tol=0.0, warn=False)
        model = LUSER(num_iter=num_iter, channels=1, regularizer_kwargs=kw)
        row = saved_tensors_memory(model, y, physics, x)
        assert model.stats["iterations_per_step"] == [max_iter] * num_iter
        return row

    assert measure(10) == measure(50)
    # per unrolled step: each step adds the same saved tensors
    one, two, three = (measure(10, k) for k in (1, 2, 3))
    assert two["saved_count"] - one["saved_count"] == three["saved_count"] - two["saved_count"] > 0


def test_luser_saves_less_than_its_feedforward_twin(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)
    # 3x3 kernels like the twin's DnCNN: on 12x12 images the 5x5 weights would dominate the saved bytes
    luser = LUSER(num_iter=3, channels=1, regularizer_kwargs=dict(width=8, contraction=0.8, kernel_size=3))
    twin = UnrolledFeedForward(num_iter=3, channels=1, regularizer_kwargs=dict(width=8, depth=20))
    a = saved_tensors_memory(luser, y, physics, x)["saved_bytes"]
    b = saved_tensors_memory(twin, y, physics, x)["saved_bytes"]
    assert b > 4 * a


def test_inner_non_convergence_warns_and_is_aggregated(rng):
    physics, x = _physics("blur", rng)
    model = LUSER(num_iter=2, channels=1, regularizer_kwargs=dict(width=6, max_iter=1, tol=1e-14, anderson=0))
    with pytest.warns(RuntimeWarning, match="converge"):
        model(physics(x), physics)
    assert model.stats["converged"] is False and model.stats["iterations"] == 2


def test_trainer_lowers_the_loss(rng, tmp_path):
    physics, _ = _physics("blur", rng)
    x = torch.rand(8, 1, 12, 12, generator=rng)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # smooth images: something to learn
    class Images(torch.utils.data.Dataset):  # deepinv's dict format: the image alone
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i]}

    loader = torch.utils.data.DataLoader(Images(), batch_size=4, shuffle=False)
    model = LUSER(num_iter=2, channels=1, shared=True, regularizer_kwargs=dict(width=8, contraction=0.8))
    y = physics(x)

    def mse():
        with torch.no_grad():
            return float((model(y, physics) - x).pow(2).mean())

    before = mse()
    trainer = dinv.Trainer(
        model,
        physics=physics,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        train_dataloader=loader,
        epochs=5,
        online_measurements=True,
        save_path=str(tmp_path),
        verbose=False,
        show_progress_bar=False,
        plot_images=False,
        compute_train_metrics=False,
    )
    trainer.train()
    # the CG start and CG steps already give a good image (untrained): training still lowers the error
    assert mse() < 0.95 * before


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_iter=0), ValueError, "num_iter"),
        (dict(data_consistency="admm"), ValueError, "data_consistency"),
        (dict(init="zeros"), ValueError, "init"),
        (dict(step_size=-1.0), ValueError, "step_size"),
        (dict(step_size="big"), ValueError, "step_size"),
        (dict(regularizer=[Identity()], num_iter=2), ValueError, "num_iter=2"),
        (dict(regularizer=[Identity(), Identity()], num_iter=2, shared=True), ValueError, "shared"),
        (dict(regularizer="dncnn"), TypeError, "regularizer"),
    ],
)
def test_bad_construction_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        LUSER(**kwargs)


def test_bad_call_raises(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)
    model = LUSER(num_iter=1, channels=1, regularizer_kwargs=SMALL)
    with pytest.raises(TypeError, match="torch.Tensor"):
        model(y.numpy(), physics)
    with pytest.raises(TypeError, match="LinearPhysics"):
        model(y, lambda t: t)
    with pytest.raises(ValueError, match="channels=2, got 1 channels"):
        LUSER(num_iter=1, channels=2, regularizer_kwargs=SMALL)(y, physics)


def test_bench_settings_reach_the_models_and_bad_names_raise():
    from deepinv_mol.bench.luser import _memory_setup, bench_luser_quality, make_problem

    setup = _memory_setup("deblur", "LUSER", img_size=16, num_iter=2, width=4, inner_max_iter=5,
                          luser_kwargs={"contraction": 0.5, "kernel_size": 5})
    regs = setup["model"].regularizers
    assert [r.contraction for r in regs] == [0.5, 0.5] and regs[0].z_convs[0].kernel_size == (5, 5)
    with pytest.raises(ValueError, match="models must be among"):
        bench_luser_quality(img_size=16, steps=1, models=("LUSER", "DnCNN"))
    with pytest.raises(ValueError, match="unknown problem"):
        make_problem("denoise")


# ---------------------------------------------------------------------------------------------------------
# defaults, the package's own physics (task registry, small sizes), divergence, deepinv conventions, config


def _task_problem(task, size=32):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from pretrained_reference import psnr, reference_problem

    physics, x, y = reference_problem(task, size)
    return physics, x, y, psnr


def test_defaults_are_the_benchmarked_configuration():
    cfg = LUSER(num_iter=2, channels=1).get_config()
    assert (cfg["step_size"], cfg["data_consistency"], cfg["init"]) == ("auto", "cg", "cg")
    reg = cfg["regularizer_kwargs"]
    # deepinv_mol.bench.luser builds LUSER with kernel_size=5, anderson=0 (plain inner iterations), 60-iteration caps
    assert (reg["kernel_size"], reg["anderson"], reg["backward_anderson"]) == (5, 0, 0)
    assert (reg["max_iter"], reg["backward_max_iter"]) == (60, 60)
    # what the user passes wins over the defaults
    assert LUSER(num_iter=1, channels=1, regularizer_kwargs=dict(kernel_size=3)).get_config()[
        "regularizer_kwargs"]["kernel_size"] == 3


@pytest.mark.parametrize("task", ["mri-radial-4x", "ct-sparse-view"])
def test_default_luser_on_nufft_mri_and_astra_ct(task):
    physics, x, y, psnr = _task_problem(task)
    torch.manual_seed(0)
    model = LUSER(num_iter=3, channels=x.shape[1], regularizer_kwargs=dict(width=6))
    with torch.no_grad():
        x_hat = model(y, physics)
    stats = model.stats
    assert stats["converged"] is True and stats["diverged"] is False and stats["divergence"] is None
    # the step size is 1/||A||^2 (NufftMRI and AstraCT here are unnormalised: ||A||^2 far from 1)
    sqnorm = float(physics.compute_sqnorm(torch.randn_like(x), verbose=False))
    assert stats["step_sizes"][0] == pytest.approx(1 / sqnorm, rel=0.05)
    assert stats["data_residual"] < 0.1
    # the CG data steps report their own work (capped at cg_max_iter each)
    assert 3 <= stats["cg_iterations"] <= 3 * model.cg_max_iter and stats["cg_residual"] < 1
    assert stats["cg_converged"] == (stats["cg_residual"] <= model.cg_tol)
    # untrained, the CG start and CG steps already give a usable image (the near-identity regularizer keeps it)
    assert min(psnr(x_hat, x)) > 25


@pytest.mark.parametrize("task", ["mri-radial-4x", "ct-sparse-view"])
def test_former_defaults_diverge_loudly(task):
    """Issue 13: step 1.0, A^H y start and gradient steps gave PSNR -180 dB (MRI) / 1e8 outputs (CT) with
    stats converged=True, diverged=False. Now: a RuntimeWarning and diverged=True, converged=False."""
    physics, x, y, _ = _task_problem(task)
    model = LUSER(num_iter=3, channels=x.shape[1], step_size=1.0, init="adjoint", data_consistency="gradient",
                  regularizer_kwargs=dict(width=6, warn=False))
    with pytest.warns(RuntimeWarning, match="LUSER diverged"):
        with torch.no_grad():
            model(y, physics)
    assert model.stats["diverged"] is True and model.stats["converged"] is False
    assert "divergence_factor" in model.stats["divergence"] or "non-finite" in model.stats["divergence"]


def test_divergence_by_data_misfit_is_reported(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)

    class Flip(nn.Module):  # bounded growth (20x < divergence_factor), but throws the data away
        def forward(self, v, sigma=None):
            return -20 * v

    model = LUSER(num_iter=1, regularizer=Flip(), data_consistency="gradient", init="adjoint", step_size=0.5)
    with pytest.warns(RuntimeWarning, match="data misfit"):
        model(y, physics)
    assert model.stats["diverged"] is True and model.stats["data_residual"] > 10


def test_compute_metrics_follows_deepinv(rng):
    physics, x = _physics("blur", rng)
    y = physics(x)
    model = LUSER(num_iter=3, channels=1, regularizer_kwargs=SMALL).eval()
    x_hat, metrics = model(y, physics, x_gt=x, compute_metrics=True)
    assert torch.allclose(x_hat, model(y, physics), atol=1e-6)
    assert set(metrics) == {"psnr", "residual"} and len(metrics["residual"]) == x.shape[0]
    assert all(len(r) == 3 for r in metrics["residual"]) and all(len(p) == 4 for p in metrics["psnr"])  # x_0 too
    final = dinv.metric.PSNR()(x_hat[:1], x[:1])
    assert metrics["psnr"][0][-1] == pytest.approx(float(final), abs=1e-4)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['sigma'\\]"):
        model(y, physics, sigma=0.1)


def test_deepinv_test_with_convergence_plots(rng, tmp_path):
    """Issue 13: deepinv.test(..., plot_convergence_metrics=True) crashed on LUSER ('Tensor' has no 'keys')."""
    import matplotlib

    matplotlib.use("Agg")
    physics, _ = _physics("blur", rng)
    x = torch.rand(2, 1, 12, 12, generator=rng)
    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i]

    loader = torch.utils.data.DataLoader(Images(), batch_size=2)
    model = LUSER(num_iter=2, channels=1, regularizer_kwargs=SMALL)
    out = dinv.test(model, loader, physics, online_measurements=True, plot_convergence_metrics=True,
                    save_folder=str(tmp_path), verbose=False, show_progress_bar=False)
    assert out["PSNR"] > out["PSNR no learning"] + 1  # better than A^H y on random (hard to deblur) images
    assert list((tmp_path / "convergence_metrics").glob("*"))


@pytest.mark.parametrize("cls", [LUSER, UnrolledFeedForward])
def test_rebuilt_from_config_gives_identical_outputs(cls, rng):
    import json

    physics, x = _physics("mri", rng)
    y = physics(x)
    kw = dict(width=6, depth=3) if cls is UnrolledFeedForward else dict(SMALL, kernel_size=3)
    model = cls(num_iter=2, channels=2, step_size=0.3, cg_max_iter=7, init_max_iter=5, regularizer_kwargs=kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=rng))
    cfg = json.loads(json.dumps(model.get_config()))
    assert cfg == model.get_config() and "device" not in cfg
    torch.manual_seed(123)
    rebuilt = cls(**cfg)
    assert rebuilt.get_config() == cfg
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(y, physics), model.eval()(y, physics))


def test_config_of_user_regularizers_has_no_regularizer_kwargs():
    cfg = LUSER(num_iter=2, regularizer=Identity()).get_config()
    assert cfg["regularizer_kwargs"] is None
    assert LUSER(regularizer=Identity(), **cfg).get_config() == cfg
