"""AstraCT: reconstruction quality, consistency with deepinv's Tomography, conventions, safety
without a GPU, input validation, and the CUDA code paths exercised through a faked ASTRA.

The operator contract (adjointness, normal operator, norm, pseudo-inverse, autograd, device,
state_dict, batch) is in test_physics_contract.py (operators ct-parallel, ct-fanbeam,
ct-parallel3d-cpu).
"""

import copy
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from deepinv_mol.physics import AstraCT
from deepinv_mol.physics import ct as ct_module


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _psnr(x_hat, x):
    return (10 * torch.log10(x.max() ** 2 / (x_hat - x).pow(2).mean())).item()


def _shepp_logan(n):
    from deepinv.utils.phantoms import generate_shepp_logan

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.meshgrid indexing warning inside deepinv
        return generate_shepp_logan(n)[None, None]


def _half_turn(n):
    return torch.linspace(0, math.pi, n + 1, dtype=torch.float64)[:-1]


def _full_turn(n):
    return torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]


# ------------------------------------------------------------------ reconstruction quality


def test_fbp_shepp_logan_256_360_views():
    """ASTRA FBP (Ram-Lak) of the 256x256 Shepp-Logan phantom, 360 views: measured 29.3 dB."""
    x = _shepp_logan(256)
    physics = AstraCT((256, 256), _half_turn(360), backend="cpu", normalize=False)
    x_fbp = physics.A_dagger(physics.A(x), fbp=True)
    assert x_fbp.shape == x.shape
    assert _psnr(x_fbp, x) >= 28.0
    assert abs(x_fbp.mean().item() / x.mean().item() - 1) < 1e-2  # FBP returns image units


def test_cg_beats_fbp_with_few_views():
    """30 views at 128x128: FBP streaks (measured 18.6 dB), CG least squares 20.5 dB."""
    x = _shepp_logan(128)
    physics = AstraCT((128, 128), _half_turn(30), backend="cpu", normalize=False)
    y = physics.A(x)
    psnr_fbp = _psnr(physics.A_dagger(y, fbp=True), x)
    psnr_cg = _psnr(physics.A_dagger(y, max_iter=20, tol=1e-10), x)
    assert psnr_cg > psnr_fbp + 1.0, (psnr_cg, psnr_fbp)


def _disc_phantom(n):
    a = torch.arange(n) - (n - 1) / 2
    yy, xx = torch.meshgrid(a, a, indexing="ij")
    disc = ((xx**2 + yy**2).sqrt() < 0.4 * n).float()
    blob = (((xx - n / 8) ** 2 + (yy + n / 10) ** 2).sqrt() < n / 8).float()
    return (disc + 0.5 * blob)[None, None]


@pytest.mark.parametrize("n, views", [(16, 16), (16, 32), (16, 128), (64, 16), (64, 64), (64, 128)])
def test_fanbeam_fbp_error_close_to_parallel(n, views):
    """Direct fan-beam FBP (no rebinning across views) stays near parallel-beam FBP at every view count.

    Measured (relative error, disc phantom; parallel vs fan): 16^2: 0.115/0.184 at 16 views (rebinning
    gave 0.250), 0.118/0.166 at 32, 0.117/0.173 at 128; 64^2: 0.165/0.212 at 16, 0.087/0.085 at 64,
    0.083/0.067 at 128.
    """
    x = _disc_phantom(n)
    par = AstraCT((n, n), _half_turn(views), backend="cpu", normalize=False)
    fan = AstraCT((n, n), _full_turn(views), geometry="fanbeam", backend="cpu", normalize=False)
    err_par = _rel(par.fbp(par.A(x)), x)
    err_fan = _rel(fan.fbp(fan.A(x)), x)
    assert err_fan < 1.7 * err_par
    assert err_fan < 0.22
    # the fan-beam scale is right (least-squares gain of the reconstruction within 4 %)
    r = fan.fbp(fan.A(x))
    assert abs((r * x).sum().item() / (r * r).sum().item() - 1) < 0.04


