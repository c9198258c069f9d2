"""The evaluation module (deepinv_mol.evaluation): iteration counts from `stats`, batching, one load of the
weights per model, the table's legend, output-path checks, the figure's shared error scale, data sources."""

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

from deepinv_mol import cli, evaluation, pretrained
from deepinv_mol.evaluation import (
    UserInputError,
    check_output_path,
    evaluate_models,
    format_table,
    iteration_counts,
    iterations_of,
    save_figure,
    simulate_set,
)
from deepinv_mol.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")


class _Fake(torch.nn.Module):
    def __init__(self, stats=None, **attrs):
        super().__init__()
        if stats is not None:
            self.stats = stats
        for k, v in attrs.items():
            setattr(self, k, v)


@pytest.mark.parametrize(
    "model,expected",
    [
        (_Fake({"iterations": 17, "converged": True}), (17.0, None)),  # MOL, CG
        (_Fake({"iterations": torch.tensor([3, 5])}), (4.0, None)),  # per-item counts: their mean
        (_Fake({"steps": 5, "iterations": 29, "iterations_per_step": [6, 6, 6, 6, 5]}), (5.0, 29.0)),  # LUSER
        (_Fake({"steps": 5}), (5.0, None)),  # LUSER with a feed-forward regulariser: no inner iterations
        (_Fake({"iterations": None}), (None, None)),  # direct methods
        (_Fake({}), (None, None)),  # missing keys read with .get: no crash
        (_Fake(), (None, None)),  # no stats at all
        (_Fake("not a dict"), (None, None)),
        (_Fake(unfold=True, max_iter=10), (10.0, None)),  # a deepinv unfolded model without stats
    ],
)
def test_iteration_counts_from_stats(model, expected):
    assert iteration_counts(model) == expected
    assert iterations_of(model) == expected[0]


