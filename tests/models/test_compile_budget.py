"""torch.compile's budget: 0 graph breaks in a decode step (``benchmarks/compile_budget.py`` prints
every family; this holds the RWKV-6 step to it). A graph break splits the compiled region and costs
a Python round trip per token.

The tensor-operation path (a GPU's, and a CPU's without the compiled kernels) keeps the budget.
The compiled CPU kernels do not today: their ops have no fake (meta) implementation, so dynamo
cannot trace them and breaks around each one; that case is an expected failure (strict: it turns
into a failure to fix here when the kernels gain fake implementations)."""

from __future__ import annotations

import importlib

import pytest
import torch

from conftest import make_rwkv6
from spikelm.ops import cpu_kernels

rwkv6_module = importlib.import_module("spikelm.models.rwkv6")
wkv6_module = importlib.import_module("spikelm.ops.wkv6")  # the module (spikelm.ops.wkv6 is also a function)

pytestmark = pytest.mark.slow  # dynamo traces the model: 10-30 s on 2 shared cores


def _decode_step_breaks() -> tuple[int, list[str]]:
    torch._dynamo.reset()
    model = make_rwkv6(n_layer=1, n_embd=32, head_size=16).eval()
    x = torch.randint(0, 257, (1, 4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, state = model(x)
        out = torch._dynamo.explain(model)(x[:, :1], state)
    return out.graph_break_count, sorted({str(b.reason).splitlines()[0][:100] for b in out.break_reasons})


def test_decode_step_without_the_compiled_kernels_has_no_graph_break(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "kernel", lambda: None)
    monkeypatch.setattr(rwkv6_module, "cpu_kernel", lambda: None)
    monkeypatch.setattr(wkv6_module, "cpu_kernel", lambda: None)
    assert _decode_step_breaks() == (0, [])


@pytest.mark.xfail("cpu_kernels.kernel() is not None", strict=True,
                   reason="the compiled CPU kernels have no fake implementation: dynamo breaks around each call")
def test_decode_step_with_the_compiled_kernels_has_no_graph_break():
    assert _decode_step_breaks() == (0, [])
