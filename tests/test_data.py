"""Data: embedded slices and their provenance, slab splits, phase/motion/volume datasets, the head-CT
reader (on a synthetic .inv3 built here; the real Debian file only when installed), users' stacks,
deepinv pass-through."""

import importlib.util
import io
import math
import pathlib
import plistlib
import tarfile

import numpy as np
import pytest
import torch

from deepinv_mol import data

ROOT = pathlib.Path(__file__).resolve().parents[1]
MRICRON = pathlib.Path("/usr/share/mricron/templates/ch2.nii.gz")


# ------------------------------------------------------------------------------------------ embedded


@pytest.fixture(scope="module")
def embedded():
    return {split: data.load_embedded(split) for split in (None,) + data.SPLITS}


def test_embedded_shapes_dtype_range(embedded):
    everything = embedded[None]
    assert everything.images.shape == (136, 160, 160)
    assert everything.images.dtype == torch.float32
    assert float(everything.images.min()) == 0.0 and float(everything.images.max()) == 1.0
    sizes = {split: len(embedded[split].images) for split in data.SPLITS}
    assert sizes == {"train": 72, "val": 32, "test": 32}
    # a head, not noise: a sizeable part of every slice is tissue
    assert all(float((im > 0.1).float().mean()) > 0.05 for im in everything.images)


def test_split_disjoint_with_slab_gap(embedded):
    positions = {s: set(embedded[s].positions.tolist()) for s in data.SPLITS}
    for a in data.SPLITS:
        for b in data.SPLITS:
            if a < b:
                assert not positions[a] & positions[b]
                gap = min(abs(i - j) for i in positions[a] for j in positions[b])
                assert gap >= 5, (a, b, gap)
    # slabs are runs of consecutive source slices, and every slab belongs to one split
    for split in data.SPLITS:
        stack = embedded[split]
        for block in stack.blocks.unique():
            z = stack.positions[stack.blocks == block]
            assert torch.equal(z, torch.arange(int(z[0]), int(z[0]) + len(z)))
            assert len(z) >= 16  # room for a 16-slice mri-3d volume


def test_embedded_provenance(embedded):
    info = data.embedded_provenance()
    assert "BSD-3-Clause" in info["licence"]
    assert info["source_file"].endswith("ch2.nii.gz") and "mricron" in info["source_file"]
    assert info["source_package"].startswith("mricron-data")
    assert len(info["source_sha256"]) == 64 and int(info["source_sha256"], 16) >= 0
    assert "Holmes" in info["citation"]
    assert (ROOT / info["script"]).is_file()
    assert info["split_names"] == list(data.SPLITS)
    for split in data.SPLITS:
        assert info[f"{split}_source_z"] == embedded[split].positions.tolist()
    assert math.isclose(info["pixel_spacing_mm"], 217 / 160, rel_tol=1e-6)


def test_embedded_file_is_small():
    path = ROOT / "deepinv_mol" / "assets" / data.EMBEDDED_FILE
    assert path.stat().st_size < 3e6


@pytest.mark.skipif(not MRICRON.is_file(), reason="Debian package mricron-data not installed")
def test_script_regenerates_identical_file():
    spec = importlib.util.spec_from_file_location("make_embedded_data", ROOT / "scripts" / "make_embedded_data.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    shipped = (ROOT / "deepinv_mol" / "assets" / data.EMBEDDED_FILE).read_bytes()
    assert script.to_npz_bytes(script.build_arrays(str(MRICRON))) == shipped


def test_slab_layout():
    z, split, block = data.slab_layout((("train", 3), ("gap", 2), ("val", 2), ("gap", 1), ("test", 1)), 2, first=5)
    assert z.tolist() == [5, 6, 7, 10, 11, 13, 14, 15, 16, 19, 20, 22]
    assert [data.SPLITS[c] for c in split[:6]] == ["train"] * 3 + ["val"] * 2 + ["test"]
    assert block.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4, 5]
    with pytest.raises(ValueError, match="slab names"):
        data.slab_layout((("training", 3),), 1)
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_embedded("validation")


# ------------------------------------------------------------------------------- phase, motion, datasets


