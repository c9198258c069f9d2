r"""Named experiment presets: physics + noise + data split, one registry for CLI, tests, docs, benchmarks.

======================== ========================================================== ==============================
task                     physics and noise                                          images (test split)
======================== ========================================================== ==============================
``mri-radial-4x``        8-coil golden-angle radial NUFFT, 4x fewer spokes than     ``(2, 160, 160)`` Colin27 T1
                         Nyquist, 30 dB
``mri-radial-dynamic``   2D+time, 8 coils, one golden-angle trajectory per frame    ``(2, 8, 96, 96)`` moving slices
                         (8x per frame), 30 dB
``mri-3d``               stack-of-stars 3D NUFFT (Cartesian kz, golden-angle        ``(2, 16, 80, 80)`` slabs
                         radial in-plane 4x), 8 coils, 30 dB
``ct-sparse-view``       2D fan beam, 60 views over 360 degrees, 40 dB              ``(1, 160, 160)`` head CT
``ct-3d-cone``           3D cone beam, 60 views, 40 dB -- CUDA GPU only             ``(1, 8, 160, 160)`` head CT
======================== ========================================================== ==============================

Training images are cropped to :attr:`Task.train_crop` (128 for the 2D tasks; ``None`` for the
smaller 2D+time and 3D images), sizes chosen for a 2-core CPU. Noise is set as a measurement SNR
(:class:`RelativeGaussianNoise`); at 30 dB, CG on the normal equations of ``mri-radial-4x`` (one
128 x 128 test crop) reached 30.2 dB PSNR after 10 iterations, 25.7 dB after 30 (it fits the noise),
against 45 dB after 100 iterations without noise. The CT tasks read the real
head CT when Debian's ``invesalius-examples`` is installed and the embedded MRI slices otherwise
(with a warning), so their images depend on the machine.

Every task offers:

* :meth:`Task.build_physics` ``(img_shape, device, generator)``: the physics for the size of the
  images it will see (training crops, full test images, a user's stack);
* :meth:`Task.simulate` ``(x, physics, generator)``: :math:`y = Ax + n`, with the task's noise
  (:class:`RelativeGaussianNoise`: per-image measurement SNR in dB, so it does not depend on the
  images' scale; also installed as ``physics.noise_model``, so ``physics(x)`` does the same);
* :meth:`Task.dataset` ``(split)``: ground-truth images of the embedded (or real CT) data, complex
  ``(2, ...)`` for MRI with a simulated smooth phase, ``(1, ...)`` for CT; :meth:`Task.dataset_from`
  the same for a user's image stack. :attr:`Task.train_crop` is the training crop sized for a 2-core CPU.

:func:`get_task` returns a task by name (``get_task(name, snr_db=25)`` overrides a setting),
:func:`list_tasks` the names.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import torch

from . import data
from .physics.noise import RelativeGaussianNoise

__all__ = ["Task", "RelativeGaussianNoise", "get_task", "list_tasks"]


@dataclasses.dataclass(frozen=True)
class Task:
    r"""A named preset: physics, noise and data split. Use :func:`get_task`; subclasses define the physics.

    :param str name: registry name.
    :param str description: one line.
    :param str modality: ``"mri"`` or ``"ct"``.
    :param int spatial_dims: 2 (images), 3 (volumes or 2D+time sequences).
    :param float snr_db: measurement SNR of :class:`RelativeGaussianNoise`.
    :param int train_crop: recommended square training crop (``None``: whole images).
    :param tuple image_size: in-plane size ``(H, W)`` of the dataset images (slices are resized to it).
    :param bool requires_gpu: the physics needs a CUDA GPU.
    :param float data_weight: initial data weight of the learned models trained on this task (MOL's
        :math:`\lambda` with :math:`\alpha = 1`, MoDL's data-step size), matched to the scale of the task's
        operator, whose :math:`\|A\|^2` is about 40 (radial NUFFT, 64² crops) or 4000 (fan-beam CT in pixel
        units). Measured with an untrained network on the 64² validation crops: ``mri-radial-4x`` 35.2 dB at
        :math:`\lambda = 3`, 34.5 at 10, 31.0 at 1; ``ct-sparse-view`` 36.1 dB at 0.1, 35.4 at 0.01, 28.4 at
        10 (where the data term fits the noise). The defaults leave the network a little more room than
        these untrained optima.
    :param tuple gt_noise: ``(low, high)`` noise levels the training augmentation adds to the ground truth
        (:class:`deepinv_mol.data.augment.Augmentation`, ``noise``), or ``None``. The MRI tasks set ``(0, 0.05)``:
        their training images (Colin27, an average of 27 scans) are about 4x less noisy than a single acquisition
        (the held-out T1 subject: 0.038 of the maximum); the CT tasks none (the head CT is a single acquisition,
        as clean as its held-out slabs: 0.002).
    """

    name: str
    description: str
    modality: str
    spatial_dims: int = 2
    snr_db: float = 30.0
    train_crop: int | None = 128
    image_size: tuple = (160, 160)
    requires_gpu: bool = False
    data_weight: float = 2.0
    gt_noise: tuple | None = None

    def __post_init__(self):
        self._validate()

    def _validate(self):
        # every setting checked when a task is made, so a bad override fails in get_task, naming the setting
        if self.modality not in ("mri", "ct"):
            raise ValueError(f"modality must be 'mri' or 'ct', got {self.modality!r}")
        _check_number("snr_db", self.snr_db, finite=True)
        _check_number("data_weight", self.data_weight, positive=True, finite=True)
        if self.gt_noise is not None:
            from .data.augment import Augmentation

            Augmentation(noise=self.gt_noise)  # the range is checked where it is used
        if self.train_crop is not None:
            _check_int("train_crop", self.train_crop, minimum=4)
        size = self.image_size
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError(f"image_size must be a pair (H, W), got {size!r}")
        for n in size:
            _check_int("image_size", n, minimum=4)

    def data_source(self) -> str:
        r"""Which images :meth:`dataset` reads: ``"embedded"`` (the Colin27 MRI slices shipped in the package)
        or, for the CT tasks, ``"head-ct"`` when the real head CT is installed."""
        return "embedded"

    # ----------------------------------------------------------------------------- shapes

    @property
    def channels(self) -> int:
        r"""Image channels: 2 (complex MRI) or 1 (CT attenuation)."""
        return 2 if self.modality == "mri" else 1

    def spatial_shape(self, img_shape: Sequence[int]) -> tuple[int, ...]:
        r"""The spatial part of ``img_shape``, which may be spatial only, ``(C, ...)`` or ``(B, C, ...)``.

        :param img_shape: e.g. ``(160, 160)``, ``(2, 160, 160)`` or ``(4, 2, 160, 160)`` for a 2D MRI task.
        :raises ValueError: wrong number of dimensions or channels.
        """
        shape = tuple(int(n) for n in img_shape)
        n = self.spatial_dims
        if len(shape) in (n + 1, n + 2):
            if shape[-n - 1] != self.channels:
                raise ValueError(
                    f"task {self.name!r} expects {self.channels}-channel images, got img_shape {shape}"
                )
            shape = shape[-n:]
        if len(shape) != n or min(shape) < 1 or min(shape[-2:]) < 4:
            raise ValueError(
                f"task {self.name!r} expects img_shape {self._layout()} (channel and batch optional), got {img_shape}"
            )
        return shape

    def _layout(self) -> str:
        return "(C, H, W)" if self.spatial_dims == 2 else "(C, D, H, W)"

    def _check_images(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"task {self.name!r} expects images (B, {self.channels}, ...) with {self.spatial_dims} "
                f"spatial dims, got {tuple(x.shape)}"
            )

    # ----------------------------------------------------------------------------- physics

    def build_physics(
        self, img_shape: Sequence[int], device: str | torch.device = "cpu", generator: torch.Generator | None = None
    ):
        r"""The task's physics for images of ``img_shape``, with its noise model installed.

        :param img_shape: spatial shape, optionally with channel and batch dims in front.
        :param device: device of the physics.
        :param torch.Generator generator: random source of the physics' own randomness (e.g. the
            trajectory's rotation); ``None`` gives the deterministic default.
        :return: a :class:`deepinv.physics.LinearPhysics` whose ``noise_model`` is the task's.
        """
        physics = self._physics(self.spatial_shape(img_shape), torch.device(device), generator)
        physics.noise_model = RelativeGaussianNoise(self.snr_db)
        return physics

    def _physics(self, spatial, device, generator):
        raise NotImplementedError

    def simulate(self, x: torch.Tensor, physics, generator: torch.Generator | None = None) -> torch.Tensor:
        r"""Measurements :math:`y = Ax + n` with the task's noise (:class:`RelativeGaussianNoise`).

        :param torch.Tensor x: ground truth ``(B, C, ...)``.
        :param physics: from :meth:`build_physics`.
        :param torch.Generator generator: random source of the noise.
        :return: ``y``, shaped as ``physics.A(x)``.
        """
        self._check_images(x)
        noise = RelativeGaussianNoise(self.snr_db)
        with torch.no_grad():
            return noise(physics.A(x), generator=generator)

    # ----------------------------------------------------------------------------- data

    def dataset(self, split: str, seed: int = 0) -> torch.utils.data.Dataset:
        r"""Ground-truth images of the task's default data, split ``"train"``, ``"val"`` or ``"test"``.

        Training items get random flips and new phases after ``set_epoch``; validation and test items
        are fixed by ``seed``. Full-size images: training code crops them (:attr:`train_crop`). Training and
        validation never read the test slabs; for the CT tasks these are the held-out set ``"head-ct"`` of
        :func:`deepinv_mol.data.heldout_images` (other subjects for MRI: ``"itk-t1"``, ``"dipy-t1"``).

        :param str split: the split.
        :param int seed: seed of the simulated phase, motion and flips.
        """
        if split not in data.SPLITS:
            raise ValueError(f"split must be one of {data.SPLITS}, got {split!r}")
        return self._dataset(self._slices(split), split == "train", seed)

    def dataset_from(self, images: torch.Tensor, seed: int = 0) -> torch.utils.data.Dataset:
        r"""A user's images in the task's layout (e.g. from :func:`deepinv_mol.data.load_image_stack`).

        :param torch.Tensor images: ``(N, H, W)`` magnitudes or ``(N, 2, H, W)`` complex (MRI only);
            for volume tasks the ``N`` slices are taken as consecutive.
        :param int seed: seed of the simulated phase / motion.
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() == 4 and images.shape[1] == 2 and self.modality == "ct":
            raise ValueError(f"task {self.name!r} takes real (N, H, W) images, got complex (N, 2, H, W)")
        if images.dim() not in (3, 4):
            raise ValueError(f"images must be (N, H, W) or (N, 2, H, W), got {tuple(images.shape)}")
        positions = torch.arange(images.shape[0])
        return self._dataset(data.SliceStack(images.float(), positions, torch.zeros_like(positions)), False, seed)

    def _slices(self, split) -> data.SliceStack:
        stack = data.load_embedded(split)
        return stack._replace(images=data.resize_images(stack.images, self.image_size))

    def _dataset(self, stack, train, seed):
        return data.SliceDataset(stack.images, flip=train, complex=self.modality == "mri", seed=seed)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"task setting {name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"task setting {name} must be >= {minimum}, got {value}")


def _check_number(name, value, positive=False, finite=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"task setting {name} must be a number, got {type(value).__name__} {value!r}")
    if finite and not math.isfinite(value):
        raise ValueError(f"task setting {name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"task setting {name} must be > 0, got {value}")


def _coil_maps(n_coils: int, size, generator) -> torch.Tensor:
    # seeded simulated coils: the birdcage's radius (coil distance, hence sensitivity fall-off) varies
    from .physics import birdcage_maps

    radius = 1.5 if generator is None else 1.2 + 0.8 * float(torch.rand(1, generator=generator))
    return birdcage_maps(n_coils, tuple(size), radius=radius)


def _rotate(trajectory: torch.Tensor, generator) -> torch.Tensor:
    # a random in-plane rotation of the k-space trajectory (rows 0, 1 of the last two coordinates)
    if generator is None:
        return trajectory
    angle = float(torch.rand(1, generator=generator)) * 2 * math.pi
    kx, ky = trajectory[..., -2, :], trajectory[..., -1, :]
    rotated = torch.stack([kx * math.cos(angle) - ky * math.sin(angle), kx * math.sin(angle) + ky * math.cos(angle)], -2)
    rotated = torch.remainder(rotated + math.pi, 2 * math.pi) - math.pi
    return torch.cat([trajectory[..., :-2, :], rotated], dim=-2)


@dataclasses.dataclass(frozen=True)
class RadialMRITask(Task):
    r"""2D multi-coil golden-angle radial MRI (:class:`deepinv_mol.physics.NufftMRI`).

    ``ceil(pi N / (2 R))`` spokes (:func:`~deepinv_mol.physics.spokes_for_acceleration`) of ``2 N``
    samples for an ``N``-pixel image side (readout oversampled twice); birdcage coil maps
    (:func:`~deepinv_mol.physics.birdcage_maps`, radius 1.5). With a ``generator``, the physics is
    simulated anew: trajectory rotated by a random angle, coil radius drawn in [1.2, 2.0].
    Measurements ``(B, 2, C, K)``.

    :param int n_coils: receive coils.
    :param float acceleration: undersampling factor ``R`` of the spokes.
    """

    n_coils: int = 8
    acceleration: float = 4.0
    gt_noise: tuple | None = (0.0, 0.05)

    def _validate(self):
        super()._validate()
        _check_int("n_coils", self.n_coils, minimum=1)
        _check_number("acceleration", self.acceleration, positive=True, finite=True)

    def _trajectory(self, size, generator, frames: int | None = None) -> torch.Tensor:
        # the radial recipe of every MRI task: spokes for the acceleration on the (H, W) plane, readout
        # oversampled twice, golden angle (continued over ``frames``), randomly rotated with a generator
        from .physics import radial_trajectory, spokes_for_acceleration

        spokes = spokes_for_acceleration(size, self.acceleration)
        return _rotate(radial_trajectory(spokes, 2 * max(size), frames=frames), generator)

    def _physics(self, spatial, device, generator):
        from .physics import NufftMRI

        trajectory = self._trajectory(spatial, generator)
        coils = _coil_maps(self.n_coils, spatial, generator)
        # normalize=False: the shipped weights were trained on the unnormalised operator (API.md, "Physics normalisation")
        return NufftMRI(trajectory, spatial, coil_maps=coils, device=device, normalize=False)


@dataclasses.dataclass(frozen=True)
class DynamicMRITask(RadialMRITask):
    r"""2D+time radial MRI: one golden-angle trajectory per frame (the acquisition continues from frame
    to frame), ``R``-fold undersampled per frame; images are real slices moved by smooth periodic
    affine motion (:func:`deepinv_mol.data.smooth_motion`). Images ``(2, T, H, W)``, measurements
    ``(B, 2, T, C, K)``.

    :param int frames: ``T``.
    """

    frames: int = 8

    def _validate(self):
        super()._validate()
        _check_int("frames", self.frames, minimum=1)

    def _physics(self, spatial, device, generator):
        from .physics import NufftMRI

        frames, height, width = spatial
        trajectory = self._trajectory((height, width), generator, frames=frames)
        coils = _coil_maps(self.n_coils, (height, width), generator)
        return NufftMRI(trajectory, (height, width), coil_maps=coils, device=device, normalize=False)

    def _layout(self):
        return "(C, T, H, W)"

    def _dataset(self, stack, train, seed):
        return data.MotionDataset(stack.images, frames=self.frames, flip=train, complex=True, seed=seed)


@dataclasses.dataclass(frozen=True)
class StackOfStarsMRITask(RadialMRITask):
    r"""3D stack-of-stars MRI on a slab of consecutive slices: every ``kz`` partition of the Cartesian
    grid (:math:`k_z = 2\pi j / D`, :math:`j = -D/2, \dots, D/2 - 1`) is sampled, each by golden-angle
    radial spokes in-plane (``R``-fold undersampled; the golden-angle sequence continues from one
    partition to the next), through a 3D NUFFT. Coil maps are the 2D birdcage maps, constant along the
    slab. Images ``(2, D, H, W)``, measurements ``(B, 2, C, K)``.

    :param int depth: slices per volume ``D``.
    """

    depth: int = 16

    def _validate(self):
        super()._validate()
        _check_int("depth", self.depth, minimum=1)

    def _physics(self, spatial, device, generator):
        from .physics import NufftMRI

        depth, height, width = spatial
        in_plane = self._trajectory((height, width), generator, frames=depth)
        kz = 2 * math.pi * (torch.arange(depth, dtype=torch.float32) - depth // 2) / depth
        kz = kz[:, None, None].expand(depth, 1, in_plane.shape[-1])
        trajectory = torch.cat([kz, in_plane], dim=1).permute(1, 0, 2).reshape(3, -1)
        # a 16-slice slab is thin next to the coils: 2D maps, constant along z
        coils = _coil_maps(self.n_coils, (height, width), generator)[:, None].expand(-1, depth, -1, -1).contiguous()
        return NufftMRI(trajectory, spatial, coil_maps=coils, device=device, normalize=False)

    def _layout(self):
        return "(C, D, H, W)"

    def _dataset(self, stack, train, seed):
        stride = max(1, self.depth // 4) if train else self.depth
        return data.VolumeDataset(stack, depth=self.depth, stride=stride, complex=True, seed=seed)


@dataclasses.dataclass(frozen=True)
class FanBeamCTTask(Task):
    r"""2D fan-beam CT (:class:`deepinv_mol.physics.AstraCT`, ASTRA on CPU or GPU): ``views``
    equispaced projections over :math:`2\pi`, flat detector with ASTRA's default geometry
    (source at twice the image diagonal). Images are normalised linear attenuation
    (:func:`deepinv_mol.data.hounsfield_to_attenuation`), pixel size 1: line integrals in pixels.
    Real head CT (:func:`deepinv_mol.data.load_head_ct`) when Debian's ``invesalius-examples`` is
    installed, otherwise the embedded MRI slices with a warning (``source="embedded"`` asks for
    them, ``source="head-ct"`` insists on the CT). Measurements ``(B, 1, views, detectors)``.

    :param int views: projections.
    :param str source: ``"auto"``, ``"head-ct"`` or ``"embedded"``.
    """

    views: int = 60
    source: str = "auto"

    def _validate(self):
        super()._validate()
        _check_int("views", self.views, minimum=1)
        if self.source not in ("auto", "head-ct", "embedded"):
            raise ValueError(f"source must be 'auto', 'head-ct' or 'embedded', got {self.source!r}")

    def data_source(self) -> str:
        r"""Which images :meth:`dataset` reads here: ``"head-ct"`` or ``"embedded"``."""
        if self.source not in ("auto", "head-ct", "embedded"):
            raise ValueError(f"source must be 'auto', 'head-ct' or 'embedded', got {self.source!r}")
        if self.source == "auto":
            return "head-ct" if data.head_ct_available() else "embedded"
        return self.source

    def _angles(self):
        return torch.arange(self.views, dtype=torch.float64) * (2 * math.pi / self.views)

    def _physics(self, spatial, device, generator):
        from .physics import AstraCT

        angles = self._angles()
        if generator is not None:
            angles = angles + float(torch.rand(1, generator=generator)) * (2 * math.pi / self.views)
        return AstraCT(spatial, angles, geometry="fanbeam", device=device, normalize=False)

    def _slices(self, split):
        if self.data_source() == "head-ct":
            stack = data.load_head_ct(split=split)
        else:
            warnings.warn(
                f"task {self.name!r}: the real head CT is not installed (`sudo apt-get install "
                "invesalius-examples`); using the embedded MRI slices as attenuation images instead",
                stacklevel=3,
            )
            stack = data.load_embedded(split)
        return stack._replace(images=data.resize_images(stack.images, self.image_size))


@dataclasses.dataclass(frozen=True)
class ConeBeamCTTask(FanBeamCTTask):
    r"""3D cone-beam CT on a CUDA GPU (ASTRA's cone beam has no CPU implementation): ``views``
    projections over :math:`2\pi` of a volume of ``depth`` consecutive head-CT slices. Building the
    physics without a GPU raises :class:`RuntimeError`; the dataset works anywhere. Images
    ``(1, D, H, W)``, measurements ``(B, 1, rows, views, detectors)``.

    :param int depth: slices per volume.
    """

    depth: int = 8

    def _validate(self):
        super()._validate()
        _check_int("depth", self.depth, minimum=1)

    def _physics(self, spatial, device, generator):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"task {self.name!r} needs a CUDA GPU (ASTRA's cone-beam projectors are CUDA-only) and "
                f"none is available; CPU tasks: {', '.join(n for n in list_tasks() if not _REGISTRY[n].requires_gpu)}"
            )
        from .physics import AstraCT

        angles = self._angles()
        if generator is not None:
            angles = angles + float(torch.rand(1, generator=generator)) * (2 * math.pi / self.views)
        return AstraCT(spatial, angles, geometry="cone", backend="cuda", device=device, normalize=False)

    def _layout(self):
        return "(C, D, H, W)"

    def _dataset(self, stack, train, seed):
        stride = max(1, self.depth // 4) if train else self.depth
        return data.VolumeDataset(stack, depth=self.depth, stride=stride, complex=False, seed=seed)


_REGISTRY: dict[str, Task] = {
    task.name: task
    for task in (
        RadialMRITask(
            "mri-radial-4x",
            "2D MRI: 8-coil golden-angle radial NUFFT, 4x undersampled, 30 dB Gaussian noise",
            "mri",
        ),
        DynamicMRITask(
            "mri-radial-dynamic",
            "2D+time MRI: 8 frames of moving real slices, one golden-angle trajectory per frame (8x), 8 coils, 30 dB",
            "mri",
            spatial_dims=3,
            train_crop=None,
            image_size=(96, 96),
            acceleration=8.0,
        ),
        StackOfStarsMRITask(
            "mri-3d",
            "3D MRI: stack-of-stars on 16-slice slabs (kz Cartesian, 4x radial in-plane), 8 coils, 30 dB",
            "mri",
            spatial_dims=3,
            train_crop=None,
            image_size=(80, 80),
        ),
        FanBeamCTTask(
            "ct-sparse-view",
            "2D CT: fan beam, 60 views over 360 degrees, 40 dB Gaussian noise; real head CT when installed",
            "ct",
            snr_db=40.0,
            data_weight=0.05,
        ),
        ConeBeamCTTask(
            "ct-3d-cone",
            "3D CT: cone beam, 60 views, 40 dB, 8-slice head-CT volumes (CUDA GPU only)",
            "ct",
            spatial_dims=3,
            snr_db=40.0,
            train_crop=None,
            requires_gpu=True,
            data_weight=0.05,
        ),
    )
}


def list_tasks() -> list[str]:
    r"""Names of the registered tasks, in registry order."""
    return list(_REGISTRY)


def get_task(name: str, size: int | None = None, **overrides) -> Task:
    r"""The task registered as ``name``, optionally with settings replaced.

    :param str name: e.g. ``"mri-radial-4x"``.
    :param int size: a smaller (or larger) variant: square images ``size x size`` in-plane (``image_size``) and a
        training crop no larger (e.g. ``size=32`` for fast tests; the physics follows the images' size).
    :param overrides: fields to replace (e.g. ``snr_db=25``, ``acceleration=8``, ``views=30``), checked.
    :raises ValueError: unknown name (the message lists the valid ones), unknown setting, or a setting out of
        its range (e.g. ``views=0``).
    :raises TypeError: a setting of the wrong type (e.g. ``views=2.5``).

    :Examples:

        >>> from deepinv_mol.tasks import get_task
        >>> task = get_task("mri-radial-4x", snr_db=25)
        >>> task.snr_db, task.channels
        (25.0, 2)
        >>> small = get_task("ct-sparse-view", size=32)
        >>> small.image_size, small.train_crop, small.modality
        ((32, 32), 32, 'ct')
        >>> get_task("ct-sparse-view", views=0)
        Traceback (most recent call last):
        ...
        ValueError: task setting views must be >= 1, got 0
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(_REGISTRY)}")
    task = _REGISTRY[name]
    if size is not None:
        _check_int("size", size, minimum=4)
        if "image_size" in overrides:
            raise ValueError("give size or image_size, not both")
        overrides["image_size"] = (size, size)
        crop = overrides.get("train_crop", task.train_crop)
        if crop is not None and crop > size:
            overrides["train_crop"] = size
    if not overrides:
        return task
    fields = {f.name for f in dataclasses.fields(task)} - {"name", "modality", "spatial_dims"}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"task {name!r} has no setting {', '.join(unknown)}; settings: {', '.join(sorted(fields))}")
    if "snr_db" in overrides and isinstance(overrides["snr_db"], (int, float)) and not isinstance(overrides["snr_db"], bool):
        overrides["snr_db"] = float(overrides["snr_db"])
    if "image_size" in overrides and isinstance(overrides["image_size"], list):
        overrides["image_size"] = tuple(overrides["image_size"])
    return dataclasses.replace(task, **overrides)
