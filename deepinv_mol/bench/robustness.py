r"""Robustness to measurement perturbations: worst-case and random error amplification, side by side.

For a reconstructor :math:`y \mapsto x(y)` and a perturbation :math:`\delta` of the measurements, the
*error amplification* is

.. math::

    a(\delta) = \frac{\|x(y + \delta) - x(y)\|}{\|\delta\|}.

For each model, task, test image and budget :math:`\|\delta\| = \rho\,\|y\|` (:math:`\rho` = 1 % and
5 % by default) :func:`bench_robustness` measures

* the amplification under ``n_random`` Gaussian perturbations of that norm (mean and maximum);
* the worst case found by projected gradient ascent on :math:`\delta`
  (:func:`deepinv_mol.guarantees.worst_case_perturbation`, ``steps`` normalised ascent steps), started from
  the random draw with the largest amplification, so the worst case found is never below the random ones
  (the ascent keeps the best :math:`\delta` it visits);
* for MOL-strict, its certified bound :math:`\min(\lambda\|A\|/m, \sqrt{\lambda/(4m)})`
  (:func:`deepinv_mol.guarantees.certify`), which bounds :math:`a(\delta)` at the exact fixed point for every
  :math:`\delta`; a reconstruction stopped at tolerance may exceed it by about ``tol``
  :math:`\|x\|/\|\delta\|`.

The amplification is in image units per measurement unit, so it compares models on the same task, not
tasks with each other. For a linear reconstructor (``cg``) it does not depend on the budget and the ascent
is the power iteration: the worst case tends to the operator norm of the reconstruction map.
"""

from __future__ import annotations

import math

import torch

from .report import TASKS, _seed, bench_problem, load_models, per_sample_norm, progress_bar, write_json

__all__ = ["ROBUSTNESS_MODELS", "random_amplification", "bench_robustness", "plot_robustness"]

#: the models compared (the learned ones with the tasks' shipped weights, and the CG baseline)
ROBUSTNESS_MODELS = ("mol-strict", "mol-penalty", "modl", "luser", "cg")


@torch.no_grad()
def random_amplification(model, physics, y: torch.Tensor, eps: float, n_draws: int = 4,
                         generator: torch.Generator | None = None, x0: torch.Tensor | None = None):
    r"""Error amplification :math:`\|x(y+\delta) - x(y)\|/\|\delta\|` under Gaussian perturbations of norm ``eps``.

    :param model: reconstructor ``model(y, physics)``.
    :param physics: forward operator.
    :param torch.Tensor y: measurements of ONE image (batch of 1).
    :param float eps: Euclidean norm of every perturbation.
    :param int n_draws: number of random perturbations.
    :param torch.Generator generator: random source.
    :param torch.Tensor x0: ``model(y, physics)`` if already computed.
    :return: ``(amplifications, deltas)``: a list of ``n_draws`` floats and the perturbations.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.bench.robustness import random_amplification
    >>> double = lambda y, physics: 2 * y  # a linear map with norm 2: every amplification is 2
    >>> amps, _ = random_amplification(double, None, torch.ones(1, 3), eps=0.1, n_draws=2)
    >>> [round(a, 4) for a in amps]
    [2.0, 2.0]
    """
    if y.shape[0] != 1:
        raise ValueError(f"y must hold one image (batch of 1), got batch {y.shape[0]}")
    if not eps > 0 or int(n_draws) < 1:
        raise ValueError(f"eps must be positive and n_draws >= 1, got eps={eps}, n_draws={n_draws}")
    x0 = model(y, physics) if x0 is None else x0
    amps, deltas = [], []
    for _ in range(int(n_draws)):
        d = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        d = d * (eps / per_sample_norm(d).clamp_min(1e-30)).reshape((-1,) + (1,) * (y.ndim - 1))
        diff = model(y + d, physics) - x0
        amps.append(float(per_sample_norm(diff)[0] / eps))
        deltas.append(d)
    return amps, deltas


