r"""Held-out test images: other subjects, orientations and sizes than training, never trained or tuned on.

The shipped models are trained on slabs of one MRI subject (Colin27, axial) and of one head CT. An honest test
uses data from elsewhere (:func:`heldout_images`, names in :data:`HELDOUT_SETS`):

================ ===== ============================================================ ================ ===========
name             kind  source (licence)                                             orientations     native size
================ ===== ============================================================ ================ ===========
``itk-t1``       MRI   another subject's T1 head volume, ``KmeansTest_T1UCharRaw``  coronal (47),    128 x 128
                       of Debian's ``insighttoolkit5-examples`` (Apache-2.0), read  axial (60),
                       at run time; 128 x 128 x 62 voxels of 2 x 2 x 3 mm           sagittal (64)
``dipy-t1``      MRI   one skull-stripped T1 coronal slice of a third subject,      coronal (1)      256 x 256
                       dipy's ``t1_coronal_slice.npy`` (BSD-3, embedded here, see
                       ``assets/DIPY-NOTICE.txt``)
``head-ct``      CT    the held-out slabs of the one head CT (``invesalius-examples``, axial (24)       256 x 256
                       GPL-2, read at run time): slices 29-40 and 84-95, never
                       used for training or validation
================ ===== ============================================================ ================ ===========

**CT has no second patient**: no package of Debian or PyPI ships another CT series under a licence that allows
its use here (pydicom's test files are single 512² slices of unclear provenance), so the CT held-out set is two
whole slabs of the training volume, at least 4 slices (6 mm) from every training or validation slice. These are
the slices of its ``"test"`` split (:data:`HEAD_CT_HELDOUT_SPLIT`).

Intensities: an MRI volume is divided by the 99.5th percentile of its non-zero voxels and clipped to [0, 1]
(the ITK volume is stored as 0..255 values); the dipy slice is already in [0, 1]; CT is normalised linear
attenuation (:func:`~deepinv_mol.data.hounsfield_to_attenuation`). Axial and sagittal slices of the ITK
volume are resampled from 3 mm to 2 mm along the anterior-posterior axis (62 -> 93 samples, bilinear) and
zero-padded to 128 x 128; the head is cut by the volume's 186 mm field of view at the front and back.

Display convention: rows run superior to inferior (coronal, sagittal) or anterior to posterior (axial); columns
run from the subject's right to left (radiological, coronal and axial) or anterior to posterior (sagittal).
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import pathlib
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .simulation import resize_images
from .sources import load_head_ct

__all__ = [
    "HeldOutSet",
    "HELDOUT_SETS",
    "ITK_T1_PATH",
    "ITK_T1_PATHS",
    "ITK_T1_SLICES",
    "HEAD_CT_HELDOUT_SPLIT",
    "DIPY_FILE",
    "list_heldout",
    "heldout_available",
    "heldout_images",
    "read_nifti",
]

#: where Debian installs the ITK example T1 volume (``insighttoolkit5-examples``, older ``insighttoolkit4-examples``)
ITK_T1_PATHS = (
    "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
    "/usr/share/doc/insighttoolkit4-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
)
#: the ITK T1 volume read by ``heldout_images("itk-t1")``; change ``deepinv_mol.data.ITK_T1_PATH`` to read another copy
ITK_T1_PATH = ITK_T1_PATHS[0]
#: usable slices of the ITK volume per orientation, ``(first, last)`` inclusive voxel indices along the slicing
#: axis (coronal: posterior -> anterior, axial: inferior -> superior, sagittal: the volume's first axis); outside
#: them a slice holds little or no brain
ITK_T1_SLICES = {"coronal": (6, 52), "axial": (30, 89), "sagittal": (30, 93)}
#: the head-CT split kept for held-out tests: its slabs never touch training or validation slices
HEAD_CT_HELDOUT_SPLIT = "test"
DIPY_FILE = "dipy_t1_coronal_slice.npz"
_ITK_APT = "sudo apt-get install insighttoolkit5-examples"
_PERCENTILE = 99.5


class HeldOutSet(NamedTuple):
    r"""What one held-out set is.

    :param str modality: ``"mri"`` or ``"ct"`` (the tasks it may be used with).
    :param tuple orientations: available orientations; the first is the default.
    :param tuple native_size: in-plane ``(H, W)`` of its images.
    :param str source: where the images come from and under which licence.
    """

    modality: str
    orientations: tuple
    native_size: tuple
    source: str


#: the held-out sets by name
HELDOUT_SETS: dict[str, HeldOutSet] = {
    "itk-t1": HeldOutSet(
        "mri", ("coronal", "axial", "sagittal"), (128, 128),
        "KmeansTest_T1UCharRaw.nii.gz of Debian's insighttoolkit5-examples (Apache-2.0), read at run time",
    ),
    "dipy-t1": HeldOutSet(
        "mri", ("coronal",), (256, 256), "dipy's t1_coronal_slice.npy (BSD-3), embedded in deepinv_mol/assets",
    ),
    "head-ct": HeldOutSet(
        "ct", ("axial",), (256, 256),
        "held-out slabs (test split) of Cranium.inv3 of Debian's invesalius-examples (GPL-2), read at run time",
    ),
}


def list_heldout(modality: str | None = None) -> list[str]:
    r"""Names of the held-out sets, optionally of one modality.

    :param str modality: ``"mri"``, ``"ct"`` or ``None`` (all).

    :Examples:

        >>> from deepinv_mol.data import list_heldout
        >>> list_heldout(), list_heldout("ct")
        (['itk-t1', 'dipy-t1', 'head-ct'], ['head-ct'])
    """
    if modality not in (None, "mri", "ct"):
        raise ValueError(f"modality must be 'mri', 'ct' or None, got {modality!r}")
    return [n for n, s in HELDOUT_SETS.items() if modality is None or s.modality == modality]


def _itk_path() -> pathlib.Path:
    # the setting lives on the package (``deepinv_mol.data.ITK_T1_PATH``), where users change it
    from .. import data

    path = getattr(data, "ITK_T1_PATH", ITK_T1_PATH)
    if path == ITK_T1_PATHS[0] and not pathlib.Path(path).is_file():
        path = next((p for p in ITK_T1_PATHS if pathlib.Path(p).is_file()), path)
    return pathlib.Path(path)


def heldout_available(name: str) -> bool:
    r"""Whether the files of held-out set ``name`` are present (``dipy-t1`` always is: it is embedded).

    :param str name: one of :func:`list_heldout`.
    """
    _check_name(name)
    if name == "itk-t1":
        return _itk_path().is_file()
    if name == "head-ct":
        from .sources import head_ct_available

        return head_ct_available()
    return True


def _check_name(name):
    if name not in HELDOUT_SETS:
        raise ValueError(f"unknown held-out set {name!r}; expected one of {', '.join(HELDOUT_SETS)}")


# ------------------------------------------------------------------------------------------------ NIfTI

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def read_nifti(path: str | pathlib.Path) -> tuple[np.ndarray, tuple[float, ...]]:
    r"""Read a single-file NIfTI-1 volume (``.nii`` or ``.nii.gz``) without nibabel.

    Supports the integer and real data types, either byte order, and the ``scl_slope``/``scl_inter`` scaling;
    the array is returned in the file's voxel order ``(i, j, k, ...)`` (nibabel's ``dataobj`` order).

    :param path: the file.
    :return: ``(volume, pixdim)``: a float32 array and the voxel sizes of its axes (mm).
    :raises ValueError: not a NIfTI-1 file, an unsupported data type, or a truncated file.
    """
    path = pathlib.Path(path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: broken gzip stream ({error})") from None
    if len(raw) < 348:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for a NIfTI-1 header (348)")
    for order in "<>":
        if int(np.frombuffer(raw, f"{order}i4", 1, 0)[0]) == 348:
            break
    else:
        raise ValueError(f"{path}: not a NIfTI-1 file (sizeof_hdr is not 348)")
    if raw[344:347] not in (b"n+1", b"ni1"):
        raise ValueError(f"{path}: not a NIfTI-1 file (magic {raw[344:348]!r})")
    dim = np.frombuffer(raw, f"{order}i2", 8, 40)
    code = int(np.frombuffer(raw, f"{order}i2", 1, 70)[0])
    if code not in _NIFTI_DTYPES:
        raise ValueError(f"{path}: unsupported NIfTI data type code {code}")
    pixdim = np.frombuffer(raw, f"{order}f4", 8, 76)
    offset = max(352, int(np.frombuffer(raw, f"{order}f4", 1, 108)[0]))
    slope, inter = (float(v) for v in np.frombuffer(raw, f"{order}f4", 2, 112))
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        raise ValueError(f"{path}: bad number of dimensions {ndim}")
    shape = tuple(int(n) for n in dim[1 : ndim + 1])
    dtype = np.dtype(order + _NIFTI_DTYPES[code])
    count = int(np.prod(shape))
    if len(raw) < offset + count * dtype.itemsize:
        raise ValueError(f"{path}: truncated, {len(raw) - offset} data bytes for {shape} {dtype}")
    volume = np.frombuffer(raw, dtype, count, offset).reshape(shape[::-1]).T.astype(np.float32)
    if np.isfinite(slope) and slope != 0 and (slope, inter) != (1.0, 0.0):
        volume = volume * np.float32(slope) + np.float32(inter if np.isfinite(inter) else 0.0)
    return np.ascontiguousarray(volume), tuple(float(p) for p in pixdim[1 : ndim + 1])


@functools.lru_cache(maxsize=2)
def _itk_volume(path: str, mtime_ns: int) -> tuple[np.ndarray, tuple]:
    volume, pixdim = read_nifti(path)
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {volume.shape}")
    tissue = volume[volume > 0]
    if tissue.size == 0:
        raise ValueError(f"{path}: the volume is empty (no positive voxel)")
    volume = np.clip(volume / np.percentile(tissue, _PERCENTILE), 0.0, 1.0).astype(np.float32)
    return volume, pixdim


def _pad_square(images: torch.Tensor, side: int) -> torch.Tensor:
    rows, cols = images.shape[-2:]
    top, left = (side - rows) // 2, (side - cols) // 2
    return torch.nn.functional.pad(images, (left, side - cols - left, top, side - rows - top))


def _itk_slices(orientation: str) -> torch.Tensor:
    # voxel axes of KmeansTest_T1UCharRaw: (i, j, k) = (towards the left, superior, anterior), 2 x 2 x 3 mm
    path = _itk_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"held-out MRI volume not found at {path}: install it with `{_ITK_APT}` (Debian/Ubuntu; "
            "Apache-2.0 data, read at run time), set deepinv_mol.data.ITK_T1_PATH to a copy of "
            "KmeansTest_T1UCharRaw.nii.gz, or use the embedded held-out set 'dipy-t1'"
        )
    volume, pixdim = _itk_volume(str(path.resolve()), path.stat().st_mtime_ns)
    first, last = ITK_T1_SLICES[orientation]
    if orientation == "coronal":  # fixed k: rows superior -> inferior, columns i
        slices = volume[:, :, first : last + 1].transpose(2, 1, 0)[:, ::-1, :]
    elif orientation == "axial":  # fixed j: rows anterior -> posterior, columns i
        slices = volume[:, first : last + 1, :].transpose(1, 2, 0)[:, ::-1, :]
    else:  # sagittal, fixed i: rows superior -> inferior, columns anterior -> posterior
        slices = volume[first : last + 1, :, :][:, ::-1, ::-1]
    images = torch.from_numpy(np.ascontiguousarray(slices))
    if orientation != "coronal":
        # the anterior-posterior axis has 3 mm voxels: resample to the in-plane 2 mm, then pad to a square
        rows, cols = images.shape[-2:]
        sampled = (round(rows * pixdim[2] / pixdim[0]), cols) if orientation == "axial" else (
            rows, round(cols * pixdim[2] / pixdim[1]))
        images = resize_images(images, sampled).clamp(0.0, 1.0)
        images = _pad_square(images, max(volume.shape[0], volume.shape[1]))
    return images


def _dipy_slice() -> torch.Tensor:
    resource = importlib.resources.files("deepinv_mol") / "assets" / DIPY_FILE
    with resource.open("rb") as handle:
        stored = np.load(io.BytesIO(handle.read()), allow_pickle=False)
        image = stored["slice"].astype(np.float32) * np.float32(stored["scale"])
    return torch.from_numpy(image)[None]


def _evenly(count: int, n_images: int | None) -> list[int]:
    if n_images is None or n_images >= count:
        return list(range(count))
    # the centres of n equal parts of the range: slice i of n is at (i + 1/2) count / n
    return sorted({min(count - 1, int((i + 0.5) * count / n_images)) for i in range(n_images)})


def heldout_images(
    name: str,
    orientation: str | None = None,
    size: int | Sequence[int] | None = None,
    n_images: int | None = None,
) -> torch.Tensor:
    r"""Held-out test images (never trained or tuned on): another subject's MRI or the held-out CT slabs.

    :param str name: one of :func:`list_heldout` (see the table of :mod:`deepinv_mol.data.heldout`).
    :param str orientation: ``"coronal"``, ``"axial"`` or ``"sagittal"`` where the set has it (default: the
        set's first, coronal for MRI, axial for CT).
    :param size: ``None`` for the native size, or a side ``s`` / ``(h, w)`` to resize to (bilinear,
        antialiased), e.g. ``160`` for the tasks' image size.
    :param int n_images: take this many slices spread evenly over the usable range (``None``: all).
    :return: ``(N, 1, H, W)`` float32 magnitudes in [0, 1].
    :raises ValueError: unknown name or orientation, bad ``size`` or ``n_images``.
    :raises FileNotFoundError: the set is read at run time and its Debian package is not installed; the message
        gives the ``apt-get`` command.

    :Examples:

        >>> from deepinv_mol.data import heldout_images
        >>> x = heldout_images("dipy-t1")
        >>> tuple(x.shape), float(x.min()), float(x.max())
        ((1, 1, 256, 256), 0.0, 1.0)
        >>> tuple(heldout_images("dipy-t1", size=160).shape)
        (1, 1, 160, 160)
    """
    _check_name(name)
    held = HELDOUT_SETS[name]
    orientation = held.orientations[0] if orientation is None else orientation
    if orientation not in held.orientations:
        raise ValueError(
            f"held-out set {name!r} has the orientations {', '.join(held.orientations)}, not {orientation!r}"
        )
    if size is not None:
        pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
        if len(pair) != 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 8 for n in pair):
            raise ValueError(f"size must be None, an int >= 8 or a pair of them, got {size!r}")
    if n_images is not None and (isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1):
        raise ValueError(f"n_images must be None or an int >= 1, got {n_images!r}")
    if name == "itk-t1":
        images = _itk_slices(orientation)
    elif name == "dipy-t1":
        images = _dipy_slice()
    else:
        images = load_head_ct(split=HEAD_CT_HELDOUT_SPLIT).images
    images = images[_evenly(images.shape[0], n_images)]
    if size is not None:
        images = resize_images(images, pair).clamp(0.0, 1.0)
    return images.unsqueeze(1).float().contiguous()

