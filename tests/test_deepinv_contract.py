"""deepinv's own generic ``LinearPhysics`` checks, over every operator of :data:`operators.OPERATORS`.

Adapted from the tests shipped inside the deepinv 0.5 wheel (``deepinv/tests/test_physics.py``:
``test_operators_adjointness``, ``test_operators_norm``, ``test_pseudo_inverse``, ``test_stacking``,
``test_linear_physics_Avjp``, ``test_adjoint_autograd``, ``test_physics_state_dict``,
``test_device_consistency``; ``deepinv/tests/test_optim.py``: ``test_least_squares_implicit_backward``),
plus the dtype casts and ``torch.func`` transforms a deepinv user relies on. Same thresholds as
deepinv's where they apply.
"""

import copy
import functools

import pytest
import torch
from deepinv.optim import L2
from deepinv.optim.linear import least_squares, least_squares_implicit_backward
from deepinv.physics import StackedLinearPhysics
from deepinv.physics.forward import adjoint_function
from operators import OPERATORS, make_operator


_SLOW = pytest.mark.slow  # the NUFFT pair as the normal operator: same Function code, 5-50x the time
#: every operator, the iterative checks on the NUFFT-pair variants kept for ``-m slow``
_ITERATIVE = [pytest.param(n, marks=_SLOW) if n.endswith("-nufft") else n for n in OPERATORS]


@functools.lru_cache(maxsize=None)
def _built(name):
    return make_operator(name)


def _operator(name):
    """A fresh copy of the operator (building is the slow part; tests may mutate their copy)."""
    physics, x = _built(name)
    return copy.deepcopy(physics), x.clone()


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def get_all_tensor_attrs(module, prefix=""):
    """deepinv's helper: parameters, persistent buffers and unregistered tensor attributes, recursively."""
    attrs = {}

    def full(name):
        return f"{prefix}.{name}" if prefix else name

    for name, p in module._parameters.items():
        if p is not None:
            attrs[full(name)] = p
    for name, b in module._buffers.items():
        if b is not None and name not in module._non_persistent_buffers_set:
            attrs[full(name)] = b
    for name, attr in vars(module).items():
        if isinstance(attr, torch.Tensor):
            attrs[full(name)] = attr
    for name, sub in module._modules.items():
        if sub is not None:
            attrs.update(get_all_tensor_attrs(sub, prefix=full(name)))
    return attrs


@pytest.mark.parametrize("name", OPERATORS)
def test_operators_adjointness(name):
    physics, x = _operator(name)
    assert physics.adjointness_test(x) < 1e-3
    f = adjoint_function(physics.A, x.shape, x.device, x.dtype)
    y = physics.A(x)
    assert _rel(f(y), physics.A_adjoint(y)) < 1e-5


@pytest.mark.parametrize("name", _ITERATIVE)
def test_operators_norm(name):
    """normalize=True: ||A|| = 1 (deepinv's bound 1e-2 on ||A||^2); -raw: ||A|| = operator_norm of the twin."""
    physics, x = _operator(name)
    sqnorm = physics.compute_sqnorm(x[:1], max_iter=300, tol=1e-6, verbose=False).item()
    if name.endswith("-raw"):
        twin, _ = _operator(name.removesuffix("-raw"))
        assert abs(sqnorm / twin.operator_norm.item() ** 2 - 1) < 2e-2
        assert physics.operator_norm.item() == 1.0
    else:
        assert abs(sqnorm - 1) < 2e-2


@pytest.mark.parametrize("name", [n for n in OPERATORS if not n.endswith("-raw")])
def test_adjoint_on_image_scale(name):
    """normalize=True: A^H A x has the scale of x (its least-squares gain is at most 1 and not tiny)."""
    physics, x = _operator(name)
    r = physics.A_adjoint(physics.A(x))
    gain = ((r * x).sum() / (x * x).sum()).item()
    assert 1e-2 < gain <= 1.0 + 1e-3


