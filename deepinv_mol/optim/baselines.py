r"""Baseline reconstructors compared with MOL and LUSER (``deepinv-mol eval`` names in parentheses).

* :class:`MoDLBaseline` (``modl``) -- deepinv's :class:`deepinv.models.MoDL` with an explicit start image
  (:func:`deepinv_mol.optim.data_consistency.start_image`, MOL's), an explicit initial step size and
  step sizes kept positive;
* :class:`AdjointReconstruction` (``adjoint``) -- :math:`A^H y`, rescaled by the scalar that best fits the data;
* :class:`CGReconstruction` (``cg``) -- CG on the lightly Tikhonov-regularised normal equations;
* :class:`FBPReconstruction` (``fbp``) -- filtered back-projection (CT).

Every baseline has ``get_config()`` (its constructor keyword arguments) and, after a call, ``stats``, a dict
with at least ``iterations`` and ``converged`` (what they count is stated in each class).
"""

from __future__ import annotations

import inspect
import math
import weakref

import torch
from deepinv.models import MoDL, Reconstructor
from deepinv.physics import LinearPhysics
from torch import Tensor, nn

from .data_consistency import regularised_solve, start_image
from .scaling import apply_scale, check_scale_options, normalise_inputs

__all__ = ["MoDLBaseline", "AdjointReconstruction", "CGReconstruction", "FBPReconstruction"]


