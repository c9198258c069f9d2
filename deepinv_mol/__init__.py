r"""deepinv-mol: memory-efficient, provably stable model-based deep learning for deepinv.

Sub-packages follow deepinv's layout:

* :mod:`deepinv_mol.physics` -- :class:`NufftMRI` (torchkbnufft) and :class:`AstraCT` (ASTRA, CPU and GPU);
* :mod:`deepinv_mol.models` -- :class:`MonotoneCNN` (MOL's network) and :class:`ShallowEquilibrium` (LUSER);
* :mod:`deepinv_mol.optim` -- :class:`MOL`, :class:`LUSER`, :class:`MonotoneScorePrior`, the baselines
  (:mod:`deepinv_mol.optim.baselines`) and the one data-consistency solve (:mod:`deepinv_mol.optim.data_consistency`);
* :mod:`deepinv_mol.loss` -- :class:`LipschitzPenalty`;
* :mod:`deepinv_mol.guarantees` -- Lipschitz estimates, certificates, worst-case perturbations;
* :mod:`deepinv_mol.equilibrium` -- the fixed-point / implicit-differentiation engine;
* :mod:`deepinv_mol.pretrained` -- the model registry and the shipped weights (:func:`load_pretrained`).

Heavy optional libraries (``astra``, ``torchkbnufft``, ``matplotlib``) are imported lazily.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "load_pretrained"]


def __getattr__(name: str) -> Any:
    # lazy: pretrained pulls in models and optim, which `import deepinv_mol` should not pay for
    if name == "load_pretrained":
        from .pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'deepinv_mol' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
