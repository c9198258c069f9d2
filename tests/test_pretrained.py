"""load_pretrained and the reconstructors behind the CLI's model names."""

import json
import sys
from pathlib import Path

import deepinv as dinv
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from pretrained_reference import REFERENCE, psnr, reference_problem  # noqa: E402

from deepinv_mol import pretrained
from deepinv_mol.models import MonotoneCNN
from deepinv_mol.optim.baselines import MoDLBaseline
from deepinv_mol.optim.data_consistency import start_image
from deepinv_mol.pretrained import (
    CGReconstruction,
    FBPReconstruction,
    MissingWeightsError,
    AdjointReconstruction,
    build_model,
    default_config,
    file_sha256,
    get_reconstructor,
    load_pretrained,
    read_manifest,
)

TINY = {"cnn": {"channels": 2, "width": 4, "depth": 2, "constraint": "penalty"}, "modl": {"num_iter": 3}}


def _mri(shape=(2, 16, 16), full=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(shape[-2:]) if full else (torch.rand(shape[-2:], generator=g) < 0.5).float()
    return dinv.physics.MRI(mask=mask, img_size=shape)


def _write_weights(directory, model, key="mri-radial-4x/modl", config=TINY):
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), directory / "w.pt")
    entry = {"file": "w.pt", "sha256": file_sha256(directory / "w.pt"), "config": config}
    (directory / "manifest.json").write_text(json.dumps({"models": {key: entry}}))


def test_unknown_names_are_value_errors():
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        load_pretrained("unet", "mri-radial-4x")
    with pytest.raises(ValueError, match="unknown task 'mri-radial-2x'"):
        load_pretrained("modl", "mri-radial-2x")
    with pytest.raises(ValueError, match="unknown model"):
        get_reconstructor("sense", "mri-radial-4x")


def test_missing_weights_say_what_is_available(tmp_path):
    with pytest.raises(MissingWeightsError, match="no weights for model 'mol-strict' on task 'mri-radial-4x'.*none"):
        load_pretrained("mol-strict", "mri-radial-4x", directory=tmp_path)
    torch.manual_seed(0)
    _write_weights(tmp_path, build_model("modl", config=TINY))
    with pytest.raises(MissingWeightsError, match=r"available: modl \(mri-radial-4x\)"):
        load_pretrained("mol-strict", "mri-radial-4x", directory=tmp_path)
    (tmp_path / "w.pt").unlink()
    with pytest.raises(MissingWeightsError, match="missing"):
        load_pretrained("modl", "mri-radial-4x", directory=tmp_path)


def test_round_trip_and_checksum(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("modl", config=TINY)
    _write_weights(tmp_path, model)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path))
    loaded = load_pretrained("modl", "mri-radial-4x")  # found through $DEEPINV_MOL_WEIGHTS
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    physics = _mri()
    y = physics(torch.rand(1, 2, 16, 16))
    # an entry without the scale options (as every entry before them) loads as the benchmarked, scale-equivariant model
    assert loaded.scale_equivariant and loaded.scale_reference == 0.71
    assert not model.scale_equivariant
    model.scale_equivariant, model.scale_reference = True, 0.71
    with torch.no_grad():
        assert torch.allclose(loaded(y, physics), model.eval()(y, physics))
    # a replaced file no longer matches the manifest
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="checksum"):
        load_pretrained("modl", "mri-radial-4x")


def test_malformed_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("name", pretrained.LEARNED_MODELS)
def test_build_model_shapes(name):
    torch.manual_seed(0)
    cfg = default_config(name, channels=1)
    json.dumps(cfg)  # what the manifest stores must be JSON
    model = build_model(name, config=cfg)
    assert isinstance(model, dinv.models.Reconstructor) or hasattr(model, "forward")
    n_params = sum(p.numel() for p in model.parameters())
    assert 0 < n_params < 600_000  # "a few MB" of float32 weights in total for 8 models


def test_modl_uses_the_mol_network():
    mol, modl = default_config("mol-penalty"), default_config("modl")
    assert modl["cnn"] == mol["cnn"] and modl["modl"]["num_iter"] == 10
    model = build_model("modl")
    assert isinstance(model, dinv.models.MoDL) and isinstance(model, MoDLBaseline)
    assert type(model.prior[0].denoiser).__name__ == "MonotoneCNN"


