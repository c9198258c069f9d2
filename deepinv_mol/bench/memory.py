r"""Training-step memory: how much a reconstruction model needs for forward + loss + backward.

Three measurements, each saying what it is:

* ``saved_bytes`` — bytes of the tensors autograd saves for backward during the forward and the loss
  (counted with :func:`torch.autograd.graph.saved_tensors_hooks`, unique storages once). Deterministic,
  device-independent, and the part of training memory that grows with unrolled iterations; it leaves
  out parameters' gradients and transient buffers.
* ``peak_rss_increase`` (CPU) — increase of the process's peak resident set size over its level just
  before the step, measured in a fresh spawned subprocess (peak reset through ``/proc/self/clear_refs``
  when the kernel allows it). What the operating system sees, allocator caching included; noisy to a
  few MB.
* ``cuda_peak_bytes`` (CUDA) — :func:`torch.cuda.max_memory_allocated` over the step, after a reset.

The generic entry point is :func:`training_step_memory`, which takes a *factory*: a picklable
(module-level) callable returning ``dict(model=..., y=..., physics=..., x=...)``, so that the subprocess
can build the same problem. :func:`bench_mol_vs_modl` uses it to compare MOL with deepinv's ``MoDL``.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Callable

import torch

__all__ = [
    "training_step",
    "saved_tensors_memory",
    "training_step_memory",
    "bench_mol_vs_modl",
]


def training_step(model, y, physics, x, loss_fn: Callable | None = None) -> torch.Tensor:
    r"""One training step without the optimiser update: ``x_net = model(y, physics)``, the loss, and
    ``loss.backward()``.

    :param torch.nn.Module model: a reconstructor called as ``model(y, physics)``.
    :param torch.Tensor y: measurements.
    :param deepinv.physics.Physics physics: forward operator.
    :param torch.Tensor x: ground truth.
    :param Callable loss_fn: ``loss_fn(x_net, x)``; mean squared error by default.
    :return: the (detached) loss.
    """
    x_net = model(y, physics)
    loss = torch.nn.functional.mse_loss(x_net, x) if loss_fn is None else loss_fn(x_net, x)
    loss.backward()
    return loss.detach()


def saved_tensors_memory(model, y, physics, x, loss_fn: Callable | None = None) -> dict:
    r"""Count and bytes of the tensors saved for backward by the forward and the loss of one training
    step (the backward is run too, so the step is complete).

    Unique storages are counted once (a tensor saved by several operations, or views of one buffer),
    which is what the graph actually keeps alive.

    :param torch.nn.Module model: a reconstructor called as ``model(y, physics)``.
    :param torch.Tensor y: measurements.
    :param deepinv.physics.Physics physics: forward operator.
    :param torch.Tensor x: ground truth.
    :param Callable loss_fn: ``loss_fn(x_net, x)``; mean squared error by default.
    :return: ``{"saved_count": int, "saved_bytes": int}``.
    """
    storages = {}
    count = [0]

    def pack(t):
        count[0] += 1
        try:
            s = t.untyped_storage()
            storages[(s.data_ptr(), t.device.type)] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. sparse or nested tensors: count their elements
            storages[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x_net = model(y, physics)
        loss = torch.nn.functional.mse_loss(x_net, x) if loss_fn is None else loss_fn(x_net, x)
    loss.backward()
    return {"saved_count": count[0], "saved_bytes": int(sum(storages.values()))}


_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _peak_rss_child(factory, args, kwargs, threads):
    torch.set_num_threads(threads)
    setup = factory(*args, **kwargs)
    # a warm-up step: one-time allocations (kernels, caches, lazy buffers) are not the step's memory
    training_step(setup["model"], setup["y"], setup["physics"], setup["x"], setup.get("loss_fn"))
    setup["model"].zero_grad(set_to_none=True)
    before = _rss_bytes("VmRSS")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (peak RSS) to the current RSS
        reset = True
    except OSError:
        pass
    peak_before = _rss_bytes("VmHWM")
    training_step(setup["model"], setup["y"], setup["physics"], setup["x"], setup.get("loss_fn"))
    peak = _rss_bytes("VmHWM")
    if not reset and peak == peak_before:  # peak not reset and not exceeded: the step's peak is unknown
        return None
    return peak - before


def _cuda_peak(setup) -> int:
    device = setup["y"].device
    training_step(setup["model"], setup["y"], setup["physics"], setup["x"], setup.get("loss_fn"))
    setup["model"].zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    training_step(setup["model"], setup["y"], setup["physics"], setup["x"], setup.get("loss_fn"))
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def training_step_memory(
    factory: Callable[..., dict],
    *args,
    rss: bool = True,
    threads: int = 1,
    **kwargs,
) -> dict:
    r"""Memory of one training step (forward + loss + backward) of the model a factory builds.

    :param Callable factory: picklable (module-level) callable ``factory(*args, **kwargs)`` returning
        ``dict(model=..., y=..., physics=..., x=...)`` and optionally ``loss_fn``; tensors and model on
        the device to measure.
    :param bool rss: on CPU, also measure the peak RSS increase in a fresh spawned subprocess (slower:
        the child imports torch and deepinv).
    :param int threads: torch threads in the subprocess.
    :return: dict with ``saved_count``, ``saved_bytes`` (tensors saved for backward, all devices);
        ``peak_rss_increase`` (bytes, CPU, ``None`` when the peak could not be isolated) when ``rss``;
        ``cuda_peak_bytes`` on CUDA.
    """
    setup = factory(*args, **kwargs)
    for key in ("model", "y", "physics", "x"):
        if key not in setup:
            raise ValueError(f"the factory must return a dict with keys model, y, physics, x; missing {key!r}")
    row = saved_tensors_memory(setup["model"], setup["y"], setup["physics"], setup["x"], setup.get("loss_fn"))
    if setup["y"].is_cuda:
        row["cuda_peak_bytes"] = _cuda_peak(setup)
    elif rss:
        # a fixed mmap threshold makes glibc return large freed blocks to the OS, so the warm-up
        # step's freed memory is not silently reused (which would hide the measured step's peak)
        saved_env = {k: os.environ.get(k) for k in _MALLOC_ENV}
        os.environ.update(_MALLOC_ENV)
        try:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                future = pool.submit(_peak_rss_child, factory, args, kwargs, threads)
                row["peak_rss_increase"] = future.result()
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return row


# --- MOL versus MoDL -------------------------------------------------------------------------------


def _mri_problem(img_size, acceleration, batch, device, seed):
    # the task registry's problem: mri-radial-4x (8-coil golden-angle radial NUFFT, 30 dB) at img_size,
    # on embedded training slices resized to img_size
    from deepinv_mol.tasks import get_task
    from deepinv_mol.training import image_of

    task = get_task("mri-radial-4x", size=img_size, acceleration=float(acceleration))
    images = task.dataset("train", seed=seed)
    x = torch.stack([image_of(images[i]) for i in range(batch)]).to(device)
    physics = task.build_physics(tuple(x.shape[1:]), device)
    y = task.simulate(x, physics, torch.Generator(device).manual_seed(seed))
    return physics, x, y


def _mol_setup(img_size=256, num_iter=10, width=64, depth=5, acceleration=4, batch=1, device="cpu", seed=0):
    from deepinv_mol.models import MonotoneCNN
    from deepinv_mol.optim import MOL

    torch.manual_seed(seed)
    physics, x, y = _mri_problem(img_size, acceleration, batch, device, seed)
    net = MonotoneCNN(channels=2, width=width, depth=depth, constraint="strict")
    # tol=0: MOL runs exactly num_iter iterations, the same count as MoDL's unrolled layers
    model = MOL(denoiser=net, max_iter=num_iter, tol=0.0, warn=False).to(device)
    return {"model": model, "y": y, "physics": physics, "x": x}


def _modl_setup(img_size=256, num_iter=10, width=64, depth=5, acceleration=4, batch=1, device="cpu", seed=0):
    import deepinv as dinv

    from deepinv_mol.models import MonotoneCNN

    torch.manual_seed(seed)
    physics, x, y = _mri_problem(img_size, acceleration, batch, device, seed)
    net = MonotoneCNN(channels=2, width=width, depth=depth, constraint="strict")
    model = dinv.models.MoDL(denoiser=net, num_iter=num_iter).to(device)
    return {"model": model, "y": y, "physics": physics, "x": x}


def bench_mol_vs_modl(
    img_size: int = 256,
    num_iter: int = 10,
    width: int = 64,
    depth: int = 5,
    acceleration: int = 4,
    batch: int = 1,
    device: str = "cpu",
    rss: bool = True,
) -> list[dict]:
    r"""Training-step memory of MOL versus deepinv's ``MoDL`` with the same CNN, side by side.

    Both use a strict :class:`deepinv_mol.models.MonotoneCNN` (width ``width``, ``depth`` layers) on the
    registry's ``mri-radial-4x`` task (:func:`deepinv_mol.tasks.get_task` with ``size=img_size`` and
    ``acceleration``: 8-coil golden-angle radial NUFFT, 30 dB, embedded training slices as complex
    ``img_size``\ ×\ ``img_size`` images); MOL runs exactly ``num_iter`` forward iterations
    (``tol=0``), MoDL unrolls ``num_iter`` layers. MOL's memory is that of one differentiable step, so
    the ratio grows with ``num_iter``.

    :param int img_size: image side in pixels.
    :param int num_iter: MOL forward iterations = MoDL unrolled iterations.
    :param int width: CNN width.
    :param int depth: CNN depth (conv layers).
    :param int acceleration: undersampling factor of the mask.
    :param int batch: batch size.
    :param str device: ``"cpu"`` or ``"cuda"``.
    :param bool rss: also measure peak RSS in subprocesses (CPU).
    :return: rows ``{"model", "img_size", "num_iter", "saved_bytes", "saved_count", ...}`` for MOL and
        MoDL, then a row ``{"model": "ratio MoDL/MOL", ...}`` with the ratios of every measured figure.

    :Examples:

    >>> from deepinv_mol.bench.memory import bench_mol_vs_modl
    >>> rows = bench_mol_vs_modl(img_size=32, num_iter=10, width=8, rss=False)  # doctest: +SKIP
    >>> rows[-1]["saved_bytes"] > 5  # doctest: +SKIP
    True
    """
    common = dict(img_size=img_size, num_iter=num_iter, width=width, depth=depth, acceleration=acceleration,
                  batch=batch, device=device)
    rows = []
    for name, factory in (("MOL", _mol_setup), ("MoDL", _modl_setup)):
        row = {"model": name, "img_size": img_size, "num_iter": num_iter}
        row.update(training_step_memory(factory, rss=rss, **common))
        rows.append(row)
    ratio = {"model": "ratio MoDL/MOL", "img_size": img_size, "num_iter": num_iter}
    for key in ("saved_bytes", "saved_count", "peak_rss_increase", "cuda_peak_bytes"):
        a, b = rows[0].get(key), rows[1].get(key)
        if a and b:
            ratio[key] = b / a
    rows.append(ratio)
    return rows


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(bench_mol_vs_modl(img_size=int(os.environ.get("IMG_SIZE", 256))), indent=1))
