r"""The ``deepinv-mol`` command: demo, train, eval, certify, bench.

::

    deepinv-mol demo [--out DIR]
    deepinv-mol train --task T --model M [--steps N --batch-size B --crop C --lr LR --out DIR --resume --seed S]
    deepinv-mol eval --task T (--images F.npy | --split test) --models mol-penalty,mol-strict,modl,luser,cg,adjoint
                     [--json OUT.json] [--seed S] [--figure OUT.png]
    deepinv-mol certify --model M [--task T]
    deepinv-mol bench memory|quality|robustness|convergence|nufft|ct|luser|luser-quality [--json OUT] [--plot OUT.png]

Bad arguments (unknown task or model, missing or malformed image file, wrong shapes) end with a one-line
``deepinv-mol: error: ...`` on stderr and exit status 2, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

PROG = "deepinv-mol"
DEMO_TASK = "mri-radial-4x"


class CLIError(Exception):
    r"""A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its error: keep it to one line
    def error(self, message):
        raise CLIError(message)


# ------------------------------------------------------------------------------------------------- evaluation


def load_image_file(path: str | Path):
    r"""Read a user's image stack: ``(N, H, W)`` magnitudes in [0, 1] or complex ``(N, 2, H, W)``.

    Delegates to :func:`deepinv_mol.data.load_image_stack` (the one reader of ``.npy`` stacks).

    :param str path: ``.npy`` file.
    :return: a float tensor ``(N, C, H, W)``.
    :raises ValueError: missing, unreadable or wrongly shaped file.
    """
    from . import data

    path = Path(path)
    if not path.exists():
        raise ValueError(f"image file {path} does not exist")
    return data.load_image_stack(path)


def simulate_set(task, images, seed: int, device="cpu"):
    r"""Build the task's physics for the images' size and simulate measurements, image :math:`i` seeded by ``(seed, i)``.

    :param task: a task object (:func:`deepinv_mol.tasks.get_task`).
    :param torch.Tensor images: ``(N, C, H, W)``.
    :param int seed: seed.
    :return: ``(physics, xs, ys)``, lists of ``(1, ...)`` tensors.
    """
    import torch

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


def iterations_of(model):
    r"""Iterations of the last reconstruction: ``model.stats["iterations"]``, the unrolled depth of a deepinv
    unfolded model (``max_iter``), or ``None``.

    :param torch.nn.Module model: a reconstructor after a call.
    """
    stats = getattr(model, "stats", None)
    if isinstance(stats, dict) and "iterations" in stats:
        it = stats["iterations"]
        if it is None:
            return None
        return float(it.float().mean()) if hasattr(it, "float") else float(it)
    if getattr(model, "unfold", False) and hasattr(model, "max_iter"):
        return float(model.max_iter)
    return None


