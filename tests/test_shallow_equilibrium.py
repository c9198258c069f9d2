"""ShallowEquilibrium (LUSER's regularizer) and its feed-forward twin FeedForwardRegularizer."""

import pytest
import torch
import torch.nn.functional as F

from deepinv_mol.models import FeedForwardRegularizer, ShallowEquilibrium

SPATIAL = {2: (9, 7), 3: (5, 6, 4)}


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(dims=2, **kw):
    opts = dict(channels=1, width=6, depth=2, dims=dims, contraction=0.8)
    opts.update(kw)
    return ShallowEquilibrium(**opts)


def _cos(a, b):
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize("dims", [2, 3])
def test_implicit_gradient_matches_unrolled_autograd(dims, rng):
    model = _small(dims, max_iter=200, tol=1e-10, anderson=5, backward_tol=1e-10, backward_max_iter=400).double()
    model.eval()  # freeze the power vectors so both paths use the same normalised weights
    shape = (2, 1) + SPATIAL[dims]
    v = torch.randn(shape, generator=rng, dtype=torch.float64)
    w = torch.randn(shape, generator=rng, dtype=torch.float64)
    params = [p for p in model.parameters()]

    v1 = v.clone().requires_grad_(True)
    out = model(v1)
    (out * w).sum().backward()
    implicit = torch.cat([p.grad.flatten() for p in params])
    implicit_v = v1.grad.clone()
    assert model.stats["converged"] and model.stats["backward_converged"]
    model.zero_grad()

    # brute force: autograd through a long plain unrolled inner iteration
    v2 = v.clone().requires_grad_(True)
    f = model.fixed_point_map(v2)
    z = model.hidden_init(v2)
    for _ in range(150):
        z = f(z)
    ref_out = model.decode(z, v2)
    (ref_out * w).sum().backward()
    unrolled = torch.cat([p.grad.flatten() for p in params])

    assert torch.allclose(out, ref_out, atol=1e-6)
    assert _cos(implicit, unrolled) > 0.99
    assert _cos(implicit_v, v2.grad) > 0.99
    assert torch.allclose(implicit, unrolled, rtol=1e-3, atol=1e-6)


def test_forward_reaches_the_fixed_point(rng):
    model = _small(tol=1e-6, max_iter=100)
    v = torch.randn(3, 1, 16, 16, generator=rng)
    with torch.no_grad():
        out = model(v)
        f = model.fixed_point_map(v)
        z = model.hidden_init(v)
        for _ in range(200):
            z = f(z)
        ref = model.decode(z, v)
    stats = model.stats
    assert stats["converged"] and stats["residual"] <= 1e-6 and 1 <= stats["iterations"] < 100
    assert (out - ref).norm() / ref.norm() < 1e-4


@pytest.mark.parametrize("dims", [2, 3])
def test_contraction_safeguard_bounds_lipschitz(dims, rng):
    model = _small(dims, width=8 if dims == 2 else 4, contraction=0.9, power_iterations=10)
    with torch.no_grad():  # new raw weights, 20x larger: unconstrained, f would be far from a contraction
        for layer in model.z_convs:
            layer.weight.copy_(20.0 * torch.randn(layer.weight.shape, generator=rng))
    model.train()
    v = torch.randn((1, 1) + SPATIAL[dims], generator=rng)
    for _ in range(3):  # training-mode calls update the power vectors (10 iterations each)
        with torch.no_grad():
            model(v)
    model.update_normalisation(200)  # an abrupt weight change needs a full power iteration
    # certified for every image size: at the target, up to the accuracy of the power iteration's finite grid
    bound = model.lipschitz_bound()
    assert bound < 1.0 and bound <= 0.9 * 1.05

    # measured: local Lipschitz constant of z -> f(z, v) by power iteration on J^T J, on a larger image
    big = (1, 1) + tuple(2 * s for s in SPATIAL[dims])
    v = torch.randn(big, generator=rng)
    with torch.no_grad():
        f = model.fixed_point_map(v)
    z0 = torch.rand((1, model.width) + big[2:], generator=rng)
    _, vjp = torch.func.vjp(f, z0)
    u = torch.randn_like(z0)
    for _ in range(30):
        u = u / u.norm()
        u = vjp(torch.func.jvp(f, (z0,), (u,))[1])[0]
    local = float(u.detach().norm().sqrt())
    assert local < 1.0
    # and a finite difference between two random hidden states
    z1, z2 = torch.randn_like(z0), torch.randn_like(z0)
    with torch.no_grad():
        ratio = float((f(z1) - f(z2)).norm() / (z1 - z2).norm())
    assert ratio < 1.0


