r"""Simulation of what real data lacks: MRI phase, motion, resizing; and the package's seeding and cropping.

Every random draw takes an explicit generator; :func:`item_generator` is the one way the package seeds them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = [
    "item_generator",
    "crop_window",
    "smooth_random_phase",
    "add_phase",
    "smooth_motion",
    "resize_images",
]


def item_generator(seed: int, *keys: int, device: torch.device | str | None = None) -> torch.Generator:
    r"""The one seeding scheme of the package: a generator seeded from ``(seed, *keys)`` through numpy's
    ``SeedSequence`` (well mixed: neighbouring keys give unrelated streams).

    Datasets key it by ``(epoch, item)``, training by ``(stream position)`` and ``(pass of the stream)``:
    every random draw is a pure function of the seed and its keys, so a resumed run draws the same.

    :param int seed: the user's seed.
    :param int keys: e.g. epoch and item index (any integers, negative ones included).
    :param device: device of the generator (CPU by default).
    :return: a seeded :class:`torch.Generator`.

    :Examples:

        >>> import torch
        >>> from deepinv_mol.data import item_generator
        >>> a = torch.rand(2, generator=item_generator(0, 1, 2))
        >>> torch.equal(a, torch.rand(2, generator=item_generator(0, 1, 2)))
        True
    """
    # SeedSequence takes non-negative words only: a negative k becomes 2**64 - k (non-negative keys unchanged)
    words = [int(k) if int(k) >= 0 else 2**64 - int(k) for k in (seed, *keys)]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return torch.Generator("cpu" if device is None else device).manual_seed(int(state[0]) << 32 | int(state[1]))


def smooth_random_phase(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    max_phase: float = math.pi,
    max_frequency: int = 2,
) -> torch.Tensor:
    r"""A smooth random phase map: a random low-frequency Fourier series.

    .. math::

        \phi(r) = c\,\Big(\varphi_0 + \sum_{\|k\|_\infty \le K,\,k \ne 0}
        \frac{a_k \cos(2\pi k\cdot r) + b_k \sin(2\pi k\cdot r)}{1 + \|k\|^2}\Big),
        \quad a_k, b_k \sim \mathcal{N}(0, 1),

    with ``r`` the pixel position in [0, 1) per axis, :math:`\varphi_0 \sim \mathcal{N}(0,1)` a
    global offset and ``c`` scaling :math:`\max|\phi|` to ``max_phase`` radians. The :math:`1/(1+\|k\|^2)`
    decay keeps it smooth, like the B0 / receive phase of real MRI.

    :param shape: ``(H, W)`` or ``(D, H, W)``.
    :param torch.Generator generator: random source (CPU).
    :param float max_phase: largest absolute phase in radians.
    :param int max_frequency: ``K``, the highest frequency per axis, in cycles per field of view.
    :return: float32 tensor of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) or (D, H, W) with positive sizes, got {shape}")
    ndim = len(shape)
    lattice = torch.cartesian_prod(*[torch.arange(-max_frequency, max_frequency + 1)] * ndim).reshape(-1, ndim)
    # half the frequency lattice: k and -k give the same cos/sin pair
    half = [i for i, k in enumerate(lattice.tolist()) if tuple(k) > (0,) * ndim]
    coefficients = torch.randn(len(half), 2, generator=generator, dtype=torch.float64)
    offset = torch.randn(1, generator=generator, dtype=torch.float64)
    weight = 1.0 / (1.0 + (lattice[half].to(torch.float64) ** 2).sum(1))
    # a cos + b sin = Re((a - i b) e^{i theta}): one separable inverse DFT instead of a loop of cosines
    spectrum = torch.zeros(len(lattice), dtype=torch.complex128)
    spectrum[half] = torch.complex(coefficients[:, 0], -coefficients[:, 1]) * weight
    spectrum = spectrum.reshape((2 * max_frequency + 1,) * ndim)
    frequencies = torch.arange(-max_frequency, max_frequency + 1, dtype=torch.float64)
    factors = [torch.exp(2j * math.pi * torch.outer(frequencies, torch.arange(n) / n)) for n in shape]
    letters = "abc"[:ndim]
    subscripts = letters + "," + ",".join(f"{c}{c.upper()}" for c in letters) + "->" + letters.upper()
    phase = torch.einsum(subscripts, spectrum, *factors).real + offset
    phase *= max_phase / phase.abs().max().clamp_min(1e-12)
    return phase.float()


