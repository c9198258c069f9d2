"""Held-out test images: the NIfTI reader, the ITK volume in three orientations (on a synthetic volume with a
marker, and on Debian's file when installed), the embedded dipy slice, clear errors without the Debian packages,
the head-CT held-out slabs disjoint from training and validation, and the ``eval --heldout`` options."""

import gzip
import importlib.util
import io
import pathlib
import plistlib
import tarfile

import numpy as np
import pytest
import torch

from deepinv_mol import cli, data
from deepinv_mol.tasks import get_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
HAVE_ITK = any(pathlib.Path(p).is_file() for p in data.ITK_T1_PATHS)


def _write_nifti(path, volume, pixdim=(2.0, 2.0, 3.0), order="<", code=4, slope=0.0, inter=0.0):
    # a minimal single-file NIfTI-1 (sizeof_hdr, dim, datatype, bitpix, pixdim, vox_offset, scaling, magic)
    dtype = np.dtype(order + {2: "u1", 4: "i2", 16: "f4"}[code])
    header = bytearray(352)
    header[0:4] = np.array(348, order + "i4").tobytes()
    dim = np.zeros(8, order + "i2")
    dim[0], dim[1 : 1 + volume.ndim] = volume.ndim, volume.shape
    header[40:56] = dim.tobytes()
    header[70:72] = np.array(code, order + "i2").tobytes()
    header[72:74] = np.array(dtype.itemsize * 8, order + "i2").tobytes()
    pix = np.zeros(8, order + "f4")
    pix[0], pix[1 : 1 + len(pixdim)] = 1.0, pixdim
    header[76:108] = pix.tobytes()
    header[108:112] = np.array(352, order + "f4").tobytes()
    header[112:120] = np.array([slope, inter], order + "f4").tobytes()
    header[344:348] = b"n+1\x00"
    payload = bytes(header) + np.asarray(volume, dtype).T.tobytes()  # NIfTI voxel order: first axis fastest
    pathlib.Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)
    return path


# -------------------------------------------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_read_nifti_round_trip(tmp_path, order, suffix):
    volume = np.arange(4 * 3 * 5, dtype=np.int16).reshape(4, 3, 5) - 7
    path = _write_nifti(tmp_path / f"v{suffix}", volume, order=order)
    read, pixdim = data.read_nifti(path)
    assert read.dtype == np.float32 and np.array_equal(read, volume) and pixdim == (2.0, 2.0, 3.0)
    scaled = _write_nifti(tmp_path / "s.nii", volume, slope=0.5, inter=10.0)
    assert np.array_equal(data.read_nifti(scaled)[0], volume * 0.5 + 10.0)


def test_read_nifti_errors(tmp_path):
    (tmp_path / "short.nii").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="too short for a NIfTI-1 header"):
        data.read_nifti(tmp_path / "short.nii")
    (tmp_path / "text.nii").write_bytes(b"x" * 400)
    with pytest.raises(ValueError, match="sizeof_hdr is not 348"):
        data.read_nifti(tmp_path / "text.nii")
    path = _write_nifti(tmp_path / "cut.nii", np.zeros((8, 8, 8), np.int16))
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ValueError, match="truncated"):
        data.read_nifti(path)


@pytest.mark.skipif(not HAVE_ITK or importlib.util.find_spec("nibabel") is None,
                    reason="needs insighttoolkit5-examples and nibabel")
def test_read_nifti_matches_nibabel_on_the_itk_volume():
    import nibabel

    path = next(p for p in data.ITK_T1_PATHS if pathlib.Path(p).is_file())
    volume, pixdim = data.read_nifti(path)
    assert np.array_equal(volume, np.asarray(nibabel.load(path).dataobj, dtype=np.float32))
    assert volume.shape == (128, 128, 62) and pixdim == (2.0, 2.0, 3.0)


# ------------------------------------------------------------------------------------ ITK orientations


@pytest.fixture
def marker_volume(tmp_path, monkeypatch):
    """A 128 x 128 x 62 volume (2 x 2 x 3 mm) of uniform tissue with one dark cube centred at voxel (40, 80, 20):
    (i, j, k) = (towards the left, superior, anterior)."""
    volume = np.full((128, 128, 62), 200, np.int16)
    volume[38:43, 78:83, 19:22] = 50
    volume[40, 80, 20] = 20  # its centre, darker still
    path = _write_nifti(tmp_path / "t1.nii.gz", volume)
    monkeypatch.setattr(data, "ITK_T1_PATH", str(path))
    return volume


