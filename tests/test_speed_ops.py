"""Speed paths that must not change the numbers: AstraCT's sparse-matrix projector against ASTRA's FP/BP,
MOL's warm-started backward solve against the cold one, and the bench's training-step timing rows."""

import math

import pytest
import torch

astra = pytest.importorskip("astra")

from deepinv_mol.physics import AstraCT  # noqa: E402
from deepinv_mol.physics import ct as ct_module  # noqa: E402


@pytest.mark.parametrize("geometry", ["parallel", "fanbeam"])
def test_matrix_projector_equals_astra(geometry):
    angles = torch.arange(12, dtype=torch.float64) * (2 * math.pi / 12)
    fast = AstraCT((24, 24), angles, geometry=geometry, backend="cpu", normalize=False, matrix=True)
    slow = AstraCT((24, 24), angles, geometry=geometry, backend="cpu", normalize=False, matrix=False)
    x = torch.rand(3, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    y = slow.A(x)
    assert torch.allclose(fast.A(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
    back = slow.A_adjoint(y)
    assert torch.allclose(fast.A_adjoint(y), back, rtol=0, atol=1e-5 * float(back.abs().max()))
    assert fast._engine()._matrix is not None and slow._engine()._matrix is None


def test_matrix_auto_switches_after_enough_calls(monkeypatch):
    monkeypatch.setattr(ct_module, "MATRIX_AUTO_CALLS", 3)
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 8)
    physics = AstraCT((16, 16), angles, backend="cpu", normalize=False)  # matrix="auto"
    x = torch.rand(1, 1, 16, 16)
    ref = [physics.A(x) for _ in range(3)]
    assert physics._engine()._matrix is None  # three ASTRA calls: no matrix yet
    out = physics.A(x)
    assert physics._engine()._matrix is not None
    assert torch.allclose(out, ref[0], atol=1e-5 * float(ref[0].abs().max()))


def test_matrix_bad_value():
    with pytest.raises(ValueError, match="matrix must be True, False or 'auto'"):
        AstraCT((16, 16), torch.linspace(0, 3, 8, dtype=torch.float64), backend="cpu", matrix="yes")


def test_training_step_bench_json(tmp_path):
    import json

    from deepinv_mol.bench.speed import bench_training_step

    rows = bench_training_step(problems=("2d", "3d"), models=("mol", "modl"), size_2d=16, size=8, depth=4,
                               num_iter=2, width=4, cnn_depth=2, constraint="penalty",
                               json_path=tmp_path / "t.json", figure_path=tmp_path / "t.png", progress=False)
    payload = json.loads((tmp_path / "t.json").read_text())
    assert payload["benchmark"] == "training-step" and len(payload["rows"]) == len(rows) == 4
    assert [(r["problem"], r["model"]) for r in rows] == [("2d", "mol"), ("2d", "modl"), ("3d", "mol"), ("3d", "modl")]
    assert rows[2]["shape"] == [4, 8, 8]
    for r in rows:
        assert set(r["calls"]) == {"network", "A", "A^H", "A^H A"}
        assert r["step_seconds"] == pytest.approx(r["forward_seconds"] + r["backward_seconds"])
        assert all(r["calls"][k] >= r["forward_calls"][k] for k in r["calls"])
    mol = rows[0]
    # MOL: A^H y once per call, never the forward NUFFT; the start image and the solves go through A^H A
    assert mol["calls"]["A^H"] == 1 and mol["calls"]["A"] == 0 and mol["calls"]["A^H A"] > 0
    # two forward iterations + the differentiable step: three network calls
    assert mol["forward_calls"]["network"] == 3
    assert (tmp_path / "t.png").stat().st_size > 0


def test_training_step_bench_bad_names():
    from deepinv_mol.bench.speed import bench_training_step

    with pytest.raises(ValueError, match="problems must be among"):
        bench_training_step(problems=("4d",), progress=False)
    with pytest.raises(ValueError, match="models must be among"):
        bench_training_step(models=("unet",), progress=False)


def test_warm_started_backward_matches_cold():
    """The exact-solve backward warm-started at its previous solution gives the cold solve's gradient."""
    import deepinv as dinv

    from deepinv_mol.optim.data_consistency import regularised_solve

    torch.manual_seed(0)
    physics = dinv.physics.Inpainting(img_size=(1, 8, 8), mask=0.5)
    rhs = torch.randn(1, 1, 8, 8, requires_grad=True)
    x, _ = regularised_solve(physics, rhs, 2.0, tol=1e-10, max_iter=200, backward_tol=1e-10)
    v1, v2 = torch.randn_like(x), torch.randn_like(x)
    (g1,) = torch.autograd.grad(x, rhs, v1, retain_graph=True)
    (g2,) = torch.autograd.grad(x, rhs, v2, retain_graph=True)  # warm-started at the solution for v1
    mask = physics.mask
    for v, g in ((v1, g1), (v2, g2)):
        assert torch.allclose(g, v / (1 + 2.0 * mask), atol=1e-6)
