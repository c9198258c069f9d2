"""MonotoneCNN: certified convolution norms, the strict constraint, monotonicity, 3D, deepinv's MoDL."""

import math

import deepinv as dinv
import pytest
import torch
import torch.nn.functional as F

from deepinv_mol.guarantees import estimate_lipschitz
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.models.conv_norm import conv_norm_bound

CONV = {2: F.conv2d, 3: F.conv3d}
CONV_T = {2: F.conv_transpose2d, 3: F.conv_transpose3d}


def zero_padded_norm(weight, size, n_iter=300, rng=None):
    """Power iteration on the zero-padded convolution on a grid `size` (a lower bound of its norm)."""
    d = weight.ndim - 2
    u = torch.randn(1, weight.shape[1], *size, generator=rng, dtype=weight.dtype)
    for _ in range(n_iter):
        v = CONV[d](u, weight, padding=weight.shape[-1] // 2)
        v = v / v.norm()
        u = CONV_T[d](v, weight, padding=weight.shape[-1] // 2)
        u = u / u.norm()
    return CONV[d](u, weight, padding=weight.shape[-1] // 2).norm().item()


def circular_norm(weight, n):
    """Exact norm of the circular convolution on an n x n grid: max over DFT frequencies of |K(w)|_2."""
    k = weight.shape[-1]
    padded = torch.zeros(weight.shape[0], weight.shape[1], n, n, dtype=torch.float64)
    padded[..., :k, :k] = weight.double()
    k_hat = torch.fft.fft2(padded).permute(2, 3, 0, 1)
    return torch.linalg.matrix_norm(k_hat, ord=2).max().item()


def monotonicity_ratio(net, a, b):
    """min over pairs of <F(a)-F(b), a-b> / |a-b|^2 with F = I - H."""
    with torch.no_grad():
        fa, fb = a - net(a), b - net(b)
    d = (a - b).flatten(1)
    return ((fa - fb).flatten(1) * d).sum(1).div(d.pow(2).sum(1)).min().item()


# ---------------------------------------------------------------- conv_norm_bound


def test_conv_norm_bound_exact_scalar_cases():
    # response 2 + e^{i w1}: sup = 3 at w = 0; 1 - e^{i w1} - e^{i w2} (signs): sup = 3 at (pi, pi)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1], w[0, 0, 1, 0] = 2.0, 1.0
    r = conv_norm_bound(w, tol=1e-6)
    assert r.converged and 3.0 <= r.upper <= 3.0 * (1 + 2e-6)
    w = torch.zeros(1, 1, 3, 3)
    w[0, 0, 1, 1], w[0, 0, 0, 1], w[0, 0, 1, 0] = 1.0, -1.0, -1.0
    r = conv_norm_bound(w, tol=1e-6)
    assert 3.0 <= r.upper <= 3.0 * (1 + 2e-6)
    # a centre-only kernel has a flat response equal to the matrix norm
    w = torch.zeros(3, 2, 3, 3)
    w[:, :, 1, 1] = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    exact = torch.linalg.matrix_norm(w[:, :, 1, 1], ord=2).item()
    assert abs(float(conv_norm_bound(w)) - exact) <= 1e-6 * exact


@pytest.mark.parametrize("shape", [(8, 8, 3, 3), (8, 2, 3, 3), (2, 8, 3, 3)])
def test_conv_norm_bound_above_zero_padded_and_circular_norms(shape, rng):
    w = torch.randn(shape, generator=rng) / 5
    r = conv_norm_bound(w, tol=1e-3)
    assert r.converged and r.lower <= r.upper <= r.lower * (1 + 1e-3) * (1 + 1e-8)
    for size in [(9, 9), (37, 31)]:
        assert zero_padded_norm(w, size, n_iter=100, rng=rng) <= r.upper
    for n in (5, 16, 64):
        assert circular_norm(w, n) <= r.upper
    # tight: the circular norm on a fine grid approaches the supremum
    assert circular_norm(w, 128) >= r.upper * (1 - 2e-3)


def test_conv_norm_bound_rejects_bad_kernels():
    with pytest.raises(ValueError):
        conv_norm_bound(torch.randn(2, 2, 2, 2))
    with pytest.raises(ValueError):
        conv_norm_bound(torch.randn(2, 2, 3))


# ---------------------------------------------------------------- strict network, random weights


@pytest.mark.parametrize("mode,activation", [("eval", "relu"), ("train", "relu"), ("eval", "maxmin")])
def test_strict_random_monotone_and_bound_above_local_estimates(mode, activation, rng):
    net = MonotoneCNN(width=8, depth=4, lipschitz=0.9, activation=activation)
    net.train(mode == "train")
    bound = net.lipschitz_bound()
    if mode == "eval":
        assert bound <= 0.9 * (1 + 1e-6)
    assert bound >= 0.9 * (1 - 1e-6)  # the power estimate never exceeds the certified norm
    m = 1 - bound
    a = torch.randn(6, 2, 13, 11, generator=rng)
    b = a + torch.randn(6, 2, 13, 11, generator=rng) * torch.tensor([1e-3, 1e-2, 0.1, 1, 3, 10]).view(-1, 1, 1, 1)
    assert monotonicity_ratio(net, a, b) >= m - 1e-6
    est = estimate_lipschitz(net, a[:2], n_iter=40, tol=1e-4, generator=rng, warn=False)
    adv = estimate_lipschitz(net, a[:2], n_iter=20, method="adversarial", generator=rng, warn=False)
    assert est.value <= bound and adv.value <= bound
    with torch.no_grad():
        secant = (net(a) - net(b)).flatten(1).norm(dim=1) / (a - b).flatten(1).norm(dim=1)
    assert secant.max().item() <= bound


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_layer_bounds_dominate_power_norm_of_applied_convolutions(mode, rng):
    net = MonotoneCNN(width=8, depth=3, lipschitz=0.95)
    net.train(mode == "train")
    with torch.no_grad():
        weights = [w.detach().double() for w in net.normalised_weights()]
    bounds = net.layer_norm_bounds()
    for w, bnd in zip(weights, bounds):
        assert zero_padded_norm(w, (24, 24), n_iter=80, rng=rng) <= bnd
    if mode == "eval":
        assert all(abs(bnd - net.layer_scale) < 1e-6 for bnd in bounds)
    assert math.isclose(math.prod(bounds), net.lipschitz_bound(), rel_tol=1e-12)


# ---------------------------------------------------------------- nearly attained bound


def sine_bump(shape):
    """Separable positive bump: near the top singular vector of a positive zero-padded convolution."""
    bump = torch.ones(())
    for n in shape:
        bump = bump[..., None] * torch.sin(math.pi * (torch.arange(n) + 1) / (n + 1))
    return bump


def positive_secant(net, x):
    """|H(x + phi) - H(x)| / |phi| for positive x and bump phi: a lower bound of Lip(H)."""
    phi = sine_bump(x.shape[2:]).expand_as(x)
    with torch.no_grad():
        return ((net(x + phi) - net(x)).norm() / phi.norm()).item()


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_nearly_extremal_bound_is_within_a_few_percent(mode, rng):
    net = MonotoneCNN.nearly_extremal(width=8, depth=5, lipschitz=0.95, power_size=16, generator=rng)
    net.train(mode == "train")
    bound = net.lipschitz_bound()
    x = torch.rand(1, 2, 40, 40, generator=rng) + 0.1  # non-negative: ReLU is the identity, H is linear
    true_lower = positive_secant(net, x)
    assert 0.97 * bound <= true_lower <= bound, (true_lower, bound)
    est = estimate_lipschitz(net, x, n_iter=30, generator=rng, warn=False)
    assert est.value <= bound
    # monotonicity with m = 1 - bound, nearly tight along the bump direction
    a = torch.rand(3, 2, 40, 40, generator=rng) + 0.5
    b = a + 0.1 * torch.rand(3, 2, 40, 40, generator=rng)
    assert monotonicity_ratio(net, a, b) >= (1 - bound) - 1e-6
    assert monotonicity_ratio(net, a, a + sine_bump((40, 40)).expand_as(a)) <= (1 - bound) + 0.03


def test_nearly_extremal_3d(rng):
    net = MonotoneCNN.nearly_extremal(
        width=4, depth=3, lipschitz=0.9, dims=3, spread=0.02, power_size=8, generator=rng
    ).eval()
    bound = net.lipschitz_bound()
    assert bound <= 0.9 * (1 + 1e-6)
    x = torch.rand(1, 2, 20, 20, 20, generator=rng) + 0.1
    assert 0.97 * bound <= positive_secant(net, x) <= bound
    assert estimate_lipschitz(net, x[..., :12, :12, :12], n_iter=20, generator=rng, warn=False).value <= bound


# ---------------------------------------------------------------- 3D, penalty, training-mode behaviour


def test_strict_3d_random(rng):
    net = MonotoneCNN(width=4, depth=3, lipschitz=0.9, dims=3, power_size=8).eval()
    x = torch.randn(2, 2, 6, 9, 7, generator=rng)
    assert net(x).shape == x.shape
    bound = net.lipschitz_bound()
    assert bound <= 0.9 * (1 + 1e-6)
    b = x + 0.1 * torch.randn(x.shape, generator=rng)
    assert monotonicity_ratio(net, x, b) >= 1 - bound - 1e-6
    assert estimate_lipschitz(net, x, n_iter=30, generator=rng, warn=False).value <= bound


def test_penalty_variant_has_no_certificate(rng):
    net = MonotoneCNN(width=8, depth=3, constraint="penalty")
    assert net.lipschitz_bound() is None
    bounds = net.layer_norm_bounds()  # raw certified norms still available
    x = torch.randn(1, 2, 12, 12, generator=rng)
    est = estimate_lipschitz(net, x, n_iter=100, generator=rng, warn=False)
    assert est.value <= math.prod(bounds)
    with pytest.raises(ValueError):
        net.update_normalisation()


def test_penalty_variant_starts_within_its_target(rng):
    """The penalty variant starts where the strict one does: certified Lip(H) <= T, and the bound is nearly
    attained (each kernel scaled to norm T^(1/depth)); lipschitz=0 keeps PyTorch's init (bound far above 1)."""
    net = MonotoneCNN(width=8, depth=4, constraint="penalty", lipschitz=0.8)
    bounds = net.layer_norm_bounds()
    assert math.prod(bounds) <= 0.8 * (1 + 1e-5)
    assert all(b == pytest.approx(0.8 ** 0.25, rel=2e-3) for b in bounds)
    raw = MonotoneCNN(width=8, depth=4, constraint="penalty", lipschitz=0.0)
    assert math.prod(raw.layer_norm_bounds()) > 1.0


def test_training_mode_fixed_between_weight_updates_and_consistent_with_no_grad(rng):
    net = MonotoneCNN(width=8, depth=3).train()
    x = torch.randn(2, 2, 10, 10, generator=rng)
    u0 = net.power_u0.clone()
    with torch.no_grad():
        y1 = net(x)
    y2 = net(x)  # with a graph: the differentiable normaliser must give the same map
    assert torch.allclose(y1, y2, atol=1e-6)
    assert torch.equal(u0, net.power_u0)  # no power step without a weight change
    opt = torch.optim.SGD(net.parameters(), lr=1e-2)
    y2.pow(2).sum().backward()
    opt.step()
    net(x)
    assert not torch.equal(u0, net.power_u0)  # one power step after the optimiser step


def test_strict_gradient_includes_normaliser(rng):
    # the output of a strict network is invariant to scaling a raw kernel: the gradient must see it
    net = MonotoneCNN(width=6, depth=3).train()
    x = torch.randn(1, 2, 8, 8, generator=rng)
    w = net.convs[1].weight
    net(x).pow(2).sum().backward()
    radial = (w.grad * w).sum().item()  # derivative along w -> (1 + t) w
    assert abs(radial) <= 1e-3 * w.grad.norm().item() * w.norm().item()


def test_eval_cache_follows_weight_changes(rng):
    net = MonotoneCNN(width=6, depth=3, lipschitz=0.9).eval()
    x = torch.randn(1, 2, 8, 8, generator=rng)
    y0 = net(x)
    with torch.no_grad():
        net.convs[0].weight.mul_(3.0).add_(torch.randn_like(net.convs[0].weight))
    y1 = net(x)
    assert not torch.allclose(y0, y1)
    assert net.lipschitz_bound() <= 0.9 * (1 + 1e-6)


def test_state_dict_round_trip(rng):
    net = MonotoneCNN(width=6, depth=3).eval()
    other = MonotoneCNN(width=6, depth=3)
    other.load_state_dict(net.state_dict())
    other.eval()
    x = torch.randn(1, 2, 9, 9, generator=rng)
    assert torch.allclose(net(x), other(x), atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError):
        MonotoneCNN(constraint="soft")
    with pytest.raises(ValueError):
        MonotoneCNN(lipschitz=1.0)
    with pytest.raises(ValueError):
        MonotoneCNN(dims=1)
    net = MonotoneCNN(width=4, depth=2)
    with pytest.raises(ValueError, match="expects input of shape"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError):
        net(torch.randn(2, 8, 8))
    with pytest.raises(TypeError):
        net([1.0])


# ---------------------------------------------------------------- deepinv's MoDL with the same network


def test_serves_as_modl_denoiser(rng):
    net = MonotoneCNN(width=8, depth=3, lipschitz=0.9).train()
    x = torch.randn(2, 2, 12, 12, generator=rng)
    assert torch.equal(net(x, torch.tensor(0.01)), net(x))  # deepinv's denoiser(x, sigma) signature
    mask = (torch.rand(12, 12, generator=rng) > 0.5).float()
    physics = dinv.physics.MRI(mask=mask, img_size=(2, 12, 12))
    y = physics(x)
    # one MoDL (HQS) iteration from A^H y: data-term prox with step 1, then our network as the denoiser
    one = dinv.models.MoDL(denoiser=net, num_iter=1)(y, physics)
    u = dinv.optim.L2().prox(physics.A_adjoint(y), y, physics, gamma=1.0)
    assert torch.allclose(one, net(u), atol=1e-6)
    x_hat = dinv.models.MoDL(denoiser=net, num_iter=3)(y, physics)
    loss = (x_hat - x).pow(2).mean()
    loss.backward()
    grads = [c.weight.grad for c in net.convs]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_maxmin_is_a_pairwise_sort_and_keeps_the_identity_start(rng):
    net = MonotoneCNN(channels=2, width=8, depth=3, lipschitz=0.9, init="identity", activation="maxmin").eval()
    h = torch.randn(3, 8, 5, 5, generator=rng)
    out = net._activate(h)
    pairs = torch.stack([h[:, :4], h[:, 4:]]).sort(dim=0, descending=True).values
    assert torch.equal(out, torch.cat([pairs[0], pairs[1]], dim=1))
    # a sort of each pair preserves the norm of every difference: gradient-norm preserving, unlike ReLU
    g = torch.randn(3, 8, 5, 5, generator=rng)
    assert torch.allclose(out.norm(), h.norm()) and (net._activate(g) - out).norm() <= (g - h).norm() + 1e-6
    x = torch.rand(2, 2, 16, 16, generator=rng)
    assert torch.allclose(net(x), 0.9 * x, atol=0.05)
    assert net.lipschitz_bound() <= 0.9 * (1 + 1e-6)
    with pytest.raises(ValueError, match="width must be even and >= 2 \\* channels"):
        MonotoneCNN(channels=2, width=3, activation="maxmin")
    with pytest.raises(ValueError, match="activation must be"):
        MonotoneCNN(activation="tanh")
