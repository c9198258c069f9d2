r"""Reconstructors and priors: :class:`MOL`, :class:`LUSER` (with its feed-forward twin
:class:`UnrolledFeedForward`) and :class:`MonotoneScorePrior`."""

from .._lazy import lazy_names

_NAMES = {
    "MOL": ".mol",
    "MonotoneScorePrior": ".prior",
    "LUSER": ".luser",
    "UnrolledFeedForward": ".luser",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _NAMES)