def evaluate_models(task, names, xs, ys, physics, device="cpu", on_missing="raise"):
    r"""Reconstruct every image with every model; PSNR/SSIM with deepinv's metrics (magnitude if complex).

    :param task: task object.
    :param list names: model names (learned or classical).
    :param list xs: ground truths ``(1, C, H, W)``.
    :param list ys: measurements.
    :param physics: the task physics.
    :param str on_missing: ``"raise"`` or ``"skip"`` for learned models without weights.
    :return: ``(results, recons, notes)``: ``results[name] = {"psnr", "ssim", "psnr_per_image", "seconds",
        "iterations"}``, ``recons[name]`` the reconstructions, ``notes`` messages about skipped models.
    """
    import torch
    from deepinv.loss.metric import PSNR, SSIM

    from .pretrained import MissingWeightsError, get_reconstructor

    complex_ = xs[0].shape[1] == 2
    psnr = PSNR(max_pixel=1.0, complex_abs=complex_)
    ssim = SSIM(max_pixel=1.0, complex_abs=complex_)
    models, notes = {}, []
    for name in names:
        try:
            models[name] = get_reconstructor(name, task.name, device=device)
        except MissingWeightsError as err:
            if on_missing == "raise":
                raise
            notes.append(f"{name}: skipped, {err}")
        except (RuntimeError, ValueError) as err:
            # weights that no longer fit the architecture or fail their checksum: the demo reports and goes on
            if on_missing == "raise":
                raise
            notes.append(f"{name}: skipped, its weights do not load ({_one_line(err)[:200]})")
    results, recons = {}, {}
    for name, model in models.items():
        per_psnr, per_ssim, secs, iters, outs = [], [], [], [], []
        for x, y in zip(xs, ys):
            tic = time.perf_counter()
            with torch.no_grad():
                x_hat = model(y, physics)
            secs.append(time.perf_counter() - tic)
            iters.append(iterations_of(model))
            per_psnr.append(float(psnr(x_hat, x).mean()))
            per_ssim.append(float(ssim(x_hat, x).mean()))
            outs.append(x_hat.detach().cpu())
        its = [i for i in iters if i is not None]
        results[name] = {
            "psnr": sum(per_psnr) / len(per_psnr),
            "ssim": sum(per_ssim) / len(per_ssim),
            "psnr_per_image": per_psnr,
            "seconds": sum(secs) / len(secs),
            "iterations": sum(its) / len(its) if its else None,
        }
        recons[name] = outs
    return results, recons, notes


def format_table(results: dict) -> str:
    r"""The results as a fixed-width table: model, PSNR (dB), SSIM, seconds, iterations.

    :param dict results: as returned by :func:`evaluate_models`.
    """
    lines = [f"{'model':<12} {'PSNR (dB)':>9} {'SSIM':>7} {'seconds':>8} {'iterations':>10}"]
    for name, r in results.items():
        it = "-" if r["iterations"] is None else f"{r['iterations']:.1f}"
        lines.append(f"{name:<12} {r['psnr']:>9.2f} {r['ssim']:>7.4f} {r['seconds']:>8.3f} {it:>10}")
    return "\n".join(lines)


