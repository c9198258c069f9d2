r"""Training glue behind ``deepinv-mol train``: :class:`deepinv.Trainer` made step-exact and resumable.

What :class:`deepinv.Trainer` (deepinv 0.5.0) offers and where it falls short for this project:

* it trains by *epochs*, saves a checkpoint at the end of an epoch (never after epoch 0), writes it with
  a plain ``torch.save`` (a kill during the write leaves a truncated file) into a fresh timestamped folder
  (``os.makedirs(exist_ok=False)``), and its checkpoint holds model, optimiser and scheduler but neither the
  random-number-generator states nor the position in the data stream: a resumed run does not see the same
  data, noise or crops as an uninterrupted one;
* it has no notion of data-parallel ranks (its ``save_model`` would be called by every process).

:class:`ResumableTrainer` subclasses it and keeps its per-batch machinery (``step``, ``compute_loss``,
``compute_metrics``, the loss/metric meters and histories, ``save_best_model``); it replaces the outer loop by
a *step* loop in rounds of ``eval_every`` steps (validation + atomic checkpoint after every round) and one
progress bar over all steps showing the loss and the last validation PSNR.

Exact resumption rests on one idea: every random draw of step :math:`s` is a pure function of
``(seed, s)``. The data stream is the concatenation of seeded permutations of the training set
(:class:`SeededStreamSampler`); the crop offsets, phase, coil and noise draws of the sample at stream
position :math:`p` come from a generator seeded with ``(seed, p)``. A checkpoint therefore needs only the
step counter on top of model, optimiser, scheduler and the global RNG states (kept for anything else that
draws from them, e.g. power iterations in a Lipschitz penalty). The same per-position seeding makes a
data-parallel run see exactly the union batch of a single-process run: under ``torchrun`` each of the
:math:`W` ranks takes its contiguous share of every global batch and DistributedDataParallel averages the
gradients (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from deepinv.training import Trainer
from torch.utils.data import DataLoader, Dataset, Sampler

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
FINAL = "final.pt"
HISTORY = "history.json"
CURVES = "curves.png"

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, position) pairs over 63-bit seeds


def mix_seed(seed: int, *values: int) -> int:
    r"""A deterministic 63-bit seed from ``seed`` and integers (splitmix64 mixing).

    :param int seed: base seed.
    :param int values: further integers (step, stream position, epoch of the stream, ...).
    """
    z = (int(seed) * _MIX) & 0xFFFFFFFFFFFFFFFF
    for v in values:
        z = (z ^ (int(v) + _MIX + (z << 6) + (z >> 2))) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def stream_index(position: int, n_items: int, seed: int) -> int:
    r"""Dataset index at a position of the seeded data stream.

    The stream is :math:`\pi_0, \pi_1, \dots` where :math:`\pi_e` is a random permutation of
    :math:`\{0, \dots, n-1\}` drawn from a generator seeded with ``(seed, e)``: every item is seen once per
    pass, and position :math:`p` is item :math:`\pi_{\lfloor p/n \rfloor}(p \bmod n)`.

    :param int position: stream position :math:`p \ge 0`.
    :param int n_items: dataset length :math:`n`.
    :param int seed: stream seed.
    """
    epoch, offset = divmod(int(position), int(n_items))
    return int(_permutation(int(n_items), int(seed), epoch)[offset])


_PERMS: dict = {}


def _permutation(n, seed, epoch):
    key = (n, seed, epoch)
    if key not in _PERMS:
        if len(_PERMS) > 64:
            _PERMS.clear()
        g = torch.Generator().manual_seed(mix_seed(seed, epoch))
        _PERMS[key] = torch.randperm(n, generator=g)
    return _PERMS[key]


class SeededStreamSampler(Sampler):
    r"""Stream positions of a rank's share of ``n_steps`` global batches, starting at ``first_step``.

    Global batch :math:`s` covers stream positions :math:`[sB, (s+1)B)`; rank :math:`r` of :math:`W` takes the
    contiguous block :math:`[sB + rL, sB + (r+1)L)` with :math:`L = B/W`. Stateless: the whole sampler state
    is ``first_step``, so a resumed run rebuilds it from the step counter.

    :param int batch_size: global batch size :math:`B` (a multiple of ``world_size``).
    :param int first_step: first global step.
    :param int n_steps: number of steps.
    :param int rank: this process's rank :math:`r`.
    :param int world_size: number of processes :math:`W`.
    """

    def __init__(self, batch_size: int, first_step: int, n_steps: int, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} must be a multiple of the number of processes {world_size}")
        self.batch_size, self.first_step, self.n_steps = int(batch_size), int(first_step), int(n_steps)
        self.rank, self.world_size = int(rank), int(world_size)
        self.local = self.batch_size // self.world_size

    def __iter__(self):
        for s in range(self.first_step, self.first_step + self.n_steps):
            start = s * self.batch_size + self.rank * self.local
            yield from range(start, start + self.local)

    def __len__(self):
        return self.n_steps * self.local


class StreamDataset(Dataset):
    r"""Reads a dataset through the seeded stream: item ``p`` is ``{"x": image, "pos": p}``.

    :param torch.utils.data.Dataset dataset: images ``(C, H, W)`` (tensors, dicts with ``"x"`` or tuples).
    :param int seed: stream seed (see :func:`stream_index`).
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self):
        # positions are unbounded; deepinv's dataset check only needs item 0 and a positive length
        return 2**62

    def __getitem__(self, position):
        n = len(self.dataset)
        if hasattr(self.dataset, "set_epoch"):
            # datasets with seeded augmentation (deepinv_mol.data) draw anew on every pass of the stream
            self.dataset.set_epoch(position // n)
        x = image_of(self.dataset[stream_index(position, n, self.seed)])
        return {"x": x, "pos": torch.tensor(position, dtype=torch.long)}


def image_of(item) -> torch.Tensor:
    r"""The ground-truth image of a dataset item (a tensor, a dict with ``"x"``, or a tuple ``(x, ...)``).

    :param item: what the dataset returned.
    """
    if isinstance(item, dict):
        item = item["x"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    return torch.as_tensor(item, dtype=torch.float32)


def random_crop(x: torch.Tensor, size: int | None, generator: torch.Generator | None) -> torch.Tensor:
    r"""Crop the last two dimensions of ``x`` to ``size × size``, at a random offset (centred if no generator).

    :param torch.Tensor x: image ``(..., H, W)``.
    :param int size: crop side (``None``: no crop).
    :param torch.Generator generator: draws the offsets; ``None`` centres the crop.
    :raises ValueError: the image is smaller than the crop.
    """
    if size is None:
        return x
    H, W = x.shape[-2:]
    if size > H or size > W:
        raise ValueError(f"crop {size} is larger than the images ({H}x{W})")
    if generator is None:
        i, j = (H - size) // 2, (W - size) // 2
    else:
        i = int(torch.randint(0, H - size + 1, (1,), generator=generator))
        j = int(torch.randint(0, W - size + 1, (1,), generator=generator))
    return x[..., i : i + size, j : j + size]


def atomic_save(obj, path: str | Path) -> None:
    r"""``torch.save`` to a temporary file in the same folder, then ``os.replace``: a crash leaves the old file.

    :param obj: what to save.
    :param str path: destination.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_write_text(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict:
    r"""The global RNG states (python, numpy, torch CPU and CUDA), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    r"""Restore what :func:`rng_state` returned.

    :param dict state: saved states.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def init_distributed() -> tuple[int, int, torch.device]:
    r"""Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``), else run alone.

    Backend: NCCL with one GPU per local rank when CUDA is available, gloo on CPU.

    :return: ``(rank, world_size, device)``.
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


class _DDP(torch.nn.parallel.DistributedDataParallel):
    # losses such as LipschitzPenalty reach into the model (e.g. model.denoiser): forward those lookups
    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    r"""The module inside a DistributedDataParallel wrapper (or the model itself).

    :param torch.nn.Module model: possibly wrapped model.
    """
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@dataclass
class ResumableTrainer(Trainer):
    r"""A :class:`deepinv.Trainer` that trains a number of *steps*, exactly resumable, data-parallel aware.

    Reuses deepinv's ``step`` (forward, losses, backward, optimiser step, metrics) and adds: a seeded data
    stream, per-sample seeded simulation of measurements, rounds of ``eval_every`` steps ending in validation
    and an atomic checkpoint, one progress bar, RNG states in checkpoints, rank-0-only writing. See the
    module docstring for why deepinv's own loop falls short.

    Extra fields (all keyword):

    :param Callable simulate: ``simulate(x, physics, generator) -> y`` (a task's measurement simulation).
    :param torch.utils.data.Dataset train_dataset: training images ``(C, H, W)``.
    :param int steps: total number of optimiser steps.
    :param int batch_size: global batch size (split over the ranks).
    :param int crop: square training crop (``None``: whole images).
    :param int seed: seed of the data stream, crops and simulation.
    :param int eval_every: steps per round (validation + checkpoint).
    :param int stop_after: stop after this many steps (a planned interruption; ``--resume`` continues).
    :param str out_dir: folder for checkpoints, history and curves (``None``: write nothing).
    :param int rank: process rank.
    :param int world_size: number of processes.
    :param dict run_config: settings saved with checkpoints; a resume must match them.
    :param bool progress: show the progress bar.
    """

    simulate: object = None
    train_dataset: object = None
    steps: int = 100
    batch_size: int = 4
    crop: int | None = None
    seed: int = 0
    eval_every: int = 50
    stop_after: int | None = None
    out_dir: str | Path | None = None
    rank: int = 0
    world_size: int = 1
    run_config: dict = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.global_step = 0
        self.step_losses: list = []
        self.val_curve: list = []  # (step, PSNR)
        self.train_seconds = 0.0
        self.best_psnr = -float("inf")
        self.out_dir = Path(self.out_dir) if self.out_dir else None

    # ---------------------------------------------------------------- data
    def _loader(self, first_step: int, n_steps: int) -> DataLoader:
        sampler = SeededStreamSampler(self.batch_size, first_step, n_steps, self.rank, self.world_size)
        return DataLoader(
            StreamDataset(self.train_dataset, self.seed), batch_size=sampler.local, sampler=sampler, num_workers=0
        )

    def get_samples_online(self, iterators, g):
        r"""Next training batch: crop and simulate every sample with a generator seeded by its stream position.

        Overrides deepinv's version (``y = physics(x)`` with the physics' own RNG), which a resumed or
        data-parallel run cannot reproduce.

        :param list iterators: data iterators.
        :param int g: dataloader index.
        """
        data = next(iterators[g])
        physics = self.physics[g]
        xs, ys = [], []
        for x, pos in zip(data["x"], data["pos"]):
            gen = torch.Generator(self.device).manual_seed(mix_seed(self.seed, int(pos)))
            x = random_crop(x.to(self.device), self.crop, gen)[None]
            out = self.simulate(x, physics, gen)
            x, y = out if isinstance(out, tuple) else (x, out)
            xs.append(x)
            ys.append(y)
        return torch.cat(xs), torch.cat(ys), physics

    def get_samples(self, iterators, g):
        r"""Training batches are simulated online (:meth:`get_samples_online`), validation ones are fixed.

        :param list iterators: data iterators.
        :param int g: dataloader index.
        """
        if iterators is self.current_train_iterators:
            return self.get_samples_online(iterators, g)
        return self.get_samples_offline(iterators, g)

    # ---------------------------------------------------------------- checkpoints
    def save_model(self, filename, epoch=None, state=None):
        r"""Write weights (``best.pt``/``final.pt``) or the full training state (``checkpoint.pt``), atomically.

        Only rank 0 writes. Deepinv's ``save_best_model`` calls this with ``"ckp_best.pth.tar"``, which is
        mapped to ``best.pt`` (weights only: what ``load_pretrained`` reads).

        :param str filename: ``"checkpoint.pt"``, ``"best.pt"``, ``"final.pt"`` or deepinv's ``"ckp_best.pth.tar"``.
        :param int epoch: unused (deepinv's signature); the step counter is saved instead.
        :param dict state: extra entries for the full checkpoint.
        """
        if self.rank != 0 or self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model = unwrap(self.model)
        if filename in ("ckp_best.pth.tar", BEST, FINAL):
            name = BEST if filename != FINAL else FINAL
            atomic_save(model.state_dict(), self.out_dir / name)
            return
        full = dict(state or {}) | {
            "step": self.global_step,
            "state_dict": model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "rng": rng_state(),
            "step_losses": self.step_losses,
            "val_curve": self.val_curve,
            "best_psnr": self.best_psnr,
            "train_seconds": self.train_seconds,
            "eval_metrics": self.eval_metrics_history,
            "run_config": self.run_config,
        }
        atomic_save(full, self.out_dir / filename)

    def load_checkpoint(self, path: str | Path) -> None:
        r"""Restore a full training state written by :meth:`save_model` (``checkpoint.pt``).

        :param str path: checkpoint file.
        :raises ValueError: the checkpoint was written with different settings (task, model, batch, ...).
        """
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        saved = ckpt.get("run_config", {})
        diff = {k: (saved.get(k), v) for k, v in self.run_config.items() if k in saved and saved.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(f"cannot resume {path}: settings differ ({detail})")
        unwrap(self.model).load_state_dict(ckpt["state_dict"])
        if self.optimizer is not None and ckpt["optimizer"] is not None:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        self.global_step = int(ckpt["step"])
        self.step_losses = list(ckpt["step_losses"])
        self.val_curve = [tuple(v) for v in ckpt["val_curve"]]
        self.best_psnr = float(ckpt["best_psnr"])
        self.train_seconds = float(ckpt["train_seconds"])
        self._resumed_eval_metrics = ckpt.get("eval_metrics", {})

    def save_best_model(self, epoch, train_ite, **kwargs):
        r"""Save ``best.pt`` when the validation PSNR improves (deepinv's rule, our file layout).

        :param int epoch: round index (deepinv's signature).
        :param int train_ite: global step.
        """
        if self.val_curve and self.val_curve[-1][1] >= self.best_psnr:
            self.best_psnr = self.val_curve[-1][1]
            self.save_model(BEST)

    # ---------------------------------------------------------------- loop
    def setup_train(self, train: bool = True, **kwargs):
        r"""deepinv's setup without its timestamped output folder (we write into ``out_dir``).

        :param bool train: training (``True``) or testing.
        """
        self.save_path = None  # our own folder: deepinv would create save_path/<timestamp>/ (exist_ok=False)
        self.train_dataloader = [self._loader(self.global_step, 1)]
        super().setup_train(train=train, **kwargs)
        if getattr(self, "_resumed_eval_metrics", None):
            self.eval_metrics_history.update(self._resumed_eval_metrics)

    def train(self):
        r"""Run (or continue) training up to ``steps`` (or ``stop_after``) steps.

        :return: the trained model (unwrapped).
        """
        from tqdm import tqdm

        self.setup_train()
        stop = self.steps if self.stop_after is None else min(self.steps, int(self.stop_after))
        bar = tqdm(
            total=self.steps,
            initial=self.global_step,
            dynamic_ncols=True,
            disable=not (self.progress and self.rank == 0),
            desc="train",
        )
        round_idx = self.global_step // self.eval_every
        while self.global_step < stop:
            n = min(self.eval_every - self.global_step % self.eval_every, stop - self.global_step)
            self.reset_metrics()
            self.current_train_iterators = [iter(self._loader(self.global_step, n))]
            self.current_eval_iterators = None
            self.model.train()
            tic = time.perf_counter()
            for _ in range(n):
                self.step(round_idx, bar, train_ite=self.global_step, train=True, last_batch=False)
                loss = float(self.logs_total_loss_train.val)
                if self.world_size > 1:
                    loss = _mean_over_ranks(loss)
                self.step_losses.append(loss)
                self.global_step += 1
                bar.update(1)
                postfix = {"loss": f"{loss:.3e}"}
                if self.val_curve:
                    postfix["val_psnr"] = f"{self.val_curve[-1][1]:.2f}"
                bar.set_postfix(postfix)
            self.train_seconds += time.perf_counter() - tic
            if self.global_step % self.eval_every == 0 or self.global_step == self.steps:
                self._validate(round_idx)
                if self.scheduler is not None:
                    self.scheduler.step()
                round_idx += 1
            self.save_model(CHECKPOINT)
            self._write_history()
        bar.close()
        if self.global_step >= self.steps:
            self.save_model(FINAL)
        return unwrap(self.model)

    def _validate(self, round_idx):
        if not self.eval_dataloader:
            return
        self.current_eval_iterators = [iter(loader) for loader in self.eval_dataloader]
        n_batches = min(len(loader) for loader in self.eval_dataloader)
        for j in range(n_batches):
            self.step(round_idx, None, train=False, last_batch=False)
        name = self.metrics[0].__class__.__name__
        value = float(self.logs_metrics_eval[0].avg)
        self.eval_metrics_history.setdefault(name, []).append(value)
        self.val_curve.append((self.global_step, value))
        self.save_best_model(round_idx, self.global_step)

    def _write_history(self):
        if self.rank != 0 or self.out_dir is None:
            return
        history = {
            "run_config": self.run_config,
            "step": self.global_step,
            "train_seconds": round(self.train_seconds, 2),
            "loss": self.step_losses,
            "val_psnr": [[s, v] for s, v in self.val_curve],
        }
        _atomic_write_text(json.dumps(history), self.out_dir / HISTORY)
        plot_curves(history, self.out_dir / CURVES)


def _mean_over_ranks(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def plot_curves(history: dict, path: str | Path) -> None:
    r"""Save the training loss (per step) and validation PSNR (per round) as a two-panel PNG.

    :param dict history: with ``"loss"`` (list of floats) and ``"val_psnr"`` (list of ``[step, dB]``).
    :param str path: PNG file, written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    loss = history["loss"]
    ax1.semilogy(range(1, len(loss) + 1), loss, lw=0.8)
    ax1.set(xlabel="step", ylabel="training loss", title="loss")
    if history["val_psnr"]:
        s, v = zip(*history["val_psnr"])
        ax2.plot(s, v, "o-")
    ax2.set(xlabel="step", ylabel="PSNR (dB)", title="validation PSNR")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------------------------
# the function behind `deepinv-mol train`


def validation_set(task, physics, n_images: int, crop: int | None, seed: int, device) -> torch.utils.data.Dataset:
    r"""Fixed validation pairs: the first ``n_images`` validation images, centre-cropped, simulated once.

    :param task: a task of :mod:`deepinv_mol.tasks`.
    :param physics: the task's physics for the crop size.
    :param int n_images: number of validation images.
    :param int crop: crop side (``None``: whole images).
    :param int seed: simulation seed (validation image :math:`i` uses ``(seed, -1 - i)``).
    :param device: device.
    :return: a :class:`deepinv.datasets.TensorDataset` of ``(x, y)``.
    """
    from deepinv.datasets import TensorDataset

    data = task.dataset("val", seed=seed)
    xs, ys = [], []
    for i in range(min(n_images, len(data))):
        gen = torch.Generator(device).manual_seed(mix_seed(seed, -1 - i))
        x = random_crop(image_of(data[i]).to(device), crop, None)[None]
        out = task.simulate(x, physics, gen)
        x, y = out if isinstance(out, tuple) else (x, out)
        xs.append(x)
        ys.append(y)
    return TensorDataset(x=torch.cat(xs), y=torch.cat(ys), use_dict_output=True)


def train(
    task: str,
    model: str,
    *,
    steps: int = 1000,
    batch_size: int = 4,
    crop: int | None = 128,
    lr: float = 1e-3,
    out: str | Path = "runs/train",
    resume: bool = False,
    seed: int = 0,
    eval_every: int = 50,
    val_images: int = 4,
    optimizer: str = "adam",
    stop_after: int | None = None,
    config: dict | None = None,
    progress: bool = True,
    penalty_weight: float = 1e-4,
) -> dict:
    r"""Train a learned model on a task (the ``deepinv-mol train`` command).

    Loss: supervised MSE (:class:`deepinv.loss.SupLoss`), plus :class:`deepinv_mol.loss.LipschitzPenalty`
    for ``mol-penalty``. Metric: PSNR (on the magnitude for complex images). Learning rate: cosine decay
    over the rounds. Under ``torchrun`` this runs data-parallel (see :func:`init_distributed`).

    :param str task: task name (:func:`deepinv_mol.tasks.list_tasks`), or a task object with ``name``,
        ``dataset(split)``, ``build_physics(img_shape, device, generator)`` and ``simulate(x, physics, generator)``.
    :param str model: ``mol-penalty``, ``mol-strict``, ``luser`` or ``modl``.
    :param int steps: total optimiser steps.
    :param int batch_size: global batch size.
    :param int crop: square training crop side (``None``: whole images).
    :param float lr: initial learning rate.
    :param str out: output folder: ``checkpoint.pt``, ``best.pt``, ``final.pt``, ``history.json``, ``curves.png``.
    :param bool resume: continue from ``out/checkpoint.pt`` (start afresh if there is none).
    :param int seed: seed of initialisation, data order, crops and simulated measurements.
    :param int eval_every: steps between validation + checkpoint.
    :param int val_images: number of validation images.
    :param str optimizer: ``"adam"`` or ``"sgd"`` (plain SGD: weights move by exactly ``-lr * gradient``).
    :param int stop_after: stop after this many steps, resumable (for time-boxed runs on shared machines).
    :param dict config: model settings (default :func:`deepinv_mol.pretrained.default_config`).
    :param bool progress: show the progress bar.
    :param float penalty_weight: weight of :class:`~deepinv_mol.loss.LipschitzPenalty` (``mol-penalty``). With
        weight 1 its gradient was 1000x that of the MSE at the start of ``mri-radial-4x`` training (0.12 against
        1e-4): the log-barrier then drives the network's Lipschitz constant to ~0 and MOL to a Tikhonov solve
        (validation PSNR flat at the CG level). At 1e-4 the MSE leads and the barrier still stops the
        constant at the threshold, where its gradient grows as ``weight / (T - L)``.
    :return: the history dict written to ``history.json`` (plus ``"out"``).
    :raises ValueError: unknown task/model, bad sizes, ``out`` already holding a run without ``resume``.
    """
    from deepinv.loss import SupLoss
    from deepinv.loss.metric import PSNR

    from .pretrained import LEARNED_MODELS, build_model, default_config

    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if model not in LEARNED_MODELS:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(LEARNED_MODELS)}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    if isinstance(task, str):
        from .tasks import get_task

        task_obj = get_task(task)
    else:
        task_obj = task
    out = Path(out)
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise ValueError(f"{out} already holds a training run: pass --resume to continue it or choose another --out")

    rank, world, device = init_distributed()
    train_data = task_obj.dataset("train", seed=seed)
    x0 = image_of(train_data[0])
    channels = x0.shape[0]
    side = crop if crop is not None else x0.shape[-1]
    img_shape = (channels, side, side) if crop is not None else tuple(x0.shape)
    random_crop(x0, crop, None)  # validates crop <= image size before anything heavy
    physics = task_obj.build_physics(img_shape, device, None)  # the task's default (deterministic) geometry

    if config is None:
        config = default_config(model, channels, getattr(task_obj, "data_weight", 10.0))
    torch.manual_seed(seed)
    net = build_model(model, config=config).to(device)
    run_config = {
        "task": task_obj.name,
        "model": model,
        "steps": int(steps),
        "batch_size": int(batch_size),
        "crop": crop,
        "lr": float(lr),
        "seed": int(seed),
        "eval_every": int(eval_every),
        "optimizer": optimizer,
        "world_size": world,
        "config": config,
        **({"penalty_weight": float(penalty_weight)} if model == "mol-penalty" else {}),
    }
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    n_rounds = -(-int(steps) // int(eval_every))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(n_rounds, 1), eta_min=lr * 0.1)

    losses = [SupLoss()]
    if model == "mol-penalty":
        from .loss import LipschitzPenalty

        losses.append(LipschitzPenalty(weight=penalty_weight))
    # find_unused_parameters: deepinv's MoDL carries parameters its denoiser ignores (sigma); without it
    # DDP silently leaves their buckets un-averaged
    wrapped = _DDP(net, find_unused_parameters=True) if world > 1 else net
    val = validation_set(task_obj, physics, val_images, crop, seed, device) if val_images > 0 else None
    trainer = ResumableTrainer(
        model=wrapped,
        physics=physics,
        optimizer=opt,
        train_dataloader=[],
        losses=losses,
        scheduler=sched,
        eval_dataloader=DataLoader(val, batch_size=max(1, min(4, val_images))) if val is not None else None,
        metrics=PSNR(max_pixel=1.0, complex_abs=channels == 2),
        online_measurements=True,
        compute_train_metrics=False,
        non_blocking_transfers=device.type == "cuda",
        device=device,
        verbose=False,
        show_progress_bar=False,
        save_path=None,
        simulate=task_obj.simulate,
        train_dataset=train_data,
        steps=int(steps),
        batch_size=int(batch_size),
        crop=crop,
        seed=int(seed),
        eval_every=int(eval_every),
        stop_after=stop_after,
        out_dir=out,
        rank=rank,
        world_size=world,
        run_config=run_config,
        progress=progress,
    )
    if resume and ckpt_path.exists():
        trainer.load_checkpoint(ckpt_path)
    elif resume and rank == 0:
        warnings.warn(f"no checkpoint in {out}: starting a new run")
    with warnings.catch_warnings():
        # deepinv warns that online measurements ignore params and that progress bars slow GPUs: not our case
        warnings.filterwarnings("ignore", message=".*progress bar.*")
        trainer.train()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written its files
    history = json.loads((out / HISTORY).read_text()) if (out / HISTORY).exists() else {}
    history["out"] = str(out)
    return history


def export_weights(run_dir: str | Path, weights_dir: str | Path, command: str | None = None, which: str = BEST) -> dict:
    r"""Copy a finished run's weights into a weights folder and record them in its ``manifest.json``
    (through :func:`deepinv_mol.pretrained.save_pretrained`, the one writer of the weights format).

    The manifest entry ``"<task>/<model>"`` holds: ``file``, ``sha256``, ``size_bytes``, the model's complete
    ``config``, the training settings, ``command`` (the exact command line), ``train_seconds``, ``steps_done``, the
    validation curve ``val_psnr`` (``[step, dB]`` pairs) and the selected validation PSNR.

    :param str run_dir: a ``deepinv-mol train --out`` folder.
    :param str weights_dir: destination (``deepinv_mol/weights`` for shipped weights).
    :param str command: the training command line to record.
    :param str which: ``"best.pt"`` (best validation PSNR) or ``"final.pt"``.
    :return: the manifest entry.
    :raises FileNotFoundError: the run has no such weights or history.
    """
    from .pretrained import load_weights, save_pretrained

    run_dir = Path(run_dir)
    src = run_dir / which
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist (run not finished, or no validation set)")
    history = json.loads((run_dir / HISTORY).read_text())
    cfg = history["run_config"]
    curve = history["val_psnr"]
    metadata = {
        "training": {k: cfg[k] for k in cfg if k != "config"},
        "command": command,
        "train_seconds": history["train_seconds"],
        "steps_done": history["step"],
        "val_psnr": curve,
        "selected": which,
        "val_psnr_selected": (max(v for _, v in curve) if which == BEST else curve[-1][1]) if curve else None,
    }
    return save_pretrained(load_weights(src), weights_dir, cfg["task"], cfg["model"], cfg["config"], metadata)
