r"""Noise models for the physics: :class:`RelativeGaussianNoise` (Gaussian noise at a fixed SNR)."""

from __future__ import annotations

import math

import torch
from deepinv.physics import NoiseModel

__all__ = ["RelativeGaussianNoise"]


class RelativeGaussianNoise(NoiseModel):
    r"""White Gaussian noise at a fixed measurement signal-to-noise ratio, per batch item.

    .. math::

        y_b = A x_b + \sigma_b\, n_b, \qquad n_b \sim \mathcal{N}(0, I), \qquad
        \sigma_b = \sqrt{\tfrac{1}{M}\|A x_b\|_2^2}\; 10^{-\mathrm{SNR}/20},

    with :math:`M` the number of real entries of :math:`A x_b` (complex measurements count their real
    and imaginary parts), so :math:`10\log_{10}(\|Ax_b\|^2 / \mathbb{E}\|\sigma_b n_b\|^2) = \mathrm{SNR}`.
    Unlike :class:`deepinv.physics.GaussianNoise` the level follows the data's scale, so one preset
    serves images of any size or intensity. The last :math:`\sigma_b` are kept in ``self.sigma``.

    :param float snr_db: measurement SNR in decibels.
    :param torch.Generator rng: default random source (``None``: torch's global one).
    """

    def __init__(self, snr_db: float, rng: torch.Generator | None = None) -> None:
        super().__init__(rng=rng)
        if not math.isfinite(float(snr_db)):
            raise ValueError(f"snr_db must be finite, got {snr_db!r}")
        self.snr_db = float(snr_db)
        self.register_buffer("sigma", torch.zeros(1))

    def forward(self, y: torch.Tensor, seed: int | None = None, generator: torch.Generator | None = None, **kwargs):
        r"""Add the noise.

        :param torch.Tensor y: clean measurements ``(B, ...)``.
        :param int seed: reseed ``rng`` first (deepinv's convention).
        :param torch.Generator generator: random source for this call (overrides ``rng``).
        :return: noisy measurements.
        """
        self.rng_manual_seed(seed)
        generator = self.rng if generator is None else generator
        power = y.detach().reshape(y.shape[0], -1).pow(2).mean(1)
        sigma = power.sqrt() * 10.0 ** (-self.snr_db / 20.0)
        device = generator.device if generator is not None else y.device
        noise = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype).to(y.device)
        self.sigma = sigma
        return y + sigma.reshape((-1,) + (1,) * (y.dim() - 1)) * noise
