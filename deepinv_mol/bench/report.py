r"""What the benchmarks share: the test problems they measure on, the models they load, how they write their
results (JSON with the settings and the machine, a figure), and ``deepinv-mol bench all``: every benchmark in
one run (:func:`run_all`, sizes of :data:`PRESETS`), the claims checked as :data:`TARGETS`, and the generated
results page and README table (:func:`write_page`).

A *test problem* is a task of :mod:`deepinv_mol.tasks` at a chosen image size, its physics, and
``n_images`` test images with their simulated measurements, exactly as ``deepinv-mol eval`` simulates
them (:func:`deepinv_mol.evaluation.simulate_set`: image :math:`i` seeded by ``(seed, i)``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "TASKS",
    "BenchProblem",
    "bench_problem",
    "load_models",
    "machine",
    "write_json",
    "progress_bar",
    "per_sample_norm",
    "markdown_table",
    "PRESETS",
    "save_outputs",
    "run_benchmark",
    "run_all",
    "Target",
    "TARGETS",
    "evaluate_targets",
    "load_results",
    "render_page",
    "readme_table",
    "update_readme",
    "write_page",
]

#: the two 2D tasks every benchmark runs on
TASKS = ("mri-radial-4x", "ct-sparse-view")


@dataclass
class BenchProblem:
    r"""Images and measurements of one task at one size.

    :param str task_name: task registry name.
    :param task: the :class:`deepinv_mol.tasks.Task` (with ``image_size`` replaced).
    :param physics: the task's physics for this size.
    :param list xs: ground truths, each ``(1, C, H, W)``.
    :param list ys: measurements, each batch-first of size 1.
    :param int image_size: side of the square images.
    """

    task_name: str
    task: object
    physics: object
    xs: list = field(default_factory=list)
    ys: list = field(default_factory=list)
    image_size: int = 0


def bench_problem(task_name: str, n_images: int = 2, image_size: int = 64, seed: int = 0, device="cpu") -> BenchProblem:
    r"""The first ``n_images`` test images of a task resized to ``image_size``², with their measurements.

    :param str task_name: a 2D task of :func:`deepinv_mol.tasks.list_tasks`.
    :param int n_images: number of test images (at most the split's size).
    :param int image_size: image side in pixels.
    :param int seed: seed of the simulated phase and of the noise.
    :param device: device of physics and tensors.
    :return: a :class:`BenchProblem`.
    :raises ValueError: ``n_images`` or ``image_size`` out of range, unknown task.
    """
    from ..evaluation import simulate_set
    from ..tasks import get_task
    from ..data import image_of

    if int(n_images) < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    task = get_task(task_name, image_size=(int(image_size), int(image_size)))
    data = task.dataset("test", seed=seed)
    n = min(int(n_images), len(data))
    images = torch.stack([image_of(data[i]) for i in range(n)])
    physics, xs, ys = simulate_set(task, images, seed, device=device)
    return BenchProblem(task_name, task, physics, xs, ys, int(image_size))


def load_models(names, task_name: str, device="cpu") -> dict:
    r"""Reconstructors by name (learned ones with their shipped weights, in ``eval()`` mode).

    :param names: names of :data:`deepinv_mol.pretrained.LEARNED_MODELS` or ``CLASSICAL_MODELS``.
    :param str task_name: task whose weights to load.
    :return: ``{name: model}``.
    """
    from ..pretrained import get_reconstructor

    return {name: get_reconstructor(name, task_name, device=device).eval() for name in names}


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine() -> dict:
    r"""The machine the figures were measured on: processor, logical CPUs, RAM (GiB), torch threads, versions,
    the date (UTC)."""
    import deepinv

    from .._version import __version__

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepinv": deepinv.__version__,
        "deepinv_mol": __version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _median_seconds(fn, repeats: int, warmup: int = 0) -> float:
    r"""The benchmarks' timer: ``fn()`` run ``warmup`` times untimed, then ``repeats`` times; the median seconds.

    >>> _median_seconds(lambda: None, 3, warmup=1) >= 0
    True
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def _seed(*values: int) -> int:
    r"""The benchmarks' per-draw seed: :func:`deepinv_mol.training.mix_seed` of ``values`` (imported on call,
    so that importing a benchmark stays light); kept so that published tables keep their numbers."""
    from ..training import mix_seed

    return mix_seed(*values)


def write_json(path, benchmark: str, settings: dict, rows: list, **extra) -> dict:
    r"""Write ``{"benchmark", "settings", "machine", "rows", **extra}`` as indented JSON (folders created).

    :param str path: output file.
    :param str benchmark: benchmark name.
    :param dict settings: the arguments of the run (enough to repeat it).
    :param list rows: the rows the benchmark function returns.
    :return: the payload written.
    """
    payload = {"benchmark": benchmark, "settings": settings, "machine": machine(), "rows": rows, **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_jsonable))
    return payload


def save_outputs(json_path, figure_path, benchmark: str, settings: dict, rows: list, plot, figure_data=None,
                 **extra) -> list:
    r"""The common tail of every benchmark: the JSON (:func:`write_json`) and the figure, each when its path is given.

    :param json_path: JSON file or ``None``.
    :param figure_path: PNG file or ``None``.
    :param str benchmark: benchmark name (in the JSON).
    :param dict settings: the arguments of the run.
    :param list rows: the rows.
    :param plot: ``plot(data, path)``, the benchmark's figure.
    :param figure_data: what ``plot`` draws (default: ``rows``).
    :param extra: further JSON fields (e.g. curves).
    :return: ``rows`` (so a benchmark ends with ``return save_outputs(...)``).
    """
    if json_path is not None:
        write_json(json_path, benchmark, settings, rows, **extra)
    if figure_path is not None:
        plot(rows if figure_data is None else figure_data, figure_path)
    return rows


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return str(value)


