r"""Recomputation of the differentiable steps (deepinv_mol.recompute, MOL/LUSER ``recompute=True``): the same
gradients as storing, and less kept for backward."""

import copy

import deepinv as dinv
import pytest
import torch

from deepinv_mol.bench.memory import saved_tensors_memory
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL
from deepinv_mol.recompute import recompute_call


def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dims,bias", [(2, True), (3, False)])
def test_lean_cnn_matches_stored(dims, bias):
    torch.manual_seed(0)
    net = MonotoneCNN(channels=2, width=8, depth=4, dims=dims, bias=bias).double()
    shape = (2, 2, 10, 12) if dims == 2 else (1, 2, 5, 6, 7)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape, dtype=torch.float64)
    out = {}
    for flag in (False, True):
        net.zero_grad(set_to_none=True)
        x.grad = None
        h = recompute_call(net, x) if flag else net(x)
        (h * w).sum().backward()
        out[flag] = (h.detach(), x.grad.clone(), _grads(net))
    assert _rel(out[True][0], out[False][0]) < 1e-12
    assert _rel(out[True][1], out[False][1]) < 1e-10
    assert out[True][2].keys() == out[False][2].keys() and len(out[True][2]) > 0
    for name in out[False][2]:
        assert _rel(out[True][2][name], out[False][2][name]) < 1e-10, name


def test_recompute_call_generic_module_uses_checkpoint():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 1, 3, padding=1))
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    recompute_call(net, x).sum().backward()
    g1 = x.grad.clone()
    x.grad = None
    net(x).sum().backward()
    assert _rel(g1, x.grad) < 1e-6


def _mri_problem(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, n, generator=g) < 0.4).float()
    physics = dinv.physics.MRI(mask=mask, img_size=(2, n, n))
    x = torch.rand(1, 2, n, n, generator=g)
    return physics, x, physics.A(x)


@pytest.mark.parametrize("backward", ["implicit", "jfb"])
def test_mol_recompute_same_gradients_and_less_saved(backward):
    torch.manual_seed(0)
    physics, x, y = _mri_problem()
    base = MOL(denoiser=MonotoneCNN(width=8, depth=4), lambda_=5.0, max_iter=30, tol=1e-6, backward=backward,
               recompute=False, warn=False)
    lean = copy.deepcopy(base)
    lean.recompute = True
    assert base.get_config()["recompute"] is False and MOL(warn=False).get_config()["recompute"] is True
    grads, saved = {}, {}
    for name, model in (("stored", base), ("recompute", lean)):
        model.train()
        saved[name] = saved_tensors_memory(model, y, physics, x)["saved_bytes"]
        grads[name] = _grads(model)
    assert grads["stored"].keys() == grads["recompute"].keys() and len(grads["stored"]) >= 5
    for name in grads["stored"]:
        assert _rel(grads["recompute"][name], grads["stored"][name]) < 1e-6, name
    # stored: the ReLU output of each hidden layer (3 width-8 maps of 16x16 float32); recomputed: none of them
    assert saved["stored"] - saved["recompute"] >= 2.5 * 8 * 16 * 16 * 4


def test_mol_recompute_must_be_bool():
    with pytest.raises(TypeError, match="recompute must be a bool"):
        MOL(recompute="yes")


def _shallow_pair(dims=2, backward="implicit"):
    from deepinv_mol.models import ShallowEquilibrium

    torch.manual_seed(0)
    kw = dict(channels=1, width=6, depth=2, kernel_size=3, dims=dims, tol=1e-10, max_iter=200, anderson=0,
              backward=backward, backward_tol=1e-10, backward_max_iter=300, backward_anderson=0, warn=False)
    stored = ShallowEquilibrium(recompute=False, **kw).double()
    lean = copy.deepcopy(stored)
    lean.recompute = True
    assert lean.get_config()["recompute"] is True and stored.get_config()["recompute"] is False
    return stored, lean


@pytest.mark.parametrize("dims,backward", [(2, "implicit"), (3, "implicit"), (2, "jfb")])
def test_shallow_equilibrium_recompute_same_gradients(dims, backward):
    stored, lean = _shallow_pair(dims, backward)
    shape = (2, 1, 9, 10) if dims == 2 else (1, 1, 5, 6, 4)
    v = torch.randn(shape, dtype=torch.float64)
    w = torch.randn(shape, dtype=torch.float64)
    out = {}
    for name, reg in (("stored", stored), ("lean", lean)):
        reg.eval()  # no power-iteration update: both see the same weights
        vv = v.clone().requires_grad_()
        r = reg(vv)
        (r * w).sum().backward()
        out[name] = (r.detach(), vv.grad, _grads(reg), dict(reg.stats))
    assert _rel(out["lean"][0], out["stored"][0]) < 1e-12
    assert _rel(out["lean"][1], out["stored"][1]) < 1e-6
    assert out["lean"][2].keys() == out["stored"][2].keys() and len(out["stored"][2]) == 8
    for name in out["stored"][2]:
        assert _rel(out["lean"][2][name], out["stored"][2][name]) < 1e-6, name
    if backward == "implicit":
        assert out["lean"][3]["backward_converged"] and out["lean"][3]["backward_iterations"] >= 2
        assert out["lean"][3]["backward_iterations"] == out["stored"][3]["backward_iterations"]


def test_luser_recompute_default_same_gradients_and_less_saved():
    from deepinv_mol.optim import LUSER

    torch.manual_seed(0)
    kernel = dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)).double()
    physics = dinv.physics.BlurFFT((1, 24, 24), filter=kernel)
    x = torch.rand(1, 1, 24, 24, dtype=torch.float64)
    y = physics(x)
    reg = dict(width=8, tol=1e-9, max_iter=400, backward_tol=1e-9, backward_max_iter=400, warn=False)
    lean = LUSER(num_iter=3, channels=1, cg_tol=1e-12, regularizer_kwargs=reg).double()
    assert lean.get_config()["regularizer_kwargs"]["recompute"] is True  # the default a user gets
    stored = LUSER(num_iter=3, channels=1, cg_tol=1e-12, regularizer_kwargs=dict(reg, recompute=False)).double()
    with torch.no_grad():
        lean(y, physics)  # fixes the "auto" step sizes (deepinv's power method) before copying them
    stored.load_state_dict(lean.state_dict())
    grads, saved = {}, {}
    for name, model in (("stored", stored), ("lean", lean)):
        model.eval()
        saved[name] = saved_tensors_memory(model, y, physics, x)["saved_bytes"]
        grads[name] = _grads(model)
        assert model.stats["backward_iterations"] >= 3
    assert stored.stats["backward_iterations"] == lean.stats["backward_iterations"]
    assert grads["stored"].keys() == grads["lean"].keys() and len(grads["stored"]) == 3 * 8 + 1
    for name in grads["stored"]:
        assert _rel(grads["lean"][name], grads["stored"][name]) < 1e-6, name
    # stored: per step at least z*, the step's ReLU outputs (3 width-8 maps of 24x24 float32)
    assert saved["stored"] - saved["lean"] >= 3 * 3 * 8 * 24 * 24 * 8


def test_shallow_recompute_must_be_bool():
    from deepinv_mol.models import ShallowEquilibrium

    with pytest.raises(TypeError, match="recompute must be a bool"):
        ShallowEquilibrium(recompute=1)
