r"""Training behind ``deepinv-mol train`` and the LUSER quality benchmark: ONE step loop, exactly resumable.

**Why not** :class:`deepinv.Trainer` (studied in deepinv 0.5.0, ``deepinv/training/trainer.py``). It trains by
*epochs* and resumes at an epoch boundary only (``load_model`` sets ``epoch_start = epoch + 1``); its checkpoint
holds model, optimiser and scheduler but neither the random-number-generator states nor the position in the
data stream; online measurements draw their noise from the physics' own generator (``physics(x)``); it saves
with a plain ``torch.save`` (a kill during the write leaves a truncated file) into a fresh timestamped folder
(``os.makedirs(exist_ok=False)``); its ``load_model`` calls ``torch.load(weights_only=False)`` (runs code from
the file); it has no notion of data-parallel ranks. A resumed deepinv run therefore does not see the same
data, crops and noise as an uninterrupted one, and the project's step-exact kill-and-resume cannot be built
on it without overriding most of its loop and reaching into its internals (the previous version of this module
overrode 7 methods and used 13 private attributes, which any deepinv minor release can break). So the loop is
ours -- about 100 lines, :class:`StepTrainer` -- and only deepinv's *parts* are reused: its losses (any
:class:`deepinv.loss.Loss`, called as deepinv's Trainer calls them), its metrics (:class:`deepinv.loss.metric.PSNR`)
and its datasets. Everything that trains in this package goes through :class:`StepTrainer`:
:func:`train` (``deepinv-mol train``) and :func:`deepinv_mol.bench.luser.bench_luser_quality`.

**Exact resumption** rests on one idea: every random draw of step :math:`s` is a pure function of
``(seed, s)``. The data stream is the concatenation of seeded permutations of the training set
(:func:`stream_index`); the crop offset and the noise of the sample at stream position :math:`p` come from
:func:`deepinv_mol.data.item_generator` keyed by ``p`` (the package's one seeding scheme). A checkpoint then
needs only the step counter on top of model, optimiser, scheduler and the global RNG states (kept for
anything else that draws from them, e.g. power iterations). The same per-position seeding makes a
data-parallel run see exactly the union batch of a single-process run: under ``torchrun`` each of the
:math:`W` ranks takes its contiguous share of every global batch and DistributedDataParallel averages the
gradients (gloo on CPU, NCCL on GPU).

**Checkpoints hold data, never code.** ``checkpoint.pt`` contains only tensors, numbers, strings, lists and
dicts (the numpy RNG state is stored as a tensor), and is read with ``torch.load(weights_only=True)``
(:func:`read_checkpoint`): a file holding any other Python object is refused with :class:`CheckpointError`
before anything in it runs. Truncated, empty or foreign files and non-finite weights are refused with a
message naming the file. A non-finite training loss stops the run (:class:`NonFiniteLossError`, naming the
step) and leaves the last checkpoint in place.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .data import crop_window, image_of, item_generator
from .pretrained import write_atomic

__all__ = [
    "BEST",
    "CHECKPOINT",
    "CURVES",
    "DEFAULT_AUGMENT",
    "algorithm_parameters",
    "FINAL",
    "HISTORY",
    "CheckpointError",
    "NonFiniteLossError",
    "StepTrainer",
    "atomic_save",
    "export_weights",
    "init_distributed",
    "plot_curves",
    "read_checkpoint",
    "stream_batch",
    "stream_index",
    "train",
    "unwrap",
    "validation_set",
]

CHECKPOINT = "checkpoint.pt"
#: training augmentation of ``deepinv-mol train`` when none is given: on (:class:`deepinv_mol.data.augment.Augmentation`
#: defaults). Generalisation study (MoDL, mri-radial-4x, 30 steps of 48² crops, batch 2, scale-equivariant): on 3 held-out
#: T1 slices of another subject 26.65 dB with it, 22.43 dB without (validation 31.20 / 27.16 dB)
DEFAULT_AUGMENT = True
BEST = "best.pt"
FINAL = "final.pt"
HISTORY = "history.json"
CURVES = "curves.png"
_FORMAT = "deepinv-mol-checkpoint/2"  # 2: plain data only (weights_only loading)
_REQUIRED = ("step", "state_dict", "optimizer", "scheduler", "rng", "step_losses", "val_curve", "best_psnr",
             "train_seconds", "run_config")


class CheckpointError(ValueError):
    r"""A checkpoint cannot be used: unreadable, not plain data, incomplete, holding non-finite weights,
    or saved with other settings than the run that resumes it."""


class NonFiniteLossError(RuntimeError):
    r"""The training loss became NaN or infinite; the run stopped and its last checkpoint was kept."""


# ------------------------------------------------------------------------------------------- the data stream

_MIX = 0x9E3779B97F4A7C15


def mix_seed(seed: int, *values: int) -> int:
    r"""Legacy splitmix64 mixing, kept only for ``deepinv_mol.cli``'s evaluation noise (so published tables keep
    their exact numbers). New code uses :func:`deepinv_mol.data.item_generator`, the package's seeding scheme.

    :param int seed: base seed.
    :param int values: further integers.
    :return: a 63-bit seed.
    """
    z = (int(seed) * _MIX) & 0xFFFFFFFFFFFFFFFF
    for v in values:
        z = (z ^ (int(v) + _MIX + (z << 6) + (z >> 2))) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


_STREAM_KEY = 1  # keys of item_generator: (1, pass) for the permutations, (2, position) for a sample's draws
_SAMPLE_KEY = 2
_VALIDATION_KEY = 3
_PERMS: dict = {}


def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    key = (n, seed, epoch)
    if key not in _PERMS:
        if len(_PERMS) > 64:
            _PERMS.clear()
        _PERMS[key] = torch.randperm(n, generator=item_generator(seed, _STREAM_KEY, epoch))
    return _PERMS[key]


def stream_index(position: int, n_items: int, seed: int) -> int:
    r"""Dataset index at a position of the seeded data stream.

    The stream is :math:`\pi_0, \pi_1, \dots` where :math:`\pi_e` is a random permutation of
    :math:`\{0, \dots, n-1\}` drawn from :func:`~deepinv_mol.data.item_generator` keyed by pass :math:`e`: every
    item is seen once per pass, and position :math:`p` is item :math:`\pi_{\lfloor p/n \rfloor}(p \bmod n)`.

    :param int position: stream position :math:`p \ge 0`.
    :param int n_items: dataset length :math:`n`.
    :param int seed: stream seed.
    :return: the dataset index.

    :Examples:

        >>> from deepinv_mol.training import stream_index
        >>> sorted(stream_index(p, 5, seed=0) for p in range(5))  # one pass: a permutation
        [0, 1, 2, 3, 4]
    """
    epoch, offset = divmod(int(position), int(n_items))
    return int(_permutation(int(n_items), int(seed), epoch)[offset])


def _rank_positions(step: int, batch_size: int, rank: int, world_size: int) -> range:
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} must be a multiple of the number of processes {world_size}")
    local = batch_size // world_size
    start = step * batch_size + rank * local
    return range(start, start + local)


def stream_batch(
    dataset,
    simulate: Callable,
    physics,
    step: int,
    *,
    batch_size: int,
    crop: int | None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    prepare: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""This rank's share of global batch ``step``: stream positions :math:`[sB + rL, sB + (r+1)L)`, :math:`L = B/W`.

    Each sample is read at its stream position (:func:`stream_index`; datasets with ``set_epoch`` get the pass
    number), cropped at a random offset and simulated with ``simulate(x, physics, generator)``, the generator
    keyed by the position: the batch is a pure function of ``(seed, step)``.

    :param torch.utils.data.Dataset dataset: images ``(C, H, W)`` (tensors, dicts with ``"x"`` or tuples).
    :param Callable simulate: ``simulate(x, physics, generator) -> y`` or ``(x, y)``.
    :param physics: the forward operator.
    :param int step: global step :math:`s`.
    :param int batch_size: global batch size :math:`B` (a multiple of ``world_size``).
    :param int crop: square crop side (``None``: whole images).
    :param int seed: stream seed.
    :param int rank: this process's rank :math:`r`.
    :param int world_size: number of processes :math:`W`.
    :param device: device of the batch.
    :param Callable prepare: ``prepare(x, generator, crop) -> x`` applied to the whole image before the crop (e.g.
        :meth:`deepinv_mol.data.augment.Augmentation.rescale`), drawing from the sample's generator.
    :return: ``(x, y)``.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError("the training set is empty")
    xs, ys = [], []
    for position in _rank_positions(int(step), int(batch_size), int(rank), int(world_size)):
        if hasattr(dataset, "set_epoch"):
            # datasets with seeded augmentation (deepinv_mol.data) draw anew on every pass of the stream
            dataset.set_epoch(position // n)
        x = image_of(dataset[stream_index(position, n, seed)]).to(device)
        gen = item_generator(seed, _SAMPLE_KEY, position, device=device)
        if prepare is not None:
            x = prepare(x, gen, crop)
        if crop is not None:
            rows, cols = crop_window(x.shape[-2:], crop, gen)
            x = x[..., rows, cols]
        out = simulate(x[None], physics, gen)
        x_out, y = out if isinstance(out, tuple) else (x[None], out)
        xs.append(x_out)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# ------------------------------------------------------------------------------------------- files


def atomic_save(obj, path: str | Path) -> None:
    r"""``torch.save`` to memory, then :func:`deepinv_mol.pretrained.write_atomic` (a temporary file in the
    same folder and ``os.replace``): a crash leaves the old file.

    :param obj: what to save (plain data: tensors, numbers, strings, lists, dicts).
    :param str path: destination.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def _rng_state() -> dict:
    # plain data only: the numpy state becomes a tensor and numbers (weights_only loading accepts it)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _non_finite(state: dict) -> list[str]:
    return [k for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(v.isfinite().all())]