def progress_bar(total: int, desc: str, enabled: bool = True):
    r"""A tqdm progress bar (disabled with ``enabled=False``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    r"""Euclidean norm of each batch item ``(B,)`` (complex tensors by their real view)."""
    if t.is_complex():
        t = torch.view_as_real(t)
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1)


def markdown_table(rows: list, columns: list, digits: int = 3) -> str:
    r"""Rows as a Markdown table of the given columns (floats to ``digits`` significant digits, ``None`` as ``-``).

    :param list rows: list of dicts.
    :param list columns: keys to show, in order.
    :param int digits: significant digits of floats.

    :Examples:

    >>> from deepinv_mol.bench.report import markdown_table
    >>> print(markdown_table([{"model": "mol", "amp": 1.23456, "bound": None}], ["model", "amp", "bound"]))
    | model | amp | bound |
    |---|---|---|
    | mol | 1.23 | - |
    """

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.{digits}g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- bench all

#: keyword arguments of each benchmark per preset of ``deepinv-mol bench all``. A keyword the benchmark's
#: function does not take is left out (and listed as ``ignored`` in the summary), so that a benchmark whose
#: signature changes still runs, with its defaults; a benchmark missing here runs with its defaults.
#: ``quick``: tiny sizes (minutes; a check that everything runs, not figures to quote). ``default``: the
#: figures of the results page at sizes meant to fit a 2-core CPU in an hour with ``--jobs 2`` (memory and speed
#: at the issue's 256², robustness and convergence at 64²; a sequential run took 73 min for the four memory benchmarks
#: alone on 2 cores). ``full``: the realistic sizes (an hour or more on 2 cores).
PRESETS = {
    "quick": {
        "memory": dict(img_size=64, num_iter=10, width=16),
        "nufft": dict(img_size=64, repeats=2, warmup=1),
        "ct": dict(img_size=64, batch=1, repeats=1),
        "luser": dict(img_size=64, width=16),
        "luser-quality": dict(img_size=32, steps=20, n_test=2, batch=2),
        "robustness": dict(image_size=32, n_images=1, steps=2, n_random=1),
        "convergence": dict(image_size=32, n_images=1, n_starts=1, authors_max_iter=300),
        "speed": dict(image_size=64, n_images=1, repeats=1),
        "memory-k": dict(num_iters=(2, 4, 8), image_size=16, width=8),
        "memory-size": dict(ladders={"2d": ((16, 16), (24, 24), (32, 32)), "2d+t": ((4, 8, 8), (4, 12, 12), (4, 16, 16)),
                                     "3d": ((8, 8, 8), (10, 10, 10), (12, 12, 12))}, width=8),
        "training-step": dict(problems=("2d",), size_2d=32, size=16, depth=4, width=8),
    },
    "default": {
        "memory": dict(img_size=256, num_iter=10),
        "nufft": dict(img_size=256, repeats=3, warmup=1),
        "ct": dict(img_size=256, batch=4, repeats=3),
        "luser": dict(img_size=256),
        "luser-quality": dict(img_size=64, steps=150, n_test=8),
        "robustness": dict(image_size=64, n_images=2, steps=4, n_random=2),
        "convergence": dict(image_size=64, n_images=4, n_starts=2),
        "speed": dict(image_size=256, n_images=1, repeats=1),
        # K = 10 -> 50 is what the flatness target compares; K = 100 (another 10 min on 2 cores) in "full"
        "memory-k": dict(num_iters=(10, 20, 50), image_size=64, width=32),
        "memory-size": dict(),
        "training-step": dict(size_2d=256, size=32, depth=16),
    },
    "full": {
        "memory": dict(img_size=256, num_iter=10),
        "nufft": dict(img_size=256),
        "ct": dict(img_size=256),
        "luser": dict(img_size=256),
        "luser-quality": dict(img_size=64, steps=300),
        "robustness": dict(image_size=128, n_images=4, steps=8, n_random=3),
        "convergence": dict(image_size=160, n_images=8, n_starts=3),
        "speed": dict(image_size=256),
        "memory-k": dict(image_size=256, width=64),
        "memory-size": dict(),
        "training-step": dict(size_2d=256, size=64, depth=16),
    },
}

SUMMARY_FILE = "summary.json"


def _accepted(fn, kwargs: dict) -> tuple[dict, list]:
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs), []
    return {k: v for k, v in kwargs.items() if k in params}, sorted(k for k in kwargs if k not in params)


def _record(name: str, status: str, error: str | None = None) -> dict:
    # the record of one benchmark in the summary, before (or without) a run
    return {"name": name, "status": status, "seconds": 0.0, "kwargs": {}, "ignored": [], "json": None,
            "figure": None, "error": error, "figure_error": None}


def run_benchmark(name: str, fn, out_dir, kwargs: dict | None = None, progress: bool = False) -> dict:
    r"""Run one benchmark function into ``out_dir/NAME.json`` (+ ``NAME.png``) and say how it went; never raises
    for a failure of the benchmark itself.

    A function that takes ``json_path``/``figure_path`` writes its own files; the rows of any other are
    written with :func:`write_json` and drawn with :func:`deepinv_mol.evaluation.plot_rows`.

    :param str name: benchmark name (file stem).
    :param fn: the benchmark function (``None``: not available in this installation).
    :param out_dir: output folder.
    :param dict kwargs: keyword arguments (those ``fn`` does not take are dropped and listed in ``ignored``).
    :param bool progress: pass ``progress=True`` to functions that take it.
    :return: ``{"name", "status" ("ok", "failed", "unavailable"), "seconds", "kwargs", "ignored", "json",
        "figure", "error", "figure_error"}`` (paths relative to ``out_dir``).

    :Examples:

    >>> import tempfile
    >>> from deepinv_mol.bench.report import run_benchmark
    >>> def broken(n_images=1):
    ...     raise RuntimeError("out of memory")
    >>> run_benchmark("broken", broken, tempfile.mkdtemp(), {"n_images": 2, "steps": 3})["error"]
    'RuntimeError: out of memory'
    """
    import traceback

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name.replace("/", "-")
    record = _record(name, "unavailable")
    if fn is None:
        record["error"] = "not available in this installation"
        return record
    call, ignored = _accepted(fn, dict(kwargs or {}))
    record.update(kwargs=call, ignored=ignored)
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    for stale in (json_path, png_path):  # a failed run must not leave the figures of an earlier one
        stale.unlink(missing_ok=True)
    own, _ = _accepted(fn, {"json_path": 1, "figure_path": 1, "progress": 1})
    if "json_path" in own:
        call = {**call, "json_path": json_path}
    if "figure_path" in own:
        call = {**call, "figure_path": png_path}
    if "progress" in own:
        call = {**call, "progress": progress}
    tic = time.perf_counter()
    try:
        rows = fn(**call)
    except Exception as err:  # noqa: BLE001 -- recorded in the page, the run goes on
        record.update(status="failed", seconds=time.perf_counter() - tic, error=f"{type(err).__name__}: {err}",
                      traceback=traceback.format_exc(limit=-3))
        return record
    record.update(status="ok", seconds=time.perf_counter() - tic)
    if not json_path.exists():
        write_json(json_path, name, record["kwargs"], list(rows or []))
    record["json"] = json_path.name
    if not png_path.exists():
        try:
            from ..evaluation import plot_rows

            plot_rows(list(rows or []), png_path, title=f"bench {name}")
        except Exception as err:  # noqa: BLE001 -- a figure that cannot be drawn does not fail the benchmark
            record["figure_error"] = f"{type(err).__name__}: {err}"
    record["figure"] = png_path.name if png_path.exists() else None
    return record


def run_all(out_dir, benchmarks: dict, preset: str = "default", only=None, skip=(), overrides: dict | None = None,
            progress: bool = True, command: str | None = None, log=print, jobs: int = 1) -> dict:
    r"""Run every benchmark of ``benchmarks`` into ``out_dir`` and write ``out_dir/summary.json``.

    A failing (or unavailable) benchmark is recorded and the run goes on. The summary is rewritten after each
    benchmark, so an interrupted run leaves a usable page.

    :param out_dir: output folder (created).
    :param dict benchmarks: ``{name: function or None}`` (the CLI passes its whole table, so a benchmark
        added there is picked up).
    :param str preset: a key of :data:`PRESETS`.
    :param only: names to run (default all).
    :param skip: names not to run.
    :param dict overrides: ``{name: {keyword: value}}`` on top of the preset.
    :param bool progress: progress bars of the benchmarks.
    :param str command: the command line, recorded on the page.
    :param log: ``print``-like callable for one line per benchmark (``None``: silent).
    :param int jobs: benchmarks run side by side, each in its own (spawned) process with one torch thread; the
        machine's cores are used without oversubscribing them. Memory figures are unaffected (each is the peak of
        a fresh child process); the seconds of two benchmarks on two cores are those of a single-threaded run
        sharing the memory bandwidth (the ratios the targets use are measured within one benchmark). With
        ``jobs > 1`` the benchmarks' own progress bars are off (one line per benchmark instead).
    :return: the summary ``{"preset", "command", "machine", "started", "seconds", "jobs", "runs": [...]}``
        (``runs`` in the order of ``benchmarks``).
    :raises ValueError: unknown preset or benchmark names, ``jobs < 1``.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    names = list(benchmarks)
    unknown = sorted((set(only or ()) | set(skip or ()) | set(overrides or {})) - set(names))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; expected names among {names}")
    selected = [n for n in names if (not only or n in only) and n not in set(skip or ())]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"preset": preset, "command": command, "machine": machine(), "started": machine()["date"],
               "seconds": 0.0, "jobs": jobs, "runs": []}
    tic = time.perf_counter()
    order = {name: i for i, name in enumerate(selected)}

    def finished(record):
        summary["runs"] = sorted(summary["runs"] + [record], key=lambda r: order[r["name"]])
        summary["seconds"] = time.perf_counter() - tic
        (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_jsonable))
        if log:
            log(f"    {record['name']}: {record['status']} in {record['seconds']:.0f} s"
                + (f": {record['error']}" if record["error"] else ""))

    def settings(name):
        return {**PRESETS[preset].get(name, {}), **(overrides or {}).get(name, {})}

    if jobs == 1 or len(selected) < 2:
        for i, name in enumerate(selected):
            if log:
                log(f"[{i + 1}/{len(selected)}] {name} {settings(name) or '(defaults)'}")
            finished(run_benchmark(name, benchmarks[name], out_dir, settings(name), progress=progress))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: a forked child of a process whose torch thread pools exist can deadlock
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            futures = {}
            for i, name in enumerate(selected):
                if log:
                    log(f"[{i + 1}/{len(selected)}] {name} {settings(name) or '(defaults)'} (queued)")
                futures[pool.submit(run_benchmark, name, benchmarks[name], out_dir, settings(name), False)] = name
            for future in as_completed(futures):
                try:
                    record = future.result()
                except Exception as err:  # noqa: BLE001 -- e.g. a worker killed by the OOM killer
                    record = _record(futures[future], "failed", error=f"{type(err).__name__}: {err}")
                finished(record)
    summary["machine"] = machine()  # the date at the end of the run
    summary["machine"]["date"] = summary["started"]
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=_jsonable))
    return summary


