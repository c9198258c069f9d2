"""Bad inputs to LUSER (and the baselines): each case gets a clear error naming the problem (issue 13)."""

import math

import deepinv as dinv
import numpy as np
import pytest
import torch
from torch import nn

from deepinv_mol.optim import LUSER
from deepinv_mol.optim.baselines import CGReconstruction, MoDLBaseline

pytestmark = pytest.mark.usefixtures("one_thread")


class Identity(nn.Module):
    def forward(self, x, sigma=None):
        return x


CONSTRUCTION = [
    (dict(num_iter=True), TypeError, "num_iter must be an int, got bool True"),
    (dict(num_iter=2.0), TypeError, "num_iter must be an int, got float"),
    (dict(num_iter=0), ValueError, "num_iter must be an int >= 1, got 0"),
    (dict(num_iter="5"), TypeError, "num_iter must be an int"),
    (dict(shared=1), TypeError, "shared must be a bool"),
    (dict(step_size=math.inf), ValueError, "step_size must be a positive finite float"),
    (dict(step_size=math.nan), ValueError, "step_size must be a positive finite float"),
    (dict(step_size=0.0), ValueError, "step_size"),
    (dict(step_size=True), TypeError, "step_size must be a positive float or 'auto', got bool"),
    (dict(step_size="Auto"), ValueError, "step_size must be a positive float or 'auto', got 'Auto'"),
    (dict(data_consistency="prox"), ValueError, "data_consistency must be 'cg' or 'gradient', got 'prox'"),
    (dict(init=None), ValueError, "init must be 'cg' or 'adjoint', got None"),
    (dict(cg_max_iter=0), ValueError, "cg_max_iter must be an int >= 1"),
    (dict(cg_max_iter=False), TypeError, "cg_max_iter must be an int"),
    (dict(cg_tol=0.0), ValueError, r"cg_tol must be a finite float in \(0.0, 1.0\)"),
    (dict(cg_tol=2.0), ValueError, "cg_tol"),
    (dict(init_eps=-1e-2), ValueError, "init_eps must be a finite float"),
    (dict(init_eps=math.inf), ValueError, "init_eps"),
    (dict(init_max_iter=-1), ValueError, "init_max_iter must be an int >= 0"),
    (dict(channels=0), ValueError, "channels must be an int >= 1"),
    (dict(dims=4), ValueError, "dims must be 2 or 3, got 4"),
    (dict(regularizer_kwargs="width=8"), TypeError, "regularizer_kwargs must be a dict or None"),
    (dict(regularizer_kwargs=dict(widht=8)), TypeError, "widht"),
    (dict(regularizer=Identity(), regularizer_kwargs=dict(width=8)), ValueError, "regularizer_kwargs only apply"),
    (dict(divergence_factor=1.0), ValueError, "divergence_factor"),
]


@pytest.mark.parametrize("kwargs, error, match", CONSTRUCTION, ids=[str(c[0]) for c in CONSTRUCTION])
def test_luser_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        LUSER(**kwargs)


@pytest.fixture
def problem():
    physics = dinv.physics.BlurFFT((1, 12, 12), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    x = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    return physics, physics(x)


CALLS = [
    (lambda y, p: (y.numpy(), p), {}, TypeError, "expects measurements y as a torch.Tensor, got ndarray"),
    (lambda y, p: (y, lambda t: t), {}, TypeError, "needs a deepinv.physics.LinearPhysics"),
    (lambda y, p: (y, p), dict(init=np.zeros((1, 1, 12, 12))), TypeError, "init must be a torch.Tensor"),
    (lambda y, p: (y, p), dict(init=torch.zeros(1, 1, 10, 10)), ValueError, r"init must have the shape of A\^H y"),
    (lambda y, p: (y, p), dict(sigma=0.1), TypeError, "unexpected keyword arguments"),
]


@pytest.mark.parametrize("args, kwargs, error, match", CALLS, ids=[c[3] for c in CALLS])
def test_luser_call(problem, args, kwargs, error, match):
    physics, y = problem
    model = LUSER(num_iter=1, channels=1, regularizer_kwargs=dict(width=4))
    with pytest.raises(error, match=match):
        model(*args(y, physics), **kwargs)


def test_luser_nan_measurements_are_reported_not_silent(problem):
    physics, y = problem
    y = y.clone()
    y[0, 0, 3, 3] = float("nan")
    model = LUSER(num_iter=1, channels=1, regularizer=Identity())
    with pytest.warns(RuntimeWarning, match="non-finite"):
        model(y, physics)
    assert model.stats["diverged"] is True and model.stats["converged"] is False


@pytest.mark.parametrize(
    "cls, kwargs, error, match",
    [
        (CGReconstruction, dict(eps=0.0), ValueError, "eps must be > 0"),
        (CGReconstruction, dict(eps=-1.0), ValueError, "eps"),
        (CGReconstruction, dict(max_iter=True), TypeError, "max_iter must be an int"),
        (CGReconstruction, dict(tol=math.nan), TypeError, "tol must be a finite float"),
        (MoDLBaseline, dict(num_iter=0), ValueError, "num_iter must be >= 1"),
        (MoDLBaseline, dict(stepsize=-2.0), ValueError, "stepsize must be > 0"),
        (MoDLBaseline, dict(stepsize=1.0, min_stepsize=2.0), ValueError, "min_stepsize .* must not exceed stepsize"),
        (MoDLBaseline, dict(init_max_iter=1.5), TypeError, "init_max_iter must be an int"),
    ],
)
def test_baseline_construction(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)
