"""The GPU libraries (flash-linear-attention for WKV6/WKV7, spikelm's Triton kernels for WKV4) are
chosen by the one switch, :mod:`spikelm.ops.backend`, like the CPU paths: ``auto`` takes them where
they take the inputs, ``torch`` (per call, per model, per process) keeps the tensor operations.
"Where they take the inputs" (CUDA tensors, the library installed) is simulated on the CPU by
patching each op's ``usable`` check; the libraries themselves are checked against the loops under
Triton's interpreter (test_wkv_fla.py, test_wkv4_triton.py) and on a GPU (tests/gpu/test_cuda.py).
"""

from __future__ import annotations

import importlib

import pytest
import torch

from spikelm.config import RWKV4Config
from spikelm.models.rwkv4 import RWKV4
from spikelm.ops import backend, set_backend
from spikelm.ops.wkv4 import wkv4, wkv4_naive
from spikelm.ops.wkv6 import wkv6, wkv6_naive
from spikelm.ops.wkv7 import wkv7, wkv7_naive

# op -> (module, the name of its "usable" check there, the name of the library call there)
GPU_PATHS = {"wkv6": ("spikelm.ops.wkv6", "fla_usable", "wkv6_fla"),
             "wkv7": ("spikelm.ops.wkv7", "fla_usable", "wkv7_fla"),
             "wkv4": ("spikelm.ops.wkv4", "triton_usable", "wkv4_triton")}


def _inputs(op: str, T: int = 5):
    g = torch.Generator().manual_seed(0)
    if op == "wkv4":
        w, u = -torch.rand(4, generator=g), torch.randn(4, generator=g)
        return (w, u, torch.randn(1, T, 4, generator=g), torch.randn(1, T, 4, generator=g)), wkv4, wkv4_naive
    r, k, v = (torch.randn(1, T, 2, 4, generator=g) for _ in range(3))
    logw = -torch.rand(1, T, 2, 4, generator=g)
    if op == "wkv6":
        return (r, k, v, logw, torch.randn(2, 4, generator=g)), wkv6, wkv6_naive
    return (r, k, v, logw, -k, k * 0.5), wkv7, wkv7_naive


def _simulate_gpu(op: str, monkeypatch: pytest.MonkeyPatch) -> list:
    """Make ``op`` believe its library takes the inputs; the library call records itself and
    returns the loop's result."""
    mod_name, usable, call = GPU_PATHS[op]
    mod = importlib.import_module(mod_name)
    taken = []
    naive = _inputs(op)[2]

    def library_call(*a, **kw):
        taken.append(op)
        return naive(*a[:len(_inputs(op)[0])])

    monkeypatch.setattr(mod, usable, lambda *t: True)
    monkeypatch.setattr(mod, call, library_call)
    monkeypatch.setattr(backend, "_default", None)
    monkeypatch.delenv(backend.ENV, raising=False)
    return taken


@pytest.mark.parametrize("op", list(GPU_PATHS))
def test_auto_takes_the_gpu_library_and_torch_keeps_the_tensor_operations(op, monkeypatch):
    taken = _simulate_gpu(op, monkeypatch)
    args, fn, naive = _inputs(op)
    ref = naive(*args)[0]
    torch.testing.assert_close(fn(*args)[0], ref, rtol=1e-5, atol=1e-6)
    assert taken == [op]  # auto: the library
    for choice in ("torch", {op: "torch", "*": "auto"}, "cpp"):  # no C++ kernel on CUDA: cpp falls back to torch
        torch.testing.assert_close(fn(*args, backend=choice)[0], ref, rtol=1e-5, atol=1e-6)
    assert taken == [op]
    fn(*args, backend={"*": "torch", op: "auto"})
    assert taken == [op, op]


def test_the_process_and_the_model_choose_too(monkeypatch):
    """SPIKELM_BACKEND=wkv4:torch keeps WKV4 off Triton for the process; set_backend(model, ...)
    for one model (SpikeGPT's time mixing is RWKV-4's, so the same attribute)."""
    taken = _simulate_gpu("wkv4", monkeypatch)
    model = RWKV4(RWKV4Config(vocab_size=11, n_layer=1, n_embd=8)).eval()
    idx = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        model(idx)
        assert taken == ["wkv4"]
        monkeypatch.setenv(backend.ENV, "wkv4:torch,*:auto")
        monkeypatch.setattr(backend, "_default", None)
        model(idx)
        assert taken == ["wkv4"]
        monkeypatch.setenv(backend.ENV, "torch")
        monkeypatch.setattr(backend, "_default", None)
        set_backend(model, "auto")
        model(idx)
        assert taken == ["wkv4", "wkv4"]


def test_resolve_gives_cuda_only_to_auto():
    x = torch.zeros(1)
    assert backend.resolve("wkv6", "auto", x, cpp_ok=False, cuda_ok=True) == "cuda"
    assert backend.resolve("wkv6", "torch", x, cpp_ok=False, cuda_ok=True) == "torch"
    assert backend.resolve("wkv6", "compile", x, cpp_ok=False, cuda_ok=True) == "compile"
    assert backend.resolve("gemv", "auto", x, cpp_ok=False, cuda_ok=True) == "torch"  # no CUDA library for gemv


def test_paths_table_names_the_gpu_libraries():
    rows = {line.split("|")[1].strip(): line for line in backend.paths_table().splitlines()[2:]}
    assert "flash-linear-attention" in rows["`wkv6`"] and "flash-linear-attention" in rows["`wkv7`"]
    assert "Triton" in rows["`wkv4`"]