# --------------------------------------------------------------------------------------------- targets


@dataclass
class Target:
    r"""A claim checked on a benchmark's rows.

    :param str benchmark: benchmark name (the JSON's ``"benchmark"``).
    :param str claim: what is claimed, in words.
    :param str target: the target, in words (e.g. ``">= 8x"``).
    :param evaluate: ``rows -> (measured text, met)`` with ``met`` ``True``/``False``, or ``None`` when the
        rows do not hold what is needed (reported as "not measured").
    """

    benchmark: str
    claim: str
    target: str
    evaluate: object


def _size(rows) -> str:
    sizes = sorted({r.get("image_size") or r.get("img_size") for r in rows if r.get("image_size") or r.get("img_size")})
    return ", ".join(f"{s}²" for s in sizes) if sizes else "?"


def _ratio_target(model: str, key_order, threshold: float, group: str | None = None):
    def evaluate(rows):
        found = [r for r in rows if r.get("model") == model]
        values = []
        for r in found:
            key = next((k for k in key_order if isinstance(r.get(k), (int, float))), None)
            if key is not None:
                values.append((float(r[key]), key, r.get(group) if group else None))
        if not values:
            return None
        worst = min(values)
        detail = ", ".join(f"{g}: {v:.2f}x" if g else f"{v:.2f}x" for v, _, g in values)
        return f"{detail} ({worst[1]}, {_size(rows)})", worst[0] >= threshold

    return evaluate


