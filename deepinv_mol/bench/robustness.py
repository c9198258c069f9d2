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

Where the certificate's slack goes (:func:`certificate_slack`): at exact fixed points :math:`x, x + \delta x` of
:math:`F(x) + \lambda A^H(Ax - y) = 0` (:math:`F = I - H`),
:math:`m_\text{eff}\|\delta x\|^2 + \lambda\|A\delta x\|^2 = \lambda\langle A\delta x, \delta\rangle` with the
monotonicity actually met along :math:`\delta x`,
:math:`m_\text{eff} = \langle F(x+\delta x) - F(x), \delta x\rangle/\|\delta x\|^2 \ge m = 1 - \mathrm{Lip}(H)`.
The bound :math:`\sqrt{\lambda/(4m)}` follows from three inequalities, each with its own factor of slack
(their product is the ratio bound / amplification): ``network`` :math:`\sqrt{m_\text{eff}/m}` (the network is
less expansive along :math:`\delta x` than its certified bound), ``alignment`` (Cauchy-Schwarz
:math:`\langle A\delta x, \delta\rangle \le \|A\delta x\|\|\delta\|`: the part of :math:`\delta` outside the
direction :math:`A\delta x`, e.g. in the null space of :math:`A^H`, moves nothing) and ``balance``
(:math:`t(1-t) \le 1/4` with :math:`t = \|A\delta x\|/\|\delta\|`: the bound is attained only where
:math:`A` has singular values near :math:`\sqrt{m/\lambda}`).

