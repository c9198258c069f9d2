"""Shared fixtures: devices (cpu, plus cuda when usable) and a seeded generator."""

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def rng():
    """A seeded CPU generator: tests draw from it, never from the global RNG."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
