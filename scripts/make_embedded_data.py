r"""Regenerate ``deepinv_mol/assets/colin27_t1_slices.npz``, the embedded default MRI data.

Source: the Colin27 T1-weighted head template ``ch2.nii.gz`` (181 x 217 x 181 voxels, 1 mm isotropic,
RAS, uint8) shipped by the Debian package ``mricron-data`` (BSD-3-Clause, see
``/usr/share/doc/mricron-data/copyright``; Colin27: Holmes et al., "Enhancement of MR images using
registration for signal averaging", J. Comput. Assist. Tomogr. 22(2), 1998). Install it with
``apt-get install mricron-data``; ``nibabel`` reads it.

What the script does, deterministically (no randomness, fixed parameters below):

1. load the volume, reorient to RAS (``nibabel.as_closest_canonical``) and take axial slices
   ``z = Z_FIRST, ..., Z_FIRST + n - 1``, each displayed with rows anterior -> posterior and columns
   left -> right (neurological convention);
2. zero-pad every slice to a centred 217 x 217 square (the head fills the 217 mm anterior-posterior
   field of view), low-pass it with a Gaussian (``sigma = ANTIALIAS_SIGMA`` source pixels) against
   aliasing, and resample it to ``SIZE x SIZE`` with cubic splines (pixel 217/160 = 1.356 mm);
3. divide by the maximum over all kept resampled slices, clip to [0, 1] and quantise to uint8
   (``image = slices / 255``; quantisation error at most 1/510, far below the task's noise);
4. split the slices by slab: the pattern ``train (36), gap (4), test (16), gap (4), val (16), gap (4)``
   is repeated twice from inferior to superior (z = 8 ... 163), so each split covers low and high
   parts of the head (validation gets the vertex, whose small slices make a poor test set),
   and any two slices of different splits are at least 4 + 1 = 5 mm apart; gap slices are dropped;
5. write an ``.npz`` whose zip entries carry a fixed timestamp, so the output file is byte-identical
   from run to run, with the provenance (source file and its SHA-256, package version, licence,
   citation, every parameter, source slice index of every stored slice).

Usage::

    python scripts/make_embedded_data.py                 # writes deepinv_mol/assets/colin27_t1_slices.npz
    python scripts/make_embedded_data.py --check         # regenerates in memory, compares with the shipped file
    python scripts/make_embedded_data.py --source PATH --output PATH
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pathlib
import subprocess
import sys
import zipfile

import numpy as np

# the slab split is the library's own (one mechanism for the embedded MRI and the head CT)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from deepinv_mol.data import SPLITS, slab_layout  # noqa: E402

SOURCE = "/usr/share/mricron/templates/ch2.nii.gz"
OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "deepinv_mol" / "assets" / "colin27_t1_slices.npz"
SIZE = 160
PAD_TO = 217
ANTIALIAS_SIGMA = 0.5
Z_FIRST = 8
#: one cycle of the slab pattern, inferior to superior: (split, number of slices); "gap" is dropped
CYCLE = (("train", 36), ("gap", 4), ("test", 16), ("gap", 4), ("val", 16), ("gap", 4))
N_CYCLES = 2
LICENCE = (
    "BSD-3-Clause, as distributed by the Debian package mricron-data "
    "(/usr/share/doc/mricron-data/copyright, Copyright 2006-2010 Chris Rorden)"
)
CITATION = (
    "Colin27 T1 template: C. J. Holmes, R. Hoge, L. Collins, R. Woods, A. W. Toga, A. C. Evans, "
    "'Enhancement of MR images using registration for signal averaging', J. Comput. Assist. Tomogr. "
    "22(2):324-333, 1998. Distributed with MRIcron (C. Rorden) as templates/ch2.nii.gz."
)


def resample_slices(volume: np.ndarray, z: np.ndarray) -> np.ndarray:
    r"""Axial slices ``volume[:, :, z]`` (RAS) as ``(N, SIZE, SIZE)`` float64, not yet normalised."""
    from scipy import ndimage

    out = np.empty((len(z), SIZE, SIZE))
    for i, k in enumerate(z):
        # RAS (x, y) -> rows anterior..posterior, columns left..right
        image = np.rot90(volume[:, :, int(k)].astype(np.float64))
        rows, cols = image.shape
        if rows > PAD_TO or cols > PAD_TO:
            raise ValueError(f"slice of shape {image.shape} does not fit the {PAD_TO} x {PAD_TO} square")
        top, left = (PAD_TO - rows) // 2, (PAD_TO - cols) // 2
        square = np.zeros((PAD_TO, PAD_TO))
        square[top : top + rows, left : left + cols] = image
        square = ndimage.gaussian_filter(square, ANTIALIAS_SIGMA, mode="constant")
        resized = ndimage.zoom(square, SIZE / PAD_TO, order=3, mode="grid-constant", grid_mode=True)
        out[i] = resized[:SIZE, :SIZE]
    return out


def _package_version(name: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_arrays(source: str = SOURCE) -> dict:
    r"""Read ``source`` and return the dictionary of arrays written to the ``.npz``."""
    import nibabel

    path = pathlib.Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"{source} not found: install the Debian package with `apt-get install mricron-data`"
        )
    image = nibabel.as_closest_canonical(nibabel.load(str(path)))
    volume = np.asanyarray(image.dataobj)
    if volume.shape != (181, 217, 181):
        raise ValueError(f"expected the 181 x 217 x 181 Colin27 volume, got {volume.shape}")
    z, split, block = slab_layout(CYCLE, N_CYCLES, first=Z_FIRST)
    slices = resample_slices(volume, z)
    slices = slices / slices.max()
    quantised = np.round(np.clip(slices, 0.0, 1.0) * 255.0).astype(np.uint8)
    spacing = PAD_TO / SIZE * float(image.header.get_zooms()[0])
    return {
        "slices": quantised,
        "scale": np.float32(1.0 / 255.0),
        "source_z": z,
        "split": split,
        "block": block,
        "split_names": np.array(SPLITS),
        "pixel_spacing_mm": np.float32(spacing),
        "slice_thickness_mm": np.float32(image.header.get_zooms()[2]),
        "min_gap_slices": np.int16(min(n for name, n in CYCLE if name == "gap")),
        "source_file": np.array(str(path)),
        "source_sha256": np.array(hashlib.sha256(path.read_bytes()).hexdigest()),
        "source_package": np.array(f"mricron-data {_package_version('mricron-data')}"),
        "source_shape": np.asarray(volume.shape, np.int16),
        "licence": np.array(LICENCE),
        "citation": np.array(CITATION),
        "orientation": np.array("axial; rows anterior->posterior, columns left->right (neurological)"),
        "script": np.array("scripts/make_embedded_data.py"),
        "parameters": np.array(
            f"SIZE={SIZE} PAD_TO={PAD_TO} ANTIALIAS_SIGMA={ANTIALIAS_SIGMA} Z_FIRST={Z_FIRST} "
            f"CYCLE={CYCLE} N_CYCLES={N_CYCLES}; image = slices * scale = intensity / max over kept slices"
        ),
    }


def to_npz_bytes(arrays: dict) -> bytes:
    r"""Serialise ``arrays`` as a compressed ``.npz`` with fixed zip timestamps (byte-reproducible)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            entry = io.BytesIO()
            np.lib.format.write_array(entry, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, entry.getvalue(), compresslevel=9)
    return buffer.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", default=SOURCE, help="Colin27 ch2.nii.gz (mricron-data)")
    parser.add_argument("--output", default=str(OUTPUT), help="the .npz to write")
    parser.add_argument("--check", action="store_true", help="compare with --output instead of writing")
    args = parser.parse_args(argv)
    data = to_npz_bytes(build_arrays(args.source))
    output = pathlib.Path(args.output)
    if args.check:
        same = output.exists() and output.read_bytes() == data
        print(f"{output}: {'identical' if same else 'DIFFERS'} ({len(data)} bytes regenerated)")
        return 0 if same else 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    print(f"wrote {output} ({len(data) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