The amplification is in image units per measurement unit, so it compares models on the same task, not
tasks with each other. For a linear reconstructor (``cg``) it does not depend on the budget and the ascent
is the power iteration: the worst case tends to the operator norm of the reconstruction map.
"""

from __future__ import annotations

import math

import torch

from .report import TASKS, _seed, bench_problem, load_models, per_sample_norm, progress_bar, save_outputs

__all__ = ["ROBUSTNESS_MODELS", "random_amplification", "certificate_slack", "bench_robustness", "plot_robustness"]

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


def _network(model):
    r"""The learned network of a reconstructor: ``model.denoiser`` (MOL) or the denoiser of deepinv's unfolded
    prior (``model.prior[0].denoiser``, MoDL); ``None`` when there is none with weights (CG, LUSER)."""
    net = getattr(model, "denoiser", None)
    if net is None:
        prior = getattr(model, "prior", None)
        first = prior[0] if isinstance(prior, torch.nn.ModuleList) and len(prior) else prior
        net = getattr(first, "denoiser", None)
    if isinstance(net, torch.nn.Module) and any(True for _ in net.parameters()):
        return net
    return None


def _real(t: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


@torch.no_grad()
def certificate_slack(model, physics, y: torch.Tensor, delta: torch.Tensor, margin: float) -> dict:
    r"""Split the slack of MOL's certified bound :math:`\sqrt{\lambda/(4m)}` at one perturbation into its three
    factors (module docstring): ``network``, ``alignment``, ``balance``; their product is ``sqrt_bound /
    amplification`` up to the solver's tolerance, which ``closure`` (product times amplification over the
    bound, 1 at exact fixed points) shows.

    :param model: a MOL model (``denoiser``, ``lambda_``), called as ``model(y, physics)``.
    :param physics: its forward operator.
    :param torch.Tensor y: measurements of one image (batch of 1).
    :param torch.Tensor delta: the perturbation (same shape as ``y``).
    :param float margin: the certified monotonicity :math:`m = 1 - \mathrm{Lip}(H)`.
    :return: ``{"amplification", "sqrt_bound", "margin", "m_eff", "t", "cos", "network", "alignment", "balance",
        "closure"}``.
    :raises ValueError: ``margin`` not in (0, 1], or a zero perturbation.
    """
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1] (m = 1 - Lip(H) of a certified network), got {margin}")
    nd = float(per_sample_norm(delta)[0])
    if nd == 0:
        raise ValueError("delta must be a non-zero perturbation")
    lam = float(model.lambda_)
    x0 = model(y, physics)
    x1 = model(y + delta, physics)
    dx = x1 - x0
    ndx = float(per_sample_norm(dx)[0])
    dF = dx - (model.denoiser(x1) - model.denoiser(x0))
    m_eff = float((_real(dF) * _real(dx)).sum()) / max(ndx**2, 1e-30)
    adx = physics.A(dx)
    nadx = float(per_sample_norm(adx)[0])
    inner = float((_real(adx) * _real(delta)).sum())
    t = nadx / nd
    amplification = ndx / nd
    sqrt_bound = math.sqrt(lam / (4 * margin))
    network = math.sqrt(max(m_eff, 0.0) / margin) if m_eff > 0 else float("nan")
    gap_cs, gap = nadx * nd - nadx**2, inner - nadx**2
    alignment = math.sqrt(gap_cs / gap) if gap > 0 and gap_cs > 0 else float("nan")
    balance = math.sqrt(0.25 / (t * (1 - t))) if 0 < t < 1 else float("nan")
    closure = network * alignment * balance * amplification / sqrt_bound
    return {"amplification": amplification, "sqrt_bound": sqrt_bound, "margin": float(margin), "m_eff": m_eff, "t": t,
            "cos": inner / max(nadx * nd, 1e-30), "network": network, "alignment": alignment, "balance": balance,
            "closure": closure}


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
    random_max``), ``certified_bound`` (MOL-strict only, else ``None``: the bound of what the model computes,
    :func:`deepinv_mol.guarantees.model_robustness_bound`, i.e. the scale-equivariant composite's bound at each image
    for a model with ``scale_equivariant``, largest over the images), ``fixed_point_bound`` (the bound of the fixed-point
    map alone), ``within_certificate``
    (MOL-strict: ``worst_case <= certified_bound``), ``slack`` (MOL-strict: ``fixed_point_bound / worst_case``
    and its split by :func:`certificate_slack` at the worst perturbation of the worst image, else ``None``),
    ``network_lipschitz`` (local Lipschitz estimate of the model's network at its first reconstruction, a lower bound of its Lipschitz constant; ``None`` without one), ``ratio_to_modl``
    (``worst_case`` over MoDL's at the same task and budget, when MoDL is measured; the paper's claim is
    MOL-strict <= 1/2), and the per-image
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
    from ..guarantees import certify, estimate_lipschitz, worst_case_perturbation

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
            bound = margin = None
            if name == "mol-strict":
                report = certify(model, problem.physics, x=problem.xs[0])
                bound, margin = report.robustness_bound, report.margin
            network, lipschitz = _network(model), None
            if network is not None:
                with torch.no_grad():
                    x_first = model(problem.ys[0], problem.physics)
                lipschitz = float(estimate_lipschitz(network, x_first, n_iter=30, warn=False).value)
            for b_index, rho in enumerate(budgets):
                worst, rand, history, deltas_found, model_bounds = [], [], [], [], []
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
                    if bound is not None and result.bound is not None:
                        # the bound of what the model computes (the scale-equivariant composite when on)
                        model_bounds.append(float(result.bound))
                    deltas_found.append(result.delta)
                    if i == 0:
                        history = list(result.history)
                    bar.update(1)
                random_all = [a for amps in rand for a in amps]
                model_bound = max(model_bounds) if model_bounds else bound
                slack = None
                if bound is not None and margin is not None:
                    k = max(range(len(worst)), key=worst.__getitem__)
                    slack = {"total": bound / max(max(worst), 1e-30),
                             **certificate_slack(model, problem.physics, problem.ys[k], deltas_found[k], margin)}
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
                    "certified_bound": model_bound,
                    "fixed_point_bound": bound,
                    "within_certificate": None if model_bound is None else bool(max(worst) <= model_bound),
                    "slack": slack,
                    "network_lipschitz": lipschitz,
                    "worst_case_per_image": worst,
                    "random_per_image": [max(a) for a in rand],
                    "ascent_history": history,
                })
    bar.close()
    for row in rows:
        ref = [r for r in rows if r["model"] == "modl" and r["task"] == row["task"] and r["budget"] == row["budget"]]
        row["ratio_to_modl"] = row["worst_case"] / ref[0]["worst_case"] if ref and ref[0]["worst_case"] > 0 else None
    return save_outputs(json_path, figure_path, "robustness", settings, rows, plot_robustness)


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