def save_figure(xs, recons: dict, path: str | Path, n_show: int = 3) -> None:
    r"""Figure: per image, a row with the ground truth and each reconstruction, and a row of error maps.

    :param list xs: ground truths ``(1, C, H, W)``.
    :param dict recons: ``{name: [x_hat, ...]}``.
    :param str path: PNG file.
    :param int n_show: images shown.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mag(t):
        t = t[0].detach().cpu()
        return (t.pow(2).sum(0).sqrt() if t.shape[0] == 2 else t[0]).numpy()

    names = list(recons)
    n = min(n_show, len(xs))
    cols = 1 + len(names)
    fig, axes = plt.subplots(2 * n, cols, figsize=(2.2 * cols, 4.4 * n), squeeze=False)
    for i in range(n):
        gt = mag(xs[i])
        axes[2 * i, 0].imshow(gt, cmap="gray", vmin=0, vmax=1)
        axes[2 * i, 0].set_title("ground truth", fontsize=8)
        axes[2 * i + 1, 0].axis("off")
        for j, name in enumerate(names, start=1):
            img = mag(recons[name][i])
            title = name
            axes[2 * i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[2 * i, j].set_title(title, fontsize=8)
            axes[2 * i + 1, j].imshow(abs(img - gt), cmap="magma", vmin=0, vmax=0.2)
            axes[2 * i + 1, j].set_title(f"|error| {name}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _task(name):
    from .tasks import get_task, list_tasks

    names = list(list_tasks())
    if name not in names:
        raise CLIError(f"unknown task {name!r}: expected one of {', '.join(names)}")
    return get_task(name)


def _check_learned(name):
    from .pretrained import LEARNED_MODELS

    if name not in LEARNED_MODELS:
        raise CLIError(f"unknown model {name!r}: expected one of {', '.join(LEARNED_MODELS)}")


def _model_names(text):
    from .pretrained import CLASSICAL_MODELS, LEARNED_MODELS

    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CLIError("--models is empty")
    for n in names:
        if n not in LEARNED_MODELS + CLASSICAL_MODELS:
            raise CLIError(f"unknown model {n!r}: expected one of {', '.join(LEARNED_MODELS + CLASSICAL_MODELS)}")
    if len(set(names)) != len(names):
        raise CLIError(f"--models lists a model twice: {text}")
    return names


def _check_models_for_task(task, names):
    if "fbp" in names and not task.name.startswith("ct"):
        raise CLIError(f"'fbp' is a CT baseline; task {task.name!r} is not a CT task")


# ------------------------------------------------------------------------------------------------- commands


def cmd_demo(args) -> int:
    import torch

    from .pretrained import LEARNED_MODELS
    from .training import image_of

    task = _task(args.task)
    data = task.dataset("test", seed=args.seed)
    n = min(args.n_images, len(data))
    if n < 1:
        raise CLIError(f"--n-images must be >= 1, got {args.n_images}")
    images = torch.stack([image_of(data[i]) for i in range(n)])
    physics, xs, ys = simulate_set(task, images, args.seed)
    baselines = ["adjoint", "cg"] + (["fbp"] if task.name.startswith("ct") else [])
    results, recons, notes = evaluate_models(task, baselines + list(LEARNED_MODELS), xs, ys, physics, on_missing="skip")
    print(f"{PROG} demo: task {task.name}, {n} embedded test images of size {tuple(images.shape[-2:])}")
    print(format_table(results))
    for note in notes:
        print(f"note: {note}")
    if not any(name in results for name in LEARNED_MODELS):
        print("note: no shipped weights found: only the classical baselines ran (see `deepinv-mol train`)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(xs, recons, out / "demo.png")
    (out / "demo.json").write_text(json.dumps(_payload(task.name, n, results), indent=1))
    print(f"figure: {out / 'demo.png'}  table: {out / 'demo.json'}")
    return 0


def _payload(task_name, n, results):
    return {"task": task_name, "n_images": n, "models": results}


def cmd_eval(args) -> int:
    import torch

    from .pretrained import LEARNED_MODELS, load_pretrained
    from .training import image_of

    task = _task(args.task)
    names = _model_names(args.models)
    _check_models_for_task(task, names)
    if args.images is not None:
        data = task.dataset_from(load_image_file(args.images), seed=args.seed)
    else:
        data = task.dataset(args.split, seed=args.seed)
    count = len(data) if args.n_images is None else min(args.n_images, len(data))
    images = torch.stack([image_of(data[i]) for i in range(count)])
    for name in names:  # fail before the work if a learned model has no weights
        if name in LEARNED_MODELS:
            load_pretrained(name, task.name)
    physics, xs, ys = simulate_set(task, images, args.seed)
    results, recons, _ = evaluate_models(task, names, xs, ys, physics)
    print(format_table(results))
    payload = _payload(task.name, len(xs), results)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.figure:
        save_figure(xs, recons, args.figure)
    return 0


def cmd_train(args) -> int:
    from .pretrained import default_config
    from .training import export_weights, train

    task = _task(args.task)
    _check_learned(args.model)
    config = default_config(args.model, task.channels, task.data_weight)
    for key, value in (("width", args.width), ("depth", args.depth), ("activation", args.activation)):
        if value is not None:
            if "cnn" not in config:
                raise CLIError(f"--{key} applies to models built on MonotoneCNN, not {args.model}")
            config["cnn"][key] = value
    if args.iters is not None:
        section = next(k for k in ("mol", "modl", "luser") if k in config)
        config[section]["max_iter" if section == "mol" else "num_iter"] = args.iters
    crop = task.train_crop if args.crop is None else (None if args.crop == 0 else args.crop)
    out = args.out or f"runs/{task.name}__{args.model}"
    history = train(
        task.name,
        args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=crop,
        lr=args.lr,
        out=out,
        resume=args.resume,
        seed=args.seed,
        eval_every=args.eval_every,
        val_images=args.val_images,
        optimizer=args.optimizer,
        stop_after=args.stop_after,
        config=config,
        progress=not args.quiet,
    )
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    curve = history.get("val_psnr", [])
    last = f", last validation PSNR {curve[-1][1]:.2f} dB" if curve else ""
    print(f"trained {history.get('step', 0)} steps in {history.get('train_seconds', 0):.1f} s{last}; outputs in {out}")
    target = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
    if args.export and history.get("step", 0) >= target:  # a run stopped by --stop-after exports what it reached
        command = " ".join([PROG] + list(args.argv))
        entry = export_weights(out, args.export, command=command)
        print(f"exported {entry['file']} ({entry['size_bytes']} bytes) to {args.export}")
    return 0


def cmd_certify(args) -> int:
    from .guarantees import certify
    from .pretrained import load_pretrained
    from .training import image_of

    task = _task(args.task)
    _check_learned(args.model)
    model = load_pretrained(args.model, task.name)
    if args.model not in ("mol-penalty", "mol-strict"):
        print(
            f"{args.model} on {task.name}: no guarantee to certify. Its network is applied a fixed number of times "
            "(unrolled), not solved to a fixed point of a monotone operator: neither uniqueness, convergence nor a "
            "robustness bound follows from its construction (see docs/theory.rst)."
        )
        return 0
    x = image_of(task.dataset("test", seed=args.seed)[0])[None]
    physics = task.build_physics(tuple(x.shape[1:]), "cpu", None)
    print(f"{args.model} on {task.name} (images {tuple(x.shape[1:])}):")
    print(certify(model, physics, x=tuple(x.shape)))
    return 0


#: benchmark name -> (module of deepinv_mol.bench, function); names without a module yet are reported as such
BENCHMARKS = {
    "memory": ("memory", "bench_mol_vs_modl"),
    "nufft": ("nufft", "bench_normal_operator"),
    "ct": ("ct", "bench_ct_vs_tomography"),
    "luser": ("luser", "bench_luser_memory"),
    "luser-quality": ("luser", "bench_luser_quality"),
    "quality": ("quality", "bench_quality"),
    "robustness": ("robustness", "bench_robustness"),
    "convergence": ("convergence", "bench_convergence"),
}


def _bench_function(name):
    r"""The benchmark function registered for ``name``, or ``None`` when it does not exist (yet)."""
    module_name, function = BENCHMARKS[name]
    try:
        module = importlib.import_module(f".bench.{module_name}", __package__)
    except ModuleNotFoundError as err:
        if err.name and err.name.endswith(f"bench.{module_name}"):
            return None
        raise
    return getattr(module, function, None)


def cmd_bench(args) -> int:
    fn = _bench_function(args.name)
    if fn is None:
        module_name, function = BENCHMARKS[args.name]
        raise CLIError(
            f"benchmark {args.name!r} is not available in this version "
            f"(no deepinv_mol.bench.{module_name}.{function}); available: {', '.join(available_benchmarks())}"
        )
    rows = fn()
    _print_rows(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if args.plot:
        plot_rows(rows, args.plot, title=f"bench {args.name}")
    return 0


def available_benchmarks() -> list[str]:
    r"""Names of :data:`BENCHMARKS` whose function exists in this installation."""
    return [name for name in BENCHMARKS if _bench_function(name) is not None]


def plot_rows(rows: list, path: str | Path, title: str = "") -> None:
    r"""Bar chart of a benchmark's ratio columns (every numeric column whose name contains ``ratio``; all
    numeric columns if none), one group of bars per row, labelled by the row's text columns.

    :param list rows: list of dicts.
    :param str path: PNG file.
    :param str title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(dict.fromkeys(k for r in rows for k in r))
    numeric = [k for k in keys if all(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)]
    cols = [k for k in numeric if "ratio" in k] or numeric
    if not cols:
        raise CLIError("nothing numeric to plot in these rows")
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


