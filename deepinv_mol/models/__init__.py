r"""Networks: :class:`MonotoneCNN` (the learned network :math:`H_\theta` of MOL) and
:class:`ShallowEquilibrium` (LUSER's shallow deep-equilibrium regularizer) with its feed-forward twin."""

import importlib

_NAMES = {
    "MonotoneCNN": ".monotone",
    "ShallowEquilibrium": ".shallow",
    "FeedForwardRegularizer": ".shallow",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
