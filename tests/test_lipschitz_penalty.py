"""LipschitzPenalty: barrier values and continuity, exact gradients, Trainer call, optimisation lowers L."""

import math

import deepinv as dinv
import pytest
import torch

from deepinv_mol.guarantees import estimate_lipschitz
from deepinv_mol.loss import LipschitzPenalty
from deepinv_mol.models import MonotoneCNN


def dense(conv, shape):
    """Matrix of a linear conv on images of `shape`, differentiable in its weight."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape[1:])
    return conv(eye).reshape(n, -1).T


def test_barrier_values_and_continuity():
    pen = LipschitzPenalty(threshold=0.98, eps=1e-3)
    knee = 0.98 - 1e-3
    lip = torch.tensor([0.0, 0.5, knee - 1e-7, knee, knee + 1e-7, 1.5], dtype=torch.float64, requires_grad=True)
    val = pen.barrier(lip)
    assert math.isclose(val[0].item(), -math.log(0.98), rel_tol=1e-12)
    assert math.isclose(val[1].item(), -math.log(0.48), rel_tol=1e-12)
    assert abs(val[2].item() - val[4].item()) < 1e-3 and math.isclose(val[3].item(), -math.log(1e-3), rel_tol=1e-12)
    assert math.isclose(val[5].item(), -math.log(1e-3) + (1.5 - knee) / 1e-3, rel_tol=1e-12)
    (g,) = torch.autograd.grad(val.sum(), lip)
    assert math.isclose(g[1].item(), 1 / 0.48, rel_tol=1e-12)
    # C^1 at the knee: slope 1/e from both sides, and 1/e on the linear branch
    assert all(math.isclose(g[i].item(), 1e3, rel_tol=1e-3) for i in (2, 3, 4, 5))
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("scale", [0.5, 3.0])  # barrier branch, linear branch
@pytest.mark.parametrize("method", ["power", "adversarial"])
def test_gradient_matches_exact_spectral_norm_gradient(scale, method, rng):
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(3)))
    shape = (1, 1, 6, 6)
    with torch.no_grad():
        conv.weight.mul_(scale / torch.linalg.matrix_norm(dense(conv, shape), ord=2))
    tol = 1e-11 if method == "power" else 1e-7  # secant ratios carry rounding of H(x + d) - H(x)
    pen = LipschitzPenalty(network=conv, method=method, n_iter=2000, tol=tol, weight=2.0, generator=rng)
    value = pen(x_net=torch.randn(shape, generator=rng, dtype=torch.float64))
    (g,) = torch.autograd.grad(value.sum(), conv.weight)
    sigma = torch.linalg.matrix_norm(dense(conv, shape), ord=2)
    exact_value = 2.0 * pen.barrier(sigma)
    (g_exact,) = torch.autograd.grad(exact_value, conv.weight)
    assert abs(value.item() - exact_value.item()) <= 1e-4 * abs(exact_value.item())
    rel = ((g - g_exact).norm() / g_exact.norm()).item()
    assert rel < (1e-3 if method == "power" else 5e-3), rel
    assert pen.stats["converged"] and pen.stats["iterations"] < 2000


def test_trainer_call_signature_model_denoiser_and_reduced_batch(rng):
    net = MonotoneCNN(width=6, depth=3, constraint="penalty")
    model = dinv.models.MoDL(denoiser=net, num_iter=2)
    model.denoiser = net  # a MOL exposes .denoiser; give MoDL the same attribute
    x_net = torch.randn(3, 2, 10, 10, generator=rng)
    pen = LipschitzPenalty(n_iter=50, tol=1e-5, reduced_batchsize=2, generator=torch.Generator().manual_seed(0))
    out = pen(x=x_net, x_net=x_net, y=None, physics=None, model=model, epoch=0)
    assert out.shape == (2,)
    est = estimate_lipschitz(net, x_net[:2], n_iter=50, tol=1e-5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, pen.barrier(est.per_sample), rtol=1e-5)
    with pytest.raises(ValueError, match="needs a network"):
        LipschitzPenalty()(x_net=x_net, model=torch.nn.Identity())
    with pytest.raises(ValueError):
        LipschitzPenalty(eps=2.0)
    with pytest.raises(ValueError):
        LipschitzPenalty(method="svd")


def test_optimiser_steps_lower_the_estimate(rng):
    net = MonotoneCNN(width=8, depth=3, constraint="penalty")
    x = torch.randn(2, 2, 12, 12, generator=rng)
    with torch.no_grad():
        for c in net.convs:
            c.weight.mul_(2.0)
    before = estimate_lipschitz(net, x, n_iter=100, generator=rng, warn=False).value
    assert before > 1.0  # starts beyond the threshold: the linear branch acts
    pen = LipschitzPenalty(network=net, n_iter=20)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        opt.zero_grad()
        pen(x_net=x).mean().backward()
        opt.step()
    after = estimate_lipschitz(net, x, n_iter=100, generator=rng, warn=False).value
    assert after < 0.8 * before, (before, after)


def test_runs_inside_deepinv_trainer(rng, tmp_path):
    net = MonotoneCNN(width=4, depth=3, constraint="penalty")
    with torch.no_grad():
        for c in net.convs:
            c.weight.mul_(3.0)
    model = dinv.models.MoDL(denoiser=net, num_iter=2)
    pen = LipschitzPenalty(network=net, n_iter=10, weight=0.1)
    physics = dinv.physics.MRI(mask=(torch.rand(10, 10, generator=rng) < 0.5).float(), img_size=(2, 10, 10))
    x = torch.randn(4, 2, 10, 10, generator=rng)
    y = physics(x)

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "y": y[i]}

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=2)
    before = estimate_lipschitz(net, x[:2], n_iter=60, generator=rng, warn=False).value
    trainer = dinv.Trainer(
        model, physics=physics, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), train_dataloader=loader,
        epochs=3, losses=[dinv.loss.SupLoss(), pen], save_path=None, device="cpu", verbose=False,
        show_progress_bar=False, metrics=None, compute_train_metrics=False, non_blocking_transfers=False,
    )
    trainer.train()
    after = estimate_lipschitz(net, x[:2], n_iter=60, generator=rng, warn=False).value
    assert pen.stats["value"] > 0 and pen.last_estimate is not None
    assert after < before  # the penalty (linear branch, slope 1/e) dominates the supervised loss