def test_smooth_random_phase_seeded_bandlimited():
    a = data.smooth_random_phase((40, 36), torch.Generator().manual_seed(3), max_phase=2.0, max_frequency=2)
    b = data.smooth_random_phase((40, 36), torch.Generator().manual_seed(3), max_phase=2.0, max_frequency=2)
    c = data.smooth_random_phase((40, 36), torch.Generator().manual_seed(4), max_phase=2.0, max_frequency=2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.dtype == torch.float32 and math.isclose(float(a.abs().max()), 2.0, rel_tol=1e-5)
    # a low-frequency Fourier series: no energy beyond 2 cycles per field of view
    spectrum = torch.fft.fft2(a.double()).abs() ** 2
    fy = torch.fft.fftfreq(40, 1 / 40).abs()[:, None]
    fx = torch.fft.fftfreq(36, 1 / 36).abs()[None, :]
    outside = spectrum[(fy > 2) | (fx > 2)].sum() / spectrum.sum()
    assert outside < 1e-10
    volume = data.smooth_random_phase((6, 10, 12), torch.Generator().manual_seed(0))
    assert volume.shape == (6, 10, 12) and math.isclose(float(volume.abs().max()), math.pi, rel_tol=1e-5)
    with pytest.raises(ValueError, match="shape must be"):
        data.smooth_random_phase((5,))


def test_add_phase_modulus_and_angle():
    magnitude = torch.rand(7, 9) + 0.1
    phase = (torch.rand(7, 9) * 2 - 1) * 3.0
    z = data.add_phase(magnitude, phase)
    assert z.shape == (2, 7, 9)
    assert torch.allclose(z.norm(dim=0), magnitude, atol=1e-6)
    assert torch.allclose(torch.atan2(z[1], z[0]), phase, atol=1e-5)
    with pytest.raises(ValueError, match="differ"):
        data.add_phase(magnitude, phase[:3])


def test_slice_dataset_deterministic_and_layout():
    images = data.load_embedded("test").images[:4]
    ds = data.SliceDataset(images, complex=True, seed=5)
    x = ds[2]
    assert x.shape == (2, 160, 160) and x.dtype == torch.float32
    assert torch.allclose(x.norm(dim=0), images[2], atol=1e-6)  # phase only, magnitude untouched
    assert torch.equal(x, data.SliceDataset(images, complex=True, seed=5)[2])
    assert not torch.allclose(x, data.SliceDataset(images, complex=True, seed=6)[2])
    magnitude = data.SliceDataset(images, crop_size=64)[1]
    assert magnitude.shape == (1, 64, 64) and torch.equal(magnitude[0], images[1, 48:112, 48:112])
    full = data.SliceDataset(images)
    full[0].zero_()  # items are copies
    assert torch.equal(full[0][0], images[0]) and float(images[0].max()) > 0


def test_slice_dataset_training_augmentation_changes_with_epoch():
    images = data.load_embedded("train").images[:3]
    ds = data.SliceDataset(images, crop_size=(96, 80), random_crop=True, flip=True, complex=True, seed=0)
    first = ds[1]
    assert first.shape == (2, 96, 80) and torch.equal(first, ds[1])
    ds.set_epoch(1)
    assert not torch.equal(first, ds[1])
    ds.set_epoch(0)
    assert torch.equal(first, ds[1])
    with pytest.raises(ValueError, match="larger than the images"):
        data.SliceDataset(images, crop_size=200)
    with pytest.raises(ValueError, match="complex"):
        data.SliceDataset(torch.zeros(2, 2, 16, 16), complex=False)
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        data.SliceDataset(torch.zeros(16, 16))


def test_motion_dataset_moves_smoothly():
    images = data.resize_images(data.load_embedded("val").images[:2], (48, 48))
    ds = data.MotionDataset(images, frames=6, complex=True, seed=1)
    seq = ds[0]
    assert seq.shape == (2, 6, 48, 48) and torch.equal(seq, ds[0])
    frames = seq.norm(dim=0)
    steps = [(frames[t + 1] - frames[t]).norm() / frames[t].norm() for t in range(5)]
    assert all(0 < s < 0.5 for s in steps)  # moving, but smoothly
    energy = frames.flatten(1).norm(dim=1)
    assert float(energy.max() / energy.min()) < 1.25  # the anatomy stays in view
    still = data.smooth_motion(images[0][None], 4, torch.Generator().manual_seed(0), 0.0, 0.0, 0.0)
    assert torch.allclose(still, images[0][None, None].expand(1, 4, 48, 48), atol=1e-5)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        data.smooth_motion(images[0], 4)


def test_volume_dataset_stays_inside_slabs():
    stack = data.load_embedded("test")
    ds = data.VolumeDataset(stack, depth=16, stride=8, complex=True, seed=0)
    assert len(ds) == 2  # two 16-slice test slabs, one window each
    for i in range(len(ds)):
        volume = ds[i]
        assert volume.shape == (2, 16, 160, 160)
        start = ds.starts[i]
        assert len(stack.blocks[start : start + 16].unique()) == 1
        assert torch.allclose(volume.norm(dim=0), stack.images[start : start + 16], atol=1e-6)
    magnitude = data.VolumeDataset(stack, depth=4, stride=4, crop_size=32, complex=False)
    assert len(magnitude) == 8 and magnitude[0].shape == (1, 4, 32, 32)
    with pytest.raises(ValueError, match="no slab holds"):
        data.VolumeDataset(stack, depth=17)


def test_item_generator_and_resize():
    a = torch.rand(3, generator=data.item_generator(0, 1, 2))
    assert torch.equal(a, torch.rand(3, generator=data.item_generator(0, 1, 2)))
    assert not torch.equal(a, torch.rand(3, generator=data.item_generator(0, 2, 1)))
    images = torch.rand(2, 40, 40)
    assert data.resize_images(images, (20, 24)).shape == (2, 20, 24)
    constant = data.resize_images(torch.full((1, 2, 40, 40), 0.5), (20, 20))
    assert torch.allclose(constant, torch.full_like(constant, 0.5), atol=1e-6)
    with pytest.raises(ValueError, match="images must be"):
        data.resize_images(torch.rand(40, 40), (20, 20))


# ------------------------------------------------------------------------------------------- head CT


def _write_inv3(path, hu, spacing=(0.9, 0.9, 1.5), with_plist=True, announced_shape=None):
    plist = {
        "format_version": 1,
        "modality": "CT",
        "matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": list(announced_shape or hu.shape)},
        "spacing": list(spacing),
    }
    with tarfile.open(path, "w:gz") as archive:
        members = {"tmpabc/matrix.dat": hu.astype("<i2").tobytes()}
        if with_plist:
            members["tmpabc/main.plist"] = plistlib.dumps(plist)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    return path