def _first_line(error: BaseException) -> str:
    # torch's weights-only errors open with a long generic paragraph: keep the line that says what failed
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if "Unsupported" in line or "invalid load key" in line]
    return f"{type(error).__name__}: {(useful or lines or [''])[0][:200]}"


def read_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    r"""Read a training checkpoint written by :class:`StepTrainer`, safely.

    Read with ``torch.load(weights_only=True)``: only tensors, numbers, strings, lists, tuples and dicts are
    accepted, so a file carrying any other Python object (a crafted pickle that would run code) is refused
    before anything in it runs.

    :param str path: the ``checkpoint.pt`` file.
    :param map_location: where to put the tensors.
    :return: the checkpoint dict.
    :raises FileNotFoundError: no such file.
    :raises CheckpointError: empty, truncated or not a checkpoint (text, random bytes, another program's file),
        holding Python objects, missing entries, or non-finite model weights -- the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): delete it and train afresh")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any failure of the reader means the same thing to the user
        text = str(error)
        if "Unsupported global" in text or "GLOBAL" in text:
            detail = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
            detail = detail.split(" was not an allowed")[0].replace("WeightsUnpickler error: ", "")
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects, not only tensors and numbers"
                f"{' (' + detail + ')' if detail else ''}; a checkpoint of deepinv-mol never does, so it was written "
                "by something else (or crafted): nothing in it was run"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} ({size} bytes) is not a readable PyTorch file: truncated, corrupt or not a "
            f"checkpoint ({_first_line(error)})"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a training checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing or ckpt.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is not a training checkpoint of this version (format {ckpt.get('format')!r}, expected "
            f"{_FORMAT!r}; missing entries: {', '.join(missing) or 'none'})"
        )
    bad = _non_finite(ckpt["state_dict"])
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite (NaN/Inf) weights in {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}: resuming would train from garbage; restart from an earlier run"
        )
    return ckpt


# ------------------------------------------------------------------------------------------- distributed


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
    :return: the bare module.
    """
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _mean_over_ranks(value: float) -> float:
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


