r"""Reconstructors and priors: :class:`MOL` (with its :class:`DataConsistencyConfig`), :class:`LUSER` (with
its feed-forward twin :class:`UnrolledFeedForward`) and :class:`MonotoneScorePrior`; the shared regularised
solve :func:`regularised_solve` and starting image :func:`start_image`."""

from .._lazy import lazy_names

_NAMES = {
    "MOL": ".mol",
    "DataConsistencyConfig": ".mol",
    "regularised_solve": ".data_consistency",
    "start_image": ".data_consistency",
    "MonotoneScorePrior": ".prior",
    "LUSER": ".luser",
    "UnrolledFeedForward": ".luser",
    "MoDLBaseline": ".baselines",
    "AdjointReconstruction": ".baselines",
    "CGReconstruction": ".baselines",
    "FBPReconstruction": ".baselines",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _NAMES)