def test_read_inv3_and_attenuation(tmp_path):
    hu = np.arange(108 * 6 * 5, dtype=np.int16).reshape(108, 6, 5) % 4000 - 1024
    hu[0, 0, :4] = [-1024, -1000, 0, 3071]
    path = _write_inv3(tmp_path / "head.inv3", hu)
    volume, meta = data.read_inv3(path)
    assert np.array_equal(volume, hu) and meta["modality"] == "CT"
    stack = data.load_head_ct(path)
    # slab pattern over 108 slices: train 52, test 24, val 16, at least 4 slices between splits
    assert stack.images.shape == (92, 6, 5) and stack.images.dtype == torch.float32
    mu_max = data.MU_WATER_PER_MM * (1 + data.HU_MAX / 1000)
    expected = [0.0, 0.0, data.MU_WATER_PER_MM / mu_max, 1.0]
    assert torch.allclose(stack.images[0, 0, :4], torch.tensor(expected), atol=1e-6)
    reference = data.hounsfield_to_attenuation(hu[stack.positions.numpy()])
    assert torch.equal(stack.images, reference)
    mu = data.hounsfield_to_attenuation(np.array([0.0, 1000.0]), normalized=False)
    assert torch.allclose(mu, torch.tensor([0.02, 0.04]))
    splits = {s: set(data.load_head_ct(path, split=s).positions.tolist()) for s in data.SPLITS}
    assert [len(splits[s]) for s in data.SPLITS] == [52, 16, 24]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert min(abs(i - j) for i in splits[a] for j in splits[b]) >= 4


def test_head_ct_smaller_volume_keeps_split(tmp_path):
    hu = np.zeros((40, 4, 4), np.int16)
    path = _write_inv3(tmp_path / "small.inv3", hu)
    splits = {s: data.load_head_ct(path, split=s).positions.tolist() for s in data.SPLITS}
    assert all(splits[s] for s in data.SPLITS) and max(max(v) for v in splits.values()) < 40
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(splits[a]) & set(splits[b])


def test_head_ct_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "HEAD_CT_PATH", str(tmp_path / "absent.inv3"))
    assert not data.head_ct_available()
    with pytest.raises(FileNotFoundError, match="apt-get install invesalius-examples"):
        data.load_head_ct()
    (tmp_path / "text.inv3").write_text("not a tar")
    with pytest.raises(ValueError, match="not an InVesalius"):
        data.read_inv3(tmp_path / "text.inv3")
    no_plist = _write_inv3(tmp_path / "noplist.inv3", np.zeros((2, 3, 3)), with_plist=False)
    with pytest.raises(ValueError, match="main.plist"):
        data.read_inv3(no_plist)
    wrong = _write_inv3(tmp_path / "wrong.inv3", np.zeros((2, 3, 3)), announced_shape=(2, 4, 4))
    with pytest.raises(ValueError, match="announces"):
        data.read_inv3(wrong)


@pytest.mark.skipif(not data.head_ct_available(), reason="Debian package invesalius-examples not installed")
def test_real_head_ct():
    stack = data.load_head_ct(split="test")
    assert stack.images.shape == (24, 256, 256)
    assert float(stack.images.min()) == 0.0 and float(stack.images.max()) <= 1.0
    water = data.MU_WATER_PER_MM / (data.MU_WATER_PER_MM * (1 + data.HU_MAX / 1000))
    tissue = stack.images[(stack.images > 0.2) & (stack.images < 0.3)]
    # soft tissue and brain (0 to 80 HU) dominate the head: the median sits just above water
    assert water < float(tissue.median()) < water * 1.08