@pytest.fixture(scope="module")
def small_problem():
    task = get_task("mri-radial-4x", size=32)
    images = torch.rand(3, 2, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.6
    physics, xs, ys = simulate_set(task, images, seed=3)
    return task, physics, xs, ys


def test_simulate_set_is_seeded_per_image(small_problem):
    task, physics, xs, ys = small_problem
    _, _, ys_again = simulate_set(task, torch.cat(xs[:2]), seed=3)
    assert torch.equal(ys_again[0], ys[0]) and torch.equal(ys_again[1], ys[1])
    assert len(xs) == len(ys) == 3 and xs[0].shape == (1, 2, 32, 32)


def test_batching_does_not_change_the_numbers(small_problem):
    task, physics, xs, ys = small_problem
    one, recons_one, _ = evaluate_models(task, ["adjoint", "cg"], xs, ys, physics, batch_size=1)
    all_, recons_all, _ = evaluate_models(task, ["adjoint", "cg"], xs, ys, physics, batch_size=None)
    two, _, _ = evaluate_models(task, ["adjoint"], xs, ys, physics, batch_size=2)  # a last, smaller batch
    assert one["adjoint"]["psnr_per_image"] == pytest.approx(all_["adjoint"]["psnr_per_image"], abs=1e-4)
    assert two["adjoint"]["psnr_per_image"] == pytest.approx(all_["adjoint"]["psnr_per_image"], abs=1e-4)
    assert one["cg"]["psnr_per_image"] == pytest.approx(all_["cg"]["psnr_per_image"], abs=0.05)
    assert len(recons_all["cg"]) == 3 and recons_all["cg"][0].shape == xs[0].shape
    r = one["cg"]
    assert r["psnr"] == pytest.approx(np.mean(r["psnr_per_image"])) and r["ssim"] == pytest.approx(np.mean(r["ssim_per_image"]))
    assert r["seconds"] > 0 and r["iterations"] >= 1 and r["inner_iterations"] is None
    with pytest.raises(ValueError, match="batch_size must be >= 1, None or .auto."):
        evaluate_models(task, ["cg"], xs, ys, physics, batch_size=0)
    with pytest.raises(ValueError, match="non-empty lists of one length"):
        evaluate_models(task, ["cg"], xs, ys[:2], physics)


def test_weights_read_and_hashed_once_per_model(tmp_path, monkeypatch, capsys):
    """One `eval` of a learned model reads and checks its weights once (it was twice)."""
    calls = []
    original = pretrained.file_sha256
    monkeypatch.setattr(pretrained, "file_sha256", lambda path: calls.append(path) or original(path))
    np.save(tmp_path / "img.npy", np.random.default_rng(0).random((1, 32, 32)).astype(np.float32))
    code = cli.main(["eval", "--task", "mri-radial-4x", "--images", str(tmp_path / "img.npy"), "--models", "modl,cg"])
    assert code == 0, capsys.readouterr().err
    assert len(calls) == 1, calls


def test_missing_weights(small_problem, tmp_path, monkeypatch):
    task, physics, xs, ys = small_problem
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    with pytest.raises(UserInputError, match="no weights for model 'modl'"):
        evaluate_models(task, ["cg", "modl"], xs, ys, physics)
    results, _, notes = evaluate_models(task, ["cg", "modl"], xs, ys, physics, on_missing="skip")
    assert list(results) == ["cg"] and notes[0].startswith("modl: skipped, no weights")


def test_ct_is_told_by_modality_not_by_name():
    ct = dataclasses.replace(get_task("ct-sparse-view"), name="xray-fan")
    cli._check_models_for_task(ct, ["fbp"])  # a CT task under any name takes the FBP baseline
    not_ct = dataclasses.replace(get_task("mri-radial-4x"), name="ct-like-name")
    with pytest.raises(UserInputError, match="'fbp' is a CT baseline; task 'ct-like-name' is a MRI task"):
        cli._check_models_for_task(not_ct, ["fbp"])


def test_table_has_legend_and_dashes():
    row = {"psnr": 30.0, "ssim": 0.9, "seconds": 1.5, "iterations": None, "inner_iterations": None, "converged": None}
    luser = dict(row, iterations=5.0, inner_iterations=29.0, converged=1.0)
    table = format_table({"adjoint": row, "luser": luser}, header="task t, data: d")
    lines = table.splitlines()
    assert lines[0] == "task t, data: d" and "s/image" in lines[1]
    assert lines[2].split() == ["adjoint", "30.00", "0.9000", "1.500", "-", "-", "-"]
    assert lines[3].split() == ["luser", "30.00", "0.9000", "1.500", "5.0", "29.0", "100%"]
    assert lines[4] == (
        "iterations: adjoint = - (direct: rescaled A^H y); luser = unrolled steps K; "
        "'inner' = equilibrium iterations summed over the K steps"
    )


def test_check_output_path(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert check_output_path(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"
    assert not (tmp_path / "new").exists()  # nothing created by the check
    assert check_output_path(tmp_path / "afile") == tmp_path / "afile"  # overwriting a file is fine
    with pytest.raises(UserInputError, match=r"--json .*afile/x.json cannot be written: .*afile is a file, not a folder"):
        check_output_path(tmp_path / "afile" / "x.json", "--json")
    with pytest.raises(UserInputError, match="it is a folder"):
        check_output_path(tmp_path, "--figure")


def test_figure_error_maps_share_one_scale(tmp_path):
    x = torch.zeros(1, 1, 16, 16)
    x[..., 4:12, 4:12] = 0.5
    small = x + 0.01 * torch.ones_like(x)
    large = x + 0.2 * torch.ones_like(x)
    vmax = save_figure([x], {"a": [small], "b": [large], "c": [x + 0.05]}, tmp_path / "f.png")
    # the shared top is the median over models of their 99.5th error percentile: 0.05 here, so "b" saturates
    assert vmax == pytest.approx(0.05, abs=1e-6)
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_ct_fallback_is_recorded_in_results(tmp_path, monkeypatch, capsys):
    """Without the head CT, the CT task uses the MRI slices with ONE warning, and every result says so."""
    from deepinv_mol import data

    monkeypatch.setattr(data, "HEAD_CT_PATH", str(tmp_path / "absent.inv3"))
    out = tmp_path / "r.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = cli.main(["eval", "--task", "ct-sparse-view", "--split", "test", "--n-images", "1", "--models", "fbp",
                         "--json", str(out)])
    stdout = capsys.readouterr().out
    assert code == 0
    fallback = [w for w in caught if "head CT is not installed" in str(w.message)]
    assert len(fallback) == 1
    source = json.loads(out.read_text())["data_source"]
    assert source.startswith("embedded (embedded MRI slices used as attenuation images") and source.endswith("test split")
    assert f"data: {source}" in stdout.splitlines()[0]
