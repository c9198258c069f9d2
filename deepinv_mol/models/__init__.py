r"""Networks: :class:`MonotoneCNN` (the learned network :math:`H_\theta` of MOL) and
:class:`ShallowEquilibrium` (LUSER's shallow deep-equilibrium regularizer) with its feed-forward twin."""

from .._lazy import lazy_names

_NAMES = {
    "MonotoneCNN": ".monotone",
    "ShallowEquilibrium": ".shallow",
    "FeedForwardRegularizer": ".shallow",
    "conv_norm_bound": ".conv_norm",
    "converge_power_vectors": ".conv_norm",
}

__getattr__, __dir__, __all__ = lazy_names(__name__, _NAMES)
