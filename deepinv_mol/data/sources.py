r"""Where images come from: the embedded MRI slices, the real head CT, a user's image stacks, deepinv's datasets.

All return deepinv's layout (real tensors; see :mod:`deepinv_mol.data`). Splits are by slab
(:func:`slab_layout`) so that test slices never touch training slices.
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import pathlib
import plistlib
import tarfile
from typing import NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "SPLITS",
    "EMBEDDED_FILE",
    "HEAD_CT_PATH",
    "MU_WATER_PER_MM",
    "HU_MAX",
    "HEAD_CT_CYCLE",
    "SliceStack",
    "slab_layout",
    "load_embedded",
    "embedded_provenance",
    "read_inv3",
    "head_ct_available",
    "hounsfield_to_attenuation",
    "load_head_ct",
    "load_image_stack",
    "deepinv_dataset",
]

SPLITS = ("train", "val", "test")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}
EMBEDDED_FILE = "colin27_t1_slices.npz"

#: where Debian's ``invesalius-examples`` installs the head CT read by :func:`load_head_ct`
HEAD_CT_PATH = "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"
#: linear attenuation of water in mm^-1 (LoDoPaB-CT's convention, 20 m^-1, about 60 keV)
MU_WATER_PER_MM = 0.02
#: Hounsfield value mapped to 1 by ``units="normalized"`` (the 12-bit CT maximum, as in LoDoPaB-CT)
HU_MAX = 3071.0
#: slab pattern of the head CT (108 slices of 1.5 mm): (split, number of slices), repeated twice
HEAD_CT_CYCLE = (("train", 26), ("gap", 3), ("test", 12), ("gap", 3), ("val", 8), ("gap", 3))

_DEEPINV_DATASETS = {
    "fastmri": "FastMRISliceDataset",
    "calgary": "CalgarySliceDataset",
    "cmrxrecon": "CMRxReconSliceDataset",
    "lidc-idri": "LidcIdriSliceDataset",
}


class SliceStack(NamedTuple):
    r"""A stack of 2D slices with the position of each slice in its source volume.

    :param torch.Tensor images: ``(N, H, W)`` float32 magnitudes in [0, 1].
    :param torch.Tensor positions: ``(N,)`` int64 source slice index (consecutive slices differ by 1).
    :param torch.Tensor blocks: ``(N,)`` int64 slab number; slices of one slab are contiguous.
    """

    images: torch.Tensor
    positions: torch.Tensor
    blocks: torch.Tensor


def slab_layout(cycle: Sequence[tuple[str, int]], n_cycles: int, first: int = 0
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Split consecutive slices into slabs: the pattern ``cycle`` repeated ``n_cycles`` times.

    Each ``(name, length)`` of ``cycle`` takes the next ``length`` slices; ``name`` is ``"train"``,
    ``"val"``, ``"test"`` or ``"gap"`` (slices dropped so that slabs of different splits never touch).

    :param cycle: ``(name, length)`` pairs.
    :param int n_cycles: number of repetitions.
    :param int first: index of the first slice.
    :return: ``(positions, split_codes, blocks)`` numpy arrays (int16, uint8, uint8) over the kept
        slices; split code ``k`` means ``SPLITS[k]``.

    :Examples:

        >>> from deepinv_mol.data import slab_layout
        >>> z, split, block = slab_layout((("train", 2), ("gap", 1), ("test", 1)), 2)
        >>> z.tolist(), split.tolist(), block.tolist()
        ([0, 1, 3, 4, 5, 7], [0, 0, 2, 0, 0, 2], [0, 0, 1, 2, 2, 3])
    """
    positions, codes, blocks = [], [], []
    position, slab = first, 0
    for _ in range(n_cycles):
        for name, length in cycle:
            if name != "gap":
                if name not in _SPLIT_CODES:
                    raise ValueError(f"slab names are {SPLITS + ('gap',)}, got {name!r}")
                positions.extend(range(position, position + length))
                codes.extend([_SPLIT_CODES[name]] * length)
                blocks.extend([slab] * length)
                slab += 1
            position += length
    return np.asarray(positions, np.int16), np.asarray(codes, np.uint8), np.asarray(blocks, np.uint8)


