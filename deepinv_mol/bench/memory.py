r"""Training-step memory: how much a reconstruction model needs for forward + loss + backward.

Three measurements, each saying what it is:

* ``saved_bytes`` — bytes of the tensors autograd saves for backward during the forward and the loss
  (counted with :func:`torch.autograd.graph.saved_tensors_hooks`, unique storages once). Deterministic,
  device-independent, and the part of training memory that grows with unrolled iterations; it leaves
  out parameters' gradients and transient buffers.
* ``peak_rss_increase`` (CPU) — increase of the process's peak resident set size over its level just
  before the step, measured in a fresh spawned subprocess (peak reset through ``/proc/self/clear_refs``
  when the kernel allows it) after one warm-up step. The baseline is subtracted: the interpreter, torch,
  deepinv, the model's parameters, the physics and the data are all in memory *before* the step and do not
  count; what counts is what the step (forward, loss, backward, parameter gradients) adds. glibc's
  ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` are fixed (128 KiB) in the subprocess so that
  freed blocks go back to the system and the figures repeat. What the operating system sees, allocator
  caching included; noisy to a few MB. ``state_rss`` is what the problem itself (model, physics, data)
  occupies above the interpreter with its libraries: ``state_rss + peak_rss_increase`` is what a training
  step needs beyond ``import torch, deepinv`` (what :func:`bench_memory_vs_size` compares with budgets).
* ``cuda_peak_bytes`` (CUDA) — :func:`torch.cuda.max_memory_allocated` over the step, after a reset.

The generic entry point is :func:`training_step_memory`, which takes a *factory*: a picklable
(module-level) callable returning ``dict(model=..., y=..., physics=..., x=...)``, so that the subprocess
can build the same problem. :func:`bench_mol_vs_modl` uses it to compare MOL with deepinv's ``MoDL``.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import os
from typing import Callable

import torch

__all__ = [
    "training_step",
    "saved_tensors_memory",
    "training_step_memory",
    "bench_mol_vs_modl",
    "bench_memory_vs_iterations",
    "bench_memory_vs_size",
    "plot_memory_vs_iterations",
    "plot_memory_vs_size",
    "size_summary",
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
    import deepinv  # noqa: F401  (the libraries are baseline, not the problem's state)

    libraries = _rss_bytes("VmRSS")
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
    state = before - libraries
    if not reset and peak == peak_before:  # peak not reset and not exceeded: the step's peak is unknown
        return {"peak_rss_increase": None, "state_rss": state}
    return {"peak_rss_increase": peak - before, "state_rss": state}


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
        ``peak_rss_increase`` (bytes, CPU, ``None`` when the peak could not be isolated) and ``state_rss``
        (bytes the model, physics and data occupy before the step) when ``rss``;
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
                row.update(future.result())
                row["peak_rss_counts"] = ("increase of the peak RSS over the RSS just before the step, after a "
                                          "warm-up step; libraries, model, physics and data excluded (state_rss)")
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


# --- memory against the number of iterations ---------------------------------------------------------

#: the models of :func:`bench_memory_vs_iterations`: MOL and deepinv's MoDL (same strict MonotoneCNN, 8-coil
#: ``mri-radial-4x``), LUSER and its DnCNN-20 feed-forward twin (LUSER's defaults, 1-coil ``mri-radial-4x``)
ITERATION_MODELS = ("MOL", "MoDL", "LUSER", "UnrolledFeedForward")


def _iteration_setup(model="MOL", img_size=64, num_iter=10, width=64, inner_max_iter=60, seed=0):
    if model in ("MOL", "MoDL"):
        factory = _mol_setup if model == "MOL" else _modl_setup
        return factory(img_size=img_size, num_iter=num_iter, width=width, seed=seed)
    from .luser import _memory_setup

    return _memory_setup(problem="mri", kind=model, img_size=img_size, num_iter=num_iter, width=width,
                         inner_max_iter=inner_max_iter, seed=seed)


def bench_memory_vs_iterations(
    num_iters=(10, 20, 50, 100),
    models=ITERATION_MODELS,
    image_size: int = 64,
    width: int = 64,
    inner_max_iter: int = 60,
    rss: bool = True,
    json_path=None,
    figure_path=None,
    progress: bool = False,
) -> list[dict]:
    r"""Training-step memory against the number of iterations :math:`K` for MOL, LUSER, deepinv's MoDL and
    LUSER's feed-forward twin, each with its defaults (recomputation on for MOL and LUSER).

    MOL runs exactly :math:`K` forward iterations (``tol=0``) and MoDL unrolls :math:`K` layers, both with a
    strict :class:`~deepinv_mol.models.MonotoneCNN` (width ``width``, depth 5) on the 8-coil ``mri-radial-4x``
    task; LUSER and :class:`~deepinv_mol.optim.UnrolledFeedForward` (DnCNN-20) unroll :math:`K` steps on its
    1-coil variant (:func:`deepinv_mol.bench.luser.make_problem`). Each figure is measured by
    :func:`training_step_memory` in a fresh subprocess. The claim: MOL and LUSER flat (``growth_10_to_50``
    at most 1.15), the unrolled ones linear in :math:`K`. LUSER's untied regularizers add their parameter
    gradients (about 0.2 M parameters per step at width 64), which no recomputation removes.

    :param num_iters: the values of :math:`K`.
    :param models: names among :data:`ITERATION_MODELS`.
    :param int image_size: image side (memory is affine in the pixels: small sizes show the trend quickly).
    :param int width: CNN width of every model.
    :param int inner_max_iter: LUSER's inner iteration cap (memory does not depend on it; time does).
    :param bool rss: measure peak RSS in subprocesses (``False``: ``saved_bytes`` only, the figure the
        summaries and the plot then use; for quick checks).
    :param str json_path: write ``{"benchmark", "settings", "machine", "rows"}`` there.
    :param str figure_path: PNG of peak memory against :math:`K` (log memory axis).
    :param bool progress: show a progress bar.
    :return: one row per (model, K) with ``memory`` (the compared figure), ``peak_rss_increase``, ``saved_bytes``,
        ``state_rss``, ``seconds``,
        then one summary row per model (``growth_10_to_50``: peak at the K nearest 50 over the one at the
        smallest K; ``mb_per_iteration``: least-squares slope).
    """
    import time

    from .report import progress_bar, save_outputs

    unknown = [m for m in models if m not in ITERATION_MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}: expected names among {ITERATION_MODELS}")
    num_iters = [int(k) for k in num_iters]
    if not num_iters or min(num_iters) < 1:
        raise ValueError(f"num_iters must be positive integers, got {num_iters}")
    settings = dict(num_iters=num_iters, models=list(models), image_size=image_size, width=width,
                    inner_max_iter=inner_max_iter, memory="peak_rss_increase" if rss else "saved_bytes")
    rows = []
    bar = progress_bar(len(models) * len(num_iters), "memory vs K", enabled=progress)
    for model in models:
        for k in num_iters:
            t0 = time.perf_counter()
            m = training_step_memory(_iteration_setup, rss=rss, model=model, img_size=image_size, num_iter=k,
                                     width=width, inner_max_iter=inner_max_iter)
            memory = m.get("peak_rss_increase") if rss else m["saved_bytes"]
            rows.append({"model": model, "num_iter": k, "img_size": image_size, **m, "memory": memory,
                         "seconds": round(time.perf_counter() - t0, 1)})
            bar.update(1)
    bar.close()
    rows += _iteration_summaries(rows, models)
    return save_outputs(json_path, figure_path, "memory-iterations", settings, rows, plot_memory_vs_iterations)


def _iteration_summaries(rows, models):
    out = []
    for model in models:
        pts = [(r["num_iter"], r.get("memory")) for r in rows if r["model"] == model and "num_iter" in r]
        pts = [(k, v) for k, v in pts if v]
        if len(pts) < 2:
            continue
        pts.sort()
        k0, v0 = pts[0]
        k50, v50 = min(pts, key=lambda p: abs(p[0] - 50))
        n = len(pts)
        mk, mv = sum(k for k, _ in pts) / n, sum(v for _, v in pts) / n
        den = sum((k - mk) ** 2 for k, _ in pts)
        slope = sum((k - mk) * (v - mv) for k, v in pts) / den if den else 0.0
        out.append({"model": model, "summary": True, "growth_10_to_50": round(v50 / v0, 3),
                    "from_k": k0, "to_k": k50, "mb_per_iteration": round(slope / 2**20, 3)})
    return out


def plot_memory_vs_iterations(rows: list, path) -> None:
    r"""Peak RSS increase (MB, log axis) against :math:`K` (linear axis), one line per model.

    :param list rows: rows of :func:`bench_memory_vs_iterations`.
    :param str path: PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(r["model"] for r in rows if not r.get("summary")):
        pts = sorted((r["num_iter"], r["memory"] / 2**20) for r in rows
                     if r["model"] == model and not r.get("summary") and r.get("memory"))
        if pts:
            ax.plot(*zip(*pts), marker="o", label=model)
    ax.set_yscale("log")
    ax.set_xlabel("iterations K")
    ax.set_ylabel("training-step memory (MB)")
    ax.set_title("training memory against K")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- memory against problem size -----------------------------------------------------------------------