# ------------------------------------------------------------------------------------------- the loop


class StepTrainer:
    r"""The package's one training loop: a number of optimiser *steps* in rounds, exactly resumable.

    Step :math:`s` takes ``batches(s) -> (x, y)``, computes ``x_net = model(y, physics)`` and the total loss
    :math:`\sum_k \operatorname{mean}(\ell_k(x, x_{\text{net}}, y, \text{physics}, \text{model}))` (deepinv's
    loss call, so any :class:`deepinv.loss.Loss` works), stops with :class:`NonFiniteLossError` if that is not
    finite, then back-propagates and steps the optimiser. Every ``eval_every`` steps a round ends: validation
    (``validate(model) -> PSNR``, ``best.pt`` when it improves), one scheduler step, and an atomic
    ``checkpoint.pt`` + ``history.json`` + ``curves.png`` in ``out_dir``. Only rank 0 writes.

    For exact resumption ``batches`` must be a pure function of the step (as :func:`stream_batch` is); the
    checkpoint then restores everything else (model, optimiser, scheduler, RNG states, counters, history).

    :param torch.nn.Module model: the reconstructor (possibly DistributedDataParallel-wrapped).
    :param torch.optim.Optimizer optimizer: its optimiser.
    :param Callable batches: ``batches(step) -> (x, y)``.
    :param physics: forward operator passed to the model and the losses.
    :param list losses: deepinv-style losses ``l(x=, x_net=, y=, physics=, model=, epoch=)``.
    :param int steps: total number of steps.
    :param scheduler: learning-rate scheduler stepped once per round (or ``None``).
    :param int eval_every: steps per round (``None``: one round).
    :param Callable validate: ``validate(model) -> float`` validation PSNR, run in eval mode without gradients.
    :param int stop_after: stop after this many steps in total (a planned interruption; resume continues).
    :param str out_dir: folder for checkpoints, history and curves (``None``: write nothing).
    :param int rank: process rank.
    :param int world_size: number of processes.
    :param dict run_config: settings saved with checkpoints; a resume must match them.
    :param bool progress: show a progress bar (loss and last validation PSNR).
    :param str desc: progress bar label.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
        physics,
        *,
        losses: Sequence[Callable],
        steps: int,
        scheduler=None,
        eval_every: int | None = None,
        validate: Callable[[torch.nn.Module], float] | None = None,
        stop_after: int | None = None,
        out_dir: str | Path | None = None,
        rank: int = 0,
        world_size: int = 1,
        run_config: dict | None = None,
        progress: bool = True,
        desc: str = "train",
    ):
        self.model, self.optimizer, self.batches, self.physics = model, optimizer, batches, physics
        self.losses, self.steps, self.scheduler = list(losses), int(steps), scheduler
        self.eval_every = int(eval_every) if eval_every else self.steps
        self.validate, self.stop_after = validate, stop_after
        self.out_dir = Path(out_dir) if out_dir else None
        self.rank, self.world_size = int(rank), int(world_size)
        self.run_config = dict(run_config or {})
        self.progress, self.desc = progress, desc
        self.global_step = 0
        self.step_losses: list[float] = []
        self.val_curve: list[tuple[int, float]] = []
        self.train_seconds = 0.0
        self.best_psnr = -math.inf

    # ---------------------------------------------------------------- one step
    def train_step(self, step: int) -> float:
        r"""One optimiser step on ``batches(step)``.

        :param int step: global step.
        :return: the loss (averaged over the ranks).
        :raises NonFiniteLossError: the loss is NaN or infinite (nothing is updated).
        """
        x, y = self.batches(step)
        self.optimizer.zero_grad(set_to_none=True)
        x_net = self.model(y, self.physics)
        total = 0
        for loss in self.losses:
            total = total + loss(x=x, x_net=x_net, y=y, physics=self.physics, model=self.model, epoch=step).mean()
        value = float(total.detach())
        if self.world_size > 1:
            value = _mean_over_ranks(value)  # every rank takes the same decision below
        if not math.isfinite(value):
            kept = self.out_dir / CHECKPOINT if self.out_dir is not None else None
            where = f"; the last checkpoint {kept} is kept" if kept is not None and kept.exists() else ""
            raise NonFiniteLossError(
                f"training loss is {value} at step {step} (0-based): stopped before updating the weights{where}. "
                "Lower the learning rate or check the data"
            )
        total.backward()
        self.optimizer.step()
        return value

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> None:
        r"""Write the full training state to ``out_dir/checkpoint.pt`` (atomically; rank 0 only; plain data)."""
        if self.rank != 0 or self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "format": _FORMAT,
            "step": self.global_step,
            "state_dict": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": _rng_state(),
            "step_losses": list(self.step_losses),
            "val_curve": [list(v) for v in self.val_curve],
            "best_psnr": float(self.best_psnr),
            "train_seconds": float(self.train_seconds),
            "run_config": self.run_config,
        }
        atomic_save(state, self.out_dir / CHECKPOINT)

    def _save_weights(self, name: str) -> None:
        if self.rank == 0 and self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_save(unwrap(self.model).state_dict(), self.out_dir / name)

    def load_checkpoint(self, path: str | Path) -> None:
        r"""Restore a full training state written by :meth:`save_checkpoint` (read by :func:`read_checkpoint`).

        :param str path: checkpoint file.
        :raises CheckpointError: unreadable, unsafe or non-finite checkpoint (see :func:`read_checkpoint`).
        :raises ValueError: the checkpoint was written with different settings (task, model, batch, ...).
        """
        ckpt = read_checkpoint(path)
        saved = ckpt["run_config"]
        diff = {k: (saved.get(k), v) for k, v in self.run_config.items() if k in saved and saved.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"cannot resume {path}: settings differ ({detail})")
        unwrap(self.model).load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        _set_rng_state(ckpt["rng"])
        self.global_step = int(ckpt["step"])
        self.step_losses = [float(v) for v in ckpt["step_losses"]]
        self.val_curve = [(int(s), float(v)) for s, v in ckpt["val_curve"]]
        self.best_psnr = float(ckpt["best_psnr"])
        self.train_seconds = float(ckpt["train_seconds"])

    # ---------------------------------------------------------------- the loop
    def fit(self) -> torch.nn.Module:
        r"""Run (or continue) training up to ``steps`` (or ``stop_after``) steps.

        :return: the trained model (unwrapped).
        """
        from tqdm.auto import tqdm

        stop = self.steps if self.stop_after is None else min(self.steps, int(self.stop_after))
        bar = tqdm(total=self.steps, initial=self.global_step, dynamic_ncols=True,
                   disable=not (self.progress and self.rank == 0), desc=self.desc)
        try:
            while self.global_step < stop:
                n = min(self.eval_every - self.global_step % self.eval_every, stop - self.global_step)
                self.model.train()
                tic = time.perf_counter()
                for _ in range(n):
                    loss = self.train_step(self.global_step)
                    self.step_losses.append(loss)
                    self.global_step += 1
                    bar.update(1)
                    postfix = {"loss": f"{loss:.3e}"}
                    if self.val_curve:
                        postfix["val_psnr"] = f"{self.val_curve[-1][1]:.2f}"
                    bar.set_postfix(postfix)
                self.train_seconds += time.perf_counter() - tic
                if self.global_step % self.eval_every == 0 or self.global_step == self.steps:
                    self._validate()
                    if self.scheduler is not None:
                        self.scheduler.step()
                self.save_checkpoint()
                self._write_history()
        finally:
            bar.close()
        if self.global_step >= self.steps:
            self._save_weights(FINAL)
        return unwrap(self.model)

    def _validate(self) -> None:
        if self.validate is None:
            return
        self.model.eval()
        with torch.no_grad():
            value = float(self.validate(self.model))
        self.model.train()
        self.val_curve.append((self.global_step, value))
        if value >= self.best_psnr:
            self.best_psnr = value
            self._save_weights(BEST)

    def history(self) -> dict:
        r"""What ``history.json`` holds: run settings, step, training seconds, per-step loss, validation curve.

        :return: a JSON-serialisable dict.
        """
        return {
            "run_config": self.run_config,
            "step": self.global_step,
            "train_seconds": round(self.train_seconds, 2),
            "loss": self.step_losses,
            "val_psnr": [[s, v] for s, v in self.val_curve],
        }

    def _write_history(self) -> None:
        if self.rank != 0 or self.out_dir is None:
            return
        history = self.history()
        write_atomic(self.out_dir / HISTORY, json.dumps(history).encode())
        plot_curves(history, self.out_dir / CURVES)


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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


# -------------------------------------------------------------------------------------------------------------
# the function behind `deepinv-mol train`


def validation_set(task, physics, n_images: int, crop: int | None, seed: int, device: torch.device | str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Fixed validation pairs: the first ``n_images`` validation images, centre-cropped, simulated once.

    :param task: a task of :mod:`deepinv_mol.tasks`.
    :param physics: the task's physics for the crop size.
    :param int n_images: number of validation images.
    :param int crop: crop side (``None``: whole images).
    :param int seed: simulation seed (validation image :math:`i` draws from ``item_generator(seed, 3, i)``).
    :param device: device.
    :return: ``(x, y)`` stacked over the images.
    """
    data = task.dataset("val", seed=seed)
    xs, ys = [], []
    for i in range(min(n_images, len(data))):
        x = image_of(data[i]).to(device)
        if crop is not None:
            rows, cols = crop_window(x.shape[-2:], crop)
            x = x[..., rows, cols]
        out = task.simulate(x[None], physics, item_generator(seed, _VALIDATION_KEY, i, device=device))
        x_out, y = out if isinstance(out, tuple) else (x[None], out)
        xs.append(x_out)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _psnr_validator(x_val: torch.Tensor, y_val: torch.Tensor, physics, complex_images: bool, batch: int = 4):
    from deepinv.loss.metric import PSNR

    metric = PSNR(max_pixel=1.0, complex_abs=complex_images)

    def validate(model):
        values = [metric(model(y_val[i : i + batch], physics), x_val[i : i + batch]).flatten()
                  for i in range(0, len(x_val), batch)]
        return float(torch.cat(values).mean())

    return validate