@pytest.mark.parametrize("name", _ITERATIVE)
def test_pseudo_inverse(name):
    physics, x = _operator(name)
    r = physics.A_adjoint(physics.A(x))  # in the range of A^H
    y = physics.A(r)
    xhat = physics.A_dagger(y, solver="CG", tol=1e-6, max_iter=200)
    assert _rel(xhat, r) < 0.05


@pytest.mark.parametrize("name", [n for n in OPERATORS if n.startswith("nufft-2d")])
def test_a_dagger_density_compensate_keyword(name):
    """deepinv's NonCartesianMRI keyword ``density_compensate`` is accepted (and means the same)."""
    physics, x = _operator(name)
    y = physics.A(x)
    ours = physics.A_dagger(y, density_compensation=True, max_iter=30, tol=1e-8)
    theirs = physics.A_dagger(y, density_compensate=True, max_iter=30, tol=1e-8)
    assert torch.equal(ours, theirs)
    with pytest.raises(TypeError, match="density_compensate must be a bool"):
        physics.A_dagger(y, density_compensate="yes")


@pytest.mark.parametrize("name", OPERATORS)
def test_stacking(name):
    physics, x = _operator(name)
    stacked = physics.stack(physics)
    assert isinstance(stacked, StackedLinearPhysics)
    y = stacked(x)
    assert len(y) == 2
    back = stacked.A_adjoint(y)
    assert back.shape == x.shape
    assert _rel(back, 2 * physics.A_adjoint(physics.A(x))) < 1e-5


@pytest.mark.parametrize("name", OPERATORS)
def test_linear_physics_A_vjp(name):
    physics, x = _operator(name)
    y = torch.ones_like(physics.A(x))
    loss = L2()
    grad = torch.func.grad(lambda u: loss(u, y, physics).sum())(x)
    assert _rel(grad, loss.grad(x, y, physics)) < 1e-5
    assert _rel(physics.A_vjp(x, y), physics.A_adjoint(y)) < 1e-6


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint_autograd(name):
    physics, x = _operator(name)
    y = physics.A(x)
    A_adjoint = adjoint_function(physics.A, x.shape, x.device, x.dtype)
    y.requires_grad_()
    z = torch.randn_like(x)
    (z * A_adjoint(y)).sum().backward()
    assert torch.allclose(y.grad, physics.A(z), rtol=1e-5, atol=1e-6 * physics.A(z).abs().max().item())


@pytest.mark.parametrize("name", OPERATORS)
def test_torch_func_transforms(name):
    """vjp, jvp and vmap of A and A^H equal the direct operators (linear maps)."""
    physics, x = _operator(name)
    y = physics.A(x)
    _, vjp = torch.func.vjp(physics.A, x)
    assert _rel(vjp(y)[0], physics.A_adjoint(y)) < 1e-6
    _, tangent = torch.func.jvp(physics.A, (x,), (x,))
    assert _rel(tangent, y) < 1e-6
    mapped = torch.func.vmap(physics.A, in_dims=1, out_dims=1)(x.unsqueeze(1).expand(-1, 2, *x.shape[1:]))
    assert _rel(mapped[:, 1], y) < 1e-6
    back = torch.func.vmap(physics.A_adjoint)(y.unsqueeze(0))
    assert _rel(back[0], physics.A_adjoint(y)) < 1e-6


@pytest.mark.parametrize("name", OPERATORS)
def test_physics_state_dict(name):
    physics, x = _operator(name)
    state = physics.state_dict()
    attrs = get_all_tensor_attrs(physics)
    assert set(state) == set(attrs)
    for k, v in attrs.items():
        assert torch.equal(state[k], v)
    # round trip into an operator built differently (other random data), through torch.save/load
    other, _ = make_operator(name, rng=torch.Generator().manual_seed(123))
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    for k, v in state.items():
        assert torch.equal(v, other.state_dict()[k])
    assert torch.equal(physics(x), other(x))


