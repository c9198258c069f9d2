r"""Convergence of MOL's fixed-point iteration: iterations to tolerance, Anderson's speed-up, converged share,
uniqueness of the fixed point, and the authors' plain iteration as a reference.

For each task, each MOL model (shipped weights) and each test image :func:`bench_convergence` runs

* ``anderson``: the model as shipped (its Anderson history, :math:`\alpha` = its own, usually 1);
* ``plain``: the same model with ``anderson=0`` (plain iteration :math:`x_{n+1} = T(x_n)`);
* ``authors``: the authors' iteration, :math:`\alpha = 0.01`, no Anderson, stopped by their rule
  :math:`\|x_{n+1} - x_n\| / \|x_{n+1}\| < 10^{-4}` (MOL's ``tol`` is scaled by :math:`\alpha`, so it is set to
  :math:`10^{-4}/\alpha`) or 500 iterations;
* a reference fixed point: Anderson to ``reference_tol`` (default :math:`10^{-6}`), against which the error
  of each run is measured (the fixed point does not depend on :math:`\alpha`, so all three runs aim at it);
* ``n_starts`` random starting images (Gaussian, scaled to the RMS of the default start) solved to
  ``reference_tol``: their largest pairwise relative distance is the spread of the fixed points found
  (uniqueness: small for a monotone score).

Residual curves are the relative step :math:`\|T(x) - x\| / \|T(x)\|` at each evaluation of the step map,
recorded by wrapping the model's ``step`` (the quantity the engine
:func:`deepinv_mol.equilibrium.fixed_point` tests against the tolerance), and the equation residual
:math:`\|F(x) + \lambda A^H(Ax - y)\| / \|x\|` (:math:`F = I - H`) of the returned image says how close to the
fixed point a stop at tolerance lands.
"""

from __future__ import annotations

import copy
import itertools
import math

import torch

from .report import TASKS, _seed, bench_problem, load_models, per_sample_norm, progress_bar, save_outputs
from ..guarantees import equation_residual

__all__ = ["MOL_MODELS", "mol_variant", "run_recorded", "bench_convergence",
           "plot_convergence"]

#: the models whose fixed-point iteration is measured
MOL_MODELS = ("mol-strict", "mol-penalty")

#: the authors' step and stopping rule
AUTHORS_ALPHA, AUTHORS_TOL, AUTHORS_MAX_ITER = 0.01, 1e-4, 500


def mol_variant(model, alpha: float | None = None, anderson: int | None = None, tol: float | None = None,
                max_iter: int | None = None):
    r"""A copy of a MOL model with another score step, Anderson history, tolerance or iteration cap (the
    network and :math:`\lambda` unchanged; warnings off).

    :param model: a :class:`deepinv_mol.optim.MOL` (with a fixed, non-learnt :math:`\alpha` if ``alpha`` is given).
    :param float alpha: new :math:`\alpha` in (0, 1].
    :param int anderson: new Anderson history (0: plain iteration).
    :param float tol: new tolerance (MOL stops at ``tol * min(1, alpha)``).
    :param int max_iter: new iteration cap.
    :return: the modified copy.
    """
    for attr in ("anderson", "tol", "max_iter", "raw_alpha"):
        if not hasattr(model, attr):
            raise TypeError(
                f"mol_variant expects a deepinv_mol.optim.MOL (no attribute {attr!r}); got {type(model).__name__}"
            )
    variant = copy.deepcopy(model)
    variant.warn = False
    if alpha is not None:
        if getattr(variant, "learn_alpha", False):
            raise ValueError("mol_variant cannot set alpha on a model that learns it")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        with torch.no_grad():
            variant.raw_alpha.fill_(float(alpha))
    if anderson is not None:
        variant.anderson = int(anderson)
    if tol is not None:
        variant.tol = float(tol)
    if max_iter is not None:
        variant.max_iter = int(max_iter)
    return variant


def _relative(a, b):
    return float(per_sample_norm(a - b)[0] / per_sample_norm(b).clamp_min(1e-12)[0])