def test_modl_starts_like_mol():
    """MoDL starts from MOL's CG image (not deepinv's A^H y) and with MOL's data weight alpha * lambda."""
    physics = _mri()
    y = physics(torch.rand(1, 2, 16, 16))
    modl, mol = build_model("modl"), build_model("mol-penalty")
    assert torch.allclose(modl.start(y, physics), mol.initialise(y, physics))
    assert not torch.allclose(modl.start(y, physics), physics.A_adjoint(y))
    steps = [float(s) for s in modl.params_algo["stepsize"]]
    assert steps == [float(mol.alpha) * float(mol.lambda_)] * 10
    # its step sizes stay positive (projected before every forward): an indefinite data step diverged on CT
    with torch.no_grad():
        modl.params_algo["stepsize"][3].fill_(-1.0)
    x_hat = modl(y, physics)
    assert float(modl.params_algo["stepsize"][3]) == pytest.approx(0.1 * steps[0]) and torch.isfinite(x_hat).all()
    assert modl.stats["iterations"] == 10 and modl.stats["converged"] is None
    assert set(modl.stats) == {"iterations", "converged", "scale"} and modl.stats["scale"][0] > 0


class _HookedMoDL(dinv.models.MoDL):
    """How main (f1cd731) built the MoDL baseline: deepinv's MoDL patched from outside (custom_init + hook)."""

    def __init__(self, denoiser, num_iter, stepsize, init_max_iter, init_eps):
        super().__init__(denoiser=denoiser, num_iter=num_iter)
        self.custom_init = lambda y, physics: start_image(y, physics, eps=init_eps, max_iter=init_max_iter)
        with torch.no_grad():
            for step in self.params_algo["stepsize"]:
                step.fill_(stepsize)

        def positive(module, args):
            with torch.no_grad():
                for step in module.params_algo["stepsize"]:
                    step.clamp_(min=0.1 * stepsize)

        self.register_forward_pre_hook(positive)


@pytest.mark.parametrize("task", ["mri-radial-4x", "ct-sparse-view"])
def test_modl_subclass_equals_the_hooked_deepinv_modl(task):
    """The subclass loads the shipped MoDL state_dicts unchanged and computes what the patched deepinv MoDL did."""
    entry = read_manifest(pretrained._WEIGHTS_DIR)[f"{task}/modl"]
    physics, x, y = reference_problem(task, 32)
    model = load_pretrained("modl", task, directory=pretrained._WEIGHTS_DIR)
    model.scale_equivariant = False  # the patched deepinv MoDL had no intensity scale (tests/test_scaling.py)
    cfg = entry["config"]["modl"]
    old = _HookedMoDL(MonotoneCNN(**entry["config"]["cnn"]), cfg["num_iter"], cfg["stepsize"], cfg["init_max_iter"],
                      cfg["init_eps"])
    state = pretrained.load_weights(pretrained._WEIGHTS_DIR / entry["file"])
    assert set(old.state_dict()) == set(state) == set(model.state_dict())
    old.load_state_dict(state)
    old.eval()
    with torch.no_grad():
        # equal up to the projector's rounding: AstraCT switches to its (1e-7-exact) sparse matrix after 32 calls
        new_out, old_out = model(y, physics), old(y, physics)
    assert float((new_out - old_out).norm() / old_out.norm()) < 1e-4