def bench_robustness(
    tasks=TASKS,
    models=ROBUSTNESS_MODELS,
    n_images: int = 2,
    image_size: int = 64,
    budgets=(0.01, 0.05),
    steps: int = 10,
    n_random: int = 3,
    seed: int = 0,
    json_path=None,
    figure_path=None,
    progress: bool = True,
) -> list[dict]:
    r"""Worst-case and random error amplification of every model on every task, with MOL-strict's certificate.

    One row per (task, model, budget): ``worst_case`` (largest over the images), ``worst_case_mean``,
    ``random_mean``, ``random_max`` (over images and draws), ``worst_to_random`` (``worst_case /
    random_max``), ``certified_bound`` (MOL-strict only, else ``None``), ``within_certificate``
    (MOL-strict: ``worst_case <= certified_bound``), ``ratio_to_modl`` (``worst_case`` over MoDL's at the same
    task and budget, when MoDL is measured; the paper's claim is MOL-strict <= 1/2), and the per-image
    values ``worst_case_per_image``, ``random_per_image``, ``ascent_history`` (largest amplification after
    each ascent step, first image).

    :param tasks: task names (2D tasks with shipped weights).
    :param models: model names among :data:`ROBUSTNESS_MODELS` (any name of
        :func:`deepinv_mol.pretrained.get_reconstructor` works).
    :param int n_images: test images per task.
    :param int image_size: image side (the tasks' test images are resized to it).
    :param budgets: perturbation norms relative to :math:`\|y\|` (per image).
    :param int steps: gradient-ascent steps of the worst-case search.
    :param int n_random: random perturbations per image and budget.
    :param int seed: seed of the data, the noise and the perturbations.
    :param str json_path: write ``{"benchmark", "settings", "machine", "rows"}`` there.
    :param str figure_path: write a PNG there (:func:`plot_robustness`).
    :param bool progress: show a progress bar.
    :return: the rows.
    """
    from ..guarantees import certify, worst_case_perturbation

    budgets = tuple(float(b) for b in budgets)
    if not budgets or min(budgets) <= 0:
        raise ValueError(f"budgets must be positive fractions of ||y||, got {budgets}")
    if int(steps) < 1 or int(n_random) < 1:
        raise ValueError(f"steps and n_random must be >= 1, got steps={steps}, n_random={n_random}")
    settings = dict(tasks=list(tasks), models=list(models), n_images=n_images, image_size=image_size,
                    budgets=list(budgets), steps=steps, n_random=n_random, seed=seed)
    rows = []
    bar = progress_bar(len(tasks) * len(models) * n_images * len(budgets), "robustness", progress)
    for t_index, task_name in enumerate(tasks):
        problem = bench_problem(task_name, n_images, image_size, seed)
        loaded = load_models(models, task_name)
        for name, model in loaded.items():
            bound = None
            if name == "mol-strict":
                bound = certify(model, problem.physics, x=problem.xs[0]).robustness_bound
            for b_index, rho in enumerate(budgets):
                worst, rand, history = [], [], []
                for i, y in enumerate(problem.ys):
                    bar.set_postfix_str(f"{task_name} {name} {rho:g} image {i}")
                    gen = torch.Generator().manual_seed(_seed(seed, t_index, b_index, i))
                    eps = rho * float(per_sample_norm(y)[0])
                    with torch.no_grad():
                        x0 = model(y, problem.physics)
                    amps, deltas = random_amplification(model, problem.physics, y, eps, n_random, gen, x0=x0)
                    rand.append(amps)
                    start = deltas[max(range(len(amps)), key=amps.__getitem__)]
                    result = worst_case_perturbation(model, problem.physics, y, eps, steps=steps, init=start)
                    worst.append(float(result.value))
                    if i == 0:
                        history = list(result.history)
                    bar.update(1)
                random_all = [a for amps in rand for a in amps]
                rows.append({
                    "task": task_name,
                    "model": name,
                    "budget": rho,
                    "image_size": problem.image_size,
                    "n_images": len(problem.ys),
                    "steps": int(steps),
                    "worst_case": max(worst),
                    "worst_case_mean": sum(worst) / len(worst),
                    "random_mean": sum(random_all) / len(random_all),
                    "random_max": max(random_all),
                    "worst_to_random": max(worst) / max(max(random_all), 1e-30),
                    "certified_bound": bound,
                    "within_certificate": None if bound is None else bool(max(worst) <= bound),
                    "worst_case_per_image": worst,
                    "random_per_image": [max(a) for a in rand],
                    "ascent_history": history,
                })
    bar.close()
    for row in rows:
        ref = [r for r in rows if r["model"] == "modl" and r["task"] == row["task"] and r["budget"] == row["budget"]]
        row["ratio_to_modl"] = row["worst_case"] / ref[0]["worst_case"] if ref and ref[0]["worst_case"] > 0 else None
    if json_path is not None:
        write_json(json_path, "robustness", settings, rows)
    if figure_path is not None:
        plot_robustness(rows, figure_path)
    return rows


def plot_robustness(rows: list, path) -> None:
    r"""One panel per task: worst-case (solid) and mean random (hatched) amplification of each model at each
    budget, MOL-strict's certified bound as a dashed line labelled in the legend.

    :param list rows: rows of :func:`bench_robustness`.
    :param str path: PNG file.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    width = 0.8 / (2 * len(budgets))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks):
        for j, rho in enumerate(budgets):
            for k, kind in enumerate(("worst_case", "random_mean")):
                offset = (2 * j + k) * width
                values = [next((r[kind] for r in rows if r["task"] == task and r["model"] == m and r["budget"] == rho),
                               math.nan) for m in models]
                ax.bar([i + offset for i in range(len(models))], values, width, color=colors[j % len(colors)],
                       hatch=None if kind == "worst_case" else "//", alpha=1.0 if kind == "worst_case" else 0.5,
                       label=f"{'worst case' if kind == 'worst_case' else 'random'} {100 * rho:g}% of ||y||")
        bounds = [r["certified_bound"] for r in rows if r["task"] == task and r["certified_bound"] is not None]
        if bounds:
            top = max(r["worst_case"] for r in rows if r["task"] == task)
            ax.axhline(bounds[0], color="k", ls="--", lw=1, label=f"MOL-strict certified bound {bounds[0]:.3g}")
            if bounds[0] > 3 * top:  # keep the bars readable; the bound stays in the legend
                ax.set_ylim(0, 1.3 * top)
                ax.text(0.01, 0.97, f"certified bound {bounds[0]:.3g} (off scale)", transform=ax.transAxes,
                        va="top", fontsize=7)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(models))], models, rotation=15, fontsize=8)
        ax.set_ylabel("||x(y+d) - x(y)|| / ||d||")
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
