"""Bad inputs of training: unsafe, broken or non-finite checkpoints on resume, a non-finite loss, bad settings.

Every case gets a clear error naming the file (or the step) and what is wrong; nothing in a checkpoint runs.
"""

import contextlib
import pickle

import pytest
import torch

from deepinv_mol import training
from deepinv_mol.training import CheckpointError, NonFiniteLossError, read_checkpoint

TINY = {"cnn": {"channels": 2, "width": 4, "depth": 2, "constraint": "penalty"}, "modl": {"num_iter": 1}}


class TinyTask:
    """2-channel smooth random images, undersampled Cartesian MRI (deepinv), Gaussian noise; ``nan_from``: the
    measurements of every stream position from there on are NaN (a data fault mid-run)."""

    name = "tiny-mri"

    def __init__(self, nan_from=None):
        self.nan_from = nan_from
        self.calls = 0

    def dataset(self, split, seed=0):
        g = torch.Generator().manual_seed({"train": 1, "val": 2, "test": 3}[split])
        return list(torch.nn.functional.avg_pool2d(torch.rand(6, 2, 16, 16, generator=g), 3, 1, 1))

    def build_physics(self, img_shape, device, generator):
        import deepinv as dinv

        mask = (torch.rand(img_shape[-2:], generator=torch.Generator().manual_seed(0)) < 0.5).float()
        return dinv.physics.MRI(mask=mask, img_size=img_shape, device=device)

    def simulate(self, x, physics, generator):
        y = physics.A(x) + 0.01 * torch.randn(physics.A(x).shape, generator=generator)
        self.calls += 1
        if self.nan_from is not None and self.calls > self.nan_from:
            y = y * float("nan")
        return y


def _train(out, task=None, **kw):
    args = dict(steps=2, batch_size=1, crop=None, lr=1e-2, eval_every=1, val_images=1, seed=0, config=TINY,
                progress=False)
    args.update(kw)
    return training.train(task or TinyTask(), "modl", out=out, **args)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real checkpoint after 1 of 2 steps (and its bytes)."""
    out = tmp_path_factory.mktemp("run")
    _train(out, stop_after=1)
    path = out / training.CHECKPOINT
    return path, path.read_bytes()


def _run_with(tmp_path, payload: bytes):
    out = tmp_path / "run"
    out.mkdir()
    (out / training.CHECKPOINT).write_bytes(payload)
    return out


def _no_context():
    return contextlib.nullcontext()


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("writer", ["torch.save", "pickle-2", "pickle-4"])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, writer):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    payload = {"format": "deepinv-mol-checkpoint/2", "state_dict": {}, "evil": _Evil(marker)}
    with open(out / training.CHECKPOINT, "wb") as handle:
        if writer == "torch.save":
            torch.save(payload, handle)
        else:
            pickle.dump(payload, handle, protocol=int(writer[-1]))
    # protocol 4 frames are not even parsed by torch's safe reader: refused as unreadable, still before running
    message = r"refusing to load .*checkpoint\.pt.*Python objects.*GLOBAL (io|builtins)\.open\);.*nothing in it was run"
    if writer == "pickle-4":
        message = r"checkpoint\.pt \(\d+ bytes\) is not a readable PyTorch file"
    with pytest.warns(UserWarning) if writer == "pickle-4" else _no_context():
        with pytest.raises(CheckpointError, match=message):
            _train(out, resume=True)
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        read_checkpoint(out / training.CHECKPOINT)
    assert not marker.exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", r"checkpoint\.pt is empty \(0 bytes\)"),
        ("truncated", r"checkpoint\.pt \(\d+ bytes\) is not a readable PyTorch file: truncated, corrupt"),
        ("random", r"checkpoint\.pt \(\d+ bytes\) is not a readable PyTorch file"),
        ("text", r"checkpoint\.pt \(\d+ bytes\) is not a readable PyTorch file"),
    ],
)
def test_broken_checkpoint_names_file_and_problem(tmp_path, checkpoint, case, message):
    good = checkpoint[1]
    payload = {
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "random": bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()),
        "text": b"step: 12\nweights: none\n",
    }[case]
    out = _run_with(tmp_path, payload)
    with pytest.raises(CheckpointError, match=message) as info:
        _train(out, resume=True)
    assert str(out) in str(info.value)
    for cryptic in ("Errno 22", "Ran out of input", "missing key"):
        assert not str(info.value).startswith(cryptic)


def test_foreign_and_old_checkpoints_are_refused(tmp_path):
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt is not a training checkpoint: it holds a list"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, tmp_path / "deepinv.pt")
    with pytest.raises(CheckpointError, match=r"deepinv\.pt is not a training checkpoint of this version.*missing"):
        read_checkpoint(tmp_path / "deepinv.pt")
    with pytest.raises(FileNotFoundError, match="absent.pt not found"):
        read_checkpoint(tmp_path / "absent.pt")


def test_checkpoint_with_non_finite_weights_is_refused(tmp_path, checkpoint):
    ckpt = torch.load(checkpoint[0], weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["state_dict"][name].view(-1)[0] = float("nan")
    out = tmp_path / "run"
    out.mkdir()
    torch.save(ckpt, out / training.CHECKPOINT)
    with pytest.raises(CheckpointError, match=rf"non-finite \(NaN/Inf\) weights in {name}"):
        _train(out, resume=True)
    assert not (out / training.FINAL).exists()


def test_checkpoint_is_plain_data(checkpoint):
    """What a checkpoint holds loads under weights_only=True with no allow-list at all."""
    ckpt = torch.load(checkpoint[0], weights_only=True)
    assert ckpt["step"] == 1 and ckpt["format"] == "deepinv-mol-checkpoint/2"
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(tmp_path):
    # one validation image is simulated first (call 1); training positions follow: step 0 is call 2, step 1 call 3
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"training loss is nan at step 1 .*checkpoint\.pt is kept"):
        _train(out, task=TinyTask(nan_from=2))
    ckpt = read_checkpoint(out / training.CHECKPOINT)
    assert ckpt["step"] == 1 and not (out / training.FINAL).exists()


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"steps": 2.5}, "steps must be a positive integer"),
        ({"batch_size": True}, "batch_size must be a positive integer"),
        ({"eval_every": -1}, "eval_every must be a positive integer"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"optimizer": "lbfgs"}, "optimizer must be 'adam' or 'sgd'"),
        ({"crop": 64}, r"crop 64x64 is larger than the images \(16x16\)"),
    ],
)
def test_bad_settings(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _train(tmp_path / "run", **kw)