def _robust_ratio(rows):
    strict = [r for r in rows if r.get("model") == "mol-strict" and r.get("ratio_to_modl") is not None]
    if not strict:
        return None
    worst = max(r["ratio_to_modl"] for r in strict)
    detail = ", ".join(f"{r['task']} {100 * r['budget']:g}%: {r['ratio_to_modl']:.2f}" for r in strict)
    return f"largest {worst:.2f} ({detail}; {_size(rows)})", worst <= 0.5


def _robust_certificate(rows):
    strict = [r for r in rows if r.get("model") == "mol-strict" and r.get("certified_bound") is not None]
    if not strict:
        return None
    worst = max(r["worst_case"] / r["certified_bound"] for r in strict)
    return f"worst case up to {worst:.2f} of the bound ({_size(rows)})", all(r["within_certificate"] for r in strict)


def _memory_flat(rows):
    # MOL's and LUSER's training-step peak from K=10 to K=50 (bench memory-k): flat means <= 1.15x
    def peak(model, k):
        for r in rows:
            if r.get("model") == model and r.get("num_iter") == k:
                return r.get("cuda_peak_bytes") or r.get("peak_rss_increase")
        return None

    growth = {}
    for model in ("MOL", "LUSER"):
        a, b = peak(model, 10), peak(model, 50)
        if a and b:
            growth[model] = b / a
    if not growth:
        return None
    text = ", ".join(f"{m}: {g:.2f}x" for m, g in growth.items())
    return f"K=10 -> 50: {text} ({_size(rows)})", all(g <= 1.15 for g in growth.values())


def _conv(key, threshold, lower_is_better=False, fmt="{:.3g}"):
    def evaluate(rows):
        values = [(r[key], f"{r.get('task')} {r.get('model')}") for r in rows if isinstance(r.get(key), (int, float))]
        if not values:
            return None
        worst = max(values) if lower_is_better else min(values)
        met = worst[0] <= threshold if lower_is_better else worst[0] >= threshold
        return f"{'largest' if lower_is_better else 'smallest'} {fmt.format(worst[0])} ({worst[1]}, {_size(rows)})", met

    return evaluate


def _luser_quality(rows):
    psnr = {r.get("model"): r.get("test_psnr") for r in rows if isinstance(r.get("test_psnr"), (int, float))}
    twin = next((v for k, v in psnr.items() if k and k != "LUSER" and "twin" in k.lower() or k == "UnrolledFeedForward"),
                None)
    if psnr.get("LUSER") is None or twin is None:
        return None
    diff = psnr["LUSER"] - twin
    return f"LUSER {psnr['LUSER']:.2f} dB vs twin {twin:.2f} dB ({diff:+.2f} dB, {_size(rows)})", diff >= -0.5