def algorithm_parameters(model: torch.nn.Module) -> list:
    r"""The parameters of a reconstruction algorithm that are not its network's: every trainable parameter outside
    the convolution layers (MOL's ``raw_lambda``, MoDL's step sizes, LUSER's ``log_step_size``).

    :param torch.nn.Module model: a model of :func:`deepinv_mol.pretrained.build_model` (or any module).
    :return: the parameters, in ``model.parameters()`` order.

    :Examples:

        >>> from deepinv_mol.pretrained import build_model, default_config
        >>> from deepinv_mol.training import algorithm_parameters
        >>> [tuple(p.shape) for p in algorithm_parameters(build_model("luser", config=default_config("luser", 2)))]
        [(5,)]
    """
    convs = {id(p) for module in model.modules() if isinstance(module, torch.nn.modules.conv._ConvNd)
             for p in module.parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in convs]


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
    augment=None,
    algo_lr: float | None = None,
) -> dict:
    r"""Train a learned model on a task (the ``deepinv-mol train`` command), with :class:`StepTrainer`.

    Loss: supervised MSE (:class:`deepinv.loss.SupLoss`), plus :class:`deepinv_mol.loss.LipschitzPenalty`
    for ``mol-penalty``. Metric: PSNR (on the magnitude for complex images). Learning rate: cosine decay
    over the rounds. Batches: :func:`stream_batch`. Under ``torchrun`` this runs data-parallel (see
    :func:`init_distributed`).

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
    :param augment: training augmentation (:func:`deepinv_mol.data.augment.augmentation_from`: ``True``/``"on"``
        flips, 90° rotations, log-uniform intensity, random global MRI phase, random pixel size, and the task's
        ground-truth noise (:attr:`~deepinv_mol.tasks.Task.gt_noise`, on for MRI); ``False``/``"off"`` none; a dict of
        :class:`~deepinv_mol.data.augment.Augmentation` fields); ``None``: :data:`DEFAULT_AUGMENT`. Drawn from each
        sample's stream generator (resumes bit-identically) and recorded in the run configuration (and the manifest).
    :param float algo_lr: learning rate of the algorithm's own parameters (:func:`algorithm_parameters`: MOL's data
        weight, MoDL's and LUSER's step sizes), ``None``: ``lr``. With ``lr`` they barely move in a few hundred Adam
        steps (MOL's :math:`\lambda` 2.0 -> 2.014 in 150 steps: Adam moves each parameter by about ``lr`` a step).
    :return: the history dict written to ``history.json`` (plus ``"out"``).
    :raises ValueError: unknown task/model, bad sizes, ``out`` already holding a run without ``resume``.
    :raises CheckpointError: ``resume`` from an unreadable, unsafe or non-finite checkpoint.
    :raises NonFiniteLossError: the loss became NaN/Inf (the last checkpoint is kept).
    """
    from deepinv.loss import SupLoss

    from .pretrained import LEARNED_MODELS, build_model, default_config

    for name, value in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every)):
        if isinstance(value, bool) or int(value) != value or int(value) < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("lr", lr), ("algo_lr", lr if algo_lr is None else algo_lr)):
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
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
    if resume and ckpt_path.exists():
        read_checkpoint(ckpt_path)  # a broken checkpoint fails here, before anything heavy

    from .data.augment import Augmentation, augmentation_from

    augmentation = augmentation_from(DEFAULT_AUGMENT if augment is None else augment,
                                     default=Augmentation(noise=getattr(task_obj, "gt_noise", None)))
    rank, world, device = init_distributed()
    train_data = task_obj.dataset("train", seed=seed)
    x0 = image_of(train_data[0])
    channels = x0.shape[0]
    side = crop if crop is not None else x0.shape[-1]
    img_shape = (channels, side, side) if crop is not None else tuple(x0.shape)
    if crop is not None:
        crop_window(x0.shape[-2:], crop)  # validates crop <= image size before anything heavy
    physics = task_obj.build_physics(img_shape, device, None)  # the task's default (deterministic) geometry

    if config is None:
        from .optim.scaling import TASK_SCALE_REFERENCE

        config = default_config(model, channels, getattr(task_obj, "data_weight", 10.0),
                                TASK_SCALE_REFERENCE.get(task_obj.name, 1.0))
    torch.manual_seed(seed)
    net = build_model(model, config=config).to(device)
    own_algo_lr = algo_lr is not None and algo_lr != lr
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
        "augment": None if augmentation is None else augmentation.to_dict(),
        "config": config,
        **({"penalty_weight": float(penalty_weight)} if model == "mol-penalty" else {}),
        **({"algo_lr": float(algo_lr)} if own_algo_lr else {}),
    }
    params = [p for p in net.parameters() if p.requires_grad]
    if own_algo_lr:  # a second parameter group (one group otherwise: older checkpoints load)
        algo = {id(p) for p in algorithm_parameters(net)}
        groups = [{"params": [p for p in params if id(p) not in algo]},
                  {"params": [p for p in params if id(p) in algo], "lr": float(algo_lr)}]
        params = [group for group in groups if group["params"]]
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
    validate = None
    if val_images > 0:
        x_val, y_val = validation_set(task_obj, physics, val_images, crop, seed, device)
        validate = _psnr_validator(x_val, y_val, physics, channels == 2)

    simulate = task_obj.simulate
    if augmentation is not None:
        def simulate(x, physics, generator):  # augment the ground truth with the sample's own generator
            x = augmentation(x, generator)
            return x, task_obj.simulate(x, physics, generator)

    def batches(step):
        return stream_batch(train_data, simulate, physics, step, batch_size=int(batch_size), crop=crop,
                            seed=int(seed), rank=rank, world_size=world, device=device,
                            # the pixel-size draw needs a crop: whole images must keep the physics' size
                            prepare=None if augmentation is None or crop is None else augmentation.rescale)

    trainer = StepTrainer(
        wrapped, opt, batches, physics, losses=losses, steps=int(steps), scheduler=sched,
        eval_every=int(eval_every), validate=validate, stop_after=stop_after, out_dir=out, rank=rank,
        world_size=world, run_config=run_config, progress=progress,
    )
    if resume and ckpt_path.exists():
        trainer.load_checkpoint(ckpt_path)
    elif resume and rank == 0:
        warnings.warn(f"no checkpoint in {out}: starting a new run")
    trainer.fit()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written its files
    history = json.loads((out / HISTORY).read_text()) if (out / HISTORY).exists() else trainer.history()
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