def _positive_float(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite float, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _int_at_least(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


class MoDLBaseline(MoDL):
    r"""MoDL (Aggarwal, Mani, Jacob 2019), deepinv's :class:`deepinv.models.MoDL`, started like MOL.

    ``num_iter`` unrolled half-quadratic-splitting layers
    :math:`x_{k+1} = (I + \gamma_k A^H A)^{-1}\big(D(x_k) + \gamma_k A^H y\big)` with the denoiser :math:`D`
    (one network shared by all layers) and learnable step sizes :math:`\gamma_k`. Three things differ from
    deepinv's defaults, all explicit constructor arguments:

    * the start image is :func:`~deepinv_mol.optim.data_consistency.start_image` (``init_max_iter`` CG
      iterations on :math:`(A^HA + \epsilon I)x = A^Hy`, :math:`\epsilon` = ``init_eps``), the one MOL and
      LUSER use, instead of :math:`A^H y` (off by the scale of :math:`A^HA`: 40-100x for the radial NUFFT);
    * every :math:`\gamma_k` starts at ``stepsize`` (deepinv: 1, which ignores the operator's scale);
    * the step sizes are projected onto :math:`\gamma_k \ge` ``min_stepsize`` before every call (projected
      gradient: on CT, Adam drove raw step sizes below zero, the data step became indefinite and the PSNR fell to
      1 dB).

    The parameters and ``state_dict`` are deepinv's MoDL's. After a call, ``stats = {"iterations": num_iter,
    "converged": None, "scale": [s_b, ...] or None}``: ``iterations`` counts the unrolled layers (each one denoiser call and one
    data-consistency solve); a fixed-depth network has no convergence criterion.

    :param torch.nn.Module denoiser: the denoiser :math:`D` (``None``: deepinv's default DnCNN).
    :param int num_iter: unrolled layers.
    :param float stepsize: initial :math:`\gamma_k`.
    :param float min_stepsize: lower bound of :math:`\gamma_k` (``None``: ``0.1 * stepsize``).
    :param int init_max_iter: CG iterations of the start image (0: :math:`A^H y`).
    :param float init_eps: Tikhonov weight :math:`\epsilon` of the start image.
    :param bool scale_equivariant: reconstruct :math:`s\,G(y/s)` with the intensity scale :math:`s(y)` of
        :func:`deepinv_mol.optim.scaling.measurement_scale` (``stats["scale"]``), so that :math:`x(cy) = c\,x(y)`.
        Off by default for the class (the plain map); on for the package's models (:func:`deepinv_mol.pretrained.load_pretrained`, ``deepinv-mol train``).
    :param float scale_reference: the scale statistic's value on the training distribution (:math:`s = 1` there).

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.models import MonotoneCNN
    >>> from deepinv_mol.optim.baselines import MoDLBaseline
    >>> physics = dinv.physics.BlurFFT((1, 16, 16), filter=dinv.physics.functional.gaussian_blur(sigma=(1.0, 1.0)))
    >>> model = MoDLBaseline(MonotoneCNN(channels=1, width=4, depth=2, constraint="penalty"), num_iter=3, stepsize=2.0)
    >>> x_hat = model(physics(torch.rand(1, 1, 16, 16)), physics)
    >>> x_hat.shape, model.stats["iterations"], model.get_config()["min_stepsize"]
    (torch.Size([1, 1, 16, 16]), 3, 0.2)
    """

    def __init__(
        self,
        denoiser: nn.Module | None = None,
        num_iter: int = 10,
        stepsize: float = 1.0,
        min_stepsize: float | None = None,
        init_max_iter: int = 20,
        init_eps: float = 1e-2,
        scale_equivariant: bool = False,
        scale_reference: float = 1.0,
    ):
        num_iter = _int_at_least("num_iter", num_iter, 1)
        stepsize = _positive_float("stepsize", stepsize)
        min_stepsize = 0.1 * stepsize if min_stepsize is None else _positive_float("min_stepsize", min_stepsize, True)
        if min_stepsize > stepsize:
            raise ValueError(f"min_stepsize ({min_stepsize}) must not exceed stepsize ({stepsize})")
        super().__init__(denoiser=denoiser, num_iter=num_iter)
        self.num_iter = num_iter
        self.stepsize, self.min_stepsize = stepsize, min_stepsize
        self.init_max_iter = _int_at_least("init_max_iter", init_max_iter, 0)
        self.init_eps = _positive_float("init_eps", init_eps)
        self.scale_equivariant, self.scale_reference = check_scale_options(scale_equivariant, scale_reference)
        with torch.no_grad():
            for step in self.params_algo["stepsize"]:
                step.fill_(stepsize)
        self.stats: dict = {"iterations": None, "converged": None}

    def get_config(self) -> dict:
        r"""Constructor keyword arguments except the denoiser: ``MoDLBaseline(denoiser=net, **cfg)`` rebuilds it.

        :return: JSON-serialisable dict.
        """
        return {
            "num_iter": self.num_iter,
            "stepsize": self.stepsize,
            "min_stepsize": self.min_stepsize,
            "init_max_iter": self.init_max_iter,
            "init_eps": self.init_eps,
            "scale_equivariant": self.scale_equivariant,
            "scale_reference": self.scale_reference,
        }

    @torch.no_grad()
    def project_stepsizes(self) -> None:
        r"""Clamp every step size :math:`\gamma_k` to ``>= min_stepsize`` in place (done before every call)."""
        for step in self.params_algo["stepsize"]:
            step.clamp_(min=self.min_stepsize)

    def start(self, y: Tensor, physics: LinearPhysics) -> Tensor:
        r"""The start image :math:`x_0` (see the class docstring).

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        return start_image(y, physics, eps=self.init_eps, max_iter=self.init_max_iter)

    def forward(
        self,
        y: Tensor,
        physics: LinearPhysics,
        init: Tensor | tuple | dict | None = None,
        x_gt: Tensor | None = None,
        compute_metrics: bool = False,
        **kwargs,
    ) -> Tensor | tuple[Tensor, dict]:
        r"""Run the unrolled network (deepinv's ``BaseOptim.forward`` conventions).

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param init: start image (default :meth:`start`), or anything deepinv's ``init`` accepts.
        :param torch.Tensor x_gt: ground truth, for the convergence metrics.
        :param bool compute_metrics: also return deepinv's per-layer metrics dict.
        :return: :math:`x_K`, or ``(x_K, metrics)`` when ``compute_metrics``.
        """
        self.project_stepsizes()
        scale = None
        if self.scale_equivariant:  # solve for y / s, return s x (the start image is homogeneous: x0(y/s) = x0(y)/s)
            start = self.start(y, physics)
            scale, y, init, x_gt = normalise_inputs(y, physics, start, self.scale_reference, init, x_gt)
        if init is None:
            init = self.start(y, physics)
        out = super().forward(y, physics, init=init, x_gt=x_gt, compute_metrics=compute_metrics, **kwargs)
        self.stats = {"iterations": self.num_iter, "converged": None,
                      "scale": None if scale is None else scale.flatten().tolist()}
        if scale is not None:
            out = (apply_scale(out[0], scale), out[1]) if compute_metrics else apply_scale(out, scale)
        return out


class _DirectReconstruction(Reconstructor):
    r"""A direct (non-iterative) reconstruction without constructor arguments: the ``stats`` before any call
    and the empty ``get_config`` of :class:`AdjointReconstruction` and :class:`FBPReconstruction`."""

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict = {"iterations": None, "converged": None}

    def get_config(self) -> dict:
        r"""Constructor keyword arguments (none).

        :return: ``{}``.
        """
        return {}


class AdjointReconstruction(_DirectReconstruction):
    r"""The no-learning image: :math:`A^H y` (zero-filled NUFFT adjoint / unfiltered back-projection), brought to
    the units of the image by the one scalar that best fits the measurements,

    .. math::

        \hat x = c\,A^H y, \qquad c = \arg\min_c \|c\,A A^H y - y\|_2^2
        = \frac{\mathrm{Re}\langle A A^H y, y\rangle}{\|A A^H y\|_2^2}

    (per batch item). Plain :math:`A^H y` is off by the scale of :math:`A^HA` (about 60x for the radial
    NUFFT of ``mri-radial-4x``, :math:`10^3` for fan-beam CT in line-integral units), which makes its PSNR
    meaningless (-20 to -60 dB); the rescaling uses the measurements only, never the ground truth.

    After a call, ``stats = {"iterations": None, "converged": True}`` (direct method, nothing iterated).

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim.baselines import AdjointReconstruction
    >>> physics = dinv.physics.Inpainting((1, 8, 8), mask=0.5)
    >>> model = AdjointReconstruction()
    >>> model(physics(torch.rand(1, 1, 8, 8)), physics).shape, model.stats, model.get_config()
    (torch.Size([1, 1, 8, 8]), {'iterations': None, 'converged': True}, {})
    """

    def forward(self, y: Tensor, physics: LinearPhysics, **kwargs) -> Tensor:
        r"""Return :math:`c\,A^H y`.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        x = physics.A_adjoint(y)
        ax = physics.A(x)
        dims = tuple(range(1, y.dim()))
        num = (ax.conj() * y).real.sum(dims)
        den = ax.abs().pow(2).sum(dims)
        c = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.zeros_like(den))
        self.stats = {"iterations": None, "converged": True}
        return x * c.reshape((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)


class CGReconstruction(Reconstructor):
    r"""Conjugate gradient on the lightly Tikhonov-regularised normal equations (CG-SENSE for MRI).

    .. math::

        (A^H A + \varepsilon \|A\|^2 I)\, \hat x = A^H y,

    solved as :math:`(I + \gamma A^HA)\hat x = \gamma A^H y`, :math:`\gamma = 1/(\varepsilon\|A\|^2)`, by
    :func:`deepinv_mol.optim.data_consistency.regularised_solve` (the project's one regularised solve) from zero.
    The relative weight :math:`\varepsilon` makes the baseline independent of the operator's scaling.
    :math:`\|A\|^2` comes from ``physics.compute_sqnorm`` (power method from a fixed start vector), computed once
    per physics object and image shape and cached in a :class:`weakref.WeakKeyDictionary` keyed by the object
    itself (never by ``id``, which Python reuses): modify a physics in place and the cached norm is stale, build
    a new physics instead.

    After a call, ``stats = {"iterations", "residual", "converged"}``: the CG iterations performed, the final
    relative residual and whether it reached ``tol`` (from the solver, not inferred).

    :param float eps: relative Tikhonov weight :math:`\varepsilon > 0`.
    :param int max_iter: CG iteration cap.
    :param float tol: relative residual tolerance.

    :Examples:

    >>> import torch, deepinv as dinv
    >>> from deepinv_mol.optim.baselines import CGReconstruction
    >>> physics = dinv.physics.Inpainting((1, 8, 8), mask=0.5)
    >>> model = CGReconstruction(eps=1e-2)
    >>> x_hat = model(physics(torch.rand(1, 1, 8, 8)), physics)
    >>> model.stats["iterations"], model.stats["converged"]  # A^H A is a projection: CG needs 1 iteration
    (1, True)
    """

    def __init__(self, eps: float = 1e-2, max_iter: int = 50, tol: float = 1e-5):
        super().__init__()
        self.eps = _positive_float("eps", eps)
        self.max_iter = _int_at_least("max_iter", max_iter, 1)
        self.tol = _positive_float("tol", tol)
        self.stats: dict = {"iterations": None, "converged": None}
        self._sqnorms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def get_config(self) -> dict:
        r"""Constructor keyword arguments: ``CGReconstruction(**cfg)`` rebuilds it.

        :return: JSON-serialisable dict.
        """
        return {"eps": self.eps, "max_iter": self.max_iter, "tol": self.tol}

    def sqnorm(self, physics: LinearPhysics, like: Tensor) -> float:
        r""":math:`\|A\|^2` of ``physics`` on images shaped like ``like`` (cached per physics object and shape).

        :param deepinv.physics.LinearPhysics physics: forward operator.
        :param torch.Tensor like: an image of the right shape, dtype and device.
        """
        key = (tuple(like.shape[1:]), like.dtype, str(like.device))
        try:
            cache = self._sqnorms.setdefault(physics, {})
        except TypeError:  # not weak-referenceable: recompute every time
            cache = {}
        if key not in cache:
            # a fixed start vector: the estimate, hence the baseline, must not depend on the global RNG
            x0 = torch.randn((1,) + key[0], generator=torch.Generator().manual_seed(0), dtype=like.dtype)
            value = float(physics.compute_sqnorm(x0.to(like.device), verbose=False))
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"the power method gave ||A||^2 = {value}: expected a positive finite number")
            cache[key] = value
        return cache[key]

    def forward(self, y: Tensor, physics: LinearPhysics, **kwargs) -> Tensor:
        r"""Solve the regularised normal equations.

        :param torch.Tensor y: measurements.
        :param deepinv.physics.LinearPhysics physics: forward operator.
        """
        b = physics.A_adjoint(y)
        gamma = 1.0 / (self.eps * self.sqnorm(physics, b))
        x, st = regularised_solve(physics, gamma * b, gamma, tol=self.tol, max_iter=self.max_iter)
        self.stats = {"iterations": int(st.iterations), "residual": float(st.residual), "converged": bool(st.converged)}
        return x


class FBPReconstruction(_DirectReconstruction):
    r"""Filtered back-projection (CT): ``physics.A_dagger(y, fbp=True)`` of :class:`deepinv_mol.physics.AstraCT`.

    After a call, ``stats = {"iterations": None, "converged": True}`` (direct method, nothing iterated).
    """

    def forward(self, y: Tensor, physics: LinearPhysics, **kwargs) -> Tensor:
        r"""Return the FBP image.

        :param torch.Tensor y: sinogram.
        :param deepinv_mol.physics.AstraCT physics: CT operator.
        :raises ValueError: the physics has no FBP (not a CT operator).
        """
        if "fbp" not in inspect.signature(physics.A_dagger).parameters:
            raise ValueError(f"'fbp' needs a CT physics with A_dagger(y, fbp=True); got {type(physics).__name__}")
        out = physics.A_dagger(y, fbp=True)
        self.stats = {"iterations": None, "converged": True}
        return out