#: the targets of the papers' claims (issue 14) checked on the page; a target whose benchmark did not run (or
#: whose rows lack the figure) is listed as "not measured". Memory targets are stated at 256².
TARGETS = [
    Target("memory", "training memory, MOL vs deepinv's MoDL (same CNN, 10 iterations, 256²)",
           "MoDL/MOL peak >= 8x", _ratio_target("ratio MoDL/MOL", ("cuda_peak_bytes", "peak_rss_increase"), 8.0)),
    Target("memory-iterations", "training memory of MOL and LUSER independent of the number of iterations K",
           "peak(K=50) / peak(K=10) <= 1.15", _memory_flat),
    Target("luser", "training memory, LUSER (its defaults) vs the DnCNN-17 feed-forward twin (256²)",
           "twin/LUSER peak >= 6x",
           _ratio_target("ratio twin/LUSER", ("cuda_peak_bytes", "peak_rss_increase"), 6.0, group="problem")),
    Target("luser-quality", "LUSER quality similar to the twin's after equal training",
           "PSNR >= twin - 0.5 dB", _luser_quality),
    Target("robustness", "MOL-strict more robust than MoDL (worst-case amplification)",
           "MOL-strict/MoDL <= 0.5", _robust_ratio),
    Target("robustness", "MOL-strict never above its certified bound", "worst case <= bound", _robust_certificate),
    Target("convergence", "Anderson vs the authors' plain iteration (alpha = 0.01)",
           ">= 3x fewer iterations", _conv("speedup_vs_authors", 3.0, fmt="{:.1f}x")),
    Target("convergence", "share of test reconstructions that converge", "100 %",
           _conv("converged_share", 1.0, fmt="{:.0%}")),
    Target("convergence", "unique fixed point: spread of the fixed points from random starts, relative to ||x||",
           "<= 1e-3", _conv("uniqueness_spread", 1e-3, lower_is_better=True)),
]


def evaluate_targets(payloads: list, targets=None) -> list[dict]:
    r"""Check :data:`TARGETS` on benchmark payloads (the JSONs of :func:`write_json`).

    :param list payloads: ``{"benchmark", "rows", ...}`` dicts; a benchmark with several payloads (e.g. two
        sizes) gives one line per payload.
    :param list targets: :class:`Target` list (default :data:`TARGETS`).
    :return: ``[{"benchmark", "claim", "target", "measured", "status", "source"}]`` with status ``"met"``,
        ``"not met"`` or ``"not measured"``.

    :Examples:

    >>> from deepinv_mol.bench.report import evaluate_targets
    >>> rows = [{"task": "mri", "model": "mol-strict", "budget": 0.01, "image_size": 64, "worst_case": 0.5,
    ...          "certified_bound": 3.0, "within_certificate": True, "ratio_to_modl": 0.9}]
    >>> [(t["status"], t["target"]) for t in evaluate_targets([{"benchmark": "robustness", "rows": rows}])]
    [('not met', 'MOL-strict/MoDL <= 0.5'), ('met', 'worst case <= bound')]
    """
    targets = TARGETS if targets is None else targets
    out = []
    for target in targets:
        mine = [p for p in payloads if p.get("benchmark") == target.benchmark]
        if not mine:
            continue
        for payload in mine:
            try:
                result = target.evaluate(list(payload.get("rows") or []))
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as err:  # rows of another shape
                result = (f"cannot evaluate ({type(err).__name__}: {err})", None)
            measured, met = result if result is not None else ("-", None)
            out.append({"benchmark": target.benchmark, "claim": target.claim, "target": target.target,
                        "measured": measured, "status": "not measured" if met is None else ("met" if met else "not met"),
                        "source": payload.get("_file")})
    return out


# ------------------------------------------------------------------------------------------------ page

#: columns shown on the page per benchmark (others: every scalar column, at most 12)
PAGE_COLUMNS = {
    "robustness": ["task", "model", "budget", "image_size", "n_images", "worst_case", "random_mean",
                   "worst_to_random", "certified_bound", "network_lipschitz", "ratio_to_modl"],
    "convergence": ["task", "model", "image_size", "n_images", "iterations_anderson", "iterations_plain",
                    "iterations_authors", "speedup_vs_authors", "converged_share", "converged_share_authors",
                    "error_anderson", "error_authors", "uniqueness_spread"],
}

README_BEGIN, README_END = "<!-- bench-table -->", "<!-- /bench-table -->"
_TARGET_MARK = {"met": "met", "not met": "NOT met", "not measured": "not measured"}


def _rst_escape(text) -> str:
    r"""Text safe inside a reST paragraph or table cell (no markup, no substitution, no reference).

    >>> from deepinv_mol.bench.report import _rst_escape
    >>> print(_rst_escape("||x|| * 2_ `a`"))
    \|\|x\|\| \* 2\_ \`a\`
    """
    text = " ".join(str(text).split())
    for ch in ("\\", "*", "`", "|", "_"):
        text = text.replace(ch, "\\" + ch)
    return text


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    return str(value)


def _list_table(header: list, body: list, title: str | None = None) -> list[str]:
    lines = [f".. list-table:: {_rst_escape(title)}" if title else ".. list-table::", "   :header-rows: 1", ""]
    for row in [header] + body:
        cells = [_rst_escape(c) or "\\-" for c in row]
        lines.append(f"   * - {cells[0]}")
        lines += [f"     - {c}" for c in cells[1:]]
    return lines + [""]


def _scalar_columns(rows: list, benchmark: str) -> list:
    wanted = PAGE_COLUMNS.get(benchmark)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    scalar = [k for k in keys if all(r.get(k) is None or isinstance(r.get(k), (str, int, float, bool)) for r in rows)]
    if wanted:
        return [k for k in wanted if k in scalar]
    return scalar[:12]