# --------------------------------------------------------------------------------------- user stacks


def test_load_image_stack_layouts(tmp_path):
    magnitude = np.random.default_rng(0).random((3, 16, 12)).astype(np.float32)
    np.save(tmp_path / "m.npy", magnitude)
    assert torch.equal(data.load_image_stack(tmp_path / "m.npy"), torch.from_numpy(magnitude))
    np.save(tmp_path / "m1.npy", magnitude[:, None].astype(np.float64))
    assert data.load_image_stack(tmp_path / "m1.npy").shape == (3, 16, 12)
    z = (magnitude * np.exp(1j * magnitude)).astype(np.complex64)
    np.save(tmp_path / "c.npy", z)
    loaded = data.load_image_stack(tmp_path / "c.npy")
    assert loaded.shape == (3, 2, 16, 12) and torch.allclose(loaded[:, 1], torch.from_numpy(z.imag))
    np.save(tmp_path / "c2.npy", np.stack([z.real, z.imag], 1))
    assert torch.allclose(data.load_image_stack(tmp_path / "c2.npy"), loaded)


@pytest.mark.parametrize(
    "array, error, message",
    [
        (np.zeros((16, 16)), ValueError, "got shape"),
        (np.zeros((2, 3, 16, 16)), ValueError, "got shape"),
        (np.zeros((2, 4, 4)), ValueError, "H, W >= 8"),
        (np.full((2, 16, 16), 2.0), ValueError, r"\[0, 1\]"),
        (np.full((2, 16, 16), np.nan), ValueError, "NaN"),
        (np.full((1, 2, 16, 16), 0.9), ValueError, "moduli"),
        (np.array([["a"] * 16] * 16)[None], TypeError, "numeric"),
    ],
)
def test_load_image_stack_errors(tmp_path, array, error, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(error, match=message):
        data.load_image_stack(tmp_path / "bad.npy")


def test_load_image_stack_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        data.load_image_stack(tmp_path / "missing.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match="not a readable .npy"):
        data.load_image_stack(tmp_path / "text.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 8, 8)), b=np.zeros(2))
    with pytest.raises(ValueError, match="several arrays"):
        data.load_image_stack(tmp_path / "two.npz")
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a readable .npy"):
        data.load_image_stack(tmp_path / "objects.npy")


# ------------------------------------------------------------------------------------ deepinv datasets


def test_deepinv_dataset_pass_through(tmp_path):
    import deepinv

    with pytest.raises(ValueError, match="calgary"):
        data.deepinv_dataset("imagenet", tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        data.deepinv_dataset("fastmri", tmp_path / "absent")
    if importlib.util.find_spec("h5py") is not None:
        empty = data.deepinv_dataset("fastmri", tmp_path, use_dict_output=True)
        assert isinstance(empty, deepinv.datasets.FastMRISliceDataset) and len(empty) == 0


def test_ground_truth_dataset():
    x = torch.rand(1, 8, 8)
    items = [(x, "y"), {"x": x, "y": 0}, x]
    wrapped = data.GroundTruthDataset(items)
    assert len(wrapped) == 3 and all(torch.equal(wrapped[i], x) for i in range(3))


def test_image_of_and_crop_window_and_seeding_are_the_package_helpers():
    x = torch.rand(1, 8, 8, dtype=torch.float64)
    assert data.image_of((x, "y")).dtype == torch.float32 and torch.equal(data.image_of({"x": x}), x.float())
    z = torch.zeros(2, 2, dtype=torch.complex64)
    assert data.image_of(z).dtype == torch.complex64
    with pytest.raises(ValueError, match="'x' entry"):
        data.image_of({"y": x})
    assert data.crop_window((10, 8), (4, 2)) == (slice(3, 7), slice(3, 5))
    g = torch.Generator().manual_seed(0)
    windows = {(r.start, r.stop, c.start, c.stop) for r, c in (data.crop_window((6, 6), 3, g) for _ in range(50))}
    assert len(windows) > 1 and all(0 <= a and b == a + 3 <= 6 and 0 <= c and d == c + 3 <= 6 for a, b, c, d in windows)
    with pytest.raises(ValueError, match=r"crop 7x7 is larger than the images \(6x6\)"):
        data.crop_window((6, 6), 7)
    # non-negative keys: numpy's SeedSequence words as they always were (published datasets unchanged)
    state = np.random.SeedSequence([4, 0, 2]).generate_state(2, np.uint32)
    assert data.item_generator(4, 0, 2).initial_seed() == int(state[0]) << 32 | int(state[1])
    assert data.item_generator(4, -2).initial_seed() != data.item_generator(4, 2).initial_seed()
    assert set(data.__all__) <= set(dir(data)) and "image_of" in data.__all__