#: geometry -> (task, default measured ladder of spatial shapes, target shape)
GEOMETRIES = {
    "2d": ("mri-radial-4x", ((32, 32), (48, 48), (64, 64)), (256, 256)),
    "2d+t": ("mri-radial-dynamic", ((16, 16, 16), (16, 24, 24), (16, 32, 32)), (16, 192, 192)),
    "3d": ("mri-3d", ((16, 16, 16), (20, 20, 20), (24, 24, 24)), (96, 96, 96)),
}


def _size_setup(task_name="mri-radial-4x", shape=(32, 32), model="MOL", num_iter=10, width=32, depth=5, seed=0):
    import deepinv as dinv

    from deepinv_mol.models import MonotoneCNN
    from deepinv_mol.optim import MOL
    from deepinv_mol.tasks import get_task

    torch.manual_seed(seed)
    task = get_task(task_name)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 2) + tuple(shape), generator=g)  # memory does not depend on the content
    physics = task.build_physics((2,) + tuple(shape), "cpu")
    y = task.simulate(x, physics, g)
    net = MonotoneCNN(channels=2, width=width, depth=depth, dims=len(shape), constraint="strict")
    if model == "MOL":
        rec = MOL(denoiser=net, max_iter=num_iter, tol=0.0, warn=False)
    else:
        rec = dinv.models.MoDL(denoiser=net, num_iter=num_iter)
    return {"model": rec, "y": y, "physics": physics, "x": x}


