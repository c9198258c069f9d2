r"""What the robustness, convergence and speed benchmarks share: the test problems they measure on, the
models they load, and how they write their results (JSON with the settings and the machine, a figure).

A *test problem* is a task of :mod:`deepinv_mol.tasks` at a chosen image size, its physics, and
``n_images`` test images with their simulated measurements, exactly as ``deepinv-mol eval`` simulates
them (:func:`deepinv_mol.evaluation.simulate_set`: image :math:`i` seeded by ``(seed, i)``).
"""

from __future__ import annotations

import json
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


def machine() -> dict:
    r"""The machine the figures were measured on: processor, logical CPUs, torch threads, versions."""
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
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepinv": deepinv.__version__,
        "deepinv_mol": __version__,
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
