"""Bad inputs of the `deepinv-mol` command, table-driven: case -> exit status + message (regex).

A user error is one line on stderr, exit status 2, no traceback, and it is reported BEFORE any reconstruction
(the `no_work` fixture makes simulating or reconstructing fail the case). A bug of the library (an unexpected
exception inside it) is the opposite: traceback, exit status 1.
"""

import json
import re

import numpy as np
import pytest
import torch

from deepinv_mol import cli, evaluation, pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


class _Computed(Exception):
    """Raised when a case reaches the expensive part: its error came too late."""


@pytest.fixture
def no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise _Computed("the evaluation started before the bad input was reported")

    monkeypatch.setattr(cli, "simulate_set", fail)
    monkeypatch.setattr(cli, "evaluate_models", fail)


@pytest.fixture
def files(tmp_path):
    """Paths used by the table: image stacks, a plain file, a folder, a training run."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "ok.npy", rng.random((1, 32, 32)).astype(np.float32))
    (tmp_path / "garbage.npy").write_bytes(b"this is not an npy file")
    np.save(tmp_path / "wrong.npy", np.zeros((2, 3, 32, 32), np.float32))
    np.save(tmp_path / "bright.npy", np.full((1, 32, 32), 7.0, np.float32))
    np.save(tmp_path / "complex.npy", np.zeros((1, 2, 32, 32), np.float32))
    np.save(tmp_path / "nan.npy", np.full((1, 32, 32), np.nan, np.float32))
    np.save(tmp_path / "text.npy", np.array([["a"] * 32] * 32)[None])
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    return tmp_path


EVAL = ["eval", "--task", "mri-radial-4x", "--models", "cg"]
CT_EVAL = ["eval", "--task", "ct-sparse-view", "--models", "fbp"]

# (case, argv with {tmp} for the fixture folder, exit status, regex on the one stderr line)
CASES = [
    ("no command", [], 2, r"required"),
    ("unknown command", ["frobnicate"], 2, r"invalid choice"),
    ("unknown task", ["eval", "--task", "mri-radial-2x", "--split", "test"], 2, r"unknown task 'mri-radial-2x': expected one of mri-radial-4x"),
    ("unknown model", ["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "cg,unet"], 2, r"unknown model 'unet'"),
    ("empty model list", ["eval", "--task", "mri-radial-4x", "--split", "test", "--models", ","], 2, r"--models is empty"),
    ("model twice", ["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "cg,cg"], 2, r"lists a model twice"),
    ("fbp on MRI", ["eval", "--task", "mri-radial-4x", "--split", "test", "--models", "fbp"], 2, r"'fbp' is a CT baseline; task 'mri-radial-4x' is a MRI task"),
    ("no image source", ["eval", "--task", "mri-radial-4x"], 2, r"one of the arguments --images --split --heldout is required"),
    ("unknown split", EVAL + ["--split", "holdout"], 2, r"invalid choice: 'holdout'"),
    ("n-images 0", EVAL + ["--split", "test", "--n-images", "0"], 2, r"expected a positive integer, got '0'"),
    ("batch-size not a number", EVAL + ["--split", "test", "--batch-size", "two"], 2, r"expected a positive integer, got 'two'"),
    ("missing image file", EVAL + ["--images", "{tmp}/absent.npy"], 2, r"image file .*absent.npy does not exist"),
    ("image file not npy", EVAL + ["--images", "{tmp}/garbage.npy"], 2, r"garbage.npy is not a readable .npy"),
    ("image file wrong shape", EVAL + ["--images", "{tmp}/wrong.npy"], 2, r"got shape \(2, 3, 32, 32\)"),
    ("image file out of range", EVAL + ["--images", "{tmp}/bright.npy"], 2, r"\[0, 1\]"),
    ("image file NaN", EVAL + ["--images", "{tmp}/nan.npy"], 2, r"NaN or infinite"),
    ("image file of strings", EVAL + ["--images", "{tmp}/text.npy"], 2, r"numeric array"),
    ("complex images for CT", CT_EVAL + ["--images", "{tmp}/complex.npy"], 2, r"--images .*complex.npy: task 'ct-sparse-view' takes real"),
    ("--json parent is a file", EVAL + ["--split", "test", "--json", "{tmp}/afile/out.json"], 2, r"--json .*afile/out.json cannot be written: .*afile is a file, not a folder"),
    ("--json is a folder", EVAL + ["--split", "test", "--json", "{tmp}/folder"], 2, r"--json .*folder cannot be written: it is a folder"),
    ("--figure parent is a file", EVAL + ["--split", "test", "--figure", "{tmp}/afile/deeper/f.png"], 2, r"--figure .*f.png cannot be written: .*afile is a file"),
    ("cone beam without GPU", ["eval", "--task", "ct-3d-cone", "--split", "test", "--models", "cg"], 2, r"needs a CUDA GPU"),
    ("demo into a file", ["demo", "--out", "{tmp}/afile"], 2, r"--out .*demo.json cannot be written: .*afile is a file"),
    ("train unknown model", ["train", "--task", "mri-radial-4x", "--model", "unet"], 2, r"unknown model 'unet'"),
    ("train unknown task", ["train", "--task", "nope", "--model", "modl"], 2, r"unknown task 'nope'"),
    ("train negative steps", ["train", "--task", "mri-radial-4x", "--model", "modl", "--steps", "-3"], 2, r"expected a positive integer, got '-3'"),
    ("train zero lr", ["train", "--task", "mri-radial-4x", "--model", "modl", "--lr", "0"], 2, r"expected a positive number, got '0'"),
    ("train width for luser", ["train", "--task", "mri-radial-4x", "--model", "luser", "--width", "8"], 2, r"--width applies to models built on MonotoneCNN"),
    ("train crop too large", ["train", "--task", "mri-radial-4x", "--model", "modl", "--crop", "999"], 2, r"--crop 999 is larger than the task's images \(160, 160\)"),
    ("train over a run", ["train", "--task", "mri-radial-4x", "--model", "modl", "--out", "{tmp}/run"], 2, r"already holds a training run: pass --resume"),
    ("train export into a file", ["train", "--task", "mri-radial-4x", "--model", "modl", "--out", "{tmp}/new", "--export", "{tmp}/afile"], 2, r"--export .*manifest.json cannot be written"),
    ("certify unknown model", ["certify", "--model", "unet"], 2, r"unknown model 'unet'"),
    ("bench unknown", ["bench", "warp-speed"], 2, r"invalid choice: 'warp-speed'"),
    ("bench json into a file", ["bench", "memory", "--json", "{tmp}/afile/rows.json"], 2, r"--json .*rows.json cannot be written"),
]


@pytest.mark.parametrize("case,argv,status,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, argv, status, pattern, files, no_work, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cli, "_bench_function", lambda name: (lambda: pytest.fail("benchmark ran")))
    code = cli.main([a.replace("{tmp}", str(files)) for a in argv])
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, (case, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("deepinv-mol: error: "), lines[0]
    assert re.search(pattern, lines[0]), (pattern, lines[0])


def test_missing_and_corrupt_weights_are_user_errors(files, no_work, monkeypatch, capsys):
    weights = files / "weights"
    weights.mkdir()
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, str(weights))
    argv = ["eval", "--task", "mri-radial-4x", "--images", str(files / "ok.npy"), "--models", "cg,mol-strict"]
    assert cli.main(argv) == 2
    assert "no weights for model 'mol-strict' on task 'mri-radial-4x'" in capsys.readouterr().err
    # a manifest entry whose file does not match its checksum
    (weights / "w.pt").write_bytes(b"not weights")
    entry = {"file": "w.pt", "sha256": "0" * 64, "config": {}}
    (weights / "manifest.json").write_text(json.dumps({"models": {"mri-radial-4x/mol-strict": entry}}))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: the weights of mol-strict for mri-radial-4x do not load \(.*w.pt", err), err


def test_outputs_checked_before_any_work(files, no_work, capsys):
    """The whole point of the output check: with an unwritable --json nothing is simulated or reconstructed
    (`no_work` would turn the case into exit 1)."""
    argv = EVAL + ["--images", str(files / "ok.npy"), "--json", str(files / "afile" / "x.json")]
    assert cli.main(argv) == 2
    assert "cannot be written" in capsys.readouterr().err


def test_library_bug_is_not_a_user_error(files, monkeypatch, capsys):
    """A ValueError raised inside the library is a bug: traceback and exit status 1, not a one-line exit 2."""

    def broken(*args, **kwargs):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(cli, "evaluate_models", broken)
    code = cli.main(EVAL + ["--images", str(files / "ok.npy")])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in err and "ValueError: an internal inconsistency" in err
    assert "internal error (a bug of deepinv-mol" in err


def test_debug_shows_the_traceback_of_a_user_error(files):
    with pytest.raises(evaluation.UserInputError, match="does not exist"):
        cli.main(["--debug"] + EVAL + ["--images", str(files / "absent.npy")])