def test_adjoint_and_cg_solve_what_they_claim():
    physics = _mri()
    x = torch.rand(2, 2, 16, 16)
    y = physics(x)
    # the adjoint, rescaled per item by the scalar that best fits the measurements: a stationary point in c
    x_adj = AdjointReconstruction()(y, physics)
    aty = physics.A_adjoint(y)
    for b in range(2):
        c = (x_adj[b] * aty[b]).sum() / aty[b].pow(2).sum()
        assert torch.allclose(x_adj[b], c * aty[b], rtol=1e-5, atol=1e-7)

        def misfit(s):
            return float((physics.A(s * x_adj[b : b + 1]) - y[b : b + 1]).abs().pow(2).sum())

        assert misfit(1.0) < min(misfit(0.95), misfit(1.05))
    cg = CGReconstruction(eps=1e-2, max_iter=200, tol=1e-6)
    x_hat = cg(y, physics)
    weight = 1e-2 * float(physics.compute_sqnorm(torch.randn_like(x), verbose=False))
    residual = physics.A_adjoint_A(x_hat) + weight * x_hat - physics.A_adjoint(y)
    assert residual.norm() < 1e-4 * physics.A_adjoint(y).norm()
    # the solver's own statistics: converged means the reported residual is within tol
    assert cg.stats["converged"] and cg.stats["residual"] <= 1e-6 and 1 <= cg.stats["iterations"] < 200
    # a blur has many eigenvalues: CG capped at 2 iterations must say it did not converge
    blur = dinv.physics.BlurFFT((1, 16, 16), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    short = CGReconstruction(eps=1e-2, max_iter=2, tol=1e-6)
    short(blur(torch.rand(1, 1, 16, 16)), blur)
    assert short.stats["iterations"] == 2 and short.stats["converged"] is False and short.stats["residual"] > 1e-6


def test_cg_norm_cache_is_keyed_by_the_object_not_its_id():
    """id() is reused once an object dies: the cache must not hand a dead physics' ||A||^2 to a new one."""
    import gc

    cg = CGReconstruction()
    x = torch.rand(1, 2, 16, 16)
    first = _mri(full=True)  # A^H A = I: ||A||^2 = 1
    cg(first(x), first)
    assert len(cg._sqnorms) == 1
    del first
    gc.collect()
    assert len(cg._sqnorms) == 0  # the entry died with its physics

    class Scaled(dinv.physics.LinearPhysics):
        def A(self, u, **kw):
            return 3.0 * u

        def A_adjoint(self, v, **kw):
            return 3.0 * v

    scaled = Scaled()
    assert cg.sqnorm(scaled, x) == pytest.approx(9.0, rel=1e-3)
    assert cg.sqnorm(_mri(full=True), x) == pytest.approx(1.0, rel=1e-3)


def test_cg_on_identity_normal_operator_takes_one_iteration():
    physics = _mri(full=True)  # fully sampled: A^H A = I
    y = physics(torch.rand(1, 2, 16, 16))
    cg = CGReconstruction(eps=1e-3)
    assert torch.allclose(cg(y, physics), physics.A_adjoint(y) / (1 + 1e-3), atol=1e-6)
    assert cg.stats["iterations"] == 1 and cg.stats["converged"]


@pytest.mark.parametrize("cls", [AdjointReconstruction, CGReconstruction, FBPReconstruction])
def test_baselines_report_config_and_stats(cls):
    model = cls()
    assert cls(**json.loads(json.dumps(model.get_config()))).get_config() == model.get_config()
    assert {"iterations", "converged"} <= set(model.stats)


def test_fbp_refuses_non_ct_physics():
    physics = _mri()
    with pytest.raises(ValueError, match="CT physics"):
        FBPReconstruction()(physics(torch.rand(1, 2, 16, 16)), physics)


def test_classical_names_resolve():
    assert isinstance(get_reconstructor("cg", "mri-radial-4x"), CGReconstruction)
    assert isinstance(get_reconstructor("fbp", "ct-sparse-view"), FBPReconstruction)


SHIPPED = pretrained.available_pretrained(pretrained._WEIGHTS_DIR)


def test_shipped_weights_are_small():
    manifest = read_manifest(pretrained._WEIGHTS_DIR)
    total = sum((pretrained._WEIGHTS_DIR / e["file"]).stat().st_size for e in manifest.values())
    assert total < 8e6
    for key, entry in manifest.items():
        assert entry["command"].startswith("deepinv-mol train"), key
        assert entry["train_seconds"] > 0 and entry["val_psnr"], key


@pytest.mark.parametrize("task,name", SHIPPED)
def test_shipped_weights_load(task, name):
    model = load_pretrained(name, task, directory=pretrained._WEIGHTS_DIR)
    assert not model.training


@pytest.fixture(scope="module")
def mri_test_image():
    """One embedded test slice of mri-radial-4x at full size (160 x 160) and its simulated measurements."""
    from deepinv_mol.evaluation import simulate_set
    from deepinv_mol.tasks import get_task
    from deepinv_mol.data import image_of

    task = get_task("mri-radial-4x")
    data = task.dataset("test")
    physics, xs, ys = simulate_set(task, image_of(data[len(data) // 2])[None], seed=0)
    return physics, xs[0], ys[0]


@pytest.mark.parametrize("name", [m for t, m in SHIPPED if t == "mri-radial-4x"])
def test_shipped_mri_models_beat_cg(name, mri_test_image):
    """Each shipped mri-radial-4x model is a real improvement over CG-SENSE on a held-out slice (the closing
    notes report the whole test split; one slice with a 1.5 dB margin keeps this test fast and robust)."""
    from deepinv.loss.metric import PSNR

    physics, x, y = mri_test_image
    psnr = PSNR(max_pixel=1.0, complex_abs=True)
    with torch.no_grad():
        cg = float(psnr(CGReconstruction()(y, physics), x))
        learned = float(psnr(load_pretrained(name, "mri-radial-4x", directory=pretrained._WEIGHTS_DIR)(y, physics), x))
    assert learned > cg + 1.5, (name, learned, cg)


# ---------------------------------------------------------------------------------------------------------
# the manifest stores complete configurations; unknown keys are errors; shipped models behave as on main


@pytest.mark.parametrize("task,name", SHIPPED)
def test_shipped_models_give_the_reference_outputs(task, name):
    """Every shipped model gives, on fixed 64x64 problems, the PSNR (within 0.05 dB) and output norm (within
    1e-3 relative) recorded in tests/pretrained_reference.py for the shipped weights."""
    ref = REFERENCE[f"{task}/{name}"]
    physics, x, y = reference_problem(task)
    model = load_pretrained(name, task, directory=pretrained._WEIGHTS_DIR)
    assert model.scale_equivariant  # what the package ships and benchmarks
    model.scale_equivariant = False  # the reference is the plain map (f1cd731 had no scale; see tests/test_scaling.py)
    with torch.no_grad():
        x_hat = model(y, physics)
    assert psnr(x_hat, x) == pytest.approx(ref["psnr"], abs=0.05)
    assert x_hat.flatten(1).norm(dim=1).tolist() == pytest.approx(ref["norm"], rel=1e-3)


@pytest.mark.parametrize("task,name", SHIPPED)
def test_manifest_configs_are_complete(task, name):
    """The stored configuration names every constructor argument: completing it changes nothing, so no class
    default can change a shipped model."""
    config = read_manifest(pretrained._WEIGHTS_DIR)[f"{task}/{name}"]["config"]
    assert pretrained.complete_config(name, config) == config
    for section, values in config.items():
        assert set(values) == set(pretrained._accepted(pretrained._section_class(section))), section


@pytest.mark.parametrize("name", pretrained.LEARNED_MODELS)
def test_model_rebuilt_from_its_stored_configuration_equals_the_original(name, tmp_path):
    torch.manual_seed(0)
    channels = 1
    config = {
        "mol-penalty": {"cnn": {"channels": 1, "width": 4, "depth": 2, "constraint": "penalty"}, "mol": {"lambda_": 3.0, "max_iter": 6}},
        "mol-strict": {"cnn": {"channels": 1, "width": 4, "depth": 2, "activation": "maxmin"}, "mol": {"lambda_": 0.5, "anderson": 2}},
        "modl": {"cnn": {"channels": 1, "width": 4, "depth": 2, "constraint": "penalty"}, "modl": {"num_iter": 2, "stepsize": 0.3}},
        "luser": {"luser": {"num_iter": 2, "channels": 1, "step_size": 0.2, "regularizer_kwargs": {"width": 4, "kernel_size": 3}}},
    }[name]
    model = build_model(name, config=config)
    with torch.no_grad():  # away from the initialisation: only the weights file can make the outputs equal
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    entry = pretrained.save_pretrained(model, tmp_path, "ct-sparse-view", name, config, {"command": "test"})
    assert entry["config"] == pretrained.complete_config(name, config)
    json.dumps(entry)
    torch.manual_seed(1)
    rebuilt = load_pretrained(name, "ct-sparse-view", directory=tmp_path)
    physics = dinv.physics.BlurFFT((channels, 12, 12), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    y = physics(torch.rand(1, channels, 12, 12, generator=torch.Generator().manual_seed(0)))
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(y, physics), model(y, physics))
    # the stored configuration is complete: completing it again changes nothing
    assert pretrained.complete_config(name, entry["config"]) == entry["config"]


def _entry_dir(tmp_path, mutate):
    torch.manual_seed(0)
    model = build_model("modl", config=TINY)
    entry = pretrained.save_pretrained(model, tmp_path, "mri-radial-4x", "modl", TINY)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    mutate(manifest["models"]["mri-radial-4x/modl"])
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return entry


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda e: e["config"]["cnn"].update(widht=8), "unknown key 'widht' in config.*\\['cnn'\\].*MonotoneCNN takes"),
        (lambda e: e["config"]["modl"].update(init={"max_iter": 20}), "unknown key 'init' in config.*\\['modl'\\]"),
        (lambda e: e["config"].update(mol={}), "unknown key 'mol' in config.*expected sections cnn, modl"),
        (lambda e: e.update(archtecture="x"), "unknown key 'archtecture' in manifest entry 'mri-radial-4x/modl'"),
    ],
)
def test_load_pretrained_refuses_unknown_keys(tmp_path, mutate, match):
    _entry_dir(tmp_path, mutate)
    with pytest.raises(ValueError, match=match):
        load_pretrained("modl", "mri-radial-4x", directory=tmp_path)


def test_build_model_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown key 'anderson' in config\\['luser'\\] of model 'luser'"):
        build_model("luser", config={"luser": {"anderson": 0}})


def _malicious_pickle(path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(path.parent / "pwned"), "w"))

    torch.save({"weight": Payload()}, path, pickle_module=pickle)