@torch.no_grad()
def run_recorded(model, y, physics, init=None, reference=None):
    r"""Reconstruct with ``model`` and record :math:`\|T(x) - x\|/\|T(x)\|` at every evaluation of its step map
    (and :math:`\|T(x) - x^\star\|/\|x^\star\|` when a reference fixed point :math:`x^\star` is given).

    The model's data-consistency solve is shadowed on the instance for the call (and restored after), so the
    reconstruction is exactly the model's own.

    :param model: a :class:`~deepinv_mol.optim.MOL` (its data-consistency solve ``_solve(z, x, aty, physics)``
        is the last part of every step, so it sees each step's input and output).
    :param torch.Tensor y: measurements.
    :param physics: forward operator.
    :param torch.Tensor init: optional starting image.
    :param torch.Tensor reference: a reference fixed point (optional).
    :return: ``(x, curve, stats, errors)``: the reconstruction, the residuals of the iterations (as many as
        ``stats["iterations"]``), a copy of ``model.stats`` and the errors to ``reference`` (empty without it).
    """
    curve, errors = [], []
    solve = model._solve

    def recorded(z, x, *args, **kwargs):
        tx, solver_stats = solve(z, x, *args, **kwargs)
        curve.append(float((per_sample_norm(tx - x) / per_sample_norm(tx).clamp_min(1e-12)).max()))
        if reference is not None:
            errors.append(_relative(tx, reference))
        return tx, solver_stats

    model._solve = recorded
    try:
        x = model(y, physics) if init is None else model(y, physics, init=init)
    finally:
        del model._solve
    stats = dict(model.stats)
    n = len(curve) if stats.get("iterations") is None else int(stats["iterations"])
    return x, curve[:n], stats, errors[:n]


def bench_convergence(
    tasks=TASKS,
    models=MOL_MODELS,
    n_images: int = 2,
    image_size: int = 64,
    n_starts: int = 3,
    max_iter: int = 200,
    reference_tol: float = 1e-6,
    authors: bool = True,
    authors_max_iter: int = AUTHORS_MAX_ITER,
    seed: int = 0,
    json_path=None,
    figure_path=None,
    progress: bool = True,
) -> list[dict]:
    r"""Fixed-point convergence of the MOL models on every task (see the module docstring for the runs).

    One row per (task, model): mean ``iterations_anderson``, ``iterations_plain``, ``iterations_authors``;
    ``speedup`` (plain / Anderson iterations, at the model's :math:`\alpha` and tolerance) and
    ``speedup_vs_authors`` (authors / Anderson); ``converged_share`` (share of the images whose shipped-model
    reconstruction met its tolerance), ``converged_share_plain`` and ``_authors``; the largest errors to the
    reference fixed point ``error_anderson``, ``error_plain``, ``error_authors`` and the equation residuals
    ``equation_residual_anderson``, ``_authors``; ``uniqueness_spread`` (largest pairwise relative distance of
    the fixed points from ``n_starts`` random starts and the default start, over the images); ``alpha``,
    ``anderson``, ``tol`` of the shipped model. The JSON also holds the residual curves of every run (key
    ``"curves"``).

    :param tasks: task names.
    :param models: MOL model names among :data:`MOL_MODELS`.
    :param int n_images: test images per task.
    :param int image_size: image side.
    :param int n_starts: random starts of the uniqueness test (0 skips it).
    :param int max_iter: iteration cap of the Anderson, plain and reference runs.
    :param float reference_tol: tolerance of the reference fixed point and of the random-start solves.
    :param bool authors: run the authors' iteration (:math:`\alpha = 0.01`, plain, tolerance :math:`10^{-4}`).
    :param int authors_max_iter: its cap (500 in the paper).
    :param int seed: seed of data, noise and random starts.
    :param str json_path: write the JSON there.
    :param str figure_path: write the residual-curve figure there (:func:`plot_convergence`).
    :param bool progress: show a progress bar.
    :return: the rows.
    """
    if int(n_starts) < 0 or int(max_iter) < 1 or not reference_tol > 0:
        raise ValueError(
            f"need n_starts >= 0, max_iter >= 1, reference_tol > 0; got {n_starts}, {max_iter}, {reference_tol}"
        )
    unknown = set(models) - set(MOL_MODELS)
    if unknown:
        raise ValueError(f"models must be among {MOL_MODELS} (MOL models), got {sorted(unknown)}")
    settings = dict(tasks=list(tasks), models=list(models), n_images=n_images, image_size=image_size,
                    n_starts=n_starts, max_iter=max_iter, reference_tol=reference_tol, authors=authors,
                    authors_max_iter=authors_max_iter, seed=seed)
    rows, curves = [], []
    bar = progress_bar(len(tasks) * len(models) * n_images, "convergence", progress)
    for t_index, task_name in enumerate(tasks):
        problem = bench_problem(task_name, n_images, image_size, seed)
        for name, shipped in load_models(models, task_name).items():
            alpha = float(shipped.alpha)
            runs = {
                "anderson": mol_variant(shipped, max_iter=max_iter),
                "plain": mol_variant(shipped, anderson=0, max_iter=max_iter),
            }
            if authors:
                runs["authors"] = mol_variant(shipped, alpha=AUTHORS_ALPHA, anderson=0,
                                              tol=AUTHORS_TOL / AUTHORS_ALPHA, max_iter=authors_max_iter)
            reference = mol_variant(shipped, tol=reference_tol / min(1.0, alpha), max_iter=max_iter)
            per = {k: {"iterations": [], "converged": [], "error": [], "equation": []} for k in runs}
            spreads = []
            for i, y in enumerate(problem.ys):
                bar.set_postfix_str(f"{task_name} {name} image {i}")
                x_ref, ref_curve, _, _ = run_recorded(reference, y, problem.physics)
                curves.append({"task": task_name, "model": name, "image": i, "run": "reference",
                               "residuals": ref_curve})
                for kind, model in runs.items():
                    x, curve, stats, errors = run_recorded(model, y, problem.physics, reference=x_ref)
                    per[kind]["iterations"].append(int(stats["iterations"]))
                    per[kind]["converged"].append(bool(stats["converged"]))
                    per[kind]["error"].append(_relative(x, x_ref))
                    per[kind]["equation"].append(equation_residual(model, problem.physics, y, x_hat=x))
                    curves.append({"task": task_name, "model": name, "image": i, "run": kind, "residuals": curve,
                                   "errors": errors})
                points = [x_ref]
                gen = torch.Generator().manual_seed(_seed(seed, t_index, i))
                rms = float(per_sample_norm(x_ref)[0]) / math.sqrt(x_ref.numel())
                for _ in range(int(n_starts)):
                    start = rms * torch.randn(x_ref.shape, generator=gen, dtype=x_ref.dtype).to(x_ref.device)
                    points.append(run_recorded(reference, y, problem.physics, init=start)[0])
                spreads.append(max((_relative(a, b) for a, b in itertools.combinations(points, 2)), default=0.0))
                bar.update(1)
            row = {"task": task_name, "model": name, "image_size": problem.image_size, "n_images": len(problem.ys),
                   "alpha": alpha, "anderson": int(shipped.anderson), "tol": float(shipped.tol)}
            for kind, values in per.items():
                row[f"iterations_{kind}"] = sum(values["iterations"]) / len(values["iterations"])
            row["speedup"] = row["iterations_plain"] / row["iterations_anderson"]
            row["speedup_vs_authors"] = row["iterations_authors"] / row["iterations_anderson"] if authors else None
            row["converged_share"] = sum(per["anderson"]["converged"]) / len(per["anderson"]["converged"])
            for kind in runs:
                if kind != "anderson":
                    row[f"converged_share_{kind}"] = sum(per[kind]["converged"]) / len(per[kind]["converged"])
            for kind in runs:
                row[f"error_{kind}"] = max(per[kind]["error"])
            for kind in runs:
                row[f"equation_residual_{kind}"] = max(per[kind]["equation"])
            row["uniqueness_spread"] = max(spreads)
            row["n_starts"] = int(n_starts)
            rows.append(row)
    bar.close()
    return save_outputs(json_path, figure_path, "convergence", settings, rows, plot_convergence, figure_data=curves,
                        curves=curves)