def _check_split(split):
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None (all slices), got {split!r}")


def _select(images, positions, codes, blocks, split) -> SliceStack:
    _check_split(split)
    keep = np.ones(len(codes), bool) if split is None else codes == _SPLIT_CODES[split]
    return SliceStack(
        torch.as_tensor(np.ascontiguousarray(images[keep]), dtype=torch.float32),
        torch.as_tensor(positions[keep].astype(np.int64)),
        torch.as_tensor(blocks[keep].astype(np.int64)),
    )


# --------------------------------------------------------------------------------------------- embedded


def _embedded_npz():
    resource = importlib.resources.files("deepinv_mol") / "assets" / EMBEDDED_FILE
    with resource.open("rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)


def load_embedded(split: str | None = None) -> SliceStack:
    r"""The embedded Colin27 T1 slices (real MRI, 160 x 160, 1.356 mm pixels, 1 mm apart).

    The split is by slab (see ``scripts/make_embedded_data.py``): train 72 slices, validation 32,
    test 32, in slabs of 36 / 16 / 16 consecutive slices separated by 4 dropped slices, so a test
    slice is at least 5 mm from any training slice.

    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for all 136 slices.
    :return: :class:`SliceStack` with ``images`` ``(N, 160, 160)`` float32 in [0, 1].

    :Examples:

        >>> from deepinv_mol.data import load_embedded
        >>> stack = load_embedded("test")
        >>> tuple(stack.images.shape), float(stack.images.max()) <= 1.0
        ((32, 160, 160), True)
    """
    data = _embedded_npz()
    images = data["slices"].astype(np.float32) * np.float32(data["scale"])
    return _select(images, data["source_z"], data["split"], data["block"], split)


def embedded_provenance() -> dict:
    r"""Provenance of the embedded slices: source file, its SHA-256, Debian package, licence, citation,
    script, parameters, pixel spacing, and the source slice index of every slice per split.

    :return: a dict of plain Python values.
    """
    data = _embedded_npz()
    info = {}
    for key in data.files:
        if key in ("slices", "split", "block", "source_z"):
            continue
        value = data[key]
        info[key] = value.item() if value.ndim == 0 else value.tolist()
    for code, name in enumerate(SPLITS):
        info[f"{name}_source_z"] = data["source_z"][data["split"] == code].tolist()
    return info


# --------------------------------------------------------------------------------------------- head CT


def read_inv3(path: str | pathlib.Path) -> tuple[np.ndarray, dict]:
    r"""Read the image volume of an InVesalius 3 project (``.inv3``) without extracting it to disk.

    An ``.inv3`` file is a tar archive holding ``main.plist`` (an Apple property list whose ``matrix``
    entry gives ``filename``, ``dtype`` and ``shape`` of the volume, and ``spacing`` its voxel size
    in mm, x-y-z order) and that raw little-endian C-order array (here int16 Hounsfield units,
    shape ``(slices, rows, columns)``).

    :param path: the ``.inv3`` file.
    :return: ``(volume, meta)``: the array and ``main.plist`` as a dict.
    """
    path = pathlib.Path(path)
    try:
        archive = tarfile.open(path, "r:*")
    except (tarfile.TarError, IsADirectoryError) as error:
        raise ValueError(f"{path} is not an InVesalius .inv3 project (a tar archive): {error}") from None
    with archive:
        members = {pathlib.PurePosixPath(m.name).name: m for m in archive.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"{path}: no main.plist in the archive, not an InVesalius project")
        try:
            meta = plistlib.loads(archive.extractfile(members["main.plist"]).read())
            matrix = meta["matrix"]
            name, dtype, shape = matrix["filename"], np.dtype(matrix["dtype"]), tuple(matrix["shape"])
        except (plistlib.InvalidFileException, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path}: main.plist has no readable 'matrix' entry ({error!r})") from None
        if name not in members:
            raise ValueError(f"{path}: main.plist names {name!r}, which is not in the archive")
        raw = archive.extractfile(members[name]).read()
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {name} holds {len(raw)} bytes, main.plist announces {shape} {dtype} = {expected}"
        )
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape), meta


