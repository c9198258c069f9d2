r"""Lazy attribute resolution for sub-package ``__init__`` modules (one mechanism for all of them).

``import deepinv_mol.physics`` must not import torchkbnufft or ASTRA, nor ``deepinv_mol.models`` every
network: each sub-package maps its public names to the submodule that defines them and imports that
submodule on first access (PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import importlib


def lazy_names(package: str, names: dict[str, str]):
    r"""Module-level ``__getattr__``, ``__dir__`` and ``__all__`` resolving ``names`` on first access.

    :param str package: the sub-package's ``__name__``.
    :param dict names: public name -> relative submodule (e.g. ``{"NufftMRI": ".mri"}``).
    :return: ``(__getattr__, __dir__, __all__)``.
    """
    public = sorted(names)

    def __getattr__(name):
        if name in names:
            return getattr(importlib.import_module(names[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return public

    return __getattr__, __dir__, public
