r"""Evaluation: simulate measurements of a task, reconstruct with named models, score, tabulate, plot.

One library module for ``deepinv-mol demo``, ``deepinv-mol eval`` and the benchmarks (the command line in
:mod:`deepinv_mol.cli` only parses arguments and reports user errors):

* :func:`simulate_set`: the task's physics for the images' size and one seeded measurement per image;
* :func:`load_models`: every named reconstructor built once (learned weights read and checked once);
* :func:`evaluate_models`: reconstruct the images in batches with every model, PSNR/SSIM with deepinv's
  metrics, seconds per image and iteration counts read from each model's ``stats``;
* :func:`format_table` (with :func:`iterations_legend`), :func:`save_figure` (images and error maps on one
  colour scale), :func:`plot_rows` (benchmark ratios);
* :class:`UserInputError`: a bad input of the user (file, name, output path), reported by the command line
  on one line with exit status 2; any other exception is a bug.

:Examples:

    >>> import torch
    >>> from deepinv_mol.evaluation import evaluate_models, format_table, simulate_set
    >>> from deepinv_mol.tasks import get_task
    >>> task = get_task("mri-radial-4x")
    >>> images = torch.rand(2, 2, 32, 32) * 0.5
    >>> physics, xs, ys = simulate_set(task, images, seed=0)
    >>> results, recons, notes = evaluate_models(task, ["adjoint", "cg"], xs, ys, physics)
    >>> sorted(results["cg"]), len(recons["cg"])
    (['converged', 'inner_iterations', 'iterations', 'psnr', 'psnr_per_image', 'seconds', 'ssim', 'ssim_per_image'], 2)
    >>> results["cg"]["psnr"] > results["adjoint"]["psnr"]
    True
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

__all__ = [
    "UserInputError",
    "ITERATIONS_LEGEND",
    "load_image_file",
    "check_output_path",
    "simulate_set",
    "load_models",
    "iteration_counts",
    "iterations_of",
    "evaluate_models",
    "iterations_legend",
    "format_table",
    "save_figure",
    "plot_rows",
]


class UserInputError(ValueError):
    r"""A bad input of the user: an unknown name, an unreadable or misshapen file, an unwritable output path.

    The command line prints it on one line and exits with status 2; every other exception is a bug of the
    library (traceback, exit status 1). A subclass of :class:`ValueError`, so library callers may catch either.
    """


#: what the ``iterations`` (and ``inner``) columns count, per model name
ITERATIONS_LEGEND: dict[str, str] = {
    "mol-penalty": "fixed-point iterations of the equilibrium solve",
    "mol-strict": "fixed-point iterations of the equilibrium solve",
    "luser": "unrolled steps K; 'inner' = equilibrium iterations summed over the K steps",
    "modl": "unrolled layers (network + CG data step per layer)",
    "cg": "conjugate-gradient iterations",
    "adjoint": "- (direct: rescaled A^H y)",
    "fbp": "- (direct: filtered back-projection)",
}


# ------------------------------------------------------------------------------------------------- inputs


def load_image_file(path: str | Path) -> torch.Tensor:
    r"""Read a user's image stack: ``(N, H, W)`` magnitudes in [0, 1] or complex ``(N, 2, H, W)``.

    Delegates to :func:`deepinv_mol.data.load_image_stack` (the one reader of ``.npy`` stacks).

    :param str path: ``.npy`` file.
    :return: a float tensor.
    :raises UserInputError: missing, unreadable or wrongly shaped file (the message names it).
    """
    from . import data

    path = Path(path)
    if not path.exists():
        raise UserInputError(f"image file {path} does not exist")
    try:
        return data.load_image_stack(path)
    except (ValueError, TypeError, OSError) as err:
        raise UserInputError(str(err)) from err


def check_output_path(path: str | Path, what: str = "output") -> Path:
    r"""Check, before any work, that a file can be written at ``path`` (nothing is created).

    The path must not be a folder; its first existing ancestor must be a writable folder (missing folders
    in between are created when the file is written).

    :param str path: the file to write later.
    :param str what: what the file is, for the message (e.g. ``"--json"``).
    :return: the path.
    :raises UserInputError: the file cannot be written there; the message names the path and the reason.

    :Examples:

        >>> from deepinv_mol.evaluation import check_output_path
        >>> check_output_path("/proc/version/out.json", "--json")
        Traceback (most recent call last):
        ...
        deepinv_mol.evaluation.UserInputError: --json /proc/version/out.json cannot be written: /proc/version is a file, not a folder
    """
    path = Path(path)
    if path.is_dir():
        raise UserInputError(f"{what} {path} cannot be written: it is a folder")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserInputError(f"{what} {path} cannot be written: permission denied")
        return path
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserInputError(f"{what} {path} cannot be written: folder {parent} is not writable")
    return path


# ------------------------------------------------------------------------------------------------- simulation


def simulate_set(task, images: torch.Tensor, seed: int, device: str | torch.device = "cpu"):
    r"""Build the task's physics for the images' size and simulate measurements, image :math:`i` seeded by ``(seed, i)``.

    :param deepinv_mol.tasks.Task task: a task (:func:`deepinv_mol.tasks.get_task`).
    :param torch.Tensor images: ``(N, C, ...)`` in the task's layout.
    :param int seed: seed.
    :param str, torch.device device: device of the physics and data.
    :return: ``(physics, xs, ys)``: the physics and lists of ``(1, ...)`` ground truths and measurements.
    """
    from .training import mix_seed

    physics = task.build_physics(tuple(images.shape[1:]), device, None)  # the task's default geometry
    xs, ys = [], []
    for i in range(images.shape[0]):
        gen = torch.Generator(device).manual_seed(mix_seed(seed, i))
        x = images[i : i + 1].to(device)
        out = task.simulate(x, physics, gen)
        x, y = out if isinstance(out, tuple) else (x, out)
        xs.append(x)
        ys.append(y)
    return physics, xs, ys


# ------------------------------------------------------------------------------------------------- models


def load_models(task, names: Sequence[str], device: str | torch.device = "cpu", on_missing: str = "raise"):
    r"""Build every named reconstructor once: learned weights are read and their checksum verified once.

    :param deepinv_mol.tasks.Task task: the task (selects the weights).
    :param names: model names (:data:`deepinv_mol.pretrained.LEARNED_MODELS` and ``CLASSICAL_MODELS``).
    :param str, torch.device device: where to put the models.
    :param str on_missing: ``"raise"`` (a :class:`UserInputError` naming the model) or ``"skip"`` (noted)
        for learned models whose weights are missing or do not load.
    :return: ``(models, notes)``: ``{name: model}`` in the order of ``names`` and messages about skipped models.
    """
    from .pretrained import LEARNED_MODELS, MissingWeightsError, get_reconstructor

    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    models, notes = {}, []
    for name in names:
        try:
            models[name] = get_reconstructor(name, task.name, device=device)
        except MissingWeightsError as err:
            if on_missing == "raise":
                raise UserInputError(str(err)) from err
            notes.append(f"{name}: skipped, {err}")
        except (RuntimeError, ValueError, OSError) as err:
            # weights that no longer fit the architecture, fail their checksum or are not a state dict
            if name not in LEARNED_MODELS:
                raise
            message = f"the weights of {name} for {task.name} do not load ({_one_line(err)[:300]})"
            if on_missing == "raise":
                raise UserInputError(message) from err
            notes.append(f"{name}: skipped, {message}")
    return models, notes


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return float(value.float().mean())
    if isinstance(value, (list, tuple)):
        return float(sum(value)) if value else None
    return float(value)


def iteration_counts(model: torch.nn.Module) -> tuple[float | None, float | None]:
    r"""What the last call of a reconstructor iterated, read from its ``stats`` (see :data:`ITERATIONS_LEGEND`).

    ``stats`` is read with ``.get``: a missing key gives ``None``, never an error. A model whose stats have
    ``steps`` (LUSER) reports ``(steps, iterations)``: its unrolled steps and its inner iterations summed over
    the steps; any other reports ``(stats["iterations"], None)``. A deepinv unfolded model without stats
    reports its depth ``max_iter``.

    :param torch.nn.Module model: a reconstructor after a call.
    :return: ``(iterations, inner_iterations)``, each a number or ``None``.
    """
    stats = getattr(model, "stats", None)
    stats = stats if isinstance(stats, Mapping) else {}
    if stats.get("steps") is not None:
        return _number(stats.get("steps")), _number(stats.get("iterations"))
    if stats.get("iterations") is not None:
        return _number(stats.get("iterations")), None
    if getattr(model, "unfold", False) and hasattr(model, "max_iter"):
        return float(model.max_iter), None
    return None, None


def iterations_of(model: torch.nn.Module) -> float | None:
    r"""The ``iterations`` column of the last call: the first value of :func:`iteration_counts`.

    :param torch.nn.Module model: a reconstructor after a call.
    """
    return iteration_counts(model)[0]


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def evaluate_models(
    task,
    models: Sequence[str] | Mapping[str, torch.nn.Module],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    physics,
    device: str | torch.device = "cpu",
    on_missing: str = "raise",
    batch_size: int | str | None = "auto",
):
    r"""Reconstruct every image with every model; PSNR/SSIM with deepinv's metrics (magnitude if complex).

    Images are reconstructed ``batch_size`` at a time with one physics: what a model derives from the physics
    (e.g. the CG baseline's :math:`\|A\|^2`) is computed once. Iterative models stop when the whole batch has
    converged, so their iteration count is per batch (the mean over batches is reported). ``"auto"`` batches 4
    images on a GPU and 1 on the CPU: there the time goes to the projectors, which work image by image, and a
    batch costs the iterations of its slowest image (measured on ``ct-sparse-view``, 3 test slices, one
    thread, CPU seconds per image, batch of 3 against 1: MOL-penalty 0.85x, CG 0.85x, MoDL 0.97x, MOL-strict
    1.14x, LUSER 1.27x).

    :param deepinv_mol.tasks.Task task: the task.
    :param models: model names (built by :func:`load_models`) or ``{name: model}`` already built.
    :param xs: ground truths ``(1, C, ...)``.
    :param ys: measurements, ``ys[i]`` of ``xs[i]``.
    :param physics: the task physics.
    :param str, torch.device device: device (names only).
    :param str on_missing: ``"raise"`` or ``"skip"`` for learned models without weights (names only).
    :param int batch_size: images per call (``None``: all at once; ``"auto"``: 4 on CUDA, 1 on the CPU).
    :return: ``(results, recons, notes)``: ``results[name] = {"psnr", "ssim", "psnr_per_image",
        "ssim_per_image", "seconds" (per image), "iterations", "inner_iterations", "converged"}``
        (``converged``: fraction of batches whose ``stats`` say converged, ``None`` if not reported),
        ``recons[name]`` the reconstructions ``(1, C, ...)``, ``notes`` messages about skipped models.
    """
    from deepinv.loss.metric import PSNR, SSIM

    if len(xs) != len(ys) or not xs:
        raise ValueError(f"xs and ys must be non-empty lists of one length, got {len(xs)} and {len(ys)}")
    if batch_size == "auto":
        batch_size = 4 if torch.device(ys[0].device).type == "cuda" else 1
    if batch_size is not None and (isinstance(batch_size, (bool, str)) or batch_size < 1):
        raise ValueError(f"batch_size must be >= 1, None or 'auto', got {batch_size!r}")
    if isinstance(models, Mapping):
        notes = []
    else:
        models, notes = load_models(task, list(models), device=device, on_missing=on_missing)
    complex_ = xs[0].shape[1] == 2
    psnr = PSNR(max_pixel=1.0, complex_abs=complex_)
    ssim = SSIM(max_pixel=1.0, complex_abs=complex_)
    step = len(ys) if batch_size is None else batch_size
    batches = [(torch.cat(list(xs[i : i + step])), torch.cat(list(ys[i : i + step]))) for i in range(0, len(ys), step)]
    results, recons = {}, {}
    for name, model in models.items():
        per_psnr, per_ssim, outs, iters, inner, converged = [], [], [], [], [], []
        seconds = 0.0
        for x, y in batches:
            tic = time.perf_counter()
            with torch.no_grad():
                x_hat = model(y, physics)
            seconds += time.perf_counter() - tic
            it, inn = iteration_counts(model)
            iters.append(it)
            inner.append(inn)
            stats = getattr(model, "stats", None)
            if isinstance(stats, Mapping) and stats.get("converged") is not None:
                converged.append(float(bool(stats.get("converged"))))
            per_psnr += [float(v) for v in psnr(x_hat, x).reshape(-1)]
            per_ssim += [float(v) for v in ssim(x_hat, x).reshape(-1)]
            outs += list(x_hat.detach().cpu().split(1))
        results[name] = {
            "psnr": sum(per_psnr) / len(per_psnr),
            "ssim": sum(per_ssim) / len(per_ssim),
            "psnr_per_image": per_psnr,
            "ssim_per_image": per_ssim,
            "seconds": seconds / len(per_psnr),
            "iterations": _mean(iters),
            "inner_iterations": _mean(inner),
            "converged": _mean(converged),
        }
        recons[name] = outs
    return results, recons, notes


# ------------------------------------------------------------------------------------------------- reports


def iterations_legend(names: Sequence[str]) -> str:
    r"""The legend of the table's ``iterations``/``inner`` columns for the listed models.

    :param names: model names.

    :Examples:

        >>> from deepinv_mol.evaluation import iterations_legend
        >>> print(iterations_legend(["cg", "luser"]))
        iterations: cg = conjugate-gradient iterations; luser = unrolled steps K; 'inner' = equilibrium iterations summed over the K steps
    """
    parts = [f"{n} = {ITERATIONS_LEGEND[n]}" for n in names if n in ITERATIONS_LEGEND]
    return "iterations: " + "; ".join(parts)


def format_table(results: Mapping[str, dict], header: str | None = None) -> str:
    r"""The results as a fixed-width table, with a legend of the iteration columns.

    Columns: model, PSNR (dB), SSIM, seconds per image, iterations, inner iterations (LUSER), fraction of
    converged solves.

    :param dict results: as returned by :func:`evaluate_models`.
    :param str header: a first line (e.g. task and data source).
    """

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    lines = [header] if header else []
    lines.append(
        f"{'model':<12} {'PSNR (dB)':>9} {'SSIM':>7} {'s/image':>8} {'iterations':>10} {'inner':>7} {'converged':>9}"
    )
    for name, r in results.items():
        lines.append(
            f"{name:<12} {r['psnr']:>9.2f} {r['ssim']:>7.4f} {r['seconds']:>8.3f} "
            f"{num(r.get('iterations'), '.1f'):>10} {num(r.get('inner_iterations'), '.1f'):>7} "
            f"{num(r.get('converged'), '.0%'):>9}"
        )
    lines.append(iterations_legend(list(results)))
    return "\n".join(lines)


def _magnitude(t: torch.Tensor):
    t = t[0].detach().cpu().float()
    if t.dim() == 4:  # volumes and sequences: the middle slice / frame
        t = t[:, t.shape[1] // 2]
    return (t.pow(2).sum(0).sqrt() if t.shape[0] == 2 else t[0]).numpy()


def save_figure(
    xs: Sequence[torch.Tensor],
    recons: Mapping[str, Sequence[torch.Tensor]],
    path: str | Path,
    n_show: int = 3,
    title: str | None = None,
) -> float:
    r"""Figure: per image, a row with the ground truth and each reconstruction (titled with its PSNR/SSIM) and a
    row of absolute error maps, all error maps on one shared colour scale with one colour bar.

    The scale runs from 0 to the median over the models of their 99.5th error percentile: one poor baseline
    does not wash out every other map, and larger errors saturate (the colour bar's arrow shows it). Volumes and
    sequences show their middle slice / frame.

    :param xs: ground truths ``(1, C, ...)``.
    :param recons: ``{name: [x_hat, ...]}``.
    :param str path: PNG file.
    :param int n_show: images shown.
    :param str title: figure title.
    :return: the top of the error maps' shared colour scale.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from deepinv.loss.metric import PSNR, SSIM

    names = list(recons)
    n = min(n_show, len(xs))
    complex_ = xs[0].shape[1] == 2
    psnr = PSNR(max_pixel=1.0, complex_abs=complex_)
    ssim = SSIM(max_pixel=1.0, complex_abs=complex_)
    errors = {(i, name): np.abs(_magnitude(recons[name][i]) - _magnitude(xs[i])) for i in range(n) for name in names}
    # one scale for all maps: the median over models of their 99.5th error percentile, so one poor baseline
    # (e.g. the adjoint) does not darken every other map; larger errors saturate (the bar's arrow)
    per_model = [np.percentile(np.concatenate([errors[(i, m)].ravel() for i in range(n)]), 99.5) for m in names]
    vmax = float(np.median(per_model)) if per_model else 1.0
    vmax = vmax if vmax > 0 else 1.0
    cols = 1 + len(names)
    fig, axes = plt.subplots(2 * n, cols, figsize=(2.3 * cols + 0.8, 4.6 * n + 0.4), squeeze=False, layout="constrained")
    error_image = None
    for i in range(n):
        axes[2 * i, 0].imshow(_magnitude(xs[i]), cmap="gray", vmin=0, vmax=1)
        axes[2 * i, 0].set_title("ground truth", fontsize=8)
        axes[2 * i + 1, 0].axis("off")
        for j, name in enumerate(names, start=1):
            x_hat = recons[name][i]
            p = float(psnr(x_hat, xs[i].to(x_hat.device)).mean())
            s = float(ssim(x_hat, xs[i].to(x_hat.device)).mean())
            axes[2 * i, j].imshow(_magnitude(x_hat), cmap="gray", vmin=0, vmax=1)
            axes[2 * i, j].set_title(f"{name}\n{p:.2f} dB, SSIM {s:.3f}", fontsize=8)
            error_image = axes[2 * i + 1, j].imshow(errors[(i, name)], cmap="magma", vmin=0, vmax=vmax)
            axes[2 * i + 1, j].set_title(f"|error| {name}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if error_image is not None:
        bar = fig.colorbar(error_image, ax=[axes[2 * i + 1, j] for i in range(n) for j in range(1, cols)], shrink=0.8, extend="max")
        bar.set_label("|error| (one scale for all maps)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return vmax


def plot_rows(rows: Sequence[dict], path: str | Path, title: str = "") -> None:
    r"""Bar chart of a benchmark's ratio columns (every numeric column whose name contains ``ratio``; all
    numeric columns if none), one group of bars per row, labelled by the row's text columns.

    :param list rows: list of dicts.
    :param str path: PNG file.
    :param str title: figure title.
    :raises UserInputError: no numeric column to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [k for k in keys if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]
    cols = [k for k in numeric if "ratio" in k] or numeric
    if not cols:
        raise UserInputError("nothing numeric to plot in these rows")
    text = [k for k in keys if k not in numeric]
    labels = [" ".join(str(r.get(k, "")) for k in text[:3]) or str(i) for i, r in enumerate(rows)]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows) * len(cols)), 3.5))
    width = 0.8 / len(cols)
    for j, k in enumerate(cols):
        ax.bar([i + j * width for i in range(len(rows))], [r[k] for r in rows], width, label=k)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, rotation=20, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())
