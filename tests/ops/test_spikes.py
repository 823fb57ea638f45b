"""Spike decoding over T > 1 steps through each backend: ``compile`` (inductor, what ``auto`` takes)
gives the tensor operations' bits."""

from __future__ import annotations

import pytest
import torch

import spikelm.spiking.encoding as enc
from spikelm.ops import backend


@pytest.mark.parametrize("dtype, configs", [(torch.float32, [(3, 1, 1, False, True), (16, 4, 2, True, False)]),
                                            (torch.bfloat16, [(5, 3, 1, True, True)])])
def test_compiled_decode_is_the_general_path_bit_for_bit(dtype, configs):
    """``mhse_decode`` with T > 1 under torch.compile: the same bits as its tensor operations (the
    general path), for rate and multi-layer codes, init_half, per-channel and one scale, signed
    zeros, infinities, NaN, values at and next to every level boundary."""
    g = torch.Generator().manual_seed(7)
    C = 37
    for T, layers, n_int, init_half, per_channel in configs:
        scale = (torch.rand(C, generator=g) + 0.05) if per_channel else torch.tensor(0.37)
        unit = scale * 2.0 ** (n_int - layers) / T  # one step of the decoded value
        k = torch.randint(0, 2**layers * T + 2, (4, C), generator=g).float()
        x = torch.cat([torch.randn(4, C, generator=g) * 3,
                       k * unit, torch.nextafter(k * unit, torch.tensor(1e9)), torch.nextafter(k * unit, -torch.tensor(1e9)),
                       (k + 0.5) * unit, -(k + 0.5) * unit])
        x[0, :5] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
        x = x.to(dtype)
        got = enc.mhse_decode(x, scale, T, layers, n_int, init_half, backend="compile")
        ref = enc.mhse_decode(x, scale, T, layers, n_int, init_half, backend="torch")
        bits = torch.int32 if dtype == torch.float32 else torch.int16
        nan = ref.isnan()
        assert torch.equal(got.isnan(), nan)
        assert torch.equal(got[~nan].view(bits), ref[~nan].view(bits)), (T, layers, n_int, init_half)
    assert backend.resolve("mhse_decode", "auto", x) == "compile"


def test_a_failing_compile_falls_back_to_the_tensor_operations(monkeypatch, caplog):
    """Where torch.compile fails (no C++ compiler for inductor, say), the op runs its tensor
    operations, with one warning, and does not try again."""
    tries = []

    def broken(fn):
        def run(*a, **k):
            tries.append(1)
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(backend.torch, "compile", broken)
    monkeypatch.setattr(backend, "_compiled", {})
    monkeypatch.setattr(backend, "_eager_only", set())
    fn = lambda x: x * 2  # noqa: E731
    with caplog.at_level("WARNING", logger="spikelm.ops.backend"):
        assert backend.compiled(fn)(torch.ones(2)).tolist() == [2.0, 2.0]
        assert backend.compiled(fn)(torch.ones(3)).tolist() == [2.0] * 3
    assert tries == [1] and sum("torch.compile failed" in r.message for r in caplog.records) == 1
