r"""Helpers shared by the physics operators (private)."""

from __future__ import annotations

import os

import torch

__all__ = ["is_functorch_wrapped", "refuse_if_too_large", "total_memory_bytes"]


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
