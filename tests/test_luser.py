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
    model = LUSER(num_iter=4, regularizer=Identity(), shared=True, step_size=0.7)
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
    model = LUSER(num_iter=1, regularizer=Identity(), init="cg", init_eps=1e-2, cg_max_iter=200, cg_tol=1e-8)
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
    model = LUSER(num_iter=3, regularizer=Identity(), shared=True, step_size="auto")
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
    assert twin.stats["steps"] == 2 and "iterations" not in twin.stats


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
    luser = LUSER(num_iter=3, channels=1, regularizer_kwargs=dict(width=8, contraction=0.8))
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
    assert mse() < 0.8 * before


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
