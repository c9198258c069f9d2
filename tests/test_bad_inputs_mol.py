"""Bad inputs to MOL and its solvers: a table of (case, call, exception type, message regex). Each must fail
early with a clear message naming what was expected (no broadcast, no silent NaN, no deep crash)."""

import math

import deepinv as dinv
import pytest
import torch

from deepinv_mol.equilibrium import fixed_point
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import MOL

N = 8


def _ctx():
    torch.manual_seed(0)
    mask = (torch.rand(N, N) < 0.5).float()
    physics = dinv.physics.MRI(mask=mask, img_size=(2, N, N))
    x = torch.rand(2, 2, N, N)
    net = MonotoneCNN(width=4, depth=2).eval()
    return dict(physics=physics, x=x, y=physics(x), net=net, model=MOL(net, lambda_=10.0))


def _forward_with(denoiser):
    def call(c):
        MOL(denoiser, lambda_=10.0)(c["y"], c["physics"])

    return call


CASES = [
    # constructor: numbers
    ("lambda inf", lambda c: MOL(c["net"], lambda_=math.inf), ValueError, r"lambda_ must be a finite number > 0, got inf"),
    ("lambda nan", lambda c: MOL(c["net"], lambda_=math.nan), ValueError, r"lambda_ must be a finite number > 0, got nan"),
    ("lambda zero", lambda c: MOL(c["net"], lambda_=0.0), ValueError, r"lambda_ must be a finite number > 0"),
    ("lambda negative", lambda c: MOL(c["net"], lambda_=-1.0), ValueError, r"lambda_ must be a finite number > 0"),
    ("lambda str", lambda c: MOL(c["net"], lambda_="1"), ValueError, r"lambda_ must be a finite number"),
    ("alpha inf", lambda c: MOL(c["net"], alpha=math.inf), ValueError, r"alpha must be a finite number > 0"),
    ("alpha nan", lambda c: MOL(c["net"], alpha=math.nan), ValueError, r"alpha must be a finite number > 0"),
    ("alpha zero", lambda c: MOL(c["net"], alpha=0.0), ValueError, r"alpha must be a finite number > 0"),
    ("learnt alpha 1", lambda c: MOL(c["net"], alpha=1.0, learn_alpha=True), ValueError, r"initial alpha must be < 1"),
    ("max_iter True", lambda c: MOL(c["net"], max_iter=True), ValueError, r"max_iter must be an integer >= 1, got True"),
    ("max_iter 2.5", lambda c: MOL(c["net"], max_iter=2.5), ValueError, r"max_iter must be an integer >= 1, got 2.5"),
    ("max_iter str", lambda c: MOL(c["net"], max_iter="10"), ValueError, r"max_iter must be an integer >= 1, got '10'"),
    ("max_iter 0", lambda c: MOL(c["net"], max_iter=0), ValueError, r"max_iter must be an integer >= 1, got 0"),
    ("tol negative", lambda c: MOL(c["net"], tol=-1e-3), ValueError, r"tol must be a finite number >= 0"),
    ("tol nan", lambda c: MOL(c["net"], tol=math.nan), ValueError, r"tol must be a finite number >= 0"),
    ("anderson negative", lambda c: MOL(c["net"], anderson=-2), ValueError, r"anderson must be a bool or an integer"),
    ("anderson 2.5", lambda c: MOL(c["net"], anderson=2.5), ValueError, r"anderson must be a bool or an integer"),
    ("init_cg_iter -1", lambda c: MOL(c["net"], init_cg_iter=-1), ValueError, r"init_cg_iter must be an integer >= 0"),
    ("init_eps nan", lambda c: MOL(c["net"], init_eps=math.nan), ValueError, r"init_eps must be a finite number >= 0"),
    # constructor: configurations and names
    ("backward name", lambda c: MOL(c["net"], backward="unrolled"), ValueError, r"backward must be 'implicit' or 'jfb'"),
    ("backward key", lambda c: MOL(c["net"], backward=dict(foo=1)), ValueError, r"backward has unknown keys \['foo'\]"),
    ("backward type", lambda c: MOL(c["net"], backward=3), TypeError, r"backward must be 'implicit', 'jfb', a BackwardConfig"),
    ("dc forcing 1", lambda c: MOL(c["net"], data_consistency=dict(forcing=1.0)), ValueError, r"forcing must be in \[0, 1\)"),
    ("dc tol_factor 0", lambda c: MOL(c["net"], data_consistency=dict(tol_factor=0.0)), ValueError, r"tol_factor must be in \(0, 1\)"),
    ("dc max_iter 0", lambda c: MOL(c["net"], data_consistency=dict(max_iter=0)), ValueError, r"max_iter must be an integer >= 1"),
    ("dc key", lambda c: MOL(c["net"], data_consistency=dict(cg_iter=5)), TypeError, r"unexpected keyword argument 'cg_iter'"),
    ("dc type", lambda c: MOL(c["net"], data_consistency=5), TypeError, r"data_consistency must be a DataConsistencyConfig"),
    ("legacy cg_iter", lambda c: MOL(c["net"], cg_iter=5), TypeError, r"MOL no longer takes cg_iter: .*DataConsistencyConfig"),
    ("legacy backward_tol", lambda c: MOL(c["net"], backward_tol=1e-5), TypeError, r"no longer takes backward_tol.*BackwardConfig"),
    ("unknown kwarg", lambda c: MOL(c["net"], lamda=1.0), TypeError, r"unexpected keyword arguments \['lamda'\]"),
    ("denoiser not callable", lambda c: MOL(denoiser=3), TypeError, r"denoiser must be a callable network"),
    # forward
    ("empty batch", lambda c: c["model"](c["y"][:0], c["physics"]), ValueError, r"non-empty batch .* got shape \(0,"),
    ("y numpy", lambda c: c["model"](c["y"].numpy(), c["physics"]), TypeError, r"y must be a torch.Tensor of measurements"),
    ("physics not linear", lambda c: c["model"](c["y"], object()), TypeError, r"MOL needs a linear physics with A"),
    ("init shape", lambda c: c["model"](c["y"], c["physics"], init=c["x"][:, :1]), ValueError, r"init must have the image shape \(2, 2, 8, 8\)"),
    ("init type", lambda c: c["model"](c["y"], c["physics"], init=1.0), TypeError, r"init must be a torch.Tensor image"),
    ("x_gt shape", lambda c: c["model"](c["y"], c["physics"], x_gt=c["x"][:1]), ValueError, r"x_gt must have the image shape"),
    ("forward kwarg", lambda c: c["model"](c["y"], c["physics"], foo=1), TypeError, r"unexpected keyword argument 'foo'"),
    ("y NaN", lambda c: c["model"](c["y"].index_fill(0, torch.tensor([1]), math.nan), c["physics"]), ValueError,
     r"y contains non-finite values \(NaN or Inf\) in items \[1\]"),
    # the denoiser's output
    ("denoiser 2->1 channels", _forward_with(torch.nn.Conv2d(2, 1, 3, padding=1)), ValueError,
     r"denoiser must return an image of the input's shape \(2, 2, 8, 8\), got \(2, 1, 8, 8\)"),
    ("denoiser scalar", _forward_with(lambda x: x.sum()), ValueError, r"input's shape \(2, 2, 8, 8\), got \(\)"),
    ("denoiser not tensor", _forward_with(lambda x: 0.5), ValueError, r"input's shape \(2, 2, 8, 8\), got float"),
    # the engine
    ("fixed_point empty", lambda c: fixed_point(lambda z: z, torch.zeros(0, 3)), ValueError, r"z0 is an empty batch"),
    ("fixed_point max_iter bool", lambda c: fixed_point(lambda z: z, torch.zeros(1, 3), max_iter=True), TypeError,
     r"max_iter must be an integer, got True"),
]


@pytest.mark.parametrize("case, call, exc, match", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, call, exc, match):
    c = _ctx()
    with pytest.raises(exc, match=match):
        call(c)


def test_documented_results_not_errors():
    """Edge cases with a documented result instead of an error: tol=0 runs to max_iter (not converged),
    anderson=True means history 5, a network producing NaN is reported as diverged (no silent NaN success)."""
    c = _ctx()
    model = MOL(c["net"], lambda_=10.0, tol=0.0, max_iter=3, warn=False)
    model(c["y"], c["physics"])
    assert model.stats["iterations"] == 3 and not model.stats["converged"]
    assert MOL(c["net"], anderson=True).anderson == 5
    # a network that produces NaN: reported as diverged, the best finite iterate returned
    model = MOL(lambda x: x * math.nan, lambda_=10.0, warn=False)
    with torch.no_grad():
        out = model(c["y"], c["physics"])
    assert not model.stats["converged"] and model.stats["diverged"]
    assert bool(torch.isfinite(out).all())