def _fit_affine(voxels, values):
    n = len(voxels)
    mx, my = sum(voxels) / n, sum(values) / n
    den = sum((v - mx) ** 2 for v in voxels)
    slope = sum((v - mx) * (w - my) for v, w in zip(voxels, values)) / den
    return my - slope * mx, slope


def _largest_shape(geometry, voxels, ladder_shape):
    if voxels <= 0:
        return None
    if geometry == "2d":
        side = int(voxels ** 0.5)
        return (side, side)
    if geometry == "2d+t":
        frames = ladder_shape[0]
        side = int((voxels / frames) ** 0.5)
        return (frames, side, side)
    side = int(round(voxels ** (1 / 3), 6))
    return (side, side, side)


def bench_memory_vs_size(
    geometries=("2d", "2d+t", "3d"),
    models=("MOL", "MoDL"),
    ladders: dict | None = None,
    targets: dict | None = None,
    num_iter: int = 10,
    width: int = 32,
    depth: int = 5,
    budgets_gib=(4, 16),
    rss: bool = True,
    json_path=None,
    figure_path=None,
    progress: bool = False,
) -> list[dict]:
    r"""The largest problem MOL and deepinv's MoDL (``num_iter`` unrolled layers, the same strict
    :class:`~deepinv_mol.models.MonotoneCNN`, 3D convolutions for 2D+time and 3D) can train inside memory
    budgets, for 2D (``mri-radial-4x``), 2D+time (``mri-radial-dynamic``) and 3D (``mri-3d``) MRI.

    Only small sizes are run: each (geometry, model) is measured on a ladder of shapes
    (:func:`training_step_memory` in a fresh subprocess; random images, memory does not depend on them). The
    memory a training step needs, ``state_rss + peak_rss_increase`` (model, physics, data and the step,
    beyond the interpreter and libraries), is affine in the number of voxels for these models; the fit
    :math:`a + bV` is checked on the ladder (``fit_max_rel_residual``) and extrapolated to the target shape
    and to the largest shape inside each budget. Rows say ``"source": "measured"`` or ``"extrapolated"``.

    :param geometries: keys of :data:`GEOMETRIES`.
    :param models: ``"MOL"`` and/or ``"MoDL"``.
    :param dict ladders: geometry -> shapes to measure (at least 3; defaults in :data:`GEOMETRIES`).
    :param dict targets: geometry -> target shape (defaults in :data:`GEOMETRIES`: 256², 16×192², 96³).
    :param int num_iter: MOL forward iterations (``tol=0``) = MoDL unrolled layers.
    :param int width: CNN width.
    :param int depth: CNN depth.
    :param budgets_gib: memory budgets in GiB.
    :param bool rss: measure peak RSS in subprocesses (``False``: ``saved_bytes`` stands for the training
        memory; quick checks only, not a budget figure).
    :param str json_path: write ``{"benchmark", "settings", "machine", "rows"}`` there.
    :param str figure_path: PNG of memory against voxels (measured points, fits, budgets).
    :param bool progress: show a progress bar.
    :return: rows: measured, then per (geometry, model) a ``"fit"`` row (``intercept_mb``, ``mb_per_kvoxel``,
        ``fit_max_rel_residual``), an extrapolated ``"target"`` row (``fits_<B>gib``) and one ``"budget"``
        row per budget (``largest_shape``), then per geometry and budget a ``"claim"`` row: whether the
        target fits MOL and not MoDL.

    :Examples:

    >>> from deepinv_mol.bench.memory import GEOMETRIES
    >>> sorted(GEOMETRIES)
    ['2d', '2d+t', '3d']
    """
    import time

    from .report import progress_bar, save_outputs

    ladders = {g: GEOMETRIES[g][1] for g in geometries} | dict(ladders or {})
    targets = {g: GEOMETRIES[g][2] for g in geometries} | dict(targets or {})
    for g in geometries:
        if g not in GEOMETRIES:
            raise ValueError(f"unknown geometry {g!r}: expected one of {sorted(GEOMETRIES)}")
        if len(ladders[g]) < 3:
            raise ValueError(f"the ladder of {g!r} needs at least 3 shapes to check the affine fit, got {ladders[g]}")
    for m in models:
        if m not in ("MOL", "MoDL"):
            raise ValueError(f"unknown model {m!r}: expected 'MOL' or 'MoDL'")
    settings = dict(geometries=list(geometries), models=list(models), ladders={g: ladders[g] for g in geometries},
                    targets={g: targets[g] for g in geometries}, num_iter=num_iter, width=width, depth=depth,
                    budgets_gib=list(budgets_gib), memory="state_rss + peak_rss_increase" if rss else "saved_bytes")
    rows = []
    bar = progress_bar(sum(len(ladders[g]) for g in geometries) * len(models), "memory vs size", enabled=progress)
    for g in geometries:
        task_name = GEOMETRIES[g][0]
        for m in models:
            for shape in ladders[g]:
                t0 = time.perf_counter()
                r = training_step_memory(_size_setup, rss=rss, task_name=task_name, shape=tuple(shape), model=m,
                                         num_iter=num_iter, width=width, depth=depth)
                total = (r.get("state_rss") or 0) + (r.get("peak_rss_increase") or 0) if rss else r["saved_bytes"]
                rows.append({"geometry": g, "task": task_name, "model": m, "shape": list(shape),
                             "voxels": math.prod(shape), "source": "measured", **r, "train_memory": total,
                             "seconds": round(time.perf_counter() - t0, 1)})
                bar.update(1)
    bar.close()
    rows += size_summary(rows, targets, budgets_gib)
    return save_outputs(json_path, figure_path, "memory-size", settings, rows, plot_memory_vs_size)