def _peak(image):
    # the darkest pixel that is not padding (the padding is exactly 0)
    row, col = np.unravel_index(int(torch.argmin(torch.where(image > 0.05, image, 2.0))), tuple(image.shape))
    return int(row), int(col)


def test_itk_orientations_put_the_marker_where_the_convention_says(marker_volume):
    images = {o: data.heldout_images("itk-t1", o) for o in ("coronal", "axial", "sagittal")}
    counts = {o: last - first + 1 for o, (first, last) in data.ITK_T1_SLICES.items()}
    for o, x in images.items():
        assert x.shape == (counts[o], 1, 128, 128) and x.dtype == torch.float32
        assert float(x.max()) == 1.0  # scaled by the 99.5th percentile of the non-zero voxels
        assert 0.09 < float(x[x > 0.05].min()) < 0.26  # the marker: 20 / 200 and 50 / 200
    i, j, k = 40, 80, 20
    # coronal slice k: rows superior -> inferior (row 127 - j), columns i
    first = data.ITK_T1_SLICES["coronal"][0]
    assert _peak(images["coronal"][k - first, 0]) == (127 - j, i)
    # axial slice j: rows anterior -> posterior after 3 mm -> 2 mm resampling (62 -> 93 rows, padded to 128)
    first = data.ITK_T1_SLICES["axial"][0]
    row, col = _peak(images["axial"][j - first, 0])
    assert col == i and abs(row - ((128 - 93) // 2 + (61 - k) * 1.5 + 0.25)) <= 1.5
    # sagittal slice i: rows superior -> inferior, columns anterior -> posterior (resampled, padded)
    first = data.ITK_T1_SLICES["sagittal"][0]
    row, col = _peak(images["sagittal"][i - first, 0])
    assert row == 127 - j and abs(col - ((128 - 93) // 2 + (61 - k) * 1.5 + 0.25)) <= 1.5
    # the padding around the 93 resampled rows/columns is exactly zero
    assert float(images["axial"][:, :, :17].abs().max()) == 0.0
    assert float(images["sagittal"][:, :, :, -18:].abs().max()) == 0.0


def test_itk_size_and_count(marker_volume):
    x = data.heldout_images("itk-t1", "coronal", size=160, n_images=5)
    assert x.shape == (5, 1, 160, 160) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert data.heldout_images("itk-t1", size=(64, 96), n_images=1).shape == (1, 1, 64, 96)
    # n_images slices are the centres of equal parts of the usable range, the middle one for n = 1
    full = data.heldout_images("itk-t1")
    assert torch.equal(data.heldout_images("itk-t1", n_images=1)[0], full[len(full) // 2])


@pytest.mark.skipif(not HAVE_ITK, reason="needs Debian's insighttoolkit5-examples")
def test_itk_real_volume_is_a_head_in_every_orientation():
    for orientation, count in (("coronal", 47), ("axial", 60), ("sagittal", 64)):
        x = data.heldout_images("itk-t1", orientation)
        assert x.shape == (count, 1, 128, 128)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        tissue = (x > 0.1).float().mean(dim=(1, 2, 3))
        assert float(tissue.min()) > 0.05, orientation  # every usable slice holds a head
    # the same voxel line seen in two orientations: coronal row 127 - j of slice k is volume[:, j, k]
    coronal, sagittal = data.heldout_images("itk-t1", "coronal"), data.heldout_images("itk-t1", "sagittal")
    k, i = 30, 64
    column_from_coronal = coronal[k - 6, 0, :, i]
    # the sagittal column of k is resampled: compare with the coronal column through the same point, loosely
    col = (128 - 93) // 2 + round((61 - k) * 1.5 + 0.25)
    assert torch.corrcoef(torch.stack([column_from_coronal, sagittal[i - 30, 0, :, col]]))[0, 1] > 0.9


def test_itk_missing_names_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ITK_T1_PATH", str(tmp_path / "absent.nii.gz"))
    assert not data.heldout_available("itk-t1")
    with pytest.raises(FileNotFoundError, match=r"sudo apt-get install insighttoolkit5-examples"):
        data.heldout_images("itk-t1")
    monkeypatch.setattr(data, "HEAD_CT_PATH", str(tmp_path / "absent.inv3"))
    with pytest.raises(FileNotFoundError, match="apt-get install invesalius-examples"):
        data.heldout_images("head-ct")
    assert data.heldout_available("dipy-t1")  # embedded: always there


# ---------------------------------------------------------------------------------------------- dipy, names


def test_dipy_slice_embedded_lossless_with_notice():
    x = data.heldout_images("dipy-t1")
    assert x.shape == (1, 1, 256, 256) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    levels = x * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # dipy's values are multiples of 1/255
    assert 0.15 < float((x > 0).float().mean()) < 0.3  # a skull-stripped brain, not noise
    assert data.heldout_images("dipy-t1", size=160).shape == (1, 1, 160, 160)
    notice = (ROOT / "deepinv_mol" / "assets" / "DIPY-NOTICE.txt").read_text()
    assert "Redistribution and use in source and binary forms" in notice and "dipy developers" in notice


def test_names_orientations_and_arguments():
    assert data.list_heldout() == ["itk-t1", "dipy-t1", "head-ct"]
    assert data.list_heldout("mri") == ["itk-t1", "dipy-t1"]
    with pytest.raises(ValueError, match="unknown held-out set 'colin27'; expected one of itk-t1, dipy-t1, head-ct"):
        data.heldout_images("colin27")
    with pytest.raises(ValueError, match="held-out set 'dipy-t1' has the orientations coronal, not 'axial'"):
        data.heldout_images("dipy-t1", "axial")
    with pytest.raises(ValueError, match="held-out set 'head-ct' has the orientations axial, not 'coronal'"):
        data.heldout_images("head-ct", "coronal")
    with pytest.raises(ValueError, match="size must be None, an int >= 8"):
        data.heldout_images("dipy-t1", size=4)
    with pytest.raises(ValueError, match="n_images must be None or an int >= 1"):
        data.heldout_images("dipy-t1", n_images=0)
    with pytest.raises(ValueError, match="modality must be"):
        data.list_heldout("pet")


# ------------------------------------------------------------------------------------------- CT slabs


def _write_inv3(path, hu):
    plist = {"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(hu.shape)},
             "spacing": [0.957, 0.957, 1.5]}
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in (("p/matrix.dat", hu.astype("<i2").tobytes()), ("p/main.plist", plistlib.dumps(plist))):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


HELDOUT_CT = list(range(29, 41)) + list(range(84, 96))


def test_head_ct_heldout_slabs_disjoint_from_training_and_validation():
    positions, codes, _ = data.slab_layout(data.HEAD_CT_CYCLE, 2)
    split = {name: set(positions[codes == code].tolist()) for code, name in enumerate(data.SPLITS)}
    held = split[data.HEAD_CT_HELDOUT_SPLIT]
    assert sorted(held) == HELDOUT_CT  # two whole slabs of 12 slices
    for other in ("train", "val"):
        assert not held & split[other]
        assert min(abs(a - b) for a in held for b in split[other]) >= 4  # >= 6 mm from any trained-on slice


def test_head_ct_heldout_reads_those_slices_and_tasks_never_train_on_them(tmp_path, monkeypatch):
    # slice z of a synthetic CT holds the constant z (HU): every image tells which slice it came from
    hu = np.broadcast_to(np.arange(108, dtype=np.int16)[:, None, None] * 10, (108, 16, 16)).copy()
    monkeypatch.setattr(data, "HEAD_CT_PATH", str(_write_inv3(tmp_path / "head.inv3", hu)))
    table = data.hounsfield_to_attenuation(np.arange(108) * 10.0)

    def slices_of(images):
        values = images.reshape(len(images), -1)
        assert torch.allclose(values, values[:, :1].expand_as(values), atol=1e-6)
        return [int(torch.argmin((table - v).abs())) for v in values[:, 0]]

    held = data.heldout_images("head-ct")
    assert held.shape == (24, 1, 16, 16) and slices_of(held[:, 0]) == HELDOUT_CT
    assert slices_of(data.heldout_images("head-ct", n_images=8)[:, 0]) == [30, 33, 36, 39, 85, 88, 91, 94]
    task = get_task("ct-sparse-view", size=16, source="head-ct")
    for split in ("train", "val"):
        dataset = task.dataset(split)
        seen = slices_of(torch.stack([dataset[i][0] for i in range(len(dataset))]))
        assert not set(seen) & set(HELDOUT_CT), split


# ------------------------------------------------------------------------------------------------ CLI


def _parse(*argv):
    return cli.build_parser().parse_args(["eval", "--task", "mri-radial-4x", *argv])


def test_cli_heldout_options_parse():
    args = _parse("--heldout", "itk-t1", "--orientation", "axial", "--size", "task", "--intensity-scale", "0.5")
    assert (args.heldout, args.orientation, args.size, args.intensity_scale) == ("itk-t1", "axial", "task", 0.5)
    assert _parse("--heldout", "dipy-t1", "--size", "96").size == 96
    args = _parse("--split", "test")
    assert (args.heldout, args.orientation, args.size, args.intensity_scale) == (None, None, None, 1.0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--heldout", "itk-t1", "--split", "test"], "not allowed with argument"),
        (["--heldout", "itk-t1", "--orientation", "oblique"], "invalid choice: 'oblique'"),
        (["--heldout", "itk-t1", "--size", "4"], "expected 'native', 'task' or an integer >= 8, got '4'"),
        (["--heldout", "itk-t1", "--size", "big"], "expected 'native', 'task' or an integer >= 8, got 'big'"),
        (["--heldout", "itk-t1", "--intensity-scale", "0"], "expected a positive number, got '0'"),
        (["--heldout", "itk-t1", "--intensity-scale", "inf"], "expected a positive number, got 'inf'"),
    ],
)
def test_cli_heldout_bad_values(argv, message):
    with pytest.raises(cli.CLIError, match=message):
        _parse(*argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "mri-radial-4x", "--heldout", "lena"], "unknown held-out set 'lena': expected one of itk-t1"),
        (["--task", "ct-sparse-view", "--heldout", "itk-t1"],
         "held-out set 'itk-t1' holds MRI images; task 'ct-sparse-view' is a CT task (use one of head-ct)"),
        (["--task", "mri-radial-4x", "--heldout", "dipy-t1", "--orientation", "sagittal"],
         "held-out set 'dipy-t1' has the orientations coronal, not 'sagittal'"),
        (["--task", "mri-radial-4x", "--split", "test", "--orientation", "axial"],
         "--orientation applies to --heldout images only"),
        (["--task", "mri-radial-4x", "--images", "x.npy", "--size", "task"], "--size applies to --heldout images only"),
    ],
)
def test_cli_heldout_user_errors_exit_2(argv, message, capsys):
    assert cli.main(["eval", *argv, "--models", "adjoint"]) == 2
    assert message in capsys.readouterr().err


def test_cli_heldout_missing_package_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "ITK_T1_PATH", str(tmp_path / "absent.nii.gz"))
    assert cli.main(["eval", "--task", "mri-radial-4x", "--heldout", "itk-t1", "--models", "adjoint"]) == 2
    assert "sudo apt-get install insighttoolkit5-examples" in capsys.readouterr().err


def test_cli_eval_heldout_runs_and_intensity_scale_is_undone(tmp_path, capsys):
    # the adjoint is rescaled by the least-squares scalar: it is exactly equivariant, so x2 scores the same
    scores = []
    for scale in ("1", "2"):
        out = tmp_path / f"r{scale}.json"
        assert cli.main(["eval", "--task", "mri-radial-4x", "--heldout", "dipy-t1", "--size", "32",
                         "--models", "adjoint", "--intensity-scale", scale, "--json", str(out)]) == 0
        import json

        payload = json.loads(out.read_text())
        assert payload["data_source"].startswith("held-out dipy-t1 (coronal, (32, 32) size")
        assert payload["data_source"].endswith("" if scale == "1" else ", intensity x2")
        scores.append(payload["models"]["adjoint"]["psnr"])
    assert abs(scores[0] - scores[1]) < 1e-3
    assert "intensity x2" in capsys.readouterr().out


def test_cli_demo_takes_heldout_images(capsys):
    args = cli.build_parser().parse_args(["demo", "--heldout", "itk-t1", "--orientation", "sagittal", "--size", "task"])
    assert (args.heldout, args.orientation, args.size, args.n_images) == ("itk-t1", "sagittal", "task", 2)
    assert cli.main(["demo", "--task", "ct-sparse-view", "--heldout", "dipy-t1", "--out", "/tmp/unused"]) == 2
    assert "held-out set 'dipy-t1' holds MRI images; task 'ct-sparse-view' is a CT task" in capsys.readouterr().err
    assert cli.main(["demo", "--orientation", "axial", "--out", "/tmp/unused"]) == 2
    assert "--orientation applies to --heldout images only" in capsys.readouterr().err
