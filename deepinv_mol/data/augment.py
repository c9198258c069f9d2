r"""Training augmentation: random flips, 90° rotations, intensity scaling and global phase, drawn from a given
generator (the training stream's per-sample generator, so a run and its resumed continuation see the same data).

:class:`Augmentation` transforms a batch of ground-truth images ``(B, C, H, W)`` (or ``(B, C, D, H, W)``,
transformed in-plane) before the measurements are simulated:

* **zoom** (pixel size) -- each whole training image is resampled in-plane by ``1/z``, ``z`` drawn log-uniformly in
  ``zoom = (low, high)`` (capped so the crop still fits), *before* the training crop is taken (training on whole
  images, without a crop, skips it: the physics is built for their size): the models see
  anatomy at coarser pixels than the training volume's (a held-out subject scanned at 2 mm presents more
  structure per pixel than Colin27 at 1 mm; the generalisation study found pixel size the one shift that reorders
  MOL and MoDL, docs/pretrained.rst);
* **flips** -- left-right and up-down, each with probability 1/2;
* **rotations** -- by a random multiple of 90° in-plane (180° or none for non-square images, whose shape must not
  change: the physics is built for it); with the flips, the 8 symmetries of the square, which also present the
  anatomy to the (fixed) radial trajectory or fan-beam geometry in 8 orientations;
* **intensity** -- a factor drawn log-uniformly in ``intensity = (low, high)``; a scale-equivariant model
  (``scale_equivariant=True``) normalises it away up to the loss weight, a model without it learns from it;
* **phase** -- a uniform random global phase :math:`e^{i\varphi}` on complex (2-channel real/imaginary) images,
  on top of the dataset's smooth simulated phase (whose global offset is not uniform);
* **noise** (ground-truth noise, off by default, on for the MRI tasks: :attr:`deepinv_mol.tasks.Task.gt_noise`) --
  white Gaussian noise of a standard deviation drawn uniformly in ``noise = (low, high)`` (relative to the image's
  largest magnitude; on each of the real and imaginary channels of a complex image) added to the ground truth
  itself, before the measurements are simulated. The MRI training volume, Colin27, is an average of 27 scans: its
  in-brain noise (robust estimate from the finest diagonal wavelet band) is about 0.009 of the maximum, the held-out
  single-acquisition T1 of another subject has 0.038. A network trained only on the average learns that every
  noise-like detail is an artefact and removes it, also where the measurements carry it; the error against a
  single acquisition's ground truth then includes that noise (the generalisation study in docs/pretrained.rst:
  a larger data weight helped on the noisy subject and hurt on the clean one). Trained with noise of random
  level in the target, the network keeps what the data support and removes the rest.

What it does not do: random trajectory rotations or view-angle offsets of the physics (training uses one physics
object: a new NUFFT or projector per sample is not cheap on a CPU); the 90° rotations cover part of it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .simulation import resize_images

__all__ = ["Augmentation", "augmentation_from"]


#: the ``(low, high)`` options of :class:`Augmentation`: the lower bound in words and its check
_RANGES = {
    "intensity": ("0 < low", lambda low: low > 0),
    "zoom": ("1 <= low", lambda low: low >= 1),
    "noise": ("0 <= low", lambda low: low >= 0),
}


@dataclass(frozen=True)
class Augmentation:
    r"""Random symmetries and intensity changes of ground-truth images (see the module docstring).

    :param bool flips: random left-right and up-down flips.
    :param bool rotations: random multiples of 90° (of 180° for non-square images).
    :param tuple intensity: ``(low, high)``, ``0 < low <= high``, for a log-uniform intensity factor; ``None``: off.
    :param bool phase: uniform random global phase of complex (2-channel) images.
    :param tuple zoom: ``(low, high)``, ``1 <= low <= high``, for a log-uniform pixel-size factor applied by
        :meth:`rescale` before cropping; ``None``: off.
    :param tuple noise: ``(low, high)``, ``0 <= low <= high``, for a uniform standard deviation (relative to the
        image's largest magnitude) of white Gaussian noise added to the ground truth; ``None``: off.

    :Examples:

    >>> import torch
    >>> from deepinv_mol.data.augment import Augmentation
    >>> aug = Augmentation(intensity=(0.5, 2.0))
    >>> x = torch.rand(3, 2, 8, 8)
    >>> a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    >>> a.shape, bool(torch.equal(a, b))
    (torch.Size([3, 2, 8, 8]), True)
    >>> Augmentation(flips=False, rotations=False, intensity=None, phase=False)(x, torch.Generator()).equal(x)
    True
    """

    flips: bool = True
    rotations: bool = True
    intensity: tuple | None = (0.5, 2.0)
    phase: bool = True
    zoom: tuple | None = (1.0, 2.0)
    noise: tuple | None = None

    def __post_init__(self):
        for name in ("flips", "rotations", "phase"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Augmentation.{name} must be a bool, got {getattr(self, name)!r}")
        for name, (lower, low_ok) in _RANGES.items():  # the (low, high) options, each with its lower bound
            value = getattr(self, name)
            if value is None:
                continue
            rng = tuple(value)
            if (len(rng) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in rng)
                    or not all(math.isfinite(v) for v in rng) or not low_ok(rng[0]) or not rng[0] <= rng[1]):
                raise ValueError(f"Augmentation.{name} must be (low, high) with {lower} <= high, got {value!r}")
            object.__setattr__(self, name, (float(rng[0]), float(rng[1])))

    def to_dict(self) -> dict:
        r"""JSON-serialisable settings (``Augmentation(**aug.to_dict())`` rebuilds it)."""
        d = asdict(self)
        for name in _RANGES:
            d[name] = None if d[name] is None else list(d[name])
        return d

    def rescale(self, image: Tensor, generator: torch.Generator, min_side: int | None = None) -> Tensor:
        r"""Resample one image in-plane by ``1/z`` (bilinear, antialiased), ``z`` log-uniform in :attr:`zoom`.

        :param torch.Tensor image: ``(C, ..., H, W)``, one whole training image (before the crop).
        :param torch.Generator generator: the random source; one draw, taken even when :attr:`zoom` is ``None``.
        :param int min_side: the crop side; ``z`` is capped at ``min(H, W) / min_side`` so the crop still fits.
        :return: the resampled image ``(C, ..., round(H/z), round(W/z))`` (the image itself when ``z = 1``).
        """
        u = float(torch.rand(1, generator=generator, dtype=torch.float64, device=generator.device))
        if self.zoom is None:
            return image
        low, high = self.zoom
        z = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        height, width = image.shape[-2:]
        if min_side is not None:
            z = min(z, min(height, width) / int(min_side))
        size = (max(1, round(height / z)), max(1, round(width / z)))
        if z <= 1.0 or size == (height, width):
            return image
        flat = image.reshape(-1, 1, height, width)
        return resize_images(flat, size).reshape(*image.shape[:-2], *size)

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        r"""Augment each image of the batch with its own draws.

        :param torch.Tensor x: ``(B, C, ..., H, W)`` ground truth (real; ``C = 2`` is read as real/imaginary).
        :param torch.Generator generator: the random source (CPU); the draws per image are, in order: two flips,
            a rotation, an intensity factor, a phase (each drawn even when its option is off, so switching one
            option does not change the others' draws), then, only when :attr:`noise` is on, a level and the noise
            field (so the streams of runs recorded before the option existed replay unchanged).
        :return: the augmented batch, same shape.
        """
        if not isinstance(x, Tensor) or x.ndim < 4:
            raise ValueError(f"x must be a batch of images (B, C, ..., H, W), got {getattr(x, 'shape', type(x).__name__)}")
        out = []
        square = x.shape[-1] == x.shape[-2]
        for image in x:
            u = torch.rand(5, generator=generator, dtype=torch.float64, device=generator.device).tolist()
            if self.flips and u[0] < 0.5:
                image = image.flip(-1)
            if self.flips and u[1] < 0.5:
                image = image.flip(-2)
            if self.rotations:
                quarter = int(u[2] * 4) % 4 if square else 2 * (int(u[2] * 2) % 2)
                if quarter:
                    image = torch.rot90(image, quarter, dims=(-2, -1))
            if self.intensity is not None:
                low, high = self.intensity
                image = image * math.exp(math.log(low) + u[3] * (math.log(high) - math.log(low)))
            if self.phase and image.shape[0] == 2:
                angle = 2 * math.pi * u[4]
                c, s = math.cos(angle), math.sin(angle)
                image = torch.stack([c * image[0] - s * image[1], s * image[0] + c * image[1]])
            if self.noise is not None:
                low, high = self.noise
                level = low + float(torch.rand(1, generator=generator, dtype=torch.float64,
                                               device=generator.device)) * (high - low)
                field = torch.randn(image.shape, generator=generator, dtype=image.dtype, device=generator.device)
                peak = (image.pow(2).sum(0).sqrt() if image.shape[0] == 2 else image.abs()).amax()
                image = image + (level * peak) * field.to(image.device)
            out.append(image.contiguous())
        return torch.stack(out)


def augmentation_from(spec, default: Augmentation | None = None) -> Augmentation | None:
    r"""An :class:`Augmentation` from a flag or settings: ``True``/``"on"`` the defaults, ``False``/``None``/``"off"``
    none, a dict its fields (e.g. a manifest's recorded ``augment``), an :class:`Augmentation` itself.

    :param spec: ``bool``, ``None``, ``"on"``/``"off"``, ``dict`` or :class:`Augmentation`.
    :param Augmentation default: what ``True``/``"on"`` means (``None``: ``Augmentation()``); training passes the
        task's (:attr:`deepinv_mol.tasks.Task.gt_noise`).
    :return: the augmentation or ``None``.

    :Examples:

    >>> from deepinv_mol.data.augment import augmentation_from
    >>> augmentation_from("off") is None, augmentation_from(True).to_dict()["intensity"]
    (True, [0.5, 2.0])
    """
    if isinstance(spec, Augmentation) or spec is None:
        return spec
    on = Augmentation() if default is None else default
    if isinstance(spec, bool):
        return on if spec else None
    if isinstance(spec, str):
        if spec not in ("on", "off"):
            raise ValueError(f"augment must be 'on' or 'off', got {spec!r}")
        return on if spec == "on" else None
    if isinstance(spec, dict):
        # records written before the zoom or the noise existed had neither
        return Augmentation(**{"zoom": None, "noise": None, **spec})
    raise TypeError(f"augment must be a bool, 'on'/'off', a dict of Augmentation fields or an Augmentation, got {spec!r}")