def _default_head_ct_path() -> str:
    # the setting lives on the package (``deepinv_mol.data.HEAD_CT_PATH``), where users change it
    from .. import data

    return getattr(data, "HEAD_CT_PATH", HEAD_CT_PATH)


@functools.lru_cache(maxsize=2)
def _cached_inv3(path: str, mtime_ns: int, size: int) -> np.ndarray:
    # decompressing Cranium.inv3 takes seconds: once per process (keyed on the file's identity)
    return read_inv3(path)[0]


def head_ct_available(path: str | pathlib.Path | None = None) -> bool:
    r"""Whether the head CT read by :func:`load_head_ct` is present (default: Debian's path)."""
    return pathlib.Path(_default_head_ct_path() if path is None else path).is_file()


def hounsfield_to_attenuation(hu: torch.Tensor | np.ndarray, normalized: bool = True) -> torch.Tensor:
    r"""Linear attenuation from Hounsfield units.

    .. math::

        \mu = \mu_{\text{water}} \left(1 + \frac{\text{HU}}{1000}\right), \qquad
        \mu_{\text{water}} = 0.02\ \text{mm}^{-1},

    clipped at 0 (air is -1000 HU; scanners pad with -1024). With ``normalized=True`` the result is
    divided by :math:`\mu(3071\ \text{HU})`, so the 12-bit CT range maps to [0, 1] (LoDoPaB-CT's
    convention: water 0.246, air 0).

    :param hu: Hounsfield units.
    :param bool normalized: divide by :math:`\mu(\text{HU}_{\max})` (unitless) instead of mm^-1.
    :return: float32 tensor of the same shape.
    """
    hu = torch.as_tensor(np.asarray(hu, dtype=np.float32))
    mu = (MU_WATER_PER_MM * (1.0 + hu / 1000.0)).clamp_min(0.0)
    if normalized:
        mu = (mu / (MU_WATER_PER_MM * (1.0 + HU_MAX / 1000.0))).clamp_max(1.0)
    return mu