@pytest.mark.parametrize("name", OPERATORS)
def test_device_consistency(name):
    physics, x = _operator(name)
    y = physics.A(x)
    moved = physics.to(torch.device("cpu"))
    assert all(b.device.type == "cpu" for b in moved.buffers())
    assert torch.equal(moved.A(x), y)
    if torch.cuda.is_available():  # pragma: no cover (CPU-only CI)
        cuda = copy.deepcopy(physics).to("cuda")
        assert _rel(cuda.A(x.cuda()).cpu(), y) < 1e-4


@pytest.mark.parametrize("name", OPERATORS)
def test_dtype_casts(name):
    """.to(float32) is a no-op (bit-identical outputs, complex buffers stay complex); .to(float64) gives
    a double-precision operator equal to one built in float64 from the start."""
    physics, x = _operator(name)
    y, back = physics.A(x), physics.A_adjoint(physics.A(x))
    normal = physics.A_adjoint_A(x)
    complex_before = {k for k, v in physics.state_dict().items() if v.is_complex()}
    physics.to(torch.float32)
    assert {k for k, v in physics.state_dict().items() if v.is_complex()} == complex_before
    assert torch.equal(physics.A(x), y)
    assert torch.equal(physics.A_adjoint(y), back)
    assert torch.equal(physics.A_adjoint_A(x), normal)

    double = physics.to(torch.float64)
    xd = x.double()
    yd = double.A(xd)
    assert yd.dtype == torch.float64
    assert {k for k, v in double.state_dict().items() if v.is_complex()} == complex_before
    assert _rel(yd, y.double()) < 2e-4  # float32 accuracy of the original
    assert double.adjointness_test(xd) < 1e-10 if name.startswith("nufft") else double.adjointness_test(xd) < 1e-5
    if name.startswith("nufft"):
        assert all(v.dtype in (torch.float64, torch.complex128) for v in double.state_dict().values()
                   if v.is_floating_point() or v.is_complex())
        fresh, _ = make_operator(name, dtype=torch.float64)
        # the norm estimates agree to the power iteration's tolerance, the operators to double precision
        n1, n2 = double.operator_norm.item(), fresh.operator_norm.item()
        assert abs(n1 / n2 - 1) < 1e-6
        assert _rel(yd * n1, fresh.A(xd) * n2) < 1e-10
        assert _rel(double.A_adjoint(yd) * n1, fresh.A_adjoint(yd) * n2) < 1e-10
        assert _rel(double.A_adjoint_A(xd) * n1**2, fresh.A_adjoint_A(xd) * n2**2) < 1e-10
        # Toeplitz normal operator vs NUFFT pair: the Kaiser-Bessel approximation error (~1e-5), not float32's
        assert _rel(double.A_adjoint_A(xd), double.A_adjoint(double.A(xd))) < 1e-4
    # .double() and .float() are the same casts
    again = double.float()
    assert _rel(again.A(x), y) < 2e-4 and again.A(x).dtype == torch.float32


@pytest.mark.parametrize("name", _ITERATIVE)
def test_least_squares_implicit_backward(name):
    """deepinv's implicit-backward least squares in float64 agrees with unrolled CG's autograd."""
    physics, x = _operator(name)
    physics = physics.to(torch.float64)
    x = x.double()
    y = physics(x).detach().requires_grad_(True)
    z = torch.randn_like(x, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    # gamma on the operator's scale, so that 60 CG iterations converge for unnormalised operators too
    scale = physics.compute_sqnorm(x[:1], max_iter=30, tol=1e-3, verbose=False).item()
    gamma = (torch.tensor([0.7, 1.3], dtype=torch.float64) / scale).requires_grad_(True)
    y_, z_, g_ = (t.detach().clone().requires_grad_(True) for t in (y, z, gamma))
    init = torch.zeros_like(x)
    with torch.enable_grad():
        least_squares_implicit_backward(physics, y, z, init, gamma, eps=1e-6, tol=1e-6, max_iter=60).sum().backward()
        least_squares(physics.A, physics.A_adjoint, y_, z=z_, init=init, gamma=g_, tol=1e-6, max_iter=60).sum().backward()
    torch.testing.assert_close(z.grad, z_.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(y.grad, y_.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gamma.grad, g_.grad, rtol=5e-2, atol=5e-2)
