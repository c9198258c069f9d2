"""Shared fixtures: devices (cpu, plus cuda when usable), a seeded generator, one torch thread on demand."""

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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny convolutions (opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``): OpenMP synchronisation costs ~100x the work
    on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
