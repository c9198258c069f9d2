"""Intensity-scale equivariance (deepinv_mol.optim.scaling) and its robustness bound (guarantees, fact 6)."""

import math

import deepinv as dinv
import pytest
import torch

from deepinv_mol.guarantees import certify, model_robustness_bound, worst_case_perturbation
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import LUSER, MOL
from deepinv_mol.optim.baselines import MoDLBaseline
from deepinv_mol.optim.scaling import (
    TASK_SCALE_REFERENCE,
    apply_scale,
    band_size,
    measurement_scale,
    scale_lipschitz,
    scale_statistic,
)


def mri(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(n, n, generator=g) < 0.4).float()
    mask[:3, :3] = 1.0
    return dinv.physics.MRI(mask=mask, img_size=(2, n, n))


def phantom(n=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, n)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) < 0.6).float()
    mag = disk * (0.5 + 0.5 * torch.rand(n, n, generator=g))
    return torch.stack([mag, 0.3 * mag])[None]


def psnr_own_scale(x_hat, x):
    """PSNR of the magnitudes with the ground truth's own peak: unchanged when both are scaled alike."""
    m, g = x_hat.pow(2).sum(1).sqrt(), x.pow(2).sum(1).sqrt()
    return float(10 * torch.log10(g.max() ** 2 / (m - g).pow(2).mean()))


def models(scale_equivariant):
    torch.manual_seed(0)
    common = dict(scale_equivariant=scale_equivariant, scale_reference=0.7)
    # biased, non-identity networks: far from positively homogeneous, so intensity matters without the option
    mol = MOL(denoiser=MonotoneCNN(width=8, depth=3, constraint="strict", lipschitz=0.9), lambda_=5.0, tol=1e-6,
              max_iter=200, **common)
    modl = MoDLBaseline(MonotoneCNN(width=8, depth=3, constraint="penalty"), num_iter=3, stepsize=2.0, **common)
    luser = LUSER(num_iter=2, channels=2, regularizer_kwargs=dict(width=8), **common)
    for model in (mol, modl, luser):
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.2)
    return {"mol": mol.eval(), "modl": modl.eval(), "luser": luser.eval()}


@pytest.mark.parametrize("name", ["mol", "modl", "luser"])
def test_intensity_x10_and_x01_same_psnr_with_scale_equivariance(name):
    physics, x = mri(), phantom()
    y = physics.A(x)
    model = models(True)[name]
    with torch.no_grad():
        base = model(y, physics)
        s1 = torch.tensor(model.stats["scale"])
        for c in (10.0, 0.1):
            out = model(c * y, physics)
            assert abs(psnr_own_scale(out, c * x) - psnr_own_scale(base, x)) < 0.1
            assert torch.allclose(out, c * base, rtol=1e-3, atol=1e-4 * c * float(base.abs().max()))
            assert torch.allclose(torch.tensor(model.stats["scale"]), c * s1, rtol=1e-5)


@pytest.mark.parametrize("name", ["mol", "modl", "luser"])
def test_without_scale_equivariance_intensity_changes_the_psnr(name):
    physics, x = mri(), phantom()
    y = physics.A(x)
    model = models(False)[name]
    with torch.no_grad():
        base = psnr_own_scale(model(y, physics), x)
        gaps = [abs(psnr_own_scale(model(c * y, physics), c * x) - base) for c in (10.0, 0.1)]
    assert model.stats.get("scale") is None
    assert max(gaps) > 0.5, gaps


def test_config_round_trip_and_validation():
    for model in models(True).values():
        cfg = model.get_config()
        assert cfg["scale_equivariant"] is True and cfg["scale_reference"] == 0.7
    with pytest.raises(TypeError, match="scale_equivariant must be a bool"):
        MOL(denoiser=MonotoneCNN(width=4, depth=2), scale_equivariant="yes")
    with pytest.raises(ValueError, match="scale_reference must be a positive finite number"):
        MoDLBaseline(MonotoneCNN(width=4, depth=2), scale_reference=0.0)
    with pytest.raises(ValueError, match="scale_reference must be a positive finite number"):
        LUSER(num_iter=1, scale_reference=float("nan"))


