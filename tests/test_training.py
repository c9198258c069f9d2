"""Training machinery: seeded data stream, atomic checkpoints, exact resume, data-parallel gradients.

The machinery is generic, so these tests run it on a tiny task (Cartesian MRI of deepinv, 16x16 images,
a 2-layer width-4 CNN inside deepinv's MoDL): seconds, not minutes. The real tasks go through the same
code (see test_cli.py for the command line on mri-radial-4x).
"""

import json
import os
import socket

import pytest
import torch

from deepinv_mol import training
from deepinv_mol.data import crop_window, item_generator
from deepinv_mol.training import atomic_save, stream_batch, stream_index

TINY = {"cnn": {"channels": 2, "width": 4, "depth": 2, "constraint": "penalty"}, "modl": {"num_iter": 2}}


class TinyTask:
    """A task-shaped object: 2-channel smooth random images, undersampled Cartesian MRI, Gaussian noise."""

    name = "tiny-mri"

    def dataset(self, split, seed=0):
        g = torch.Generator().manual_seed({"train": 1, "val": 2, "test": 3}[split])
        x = torch.nn.functional.avg_pool2d(torch.rand(12, 2, 24, 24, generator=g), 3, 1, 1)
        return list(x)

    def build_physics(self, img_shape, device, generator):
        import deepinv as dinv

        generator = torch.Generator().manual_seed(0) if generator is None else generator  # None: fixed default
        mask = (torch.rand(img_shape[-2:], generator=generator) < 0.5).float()
        return dinv.physics.MRI(mask=mask, img_size=img_shape, device=device)

    def simulate(self, x, physics, generator):
        y = physics.A(x)
        return y + 0.01 * torch.randn(y.shape, generator=generator).to(y.device)


def _train(out, **kw):
    args = dict(steps=4, batch_size=2, crop=16, lr=1e-2, eval_every=2, val_images=2, seed=3, config=TINY, progress=False)
    args.update(kw)
    return training.train(TinyTask(), "modl", out=out, **args)


def _weights(path):
    return torch.load(path, weights_only=True)


def test_stream_is_a_sequence_of_permutations():
    n, seed = 7, 5
    stream = [stream_index(p, n, seed) for p in range(3 * n)]
    for e in range(3):
        assert sorted(stream[e * n : (e + 1) * n]) == list(range(n))
    assert stream[:n] != stream[n : 2 * n]  # a new order every pass
    assert stream == [stream_index(p, n, seed) for p in range(3 * n)]  # pure function of (position, seed)


def _positions_task():
    """A dataset whose item i is the constant image i, and a 'simulation' returning the noise draw."""
    data = [torch.full((1, 4, 4), float(i)) for i in range(5)]

    def simulate(x, physics, generator):
        return x, torch.rand(1, generator=generator)

    return data, simulate


def test_ranks_split_the_global_batch():
    data, simulate = _positions_task()
    single = stream_batch(data, simulate, None, 3, batch_size=4, crop=None, seed=1)
    r0 = stream_batch(data, simulate, None, 3, batch_size=4, crop=None, seed=1, rank=0, world_size=2)
    r1 = stream_batch(data, simulate, None, 3, batch_size=4, crop=None, seed=1, rank=1, world_size=2)
    # global batch 3 covers stream positions 12..15: rank 0 takes 12, 13 and rank 1 takes 14, 15
    assert single[0][:, 0, 0, 0].tolist() == [stream_index(p, 5, 1) for p in range(12, 16)]
    assert torch.equal(torch.cat([r0[0], r1[0]]), single[0]) and torch.equal(torch.cat([r0[1], r1[1]]), single[1])
    # the noise of a sample is a pure function of (seed, position): the same batch again draws the same
    assert torch.equal(stream_batch(data, simulate, None, 3, batch_size=4, crop=None, seed=1)[1], single[1])
    assert not torch.equal(stream_batch(data, simulate, None, 3, batch_size=4, crop=None, seed=2)[1], single[1])
    with pytest.raises(ValueError, match="multiple"):
        stream_batch(data, simulate, None, 0, batch_size=3, crop=None, seed=1, world_size=2)


