r"""Helpers shared by the physics operators (private)."""

from __future__ import annotations

import os
from typing import Any, Callable

import torch

__all__ = ["is_functorch_wrapped", "linear_map_function", "power_iteration", "refuse_if_too_large", "spatial_size", "total_memory_bytes"]


def is_functorch_wrapped(t: torch.Tensor) -> bool:
    """Whether ``t`` is a torch.func (vmap/grad) wrapper, on which data-dependent checks cannot run."""
    try:
        return bool(torch._C._functorch.is_functorch_wrapped_tensor(t))
    except AttributeError:  # pragma: no cover (old torch)
        return False


def total_memory_bytes() -> int | None:
    """Physical memory of the machine (``None`` when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def refuse_if_too_large(what: str, n_bytes: float, hint: str) -> None:
    """Raise a ValueError naming the size in GiB when ``n_bytes`` exceeds the machine's memory."""
    total = total_memory_bytes()
    if total is not None and n_bytes > total:
        raise ValueError(
            f"{what} needs about {n_bytes / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory; {hint}"
        )


def linear_map_function(
    name: str,
    doc: str,
    run: Callable[[torch.Tensor, Any, Any], torch.Tensor],
    adjoint_mode: Callable[[Any], Any],
    fold_vmap: bool,
) -> type:
    r"""A new-style autograd Function ``F.apply(x, physics, mode)`` of a linear map (``torch.func`` ready):
    the forward runs ``run(x, physics, mode)``; the backward is the map of ``adjoint_mode(mode)`` (the matched
    adjoint); the forward-mode derivative of a linear map is the map itself; under ``vmap`` the mapped
    dimension is folded into the batch (``fold_vmap=True``) or the map runs once per mapped slice.

    :param str name: the class name.
    :param str doc: the class docstring.
    :param run: ``run(x, physics, mode)``, the raw (non-differentiable) map.
    :param adjoint_mode: the mode of the adjoint of ``mode``.
    :param bool fold_vmap: fold the vmapped dimension into the batch (one call) rather than one call per slice.
    :return: the :class:`torch.autograd.Function` subclass.

    :Examples:

    >>> import torch
    >>> Scale = linear_map_function("Scale", "x * physics * mode", lambda x, p, m: x * p * m, lambda m: m, True)
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> Scale.apply(x, 2.0, 3.0).sum().backward()
    >>> x.grad[0, 0].item(), torch.func.vmap(lambda u: Scale.apply(u, 2.0, 1.0))(torch.ones(4, 2, 3)).shape
    (6.0, torch.Size([4, 2, 3]))
    """

    class LinearMap(torch.autograd.Function):
        @staticmethod
        def forward(x, physics, mode):
            return run(x, physics, mode)

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.physics, ctx.mode = inputs[1], inputs[2]

        @staticmethod
        def backward(ctx, grad):
            return LinearMap.apply(grad, ctx.physics, adjoint_mode(ctx.mode)), None, None

        @staticmethod
        def jvp(ctx, tangent, _physics, _mode):
            return LinearMap.apply(tangent, ctx.physics, ctx.mode)

        @staticmethod
        def vmap(info, in_dims, x, physics, mode):
            if in_dims[0] is None:
                return LinearMap.apply(x, physics, mode), None
            if not fold_vmap:
                return torch.stack([LinearMap.apply(u, physics, mode) for u in x.unbind(in_dims[0])]), 0
            x = x.movedim(in_dims[0], 0)
            out = LinearMap.apply(x.reshape((-1,) + x.shape[2:]), physics, mode)
            return out.reshape(x.shape[:2] + out.shape[1:]), 0

    LinearMap.__name__ = LinearMap.__qualname__ = name
    LinearMap.__doc__ = doc
    return LinearMap


def power_iteration(
    step: Callable[[torch.Tensor], tuple[torch.Tensor, float]],
    x: torch.Tensor,
    max_iter: int = 100,
    rtol: float = 1e-6,
) -> float | None:
    r"""The power method's loop: ``x, estimate = step(x)`` until two successive estimates agree to ``rtol``
    (relative) or ``max_iter`` steps. ``step`` normalises its input, applies the normal operator
    :math:`A^H A` and returns the image with the Rayleigh quotient; the caller chooses the normalisation
    (whole batch or per item) and runs the loop under ``torch.no_grad()``.

    :param step: ``step(x) -> (A^H A x_normalised, rayleigh_quotient)``.
    :param torch.Tensor x: start vector.
    :param int max_iter: step cap.
    :param float rtol: relative agreement of two successive estimates that stops the loop.
    :return: the last estimate of :math:`\|A\|^2` (``None`` when ``max_iter`` is 0).

    :Examples:

    >>> import torch
    >>> d = torch.tensor([3.0, 1.0])
    >>> def step(x):
    ...     x = x / x.norm()
    ...     z = d * x
    ...     return z, float((x * z).sum())
    >>> round(power_iteration(step, torch.ones(2)), 4)
    3.0
    """
    estimate = None
    for _ in range(max_iter):
        x, new = step(x)
        if estimate is not None and abs(new - estimate) <= rtol * abs(new):
            return new
        estimate = new
    return estimate


def spatial_size(img_size, minimum: int = 1) -> tuple[int, ...]:
    r"""``img_size`` checked as ``(H, W)`` or ``(D, H, W)`` of ints ``>= minimum`` (bools refused).

    :param img_size: tuple, list or :class:`torch.Size`.
    :param int minimum: smallest side allowed.
    :return: the size as a tuple.
    :raises ValueError: naming what was expected.

    >>> spatial_size([4, 5])
    (4, 5)
    >>> spatial_size((1, 8), minimum=2)
    Traceback (most recent call last):
    ...
    ValueError: img_size entries must be ints >= 2, got (1, 8)
    """
    size = tuple(img_size) if isinstance(img_size, (tuple, list, torch.Size)) else None
    if size is None or len(size) not in (2, 3):
        raise ValueError(f"img_size must be (H, W) or (D, H, W), got {img_size!r}")
    for n in size:
        if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
            expected = "positive ints" if minimum == 1 else f"ints >= {minimum}"
            raise ValueError(f"img_size entries must be {expected}, got {img_size!r}")
    return size
