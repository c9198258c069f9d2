r"""The ``deepinv-mol`` command: demo, train, eval, certify, bench.

::

    deepinv-mol demo [--out DIR] [--heldout NAME [--orientation O] [--size native|task|N]]
    deepinv-mol train --task T --model M [--steps N --batch-size B --crop C --lr LR --out DIR --resume --seed S]
    deepinv-mol eval --task T (--images F.npy | --split test | --heldout NAME [--orientation O] [--size native|task|N])
                     --models mol-penalty,mol-strict,modl,luser,cg,adjoint [--intensity-scale S]
                     [--json OUT.json] [--seed S] [--figure OUT.png] [--batch-size B]
    deepinv-mol certify --model M [--task T]
    deepinv-mol bench memory|memory-k|memory-size|robustness|convergence|nufft|ct|luser|luser-quality|speed|training-step [--json OUT] [--plot OUT.png]
    deepinv-mol bench all --out DIR [--preset quick|default|full] [--only A,B] [--skip A,B]
                          [--page docs/benchmarks.rst] [--readme README.md]

This module only parses arguments; the work is done by the library (:mod:`deepinv_mol.evaluation`,
:mod:`deepinv_mol.training`, :mod:`deepinv_mol.guarantees`, :mod:`deepinv_mol.bench`). Bad input of the user
(unknown task or model, missing or malformed image file, wrong shapes, unwritable output) ends with a
one-line ``deepinv-mol: error: ...`` on stderr and exit status 2 (:class:`~deepinv_mol.evaluation.UserInputError`;
``--debug`` shows the traceback). Any other exception is a bug of the library: traceback and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import sys
import traceback
from pathlib import Path

from .evaluation import (
    UserInputError,
    check_output_path,
    evaluate_models,
    format_table,
    load_image_file,
    load_models,
    plot_rows,
    save_figure,
    simulate_set,
)

__all__ = ["PROG", "DEMO_TASK", "BENCHMARKS", "CLIError", "build_parser", "main", "available_benchmarks"]

PROG = "deepinv-mol"
DEMO_TASK = "mri-radial-4x"
# optional dependencies whose absence is the user's environment, not a bug
_OPTIONAL_MODULES = ("astra", "torchkbnufft", "matplotlib")

#: a user-facing error (bad name, file, path or option): printed as one line, exit status 2
CLIError = UserInputError


class _Parser(argparse.ArgumentParser):
    # argparse prints the whole usage block before its error: keep it to one line
    def error(self, message):
        raise UserInputError(message)


@contextlib.contextmanager
def _user_input(what: str = ""):
    r"""Inside this block, a ``ValueError``/``TypeError`` is about the user's input (a file, a setting): report it
    as a :class:`UserInputError` (exit status 2)."""
    try:
        yield
    except UserInputError:
        raise
    except (ValueError, TypeError) as err:
        raise UserInputError(f"{what}{_one_line(err)}") from err


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
    if "fbp" in names and task.modality != "ct":
        raise CLIError(f"'fbp' is a CT baseline; task {task.name!r} is a {task.modality.upper()} task")


def _check_device(task):
    import torch

    if task.requires_gpu and not torch.cuda.is_available():
        raise CLIError(f"task {task.name!r} needs a CUDA GPU and none is available")


def _source_of(task) -> str:
    source = task.data_source()
    return source + (" (embedded MRI slices used as attenuation images: head CT not installed)"
                     if task.modality == "ct" and source == "embedded" else "")


def _header(task, source, xs) -> str:
    return f"task {task.name}, data: {source}, {len(xs)} images of size {tuple(xs[0].shape[2:])}"


def _payload(task_name, n, results, source):
    return {"task": task_name, "n_images": n, "data_source": source, "models": results}


def _write_json(path, payload):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1))


# ------------------------------------------------------------------------------------------------- commands


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from .pretrained import LEARNED_MODELS
    from .data import image_of

    task = _task(args.task)
    _check_device(task)
    out = Path(args.out)
    check_output_path(out / "demo.json", "--out")
    check_output_path(out / "demo.png", "--out")
    _check_heldout_options(args)
    if args.heldout is not None:
        data, source = _heldout_data(task, args)
    else:
        data, source = task.dataset("test", seed=args.seed), _source_of(task)
    n = min(args.n_images, len(data))
    images = torch.stack([image_of(data[i]) for i in range(n)])
    baselines = ["adjoint", "cg"] + (["fbp"] if task.modality == "ct" else [])
    models, notes = load_models(task, baselines + list(LEARNED_MODELS), on_missing="skip")
    physics, xs, ys = simulate_set(task, images, args.seed)
    results, recons, _ = evaluate_models(task, models, xs, ys, physics, batch_size=args.batch_size or "auto")
    print(f"{PROG} demo: " + _header(task, source, xs))
    print(format_table(results))
    for note in notes:
        print(f"note: {note}")
    if not any(name in results for name in LEARNED_MODELS):
        print("note: no shipped weights found: only the classical baselines ran (see `deepinv-mol train`)")
    out.mkdir(parents=True, exist_ok=True)
    save_figure(xs, recons, out / "demo.png", title=_header(task, source, xs))
    _write_json(out / "demo.json", _payload(task.name, n, results, source))
    print(f"figure: {out / 'demo.png'}  table: {out / 'demo.json'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .data import image_of

    task = _task(args.task)
    names = _model_names(args.models)
    _check_models_for_task(task, names)
    _check_device(task)
    for path, what in ((args.json, "--json"), (args.figure, "--figure")):  # fail before the work
        if path:
            check_output_path(path, what)
    _check_heldout_options(args)
    if args.images is not None:
        images = load_image_file(args.images)
        with _user_input(f"--images {args.images}: "):
            data = task.dataset_from(images, seed=args.seed)
        source = f"file {args.images}"
    elif args.heldout is not None:
        data, source = _heldout_data(task, args)
    else:
        data = task.dataset(args.split, seed=args.seed)
        source = _source_of(task) + f", {args.split} split"
    count = len(data) if args.n_images is None else min(args.n_images, len(data))
    images = torch.stack([image_of(data[i]) for i in range(count)])
    models, _ = load_models(task, names)  # weights read and checked once, before the work
    with _user_input(f"--images {args.images}: " if args.images else ""):
        task.spatial_shape(tuple(images.shape[1:]))  # images the task's physics cannot take
    physics, xs, ys = simulate_set(task, images * args.intensity_scale, args.seed)
    if args.intensity_scale != 1:  # scored against the unscaled images: PSNR/SSIM of x_hat / s against x
        source += f", intensity x{args.intensity_scale:g}"
        xs = [x / args.intensity_scale for x in xs]
        models = {name: _IntensityScaled(model, args.intensity_scale) for name, model in models.items()}
    results, recons, _ = evaluate_models(task, models, xs, ys, physics, batch_size=args.batch_size or "auto")
    header = _header(task, source, xs)
    print(format_table(results, header=header))
    if args.json:
        _write_json(args.json, _payload(task.name, len(xs), results, source))
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        save_figure(xs, recons, args.figure, title=header)
    return 0


class _IntensityScaled:
    r"""A reconstructor whose output is divided by ``scale``: ``eval --intensity-scale s`` measures images
    multiplied by ``s`` and scores ``x_hat / s`` against the unscaled images (PSNR peak 1), so a reconstructor
    equivariant to the intensity scale scores the same for every ``s``. ``stats`` are the model's.

    :param model: the reconstructor ``model(y, physics)``.
    :param float scale: the intensity factor ``s > 0``.
    """

    def __init__(self, model, scale: float):
        self.model, self.scale = model, float(scale)

    @property
    def stats(self):
        return getattr(self.model, "stats", None)

    def __call__(self, y, physics):
        return self.model(y, physics) / self.scale


def _check_heldout_options(args):
    # --orientation and --size describe held-out images; --intensity-scale applies to every source
    if args.heldout is None:
        for option, value in (("--orientation", args.orientation), ("--size", args.size)):
            if value is not None:
                raise CLIError(f"{option} applies to --heldout images only")


def _heldout_data(task, args):
    r"""The dataset and source line of ``eval --heldout NAME [--orientation O] [--size native|task|N]``."""
    from .data import HELDOUT_SETS, heldout_images

    held = HELDOUT_SETS.get(args.heldout)
    if held is None:
        raise CLIError(f"unknown held-out set {args.heldout!r}: expected one of {', '.join(HELDOUT_SETS)}")
    if held.modality != task.modality:
        raise CLIError(
            f"held-out set {args.heldout!r} holds {held.modality.upper()} images; task {task.name!r} is a "
            f"{task.modality.upper()} task (use one of "
            f"{', '.join(n for n, s in HELDOUT_SETS.items() if s.modality == task.modality)})"
        )
    orientation = args.orientation or held.orientations[0]
    if orientation not in held.orientations:
        raise CLIError(f"held-out set {args.heldout!r} has the orientations {', '.join(held.orientations)}, "
                       f"not {orientation!r}")
    size = args.size or "native"
    side = None if size == "native" else tuple(task.image_size) if size == "task" else int(size)
    try:
        images = heldout_images(args.heldout, orientation, size=side, n_images=args.n_images)
    except FileNotFoundError as err:  # a Debian package that is not installed: the user's environment
        raise CLIError(str(err)) from err
    with _user_input(f"--heldout {args.heldout}: "):
        data = task.dataset_from(images[:, 0], seed=args.seed)
    shown = "native" if side is None else f"{tuple(images.shape[-2:])}"
    return data, f"held-out {args.heldout} ({orientation}, {shown} size; {held.source})"


def cmd_train(args: argparse.Namespace) -> int:
    from .pretrained import default_config
    from .training import CheckpointError, NonFiniteLossError, export_weights, train

    task = _task(args.task)
    _check_learned(args.model)
    from .optim.scaling import TASK_SCALE_REFERENCE

    config = default_config(args.model, task.channels, task.data_weight, TASK_SCALE_REFERENCE.get(task.name, 1.0))
    config[next(k for k in ("mol", "modl", "luser") if k in config)]["scale_equivariant"] = args.scale_equivariant == "on"
    for key, value in (("width", args.width), ("depth", args.depth), ("activation", args.activation)):
        if value is not None:
            if "cnn" not in config:
                raise CLIError(f"--{key} applies to models built on MonotoneCNN, not {args.model}")
            config["cnn"][key] = value
    if args.iters is not None:
        section = next(k for k in ("mol", "modl", "luser") if k in config)
        config[section]["max_iter" if section == "mol" else "num_iter"] = args.iters
    crop = task.train_crop if args.crop is None else (None if args.crop == 0 else args.crop)
    if crop is not None and crop > min(task.image_size):
        raise CLIError(f"--crop {crop} is larger than the task's images {tuple(task.image_size)}")
    out = args.out or f"runs/{task.name}__{args.model}"
    if (Path(out) / "checkpoint.pt").exists() and not args.resume:
        raise CLIError(f"{out} already holds a training run: pass --resume to continue it or choose another --out")
    if args.export:
        check_output_path(Path(args.export) / "manifest.json", "--export")
    try:
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
            augment=args.augment,
            algo_lr=args.algo_lr,
        )
    except (CheckpointError, NonFiniteLossError) as err:  # the run's state, not a bug: one line, exit 2
        raise CLIError(str(err)) from err
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


def cmd_certify(args: argparse.Namespace) -> int:
    from .guarantees import certify
    from .data import image_of

    task = _task(args.task)
    _check_learned(args.model)
    models, _ = load_models(task, [args.model])
    model = models[args.model]
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
    "memory-k": ("memory", "bench_memory_vs_iterations"),
    "memory-size": ("memory", "bench_memory_vs_size"),
    "nufft": ("nufft", "bench_normal_operator"),
    "ct": ("ct", "bench_ct_vs_tomography"),
    "luser": ("luser", "bench_luser_memory"),
    "luser-quality": ("luser", "bench_luser_quality"),
    "robustness": ("robustness", "bench_robustness"),
    "convergence": ("convergence", "bench_convergence"),
    "speed": ("speed", "bench_speed"),
    "training-step": ("speed", "bench_training_step"),
}

# bench options -> keyword arguments of the benchmark functions that take them
_BENCH_OPTIONS = {"tasks": "tasks", "models": "models", "n_images": "n_images", "image_size": "image_size",
                  "steps": "steps"}


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


def _names(text, what):
    names = [n for n in (text or "").split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise CLIError(f"{what}: unknown benchmark(s) {', '.join(unknown)}; expected among {', '.join(BENCHMARKS)}")
    return names


def cmd_bench_all(args: argparse.Namespace) -> int:
    r"""``bench all``: every benchmark of :data:`BENCHMARKS` into ``--out``, then the results page."""
    from .bench.report import run_all, write_page

    if not args.out:
        raise CLIError("bench all needs --out DIR (the folder of the JSON and PNG files)")
    for option in ("json", "plot", "tasks", "models", "n_images", "image_size", "steps"):
        if getattr(args, option, None) is not None:
            raise CLIError(f"bench all takes no --{option.replace('_', '-')} (sizes come from --preset)")
    only, skip = _names(args.only, "--only"), _names(args.skip, "--skip")
    if args.readme and not Path(args.readme).is_file():
        raise CLIError(f"--readme: no such file {args.readme}")
    if not args.page_only:
        check_output_path(str(Path(args.out) / "summary.json"), "--out")
        table = {name: _bench_function(name) for name in BENCHMARKS}
        command = " ".join([PROG] + [a for a in getattr(args, "argv", []) if a != "--debug"])
        jobs = args.jobs if args.jobs is not None else max(1, min(2, os.cpu_count() or 1))
        summary = run_all(args.out, table, preset=args.preset, only=only, skip=skip, command=command, jobs=jobs)
        failed = [r["name"] for r in summary["runs"] if r["status"] != "ok"]
        print(f"{len(summary['runs']) - len(failed)} of {len(summary['runs'])} benchmarks ran "
              f"({summary['seconds'] / 60:.1f} min)" + (f"; not measured: {', '.join(failed)}" if failed else ""))
    elif not (Path(args.out) / "summary.json").is_file():
        raise CLIError(f"--page-only: no {Path(args.out) / 'summary.json'} (run bench all --out {args.out} first)")
    page = write_page(args.out, args.page, readme_path=args.readme)
    print(f"results page: {page}" + (f"; README table: {args.readme}" if args.readme else ""))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.name == "all":
        return cmd_bench_all(args)
    for option in ("out", "only", "skip", "page", "readme", "jobs"):
        if getattr(args, option, None):
            raise CLIError(f"--{option} is an option of bench all only")
    fn = _bench_function(args.name)
    if fn is None:
        module_name, function = BENCHMARKS[args.name]
        raise CLIError(
            f"benchmark {args.name!r} is not available in this version "
            f"(no deepinv_mol.bench.{module_name}.{function}); available: {', '.join(available_benchmarks())}"
        )
    for path, what in ((args.json, "--json"), (args.plot, "--plot")):
        if path:
            check_output_path(path, what)
    import inspect

    params = inspect.signature(fn).parameters
    kwargs = {}
    for option, keyword in _BENCH_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if keyword not in params:
            raise CLIError(f"benchmark {args.name!r} takes no --{option.replace('_', '-')}")
        kwargs[keyword] = tuple(value.split(",")) if option in ("tasks", "models") else value
    # benchmarks that write their own JSON (settings, machine, curves) and figure get the paths
    writes_own = "json_path" in params
    if writes_own:
        kwargs.update(json_path=args.json, figure_path=args.plot)
    if "progress" in params:
        kwargs["progress"] = True
    rows = fn(**kwargs)
    _print_rows(rows)
    if args.json and not writes_own:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if args.plot and not writes_own:
        plot_rows(rows, args.plot, title=f"bench {args.name}")
    return 0


def available_benchmarks() -> list[str]:
    r"""Names of :data:`BENCHMARKS` whose function exists in this installation."""
    return [name for name in BENCHMARKS if _bench_function(name) is not None]


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
_positive_float = _number_type(float, lambda v: v > 0 and math.isfinite(v), "a positive number")


def _size_option(text):
    # --size: "native", "task" or an image side >= 8
    if text in ("native", "task"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'native', 'task' or an integer >= 8, got {text!r}") from None
    if value < 8:
        raise argparse.ArgumentTypeError(f"expected 'native', 'task' or an integer >= 8, got {text!r}")
    return value


def _add_heldout_options(parser, group=None):
    # the held-out images of `eval` and `demo` (deepinv_mol.data.heldout_images)
    (group or parser).add_argument(
        "--heldout", metavar="NAME",
        help="held-out test images never trained on: itk-t1, dipy-t1 (MRI), head-ct (CT held-out slabs)")
    parser.add_argument("--orientation", choices=("coronal", "axial", "sagittal"), default=None,
                        help="--heldout slice orientation (default: coronal for MRI, axial for CT)")
    parser.add_argument("--size", type=_size_option, default=None,
                        help="--heldout image size: native (default), task (the task's image size) or a side N >= 8")


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
    d.add_argument("--batch-size", type=_positive, default=None,
                   help="images reconstructed per call (default: 4 on a GPU, 1 on the CPU, where batching does not pay)")
    _add_heldout_options(d)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a model on a task (deepinv.Trainer; resumable; torchrun for DDP)")
    t.add_argument("--task", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--steps", type=_positive, default=1000)
    t.add_argument("--batch-size", type=_positive, default=4)
    t.add_argument("--crop", type=_nonneg, default=None, help="square training crop side (default: the task's; 0: whole images)")
    t.add_argument("--lr", type=_positive_float, default=1e-3)
    t.add_argument("--algo-lr", dest="algo_lr", type=_positive_float, default=None,
                   help="learning rate of MOL's data weight, MoDL's and LUSER's step sizes (default: --lr)")
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
    t.add_argument("--augment", choices=("on", "off"), default=None,
                   help="training augmentation: flips, 90-degree rotations, intensity, pixel size, MRI global phase and "
                        "ground-truth noise (the task's gt_noise) "
                        "(default: deepinv_mol.training.DEFAULT_AUGMENT)")
    t.add_argument("--scale-equivariant", choices=("on", "off"), default="on",
                   help="the model reconstructs s G(y/s) with the measurements' intensity scale s (default on)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate models on images: table + JSON")
    e.add_argument("--task", required=True)
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help=".npy stack (N, H, W) in [0, 1] or complex (N, 2, H, W)")
    src.add_argument("--split", choices=("train", "val", "test"), help="embedded data split instead of --images")
    _add_heldout_options(e, src)
    e.add_argument("--intensity-scale", type=_positive_float, default=1.0,
                   help="multiply the images by S before measuring; x_hat / S is scored (intensity-scale probe)")
    e.add_argument("--n-images", type=_positive, default=None,
                   help="evaluate the first N images only (--heldout: N slices spread evenly)")
    e.add_argument("--models", default="mol-penalty,mol-strict,modl,luser,cg,adjoint")
    e.add_argument("--json", default=None)
    e.add_argument("--figure", default=None, help="PNG: images with PSNR/SSIM, error maps on one colour scale")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--batch-size", type=_positive, default=None,
                   help="images reconstructed per call (default: 4 on a GPU, 1 on the CPU, where batching does not pay)")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("certify", help="guarantee report of a shipped model")
    c.add_argument("--model", required=True)
    c.add_argument("--task", default=DEMO_TASK)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_certify)

    b = sub.add_parser("bench", help="benchmarks (rows of measurements, ratios)")
    b.add_argument("name", choices=["all"] + list(BENCHMARKS))
    b.add_argument("--json", default=None)
    b.add_argument("--plot", default=None)
    b.add_argument("--tasks", default=None, help="comma-separated task names (robustness, convergence, speed)")
    b.add_argument("--models", default=None, help="comma-separated model names (robustness, convergence, speed)")
    b.add_argument("--n-images", dest="n_images", type=_number_type(int, lambda v: v >= 1, "an integer >= 1"),
                   default=None)
    b.add_argument("--image-size", dest="image_size", type=_number_type(int, lambda v: v >= 8, "an integer >= 8"),
                   default=None)
    b.add_argument("--steps", type=_number_type(int, lambda v: v >= 1, "an integer >= 1"), default=None,
                   help="projected-gradient ascent steps (robustness)")
    b.add_argument("--out", default=None, help="bench all: folder of the JSON and PNG files")
    b.add_argument("--preset", default="default", choices=["quick", "default", "full"],
                   help="bench all: sizes (quick: minutes, a check; default: the results page, meant to fit an hour "
                        "on 2 cores with --jobs 2; full: realistic sizes)")
    b.add_argument("--only", default=None, help="bench all: comma-separated benchmarks to run")
    b.add_argument("--skip", default=None, help="bench all: comma-separated benchmarks not to run")
    b.add_argument("--page", default=None, help="bench all: the results page to write (default OUT/benchmarks.rst; "
                                                "docs/benchmarks.rst for the documentation)")
    b.add_argument("--readme", default=None, help="bench all: README whose <!-- bench-table --> block is replaced")
    b.add_argument("--page-only", dest="page_only", action="store_true",
                   help="bench all: only regenerate the page from the files already in --out")
    b.add_argument("--jobs", type=_number_type(int, lambda v: v >= 1, "an integer >= 1"), default=None,
                   help="bench all: benchmarks run side by side, one thread each (default: the CPU count, at most 2)")
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
    except UserInputError as err:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except ImportError as err:
        if debug or not _missing_optional(err):
            raise
        print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception:  # noqa: BLE001 -- anything else is a bug of the library: show where it happened
        traceback.print_exc()
        print(f"{PROG}: internal error (a bug of deepinv-mol, not of your input): please report the traceback above",
              file=sys.stderr)
        return 1


def _missing_optional(err: ImportError) -> bool:
    # an optional dependency that is not installed (the user's environment), not a broken import of ours
    text = str(err)
    names = {getattr(err, "name", None) or ""} | {getattr(err.__cause__, "name", None) or ""}
    return any(m in names or f"pip install {m}" in text or f"install {m}" in text for m in _OPTIONAL_MODULES) or (
        "astra-toolbox" in text
    )


def _one_line(err):
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
