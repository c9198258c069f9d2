r"""CT operators side by side: :class:`~deepinv_mol.physics.AstraCT` on CPU against deepinv's pure-torch
:class:`deepinv.physics.Tomography`, timed in one run, plus how far their sinograms agree.

Reproduce (CPU)::

    python -c "from deepinv_mol.bench.ct import bench_ct_vs_tomography as b; [print(r) for r in b()]"
"""

from __future__ import annotations

import math
import warnings

import torch

from .report import _median_seconds

__all__ = ["bench_ct_vs_tomography", "tomography_consistency"]


def _shepp_logan_batch(img_size: int, batch: int) -> torch.Tensor:
    from deepinv.utils.phantoms import generate_shepp_logan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.meshgrid indexing warning inside deepinv
        x = generate_shepp_logan(img_size)[None, None]
    return x.repeat(batch, 1, 1, 1) + 0.05 * torch.arange(batch).view(-1, 1, 1, 1)


def bench_ct_vs_tomography(
    img_size: int = 256,
    n_views: int = 180,
    batch: int = 4,
    repeats: int = 3,
    include_fast_adjoint: bool = True,
) -> list[dict]:
    r"""Time forward and adjoint of ``AstraCT`` (CPU) and ``deepinv.physics.Tomography`` in one run.

    Both operators get the same parallel geometry (``n_views`` angles over :math:`[0, \pi)`, a
    detector of ``ceil(sqrt(2) * img_size)`` unit cells) and the same batch of Shepp-Logan phantoms
    ``(batch, 1, img_size, img_size)``. ``Tomography`` runs with its exact adjoint
    (``adjoint_via_backprop=True``, autograd through ``grid_sample``) and, if
    ``include_fast_adjoint``, also with its approximate inverse-Radon adjoint (~8 % off adjointness).
    Times are medians over ``repeats`` runs after one warm-up, on the current torch thread count.

    :param int img_size: image side (pixels).
    :param int n_views: number of projection angles.
    :param int batch: batch size.
    :param int repeats: timed repetitions per operator.
    :param bool include_fast_adjoint: also time ``Tomography(adjoint_via_backprop=False)``.
    :return: rows ``{"operator", "forward_s", "adjoint_s", "total_s", "ratio_vs_astra",
        "adjointness"}``; ``ratio_vs_astra`` is the operator's total time over AstraCT's (> 1: AstraCT
        is faster).
    """
    from deepinv.physics import Tomography

    from deepinv_mol.physics import AstraCT

    x = _shepp_logan_batch(img_size, batch)
    theta = torch.linspace(0, math.pi, n_views + 1)[:-1]
    n_det = math.ceil(math.sqrt(2) * img_size)
    operators = {"AstraCT (cpu)": AstraCT((img_size, img_size), theta, n_detectors=n_det, backend="cpu", normalize=False)}
    operators["Tomography (exact adjoint)"] = Tomography(
        theta * 180 / math.pi, img_size, normalize=False, adjoint_via_backprop=True
    )
    if include_fast_adjoint:
        operators["Tomography (approximate adjoint)"] = Tomography(
            theta * 180 / math.pi, img_size, normalize=False, adjoint_via_backprop=False
        )
    rows = []
    for name, physics in operators.items():
        with torch.no_grad():
            y = physics.A(x)
            t_fwd = _median_seconds(lambda: physics.A(x), repeats, warmup=1)
            t_adj = _median_seconds(lambda: physics.A_adjoint(y), repeats, warmup=1)
        adjointness = float(physics.adjointness_test(x[:1]))
        rows.append(
            dict(
                operator=name,
                img_size=img_size,
                n_views=n_views,
                batch=batch,
                forward_s=t_fwd,
                adjoint_s=t_adj,
                total_s=t_fwd + t_adj,
                adjointness=adjointness,
            )
        )
    base = rows[0]["total_s"]
    for row in rows:
        row["ratio_vs_astra"] = row["total_s"] / base
    return rows


def tomography_consistency(img_size: int = 255, n_views: int = 180, projector: str = "linear") -> dict:
    r"""How far ``AstraCT`` and ``deepinv.physics.Tomography`` sinograms agree on one parallel geometry.

    ``Tomography`` takes degrees and returns ``(B, C, N, A)``; ``AstraCT`` takes radians and returns
    ``(B, C, A, N)``. Its rotation centre is pixel ``img_size // 2``, ASTRA's the image centre: they
    coincide for odd ``img_size`` whose padded size ``ceil(sqrt(2) * img_size)`` is odd too (255, 61).
    The best scale :math:`s = \langle y_A, y_T\rangle / \|y_A\|^2` and the relative difference
    :math:`\|s\,y_A - y_T\| / \|y_T\|` are returned for the Shepp-Logan phantom.

    :param int img_size: odd image side, with ``ceil(sqrt(2) * img_size)`` odd.
    :param int n_views: number of angles over :math:`[0, \pi)`.
    :param str projector: ASTRA CPU projector (``linear``, ``line``, ``strip``).
    :return: ``{"img_size", "n_views", "projector", "scale", "relative_difference"}``.
    """
    from deepinv.physics import Tomography

    from deepinv_mol.physics import AstraCT

    if img_size % 2 == 0 or math.ceil(math.sqrt(2) * img_size) % 2 == 0:
        raise ValueError(
            f"img_size={img_size}: Tomography's rotation centre differs from ASTRA's by half a pixel "
            "unless img_size and ceil(sqrt(2) * img_size) are both odd (e.g. 61, 255)"
        )
    theta = torch.linspace(0, math.pi, n_views + 1)[:-1]
    tomo = Tomography(theta * 180 / math.pi, img_size, normalize=False, adjoint_via_backprop=True)
    x = _shepp_logan_batch(img_size, 1)
    y_tomo = tomo.A(x).transpose(-1, -2)
    physics = AstraCT((img_size, img_size), theta, n_detectors=y_tomo.shape[-1], backend="cpu", projector=projector, normalize=False)
    y = physics.A(x)
    scale = ((y * y_tomo).sum() / (y * y).sum()).item()
    diff = ((scale * y - y_tomo).norm() / y_tomo.norm()).item()
    return dict(img_size=img_size, n_views=n_views, projector=projector, scale=scale, relative_difference=diff)
