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
