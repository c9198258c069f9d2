"""get_config(): every constructor kwarg (except device), JSON-serialisable; Cls(**cfg) + state_dict rebuilds the model."""

import json

import pytest
import torch

from deepinv_mol.models import FeedForwardRegularizer, MonotoneCNN, ShallowEquilibrium

CASES = [
    (MonotoneCNN, dict(width=8, depth=3, lipschitz=0.9, init="identity", power_size=(12, 12)), (1, 2, 16, 16)),
    (MonotoneCNN, dict(channels=1, width=6, depth=2, constraint="penalty", lipschitz=0.8, activation="maxmin",
                       bias=False, certificate_tol=1e-4), (1, 1, 12, 12)),
    (MonotoneCNN, dict(width=4, depth=2, dims=3, kernel_size=3, n_power_iterations=2), (1, 2, 8, 8, 8)),
    (ShallowEquilibrium, dict(channels=1, width=6, depth=3, kernel_size=5, contraction=0.7, tol=1e-5, anderson=0,
                              max_iter=80, backward="jfb", power_iterations=2, power_size=12, warn=False),
     (2, 1, 12, 12)),
    (FeedForwardRegularizer, dict(channels=1, width=6, depth=4), (2, 1, 12, 12)),
]


@pytest.mark.parametrize("cls, kwargs, shape", CASES)
def test_rebuilt_from_config_gives_identical_outputs(cls, kwargs, shape):
    torch.manual_seed(0)
    net = cls(**kwargs)
    with torch.no_grad():  # move away from the constructor's weights
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    if hasattr(net, "update_normalisation") and net.constraint == "strict":
        net.update_normalisation()
    cfg = net.get_config()
    assert "device" not in cfg
    assert json.loads(json.dumps(cfg)) == cfg
    for key, value in kwargs.items():  # every explicitly given kwarg is reported as given
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    torch.manual_seed(1)  # different random init: only the state_dict can make outputs equal
    rebuilt = cls(**json.loads(json.dumps(cfg)))
    assert rebuilt.get_config() == cfg
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    net.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(net(x), rebuilt(x))