def test_item_generator_separates_neighbours():
    seeds = {item_generator(s, 2, p).initial_seed() for s in (0, 1) for p in range(-500, 500)}
    assert len(seeds) == 2000 and all(0 <= s < 2**64 for s in seeds)


def test_crop_window_bounds():
    x = torch.arange(36.0).reshape(1, 6, 6)
    rows, cols = crop_window(x.shape[-2:], 2)
    assert torch.equal(x[..., rows, cols], x[:, 2:4, 2:4])
    g = torch.Generator().manual_seed(0)
    rows, cols = crop_window(x.shape[-2:], 4, g)
    assert x[..., rows, cols].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="larger"):
        crop_window(x.shape[-2:], 7)


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(2)}, path)

    def broken_save(obj, f, *a, **k):
        if hasattr(f, "write"):
            f.write(b"partial")
        else:
            with open(f, "wb") as fh:
                fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"a": torch.zeros(2)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["a"], torch.ones(2))


def test_resume_is_exact(tmp_path):
    straight = _train(tmp_path / "straight")
    first = _train(tmp_path / "split", stop_after=2)
    assert first["step"] == 2 and not (tmp_path / "split" / training.FINAL).exists()
    resumed = _train(tmp_path / "split", resume=True)
    a, b = _weights(tmp_path / "straight" / training.FINAL), _weights(tmp_path / "split" / training.FINAL)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["loss"] == resumed["loss"] and len(resumed["loss"]) == 4
    assert straight["val_psnr"] == resumed["val_psnr"] and len(straight["val_psnr"]) == 2
    # training did something: the weights moved and the files are in place
    from deepinv_mol.pretrained import build_model

    torch.manual_seed(3)
    w0 = build_model("modl", config=TINY).state_dict()
    assert any(not torch.equal(w0[k], a[k]) for k in a)
    for name in (training.CHECKPOINT, training.BEST, training.HISTORY, training.CURVES):
        assert (tmp_path / "straight" / name).exists(), name
    assert not list((tmp_path / "straight").glob(".*tmp*"))


def test_resume_refuses_other_settings_and_overwrite(tmp_path):
    _train(tmp_path / "run", stop_after=2)
    with pytest.raises(ValueError, match="settings differ"):
        _train(tmp_path / "run", resume=True, lr=5e-3)
    with pytest.raises(ValueError, match="--resume"):
        _train(tmp_path / "run")


