"""Smoke test of the robustness benchmark: tiny sizes, JSON shape, relations that must hold (no timing)."""

import json
import math

import pytest
import torch

from deepinv_mol.bench.robustness import bench_robustness, random_amplification

pytestmark = pytest.mark.usefixtures("one_thread")

ROW_KEYS = {
    "task", "model", "budget", "image_size", "n_images", "steps", "worst_case", "worst_case_mean", "random_mean",
    "random_max", "worst_to_random", "certified_bound", "within_certificate", "ratio_to_modl",
    "worst_case_per_image", "random_per_image", "ascent_history", "slack", "network_lipschitz",
    "fixed_point_bound",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("robustness")
    rows = bench_robustness(tasks=("mri-radial-4x",), models=("mol-strict", "cg"), n_images=1, image_size=16,
                            budgets=(0.01, 0.05), steps=2, n_random=2, json_path=out / "r.json",
                            figure_path=out / "r.png", progress=False)
    return rows, json.loads((out / "r.json").read_text()), out / "r.png"


def test_json_shape(run):
    rows, payload, png = run
    assert set(payload) >= {"benchmark", "settings", "machine", "rows"}
    assert payload["benchmark"] == "robustness"
    assert payload["settings"]["budgets"] == [0.01, 0.05]
    assert len(payload["rows"]) == len(rows) == 2 * 2  # models x budgets
    for row in payload["rows"]:
        assert set(row) == ROW_KEYS
        assert len(row["worst_case_per_image"]) == len(row["random_per_image"]) == row["n_images"] == 1
        assert len(row["ascent_history"]) == row["steps"] + 1
    assert png.stat().st_size > 0


def test_amplification_relations(run):
    rows, _, _ = run
    for row in rows:
        assert 0 <= row["random_mean"] <= row["random_max"]
        assert row["worst_case"] >= 0 and math.isfinite(row["worst_case"])
        # the ascent starts at the largest random draw and keeps the best point it visits
        assert row["worst_case"] >= row["random_max"] * (1 - 1e-5)
        assert row["worst_case"] == max(row["worst_case_per_image"])
        assert row["ratio_to_modl"] is None  # MoDL not measured in this run
    strict = [r for r in rows if r["model"] == "mol-strict"]
    for row in strict:
        # the certificate bounds the exact fixed point; the tolerance-stopped reconstruction stays within it
        assert row["certified_bound"] is not None and row["certified_bound"] > 0
        assert row["worst_case"] <= row["certified_bound"] * (1 + 1e-3)
        assert row["within_certificate"] is True
        # the shipped models are scale-equivariant: the bound of the composite is above the fixed-point map's
        assert 0 < row["fixed_point_bound"] <= row["certified_bound"]
    assert all(r["certified_bound"] is None and r["within_certificate"] is None for r in rows if r["model"] == "cg")
    assert all(r["network_lipschitz"] is None for r in rows if r["model"] == "cg")  # no network
    # a local estimate is a lower bound of the certified Lipschitz bound (0.99 for the shipped strict network)
    assert all(0 < r["network_lipschitz"] <= 0.99 + 1e-3 for r in strict)


def test_linear_baseline_does_not_depend_on_budget(run):
    # CG is (up to its early stop) a linear map: random amplifications at 1 % and 5 % agree
    rows, _, _ = run
    cg = {r["budget"]: r for r in rows if r["model"] == "cg"}
    assert cg[0.01]["random_mean"] == pytest.approx(cg[0.05]["random_mean"], rel=0.1)


def test_random_amplification_of_a_linear_map():
    scale = torch.tensor([[3.0, 1.0, 0.5]])
    amps, deltas = random_amplification(lambda y, physics: scale * y, None, torch.ones(1, 3), eps=0.2, n_draws=3,
                                        generator=torch.Generator().manual_seed(0))
    assert len(amps) == 3 and all(0.5 - 1e-6 <= a <= 3.0 + 1e-6 for a in amps)
    assert all(float(d.norm()) == pytest.approx(0.2) for d in deltas)


def test_bad_arguments():
    with pytest.raises(ValueError, match="budgets must be positive"):
        bench_robustness(budgets=(0.0,), progress=False)
    with pytest.raises(ValueError, match="batch of 1"):
        random_amplification(lambda y, p: y, None, torch.ones(2, 3), eps=0.1)


def test_slack_split_of_the_shipped_strict_model(run):
    rows, _, _ = run
    for row in rows:
        if row["model"] != "mol-strict":
            assert row["slack"] is None
            continue
        s = row["slack"]
        assert s["total"] == pytest.approx(row["fixed_point_bound"] / row["worst_case"])
        # each factor is an inequality of the certificate's proof: >= 1 at (near-)exact fixed points
        for key in ("network", "alignment", "balance"):
            assert s[key] >= 1 - 1e-2, (key, s)


def test_certificate_slack_closes_at_exact_fixed_points():
    import deepinv as dinv

    from deepinv_mol.bench.robustness import certificate_slack
    from deepinv_mol.models import MonotoneCNN
    from deepinv_mol.optim import MOL

    g = torch.Generator().manual_seed(0)
    physics = dinv.physics.CompressedSensing(m=40, img_size=(1, 8, 8), rng=torch.Generator().manual_seed(1))
    net = MonotoneCNN(channels=1, width=4, depth=3, lipschitz=0.5).eval()
    model = MOL(denoiser=net, lambda_=2.0, alpha=1.0, tol=1e-7, max_iter=200).eval()
    model.warn = False  # the closure needs a tight solve, not a converged one (checked to 1e-3)
    y = physics(torch.rand(1, 1, 8, 8, generator=g))
    delta = 0.05 * torch.randn(y.shape, generator=g)
    s = certificate_slack(model, physics, y, delta, margin=1 - net.lipschitz_bound())
    # product of the three factors times the amplification is the bound (identity at exact fixed points)
    assert s["closure"] == pytest.approx(1.0, rel=1e-3)
    assert min(s["network"], s["alignment"], s["balance"]) >= 1 - 1e-6
    assert s["amplification"] <= s["sqrt_bound"]
    with pytest.raises(ValueError, match="margin must be in"):
        certificate_slack(model, physics, y, delta, margin=0.0)


def test_network_of_mol_and_of_deepinv_modl():
    from deepinv_mol.bench.robustness import _network
    from deepinv_mol.models import MonotoneCNN
    from deepinv_mol.optim import MOL
    from deepinv_mol.optim.baselines import MoDLBaseline

    net = MonotoneCNN(channels=1, width=4, depth=2)
    assert _network(MOL(denoiser=net)) is net
    assert _network(MoDLBaseline(denoiser=net, num_iter=2)) is net
    assert _network(lambda y, physics: y) is None
