"""TF32 (spikelm.devices.tf32): on only for fp32 compute on CUDA, and the process's settings come back."""

from __future__ import annotations

import pytest
import torch

from spikelm.runargs import TrainArgs
from spikelm.devices import tf32, tf32_wanted


@pytest.mark.parametrize(
    "device,dtype,enabled,want",
    [
        ("cuda", None, True, True),  # fp32 training on a GPU
        ("cuda:1", torch.float32, True, True),
        ("cuda", None, False, False),  # tf32: false
        ("cuda", torch.bfloat16, True, False),  # autocast: the fp32 recurrences keep full products
        ("cuda", torch.float16, True, False),
        ("cpu", None, True, False),  # no TF32 on the CPU
    ],
)
def test_tf32_wanted(device, dtype, enabled, want):
    assert tf32_wanted(device, dtype, enabled) is want


def _flags():
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def test_tf32_sets_cuda_flags_and_restores_them():
    before = _flags()
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        with tf32("cuda", None, True) as on:  # the flags are process-wide: settable without a GPU
            assert on and _flags() == (True, True)
        assert _flags() == (False, False)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with tf32("cuda", torch.bfloat16, True) as on:
            assert not on and _flags() == (False, False)
        assert _flags() == (True, True)
        with tf32("cpu", None, True) as on:  # the CPU: nothing touched
            assert not on and _flags() == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_train_args_tf32_setting():
    assert TrainArgs().tf32 is True
    assert TrainArgs(tf32=False).tf32 is False
