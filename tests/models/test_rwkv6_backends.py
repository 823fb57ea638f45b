"""RWKV-6 through each backend of spikelm.ops.backend: the C++ decoding step against the block's
modules (its twin), where each path is taken, torch.compile's trace with the kernels on, and the
switch itself (per call, per model, per process)."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

from conftest import make_rwkv6
from spikelm.errors import ConfigError
from spikelm.models.rwkv6 import Block
from spikelm.ops import backend, kernels, set_backend
from spikelm.ops.linear import Linear

ops6 = importlib.import_module("spikelm.ops.rwkv6")
needs_kernels = pytest.mark.skipif(kernels.library() is None, reason="no C++ compiler / ninja to build the kernels")
MODULES = {"rwkv6_block": "torch", "*": "auto"}  # every block through its modules, the other ops as auto


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _spy(monkeypatch, module):
    """Record the names of the C++ ops ``module`` calls (the step's table of names aside)."""
    calls = []
    real = module.cpp_op
    record = lambda name, *a: (name == "rwkv6_block_step_params" or calls.append(name)) and 0 or real(name)(*a)  # noqa: E731
    monkeypatch.setattr(module, "cpp_op", lambda name: (lambda *a: record(name, *a)))
    return calls


@needs_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("head_size", [16, 64])
def test_decoding_step_equals_the_modules(monkeypatch, dtype, tol, head_size):
    """One token through the C++ block step against the modules' forward: logits and every state,
    from a non-zero state, batch 2, layer 0's ln0, a trained initial state. In bf16/fp16 the step
    keeps float32 between its products where the modules round to the dtype."""
    model = make_rwkv6(n_layer=2, n_embd=128, head_size=head_size, seed=6, has_time_state=True).to(dtype)
    idx = torch.randint(0, 257, (2, 5), generator=torch.Generator().manual_seed(1))
    calls = _spy(monkeypatch, ops6)
    with torch.inference_mode():
        _, state = model(idx[:, :4])
        before = [[t.clone() for t in layer] for layer in state]
        calls.clear()
        got, s_got = model(idx[:, 4:], state)
        assert calls.count("rwkv6_block_step") == 2  # one per block
        ref, s_ref = set_backend(model, MODULES)(idx[:, 4:], state)
    assert _rel(got, ref) < tol
    for a, b in zip(s_got, s_ref):
        for x, y in zip(a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and _rel(x, y) < tol
    assert all(torch.equal(a, b) for la, lb in zip(state, before) for a, b in zip(la, lb))  # the input state is untouched


@needs_kernels
def test_decoding_step_only_where_it_computes_the_same(monkeypatch):
    """The modules' forward wherever the step would differ or skip something: a gradient possible,
    CPU autocast, a hook on any module (an energy counter's), a converted block, a float64 model,
    and the torch and compile backends."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=7)
    tok = torch.randint(0, 257, (1, 1))
    calls = _spy(monkeypatch, ops6)

    def steps(m=model, inference=True):
        calls.clear()
        with torch.inference_mode(inference):
            m(tok)
        return calls.count("rwkv6_block_step")

    assert steps() == 2
    assert steps(inference=False) == 0  # a gradient is possible
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert steps() == 0
    h = model.blocks[1].att.key.register_forward_hook(lambda *a: None)
    assert steps() == 1  # the hooked block only
    h.remove()
    assert steps(copy.deepcopy(model).double()) == 0
    for name in ("torch", "compile"):
        assert steps(set_backend(copy.deepcopy(model), {"rwkv6_block": name})) == 0
    from spikelm.convert import apply_preset

    spiking = apply_preset(model, "SpikeRWKV-4L", [torch.randint(0, 257, (1, 8))], sites="time_mix")
    assert steps(spiking) == 0


@needs_kernels
def test_decoding_step_follows_swapped_parameters_and_modules():
    """The step's parameter list is kept between calls: a parameter swapped by
    load_state_dict(assign=True), or a module swapped for another, must be seen at the next call."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=8)
    other = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=9)
    idx = torch.randint(0, 257, (1, 4), generator=torch.Generator().manual_seed(2))

    def both():
        with torch.inference_mode():
            _, st = set_backend(model, None)(idx[:, :3])
            got = model(idx[:, 3:], st)[0]
            ref = set_backend(model, MODULES)(idx[:, 3:], st)[0]
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
        return got

    first = both()
    model.load_state_dict(other.state_dict(), assign=True)
    assert not torch.allclose(both(), first)
    swapped = Linear(64, 64, bias=False)
    torch.nn.init.normal_(swapped.weight, std=0.3)
    model.blocks[1].att.key = swapped
    both()
    names = ops6.block_step_params()
    assert model.blocks[1]._step_params(names)[names.index("att.key.weight")] is swapped.weight


def test_float64_model_decodes_through_its_modules():
    """The step takes float32, bf16 and fp16 weights: a float64 model decoding one token runs its
    modules (it once reached the step and failed there), and matches its own prefill. The WKV runs
    in float32 in every dtype: where both calls take the compiled recurrence they agree bit for
    bit; with the kernels off (the step against the chunked form) to float32 rounding (measured
    3e-7 on logits of magnitude 3)."""
    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=8).double()
    idx = torch.randint(0, 257, (1, 4), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _, st = model(idx[:, :3])
        got = model(idx[:, 3:], st)[0]
        ref = model(idx)[0][:, 3:]
    assert got.dtype == torch.float64 and torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("B, T, last_only", [(1, 1, False), (2, 3, True), (2, 17, False), (1, 17, True)])
@pytest.mark.parametrize("head_size, preset", [(16, None), (64, None), (16, "SpikeRWKV-4L")])
def test_backends_agree(B, T, last_only, head_size, preset):
    """The C++ paths (``cpp``) against the tensor operations (``torch``), without a gradient, on a
    plain model and a converted one (all sites), from a non-zero state, with layer 0's ln0 and a
    trained initial state: logits and every state, each with its own memory."""
    from spikelm.convert import apply_preset

    model = make_rwkv6(n_layer=2, n_embd=128, head_size=head_size, seed=10, has_time_state=True)
    if preset:
        model = apply_preset(model, preset, [torch.randint(0, 257, (1, 8))], sites="all")
    idx = torch.randint(0, 257, (B, T + 1), generator=torch.Generator().manual_seed(T))
    runs = []
    for name in ("cpp", "torch"):
        set_backend(model, name)
        with torch.inference_mode():
            _, state = model(idx[:, :1])
            runs.append(model(idx[:, 1:], state, last_only=last_only))
    (got, s_got), (ref, s_ref) = runs
    assert got.shape == ref.shape == (B, 1 if last_only else T, 257) and _rel(got, ref) < 5e-6
    for a, b in zip(s_got, s_ref):
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.is_contiguous() and _rel(x, y) < 5e-6


@needs_kernels
def test_compile_backend_agrees_and_traces_the_kernels_without_graph_breaks():
    """torch.compile traces a model whose ops call the C++ kernels (each has a fake implementation):
    no graph break in a prefill or a decoding step, plain or converted; and the ``compile``
    backend of the block (inductor) gives the tensor operations' logits."""
    from spikelm.convert import apply_preset

    model = make_rwkv6(n_layer=2, n_embd=64, head_size=16, seed=12)
    idx = torch.randint(0, 257, (1, 9), generator=torch.Generator().manual_seed(3))
    converted = apply_preset(copy.deepcopy(model), "SpikeRWKV-4L", [idx], sites="all")
    with torch.inference_mode():
        for m in (model, converted):
            _, state = m(idx[:, :8])
            for args in ((idx[:, :8],), (idx[:, 8:], state)):
                torch._dynamo.reset()
                explained = torch._dynamo.explain(m)(*args)
                assert explained.graph_break_count == 0, explained.break_reasons
        ref = set_backend(model, "torch")(idx)[0]
        got = set_backend(model, {"rwkv6_block": "compile", "*": "auto"})(idx)[0]
    torch._dynamo.reset()
    assert _rel(got, ref) < 1e-5


def test_the_switch_per_model_per_call_and_per_process(monkeypatch):
    """set_backend reaches every module that runs an op, a conversion carries it over to the modules
    it swaps in, SPIKELM_BACKEND sets the process's default (a name, or op:name pairs), and a
    wrong name is a ConfigError naming the choices."""
    from spikelm.convert import apply_preset

    model = set_backend(make_rwkv6(n_layer=1, n_embd=32, head_size=16), "torch")
    holders = [m for m in model.modules() if hasattr(m, "backend")]
    assert len(holders) >= 8 and all(m.backend == "torch" for m in holders)
    spiking = apply_preset(model, "SpikeRWKV-4L", [torch.randint(0, 257, (1, 8))], sites="all")
    assert all(m.backend == "torch" for m in spiking.modules() if hasattr(m, "backend"))
    x = torch.zeros(2)
    for value, want in (("torch", "torch"), ("wkv6:torch,*:cpp", {"wkv6": "torch", "*": "cpp"})):
        monkeypatch.setenv("SPIKELM_BACKEND", value)
        monkeypatch.setattr(backend, "_default", None)
        assert backend.default_backend() == want
    assert backend.resolve("wkv6", None, x) == "torch" and backend.resolve("wkv6", "compile", x) == "compile"
    monkeypatch.setenv("SPIKELM_BACKEND", "fast")
    monkeypatch.setattr(backend, "_default", None)
    with pytest.raises(ConfigError, match="SPIKELM_BACKEND.*auto, torch, compile, cpp"):
        backend.default_backend()
    with pytest.raises(ConfigError, match="no op named 'wkv9'"):
        set_backend(model, {"wkv9": "cpp"})
    with pytest.raises(ConfigError, match="auto, torch, compile, cpp"):
        set_backend(model, "c++")
    assert isinstance(model.blocks[0], Block)
