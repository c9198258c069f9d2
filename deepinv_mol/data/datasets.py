r"""Datasets: seeded, reproducible items (:class:`SliceDataset`, :class:`MotionDataset`, :class:`VolumeDataset`)
and the ground truth of any dataset (:class:`GroundTruthDataset`, :func:`image_of`).
"""

from __future__ import annotations

import math

import torch

from .simulation import _as_pair, add_phase, crop_window, item_generator, smooth_motion, smooth_random_phase
from .sources import SliceStack

__all__ = [
    "GroundTruthDataset",
    "image_of",
    "SliceDataset",
    "MotionDataset",
    "VolumeDataset",
]


class GroundTruthDataset(torch.utils.data.Dataset):
    r"""The ground-truth images ``x`` of a dataset whose items are ``x``, ``(x, ...)`` or ``{"x": ...}``.

    deepinv's real-data datasets return ``(x, y, params)`` or dicts; a task simulates its own
    measurements from ``x`` alone.

    :param torch.utils.data.Dataset dataset: the wrapped dataset.
    """

    def __init__(self, dataset: torch.utils.data.Dataset):
        super().__init__()
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return image_of(self.dataset[index])


def image_of(item) -> torch.Tensor:
    r"""The ground-truth image of a dataset item: a tensor, a dict with ``"x"`` or a tuple ``(x, ...)``.

    Real images come back as float32, complex ones unchanged.

    :param item: what the dataset returned.
    :return: the image tensor.

    :Examples:

        >>> import torch
        >>> from deepinv_mol.data import image_of
        >>> image_of({"x": torch.zeros(1, 4, 4, dtype=torch.float64), "y": 0}).dtype
        torch.float32
    """
    if isinstance(item, dict):
        if "x" not in item:
            raise ValueError(f"dataset items that are dicts need an 'x' entry, got keys {sorted(item)}")
        item = item["x"]
    elif isinstance(item, (tuple, list)):
        item = item[0]
    tensor = torch.as_tensor(item)
    return tensor if tensor.is_complex() else tensor.float()


