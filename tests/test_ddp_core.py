"""The hand-derived ops under DistributedDataParallel in one process, with torch alone (the
Lightning DDP runs are in test_ddp.py): the all-reduced gradients that land on the
parameters are native's, and (with ``rules``) the hand-derived backward made them."""

from __future__ import annotations

import pytest
import torch.distributed as dist
from helpers_compose import assert_grads, batch, grads, mlp, native_grads
from torch.nn.parallel import DistributedDataParallel

from manualgrad import ManualMSELoss


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group (gloo also reduces CUDA tensors), destroyed afterwards."""
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_gradients_land_on_parameters(rules, device, process_group):
    x, y = batch(device)
    model = mlp(device)
    ddp = DistributedDataParallel(model)
    got, _ = grads(model, lambda x: ManualMSELoss()(ddp(x), y), x)  # read from p.grad
    assert_grads(got, native_grads(device, x, y)[0], rules)