def _print_rows(rows):
    if not rows:
        print("(no rows)")
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}" if math.isfinite(v) else str(v)
        return str(v)

    table = [keys] + [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(keys))]
    for row in table:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


# ------------------------------------------------------------------------------------------------- parser


def _number_type(kind, ok, what):
    # one argparse type per (parse, check) pair: the error names what was expected
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


_positive = _number_type(int, lambda v: v >= 1, "a positive integer")
_nonneg = _number_type(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number_type(float, lambda v: v > 0, "a positive number")


def build_parser() -> argparse.ArgumentParser:
    r"""The argument parser of ``deepinv-mol`` (sub-commands demo, train, eval, certify, bench)."""
    p = _Parser(prog=PROG, description="MOL / LUSER reconstructions for deepinv: demo, train, eval, certify, bench.")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="reconstruct embedded test images with the shipped models; table + figure")
    d.add_argument("--out", default="deepinv-mol-demo", help="folder for demo.png and demo.json")
    d.add_argument("--task", default=DEMO_TASK)
    d.add_argument("--n-images", type=_positive, default=2, help="test images to reconstruct (default 2: keeps the demo near 2 minutes on 2 cores)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model on a task (deepinv.Trainer; resumable; torchrun for DDP)")
    t.add_argument("--task", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--steps", type=_positive, default=1000)
    t.add_argument("--batch-size", type=_positive, default=4)
    t.add_argument("--crop", type=_nonneg, default=None, help="square training crop side (default: the task's; 0: whole images)")
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--out", default=None, help="output folder (default runs/<task>__<model>)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=_positive, default=50, help="steps between validation + checkpoint")
    t.add_argument("--val-images", type=_nonneg, default=4)
    t.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    t.add_argument("--stop-after", type=_positive, default=None, help="stop after this many steps (resumable)")
    t.add_argument("--width", type=_positive, default=None, help="CNN width (default 32)")
    t.add_argument("--depth", type=_positive, default=None, help="CNN depth (default 5)")
    t.add_argument("--activation", choices=("relu", "maxmin"), default=None,
                   help="MonotoneCNN activation (default relu; maxmin keeps the certificate, less pessimistic bound)")
    t.add_argument("--iters", type=_positive, default=None, help="MOL max_iter / MoDL, LUSER num_iter")
    t.add_argument("--export", default=None, help="when finished (or stopped by --stop-after), copy best weights + manifest entry here")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate models on images: table + JSON")
    e.add_argument("--task", required=True)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help=".npy stack (N, H, W) in [0, 1] or complex (N, 2, H, W)")
    src.add_argument("--split", choices=("train", "val", "test"), help="embedded data split instead of --images")
    e.add_argument("--n-images", type=_positive, default=None, help="evaluate the first N images only")
    e.add_argument("--models", default="mol-penalty,mol-strict,modl,luser,cg,adjoint")
    e.add_argument("--json", default=None)
    e.add_argument("--figure", default=None, help="PNG with images and error maps")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("certify", help="guarantee report of a shipped model")
    c.add_argument("--model", required=True)
    c.add_argument("--task", default=DEMO_TASK)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_certify)

    b = sub.add_parser("bench", help="benchmarks (rows of measurements, ratios)")
    b.add_argument("name", choices=list(BENCHMARKS))
    b.add_argument("--json", default=None)
    b.add_argument("--plot", default=None)
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    r"""Entry point of the ``deepinv-mol`` console script.

    :param list argv: arguments (default ``sys.argv[1:]``).
    :return: exit status (0 success, 2 user error, 1 unexpected failure).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # recorded in the weights manifest by `train --export`
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, ImportError, KeyError) as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 -- a user must never see a traceback without asking for it
        if debug:
            raise
        print(f"{PROG}: error: {type(err).__name__}: {_one_line(err)} (rerun with --debug for details)", file=sys.stderr)
        return 1


def _one_line(err):
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
