r"""Benchmark: the Toeplitz normal operator of :class:`~deepinv_mol.physics.NufftMRI` vs the NUFFT pair.

Every CG iteration, every ``deepinv.optim.L2`` gradient and every MOL/MoDL data-consistency step
applies :math:`A^H A`. With Toeplitz embedding it is one FFT filter on a :math:`2N \times 2N` grid
per coil; the NUFFT pair adds a forward and an adjoint Kaiser-Bessel interpolation of every k-space
sample (and an FFT each way on the :math:`2N` oversampled grid). Reproduce with
``python -m deepinv_mol.bench.nufft [threads]``.
"""

from __future__ import annotations

import time

import torch

from .report import _median_seconds

__all__ = ["bench_normal_operator"]


def bench_normal_operator(
    img_size: int = 256,
    n_coils=(8, 1),
    acceleration: float = 4,
    repeats: int = 5,
    warmup: int = 2,
    device="cpu",
    seed: int = 0,
    threads: int | None = None,
) -> list[dict]:
    r"""Time :math:`A^H A x` via the Toeplitz kernel and via the NUFFT pair, side by side in one run.

    Golden-angle radial sampling of an ``img_size`` :math:`\times` ``img_size`` image, undersampled
    ``acceleration`` times (:func:`~deepinv_mol.physics.spokes_for_acceleration` spokes of
    ``2 * img_size`` samples), birdcage coil maps: the registry's ``mri-radial-4x`` physics
    (:func:`deepinv_mol.tasks.get_task` with ``size``, ``acceleration``, ``n_coils``). The two paths alternate
    in the same process; each figure is the median of ``repeats`` timed calls after ``warmup``.

    :param int img_size: image side :math:`N`.
    :param tuple n_coils: coil counts to measure (one row each).
    :param float acceleration: radial undersampling factor.
    :param int repeats: timed calls per path.
    :param int warmup: untimed calls per path first (torchkbnufft's TorchScript warms up on them).
    :param torch.device, str device: device.
    :param int seed: seed of the random test image.
    :param int threads: torch intra-op threads during the run (restored afterwards); ``None`` keeps
        the current setting. torchkbnufft forks its interpolation over threads, which degrades badly
        when the machine is oversubscribed; compare ``threads=1``.
    :return: list of dicts, one per coil count: ``n_coils``, ``img_size``, ``spokes``, ``samples``,
        ``toeplitz_ms``, ``nufft_pair_ms``, ``speedup`` (pair / Toeplitz), ``rel_diff``
        (:math:`\|T x - A^H A x\| / \|A^H A x\|`), ``kernel_s`` (building the physics, Toeplitz kernel included),
        ``threads``.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _bench_rows(img_size, n_coils, acceleration, repeats, warmup, device, seed)
    finally:
        torch.set_num_threads(previous)


def _bench_rows(img_size, n_coils, acceleration, repeats, warmup, device, seed):
    from deepinv_mol.tasks import get_task

    x = torch.randn((1, 2, img_size, img_size), generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for coils in n_coils:
        # the registry's mri-radial-4x at this size, acceleration and coil count
        task = get_task("mri-radial-4x", size=img_size, acceleration=float(acceleration), n_coils=int(coils))
        start = time.perf_counter()
        physics = task.build_physics((2, img_size, img_size), device)
        kernel_s = time.perf_counter() - start
        spokes = physics.trajectory.shape[-1] // (2 * img_size)
        trajectory = physics.trajectory
        with torch.no_grad():
            fast = physics.A_adjoint_A(x)
            pair = physics.A_adjoint(physics.A(x))
            toeplitz_s = _median_seconds(lambda: physics.A_adjoint_A(x), repeats, warmup)
            pair_s = _median_seconds(lambda: physics.A_adjoint(physics.A(x)), repeats, warmup)
        rows.append(
            {
                "n_coils": coils,
                "img_size": img_size,
                "spokes": spokes,
                "samples": trajectory.shape[-1],
                "toeplitz_ms": 1e3 * toeplitz_s,
                "nufft_pair_ms": 1e3 * pair_s,
                "speedup": pair_s / toeplitz_s,
                "rel_diff": ((fast - pair).norm() / pair.norm()).item(),
                "kernel_s": kernel_s,
                "threads": torch.get_num_threads(),
            }
        )
    return rows


if __name__ == "__main__":
    import sys

    for row in bench_normal_operator(threads=int(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(
            "coils={n_coils} N={img_size} spokes={spokes} threads={threads}: Toeplitz {toeplitz_ms:.1f} ms, NUFFT pair "
            "{nufft_pair_ms:.1f} ms, speed-up {speedup:.1f}x, rel. diff {rel_diff:.1e}, kernel {kernel_s:.1f} s".format(**row)
        )
