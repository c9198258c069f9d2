"""Smoke test of the speed benchmark: tiny sizes, JSON shape and accounting identities (no timing assertions)."""

import json

import pytest

from deepinv_mol import load_pretrained
from deepinv_mol.bench.report import bench_problem
from deepinv_mol.bench.speed import PartTimer, bench_speed, mol_step_profile

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS = ("mol-strict", "cg", "adjoint", "fbp")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    rows = bench_speed(tasks=("ct-sparse-view",), models=MODELS, n_images=1, image_size=16, repeats=1,
                       json_path=out / "s.json", figure_path=out / "s.png", progress=False)
    return rows, json.loads((out / "s.json").read_text()), out / "s.png"


def test_json_shape(run):
    rows, payload, png = run
    assert set(payload) >= {"benchmark", "settings", "machine", "rows"} and payload["benchmark"] == "speed"
    assert {"cpu", "logical_cpus", "torch_threads", "torch", "deepinv"} <= set(payload["machine"])
    recon = [r for r in payload["rows"] if r["kind"] == "reconstruction"]
    assert [r["model"] for r in recon] == list(MODELS)
    for r in recon:
        assert r["seconds"] >= r["seconds_min"] > 0
    assert [r["iterations"] for r in recon if r["model"] in ("adjoint", "fbp")] == [None, None]
    assert recon[0]["iterations"] >= 1
    parts = [r["part"] for r in payload["rows"] if r["kind"] == "mol_step"]
    assert parts == ["network", "data consistency", "A^H A", "A", "A^H", "other"]
    ops = [r["part"] for r in payload["rows"] if r["kind"] == "operator"]
    assert ops == ["A", "A^H", "A^H A", "network"]
    assert len(rows) == len(payload["rows"]) and png.stat().st_size > 0


def test_step_accounting(run):
    rows, _, _ = run
    step = {r["part"]: r for r in rows if r["kind"] == "mol_step"}
    assert step["network"]["calls_per_step"] == 1.0  # one network evaluation per step
    assert step["data consistency"]["calls_per_step"] == 1.0
    assert step["A^H A"]["calls_per_step"] >= 1.0  # CG applies the normal operator at least once
    assert all(r["seconds_per_step"] >= 0 for r in step.values())
    # exclusive times: the parts and the remainder make up the step exactly
    assert sum(r["share"] for r in step.values()) == pytest.approx(1.0, abs=1e-6)


def test_profile_restores_the_objects():
    problem = bench_problem("mri-radial-4x", n_images=1, image_size=16)
    model = load_pretrained("mol-penalty", "mri-radial-4x")
    prof = mol_step_profile(model, problem.ys[0], problem.physics)
    assert prof["steps"] == prof["calls"]["network"] == prof["iterations"]  # one network call per iteration (no extra final step)
    # the start image's CG (model.init_cg_iter iterations) is charged to the start image, not to the steps
    assert prof["start_calls"]["A^H A"] >= 1 and prof["start_calls"]["network"] == 0
    assert prof["calls"]["A^H A"] <= prof["steps"] * (model.dc_config.max_iter + 1)
    assert prof["start_seconds"] > 0
    for obj, attr in ((model, "_solve"), (model, "initialise"), (model.denoiser, "forward"),
                      (problem.physics, "A"), (problem.physics, "A_adjoint"), (problem.physics, "A_adjoint_A")):
        assert attr not in obj.__dict__


def test_part_timer_nesting():
    timer = PartTimer()
    inner = timer.wrap("inner", lambda v: v + 1)
    outer = timer.wrap("outer", lambda v: inner(inner(v)))
    assert outer(0) == 2
    assert timer.calls == {"inner": 2, "outer": 1}
    assert all(s >= 0 for s in timer.seconds.values())


def test_bad_profile_model():
    with pytest.raises(ValueError, match="profile_model"):
        bench_speed(profile_model="modl", progress=False)
