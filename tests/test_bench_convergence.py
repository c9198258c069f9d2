"""Smoke test of the convergence benchmark: tiny sizes, JSON shape, relations that must hold (no timing)."""

import json

import pytest
import torch

from deepinv_mol import load_pretrained
from deepinv_mol.bench.convergence import bench_convergence, mol_variant, run_recorded
from deepinv_mol.bench.report import bench_problem
from deepinv_mol.guarantees import equation_residual

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_ITER, AUTHORS_MAX_ITER = 60, 40


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("convergence")
    rows = bench_convergence(tasks=("mri-radial-4x",), models=("mol-strict",), n_images=1, image_size=16, n_starts=2,
                             max_iter=MAX_ITER, authors_max_iter=AUTHORS_MAX_ITER, json_path=out / "c.json",
                             figure_path=out / "c.png", progress=False)
    return rows, json.loads((out / "c.json").read_text()), out / "c.png"


def test_json_shape(run):
    rows, payload, png = run
    assert set(payload) >= {"benchmark", "settings", "machine", "rows", "curves"}
    assert payload["benchmark"] == "convergence" and len(payload["rows"]) == len(rows) == 1
    row = payload["rows"][0]
    for key in ("iterations_anderson", "iterations_plain", "iterations_authors", "speedup", "speedup_vs_authors",
                "converged_share", "converged_share_plain", "converged_share_authors", "error_anderson",
                "error_plain", "error_authors", "equation_residual_anderson", "uniqueness_spread", "alpha", "tol"):
        assert key in row, key
    runs = {c["run"] for c in payload["curves"]}
    assert runs == {"reference", "anderson", "plain", "authors"}
    for c in payload["curves"]:
        if c["run"] != "reference":
            assert len(c["residuals"]) == len(c["errors"]) == row[f"iterations_{c['run']}"]
    assert png.stat().st_size > 0


def test_convergence_relations(run):
    rows, _, _ = run
    row = rows[0]
    for key in ("converged_share", "converged_share_plain", "converged_share_authors"):
        assert 0.0 <= row[key] <= 1.0
    assert 1 <= row["iterations_anderson"] <= MAX_ITER and 1 <= row["iterations_plain"] <= MAX_ITER
    assert row["iterations_authors"] <= AUTHORS_MAX_ITER
    assert row["speedup"] == pytest.approx(row["iterations_plain"] / row["iterations_anderson"])
    # MOL-strict is certified monotone: one fixed point, reached from every start, to about the tolerance
    assert row["converged_share"] == 1.0
    assert 0.0 <= row["uniqueness_spread"] < 1e-3
    assert row["error_anderson"] < 1e-2 and row["error_plain"] < 1e-2
    # alpha = 0.01 stopped after 40 iterations is far from it: the point of the reference
    assert row["error_authors"] > row["error_anderson"]


def test_run_recorded_restores_the_model():
    problem = bench_problem("mri-radial-4x", n_images=1, image_size=16)
    model = mol_variant(load_pretrained("mol-strict", "mri-radial-4x"), max_iter=30)
    y = problem.ys[0]
    x, curve, stats, errors = run_recorded(model, y, problem.physics)
    assert "_solve" not in model.__dict__  # the recording wrapper is gone
    assert len(curve) == stats["iterations"] and errors == []
    assert curve[-1] <= model.tol  # the last step met the tolerance (alpha = 1)
    with torch.no_grad():
        again = model(y, problem.physics)
    assert torch.equal(again, x)  # recording does not change the reconstruction
    assert equation_residual(model, problem.physics, y, x_hat=x) < 1e-2


def test_mol_variant_checks():
    with pytest.raises(TypeError, match="MOL"):
        mol_variant(torch.nn.Linear(2, 2), anderson=0)
    model = load_pretrained("mol-strict", "mri-radial-4x")
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        mol_variant(model, alpha=2.0)
    variant = mol_variant(model, alpha=0.01, anderson=0)
    assert float(variant.alpha) == pytest.approx(0.01) and float(model.alpha) == 1.0 and model.anderson == 5
    with pytest.raises(ValueError, match="MOL models"):
        bench_convergence(models=("modl",), progress=False)
