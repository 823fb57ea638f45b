"""Shared fixtures: tiny random RWKV-6 checkpoints in the official layout."""

from __future__ import annotations

import os

import pytest
import torch

from spikelm.testing import make_rwkv6, randomize_rwkv6  # noqa: F401 (re-exported to the tests)

torch.set_num_threads(1)  # oversubscribed threads spin-wait: one per process is fastest on shared cores
os.environ.setdefault("RWKV_JIT_ON", "0")
os.environ.setdefault("RWKV_CUDA_ON", "0")


@pytest.fixture
def tiny_rwkv6():
    return make_rwkv6()