def size_summary(rows: list, targets: dict, budgets_gib=(4, 16)) -> list[dict]:
    r"""The derived rows of :func:`bench_memory_vs_size` from its measured rows: per (geometry, model) the
    affine fit of ``train_memory`` in the voxels, the extrapolated target and the largest shape inside each
    budget; per geometry and budget the claim row (the target fits MOL and not MoDL).

    :param list rows: measured rows (``geometry``, ``model``, ``shape``, ``voxels``, ``train_memory``).
    :param dict targets: geometry -> target shape.
    :param budgets_gib: budgets in GiB.
    :return: the derived rows.
    """
    derived = []
    for g in dict.fromkeys(r["geometry"] for r in rows if r.get("source") == "measured"):
        done = {}
        for m in dict.fromkeys(r["model"] for r in rows if r.get("geometry") == g and r.get("source") == "measured"):
            meas = [r for r in rows if r.get("geometry") == g and r.get("model") == m and r.get("source") == "measured"]
            pts = [(r["voxels"], r["train_memory"]) for r in meas if r.get("train_memory")]
            if len(pts) < 2:
                continue
            a, b = _fit_affine([p[0] for p in pts], [p[1] for p in pts])
            resid = max(abs(a + b * v - w) / w for v, w in pts)
            derived.append({"geometry": g, "model": m, "kind": "fit", "source": "fit", "intercept_mb": a / 2**20,
                            "mb_per_kvoxel": b * 1000 / 2**20, "fit_max_rel_residual": resid, "n_sizes": len(pts)})
            target = tuple(targets[g])
            need = a + b * math.prod(target)
            row = {"geometry": g, "model": m, "kind": "target", "source": "extrapolated", "shape": list(target),
                   "voxels": math.prod(target), "train_memory": need}
            for budget in budgets_gib:
                row[f"fits_{budget:g}gib"] = bool(need <= budget * 2**30)
            derived.append(row)
            done[m] = row
            for budget in budgets_gib:
                v_max = (budget * 2**30 - a) / b if b > 0 else float("inf")
                shape = _largest_shape(g, v_max, meas[0]["shape"])
                derived.append({"geometry": g, "model": m, "kind": "budget", "source": "extrapolated",
                                "budget_gib": budget, "largest_voxels": int(v_max) if math.isfinite(v_max) else None,
                                "largest_shape": list(shape) if shape else None})
        if {"MOL", "MoDL"} <= set(done):
            for budget in budgets_gib:
                key = f"fits_{budget:g}gib"
                mol, modl = done["MOL"][key], done["MoDL"][key]
                derived.append({"geometry": g, "kind": "claim", "source": "extrapolated", "budget_gib": budget,
                                "shape": list(targets[g]), "mol_fits": mol, "modl_fits": modl,
                                "mol_trains_where_modl_cannot": mol and not modl})
    return derived


