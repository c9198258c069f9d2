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