def test_fanbeam_fbp_cpu_by_rebinning():
    """Fan-beam FBP on CPU (direct weighted FBP) at 128x128, 180 views (rebinning measured 23.8 dB)."""
    x = _shepp_logan(128)
    physics = AstraCT((128, 128), _full_turn(180), geometry="fanbeam", backend="cpu", normalize=False)
    x_fbp = physics.A_dagger(physics.A(x), fbp=True)
    assert _psnr(x_fbp, x) >= 22.0
    assert abs(x_fbp.mean().item() / x.mean().item() - 1) < 1e-2
    half = AstraCT((128, 128), _half_turn(90), geometry="fanbeam", backend="cpu", normalize=False)
    with pytest.raises(ValueError, match="full"):
        half.fbp(half.A(x))


def test_ramp_backprojection_equals_astra_fbp():
    """The ramp filter + back projection used for 3D parallel FBP on the GPU is ASTRA's FBP."""
    x = _shepp_logan(48)
    for pixel_size, spacing in ((1.0, 1.0), (0.5, 0.7)):
        physics = AstraCT((48, 48), _half_turn(60), backend="cpu", pixel_size=pixel_size, detector_spacing=spacing, normalize=False)
        y = physics.A(x)
        ours = ct_module._ramp_backprojection(physics._engine(), y[:, 0].numpy(), spacing, pixel_size)
        assert _rel(torch.from_numpy(ours)[:, None], physics.fbp(y)) < 1e-4


# ------------------------------------------------------------------ deepinv's Tomography


@pytest.mark.parametrize("n", [61])
def test_consistent_with_deepinv_tomography(n):
    """Same parallel geometry as deepinv.physics.Tomography (degrees, sinogram (N, A)).

    Tomography rotates about pixel n // 2 and pads to ceil(sqrt(2) n) detector cells of one pixel;
    for odd n with an odd padded size the two rotation centres coincide. After transposing, the
    best scale is 1 within 1e-3 and the sinograms differ by ~1 % (Joseph vs bilinear sampling on
    the sharp phantom; 0.3 % at n = 255).
    """
    from deepinv.physics import Tomography

    theta = _half_turn(90).float()
    tomo = Tomography(theta * 180 / math.pi, n, normalize=False, adjoint_via_backprop=True)
    x = _shepp_logan(n) + 0.1
    y_tomo = tomo.A(x).transpose(-1, -2)
    physics = AstraCT((n, n), theta, n_detectors=y_tomo.shape[-1], backend="cpu", normalize=False)
    y = physics.A(x)
    scale = ((y * y_tomo).sum() / (y * y).sum()).item()
    assert abs(scale - 1) < 1e-3
    assert _rel(scale * y, y_tomo) < 0.02


# ------------------------------------------------------------------ conventions and units


def test_conventions_angle_zero_is_column_sums_and_units():
    """At angle 0 the sinogram is the column sums (detector along +x); at pi/2 detector along +y
    (row 0 on top); sinograms scale with pixel_size (physical line integrals)."""
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 1, 7] = 1.0  # top right: x = +3, y = +3 pixels
    physics = AstraCT((9, 9), torch.tensor([0.0, math.pi / 2]), n_detectors=9, backend="cpu", normalize=False)
    y = physics.A(x)[0, 0]
    assert y.argmax(-1).tolist() == [7, 7]
    assert torch.allclose(y.sum(-1), torch.ones(2), atol=1e-5)
    big = AstraCT((9, 9), torch.tensor([0.0, math.pi / 2]), n_detectors=9, backend="cpu", pixel_size=2.0, normalize=False)
    assert torch.allclose(big.A(x), 2 * physics.A(x), atol=1e-5)
    # fbp is in image units whatever the pixel size
    xs = _shepp_logan(64)
    for ps in (1.0, 0.25):
        p = AstraCT((64, 64), _half_turn(90), backend="cpu", pixel_size=ps, normalize=False)
        assert abs(p.fbp(p.A(xs)).mean().item() / xs.mean().item() - 1) < 1e-2