class SliceDataset(torch.utils.data.Dataset):
    r"""2D images for a task: optional crop and flip, optional simulated smooth phase.

    Item ``i`` is a function of ``(seed, epoch, i)`` alone (:func:`item_generator`): the same every
    time it is read, new augmentation after :meth:`set_epoch`.

    :param torch.Tensor images: ``(N, H, W)`` magnitudes or ``(N, 2, H, W)`` complex images.
    :param crop_size: ``(h, w)`` or int; ``None`` keeps the full images.
    :param bool random_crop: random crop window (training); otherwise centred.
    :param bool flip: random left-right flips (training).
    :param bool complex: return ``(2, H, W)`` complex images, adding :func:`smooth_random_phase` to
        magnitudes; otherwise ``(1, H, W)`` magnitudes (complex input is then refused).
    :param float max_phase: largest phase of the simulated phase, radians.
    :param int seed: the seed of every random draw.
    """

    def __init__(
        self,
        images: torch.Tensor,
        crop_size: int | tuple[int, int] | None = None,
        random_crop: bool = False,
        flip: bool = False,
        complex: bool = False,
        max_phase: float = math.pi,
        seed: int = 0,
    ):
        super().__init__()
        if images.dim() == 4 and images.shape[1] == 2:
            if not complex:
                raise ValueError("complex (N, 2, H, W) images given to a magnitude (1-channel) dataset")
        elif images.dim() != 3:
            raise ValueError(f"images must be (N, H, W) or (N, 2, H, W), got {tuple(images.shape)}")
        self.images = images.float()
        self.crop_size = _as_pair(crop_size)
        if self.crop_size is not None:
            crop_window(tuple(images.shape[-2:]), self.crop_size)
        self.random_crop, self.flip, self.complex = random_crop, flip, complex
        self.max_phase, self.seed, self.epoch = max_phase, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        r"""Use the random draws of ``epoch`` (like ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _image(self, index, generator):
        image = self.images[index]
        if self.crop_size is not None:
            rows, cols = crop_window(tuple(image.shape[-2:]), self.crop_size, generator if self.random_crop else None)
            image = image[..., rows, cols]
        if self.flip and bool(torch.rand(1, generator=generator) < 0.5):
            image = image.flip(-1)
        return image

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = item_generator(self.seed, self.epoch, index)
        image = self._image(index, generator)
        # copies, never views: a caller editing an item in place must not change the dataset
        if not self.complex:
            return image.unsqueeze(0).clone()
        if image.dim() == 3:
            return image.clone()
        return add_phase(image, smooth_random_phase(image.shape, generator, self.max_phase))


class MotionDataset(SliceDataset):
    r"""2D+time sequences made from real slices: each image is moved by :func:`smooth_motion`.

    Items are ``(2, T, H, W)`` (complex; the phase moves with the anatomy) or ``(1, T, H, W)``.
    Parameters as :class:`SliceDataset`, plus:

    :param int frames: ``T``.
    :param dict motion: keyword arguments of :func:`smooth_motion` (amplitudes).
    """

    def __init__(self, images: torch.Tensor, frames: int = 8, motion: dict | None = None, **kwargs):
        super().__init__(images, **kwargs)
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.frames, self.motion = int(frames), dict(motion or {})

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = item_generator(self.seed, self.epoch, index)
        image = self._image(index, generator)
        if self.complex and image.dim() == 2:
            image = add_phase(image, smooth_random_phase(image.shape, generator, self.max_phase))
        elif image.dim() == 2:
            image = image.unsqueeze(0)
        return smooth_motion(image, self.frames, generator, **self.motion)


class VolumeDataset(torch.utils.data.Dataset):
    r"""3D volumes of ``depth`` consecutive slices of one slab (windows never straddle a gap).

    Windows start every ``stride`` slices inside each slab. Items are ``(2, D, H, W)`` with a smooth
    3D phase (:func:`smooth_random_phase`) or ``(1, D, H, W)``.

    :param SliceStack stack: slices with their positions and slabs.
    :param int depth: ``D``.
    :param int stride: step between window starts.
    :param crop_size: in-plane ``(h, w)`` crop or ``None``.
    :param bool random_crop: random in-plane window (training); otherwise centred.
    :param bool complex: add a smooth 3D phase.
    :param float max_phase: radians.
    :param int seed: the seed of every random draw.
    """

    def __init__(self, stack: SliceStack, depth: int = 16, stride: int = 8,
                 crop_size: int | tuple[int, int] | None = None,
                 random_crop: bool = False, complex: bool = True, max_phase: float = math.pi, seed: int = 0):
        super().__init__()
        if depth < 1 or stride < 1:
            raise ValueError(f"depth and stride must be >= 1, got {depth}, {stride}")
        self.stack, self.depth = stack, int(depth)
        self.starts = []
        for block in torch.unique(stack.blocks).tolist():
            index = torch.nonzero(stack.blocks == block).flatten()
            positions = stack.positions[index]
            if not bool((positions.diff() == 1).all() and (index.diff() == 1).all()):
                raise ValueError(f"slab {block} is not made of consecutive slices")
            self.starts += [int(index[0]) + s for s in range(0, len(index) - depth + 1, stride)]
        if not self.starts:
            raise ValueError(f"no slab holds {depth} consecutive slices")
        self.crop_size = _as_pair(crop_size)
        self.random_crop, self.complex, self.max_phase = random_crop, complex, max_phase
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        r"""Use the random draws of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = item_generator(self.seed, self.epoch, index)
        start = self.starts[index]
        volume = self.stack.images[start : start + self.depth]
        if volume.dim() == 4:  # complex slices (D, 2, H, W) -> (2, D, H, W)
            volume = volume.transpose(0, 1)
        if self.crop_size is not None:
            rows, cols = crop_window(tuple(volume.shape[-2:]), self.crop_size, generator if self.random_crop else None)
            volume = volume[..., rows, cols]
        if volume.dim() == 4:
            if not self.complex:
                raise ValueError("complex (N, 2, H, W) slices given to a magnitude (1-channel) volume dataset")
            return volume.clone()
        if not self.complex:
            return volume.unsqueeze(0).clone()
        return add_phase(volume, smooth_random_phase(volume.shape, generator, self.max_phase))