def test_safeguard_is_active_on_large_weights():
    model = _small(width=8, contraction=0.5)
    with torch.no_grad():
        for layer in model.z_convs:
            layer.weight.mul_(20.0)
    model.update_normalisation(100)
    for raw, normalized in zip(model.z_convs, model.normalised_weights()):
        scale = float(normalized.detach().norm() / raw.weight.detach().norm())
        assert scale < 0.2  # the raw conv had norm > 0.5 ** 0.5 / 0.2: it was rescaled
    assert model.lipschitz_bound() <= 0.5 * 1.02


def test_non_convergence_warns_and_is_recorded(rng):
    model = _small(max_iter=1, tol=1e-14, anderson=0)
    v = torch.randn(1, 1, 12, 12, generator=rng)
    with pytest.warns(RuntimeWarning, match="ShallowEquilibrium inner solve did not converge"):
        model(v)
    stats = model.stats
    assert stats["converged"] is False and stats["iterations"] == 1 and stats["residual"] > 1e-14


def test_non_convergence_silent_when_warn_false(rng, recwarn):
    model = _small(max_iter=1, tol=1e-14, warn=False)
    model(torch.randn(1, 1, 12, 12, generator=rng))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert model.stats["converged"] is False


def test_saved_tensors_independent_of_inner_iterations(rng):
    v = torch.randn(1, 1, 12, 12, generator=rng)

    def count(max_iter):
        torch.manual_seed(0)
        model = _small(max_iter=max_iter, tol=0.0, warn=False)
        n, nbytes = [0], [0]

        def pack(t):
            n[0] += 1
            nbytes[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(v)
        assert model.stats["iterations"] == max_iter  # the solve really ran that long
        out.sum().backward()
        return n[0], nbytes[0]

    assert count(10) == count(50)


@pytest.mark.parametrize("model_cls", [ShallowEquilibrium, FeedForwardRegularizer])
def test_bad_input_raises_clear_errors(model_cls):
    model = model_cls(channels=2, width=4, dims=2) if model_cls is ShallowEquilibrium else model_cls(
        channels=2, width=4, depth=3
    )
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0, 2.0]])
    with pytest.raises(ValueError, match="channels=2"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="dims=2"):
        model(torch.randn(1, 2, 4, 8, 8))
    with pytest.raises(TypeError, match="complex"):
        model(torch.randn(1, 2, 8, 8, dtype=torch.complex64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.ones(1, 2, 8, 8, dtype=torch.int64))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(contraction=1.0), "contraction"),
        (dict(dims=4), "dims"),
        (dict(kernel_size=4), "kernel_size"),
        (dict(width=0), "width"),
        (dict(backward="broyden"), "backward"),
    ],
)
def test_bad_construction_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShallowEquilibrium(**kwargs)


def test_three_d_and_multichannel_shapes(rng):
    model = ShallowEquilibrium(channels=3, width=4, dims=3)
    x = torch.randn(2, 3, 5, 7, 6, generator=rng)
    out = model(x)
    assert out.shape == x.shape and model.stats["converged"]
    assert set(model.stats) >= {"iterations", "residual", "converged", "diverged", "contraction"}


def test_feedforward_receptive_field():
    depth = 4
    model = FeedForwardRegularizer(channels=1, width=4, depth=depth)
    x = torch.zeros(1, 1, 31, 31)
    e = x.clone()
    e[..., 15, 15] = 1.0
    with torch.no_grad():
        # a linearised probe: the difference of outputs is supported inside the receptive field
        diff = (model(x + 1e-3 * e) - model(x)).abs()[0, 0]
    rows = torch.nonzero(diff.sum(1) > 0).flatten()
    assert int(rows.max() - rows.min() + 1) <= model.receptive_field == 2 * depth + 1
    # and reaches beyond the centre pixel, i.e. the network is not trivial
    assert int(rows.max() - rows.min() + 1) > 1