@pytest.mark.parametrize(
    "write, match",
    [
        (lambda p: p.write_bytes(b""), "is empty \\(0 bytes\\)"),
        (lambda p: p.write_text("{'weight': [1, 2, 3]}\n"), "is a text file, not PyTorch weights"),
        (lambda p: p.write_bytes(torch.randn(300).numpy().tobytes()), "not a PyTorch weights file|truncated or corrupted"),
        (lambda p: (torch.save({"w": torch.ones(1000)}, p), p.write_bytes(p.read_bytes()[:700])), "truncated or corrupted"),
        (lambda p: torch.save([torch.ones(2)], p), "does not hold a state_dict"),
        (_malicious_pickle, "holds objects other than tensors, refused"),
    ],
    ids=["empty", "text", "random", "truncated", "list", "malicious-pickle"],
)
def test_bad_weights_files_are_named_and_explained(tmp_path, write, match):
    path = tmp_path / "w.pt"
    write(path)
    with pytest.raises(pretrained.WeightsFileError, match=match) as err:
        pretrained.load_weights(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "pwned").exists()  # nothing from the file was executed


def test_load_pretrained_names_a_bad_weights_file(tmp_path):
    _entry_dir(tmp_path, lambda e: None)
    weights = tmp_path / "mri-radial-4x__modl.pt"
    weights.write_text("oops")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["models"]["mri-radial-4x/modl"]["sha256"] = file_sha256(weights)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pretrained.WeightsFileError, match="mri-radial-4x__modl.pt is a text file"):
        load_pretrained("modl", "mri-radial-4x", directory=tmp_path)
    # tensors that do not fit the configured model: named too
    torch.save({"nothing": torch.ones(1)}, weights)
    manifest["models"]["mri-radial-4x/modl"]["sha256"] = file_sha256(weights)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(pretrained.WeightsFileError, match="mri-radial-4x__modl.pt does not fit the model"):
        load_pretrained("modl", "mri-radial-4x", directory=tmp_path)


def test_save_pretrained_checks_before_writing(tmp_path):
    model = build_model("modl", config=TINY)
    with pytest.raises(pretrained.WeightsFileError, match="does not fit"):
        pretrained.save_pretrained({"x": torch.ones(1)}, tmp_path, "mri-radial-4x", "modl", TINY)
    with pytest.raises(ValueError, match="unknown manifest entry field 'notes'"):
        pretrained.save_pretrained(model, tmp_path, "mri-radial-4x", "modl", TINY, {"notes": "x"})
    assert not list(tmp_path.iterdir())