def test_statistic_is_the_band_mean_of_magnitudes_and_homogeneous():
    x = torch.zeros(1, 2, 20, 10)  # 200 pixels: band ranks [198, 199)
    mag = torch.arange(200.0).reshape(20, 10)
    x[0, 0], x[0, 1] = 0.6 * mag, 0.8 * mag  # modulus = mag
    assert band_size(200) == (198, 199)
    assert float(scale_statistic(x)) == pytest.approx(198.0)
    assert float(scale_statistic(3 * x)) == pytest.approx(3 * 198.0)
    assert band_size(10) == (9, 10)  # at least one pixel


def test_measurement_scale_zero_measurements_give_one_and_bad_reference_fails():
    physics = mri()
    y = physics.A(torch.zeros(2, 2, 16, 16))
    assert measurement_scale(y, physics).flatten().tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="reference must be a positive finite number"):
        measurement_scale(y, physics, reference=-1.0)
    with pytest.raises(ValueError, match="one scale per batch item"):
        apply_scale(torch.ones(3, 2), torch.ones(2))


def test_scale_lipschitz_bounds_measured_changes_of_the_exact_tikhonov_scale():
    # s(y) = statistic((A^H A + eps I)^{-1} A^H y) / c with the exact solve: |s(y1) - s(y2)| <= L_s ||y1 - y2||
    physics, x = mri(), phantom()
    eps, c = 1e-2, 0.7
    exact = lambda y: _tikhonov(physics, y, eps)  # noqa: E731
    y = physics.A(x)
    g = torch.Generator().manual_seed(3)
    lip = scale_lipschitz(16 * 16, eps=eps, reference=c)
    worst = 0.0
    for _ in range(20):
        d = torch.randn(y.shape, generator=g) * 0.05
        ratio = abs(float(scale_statistic(exact(y + d)) - scale_statistic(exact(y)))) / c / float(d.norm())
        worst = max(worst, ratio)
    assert 0 < worst <= lip
    assert lip == pytest.approx(0.5 / math.sqrt(eps) / (c * math.sqrt(band_size(256)[1] - band_size(256)[0])))


def _tikhonov(physics, y, eps):
    # (A^H A + eps I)^{-1} A^H y = (I + A^H A / eps)^{-1} (A^H y / eps), solved to 1e-10
    from deepinv_mol.optim import regularised_solve

    return regularised_solve(physics, physics.A_adjoint(y) / eps, 1.0 / eps, tol=1e-10, max_iter=500)[0]


def test_worst_case_within_composite_bound_and_certify_reports_it():
    physics, x = mri(n=12), phantom(n=12)
    y = physics.A(5 * x)
    net = MonotoneCNN(width=6, depth=3, lipschitz=0.9).eval()
    for eq in (False, True):
        model = MOL(denoiser=net, lambda_=5.0, tol=1e-5, max_iter=100, scale_equivariant=eq).eval()
        rep = certify(model, physics, x, y=y)
        wc = worst_case_perturbation(model, physics, y, eps=0.05 * float(y.norm()), steps=3, solver_tol=1e-5,
                                     generator=torch.Generator().manual_seed(0))
        assert rep.scale_equivariant is eq
        assert wc.bound == pytest.approx(rep.model_robustness_bound, rel=1e-3)
        assert wc.value <= wc.bound
        if eq:
            assert rep.model_robustness_bound > rep.robustness_bound  # the scale adds a term
            assert rep.scale_lipschitz == pytest.approx(scale_lipschitz(144, eps=model.init_eps, op_norm=rep.operator_norm))
            # the bound is scale-free, like the model
            assert model_robustness_bound(model, physics, 10 * y) == pytest.approx(rep.model_robustness_bound, rel=1e-3)
        else:
            assert rep.model_robustness_bound == rep.robustness_bound
    assert certify(model, physics, x).model_robustness_bound is None  # scale-equivariant and no y: needs y


def test_pretrained_completion_fills_the_scale_options_of_old_entries():
    from deepinv_mol.pretrained import complete_scale_options, default_config

    old = {"cnn": {"channels": 2}, "mol": {"lambda_": 3.0}}
    new = complete_scale_options("mol-strict", "mri-radial-4x", old)
    assert new["mol"] == {"lambda_": 3.0, "scale_equivariant": True, "scale_reference": TASK_SCALE_REFERENCE["mri-radial-4x"]}
    assert "scale_equivariant" not in old["mol"]  # not modified
    kept = complete_scale_options("luser", "ct-sparse-view", {"luser": {"scale_equivariant": False}})
    assert kept["luser"]["scale_equivariant"] is False and kept["luser"]["scale_reference"] == 0.5
    assert default_config("modl", 1, 2.0, 0.5)["modl"]["scale_reference"] == 0.5
