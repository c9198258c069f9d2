r"""Speed: seconds per reconstruction of every model on every task, and where the time of a MOL step goes.

:func:`bench_speed` returns three kinds of rows (key ``"kind"``):

* ``"reconstruction"`` — per task and model: seconds per reconstruction (mean and fastest over the test
  images, after one untimed warm-up call that fills caches such as the Toeplitz kernel or the strict
  network's certified norms) and iterations;
* ``"mol_step"`` — per task, for one MOL model: a reconstruction with every part timed by wall-clock
  timers around it (the network :math:`H`, the data-consistency solve, the operators :math:`A`,
  :math:`A^H`, :math:`A^HA`, the start image); nested calls are counted once (*exclusive* time: an
  operator called inside the solve is charged to the operator, the rest of the solve to the solve).
  Per step of the fixed-point iteration (the reconstruction's time without its start image and the
  operator calls made by it, divided by the number of steps, so the one-off :math:`A^Hy` is spread over
  the steps): calls, seconds, share of the step; ``"other"`` is the remainder (Anderson mixing and the engine's bookkeeping);
* ``"operator"`` — per task: seconds of one call of :math:`A`, :math:`A^H`, :math:`A^HA` and of the network
  alone (median of ``repeats``).

Timings depend on the machine and its load: the JSON names the machine; tests check only the shapes.
"""

from __future__ import annotations

import time

import torch

from .report import TASKS, _median_seconds, bench_problem, load_models, progress_bar, save_outputs

__all__ = ["SPEED_MODELS", "TRAINING_PROBLEMS", "PartTimer", "bench_speed", "plot_speed", "training_step_profile",
           "bench_training_step"]

#: every reconstructor of ``deepinv-mol eval`` (``fbp`` on CT tasks only)
SPEED_MODELS = ("mol-strict", "mol-penalty", "modl", "luser", "cg", "adjoint", "fbp")

_PARTS = ("network", "data consistency", "A^H A", "A", "A^H", "start image")


class PartTimer:
    r"""Wall-clock timers with exclusive accounting: wrap callables with :meth:`wrap`; time spent in a wrapped
    call made from inside another is charged to the inner one only.

    :Examples:

    >>> from deepinv_mol.bench.speed import PartTimer
    >>> timer = PartTimer()
    >>> inner = timer.wrap("inner", lambda v: v + 1)
    >>> outer = timer.wrap("outer", lambda v: inner(v) * 2)
    >>> outer(1), timer.calls["outer"], timer.calls["inner"]
    (4, 1, 1)
    """

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._stack: list[list[float]] = []

    def wrap(self, name: str, fn):
        r"""``fn`` with its time and calls recorded under ``name``."""
        self.seconds.setdefault(name, 0.0)
        self.calls.setdefault(name, 0)

        def timed(*args, **kwargs):
            self._stack.append([0.0])  # time of the wrapped calls nested in this one
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - tic
                nested = self._stack.pop()[0]
                self.seconds[name] += elapsed - nested
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1][0] += elapsed

        return timed


def _instrument(model, physics, timer: PartTimer):
    # instance attributes shadow the methods for this object only; _restore removes them
    patched = []
    for obj, attr, name in ((model.denoiser, "forward", "network"), (model, "_solve", "data consistency"),
                            (model, "initialise", "start image"), (physics, "A_adjoint_A", "A^H A"),
                            (physics, "A", "A"), (physics, "A_adjoint", "A^H")):
        own = obj.__dict__.get(attr, _MISSING)  # an instance attribute of that name is put back afterwards
        object.__setattr__(obj, attr, timer.wrap(name, getattr(obj, attr)))
        patched.append((obj, attr, own))
    return patched


_MISSING = object()


def _restore(patched):
    for obj, attr, own in reversed(patched):
        if own is _MISSING:
            object.__delattr__(obj, attr)
        else:
            object.__setattr__(obj, attr, own)