def add_phase(magnitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    r"""Complex image :math:`m e^{i\phi}` as real and imaginary channels stacked on a new dim 0.

    :param torch.Tensor magnitude: ``(...)`` real.
    :param torch.Tensor phase: same shape, radians.
    :return: ``(2, ...)``.
    """
    if magnitude.shape != phase.shape:
        raise ValueError(f"magnitude {tuple(magnitude.shape)} and phase {tuple(phase.shape)} differ")
    return torch.stack([magnitude * torch.cos(phase), magnitude * torch.sin(phase)])


def smooth_motion(
    image: torch.Tensor,
    frames: int,
    generator: torch.Generator | None = None,
    max_shift: float = 0.06,
    max_rotation: float = 0.08,
    max_scale: float = 0.06,
) -> torch.Tensor:
    r"""A 2D+time sequence: ``image`` moved by smooth, periodic affine motion over ``frames`` frames.

    Frame :math:`t` applies, about the image centre, a translation
    :math:`s\,(\sin(2\pi t/T + \theta_1), \sin(2\pi t/T + \theta_2))`, a rotation
    :math:`\rho \sin(2\pi t/T + \theta_3)` and an anisotropic "breathing" scaling
    :math:`1 + \sigma \sin(2\pi t/T + \theta_4)` along one axis (a deformation, not a rigid move),
    one motion cycle over the sequence; amplitudes :math:`s, \rho, \sigma` are drawn uniformly up to
    ``max_shift`` (fraction of the field of view), ``max_rotation`` (radians), ``max_scale``. Resampled
    bilinearly with zero padding (real and imaginary channels alike).

    :param torch.Tensor image: ``(C, H, W)``.
    :param int frames: ``T``.
    :param torch.Generator generator: random source (CPU).
    :return: ``(C, T, H, W)``.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    draw = torch.rand(7, generator=generator, dtype=torch.float64)
    shift, rotation, scale = draw[0] * max_shift, draw[1] * max_rotation, draw[2] * max_scale
    theta = 2 * math.pi * draw[3:]
    t = 2 * math.pi * torch.arange(frames, dtype=torch.float64) / frames
    # affine_grid works in [-1, 1] coordinates: a shift of f * FOV is 2 f
    tx = 2 * shift * torch.sin(t + theta[0])
    ty = 2 * shift * torch.sin(t + theta[1])
    angle = rotation * torch.sin(t + theta[2])
    stretch = 1 + scale * torch.sin(t + theta[3])
    cos, sin = torch.cos(angle), torch.sin(angle)
    matrices = torch.stack(
        [
            torch.stack([cos * stretch, -sin, tx], dim=-1),
            torch.stack([sin * stretch, cos, ty], dim=-1),
        ],
        dim=1,
    ).to(image.dtype)
    grid = torch.nn.functional.affine_grid(matrices, (frames, image.shape[0]) + tuple(image.shape[1:]), align_corners=False)
    moved = torch.nn.functional.grid_sample(
        image.unsqueeze(0).expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return moved.transpose(0, 1).contiguous()


def resize_images(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    r"""Resize ``(N, H, W)`` or ``(N, C, H, W)`` images to ``size = (h, w)`` (bilinear, antialiased).

    :param torch.Tensor images: the images.
    :param size: target ``(h, w)``.
    """
    size = tuple(int(n) for n in size)
    if images.dim() == 3:
        return resize_images(images.unsqueeze(1), size).squeeze(1)
    if images.dim() != 4:
        raise ValueError(f"images must be (N, H, W) or (N, C, H, W), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) == size:
        return images
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def crop_window(shape: Sequence[int], crop: int | Sequence[int], generator: torch.Generator | None = None
                ) -> tuple[slice, slice]:
    r"""Rows and columns of a crop window: random offsets drawn from ``generator``, centred without one.

    :param shape: image ``(H, W)``.
    :param crop: window ``(h, w)`` or a side ``s`` for ``(s, s)``.
    :param torch.Generator generator: draws the offsets; ``None`` centres the window.
    :return: ``(rows, cols)`` slices, e.g. ``image[..., rows, cols]``.
    :raises ValueError: the window is larger than the images.

    :Examples:

        >>> from deepinv_mol.data import crop_window
        >>> crop_window((6, 6), 2)
        (slice(2, 4, None), slice(2, 4, None))
    """
    height, width = (int(n) for n in shape)
    ch, cw = _as_pair(crop)
    if ch > height or cw > width:
        raise ValueError(f"crop {ch}x{cw} is larger than the images ({height}x{width})")
    if generator is not None:
        top = int(torch.randint(0, height - ch + 1, (1,), generator=generator, device=generator.device))
        left = int(torch.randint(0, width - cw + 1, (1,), generator=generator, device=generator.device))
    else:
        top, left = (height - ch) // 2, (width - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def _as_pair(size):
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else tuple(int(n) for n in size)
