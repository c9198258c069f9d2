r"""Training losses: :class:`LipschitzPenalty` (log-barrier on a local Lipschitz estimate of MOL's network)."""

from .lipschitz import LipschitzPenalty

__all__ = ["LipschitzPenalty"]