@torch.no_grad()
def mol_step_profile(model, y, physics) -> dict:
    r"""One MOL reconstruction with its parts timed (:class:`PartTimer`), the start image apart.

    :param model: a :class:`deepinv_mol.optim.MOL`.
    :param torch.Tensor y: measurements.
    :param physics: forward operator.
    :return: ``{"total", "steps", "iterations", "seconds": {part: s}, "calls": {part: n}, "start_seconds",
        "start_calls"}``: ``seconds`` and ``calls`` of the parts outside the start image (the operators the
        start image calls are in ``start_calls``), ``start_seconds`` the start image's whole time, ``steps``
        the number of data-consistency solves (one per evaluation of the step map).
    """
    timer = PartTimer()
    patched = _instrument(model, physics, timer)
    start = {}
    initialise = model.initialise

    def timed_start(*args, **kwargs):
        calls, seconds = dict(timer.calls), dict(timer.seconds)
        tic = time.perf_counter()
        out = initialise(*args, **kwargs)
        start["seconds"] = time.perf_counter() - tic
        start["calls"] = {p: timer.calls[p] - calls[p] for p in calls}
        start["parts"] = {p: timer.seconds[p] - seconds[p] for p in seconds}
        return out

    object.__setattr__(model, "initialise", timed_start)
    try:
        tic = time.perf_counter()
        model(y, physics)
        total = time.perf_counter() - tic
    finally:
        object.__setattr__(model, "initialise", initialise)  # back to the PartTimer wrapper, removed by _restore
        _restore(patched)
    # charge everything done inside the start image to it, not to the steps
    seconds, calls = dict(timer.seconds), dict(timer.calls)
    if start:
        for part in seconds:
            seconds[part] -= start["parts"][part]
            calls[part] -= start["calls"][part]
    return {"total": total, "steps": calls["data consistency"], "iterations": model.stats.get("iterations"),
            "seconds": seconds, "calls": calls, "start_seconds": start.get("seconds", 0.0),
            "start_calls": start.get("calls", {})}


def bench_speed(
    tasks=TASKS,
    models=SPEED_MODELS,
    n_images: int = 2,
    image_size: int = 256,
    profile_model: str | None = "mol-strict",
    repeats: int = 3,
    seed: int = 0,
    json_path=None,
    figure_path=None,
    progress: bool = True,
) -> list[dict]:
    r"""Seconds per reconstruction of every model on every task, and the time inside one MOL step.

    :param tasks: task names.
    :param models: model names (``fbp`` is skipped on non-CT tasks).
    :param int n_images: timed test images per model (after one untimed warm-up on the first).
    :param int image_size: image side (256 in the issue; the tasks' test images are resized to it).
    :param str profile_model: the MOL model whose step is broken down (``None``: no breakdown).
    :param int repeats: calls per operator timing (median).
    :param int seed: seed of data and noise.
    :param str json_path: write the JSON there.
    :param str figure_path: write the figure there (:func:`plot_speed`).
    :param bool progress: show a progress bar.
    :return: rows of kinds ``"reconstruction"``, ``"mol_step"``, ``"operator"`` (see the module docstring).
    """
    if profile_model is not None and profile_model not in ("mol-strict", "mol-penalty"):
        raise ValueError(f"profile_model must be 'mol-strict', 'mol-penalty' or None, got {profile_model!r}")
    settings = dict(tasks=list(tasks), models=list(models), n_images=n_images, image_size=image_size,
                    profile_model=profile_model, repeats=repeats, seed=seed)
    rows = []
    bar = progress_bar(len(tasks) * (len(models) + (profile_model is not None)), "speed", progress)
    for task_name in tasks:
        problem = bench_problem(task_name, n_images, image_size, seed)
        names = [m for m in models if m != "fbp" or task_name.startswith("ct")]
        bar.total -= len(models) - len(names)
        loaded = load_models(names, task_name)
        with torch.no_grad():
            for name, model in loaded.items():
                bar.set_postfix_str(f"{task_name} {name}")
                model(problem.ys[0], problem.physics)  # warm-up: caches, lazy initialisation
                seconds, iterations = [], []
                for y in problem.ys:
                    tic = time.perf_counter()
                    model(y, problem.physics)
                    seconds.append(time.perf_counter() - tic)
                    stats = getattr(model, "stats", None)
                    it = stats.get("iterations") if isinstance(stats, dict) else None
                    if it is None and getattr(model, "unfold", False):
                        it = getattr(model, "max_iter", None)
                    iterations.append(None if it is None else float(it))
                its = [i for i in iterations if i is not None]
                rows.append({"kind": "reconstruction", "task": task_name, "model": name,
                             "image_size": problem.image_size, "n_images": len(problem.ys),
                             "seconds": sum(seconds) / len(seconds), "seconds_min": min(seconds),
                             "iterations": sum(its) / len(its) if its else None})
                bar.update(1)
            if profile_model is not None:
                bar.set_postfix_str(f"{task_name} {profile_model} step profile")
                if profile_model not in loaded:
                    loaded.update(load_models([profile_model], task_name))
                model = loaded[profile_model]
                y, physics = problem.ys[0], problem.physics
                model(y, physics)  # warm-up
                prof = mol_step_profile(model, y, physics)
                steps = max(prof["steps"], 1)
                per_step = {p: prof["seconds"][p] / steps for p in _PARTS if p != "start image"}
                step_total = (prof["total"] - prof["start_seconds"]) / steps
                per_step["other"] = max(step_total - sum(per_step.values()), 0.0)
                for part, secs in per_step.items():
                    rows.append({"kind": "mol_step", "task": task_name, "model": profile_model, "part": part,
                                 "image_size": problem.image_size,
                                 "calls_per_step": (prof["calls"][part] / steps) if part in prof["calls"] else None,
                                 "seconds_per_step": secs, "share": secs / step_total if step_total > 0 else None,
                                 "steps": prof["steps"], "seconds_reconstruction": prof["total"],
                                 "seconds_start_image": prof["start_seconds"]})
                x = problem.xs[0]
                ops = {"A": lambda: physics.A(x), "A^H": lambda: physics.A_adjoint(y),
                       "A^H A": lambda: physics.A_adjoint_A(x), "network": lambda: model.denoiser(x)}
                for part, fn in ops.items():
                    fn()  # warm-up
                    rows.append({"kind": "operator", "task": task_name, "part": part, "image_size": problem.image_size,
                                 "seconds_per_call": _median_seconds(fn, max(1, int(repeats)))})
                bar.update(1)
    bar.close()
    return save_outputs(json_path, figure_path, "speed", settings, rows, plot_speed)