def test_default_detector_covers_the_image():
    """Default detectors see every pixel at every angle (parallel and fan)."""
    for geometry, angles in (("parallel", _half_turn(45)), ("fanbeam", _full_turn(45))):
        physics = AstraCT((40, 30), angles, geometry=geometry, backend="cpu", normalize=False)
        x = torch.ones(1, 1, 40, 30)
        # total mass is conserved by parallel projections when nothing falls off the detector
        y = physics.A(x)
        if geometry == "parallel":
            assert torch.allclose(y.sum(-1), torch.full_like(y.sum(-1), 1200.0), rtol=3e-3)
        corners = torch.zeros(1, 1, 40, 30)
        corners[..., 0, 0] = corners[..., -1, -1] = corners[..., 0, -1] = corners[..., -1, 0] = 1
        # a detector three times wider sees nothing more of the corners
        wide = AstraCT((40, 30), angles, geometry=geometry, backend="cpu", n_detectors=3 * physics.n_detectors, normalize=False)
        assert (physics.A(corners).sum(-1) > 0.5).all()
        assert torch.allclose(physics.A(corners).sum(-1), wide.A(corners).sum(-1), rtol=1e-4)


def test_parallel3d_cpu_is_slice_by_slice():
    """3D parallel beam on CPU: detector row d is the 2D sinogram of slice d; the adjoint likewise."""
    rng = torch.Generator().manual_seed(0)
    angles = _half_turn(20)
    vol = AstraCT((4, 21, 17), angles, backend="cpu", normalize=False)
    flat = AstraCT((21, 17), angles, backend="cpu", normalize=False)
    x = torch.randn(2, 1, 4, 21, 17, generator=rng)
    y = vol.A(x)
    assert y.shape == (2, 1, 4, 20, vol.n_detectors) == (2, 1) + vol.measurement_shape
    for d in range(4):
        assert _rel(y[:, :, d], flat.A(x[:, :, d])) < 1e-6
        assert _rel(vol.A_adjoint(y)[:, :, d], flat.A_adjoint(y[:, :, d])) < 1e-6
    assert vol.fbp(y).shape == x.shape


def test_channels_independent_and_dtype_kept():
    """C channels are independent images; float64 in -> float64 out (ASTRA computes in float32)."""
    rng = torch.Generator().manual_seed(1)
    physics = AstraCT((15, 15), _half_turn(12), backend="cpu", normalize=False)
    x = torch.randn(2, 3, 15, 15, generator=rng, dtype=torch.float64)
    y = physics.A(x)
    assert y.dtype == torch.float64 and y.shape == (2, 3, 12, physics.n_detectors)
    for c in range(3):
        assert _rel(y[:, c : c + 1], physics.A(x[:, c : c + 1])) < 1e-12


def test_threaded_batch_equals_serial():
    """Large enough projections run the batch on threads (ASTRA releases the GIL): same result."""
    rng = torch.Generator().manual_seed(8)
    x = torch.randn(3, 1, 64, 64, generator=rng)
    threaded = AstraCT((64, 64), _half_turn(60), backend="cpu", n_threads=3, normalize=False)
    serial = AstraCT((64, 64), _half_turn(60), backend="cpu", n_threads=1, normalize=False)
    y = threaded.A(x)
    assert torch.equal(y, serial.A(x))
    assert torch.equal(threaded.A_adjoint(y), serial.A_adjoint(y))


def test_autograd_of_adjoint_is_forward():
    """backward of A_adjoint is A: grad_y <A^T y, x> = A x; double backward works."""
    rng = torch.Generator().manual_seed(2)
    physics = AstraCT((17, 19), _half_turn(10), backend="cpu", normalize=False)
    x = torch.randn(1, 1, 17, 19, generator=rng)
    y = torch.randn((1, 1) + physics.measurement_shape, generator=rng, requires_grad=True)
    (g,) = torch.autograd.grad((physics.A_adjoint(y) * x).sum(), y)
    assert _rel(g, physics.A(x)) < 1e-6
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(0.5 * physics.A(xr).pow(2).sum(), xr, create_graph=True)
    (hx,) = torch.autograd.grad((gx * x).sum(), xr)  # Hessian-vector product = A^T A x
    assert _rel(hx, physics.A_adjoint_A(x)) < 1e-5