def load_results(out_dir) -> tuple[dict | None, list]:
    r"""The summary and every benchmark JSON of a ``bench all`` folder (each payload gets ``"_file"``).

    :param out_dir: the folder of :func:`run_all`.
    :return: ``(summary or None, payloads)``; payloads in the order of the summary's runs, then any other
        benchmark JSON of the folder (e.g. a larger run copied in) by name.
    """
    out_dir = Path(out_dir)
    summary_file = out_dir / SUMMARY_FILE
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    order = [r.get("json") for r in (summary or {}).get("runs", []) if r.get("json")]
    files = order + sorted(p.name for p in out_dir.glob("*.json") if p.name != SUMMARY_FILE and p.name not in order)
    payloads = []
    for name in files:
        try:
            payload = json.loads((out_dir / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(payload, dict) and "benchmark" in payload and "rows" in payload:
            payloads.append({**payload, "_file": name})
    return summary, payloads


def _machine_lines(machine_info: dict, summary: dict | None) -> list[str]:
    m = machine_info or {}
    fields = [
        ("processor", m.get("cpu")),
        ("logical CPUs", m.get("logical_cpus")),
        ("RAM", f"{m['ram_gib']} GiB" if m.get("ram_gib") else None),
        ("torch threads", m.get("torch_threads")),
        ("GPU", m.get("cuda") or "none"),
        ("versions", f"python {m.get('python')}, torch {m.get('torch')}, deepinv {m.get('deepinv')}, "
                     f"deepinv-mol {m.get('deepinv_mol')}"),
        ("date", (summary or {}).get("started") or m.get("date")),
    ]
    if summary:
        fields.append(("preset", summary.get("preset")))
        fields.append(("total time", f"{summary.get('seconds', 0) / 60:.1f} min"))
    return [f":{name}: {_rst_escape(_fmt(value))}" for name, value in fields if value is not None] + [""]


def _robustness_notes(payload: dict) -> list[str]:
    rows = payload["rows"]
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        for rho in dict.fromkeys(r["budget"] for r in rows if r["task"] == task):
            here = {r["model"]: r for r in rows if r["task"] == task and r["budget"] == rho}
            strict, modl = here.get("mol-strict"), here.get("modl")
            if not strict:
                continue
            text = f"{task}, {100 * rho:g} % of ||y||: MOL-strict's worst case {_fmt(strict['worst_case'])}"
            if modl:
                text += f", MoDL's {_fmt(modl['worst_case'])} (ratio {_fmt(strict.get('ratio_to_modl'))}, target <= 0.5)"
            if strict.get("network_lipschitz") is not None:
                text += f"; local Lipschitz of the network: MOL-strict {_fmt(strict['network_lipschitz'])}"
                if modl and modl.get("network_lipschitz") is not None:
                    text += f", MoDL {_fmt(modl['network_lipschitz'])}"
            if strict.get("certified_bound"):
                text += f"; certified bound {_fmt(strict['certified_bound'])}"
            slack = strict.get("slack")
            if slack and slack.get("margin") is None and slack.get("network"):
                slack = {**slack, "margin": slack["m_eff"] / slack["network"] ** 2}  # network = sqrt(m_eff / m)
            if slack:
                text += (f", {_fmt(slack['total'])}x the worst case; the slack splits into network "
                         f"{_fmt(slack['network'])}x (monotonicity met along the change {_fmt(slack['m_eff'])} vs the "
                         f"certified m = {_fmt(slack.get('margin'))}), alignment {_fmt(slack['alignment'])}x, balance "
                         f"{_fmt(slack['balance'])}x (||A dx||/||d|| = {_fmt(slack['t'])}; closure "
                         f"{_fmt(slack['closure'])})")
            lines.append("* " + _rst_escape(text + "."))
    return lines + [""] if lines else []


_INTRO = {
    "memory": "Peak memory of one training step (forward and backward) of MOL and deepinv's MoDL with the same CNN.",
    "luser": "Peak memory of one training step of LUSER (its defaults) and of its deep feed-forward twin.",
    "luser-quality": "Test PSNR of LUSER and of the feed-forward twin after the same training.",
    "nufft": "The Toeplitz normal operator against the NUFFT pair (time per A^H A x).",
    "ct": "AstraCT (CPU) against deepinv's Tomography (time of forward and adjoint).",
    "speed": "Seconds per reconstruction of every model, and where the time goes inside one MOL iteration.",
    "robustness": "Error amplification ||x(y+d) - x(y)|| / ||d|| under the worst perturbation found by projected "
                  "gradient ascent and under random ones, with MOL-strict's certified bound.",
    "convergence": "Iterations of MOL's fixed-point solve with Anderson acceleration, plain, and with the authors' "
                   "iteration (alpha = 0.01), the share of converged reconstructions and the spread of the fixed "
                   "points reached from random starts.",
}

_ROBUSTNESS_TEXT = [
    """What the certificate says. At a fixed point of MOL, m ||dx||^2 + lambda ||A dx||^2 = lambda <A dx, d>
for a perturbation d of y, hence ||dx|| <= sqrt(lambda / (4 m)) ||d|| with m = 1 - Lip(H) (0.01 for the
shipped networks, certified Lip(H) <= 0.99). This caps MOL-strict's amplification whatever its weights; it is
a worst case over every network with that bound and every operator with that lambda and ||A||, not a
comparison with another method.""",
    """Why it bounds but does not by itself make MOL less sensitive than MoDL. The trained map's sensitivity is
set by its Jacobian, (J_F + lambda A^H A)^(-1) lambda A^H with F = I - H. A converged MoDL solves an equation
of the same form, (I - D)(x) + gamma A^H (A x - y) = 0 (gamma its data step, started at MOL's lambda), with its
network D in place of H; its ten unrolled iterations stay close to it. So the two differ only through their
networks. MoDL's network is unconstrained (trained from the identity, no penalty): where its local gain
exceeds 1, I - D is not monotone along some directions, only the data term holds the change back, and the
amplification grows. Where MoDL's network stays as
tame as MOL's, both maps amplify alike: the guarantee caps MOL, it does not push it below a reconstruction
whose network happens to be just as tame. The local Lipschitz estimates of the networks at the
reconstructions (network_lipschitz, lower bounds) and MOL's monotonicity along the change (m_eff) show how
tame each network is; what decides is the network's gain along the directions A barely sees (the
undersampled k-space or the missing views), where only the network holds the change back.""",
    """Where the slack goes. The three factors multiply to sqrt(lambda / (4 m)) / amplification (closure = 1
at exact fixed points). "network" is sqrt(m_eff / m), the monotonicity met along the change over the certified
one: the trained network is far less expansive along dx than its bound allows, and this factor carries almost
all the slack. "alignment" is Cauchy-Schwarz: the part of d that A dx does not see (e.g. in the null space of
A^H) changes nothing. "balance" is t(1 - t) <= 1/4 with t = ||A dx|| / ||d||: the bound is reached only where A
has singular values near sqrt(m / lambda).""",
]


def _convergence_notes(payload: dict) -> list[str]:
    lines = []
    for r in payload["rows"]:
        text = (f"{r.get('task')} {r.get('model')}: Anderson {_fmt(r.get('iterations_anderson'))} iterations "
                f"(error to the fixed point {_fmt(r.get('error_anderson'))}), plain {_fmt(r.get('iterations_plain'))}")
        if r.get("iterations_authors") is not None:
            text += (f", the authors' iteration {_fmt(r.get('iterations_authors'))} (error "
                     f"{_fmt(r.get('error_authors'))}): {_fmt(r.get('speedup_vs_authors'))}x fewer with Anderson")
        text += (f"; {_fmt(100 * r.get('converged_share', float('nan')))} % converged; fixed points from "
                 f"{r.get('n_starts')} random starts within {_fmt(r.get('uniqueness_spread'))} ||x|| of each other")
        lines.append("* " + _rst_escape(text + "."))
    return lines + [""] if lines else []


_CONVERGENCE_TEXT = """\
The authors' iteration moves by alpha = 0.01 of the step each time and stops when that move is below
1e-4 ||x||, i.e. when ||T(x) - x|| < 1e-2 ||x||: it stops while still about that far from the fixed point
(error_authors), whereas Anderson with the shipped alpha = 1 stops on the tolerance much closer to it."""


def _figure(name: str, out_dir: Path, page_path: Path, fig_dir: Path | None) -> str | None:
    src = out_dir / name
    if not src.exists():
        return None
    if fig_dir is None:
        return os.path.relpath(src, page_path.parent).replace(os.sep, "/")
    import shutil

    fig_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, fig_dir / name)
    return os.path.relpath(fig_dir / name, page_path.parent).replace(os.sep, "/")


def render_page(out_dir, page_path, figures_dir=None, title: str = "Benchmarks") -> str:
    r"""The reST results page of one ``bench all`` folder (figures referenced relative to ``page_path``).

    :param out_dir: the folder of :func:`run_all` (``summary.json`` and the benchmark JSONs and PNGs).
    :param page_path: where the page will live (for relative figure paths).
    :param figures_dir: copy the figures there (default: reference them in ``out_dir``).
    :param str title: page title.
    :return: the page text.
    """
    out_dir, page_path = Path(out_dir), Path(page_path)
    fig_dir = Path(figures_dir) if figures_dir is not None else None
    summary, payloads = load_results(out_dir)
    info = (summary or {}).get("machine") or (payloads[0]["machine"] if payloads else {})
    lines = [
        ".. This page is generated by `deepinv-mol bench all` (deepinv_mol.bench.report); do not edit it by hand.",
        "",
        ".. _benchmarks:",
        "",
        title,
        "=" * len(title),
        "",
        "Every figure on this page comes from one run of ``deepinv-mol bench all`` (command below) on the machine",
        "described here; the JSON files of the run hold the settings and every row.",
        "",
    ]
    if summary and summary.get("command"):
        lines += ["::", "", "    " + summary["command"], ""]
    lines += ["Machine", "-------", ""] + _machine_lines(info, summary)
    targets = evaluate_targets(payloads)
    lines += ["Targets", "-------", "",
              "The papers' claims as targets, checked on the rows of this run (a target stated at a size, e.g. "
              "256², is only conclusive when measured at that size).", ""]
    if targets:
        body = [[t["claim"], t["target"], t["measured"], _TARGET_MARK[t["status"]], t["source"] or "-"]
                for t in targets]
        lines += _list_table(["claim", "target", "measured", "status", "from"], body)
    else:
        lines += ["No benchmark with a target ran.", ""]
    runs = (summary or {}).get("runs", [])
    failed = [r for r in runs if r.get("status") != "ok"]
    if failed:
        lines += ["Failures", "--------", "", "These benchmarks did not produce results in this run:", ""]
        lines += [f"* ``{r['name']}``: {r['status']} ({_rst_escape(r.get('error') or '')})" for r in failed] + [""]
    if runs:
        body = [[r["name"], r["status"], f"{r.get('seconds', 0):.0f}",
                 ", ".join(f"{k}={v}" for k, v in (r.get("kwargs") or {}).items()) or "defaults"] for r in runs]
        lines += _list_table(["benchmark", "status", "seconds", "settings"], body, title="Runs")
    explained = set()
    for payload in payloads:
        name = payload["benchmark"]
        heading = f"{name} ({payload['_file']})"
        lines += [_rst_escape(heading), "-" * len(_rst_escape(heading)), ""]
        if name in _INTRO:
            lines += [_rst_escape(_INTRO[name]), ""]
        settings = payload.get("settings") or {}
        if settings:
            lines += ["Settings: " + _rst_escape(", ".join(f"{k}={v}" for k, v in settings.items())), ""]
        figure = _figure(Path(payload["_file"]).with_suffix(".png").name, out_dir, page_path, fig_dir)
        if figure:
            lines += [f".. image:: {figure}", f"   :alt: {name}", "   :width: 100%", ""]
        rows = payload.get("rows") or []
        columns = _scalar_columns(rows, name)
        if rows and columns:
            lines += _list_table(columns, [[_fmt(r.get(c)) for c in columns] for r in rows])
        if name == "robustness":  # the explanation once, under the first robustness run
            lines += _robustness_notes(payload)
            if name not in explained:
                lines += [line for p in _ROBUSTNESS_TEXT for line in (_rst_escape(p), "")]
        if name == "convergence":
            lines += _convergence_notes(payload)
            if name not in explained:
                lines += [_rst_escape(_CONVERGENCE_TEXT), ""]
        explained.add(name)
    return "\n".join(lines).rstrip() + "\n"


def readme_table(out_dir) -> str:
    r"""The README's benchmark table (Markdown) of one ``bench all`` folder: one line per target.

    :param out_dir: the folder of :func:`run_all`.
    :return: Markdown text (a sentence naming the run, then the table).
    """
    summary, payloads = load_results(out_dir)
    info = (summary or {}).get("machine") or (payloads[0]["machine"] if payloads else {})
    preset = (summary or {}).get("preset", "?")
    head = (f"Generated by `deepinv-mol bench all --preset {preset}` on {info.get('cpu', '?')} "
            f"({info.get('logical_cpus', '?')} logical CPUs), {(summary or {}).get('started') or info.get('date', '?')}; "
            "details and figures on the results page (`docs/benchmarks.rst`).")
    def cell(text):  # a "|" inside a Markdown table cell must be escaped
        return str(text).replace("|", "\\|")

    rows = [{"claim": cell(t["claim"]), "target": cell(t["target"]), "measured": cell(t["measured"]),
             "status": _TARGET_MARK[t["status"]]} for t in evaluate_targets(payloads)]
    failed = [r["name"] for r in (summary or {}).get("runs", []) if r.get("status") != "ok"]
    text = head + "\n\n" + (markdown_table(rows, ["claim", "target", "measured", "status"]) if rows else "(no targets)")
    if failed:
        text += "\n\nNot measured in this run (failed or unavailable): " + ", ".join(f"`{n}`" for n in failed) + "."
    return text


def update_readme(readme_path, table: str) -> bool:
    r"""Replace the text between ``<!-- bench-table -->`` and ``<!-- /bench-table -->`` in a README.

    :param readme_path: the README file.
    :param str table: the new text.
    :return: ``True`` if replaced; ``False`` (file unchanged) when the markers are missing.

    :Examples:

    >>> import tempfile, pathlib
    >>> from deepinv_mol.bench.report import update_readme
    >>> f = pathlib.Path(tempfile.mkdtemp()) / "README.md"
    >>> _ = f.write_text("a\n<!-- bench-table -->\nold\n<!-- /bench-table -->\nb\n")
    >>> update_readme(f, "new"), f.read_text()
    (True, 'a\n<!-- bench-table -->\nnew\n<!-- /bench-table -->\nb\n')
    """
    path = Path(readme_path)
    text = path.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    path.write_text(text[: start + len(README_BEGIN)] + "\n" + table.strip() + "\n" + text[end:])
    return True


def write_page(out_dir, page_path=None, figures_dir=None, readme_path=None) -> Path:
    r"""Write the results page of a ``bench all`` folder (and the README table).

    :param out_dir: the folder of :func:`run_all`.
    :param page_path: the page (default ``out_dir/benchmarks.rst``).
    :param figures_dir: where the page's figures are copied (default: ``<page folder>/benchmarks`` when the
        page is outside ``out_dir``, else none: the figures are referenced in place).
    :param readme_path: a README with the markers of :func:`update_readme` (optional).
    :return: the page's path.
    :raises ValueError: the README lacks the markers.
    """
    out_dir = Path(out_dir)
    page = Path(page_path) if page_path is not None else out_dir / "benchmarks.rst"
    if figures_dir is None and page.parent.resolve() != out_dir.resolve():
        figures_dir = page.parent / "benchmarks"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render_page(out_dir, page, figures_dir))
    if readme_path is not None and not update_readme(readme_path, readme_table(out_dir)):
        raise ValueError(f"{readme_path} has no {README_BEGIN} ... {README_END} markers to replace")
    return page