def plot_speed(rows: list, path) -> None:
    r"""Left: seconds per reconstruction (log scale), one group per model, one bar per task. Right: one stacked
    bar per task splitting a MOL step into its parts.

    :param list rows: rows of :func:`bench_speed`.
    :param str path: PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recon = [r for r in rows if r["kind"] == "reconstruction"]
    step = [r for r in rows if r["kind"] == "mol_step"]
    tasks = list(dict.fromkeys(r["task"] for r in recon))
    models = list(dict.fromkeys(r["model"] for r in recon))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / max(len(tasks), 1)
    for j, task in enumerate(tasks):
        values = [next((r["seconds"] for r in recon if r["task"] == task and r["model"] == m), 0.0) for m in models]
        ax.bar([i + j * width for i in range(len(models))], values, width, label=task)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=15, fontsize=8)
    ax.set_ylabel("seconds per reconstruction")
    size = recon[0]["image_size"] if recon else ""
    ax.set_title(f"reconstruction time, {size}x{size}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    step_tasks = list(dict.fromkeys(r["task"] for r in step))
    parts = list(dict.fromkeys(r["part"] for r in step))
    for i, task in enumerate(step_tasks):
        bottom = 0.0
        for k, part in enumerate(parts):
            secs = next((r["seconds_per_step"] for r in step if r["task"] == task and r["part"] == part), 0.0)
            ax.bar(i, secs, 0.6, bottom=bottom, color=f"C{k}", label=part if i == 0 else None)
            bottom += secs
    ax.set_xticks(range(len(step_tasks)), step_tasks, fontsize=8)
    ax.set_ylabel("seconds per MOL step")
    ax.set_title(f"inside one step of {step[0]['model'] if step else 'MOL'}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- training steps at scale ---------------------------------------------------------------------------------

#: problems of :func:`bench_training_step`: name -> (task, task overrides, CNN dims)
TRAINING_PROBLEMS = {
    "2d": ("mri-radial-4x", {}, 2),
    "2d+t": ("mri-radial-dynamic", {}, 3),
    "3d": ("mri-3d", {}, 3),
}


def _training_problem(problem: str, size: int, depth: int, seed: int):
    from deepinv_mol.tasks import get_task
    from deepinv_mol.training import image_of

    task_name, overrides, dims = TRAINING_PROBLEMS[problem]
    overrides = dict(overrides)
    if problem == "2d+t":
        overrides["frames"] = depth
    elif problem == "3d":
        overrides["depth"] = depth
    task = get_task(task_name, size=size, **overrides)
    x = image_of(task.dataset("train", seed=seed)[0])[None]
    physics = task.build_physics(tuple(x.shape[1:]))
    y = task.simulate(x, physics, torch.Generator().manual_seed(seed))
    return task, physics, x, y, dims


def training_step_profile(model, y, physics, x, network=None) -> dict:
    r"""One training step (forward, mean-squared-error loss, backward) with its parts timed (:class:`PartTimer`).

    The network's certified norms (a strict :class:`~deepinv_mol.models.MonotoneCNN` recomputes them once per
    weight change, i.e. once per optimiser step) are computed by one untimed-apart call before the step and
    reported as ``certificate_seconds``; the step itself then runs on fixed weights.

    :param model: a reconstructor with a ``denoiser`` (MOL, deepinv's MoDL).
    :param torch.Tensor y: measurements.
    :param physics: forward operator.
    :param torch.Tensor x: ground truth.
    :param torch.nn.Module network: the network to time (default ``model.denoiser``; deepinv's ``MoDL`` keeps it
        inside its prior).
    :return: ``{"certificate_seconds", "forward_seconds", "backward_seconds", "step_seconds", "seconds": {part: s},
        "calls": {part: n}, "forward_calls": {part: n}}`` with parts ``network``, ``A``, ``A^H``, ``A^H A``
        (exclusive time, as :func:`mol_step_profile`).
    """
    net = model.denoiser if network is None else network
    tic = time.perf_counter()
    with torch.no_grad():
        net(x.new_zeros(x.shape) if x.shape[1] == 2 else x)
    certificate = time.perf_counter() - tic
    timer = PartTimer()
    patched = []
    for obj, attr, name in ((net, "forward", "network"), (physics, "A_adjoint_A", "A^H A"), (physics, "A", "A"),
                            (physics, "A_adjoint", "A^H")):
        own = obj.__dict__.get(attr, _MISSING)
        object.__setattr__(obj, attr, timer.wrap(name, getattr(obj, attr)))
        patched.append((obj, attr, own))
    # MOL's differentiable step evaluates a ReLU MonotoneCNN layer by layer (deepinv_mol.recompute, the default
    # recompute=True), not through its forward: count that evaluation as a network call too (its recomputation
    # inside the backward is in backward_seconds, not in the network's part)
    from .. import recompute as _recompute

    lean = _recompute._LeanReLUCNN
    lean.apply = timer.wrap("network", lean.apply)
    try:
        tic = time.perf_counter()
        x_net = model(y, physics)
        loss = torch.nn.functional.mse_loss(x_net, x)
        forward = time.perf_counter() - tic
        forward_calls = dict(timer.calls)
        tic = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - tic
    finally:
        del lean.apply  # back to torch.autograd.Function.apply
        _restore(patched)
    return {"certificate_seconds": certificate, "forward_seconds": forward, "backward_seconds": backward,
            "step_seconds": forward + backward, "seconds": dict(timer.seconds), "calls": dict(timer.calls),
            "forward_calls": forward_calls}


def bench_training_step(
    problems=("2d", "2d+t", "3d"),
    models=("mol", "modl"),
    size_2d: int = 256,
    size: int = 64,
    depth: int = 16,
    num_iter: int = 10,
    width: int = 32,
    cnn_depth: int = 5,
    constraint: str = "strict",
    seed: int = 0,
    json_path=None,
    figure_path=None,
    progress: bool = True,
) -> list[dict]:
    r"""Seconds per training step (forward, loss, backward) of MOL and deepinv's ``MoDL`` with the same CNN on
    2D (``mri-radial-4x`` at ``size_2d``\ ²), 2D+time (``mri-radial-dynamic``, ``depth`` frames of ``size``\ ²) and
    3D (``mri-3d``, ``depth`` x ``size``\ ²) MRI, the setting of :mod:`deepinv_mol.bench.memory`: a
    :class:`~deepinv_mol.models.MonotoneCNN` (``width``, ``cnn_depth`` layers, ``dims`` 2 or 3), MOL with exactly
    ``num_iter`` forward iterations (``tol=0``), the task's data weight :math:`\lambda` (what ``deepinv-mol train``
    starts from) and its default implicit backward, MoDL with ``num_iter`` layers.

    One row per problem and model: ``step_seconds`` (= ``forward_seconds`` + ``backward_seconds``),
    ``certificate_seconds`` (the strict network's certified norms, paid once per optimiser step, apart),
    and per part (network, A, A^H, A^H A) its calls and exclusive seconds (:func:`training_step_profile`).

    :param problems: among ``"2d"``, ``"2d+t"``, ``"3d"``.
    :param models: among ``"mol"``, ``"modl"``.
    :param int size_2d: image side of the 2D problem.
    :param int size: in-plane side of the 2D+t and 3D problems.
    :param int depth: frames (2D+t) or slices (3D).
    :param int num_iter: MOL iterations = MoDL layers.
    :param int width: CNN width.
    :param int cnn_depth: CNN layers.
    :param str constraint: ``"strict"`` or ``"penalty"`` CNN.
    :param int seed: seed of data, noise and weights.
    :param str json_path: write the JSON there.
    :param str figure_path: write a bar chart of the seconds per step there (PNG).
    :param bool progress: show a progress bar.
    :return: the rows.

    :Examples:

    >>> from deepinv_mol.bench.speed import bench_training_step
    >>> rows = bench_training_step(problems=("2d",), models=("mol",), size_2d=16, num_iter=2, width=4,
    ...                            cnn_depth=2, progress=False)
    >>> rows[0]["problem"], rows[0]["calls"]["A^H"] >= 1, rows[0]["step_seconds"] > 0
    ('2d', True, True)
    """
    import deepinv as dinv

    from deepinv_mol.models import MonotoneCNN
    from deepinv_mol.optim import MOL

    unknown = [p for p in problems if p not in TRAINING_PROBLEMS]
    if unknown:
        raise ValueError(f"problems must be among {sorted(TRAINING_PROBLEMS)}, got {unknown}")
    bad = [m for m in models if m not in ("mol", "modl")]
    if bad:
        raise ValueError(f"models must be among ['mol', 'modl'], got {bad}")
    settings = dict(problems=list(problems), models=list(models), size_2d=size_2d, size=size, depth=depth,
                    num_iter=num_iter, width=width, cnn_depth=cnn_depth, constraint=constraint, seed=seed)
    rows = []
    bar = progress_bar(len(problems) * len(models), "training step", progress)
    for problem in problems:
        task, physics, x, y, dims = _training_problem(problem, size_2d if problem == "2d" else size, depth, seed)
        for name in models:
            bar.set_postfix_str(f"{problem} {name}")
            torch.manual_seed(seed)
            net = MonotoneCNN(channels=2, width=width, depth=cnn_depth, dims=dims, constraint=constraint)
            if name == "mol":
                # the data weight `deepinv-mol train` starts from (the task's, not the class default 100 made for
                # a unit-norm operator: on mri-3d it made the solve's condition number ~2000 and the step 85-95 s)
                model = MOL(denoiser=net, lambda_=task.data_weight, max_iter=num_iter, tol=0.0, warn=False)
            else:
                model = dinv.models.MoDL(denoiser=net, num_iter=num_iter)
            prof = training_step_profile(model, y, physics, x, network=net)
            stats = getattr(model, "stats", None)
            rows.append({"problem": problem, "model": name, "shape": list(x.shape[2:]), "num_iter": num_iter,
                         "width": width, **prof,
                         "cg_iterations": stats.get("cg_iterations") if isinstance(stats, dict) else None,
                         "backward_iterations": stats.get("backward_iterations") if isinstance(stats, dict) else None})
            bar.update(1)
    bar.close()
    return save_outputs(json_path, figure_path, "training-step", settings, rows, _plot_training_step)


def _plot_training_step(rows: list, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{r['problem']} {r['model']}" for r in rows]
    ax.bar(labels, [r["forward_seconds"] for r in rows], label="forward")
    ax.bar(labels, [r["backward_seconds"] for r in rows], bottom=[r["forward_seconds"] for r in rows], label="backward")
    ax.set_ylabel("seconds per training step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