def test_state_dict_new_angles_rebuild_geometry():
    """Loading other angles into the buffer changes the operator (ASTRA geometry follows buffers)."""
    rng = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 16, 16, generator=rng)
    a = AstraCT((16, 16), _half_turn(10), n_detectors=24, backend="cpu", normalize=False)
    b = AstraCT((16, 16), _half_turn(10) + 0.3, n_detectors=24, backend="cpu", normalize=False)
    y_a = a.A(x)
    assert _rel(b.A(x), y_a) > 1e-2
    b.load_state_dict(a.state_dict())
    assert _rel(b.A(x), y_a) < 1e-6
    c = copy.deepcopy(a)
    assert _rel(c.A(x), y_a) < 1e-6
    del c  # the copy's ASTRA projector is its own: deleting it leaves `a` working
    assert _rel(a.A(x), y_a) < 1e-6


def test_update_parameters_angles():
    """physics(x, angles=...) swaps the angle set (validated); the sinogram follows it."""
    rng = torch.Generator().manual_seed(7)
    x = torch.randn(1, 1, 16, 16, generator=rng)
    physics = AstraCT((16, 16), _half_turn(10), n_detectors=24, backend="cpu", normalize=False)
    other = AstraCT((16, 16), _half_turn(7), n_detectors=24, backend="cpu", normalize=False)
    y = physics(x, angles=_half_turn(7))
    assert y.shape[-2] == 7 and _rel(y, other.A(x)) < 1e-6
    assert physics.measurement_shape == (7, 24)
    with pytest.raises(ValueError, match="1D"):
        physics.update_parameters(angles=torch.zeros(2, 2))


# ------------------------------------------------------------------ safety without a GPU