def plot_convergence(curves: list, path) -> None:
    r"""Curves of the first image, log scale: the relative step (top; the authors' step is :math:`\alpha` = 0.01
    times smaller for the same distance to the fixed point) and the error to the reference fixed point
    (bottom), one panel column per task, one colour per model, one line style per run (Anderson solid, plain
    dashed, authors' dotted).

    :param list curves: the ``"curves"`` of :func:`bench_convergence`'s JSON.
    :param str path: PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(c["task"] for c in curves))
    models = list(dict.fromkeys(c["model"] for c in curves))
    styles = {"anderson": "-", "plain": "--", "authors": ":"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(5.5 * len(tasks), 7), squeeze=False)
    for col, task in enumerate(tasks):
        for c in curves:
            if c["task"] != task or c["image"] != 0 or c["run"] not in styles or not c["residuals"]:
                continue
            color = colors[models.index(c["model"]) % len(colors)]
            label = f"{c['model']} {c['run']} ({len(c['residuals'])} it.)"
            for row, key in enumerate(("residuals", "errors")):
                if c.get(key):
                    axes[row, col].semilogy(range(1, len(c[key]) + 1), c[key], styles[c["run"]], color=color,
                                            lw=1.2, label=label)
        axes[0, col].set_ylabel("step ||T(x) - x|| / ||T(x)||")
        axes[1, col].set_ylabel("error to the fixed point ||x - x*|| / ||x*||")
        axes[0, col].set_title(f"{task} (first test image)", fontsize=9)
        for row in range(2):
            axes[row, col].set_xlabel("iteration")
            axes[row, col].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
