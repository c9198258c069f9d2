"""The `deepinv-mol` command: error paths (one line on stderr, non-zero exit, no traceback), eval's JSON,
train + export + eval of a learned model on the real mri-radial-4x task (tiny sizes), demo without weights."""

import json
import subprocess
import sys

import numpy as np
import pytest

from deepinv_mol import cli, evaluation, pretrained


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, pattern):
    assert code != 0
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("deepinv-mol: error: "), lines[0]
    assert pattern in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.random((2, 32, 32)).astype(np.float32)
    path = tmp_path / "images.npy"
    np.save(path, stack)
    return path


@pytest.mark.parametrize(
    "argv,pattern",
    [
        (["eval", "--task", "mri-radial-2x", "--split", "test"], "unknown task 'mri-radial-2x'"),
        (["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "cg,unet"], "unknown model 'unet'"),
        (["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "cg,cg"], "twice"),
        (["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "fbp"], "CT baseline"),
        (["eval", "--task", "mri-radial-4x", "--images", "/nonexistent/x.npy", "--models", "cg"], "does not exist"),
        (["eval", "--task", "mri-radial-4x"], "one of the arguments --images --split --heldout is required"),
        (["train", "--task", "mri-radial-4x", "--model", "unet"], "unknown model 'unet'"),
        (["train", "--task", "nope", "--model", "modl"], "unknown task 'nope'"),
        (["train", "--task", "mri-radial-4x", "--model", "modl", "--steps", "-3"], "positive integer"),
        (["train", "--task", "mri-radial-4x", "--model", "luser", "--width", "8"], "--width applies"),
        (["certify", "--model", "unet"], "unknown model 'unet'"),
        (["bench", "warp-speed"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_give_one_line(argv, pattern, capsys):
    code, _, err = _run(argv, capsys)
    _assert_one_line_error(code, err, pattern)


def test_malformed_and_misshapen_image_files(tmp_path, capsys):
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not an npy file")
    code, _, err = _run(["eval", "--task", "mri-radial-4x", "--images", str(garbage), "--models", "cg"], capsys)
    _assert_one_line_error(code, err, "not a readable .npy")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 32, 32), np.float32))
    code, _, err = _run(["eval", "--task", "mri-radial-4x", "--images", str(wrong), "--models", "cg"], capsys)
    _assert_one_line_error(code, err, "shape (2, 3, 32, 32)")
    too_bright = tmp_path / "bright.npy"
    np.save(too_bright, np.full((1, 32, 32), 7.0, np.float32))
    code, _, err = _run(["eval", "--task", "mri-radial-4x", "--images", str(too_bright), "--models", "cg"], capsys)
    _assert_one_line_error(code, err, "[0, 1]")
    complex_ct = tmp_path / "complex.npy"
    np.save(complex_ct, np.zeros((1, 2, 32, 32), np.float32))
    code, _, err = _run(["eval", "--task", "ct-sparse-view", "--images", str(complex_ct), "--models", "fbp"], capsys)
    _assert_one_line_error(code, err, "complex")


def test_missing_weights_is_a_one_line_error(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path / "empty"))
    code, _, err = _run(["eval", "--task", "mri-radial-4x", "--images", str(images), "--models", "cg,mol-strict"], capsys)
    _assert_one_line_error(code, err, "no weights for model 'mol-strict'")


def test_console_script_never_shows_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "deepinv_mol.cli", "eval", "--task", "mri-radial-4x", "--images", str(tmp_path / "no.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr


def test_eval_json_schema_and_means(images, tmp_path, capsys):
    out = tmp_path / "out.json"
    code, stdout, err = _run(
        ["eval", "--task", "mri-radial-4x", "--images", str(images), "--models", "cg,adjoint", "--json", str(out), "--seed", "1"],
        capsys,
    )
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert set(payload) == {"task", "n_images", "data_source", "models"}
    assert payload["task"] == "mri-radial-4x" and payload["n_images"] == 2
    assert payload["data_source"] == f"file {images}"
    assert list(payload["models"]) == ["cg", "adjoint"]
    for name, r in payload["models"].items():
        assert set(r) == {"psnr", "ssim", "psnr_per_image", "ssim_per_image", "seconds", "iterations",
                          "inner_iterations", "converged"}
        assert len(r["psnr_per_image"]) == len(r["ssim_per_image"]) == 2
        assert r["psnr"] == pytest.approx(sum(r["psnr_per_image"]) / 2)
        assert -1 <= r["ssim"] <= 1 and r["seconds"] > 0
    assert payload["models"]["adjoint"]["iterations"] is None
    assert payload["models"]["cg"]["iterations"] >= 1
    # CG inverts the normal equations; the (rescaled) adjoint keeps the radial streaks and blur
    assert payload["models"]["cg"]["psnr"] > payload["models"]["adjoint"]["psnr"] + 1
    assert "cg" in stdout and "PSNR" in stdout and "s/image" in stdout
    assert "iterations: cg = conjugate-gradient iterations" in stdout and f"data: file {images}" in stdout
    # same seed, same numbers (measurements are seeded per image)
    out2 = tmp_path / "out2.json"
    cli.main(["eval", "--task", "mri-radial-4x", "--images", str(images), "--models", "cg", "--json", str(out2), "--seed", "1"])
    capsys.readouterr()
    # (equal up to float32 summation order: torchkbnufft's threaded interpolation is not bitwise reproducible)
    assert json.loads(out2.read_text())["models"]["cg"]["psnr_per_image"] == pytest.approx(payload["models"]["cg"]["psnr_per_image"], rel=1e-5)


def test_train_export_eval_certify_learned_model(images, tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    code, stdout, err = _run(
        [
            "train", "--task", "mri-radial-4x", "--model", "mol-strict", "--steps", "3", "--stop-after", "2",
            "--batch-size", "1",
            "--crop", "24", "--width", "4", "--depth", "2", "--iters", "5", "--eval-every", "1", "--val-images", "1",
            "--out", str(tmp_path / "run"), "--export", str(weights), "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    assert "exported" in stdout
    entry = pretrained.read_manifest(weights)["mri-radial-4x/mol-strict"]
    assert entry["command"].startswith("deepinv-mol train --task mri-radial-4x --model mol-strict")
    assert entry["training"]["crop"] == 24 and len(entry["val_psnr"]) == 2
    assert entry["steps_done"] == 2 and "--stop-after 2" in entry["command"]  # a planned stop exports what it reached
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(weights))
    out = tmp_path / "eval.json"
    code, stdout, err = _run(
        ["eval", "--task", "mri-radial-4x", "--images", str(images), "--models", "mol-strict,cg", "--json", str(out)], capsys
    )
    assert code == 0, err
    r = json.loads(out.read_text())["models"]["mol-strict"]
    assert r["iterations"] is not None and 1 <= r["iterations"] <= 5
    code, stdout, err = _run(["certify", "--model", "mol-strict"], capsys)
    assert code == 0, err
    assert "mol-strict on mri-radial-4x" in stdout


def test_demo_runs_baselines_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(tmp_path / "empty"))
    code, stdout, err = _run(["demo", "--out", str(tmp_path / "demo"), "--n-images", "1"], capsys)
    assert code == 0, err
    assert "no shipped weights" in stdout and "skipped" in stdout
    payload = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert set(payload["models"]) == {"adjoint", "cg"} and payload["data_source"] == "embedded"
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 1000


def test_bench_unknown_name_and_unsupported_option_are_clear(capsys):
    code, _, err = _run(["bench", "quality"], capsys)  # quality is `deepinv-mol eval` on held-out images
    _assert_one_line_error(code, err, "invalid choice")
    code, _, err = _run(["bench", "nufft", "--n-images", "2"], capsys)
    _assert_one_line_error(code, err, "takes no --n-images")
    code, _, err = _run(["bench", "speed", "--image-size", "3"], capsys)
    _assert_one_line_error(code, err, "an integer >= 8")


def test_bench_registry_points_at_real_functions():
    for name in cli.available_benchmarks():
        fn = cli._bench_function(name)
        assert callable(fn) and fn.__name__ == cli.BENCHMARKS[name][1]
    assert set(cli.available_benchmarks()) == set(cli.BENCHMARKS)


def test_plot_rows(tmp_path):
    rows = [{"case": "a", "ratio": 2.0, "seconds": 0.1}, {"case": "b", "ratio": 3.5, "seconds": 0.2}]
    evaluation.plot_rows(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(evaluation.UserInputError, match="nothing numeric"):
        evaluation.plot_rows([{"case": "a"}], tmp_path / "q.png")
