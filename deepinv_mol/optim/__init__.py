r"""Reconstructors and priors: :class:`MOL`, :class:`LUSER` (with its feed-forward twin
:class:`UnrolledFeedForward`) and :class:`MonotoneScorePrior`."""

import importlib

_NAMES = {
    "MOL": ".mol",
    "MonotoneScorePrior": ".prior",
    "LUSER": ".luser",
    "UnrolledFeedForward": ".luser",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