def test_export_writes_manifest_and_loads(tmp_path):
    from deepinv_mol.pretrained import build_model, file_sha256, read_manifest

    _train(tmp_path / "run")
    entry = training.export_weights(tmp_path / "run", tmp_path / "weights", command="deepinv-mol train ...")
    manifest = read_manifest(tmp_path / "weights")
    assert manifest["tiny-mri/modl"] == entry
    assert entry["sha256"] == file_sha256(tmp_path / "weights" / entry["file"])
    assert entry["training"]["steps"] == 4 and len(entry["val_psnr"]) == 2
    assert entry["val_psnr_selected"] == max(v for _, v in entry["val_psnr"])
    model = build_model("modl", config=entry["config"])
    model.load_state_dict(torch.load(tmp_path / "weights" / entry["file"], weights_only=True))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    _train(out, steps=1, batch_size=4, optimizer="sgd", lr=1.0, eval_every=1, val_images=0)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_ddp_two_processes_average_to_the_union_batch_gradient(tmp_path):
    """2 gloo processes x 2 samples, one SGD step (lr 1): weights move by exactly minus the gradient of the
    union batch of 4, the same as one process with batch 4 -- and not as one process with its own 2."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), tmp_path / "ddp"), nprocs=2, join=True)
    _train(tmp_path / "single", steps=1, batch_size=4, optimizer="sgd", lr=1.0, eval_every=1, val_images=0)
    _train(tmp_path / "half", steps=1, batch_size=2, optimizer="sgd", lr=1.0, eval_every=1, val_images=0)
    from deepinv_mol.pretrained import build_model

    torch.manual_seed(3)
    w0 = build_model("modl", config=TINY).state_dict()
    ddp = _weights(tmp_path / "ddp" / training.FINAL)
    single = _weights(tmp_path / "single" / training.FINAL)
    half = _weights(tmp_path / "half" / training.FINAL)
    g_ddp = torch.cat([(w0[k] - ddp[k]).flatten() for k in w0])
    g_single = torch.cat([(w0[k] - single[k]).flatten() for k in w0])
    g_half = torch.cat([(w0[k] - half[k]).flatten() for k in w0])
    assert g_single.norm() > 0
    assert torch.allclose(g_ddp, g_single, rtol=1e-4, atol=1e-6 * g_single.abs().max())
    assert (g_half - g_single).norm() > 1e-3 * g_single.norm()
    history = json.loads((tmp_path / "ddp" / training.HISTORY).read_text())
    assert history["run_config"]["world_size"] == 2


@pytest.mark.slow
def test_torchrun_cli_on_the_real_task(tmp_path):
    """The command line under torchrun (2 gloo processes) on mri-radial-4x equals a single-process run."""
    import subprocess
    import sys

    args = ["train", "--task", "mri-radial-4x", "--model", "modl", "--steps", "1", "--batch-size", "2", "--crop", "24",
            "--width", "4", "--depth", "2", "--iters", "2", "--val-images", "0", "--eval-every", "1",
            "--optimizer", "sgd", "--lr", "1", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "deepinv_mol.cli", *args, "--out", str(tmp_path / "ddp")], check=True, env=env, timeout=1200)
    subprocess.run([sys.executable, "-m", "deepinv_mol.cli", *args, "--out", str(tmp_path / "one")],
                   check=True, env=env, timeout=1200)
    from deepinv_mol.pretrained import build_model

    config = json.loads((tmp_path / "one" / training.HISTORY).read_text())["run_config"]["config"]
    torch.manual_seed(0)
    w0 = build_model("modl", config=config).state_dict()
    a, b = _weights(tmp_path / "ddp" / training.FINAL), _weights(tmp_path / "one" / training.FINAL)
    g_ddp = torch.cat([(w0[k] - a[k]).flatten() for k in w0])
    g_one = torch.cat([(w0[k] - b[k]).flatten() for k in w0])
    assert g_one.norm() > 0
    # float32 noise only (torchkbnufft's threaded interpolation is not bitwise reproducible)
    assert (g_ddp - g_one).norm() <= 1e-4 * g_one.norm()


def test_algo_lr_moves_the_algorithm_parameters_at_their_own_rate(tmp_path):
    # plain SGD, one step: the network moves by -lr * grad in both runs, MoDL's step sizes by -algo_lr * grad
    def run(name, **kw):
        _train(tmp_path / name, steps=1, eval_every=1, val_images=0, optimizer="sgd", lr=1e-2, **kw)
        return _weights(tmp_path / name / training.FINAL)

    frozen, same, fast = run("frozen", algo_lr=1e-12), run("same"), run("fast", algo_lr=1e-1)
    steps = [k for k in same if "stepsize" in k]
    assert steps and any(float((same[k] - frozen[k]).abs()) > 1e-6 for k in steps)
    for k in same:
        if k in steps:
            assert torch.allclose(fast[k] - frozen[k], 10 * (same[k] - frozen[k]), rtol=1e-3, atol=2e-6), k  # float32 near 1
        else:
            assert torch.equal(fast[k], same[k]) and torch.equal(frozen[k], same[k]), k
    with pytest.raises(ValueError, match="algo_lr must be a positive"):
        run("bad", algo_lr=0.0)
    assert json.loads((tmp_path / "fast" / training.HISTORY).read_text())["run_config"]["algo_lr"] == 0.1