def test_cuda_without_gpu_raises_in_subprocess():
    """Asking for CUDA without a GPU raises a clean exception; the interpreter does not die (SIGFPE)."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    # one interpreter (imports are slow): cone without GPU raises and we carry on, then an
    # uncaught backend='cuda' error must end the interpreter normally with exit code 1
    code = (
        "import torch\n"
        "from deepinv_mol.physics import AstraCT\n"
        "try:\n"
        "    AstraCT((8, 32, 32), torch.linspace(0, 6.28, 10), geometry='cone')\n"
        "except RuntimeError as e:\n"
        "    print('raised:', e)\n"
        "print('alive')\n"
        "AstraCT((32, 32), torch.linspace(0, 3.14, 10), backend='cuda')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])  # not -8 / 136 (SIGFPE)
    assert "raised:" in run.stdout and "alive" in run.stdout
    assert "RuntimeError" in run.stderr and "SIGFPE" in run.stderr and "backend='cpu'" in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_no_gpu_choices():
    """auto falls back to CPU; cone on CPU is a ValueError, cone/cuda without GPU a RuntimeError."""
    assert AstraCT((8, 8), _half_turn(4), normalize=False).backend == "cpu"
    assert AstraCT((3, 8, 8), _half_turn(4), normalize=False).backend == "cpu"
    with pytest.raises(RuntimeError, match="GPU"):
        AstraCT((8, 8), _half_turn(4), backend="cuda")
    with pytest.raises(ValueError, match="cone"):
        AstraCT((3, 8, 8), _half_turn(4), geometry="cone", backend="cpu")
    with pytest.raises(RuntimeError, match="GPU"):
        AstraCT((3, 8, 8), _half_turn(4), geometry="cone")


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(img_size=(8,)), ValueError, "img_size"),
        (dict(img_size=(8, 0)), ValueError, "img_size"),
        (dict(img_size=(8, 8.5)), ValueError, "img_size"),
        (dict(angles=torch.zeros(2, 3)), ValueError, "1D"),
        (dict(angles=torch.tensor([])), ValueError, "1D"),
        (dict(angles=torch.tensor([0.0, float("nan")])), ValueError, "finite"),
        (dict(angles=torch.tensor([0j, 1j])), TypeError, "real"),
        (dict(angles=3), TypeError, "1D"),
        (dict(geometry="helical"), ValueError, "geometry"),
        (dict(backend="opencl"), ValueError, "backend"),
        (dict(img_size=(4, 8, 8), geometry="fanbeam"), ValueError, "2D"),
        (dict(geometry="cone"), ValueError, "3D"),
        (dict(pixel_size=-1.0), ValueError, "pixel_size"),
        (dict(pixel_size="1"), TypeError, "pixel_size"),
        (dict(n_detectors=0), ValueError, "n_detectors"),
        (dict(source_origin=100.0), ValueError, "parallel"),
        (dict(geometry="fanbeam", source_origin=2.0), ValueError, "inside"),
        (dict(projector="line_fanflat"), ValueError, "projector"),
        (dict(detector_spacing=(1.0, 1.0)), TypeError, "detector_spacing"),
    ],
)
def test_bad_construction(kwargs, error, match):
    args = dict(img_size=(8, 8), angles=_half_turn(4), backend="cpu")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        AstraCT(**args)


def test_bad_inputs_to_operators():
    physics = AstraCT((8, 10), _half_turn(6), backend="cpu", normalize=False)
    good_y = torch.zeros((1, 1) + physics.measurement_shape)
    with pytest.raises(ValueError, match=r"\(B, C, 8, 10\)"):
        physics.A(torch.zeros(1, 1, 10, 8))
    with pytest.raises(ValueError, match="shape"):
        physics.A(torch.zeros(8, 10))
    with pytest.raises(TypeError, match="floating"):
        physics.A(torch.zeros(1, 1, 8, 10, dtype=torch.int64))
    with pytest.raises(TypeError, match="real"):
        physics.A(torch.zeros(1, 1, 8, 10, dtype=torch.complex64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        physics.A(np.zeros((1, 1, 8, 10), dtype=np.float32))
    bad = torch.zeros(1, 1, 8, 10)
    bad[0, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        physics.A(bad)
    with pytest.raises(ValueError, match="shape"):
        physics.A_adjoint(good_y[..., :-1])
    nan_y = good_y.clone()
    nan_y[..., 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        physics.A_dagger(nan_y, fbp=True)


# ------------------------------------------------------------------ CUDA code paths, faked


class _FakeAstraCuda:
    """Pretends a GPU is usable and routes ASTRA's CUDA entry points to CPU stand-ins, recording
    every call: 2D FP/BP/FBP_CUDA run the CPU projectors of the same geometry; 3D parallel runs the
    CPU projector slice by slice (detector row = slice); cone and FDK record their geometry and
    fill the output with a marker value."""

    def __init__(self, monkeypatch):
        import astra
        import astra.experimental

        self.calls = []
        self.astra = astra
        real_create_projector = astra.create_projector
        real_alg_create, real_alg_run, real_alg_delete = (
            astra.algorithm.create,
            astra.algorithm.run,
            astra.algorithm.delete,
        )
        self.linked = {}

        def create_projector(kind, pg, vg):
            self.calls.append(("projector", kind, pg["type"]))
            if kind == "cuda":
                cpu = "linear" if pg["type"] == "parallel" else "line_fanflat"
                return real_create_projector(cpu, pg, vg)
            if kind == "cuda3d":
                return ("fake3d", pg, vg)
            return real_create_projector(kind, pg, vg)

        def alg_create(cfg):
            kind = cfg["type"]
            self.calls.append(("algorithm", kind))
            if kind == "FDK_CUDA":
                return ("fdk", cfg["ReconstructionDataId"])
            if kind.endswith("_CUDA"):
                cfg = dict(cfg)
                cfg["type"] = kind[: -len("_CUDA")]
                if cfg["type"] == "FBP" and "fanflat" in self.astra.projector.projection_geometry(cfg["ProjectorId"])["type"]:
                    cfg["type"] = "BP"  # ASTRA has no CPU fan FBP: the stand-in back projects
                    cfg.pop("option", None)
            return real_alg_create(cfg)

        def alg_run(alg, *args):
            if isinstance(alg, tuple):
                self.linked[alg[1]][...] = 7.0
                return None
            return real_alg_run(alg, *args)

        def alg_delete(alg):
            if not isinstance(alg, tuple):
                real_alg_delete(alg)

        def link3d(kind, geom, arr):
            key = ("data3d", kind, len(self.linked))
            self.calls.append(("link3d", kind, geom.get("type", "vol")))
            self.linked[key] = arr
            return key

        def slices(proj_id):
            _, pg, vg = proj_id
            assert pg["type"] == "parallel3d" and pg["DetectorSpacingY"] == vg["option"]["WindowMaxZ"] * 2 / vg["GridSliceCount"]
            vol2 = astra.create_vol_geom(
                vg["GridRowCount"],
                vg["GridColCount"],
                vg["option"]["WindowMinX"],
                vg["option"]["WindowMaxX"],
                vg["option"]["WindowMinY"],
                vg["option"]["WindowMaxY"],
            )
            pg2 = astra.create_proj_geom("parallel", pg["DetectorSpacingX"], pg["DetectorColCount"], pg["ProjectionAngles"])
            return astra.OpTomo(real_create_projector("linear", pg2, vol2))

        def direct_fp3d(proj_id, vol, proj):
            self.calls.append(("FP3D", proj_id[1]["type"]))
            if proj_id[1]["type"] == "cone":
                proj[...] = 3.0
                return
            op = slices(proj_id)
            for d in range(vol.shape[0]):
                proj[d] = op.FP(vol[d])

        def direct_bp3d(proj_id, vol, proj):
            self.calls.append(("BP3D", proj_id[1]["type"]))
            if proj_id[1]["type"] == "cone":
                vol[...] = 5.0
                return
            op = slices(proj_id)
            for d in range(vol.shape[0]):
                vol[d] = op.BP(proj[d])

        monkeypatch.setattr(ct_module, "_cuda_usable", lambda: True)
        monkeypatch.setattr(astra, "create_projector", create_projector)
        monkeypatch.setattr(astra.algorithm, "create", alg_create)
        monkeypatch.setattr(astra.algorithm, "run", alg_run)
        monkeypatch.setattr(astra.algorithm, "delete", alg_delete)
        monkeypatch.setattr(astra.data3d, "link", link3d)
        monkeypatch.setattr(astra.data3d, "delete", lambda ids: None)
        monkeypatch.setattr(astra.projector3d, "delete", lambda i: None)
        monkeypatch.setattr(astra.experimental, "direct_FP3D", direct_fp3d)
        monkeypatch.setattr(astra.experimental, "direct_BP3D", direct_bp3d)

    def kinds(self):
        return [c[1] for c in self.calls]


@pytest.fixture
def fake_cuda(monkeypatch):
    return _FakeAstraCuda(monkeypatch)


@pytest.mark.parametrize("geometry, angles", [("parallel", _half_turn(24)), ("fanbeam", _full_turn(30))])
def test_cuda_2d_path(fake_cuda, geometry, angles):
    """backend='auto' picks CUDA when usable; the 2D CUDA path builds the same geometry, runs
    FP_CUDA/BP_CUDA/FBP_CUDA, and (with CPU stand-ins) reproduces the CPU operator."""
    rng = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 21, 23, generator=rng)
    cpu = AstraCT((21, 23), angles, geometry=geometry, backend="cpu", normalize=False)
    y_cpu = cpu.A(x)
    xt_cpu = cpu.A_adjoint(y_cpu)
    fbp_cpu = cpu.fbp(y_cpu) if geometry == "parallel" else None
    fake_cuda.calls.clear()
    gpu = AstraCT((21, 23), angles, geometry=geometry, normalize=False)
    assert gpu.backend == "cuda" and gpu.projector == "cuda"
    y = gpu.A(x)
    assert _rel(y, y_cpu) < 1e-6
    assert _rel(gpu.A_adjoint(y), xt_cpu) < 1e-6
    x_fbp = gpu.A_dagger(y, fbp=True)
    assert x_fbp.shape == x.shape
    if geometry == "parallel":
        assert _rel(x_fbp, fbp_cpu) < 1e-6
    assert {"FP_CUDA", "BP_CUDA", "FBP_CUDA", "cuda"} <= set(fake_cuda.kinds())
    assert not {"FP", "BP", "FBP"} & set(fake_cuda.kinds())  # never the CPU algorithms


def test_cuda_3d_parallel_path(fake_cuda):
    """3D parallel on CUDA goes through direct_FP3D/BP3D (ASTRA's 3D layout (V, A, N)) and, with
    the slice-by-slice stand-in, equals the CPU slice-by-slice operator; FBP = ramp + BP3D."""
    rng = torch.Generator().manual_seed(5)
    angles = _half_turn(18)
    gpu = AstraCT((3, 19, 17), angles, backend="cuda", pixel_size=0.5, normalize=False)
    cpu = AstraCT((3, 19, 17), angles, backend="cpu", pixel_size=0.5, normalize=False)
    assert gpu.measurement_shape == cpu.measurement_shape
    x = torch.randn(2, 1, 3, 19, 17, generator=rng)
    y = gpu.A(x)
    assert _rel(y, cpu.A(x)) < 1e-6
    assert _rel(gpu.A_adjoint(y), cpu.A_adjoint(y)) < 1e-6
    assert _rel(gpu.fbp(y), cpu.fbp(y)) < 1e-4
    assert ("projector", "cuda3d", "parallel3d") in fake_cuda.calls
    assert {"FP3D", "BP3D"} <= {c[0] for c in fake_cuda.calls}


def test_cuda_cone_path(fake_cuda):
    """Cone beam: ASTRA 'cone' geometry with the physical distances, layout (B, C, V, A, N),
    direct_FP3D/BP3D, FDK_CUDA for A_dagger(fbp=True); and no CUDA call once the GPU is gone."""
    angles = _full_turn(16)
    physics = AstraCT((6, 20, 22), angles, geometry="cone", pixel_size=0.5, source_origin=40.0, origin_detector=20.0, normalize=False)
    rows, cols = physics.n_detectors
    assert physics.measurement_shape == (rows, 16, cols)
    assert physics.detector_spacing == (0.75, 0.75)  # magnification 1.5 x pixel size
    engine = physics._engine()
    pg = engine.proj_geom
    assert pg["type"] == "cone" and pg["DistanceOriginSource"] == 40.0 and pg["DistanceOriginDetector"] == 20.0
    assert np.allclose(pg["ProjectionAngles"], angles.numpy())
    x = torch.zeros(2, 1, 6, 20, 22, dtype=torch.float64)
    y = physics.A(x)
    assert y.shape == (2, 1, rows, 16, cols) and y.dtype == torch.float64 and (y == 3).all()
    assert (physics.A_adjoint(y) == 5).all()
    assert (physics.A_dagger(y, fbp=True) == 7).all()
    assert "FDK_CUDA" in fake_cuda.kinds()
    # the GPU disappears (e.g. operator unpickled elsewhere): a clear error, ASTRA not called
    n_calls = len(fake_cuda.calls)
    ct_module._cuda_usable = lambda: False  # restored by monkeypatch at teardown
    fresh = copy.deepcopy(physics)
    with pytest.raises(RuntimeError, match="SIGFPE"):
        fresh.A(x)
    assert len(fake_cuda.calls) == n_calls


@pytest.mark.gpu
def test_real_gpu_adjoint_mismatch_and_cpu_agreement():
    """On a real GPU: ASTRA's CUDA pair is close to adjoint (measured, not exact) and agrees with CPU."""
    if not ct_module._cuda_usable():
        pytest.skip("no usable GPU")
    rng = torch.Generator().manual_seed(6)
    x = torch.randn(1, 1, 64, 64, generator=rng)
    gpu = AstraCT((64, 64), _half_turn(90), backend="cuda", normalize=False)
    cpu = AstraCT((64, 64), _half_turn(90), backend="cpu", normalize=False)
    assert gpu.adjointness_test(x.cuda()) < 5e-2
    assert _rel(gpu.A(x.cuda()).cpu(), cpu.A(x)) < 5e-2
    vol = torch.randn(1, 1, 4, 32, 32, generator=rng)
    g3, c3 = AstraCT((4, 32, 32), _half_turn(45), backend="cuda", normalize=False), AstraCT((4, 32, 32), _half_turn(45), backend="cpu", normalize=False)
    assert _rel(g3.A(vol.cuda()).cpu(), c3.A(vol)) < 5e-2