def plot_memory_vs_size(rows: list, path) -> None:
    r"""Training memory (MB, log axis) against voxels (log axis), one panel per geometry: measured points,
    the affine fits extended to the target size, the budgets as horizontal lines.

    :param list rows: rows of :func:`bench_memory_vs_size`.
    :param str path: PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    geometries = list(dict.fromkeys(r["geometry"] for r in rows if r.get("source") == "measured"))
    fig, axes = plt.subplots(1, len(geometries), figsize=(5 * len(geometries), 4), squeeze=False)
    budgets = sorted({r["budget_gib"] for r in rows if r.get("kind") == "budget"})
    for ax, g in zip(axes[0], geometries):
        for m in dict.fromkeys(r["model"] for r in rows if r.get("geometry") == g and "model" in r):
            meas = [(r["voxels"], r["train_memory"] / 2**20) for r in rows
                    if r.get("geometry") == g and r.get("model") == m and r.get("source") == "measured"]
            fit = next((r for r in rows if r.get("geometry") == g and r.get("model") == m and r.get("kind") == "fit"), None)
            tgt = next((r for r in rows if r.get("geometry") == g and r.get("model") == m and r.get("kind") == "target"), None)
            line = ax.plot(*zip(*meas), "o", label=f"{m} measured")[0]
            if fit and tgt:
                vs = [min(v for v, _ in meas), tgt["voxels"]]
                ax.plot(vs, [fit["intercept_mb"] + fit["mb_per_kvoxel"] * v / 1000 for v in vs], "--",
                        color=line.get_color(), label=f"{m} affine fit")
                ax.plot([tgt["voxels"]], [tgt["train_memory"] / 2**20], "x", color=line.get_color(), ms=9)
        for b in budgets:
            ax.axhline(b * 1024, color="grey", lw=0.8, ls=":")
            ax.text(ax.get_xlim()[0], b * 1024, f" {b:g} GiB", va="bottom", fontsize=8, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("voxels")
        ax.set_ylabel("training memory (MB)")
        ax.set_title(g)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(bench_mol_vs_modl(img_size=int(os.environ.get("IMG_SIZE", 256))), indent=1))