def load_head_ct(path: str | pathlib.Path | None = None, split: str | None = None) -> SliceStack:
    r"""Real head CT (InVesalius' ``Cranium.inv3``: 108 axial slices of 256 x 256, 0.957 mm pixels,
    1.5 mm apart) as normalised linear attenuation in [0, 1] (:func:`hounsfield_to_attenuation`).

    Read at run time from Debian's ``invesalius-examples`` (GPL-2); nothing is copied into this package.
    Split by slab: the pattern ``train 26, gap 3, test 12, gap 3, val 8, gap 3`` twice (train 52,
    test 24, validation 16 slices; different splits are at least 4 slices = 6 mm apart). Slices
    beyond the pattern are dropped.

    :param path: an ``.inv3`` file (default: :data:`HEAD_CT_PATH`).
    :param str split: ``"train"``, ``"val"``, ``"test"`` or ``None`` for every slice of the pattern.
    :return: :class:`SliceStack` with ``images`` ``(N, 256, 256)`` float32.
    :raises FileNotFoundError: when the file is missing, saying how to install it.
    """
    _check_split(split)
    path = pathlib.Path(_default_head_ct_path() if path is None else path)
    if not path.is_file():
        raise FileNotFoundError(
            f"head CT not found at {path}: install it with `sudo apt-get install invesalius-examples` "
            "(Debian/Ubuntu; GPL-2 data, read at run time only) or pass the path of a Cranium.inv3 file"
        )
    stat = path.stat()
    hu = _cached_inv3(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if hu.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume (slices, rows, columns), got shape {hu.shape}")
    positions, codes, blocks = slab_layout(HEAD_CT_CYCLE, 2)
    if positions.max() >= hu.shape[0]:
        # a smaller volume (e.g. another project): spread the same pattern over its slices
        total = sum(n for _, n in HEAD_CT_CYCLE) * 2 - HEAD_CT_CYCLE[-1][1]
        scale = hu.shape[0] / total
        cycle = tuple((name, max(1, int(n * scale))) for name, n in HEAD_CT_CYCLE)
        positions, codes, blocks = slab_layout(cycle, 2)
    images = hounsfield_to_attenuation(hu[positions.astype(np.int64)]).numpy()
    return _select(images, positions, codes, blocks, split)


# ------------------------------------------------------------------------------------------ user images


def load_image_stack(path: str | pathlib.Path) -> torch.Tensor:
    r"""A user's images from a ``.npy`` file.

    Accepted layouts: ``(N, H, W)`` or ``(N, 1, H, W)`` real magnitudes in [0, 1], ``(N, 2, H, W)``
    complex as real and imaginary channels, or a complex-dtype ``(N, H, W)`` array; complex moduli must
    not exceed 1. ``H, W >= 8``; values finite.

    :param path: the ``.npy`` file.
    :return: float32 tensor ``(N, H, W)`` (magnitude) or ``(N, 2, H, W)`` (complex).
    :raises FileNotFoundError: missing file.
    :raises ValueError: not a readable ``.npy`` array, wrong shape, non-finite values or out of range.
    :raises TypeError: non-numeric dtype.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image stack {path} not found")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path} holds several arrays (.npz); save a single array with numpy.save")
    expected = "(N, H, W) magnitude in [0, 1] or (N, 2, H, W) complex"
    if np.iscomplexobj(array):
        if array.ndim != 3:
            raise ValueError(f"{path}: complex arrays must be (N, H, W), got shape {array.shape}")
        array = np.stack([array.real, array.imag], axis=1)
    elif array.dtype.kind not in "fiub":
        raise TypeError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if not (array.ndim == 3 or (array.ndim == 4 and array.shape[1] == 2)):
        raise ValueError(f"{path}: expected {expected}, got shape {array.shape}")
    if array.shape[0] == 0 or min(array.shape[-2:]) < 8:
        raise ValueError(f"{path}: expected {expected} with N >= 1 and H, W >= 8, got {array.shape}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    if array.ndim == 3:
        low, high = float(array.min()), float(array.max())
        if low < -1e-6 or high > 1 + 1e-6:
            raise ValueError(
                f"{path}: magnitudes must lie in [0, 1], got [{low:.4g}, {high:.4g}]; "
                "divide by the maximum (and take the modulus of complex data)"
            )
        array = np.clip(array, 0.0, 1.0)
    else:
        peak = float(np.sqrt((array**2).sum(axis=1)).max())
        if peak > 1 + 1e-6:
            raise ValueError(f"{path}: complex moduli must not exceed 1, got {peak:.4g}; divide by it")
    return torch.from_numpy(array)


# ------------------------------------------------------------------------------------- deepinv datasets


def deepinv_dataset(name: str, root: str | pathlib.Path, **kwargs) -> torch.utils.data.Dataset:
    r"""One of deepinv's real-data datasets, read from files the user already has (never downloaded).

    ``"fastmri"`` -> :class:`deepinv.datasets.FastMRISliceDataset`, ``"calgary"`` ->
    :class:`deepinv.datasets.CalgarySliceDataset`, ``"cmrxrecon"`` ->
    :class:`deepinv.datasets.CMRxReconSliceDataset`, ``"lidc-idri"`` ->
    :class:`deepinv.datasets.LidcIdriSliceDataset`. Wrap the result in :class:`GroundTruthDataset`
    to get the images alone (e.g. for a task's simulated measurements).

    :param str name: one of the four names above.
    :param root: the folder holding the files.
    :param kwargs: passed to the deepinv class.
    """
    if name not in _DEEPINV_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(_DEEPINV_DATASETS)}")
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is not a folder; {name} data must already be on disk (nothing is downloaded)"
        )
    import deepinv.datasets

    return getattr(deepinv.datasets, _DEEPINV_DATASETS[name])(root=root, **kwargs)
