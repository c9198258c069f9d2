"""The own-images tutorial's pipeline (docs/examples/demo_own_images.py) at a tiny size, and the script itself.

Images -> task.dataset_from -> deepinv.datasets.generate_dataset / HDF5Dataset -> deepinv.Trainer (MOL penalty,
deepinv's MoDL with the same CNN, LUSER) -> deepinv.test. What must hold for a deepinv user: training lowers
the loss, deepinv.test reports what the model computes when called directly, the Trainer's checkpoint
reads back with weights_only=True and rebuilds the same model, and MOL's statistics survive the Trainer.
"""

from __future__ import annotations

import os
import runpy
import warnings
from pathlib import Path

import deepinv as dinv
import pytest
import torch

from deepinv_mol.data import load_embedded, resize_images
from deepinv_mol.loss import LipschitzPenalty
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim import LUSER, MOL
from deepinv_mol.optim.baselines import MoDLBaseline
from deepinv_mol.tasks import get_task

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16
EPOCHS = 2
SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "examples" / "demo_own_images.py"


def _cnn():
    return MonotoneCNN(channels=2, width=4, depth=3, constraint="penalty", init="identity", lipschitz=0.9)


def _models(weight):
    # the tutorial's three models, smaller
    return {
        "MOL": MOL(denoiser=_cnn(), lambda_=weight, max_iter=20, tol=1e-3, warn=False, init_cg_iter=5,
                   backward=dict(tol=1e-3, max_iter=10), data_consistency=dict(backward_tol=1e-3, backward_max_iter=20)),
        "MoDL": MoDLBaseline(denoiser=_cnn(), num_iter=2, stepsize=weight, init_max_iter=5),
        "LUSER": LUSER(num_iter=2, channels=2, init_max_iter=5, regularizer_kwargs=dict(width=4)),
    }


def _mse(model, x, y, physics):
    model.eval()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(y, physics), x))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.manual_seed(0)
    work = tmp_path_factory.mktemp("own_images")
    task = get_task("mri-radial-4x", n_coils=2)  # 2 coils: the tutorial's 8 cost 4x the time
    train_images = resize_images(load_embedded("train").images[::18], (SIZE, SIZE))  # 4 images
    test_images = resize_images(load_embedded("test").images[::16], (SIZE, SIZE))  # 2 images
    physics = task.build_physics((2, SIZE, SIZE))
    path = dinv.datasets.generate_dataset(
        train_dataset=task.dataset_from(train_images, seed=0), test_dataset=task.dataset_from(test_images, seed=1),
        physics=physics, save_dir=work / "data", verbose=False,
    )
    train_set = dinv.datasets.HDF5Dataset(path, train=True, use_dict_output=True)
    test_set = dinv.datasets.HDF5Dataset(path, train=False, use_dict_output=True)
    x_train, y_train = (torch.stack([train_set[i][k] for i in range(len(train_set))]) for k in "xy")
    x_test, y_test = (torch.stack([test_set[i][k] for i in range(len(test_set))]) for k in "xy")
    loader = torch.utils.data.DataLoader(train_set, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
    models = _models(task.data_weight)
    before = {name: _mse(model, x_train, y_train, physics) for name, model in models.items()}
    losses = {"MOL": [dinv.loss.SupLoss(), LipschitzPenalty(weight=1e-4, reduced_batchsize=1)]}
    metrics = [dinv.metric.PSNR(complex_abs=True), dinv.metric.SSIM(complex_abs=True)]
    for name, model in models.items():
        trainer = dinv.Trainer(
            model, physics=physics, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), train_dataloader=loader,
            epochs=EPOCHS, losses=losses.get(name, dinv.loss.SupLoss()), metrics=metrics, online_measurements=False,
            save_path=work / name, device="cpu", compute_train_metrics=False, non_blocking_transfers=False,
            verbose=False, show_progress_bar=False,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    after = {name: _mse(model, x_train, y_train, physics) for name, model in models.items()}
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=2)
    results = {}
    for name, model in models.items():
        results[name] = dinv.test(model, test_loader, physics, metrics=metrics, device="cpu", verbose=False,
                                  show_progress_bar=False, non_blocking_transfers=False)
        if name == "MOL":
            results[name]["stats"] = dict(model.stats)
    return dict(task=task, physics=physics, work=work, models=models, before=before, after=after, results=results,
                x_test=x_test, y_test=y_test)


@pytest.mark.parametrize("name", ["MOL", "MoDL", "LUSER"])
def test_trainer_lowers_training_loss(pipeline, name):
    # 4 Adam steps at lr 1e-3 from the identity-initialised CNN (at lr 1e-2 MoDL's loss rose 200-fold)
    assert pipeline["after"][name] < pipeline["before"][name], (name, pipeline["before"], pipeline["after"])


@pytest.mark.parametrize("name", ["MOL", "MoDL", "LUSER"])
def test_deepinv_test_reports_the_models_reconstructions(pipeline, name):
    model, physics = pipeline["models"][name].eval(), pipeline["physics"]
    with torch.no_grad():
        x_hat = model(pipeline["y_test"], physics)
    psnr = dinv.metric.PSNR(complex_abs=True)(x_hat, pipeline["x_test"])
    result = pipeline["results"][name]
    assert result["PSNR"] == pytest.approx(float(psnr.mean()), abs=1e-3)
    # deepinv's default no-learning reference A^H y is off by the scale of A^H A: every model is far above it
    assert result["PSNR"] > result["PSNR no learning"] + 20
    assert 0 < result["SSIM"] <= 1


@pytest.mark.parametrize("name", ["MOL", "MoDL", "LUSER"])
def test_trainer_checkpoint_rebuilds_the_model(pipeline, name):
    files = sorted((pipeline["work"] / name).rglob(f"ckp_{EPOCHS - 1}.pth.tar"))
    assert len(files) == 1, files
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    assert state["epoch"] == EPOCHS - 1
    fresh = _models(pipeline["task"].data_weight)[name]
    fresh.load_state_dict(state["state_dict"])
    physics, y = pipeline["physics"], pipeline["y_test"][:2]
    trained = pipeline["models"][name].eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(y, physics), trained(y, physics), rtol=1e-5, atol=1e-6)


def test_mol_stats_survive_deepinv_test(pipeline):
    stats, mol = pipeline["results"]["MOL"]["stats"], pipeline["models"]["MOL"]
    assert stats["converged"] is True
    assert stats["equation_residual"] <= mol.tol
    assert 1 <= stats["iterations"] <= mol.max_iter


@pytest.mark.slow
def test_tutorial_script_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        namespace = runpy.run_path(str(SCRIPT), run_name="__main__")
    results, reference = namespace["results"], namespace["reference"]
    assert set(results) == {"MOL", "MoDL", "LUSER"}
    for name, r in results.items():
        assert r["PSNR"] > r["PSNR no learning"] - 10, (name, r)  # sane, and finite
    # MOL and LUSER beat the non-learned CG reconstruction after the tutorial's short training
    assert results["MOL"]["PSNR"] > reference["PSNR"]
    assert results["LUSER"]["PSNR"] > reference["PSNR"]
    assert namespace["mol"].stats["converged"] is True
    assert os.path.isfile(namespace["checkpoint"])
